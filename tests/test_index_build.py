"""`python -m msolomon.index`: a collection into shards and an index, resumable, on one process or Ray actors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from msolomon.index import VectorIndex
from msolomon.index.build import BuildSettings, IndexBuildError, build
from msolomon.index.sources import CollectionItem, Skipped, read_specs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from msolomon import MSolomon

    path = tmp_path_factory.mktemp("model") / "tiny"
    MSolomon.tiny(seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sample_images):
    """Images (in a subfolder), a text file with an empty line, a non-UTF-8 file, a file that is not an image."""
    from PIL import Image

    root = tmp_path_factory.mktemp("corpus")
    (root / "photos").mkdir()
    for i, src in enumerate(sample_images):
        for j in range(4):  # 12 distinct images
            img = Image.open(src).rotate(90 * j)
            img.save(root / "photos" / f"{i}-{j}.png")
    (root / "lines.txt").write_text("a red circle\n\na blue star\na green square\n", encoding="utf-8")
    (root / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (root / "broken.png").write_bytes(b"not an image at all")
    return root


def _settings(model_dir, out, *corpus, **kw) -> BuildSettings:
    return BuildSettings(model=str(model_dir), corpus=[str(c) for c in corpus], out=str(out), **kw)


def _vectors(index: VectorIndex) -> np.ndarray:
    return np.vstack([index.index.reconstruct(i) for i in range(len(index))])


def _same_index(a: Path, b: Path) -> None:
    ia, ib = VectorIndex.load(Path(a) / "index"), VectorIndex.load(Path(b) / "index")
    assert ia.payloads == ib.payloads
    np.testing.assert_allclose(_vectors(ia), _vectors(ib), atol=1e-4)
    queries = _vectors(ia)[:5] + 0.01
    sa, pa = ia.search_arrays(queries, 10)
    sb, pb = ib.search_arrays(queries, 10)
    assert (pa == pb).all() and np.allclose(sa, sb, atol=1e-4)


def test_sources_read_lazily_name_bad_items_and_add_up(corpus, tmp_path):
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_text("\n".join([json.dumps({"text": "a cat", "image": "pic.png"}), json.dumps({"text": 3}),
                                "{not json", json.dumps({})]) + "\n")
    (tmp_path / "pic.png").write_bytes((corpus / "photos" / "0-0.png").read_bytes())
    entries = list(read_specs([str(corpus), str(jsonl), str(corpus / "lines.txt")]))  # lines.txt twice: once
    items = [e for e in entries if isinstance(e, CollectionItem)]
    skipped = {e.path: e.reason for e in entries if isinstance(e, Skipped)}
    assert sum(1 for i in items if i.image and "photos" in i.image) == 12
    assert [i.text for i in items if i.text and not i.image] == ["a red circle", "a blue star", "a green square"]
    assert any(i.text == "a cat" and i.image == str((tmp_path / "pic.png").resolve()) for i in items)
    assert skipped[f"{corpus / 'lines.txt'}:2"] == "empty line"
    assert "not UTF-8" in skipped[str(corpus / "latin1.txt")]
    assert "text must be a string" in skipped[f"{jsonl}:2"] and skipped[f"{jsonl}:3"] == "not JSON"
    assert skipped[f"{jsonl}:4"] == "neither text nor image"
    with pytest.raises(ValueError, match="corpus not found"):
        list(read_specs([str(tmp_path / "nowhere")]))
    # a folder is walked one listing at a time, in the order of its sorted paths (part by part: 'a/...' first)
    tree = tmp_path / "tree"
    for name in ("a/z.txt", "a-b.txt", "a/b/c.txt", "b.txt", "A.txt"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(name + "\n", encoding="utf-8")
    walked = [e.text for e in read_specs([str(tree)])]
    assert walked == [str(p.relative_to(tree)) for p in sorted(tree.rglob("*.txt"))]
    assert walked == ["A.txt", "a/b/c.txt", "a/z.txt", "a-b.txt", "b.txt"]


def test_build_skips_bad_items_by_name_and_searches(model_dir, corpus, tmp_path, capsys):
    import torch

    from msolomon.index import cli

    report = build(_settings(model_dir, tmp_path / "ix", corpus, shard_size=4))
    assert report["count"] == 12 + 3  # the images and the three lines; broken.png fails to decode
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    assert "not a readable image" in reasons[str(corpus / "broken.png")]
    assert reasons[f"{corpus / 'lines.txt'}:2"] == "empty line" and str(corpus / "latin1.txt") in reasons
    assert report["n_skipped"] == 3 and report["factory"] == "Flat" and report["recall_at_10"] is None
    assert report["new_items"] == report["count"]  # an item that failed to decode is not counted as added
    assert json.loads((tmp_path / "ix" / "build.json").read_text())["signature"] == report["signature"]
    assert cli.main(["search", "--index", str(tmp_path / "ix"), "--text", "a blue star", "--k", "3", "--mode",
                     "never", "--threads", str(torch.get_num_threads())]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("/embed") and len(lines) == 4 and '"a blue star"' in lines[1]


def test_a_killed_build_resumes_to_the_same_index_and_a_damaged_shard_is_encoded_again(model_dir, corpus, tmp_path):
    whole = tmp_path / "whole"
    build(_settings(model_dir, whole, corpus, shard_size=2))
    cut = tmp_path / "cut"
    cmd = [sys.executable, "-m", "msolomon.index", "build", "--model", str(model_dir), "--corpus", str(corpus),
           "--out", str(cut), "--shard-size", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list((cut / "shards").glob("s*/meta.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list((cut / "shards").glob("s*/meta.json")))
    assert 1 <= done_before < 16 and not (cut / "build.json").exists()  # killed midway
    report = build(_settings(model_dir, cut, corpus, shard_size=1))
    assert report["encoded_shards"] == 16 - done_before  # finished shards were not encoded again
    _same_index(whole, cut)
    # a damaged shard (and only it) is found and encoded again
    vectors = cut / "shards" / "s000001" / "vectors.npy"
    vectors.write_bytes(vectors.read_bytes()[:-8] + b"\0" * 8)
    report = build(_settings(model_dir, cut, corpus, shard_size=1))
    assert report["encoded_shards"] == 1
    _same_index(whole, cut)


def test_add_equals_a_build_of_the_union_and_adds_nothing_twice(model_dir, corpus, tmp_path):
    extra = tmp_path / "extra.txt"
    extra.write_text("a yellow triangle\na red circle\n", encoding="utf-8")  # the second is in the index already
    build(_settings(model_dir, tmp_path / "grown", corpus, shard_size=4))
    report = build(_settings(model_dir, tmp_path / "grown", extra, shard_size=4), add=True)
    assert report["new_items"] == 1 and report["count"] == 16
    build(_settings(model_dir, tmp_path / "union", corpus, extra, shard_size=4))
    _same_index(tmp_path / "grown", tmp_path / "union")
    again = build(_settings(model_dir, tmp_path / "grown", extra, shard_size=4), add=True)
    assert again["new_items"] == 0 and again["count"] == 16
    # an approximate index reports its recall@10 against exact search (computed shard by shard)
    hnsw = build(_settings(model_dir, tmp_path / "hnsw", corpus, extra, shard_size=4, factory="HNSW8"))
    assert hnsw["factory"] == "HNSW8" and hnsw["recall_at_10"] == 1.0  # 16 vectors: HNSW finds them all
    ivf = build(_settings(model_dir, tmp_path / "ivf", corpus, extra, shard_size=4, factory="IVF4,Flat"))
    assert 0.0 < ivf["recall_at_10"] <= 1.0 and VectorIndex.load(tmp_path / "ivf" / "index").factory == "IVF4,Flat"
    # IVF-PQ (OPQ in front, as --factory auto builds beyond 5M, needs 256 vectors), from the same shards: nothing
    # re-encoded
    pq = build(_settings(model_dir, tmp_path / "ivf", corpus, extra, shard_size=4, factory="IVF2,PQ4x4"))
    assert pq["encoded_shards"] == 0 and 0.0 < pq["recall_at_10"] <= 1.0
    assert VectorIndex.load(tmp_path / "ivf" / "index").factory == "IVF2,PQ4x4"
    with pytest.raises(IndexBuildError, match="IVF needs at least.*shards are kept"):  # 16 vectors, 64 lists
        build(_settings(model_dir, tmp_path / "ivf", corpus, extra, shard_size=4, factory="IVF64,Flat"))


def test_an_index_of_another_model_is_refused(model_dir, corpus, tmp_path):
    import torch

    from msolomon import MSolomon
    from msolomon.index import cli

    other = tmp_path / "other-model"
    MSolomon.tiny(seed=1).save_pretrained(other)
    build(_settings(model_dir, tmp_path / "ix", corpus / "lines.txt"))
    for add in (False, True):
        with pytest.raises(IndexBuildError, match=f"was built by the model '{model_dir}'"):
            build(_settings(other, tmp_path / "ix", corpus / "lines.txt"), add=add)
    with pytest.raises(SystemExit, match="holds no index") as exit_:
        cli.main(["add", "--index", str(tmp_path / "nothing"), "--corpus", str(corpus), "--threads",
                  str(torch.get_num_threads())])
    assert exit_.value.code == 2
    # the demo will not serve another model's vectors: it stops at start, naming the model that built them
    from msolomon.demo.service import SearchService
    from msolomon.demo.settings import DemoSettings

    served = MSolomon.from_pretrained(other)
    settings = DemoSettings(cache_dir=tmp_path / "cache", corpus_scale="tiny", threads=torch.get_num_threads(),
                            index=[str(tmp_path / "ix")])
    with pytest.raises(IndexBuildError, match=f"was built by the model '{model_dir}'"):
        SearchService(served, settings).start()


def test_two_ray_workers_give_the_same_index_as_one(model_dir, corpus, tmp_path):
    pytest.importorskip("ray", reason="Ray is installed with the requirements (ray[data])")
    build(_settings(model_dir, tmp_path / "one", corpus, shard_size=8))
    report = build(_settings(model_dir, tmp_path / "two", corpus, shard_size=8, workers=2))
    assert report["encoded_shards"] == 2  # 16 planned items (broken.png fails only when decoded), one per actor
    _same_index(tmp_path / "one", tmp_path / "two")
