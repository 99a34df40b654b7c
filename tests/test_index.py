"""VectorIndex: faiss results equal a numpy brute force, before and after save/load."""
from __future__ import annotations

import json

import numpy as np
import pytest

from msolomon import VectorIndex


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(corpus, queries, k):
    scores = queries @ corpus.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, 1)


def test_flat_matches_numpy_and_survives_save_load(tmp_path):
    rng = np.random.default_rng(0)
    corpus, queries = _unit(rng, 500, 32), _unit(rng, 20, 32)
    payloads = [{"text": f"doc {i}", "image": None} for i in range(500)]
    index = VectorIndex.build(corpus, payloads, ids=[f"d{i}" for i in range(500)])
    order, scores = _brute(corpus, queries, 5)
    hits = index.search(queries, k=5)
    for q in range(20):
        assert [h.id for h in hits[q]] == [f"d{i}" for i in order[q]]
        np.testing.assert_allclose([h.score for h in hits[q]], scores[q], atol=1e-5)
        assert hits[q][0].payload == payloads[order[q][0]]
    index.save(tmp_path / "idx")
    assert json.loads((tmp_path / "idx" / "meta.json").read_text())["count"] == 500
    loaded = VectorIndex.load(tmp_path / "idx")
    again = loaded.search(queries, k=5)
    assert [[h.id for h in row] for row in again] == [[h.id for h in row] for row in hits]
    single = loaded.search(queries[0], k=3)
    assert [h.rank for h in single] == [0, 1, 2] and single[0].id == f"d{order[0][0]}"


@pytest.mark.parametrize("factory,kw", [("IVF8,Flat", {"nprobe": 8}), ("HNSW16", {"ef_search": 128})])
def test_approximate_factories_find_the_exact_top1(factory, kw, tmp_path):
    rng = np.random.default_rng(1)
    corpus, queries = _unit(rng, 2000, 16), _unit(rng, 30, 16)
    index = VectorIndex.build(corpus, factory=factory, **kw)
    order, _ = _brute(corpus, queries, 1)
    found = [row[0].id for row in index.search(queries, k=1)]
    assert np.mean(np.array(found) == order[:, 0]) >= 0.9
    index.save(tmp_path / "a")
    assert VectorIndex.load(tmp_path / "a").factory == factory


def test_add_grows_the_index_and_bad_shapes_are_named():
    rng = np.random.default_rng(2)
    index = VectorIndex.build(_unit(rng, 10, 8), [{"text": str(i)} for i in range(10)])
    index.add(_unit(rng, 5, 8), [{"text": "new"}] * 5)
    assert len(index) == 15 and index.ids[-1] == 14
    with pytest.raises(ValueError, match="dimension 4"):
        index.add(_unit(rng, 2, 4))
    with pytest.raises(ValueError, match="payloads"):
        index.add(_unit(rng, 2, 8), [{}])
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full(8, np.nan))
    with pytest.raises(ValueError, match="factory"):
        VectorIndex.build(_unit(rng, 10, 8), factory="NoSuchThing")


def test_load_rejects_a_foreign_folder(tmp_path):
    with pytest.raises(ValueError, match="meta.json"):
        VectorIndex.load(tmp_path)


def test_ivf_with_too_few_vectors_is_a_clear_error():
    with pytest.raises(ValueError, match="IVF needs at least"):
        VectorIndex.build(_unit(np.random.default_rng(3), 10, 8), factory="IVF256,Flat")


def test_an_exact_index_streamed_from_blocks_is_faiss_s_own_file_and_a_short_stream_is_refused(tmp_path):
    """`python -m msolomon.index` writes an exact index block by block (never holding it): the file must be what
    faiss writes, load like any other, and a stream that gives fewer rows than promised must leave no index."""
    import faiss

    from msolomon.index.vector import FlatVectors, write_index

    rng = np.random.default_rng(4)
    corpus = _unit(rng, 50, 8)
    payloads = [{"text": f"doc {i}"} for i in range(50)]
    whole = VectorIndex.build(corpus, payloads)
    whole.save(tmp_path / "whole")
    blocks = FlatVectors(8, 50, lambda: (corpus[i:i + 16] for i in range(0, 50, 16)))
    write_index(tmp_path / "streamed", blocks, 8, "Flat", enumerate(payloads))
    assert (tmp_path / "streamed" / "index.faiss").read_bytes() == (tmp_path / "whole" / "index.faiss").read_bytes()
    assert (tmp_path / "streamed" / "payloads.jsonl").read_text() == (tmp_path / "whole" / "payloads.jsonl").read_text()
    loaded = VectorIndex.load(tmp_path / "streamed")
    assert isinstance(loaded.index, faiss.IndexFlatIP) and loaded.search(corpus[7], k=1)[0].payload == payloads[7]
    with pytest.raises(ValueError, match="40 vectors written, 50 expected"):
        write_index(tmp_path / "short", FlatVectors(8, 50, lambda: [corpus[:40]]), 8, "Flat", enumerate(payloads))
    with pytest.raises(ValueError, match="49 payload rows for 50 vectors"):
        write_index(tmp_path / "short", blocks, 8, "Flat", enumerate(payloads[:49]))
    assert not (tmp_path / "short").exists()
