"""A demo many visitors share: each visitor's corpora are theirs (by the key their browser keeps), survive a restart,
are capped atomically and bounded on disk; nothing the page does not need is named or served; every bad input is
a readable message. Through the handlers and the service, with `MSolomon.tiny()` and a tiny MiniMMEB."""
from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

from msolomon.demo import corpus as C
from msolomon.demo.service import DemoInputError, SearchRequest, SearchService
from msolomon.demo.settings import DemoSettings, Limits
from msolomon.demo.visitors import CorpusStore, VisitorError, new_key, visitor_id

A, B = "alice-0123456789abcdef", "bobby-0123456789abcdef"


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharing")
    return DemoSettings(cache_dir=root / "cache", corpus_scale="tiny", baselines_dir=root / "none",
                        max_new_tokens=4, threads=1, limits=Limits(max_custom_corpora=3))


def _lines(tmp_path: Path, name: str, *lines: str) -> str:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_two_visitors_with_the_same_corpus_name_never_see_each_other(handlers, service, tiny_model, settings,
                                                                      tmp_path):
    a_status, a_names, a_new, _ = handlers.index_corpus("my corpus", None, _lines(tmp_path, "a.txt", "apples",
                                                                                   "pears"), A)
    b_status, b_names, b_new, _ = handlers.index_corpus("my corpus", None, _lines(tmp_path, "b.txt", "boats",
                                                                                   "bikes", "buses"), B)
    assert a_new == b_new == "custom: my corpus"
    assert "2 texts" in a_status and "3 texts" in b_status  # B's upload did not replace A's corpus
    hits_a = service.search(SearchRequest("fruit", corpus=a_new, visitor=A, mode="never", top_k=5)).hits
    hits_b = service.search(SearchRequest("fruit", corpus=b_new, visitor=B, mode="never", top_k=5)).hits
    assert {h.text for h in hits_a} == {"apples", "pears"} and {h.text for h in hits_b} == {"boats", "bikes", "buses"}
    # a visitor without the key, or with another, cannot name A's corpus
    for who in (None, new_key()):
        with pytest.raises(DemoInputError, match="unknown corpus"):
            service.search(SearchRequest("fruit", corpus=a_new, visitor=who, mode="never"))
        assert a_new not in handlers.corpus_names(who)
    # the lists are each visitor's own, read now: a page opened later sees the corpus made since
    key, names, rows, _ = handlers.visitor_start(A)
    assert key == A and a_new in names and any("yours" in r[3] for r in rows)
    fresh_key = handlers.visitor_start(None)[0]
    assert fresh_key != A and len(fresh_key) >= 16 and handlers.visitor_start("bad key!")[0] != "bad key!"
    # a restart finds them again, from disk, still private
    again = SearchService(tiny_model, settings)
    again.corpora = service.corpora  # the shared ones, without indexing the default corpus again
    try:
        assert [h.text for h in again.search(SearchRequest("fruit", corpus=a_new, visitor=A, mode="never",
                                                           top_k=2)).hits][0] in {"apples", "pears"}
        assert a_new not in again.corpora_for(None)
    finally:
        again.close()


def test_the_cap_per_visitor_holds_under_concurrent_requests(service, handlers, settings, tmp_path):
    key = new_key()
    text = _lines(tmp_path, "c.txt", "one", "two")
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: handlers.index_corpus(f"c{i}", None, text, key)[0], range(8)))
    made = [s for s in statuses if s.startswith("Indexed")]
    assert len(made) == settings.limits.max_custom_corpora == len(service.private_corpora(key))
    refused = [s for s in statuses if s.startswith("⚠")]
    assert len(refused) == 8 - len(made) and all("the most one visitor keeps" in s for s in refused)
    # replacing one of one's own corpora is allowed at the cap; another visitor is not affected by it
    mine = next(iter(service.private_corpora(key)))[len(C.CUSTOM_PREFIX):]
    assert handlers.index_corpus(mine, None, text, key)[0].startswith("Indexed")
    assert handlers.index_corpus("other", None, text, new_key())[0].startswith("Indexed")
    # deleting frees a slot
    name = next(iter(service.private_corpora(key)))
    status, names, _ = handlers.delete_corpus(name, key)
    assert status.startswith("Deleted") and name not in names
    assert handlers.delete_corpus(C.ALL_MINIMMEB, key)[0].startswith("⚠")  # shared corpora stay


def test_concurrent_uploads_of_the_same_content_encode_it_once(tmp_path):
    """The cache entry of one content is written by one request at a time (two writers of one folder used to
    delete each other's staging folder, and a visitor saw 'Not indexed')."""
    cache = C.IndexCache(tmp_path / "cache")
    payloads = [{"text": t, "image": None} for t in ("one", "two")]
    calls = []

    def encode(chunk):
        calls.append(len(chunk))
        time.sleep(0.05)  # long enough for every thread to arrive while the first encodes
        return np.eye(len(chunk), 4, dtype=np.float32)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: cache.get(payloads, encode, "m"), range(8)))
    assert calls == [2]  # encoded once; the seven others read the cached index
    assert [cached for _, cached in results].count(False) == 1 and all(len(index) == 2 for index, _ in results)
    assert cache._locks == {}  # no lock kept once no request uses it


def test_an_upload_is_not_failed_by_housekeeping_that_trips_on_another_save(service, handlers, tmp_path,
                                                                              monkeypatch):
    """Other requests save and rename corpus folders while one prunes: a file that vanishes during the size walk
    counts as nothing, and a prune that still fails after a corpus is saved leaves the upload indexed (CI saw a
    visitor told "Not indexed" for a corpus that was saved)."""
    from msolomon.demo import visitors

    folder = tmp_path / "sizes"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"x" * 10)
    (folder / "sub" / "gone.bin").write_bytes(b"x" * 7)
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        if str(path).endswith("gone.bin"):
            raise FileNotFoundError(path)  # renamed away by another request between the listing and the stat
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(visitors.os, "stat", stat)
    assert visitors._folder_size(folder) == 10
    monkeypatch.undo()

    def prune():
        raise FileNotFoundError("a folder another request just renamed")

    monkeypatch.setattr(service, "prune", prune)
    key = new_key()
    status = handlers.index_corpus("kept", None, _lines(tmp_path, "k.txt", "one", "two"), key)[0]
    assert status.startswith("Indexed") and C.CUSTOM_PREFIX + "kept" in service.private_corpora(key)


def test_retention_budget_and_half_written_corpora(tmp_path, tiny_model, caplog):
    from msolomon.index import VectorIndex

    store = CorpusStore(tmp_path, max_per_visitor=5, keep_days=1, budget_mb=1)
    vid = visitor_id(A)
    rows = [{"text": f"t{i}", "image": None} for i in range(4)]
    index = VectorIndex.build(tiny_model.encode_candidates([C.candidate_of(r) for r in rows], batch_size=4,
                                                          show_progress_bar=False), rows)
    for name in ("old", "recent"):
        store.save(vid, name, "", index)
    store.touch(vid, "recent")
    written = (store.corpus_dir(vid, "recent") / "corpus.json").stat().st_mtime_ns
    store.touch(vid, "recent")  # a second search within the hour writes nothing
    assert (store.corpus_dir(vid, "recent") / "corpus.json").stat().st_mtime_ns == written
    meta = store.corpus_dir(vid, "old") / "corpus.json"
    stale = json.loads(meta.read_text()) | {"used": time.time() - 3 * 86400}
    meta.write_text(json.dumps(stale))
    half = store.visitor_dir(vid) / "cut-while-writing"
    (half / "index").mkdir(parents=True)  # no corpus.json: a write cut mid-way
    assert set(store.load_all(vid)) == {"old", "recent"}  # skipped, with a log line
    assert "incomplete corpus folder" in caplog.text
    removed = store.prune()
    assert set(store.load_all(vid)) == {"recent"} and not half.exists() and len(removed) == 2
    # over the size budget, the least recently used go first
    small = CorpusStore(tmp_path / "b", max_per_visitor=5, keep_days=30, budget_mb=0)
    small.save(vid, "first", "", index)
    small.save(vid, "second", "", index)
    small.prune()
    assert small.load_all(vid) == {}
    with pytest.raises(VisitorError, match="reload the page"):
        visitor_id("../../etc")


def test_nothing_on_the_page_or_in_the_json_names_a_server_path(handlers, service, settings, sample_images,
                                                                  tmp_path):
    out = handlers.api_search("a red circle", sample_images[0], None, "never", 0.5, 10, None)
    text = json.dumps(out)
    for secret in (str(settings.cache_dir), str(Path.home()), os.sep + "tmp" + os.sep):
        assert secret not in text
    assert all(h["image"] is None or "/" not in h["image"] for h in out["hits"])
    # the gallery gets decoded images (gradio keeps copies in its own cache), captioned with the file's name
    image_corpus = next(n for n, c in service.corpora.items() if all(p["image"] for p in c.payloads))
    res = service.search(SearchRequest("a red circle", mode="never", top_k=5, corpus=image_corpus))
    from msolomon.demo import render

    items = render.gallery_items(res)
    assert items and all(hasattr(img, "size") and "/" not in caption for img, caption in items)
    html = handlers.compare("a red circle", None, "", 0.5, 3, C.ALL_MINIMMEB)
    assert str(settings.baselines_dir) not in html and "none/noaug" in html


@pytest.mark.parametrize("field, value, message", [
    ("top_k", "ten", "top_k must be a number, got str"),
    ("top_k", 2.5, "top_k must be a whole number"),
    ("top_k", float("nan"), "finite"),
    ("top_k", float("inf"), "finite"),
    ("top_k", True, "top_k must be a number, got bool"),
    ("threshold", "0.5", "threshold must be a number"),
    ("threshold", -0.1, "threshold must be in \\[0, 1\\]"),
    ("text", ["a", "list"], "text must be a string"),
    ("text", 42, "text must be a string"),
    ("mode", 1, "mode must be a string"),
    ("text", "bad \ud800 char", "lone surrogate"),
    ("visitor", "bad key!", "visitor must be a visitor key"),
])
def test_api_refuses_wrong_types_instead_of_coercing_them(handlers, field, value, message):
    args = dict(text="a query", image=None, instruction=None, mode="auto", threshold=0.5, top_k=5, corpus=None)
    args[field] = value
    with pytest.raises(gr.Error, match=message):
        handlers.api_search(**args)


def test_a_new_search_clears_the_last_results_first(handlers):
    gauge, decision, aug, gallery, hits, latency, what_if = handlers.cleared()
    assert gauge is None and decision == aug == hits == latency == what_if == "" and gallery["value"] == []


def test_explorer_reads_files_without_a_report_and_names_a_bad_field(handlers, service, settings):
    runs = settings.cache_dir / "evals" / "run-hand"
    runs.mkdir(parents=True, exist_ok=True)
    good = {"dataset": "ShapesCLS", "mode": "never", "decision": "/embed", "correct": True, "p_augment": 0.1,
            "latency_ms": 12.5, "query": "q", "top": []}
    lines = [json.dumps(good | {"index": i}) for i in range(3)] + ['{"dataset": "ShapesCLS", "mo']  # cut mid-line
    (runs / "lonely.predictions.jsonl").write_text("\n".join(lines) + "\n")
    label = next(k for k in handlers.explorer_choices() if k.endswith("lonely.predictions.jsonl"))
    table, plot, datasets, rows, quality = handlers.explorer_open(label)  # no report beside it: drawn from predictions
    assert datasets == ["ShapesCLS"] and len(rows) == 3 and plot.size[0] > 300
    assert quality == []  # one mode only: no decision quality
    bad = dict(good, latency_ms="abc")
    (runs / "bad.predictions.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    label = next(k for k in handlers.explorer_choices() if k.endswith("bad.predictions.jsonl"))
    with pytest.raises(gr.Error, match="bad.predictions.jsonl, line 2: latency_ms must be a number"):
        handlers.explorer_open(label)
    from msolomon.demo.explorer import query_rows

    many = query_rows([good] * 7, limit=5)
    assert len(many) == 6 and "2 more not listed" in many[-1][-1]


def test_identical_uploads_are_one_candidate(service, sample_images, tmp_path):
    import shutil

    twin = tmp_path / "same picture, another name.png"
    shutil.copyfile(sample_images[0], twin)
    payloads = C.custom_payloads([sample_images[0], str(twin), sample_images[0]], None, tmp_path / "store",
                                 service.settings.limits)
    assert len(payloads) == 1 and payloads[0]["label"] == Path(sample_images[0]).name


def test_one_visitors_slow_build_does_not_hold_up_another_visitors(service, handlers, tmp_path):
    """The per-visitor slot is reserved under a lock, but the encoding runs outside it: while A's corpus waits in
    the encoder, B indexes one of their own to the end."""
    slow = threading.Event()
    real = service.encode_candidates

    def encode(c, model=None):
        if any(x["text"] == "slowly" for x in c):
            assert slow.wait(30), "A's build was never released"
        return real(c, model)

    service.encode_candidates = encode
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(handlers.index_corpus, "slow", None, _lines(tmp_path, "s.txt", "slowly"), A)
            time.sleep(0.2)
            assert not first.done()  # A waits in the encoder
            second = handlers.index_corpus("quick", None, _lines(tmp_path, "q.txt", "quickly"), B)[0]
            assert second.startswith("Indexed") and not first.done()  # B finished while A still waits
            slow.set()
            assert first.result(30)[0].startswith("Indexed")
    finally:
        slow.set()
        service.encode_candidates = real


def test_compare_keeps_candidates_that_share_a_text_apart(service):
    """Grounding crops all carry one instruction text: the comparison names them by file, shows each as a
    thumbnail, and gives each its own row of ranks (it used to fold them into one row named by the text)."""
    from msolomon.demo import render

    corpus = C.DATASET_PREFIX + "ScenesGround"
    texts = {p["text"] for p in service.corpora[corpus].payloads}
    assert len(texts) == 1 and len(service.corpora[corpus]) > 5  # the case: many crops, one text
    runs, note = service.compare(SearchRequest("the red circle", top_k=5, corpus=corpus))
    html = render.compare_html(runs, note)
    distinct = {(h.text, h.image) for _, out in runs for h in out.hits}
    assert html.count("<tr class='candidate'") == len(distinct) >= 5  # one row each (it was one row for all)
    names = {Path(h.image).name for _, out in runs for h in out.hits}
    assert all(name in html for name in names)
    assert html.count("data:image/png;base64,") >= len(distinct)  # a thumbnail per row, none served from disk


def test_the_baselines_index_the_default_corpus_at_start_so_the_first_compare_does_not_wait(tiny_model, service,
                                                                                            tmp_path):
    from msolomon import MSolomon

    for key, seed in (("noaug", 3), ("alwaysaug", 4)):
        MSolomon.tiny(seed=seed).save_pretrained(tmp_path / "baselines" / key)
    settings = DemoSettings(cache_dir=service.settings.cache_dir, corpus_scale="tiny",
                            baselines_dir=tmp_path / "baselines", max_new_tokens=4, threads=1)
    warm = SearchService(tiny_model, settings).start()
    try:
        assert warm._warming is not None
        warm._warming.join(120)
        assert {k[0] for k in warm._baseline_indexes if k[2] == C.ALL_MINIMMEB} == {"noaug", "alwaysaug"}
        encoded = []
        real = warm.encode_candidates
        warm.encode_candidates = lambda c, model=None: encoded.append(len(c)) or real(c, model)
        runs, note = warm.compare(SearchRequest("a red circle", top_k=3, corpus=C.DATASET_PREFIX + "ShapesCLS"))
        assert [label for label, _ in runs][-2:] == ["NoAug model", "AlwaysAug model"] and encoded == []
    finally:
        warm.close()


def test_the_demo_encodes_corpora_through_the_index_builders_path(service, tmp_path):
    """The demo's corpora are encoded by `msolomon.index.shards.encode_items`, as `python -m msolomon.index` does:
    the same vectors, and an item that does not decode is named by its file name, never a server path."""
    from msolomon.demo.corpus import CorpusError
    from msolomon.index.shards import encode_items

    payloads = service.corpora[C.ALL_MINIMMEB].payloads[:6]
    vectors = service.encode_candidates(payloads)
    np.testing.assert_allclose(vectors, encode_items(service.model, payloads)[0], atol=1e-6)
    np.testing.assert_allclose(vectors, service.corpora[C.ALL_MINIMMEB].index.index.reconstruct_n(0, 6), atol=1e-4)
    broken = tmp_path / "secret-folder" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"not an image")
    with pytest.raises(CorpusError, match="broken.png") as err:
        service.encode_candidates([{"text": None, "image": str(broken)}])
    assert "secret-folder" not in str(err.value)
