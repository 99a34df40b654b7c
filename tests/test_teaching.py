"""The demo as a teaching and error-analysis tool (issue 27): what-if, step by step, decision quality."""
from __future__ import annotations

import numpy as np
import pytest

from msolomon.demo import corpus as C
from msolomon.demo.service import SearchRequest, verdict
from msolomon.demo.settings import DemoSettings


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    root = tmp_path_factory.mktemp("teaching")
    return DemoSettings(cache_dir=root / "cache", corpus_scale="tiny", baselines_dir=root / "baselines",
                        reports_dir=root / "reports", max_new_tokens=8, threads=1)


def _example_request(service, mode: str) -> SearchRequest:
    ex = next(e for e in service.examples if e.image)
    return SearchRequest(ex.text, ex.image, ex.instruction, mode, 0.5, 10, ex.corpus, ex.id)


def test_verdict_reads_the_answers_two_ranks():
    assert verdict(3, 1) == "helped" and verdict(1, 4) == "hurt" and verdict(2, 2) == "changed nothing"
    assert verdict(None, 5) == "helped" and verdict(5, None) == "hurt" and verdict(None, None) is None


@pytest.mark.parametrize("mode", ["never", "always"])
def test_what_if_is_the_other_path_and_judges_it_by_the_answer(service, mode):
    req = _example_request(service, mode)
    out = service.search(req)
    w = service.what_if(req, out)
    other = "always" if mode == "never" else "never"
    assert w.mode == other and w.ms > 0
    direct = service.search(SearchRequest(**{**req.__dict__, "mode": other}))
    assert [(h.text, h.image) for h in w.hits] == [(h.text, h.image) for h in direct.hits[:3]]
    assert np.allclose([h.score for h in w.hits], [h.score for h in direct.hits[:3]], atol=1e-4)
    assert (w.augmentation is None) == (other == "never")
    assert w.answer_ranks == {mode: out.positive_rank, other: direct.positive_rank}
    assert w.verdict == verdict(w.answer_ranks["never"], w.answer_ranks["always"])
    # where the search's own top result ranks on the other path
    top = (out.hits[0].text, out.hits[0].image)
    full = service.search(SearchRequest(**{**req.__dict__, "mode": other, "top_k": 50}))
    ranks = [(h.text, h.image) for h in full.hits]
    if top in ranks:
        assert w.top_moved_to == ranks.index(top) + 1
    else:
        assert w.top_moved_to is None or w.top_moved_to > 50
    assert "total" in out.timings and "what_if" not in out.timings  # its time is its own


def test_what_if_without_a_known_answer_and_switched_off(service, handlers):
    req = SearchRequest("a red circle", None, "", "auto", 0.5, 5, C.ALL_MINIMMEB)
    out = service.search(req)
    w = service.what_if(req, out)
    assert w.answer_ranks is None and w.verdict is None and len(w.hits) == 3
    service.settings.what_if = False
    try:
        steps = list(handlers.search("a red circle", None, "", "never", 0.5, 5, C.ALL_MINIMMEB, ""))
        assert all(s[6] == "" for s in steps)
    finally:
        service.settings.what_if = True


def test_explain_replays_what_the_model_did(tiny_model, sample_images):
    from msolomon.explain import explain_query
    from msolomon.inputs import Query

    q = Query(text="what is in the picture?", image=sample_images[1])
    ex = explain_query(tiny_model, q, max_new_tokens=6)
    always = tiny_model.encode_queries(q, augment="always", max_new_tokens=6)
    never = tiny_model.encode_queries(q, augment="never")
    assert np.allclose(ex.prefix_vectors[-1], always.embedding, atol=1e-4)  # the last prefix is the always path
    assert np.allclose(ex.embed_vector, never.embedding, atol=1e-4)
    assert len(ex.written) == len(ex.prefix_vectors) == len(always.token_ids) - 1
    assert ex.written[-1].terminal and all(0.0 < w.probability <= 1.0 for w in ex.written)
    assert not ex.written[-1].forced or len(always.token_ids) == 6 + 1  # forced only at the cap
    assert abs(ex.p_augment - always.p_augment) < 1e-5
    # the image's tokens are one piece; every prompt token is counted once
    images = [p for p in ex.prompt if p.image]
    assert len(images) == 1 and images[0].count > 1
    assert sum(p.count for p in ex.prompt) == ex.n_prompt_tokens
    # a greedy step takes the most likely token: no runner-up is more likely, unless the cap forced the terminal
    for w in ex.written:
        assert w.forced or all(p <= w.probability + 1e-6 for _, p in w.alternatives)


def test_step_by_step_ranks_the_corpus_with_both_paths(service, handlers):
    req = _example_request(service, "auto")
    s = service.step_by_step(req)
    never = service.search(SearchRequest(**{**req.__dict__, "mode": "never", "top_k": 50}))
    always = service.search(SearchRequest(**{**req.__dict__, "mode": "always", "top_k": 50}))
    by_name = {(h.text or "", h.image): h.rank for h in never.hits}
    by_name_aug = {(h.text or "", h.image): h.rank for h in always.hits}
    answer = [c for c in s.candidates if c.correct]
    assert len(answer) == 1 and answer[0].embed_rank == never.positive_rank
    assert answer[0].augment_rank == always.positive_rank
    for c in s.candidates:  # the table's ranks are those of the two real searches
        if (c.name, c.image) in by_name:
            assert by_name[(c.name, c.image)] == c.embed_rank
        if (c.name, c.image) in by_name_aug:
            assert by_name_aug[(c.name, c.image)] == c.augment_rank
    assert s.trajectory[-1]["answer_rank"] == always.positive_rank
    assert [t["written"] for t in s.trajectory] == list(range(len(s.trajectory)))
    html = handlers.step_by_step(req.text, req.image, req.instruction, "auto", 0.5, 10, req.corpus, req.example_id)
    for part in ("The prompt, as the model reads it", "p(/augment)", "token by token", "score with /embed",
                 "changes the ranking", "✓ answer"):
        assert part in html
    assert html.count("class='step-prefix'") == len(s.trajectory)


def test_decision_quality_counts_a_hand_made_fixture():
    from msolomon.demo.explorer import decision_quality, quality_cell, select

    def rec(i, mode, correct, decision):
        return {"dataset": "D", "index": i, "mode": mode, "correct": correct, "decision": decision}

    # (auto decision, never right, always right) per query -> helped, hurt, same, missed, saved, same
    plan = [("/augment", False, True), ("/augment", True, False), ("/augment", True, True),
            ("/embed", False, True), ("/embed", True, False), ("/embed", False, False)]
    records = []
    for i, (dec, e, a) in enumerate(plan):
        auto_right = a if dec == "/augment" else e
        records += [rec(i, "auto", auto_right, dec), rec(i, "never", e, "/embed"), rec(i, "always", a, "/augment")]
    records.append(rec(9, "never", True, "/embed"))  # a query without its other modes is left out
    (row,) = decision_quality(records)
    assert row == ["D", 6, 50.0, 83.3, 1, 1, 1, 1, 1, 1, 0.5]  # right on helped + saved of the 4 disagreements
    assert [r["quality"] for r in records if r["mode"] == "auto"] == ["helped", "hurt", "same (augmented)",
                                                                      "missed", "saved", "same (embedded)"]
    assert quality_cell([row], 0, 5) == ("D", "hurt") and quality_cell([row], 0, 2) is None
    hurt = select(records, "D", "auto", quality="hurt")
    assert [r["index"] for r in hurt] == [1]


def test_decision_quality_in_the_explorer_equals_the_reports_block(handlers, service):
    import json
    from pathlib import Path

    from msolomon.demo.explorer import QUALITY_HEADERS, find_files

    sets = sorted({e.dataset for e in service.examples})[:2]
    names, label = handlers.explorer_run(sets, 5, ["auto", "never", "always"])
    *_, quality = handlers.explorer_open(label)
    path = find_files(handlers.explorer_folders())[label]
    report = json.loads(Path(path).with_name("report.json").read_text())
    block = report["decisions"]
    assert [r[0] for r in quality] == sorted(sets) + ["all"]
    col = {h: i for i, h in enumerate(QUALITY_HEADERS)}
    for r in quality[:-1]:
        d = block["datasets"][r[0]]
        assert [r[col["helped"]], r[col["hurt"]], r[col["same (augmented)"]]] == [
            d["augmented"]["helped"], d["augmented"]["hurt"], d["augmented"]["same"]]
        assert [r[col["missed"]], r[col["saved"]], r[col["same (embedded)"]]] == [
            d["embedded"]["missed"], d["embedded"]["saved"], d["embedded"]["same"]]
        assert r[col["decision accuracy"]] == d["decision_accuracy"]
        assert r[col["oracle P@1 %"]] == pytest.approx(block["oracle"]["datasets"][r[0]], abs=0.06)
    assert quality[-1][col["decision accuracy"]] == block["decision_accuracy"]
    # a click on a count lists exactly those queries, in auto mode
    i, j = next((i, j) for i, r in enumerate(quality[:-1]) for j in range(4, 10) if r[j])
    dataset, category = handlers.explorer_quality_cell(label, i, j)
    rows = handlers.explorer_filter(label, dataset, "auto", "all", "all", category)
    assert len(rows) == quality[i][j] and all(r[1] == dataset and r[2] == "auto" for r in rows)
    with pytest.raises(Exception, match="click a count"):
        handlers.explorer_quality_cell(label, i, 0)


def test_step_by_step_ranks_a_large_corpus_only_to_its_depth(service, handlers, monkeypatch):
    """A prebuilt index may hold millions: what-if and step by step rank to RANK_DEPTH, and say "below" beyond."""
    from msolomon.demo import render
    from msolomon.demo import service as service_module

    monkeypatch.setattr(service_module, "RANK_DEPTH", 2)
    monkeypatch.setattr(render, "RANK_DEPTH", 2)
    req = _example_request(service, "auto")
    s = service.step_by_step(req)
    assert all(c.embed_rank in (None, 1, 2) and c.augment_rank in (None, 1, 2) for c in s.candidates)
    assert any(c.embed_rank is None or c.augment_rank is None for c in s.candidates)
    assert "below #2" in render.step_html(s)
    out = service.search(req)
    w = service.what_if(req, out)
    assert len(w.hits) == 2 and (w.top_moved_to is None or w.top_moved_to <= 2)
