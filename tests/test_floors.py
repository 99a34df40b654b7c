"""Honest floors and intervals (CPU, offline, fast): the text-only floor on a hand-made fixture, the bootstrap
intervals of Precision@1 and of macro averages, the paired interval of a gain, and the reports that carry them."""
from __future__ import annotations

import json

import numpy as np
import pytest

from msolomon import metrics as mt

# --- the text-only floor, computed by hand ------------------------------------------------------------------------

# (query text, positive text) training pairs. Templates after normalisation (whitespace collapsed, casefolded):
#   "q: colour of a?"  -> red, red, blue       majority: red
#   "q: value of a?"   -> 7, 9                  a tie: the first seen, 7
#   "q: other"         -> blue, blue, blue      majority: blue
#   a row without a positive text is ignored
# Whole training set: blue 4, red 2, 7 1, 9 1  -> fallback for unseen templates: blue
TRAIN = [
    ("Q: colour of A?", "red"),
    ("q:  colour of a?", "blue"),
    ("Q: colour of A? ", "Red"),
    ("Q: value of A?", "7"),
    ("Q: value of A?", "9"),
    ("Q: other", "blue"),
    ("Q: other", "blue"),
    ("q: OTHER", "blue"),
    ("Q: other", None),
]
TEST = [
    ("Q: COLOUR of A?", "red"),   # template seen: predicts red            -> correct
    ("Q: colour of A?", "blue"),  # predicts red                            -> wrong
    ("Q: value of A?", "7"),      # tie 7/9 goes to the first seen, 7       -> correct
    ("Q: value of A?", "9"),      # predicts 7                              -> wrong
    ("Q: unseen?", " Blue "),     # unseen template: fallback blue          -> correct (normalised)
    ("Q: unseen?", "red"),        # fallback blue                           -> wrong
    ("q: other", "blue"),         # predicts blue                           -> correct
    (None, "blue"),               # no query text: the template "" is unseen, fallback blue -> correct
]


def test_text_only_floor_on_a_hand_made_fixture():
    preds = mt.text_only_predictions(TRAIN, [q for q, _ in TEST])
    assert preds == ["red", "red", "7", "7", "blue", "blue", "blue", "blue"]
    assert mt.text_only_correct(TRAIN, TEST) == [True, False, True, False, True, False, True, True]
    assert mt.text_only_floor(TRAIN, TEST) == pytest.approx(100 * 5 / 8)  # 62.5
    # the fallback is the dataset's most frequent positive: blue (4) beats red (2)
    assert mt.text_only_floor(TRAIN, [("never seen", "blue"), ("never seen", "red")]) == pytest.approx(50.0)
    # reported as computed, even when it is 0
    assert mt.text_only_floor(TRAIN, [("q: other", "green")]) == 0.0
    with pytest.raises(ValueError):
        mt.text_only_floor([("q", None)], TEST)


# --- bootstrap intervals ------------------------------------------------------------------------------------------


def _bits(n: int, p: float, seed: int = 1) -> list[bool]:
    return (np.random.default_rng(seed).random(n) < p).tolist()


def test_bootstrap_interval_contains_the_estimate_shrinks_and_is_deterministic():
    small, large = _bits(40, 0.4), _bits(1000, 0.4)
    for c in (small, large):
        lo, hi = mt.bootstrap_ci(c, key="X")
        assert lo < mt.precision_at_1(c) < hi
        assert 0.0 <= lo and hi <= 100.0
    width = lambda c: np.subtract(*mt.bootstrap_ci(c, key="X")[::-1])  # noqa: E731
    assert width(large) < 0.5 * width(small)  # ~1/sqrt(n): 5x more queries, less than half the width
    assert mt.bootstrap_ci(small, key="X") == mt.bootstrap_ci(small, key="X")  # fixed seed: the same interval
    assert not np.array_equal(mt.bootstrap_means(small, key="X", seed=1), mt.bootstrap_means(small, key="X"))
    assert not np.array_equal(mt.bootstrap_means(small, key="Y"), mt.bootstrap_means(small, key="X"))
    assert mt.bootstrap_means(small, key="X").shape == (mt.BOOTSTRAP_RESAMPLES,)
    assert mt.bootstrap_ci([True] * 30) == [100.0, 100.0] and mt.bootstrap_ci([False] * 30) == [0.0, 0.0]
    assert mt.bootstrap_ci([]) is None


def test_macro_interval_resamples_within_each_dataset():
    data = {"A": _bits(200, 0.3, 1), "B": _bits(50, 0.8, 2), "C": _bits(120, 0.5, 3)}
    point = np.mean([mt.precision_at_1(c) for c in data.values()])
    lo, hi = mt.macro_bootstrap_ci(data)
    assert lo < point < hi
    # a dataset's resamples do not depend on the others: the macro interval of one dataset is its own interval
    assert mt.macro_bootstrap_ci({"B": data["B"]}) == mt.bootstrap_ci(data["B"], key="B")
    # averaging datasets narrows the interval below the narrowest single dataset's spread times one
    assert hi - lo < max(np.diff(mt.bootstrap_ci(c, key=n))[0] for n, c in data.items())
    assert mt.macro_bootstrap_ci({}) is None


def test_paired_gain():
    a = {"A": _bits(100, 0.5, 1), "B": _bits(60, 0.3, 2)}
    same = mt.paired_gain_ci(a, a)
    assert same["gain"] == 0.0 and same["ci95"] == [0.0, 0.0] and same["n"] == 160
    # b: a with 10 of A's correct answers turned wrong -> gain 10 points on A, 0 on B, macro 5
    b = {"A": list(a["A"]), "B": list(a["B"])}
    flipped = [i for i, c in enumerate(b["A"]) if c][:10]
    for i in flipped:
        b["A"][i] = False
    g = mt.paired_gain_ci(a, b)
    assert g["gain"] == pytest.approx(5.0)
    lo, hi = g["ci95"]
    assert 0.0 <= lo < 5.0 < hi  # never below 0: a is never worse than b on any query
    assert mt.paired_gain_ci(b, a)["ci95"] == pytest.approx([-hi, -lo])
    # paired: far narrower than the interval of the difference of two independent estimates
    unpaired = np.diff(mt.bootstrap_ci(a["A"], key="A"))[0]
    assert hi - lo < unpaired / 2
    assert mt.paired_gain_ci(a, b) == g  # deterministic
    with pytest.raises(ValueError):
        mt.paired_gain_ci(a, {"A": a["A"]})
    with pytest.raises(ValueError):
        mt.paired_gain_ci({"A": [True, False]}, {"A": [True]})


def test_correct_bits_round_trip():
    c = [True, False, False, True]
    assert mt.encode_correct(c) == "1001" and mt.decode_correct("1001") == c
    entry = {"datasets": {"A": {"correct_bits": "10"}, "B": {"p_at_1": 3.0}}}
    assert mt.correct_by_dataset(entry) == {"A": [True, False]}


# --- the reports --------------------------------------------------------------------------------------------------


def _evaluated(tmp_path):
    from test_evaluation import _build

    from msolomon import evaluation as ev

    data, model, rows = _build(tmp_path)
    rep = ev.evaluate(model, data, ev.EvalSettings(modes=("auto", "never", "always"), show_progress_bar=False),
                      out=tmp_path / "r.json")
    return rep


def test_reproduce_report_prints_gains_with_intervals(tmp_path):
    from training.report import claims, gains, markdown, plot

    rep = _evaluated(tmp_path)
    result = {"split": {"margin": 1.0, "datasets": {}, "augment": [], "embed": []},
              "models": {"noaug": rep, "alwaysaug": rep, "msolomon": rep}, "mirrors": {"ShapeOOD": "ImageNet-R"}}
    g = {(r["scope"], r["comparison"]): r for r in gains(result)}
    assert set(g) == {(s, c) for s in ("overall", "ShapeOOD (ImageNet-R mirror)")
                      for c in ("M-Solomon(auto) − NoAug(never)", "M-Solomon(auto) − AlwaysAug(always)")}
    auto, never = rep["modes"]["auto"], rep["modes"]["never"]
    over = g[("overall", "M-Solomon(auto) − NoAug(never)")]
    assert over["gain"] == pytest.approx(auto["overall"] - never["overall"], abs=1e-3)
    assert over["ci95"][0] <= over["gain"] <= over["ci95"][1]
    mirror = g[("ShapeOOD (ImageNet-R mirror)", "M-Solomon(auto) − NoAug(never)")]
    assert mirror["gain"] == pytest.approx(auto["datasets"]["ShapeOOD"]["p_at_1"]
                                           - never["datasets"]["ShapeOOD"]["p_at_1"], abs=1e-3)
    for c in claims(result):
        ci = c["gain_over_noaug_ci95"]
        assert c["verdicts"]["over_noaug"] == ("holds" if ci[0] > 0 else "does not hold")
        assert c["holds"] == (ci[0] > 0 and c["verdicts"]["against_alwaysaug"] in ("holds", "level")
                              and c["verdicts"]["latency"] == "holds")
    md = markdown(result)
    assert "M-Solomon(auto) − AlwaysAug(always)" in md and "text-only floor" in md
    assert f"{over['gain']:+.1f} [{over['ci95'][0]:+.1f}, {over['ci95'][1]:+.1f}]" in md
    plot(result, tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 1000
    json.dumps(gains(result), allow_nan=False)


def test_a_claim_holds_by_its_interval_not_its_point_estimate():
    """FashionCIR's +1.8 [-1.6, +5.2] over AlwaysAug is no win: the interval decides, with a stated margin for
    "level with"."""
    from training.report import LEVEL_MARGIN, verdict

    assert verdict([-1.6, 5.2]) == "does not hold"  # a positive point estimate, an interval across zero
    assert verdict([-1.6, 5.2], LEVEL_MARGIN) == "level"
    assert verdict([0.1, 2.7], LEVEL_MARGIN) == "holds"
    assert verdict([-LEVEL_MARGIN - 0.1, 1.0], LEVEL_MARGIN) == "does not hold"
    assert verdict(None) is None
