"""Decision quality (msolomon.decisions): the per-query oracle, the helped/hurt/missed/saved counts and the decision
accuracy, on a hand-made fixture whose answers are counted by hand, and in a real evaluation report against its own
predictions file."""
from __future__ import annotations

import json

import pytest

from msolomon.decisions import dataset_decisions, decisions, gap_closed, oracle
from msolomon.metrics import encode_correct


def _entry(datasets: dict) -> dict:
    """A report mode entry from {name: (correct, augmented, latency_ms_mean, ood)}."""
    out = {}
    for name, (correct, augmented, latency, ood) in datasets.items():
        out[name] = {"correct_bits": encode_correct(correct), "augmented_bits": encode_correct(augmented),
                     "latency_ms_mean": latency, "ood": ood, "p_at_1": 100.0 * sum(correct) / len(correct)}
    scores = [d["p_at_1"] for d in out.values()]
    ind = [d["p_at_1"] for d in out.values() if not d["ood"]]
    return {"datasets": out, "overall": sum(scores) / len(scores), "ind": sum(ind) / len(ind)}


# one dataset with each of the six cases once (q0..q5), one out-of-distribution set where both paths agree
NEVER = [True, True, False, False, True, False]
ALWAYS = [True, False, True, False, False, True]
AUTO_AUG = [True, True, True, False, False, False]
NEVER_E = _entry({"A": (NEVER, [False] * 6, 10.0, False), "B": ([True, False], [False] * 2, 8.0, True)})
ALWAYS_E = _entry({"A": (ALWAYS, [True] * 6, 40.0, False), "B": ([True, False], [True] * 2, 30.0, True)})
AUTO_C = [a if took else e for took, e, a in zip(AUTO_AUG, NEVER, ALWAYS)]
AUTO_E = _entry({"A": (AUTO_C, AUTO_AUG, 25.0, False), "B": ([True, False], [False] * 2, 8.0, True)})


def test_counts_of_each_case_by_hand():
    d = dataset_decisions(AUTO_AUG, NEVER, ALWAYS)
    # q0 both right (augmented: same), q1 hurt, q2 helped, q3 both wrong (embedded: same), q4 saved, q5 missed
    assert d["augmented"] == {"helped": 1, "hurt": 1, "same": 1}
    assert d["embedded"] == {"missed": 1, "saved": 1, "same": 1}
    assert d["disagreements"] == 4 and d["decision_accuracy"] == 0.5  # q2 and q4 right, q1 and q5 wrong


def test_oracle_takes_the_better_path_and_never_on_ties():
    o = oracle(NEVER_E, ALWAYS_E)
    assert o["datasets"]["A"] == pytest.approx(100 * 5 / 6, abs=1e-3)  # only q3 is wrong on both paths
    assert o["datasets"]["B"] == 50.0
    assert o["ind"] == o["datasets"]["A"] and o["ood"] == 50.0
    assert o["overall"] == pytest.approx((100 * 5 / 6 + 50) / 2, abs=1e-3)
    # always only where it alone is right: q2 and q5 of A, nothing of B -> 2 of 8 queries
    assert o["augment_rate"] == 0.25
    # A: 2/6 at 40 ms + 4/6 at 10 ms = 20 ms over 6 queries; B: 8 ms over 2 queries
    assert o["latency_ms_mean"] == pytest.approx((20.0 * 6 + 8.0 * 2) / 8, abs=1e-3)


def test_decisions_block():
    block = decisions(AUTO_E, NEVER_E, ALWAYS_E)
    assert block["datasets"]["A"]["augmented"] == {"helped": 1, "hurt": 1, "same": 1}
    assert block["datasets"]["B"]["disagreements"] == 0 and block["datasets"]["B"]["decision_accuracy"] is None
    assert block["decision_accuracy"] == 0.5 and block["disagreements"] == 4 and block["n"] == 8
    assert block["datasets"]["A"]["oracle_p_at_1"] == pytest.approx(100 * 5 / 6, abs=1e-3)
    # auto on A: q0 right, q1 wrong (hurt), q2 right, q3 wrong, q4 right, q5 wrong -> 50%; always on A 50%
    assert block["gap_closed"]["ind"] == pytest.approx(0.0)


def test_gap_closed():
    assert gap_closed(60.0, 50.0, 70.0) == 0.5
    assert gap_closed(45.0, 50.0, 70.0) == -0.25
    assert gap_closed(60.0, 70.0, 70.0) is None  # no gap to close


def test_mismatched_runs_are_refused():
    with pytest.raises(ValueError, match="different queries"):
        dataset_decisions([True], [True, False], [True, False])
    stale = {"datasets": {"A": {"correct_bits": "10"}}}
    with pytest.raises(ValueError, match="augmented_bits"):
        decisions(stale, NEVER_E, ALWAYS_E)


def test_an_evaluation_in_three_modes_reports_its_decisions(tmp_path):
    """The block of a real evaluation, recounted from its own predictions file (query by query)."""
    from test_evaluation import _build

    import msolomon.evaluation as ev

    data, model, _ = _build(tmp_path, layout="minimmeb")
    rep = ev.evaluate(model, data, ev.EvalSettings(modes=("auto", "never", "always"), show_progress_bar=False),
                      out=tmp_path / "r.json")
    preds = [json.loads(x) for x in (tmp_path / "r.predictions.jsonl").read_text().splitlines()]
    by = {(p["dataset"], p["index"], p["mode"]): p for p in preds}
    block = rep["decisions"]
    for name, d in block["datasets"].items():
        idx = sorted(i for (n, i, m) in by if n == name and m == "auto")
        took = [by[(name, i, "auto")]["decision"] == "/augment" for i in idx]
        never = [by[(name, i, "never")]["correct"] for i in idx]
        always = [by[(name, i, "always")]["correct"] for i in idx]
        assert d["augmented"]["helped"] == sum(t and a and not e for t, e, a in zip(took, never, always))
        assert d["embedded"]["saved"] == sum((not t) and e and not a for t, e, a in zip(took, never, always))
        assert d["oracle_p_at_1"] == pytest.approx(100 * sum(e or a for e, a in zip(never, always)) / len(idx))
    assert "## Decisions" in (tmp_path / "r.md").read_text()
    one = ev.evaluate(model, data, ev.EvalSettings(modes=("auto",), show_progress_bar=False))
    assert "decisions" not in one  # only when the three modes ran


def test_compare_reports_with_paired_gains(tmp_path, capsys):
    from msolomon.compare import main, parse_entry

    for e in (AUTO_E, NEVER_E, ALWAYS_E):  # the keys a report's mode entry has
        e.setdefault("latency_ms", {"mean": 1.0})
        e.setdefault("augment_rate", 0.5)
    report = {"modes": {"auto": AUTO_E, "never": NEVER_E, "always": ALWAYS_E},
              "decisions": decisions(AUTO_E, NEVER_E, ALWAYS_E)}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    assert parse_entry(f"m={path}:never") == ("m", path, "never")
    assert parse_entry(f"m={path}") == ("m", path, "auto")
    out = tmp_path / "c.json"
    assert main([f"auto={path}", f"always={path}:always", f"never={path}:never", "--reference", "always",
                 "--oracle", "never,always", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    auto = result["entries"][0]
    # auto against always on A: q1 (hurt) lost and q5 (missed) lost, q2 and q4 as always... paired: same queries
    a_bits, b_bits = AUTO_C, ALWAYS
    expected = 100.0 * (sum(a_bits) - sum(b_bits)) / len(a_bits)
    assert auto["vs_reference"]["ind"]["gain"] == pytest.approx(expected, abs=1e-6)
    assert auto["decision_accuracy"] == 0.5 and result["two_model_oracle"]["ind"] == pytest.approx(100 * 5 / 6,
                                                                                                     abs=1e-3)
    assert "decision accuracy" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([f"x={tmp_path / 'missing.json'}"])
