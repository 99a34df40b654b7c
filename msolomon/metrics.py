"""Evaluation metrics: Precision@1, macro averages, latency statistics and the threshold sweep.

Pure numpy and plain data, no model and no files, so the numbers can be checked on their own
(tests compare them against a brute-force computation) and reused by training's pilot study.

Conventions (the report repeats them under its "metric" key; the report's fixed keys come first):
- **Precision@1** is a percentage. A query counts as correct only when candidate 0 (the positive) is the
  *unique* highest score. A tie for the top counts as wrong. VLM2Vec uses `argmax(scores) == 0`, which breaks
  ties in favour of candidate 0 and so gives a degenerate model (every embedding equal) 100%; the strict rule
  gives it 0%. The two agree whenever the top score is unique, which is the case for any real model unless a
  dataset lists the positive twice.
- Dataset scores are averaged **macro** (each dataset weighs the same) into meta-task, IND, OOD and overall
  scores, as in MMEB.
- **Augment rate** and **latency** are cost measures and are pooled **micro** (over all queries); the macro
  augment rate is reported too (`augment_rate_macro`).
- **Floors.** `chance` is the expected Precision@1 of a random pick of a candidate (mean of 100/n_candidates).
  `floor_text_only` is what a predictor that never looks at an image reaches; see `text_only_floor` for the exact
  rule ("majority-per-template") and `floor_rule` for when chance is used instead.
- **Intervals.** `ci95` is a 95% percentile bootstrap interval of Precision@1 over a dataset's queries
  (`BOOTSTRAP_RESAMPLES` resamples, numpy only, a fixed seed per dataset so reruns give the same interval). Macro
  aggregates resample queries within each dataset, then macro-average (`macro_bootstrap_ci`); a gain between two
  runs on the same queries resamples the queries of both together (`paired_gain_ci`).
"""
from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from msolomon.data import META_TASKS

TIMING_KEYS = ("preprocess", "decide", "generate", "embed", "total")
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CI_LEVEL = 0.95
FLOOR_MAJORITY = "majority-per-template"
FLOOR_CHANCE = "chance"


def is_correct(scores: np.ndarray) -> bool:
    """True when candidate 0 scores strictly higher than every other candidate (ties count as wrong)."""
    scores = np.asarray(scores)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"expected a non-empty 1-D score vector, got shape {scores.shape}")
    if scores.size == 1:
        return True
    return bool(scores[0] > scores[1:].max())


def precision_at_1(correct: Sequence[bool]) -> float:
    """Percentage of correct queries (0.0 for an empty list)."""
    return 100.0 * float(np.mean(np.asarray(correct, dtype=bool))) if len(correct) else 0.0


def macro(values: Iterable[float]) -> float | None:
    """Unweighted mean; None when there is nothing to average (e.g. no OOD dataset was evaluated)."""
    values = [float(v) for v in values]
    return float(np.mean(values)) if values else None


def timed(ms: Iterable[float | None]) -> list[float]:
    """The latencies that were measured: an evaluation at batch size > 1 times only a sample of queries one at
    a time and stores None for the others."""
    return [float(x) for x in ms if x is not None]


def latency_stats(ms: Sequence[float | None]) -> dict[str, float | None]:
    """Mean, median and 95th percentile (numpy's linear interpolation) of per-query latencies in ms; untimed
    queries (None) are left out."""
    ms = timed(ms)
    if not ms:
        return {"mean": None, "p50": None, "p95": None}
    arr = np.asarray(ms, dtype=np.float64)
    return {"mean": float(arr.mean()), "p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95))}


# --- the text-only floor ------------------------------------------------------------------------------------------


def normalise_text(text: str | None) -> str:
    """A query's template / an answer's identity: whitespace runs collapsed to one space, stripped, casefolded."""
    return " ".join((text or "").split()).casefold()


def text_only_predictions(train: Iterable[tuple[str | None, str | None]],
                          queries: Iterable[str | None]) -> list[str]:
    """What the majority text-only predictor answers to each query (normalised answer text).

    `train` holds (query text, positive text) pairs. For a query it predicts the most frequent normalised training
    positive among the training rows whose normalised query text (the template) equals the query's; a template
    never seen in training falls back to the most frequent positive of the whole training set. Ties between equally
    frequent answers go to the one seen first in training order. Training rows without a positive text are ignored.
    """
    per_template: dict[str, Counter] = {}
    overall: Counter = Counter()
    for q, pos in train:
        ans = normalise_text(pos)
        if not ans:
            continue
        per_template.setdefault(normalise_text(q), Counter())[ans] += 1
        overall[ans] += 1
    if not overall:
        raise ValueError("text_only_predictions needs at least one training row with a positive text")
    fallback = overall.most_common(1)[0][0]  # Counter keeps first-seen order among equal counts
    best = {t: c.most_common(1)[0][0] for t, c in per_template.items()}
    return [best.get(normalise_text(q), fallback) for q in queries]


def text_only_correct(train: Iterable[tuple[str | None, str | None]],
                      test: Sequence[tuple[str | None, str | None]]) -> list[bool]:
    """Per test (query text, positive text) pair: whether the majority text-only prediction equals the positive
    (candidate 0), both normalised with `normalise_text`."""
    preds = text_only_predictions(train, [q for q, _ in test])
    return [p == normalise_text(pos) for p, (_, pos) in zip(preds, test)]


def text_only_floor(train: Iterable[tuple[str | None, str | None]],
                    test: Sequence[tuple[str | None, str | None]]) -> float:
    """The "majority-per-template" text-only floor, a Precision@1 in %: the share of test queries whose positive
    text equals the most frequent training positive for the query's template (its normalised query text), falling
    back to the most frequent training positive overall for templates unseen in training (see
    `text_only_predictions`). It never looks at an image and is reported as computed, even below chance."""
    return precision_at_1(text_only_correct(train, test))


# --- bootstrap intervals -------------------------------------------------------------------------------------------


def _rng(seed: int, key: str) -> np.random.Generator:
    """A generator fixed by (seed, key): a dataset's resamples do not depend on which other datasets are present."""
    return np.random.default_rng([int(seed), zlib.crc32(key.encode("utf-8"))])


def bootstrap_means(values: Sequence[float], n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                    key: str = "") -> np.ndarray:
    """Means of `n_resamples` resamples (with replacement, same size) of `values`, ×100 (percent points).

    The resampled indices depend only on (seed, key, len(values)): two lists of the same queries resampled with the
    same key are resampled together (the paired bootstrap).
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("cannot bootstrap an empty list")
    rng = _rng(seed, key)
    out = np.empty(n_resamples, dtype=np.float64)
    chunk = max(1, 4_000_000 // x.size)  # bound memory: at most ~4M indices at a time
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, x.size, size=(stop - start, x.size))
        out[start:stop] = x[idx].mean(axis=1)
    return 100.0 * out


def percentile_interval(samples: np.ndarray, level: float = CI_LEVEL) -> list[float]:
    """The central `level` percentile interval [lo, hi] of bootstrap samples."""
    a = (1.0 - level) / 2.0
    lo, hi = np.percentile(np.asarray(samples, dtype=np.float64), [100.0 * a, 100.0 * (1.0 - a)])
    return [float(lo), float(hi)]


def bootstrap_ci(correct: Sequence[bool], n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                 key: str = "", level: float = CI_LEVEL) -> list[float] | None:
    """95% percentile bootstrap interval of Precision@1 (%) over queries; None for an empty list."""
    if not len(correct):
        return None
    return percentile_interval(bootstrap_means(correct, n_resamples, seed, key), level)


def macro_bootstrap_ci(correct_by_dataset: Mapping[str, Sequence[bool]], n_resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED, level: float = CI_LEVEL) -> list[float] | None:
    """Interval of the macro average of Precision@1: each dataset's queries are resampled on their own (keyed by the
    dataset's name), the resampled scores are macro-averaged, and the percentiles are taken. None when empty."""
    samples = [bootstrap_means(c, n_resamples, seed, key=name) for name, c in correct_by_dataset.items() if len(c)]
    if not samples:
        return None
    return percentile_interval(np.mean(samples, axis=0), level)


def paired_gain_ci(a: Mapping[str, Sequence[bool]], b: Mapping[str, Sequence[bool]],
                   n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                   level: float = CI_LEVEL) -> dict[str, Any]:
    """Macro-average gain of run `a` over run `b` (Precision@1 points) with its paired bootstrap interval.

    `a` and `b` map each dataset to its per-query correctness, in the same query order: the same queries answered by
    two models or modes. Per dataset the queries of both are resampled together (the same indices), the resampled
    differences are macro-averaged over datasets, and the central 95% of them is the interval.
    Returns {"gain": float, "ci95": [lo, hi], "datasets": [names], "n": queries}.
    """
    if set(a) != set(b):
        raise ValueError(f"paired_gain_ci needs the same datasets in both runs, got {sorted(a)} and {sorted(b)}")
    names = [n for n in a if len(a[n])]
    if not names:
        raise ValueError("paired_gain_ci needs at least one dataset with queries")
    diffs, samples = [], []
    for name in names:
        x = np.asarray(a[name], dtype=np.float64)
        y = np.asarray(b[name], dtype=np.float64)
        if x.shape != y.shape:
            raise ValueError(f"dataset {name!r}: {x.size} queries in one run and {y.size} in the other; "
                             "a paired interval needs the same queries")
        d = x - y
        diffs.append(100.0 * d.mean())
        samples.append(bootstrap_means(d, n_resamples, seed, key=name))
    return {"gain": float(np.mean(diffs)), "ci95": percentile_interval(np.mean(samples, axis=0), level),
            "datasets": names, "n": int(sum(len(a[n]) for n in names))}


def encode_correct(correct: Sequence[bool]) -> str:
    """Per-query correctness as a compact string, one "1" (correct) or "0" per query in row order."""
    return "".join("1" if c else "0" for c in correct)


def decode_correct(bits: str) -> list[bool]:
    """The inverse of `encode_correct`."""
    if set(bits) - {"0", "1"}:
        raise ValueError("correct_bits must hold only 0 and 1")
    return [c == "1" for c in bits]


def correct_by_dataset(mode_entry: Mapping[str, Any]) -> dict[str, list[bool]]:
    """Per-query correctness of each dataset of one report mode entry (report["modes"][mode]), from the datasets'
    `correct_bits`; datasets of older reports without them are left out."""
    return {n: decode_correct(d["correct_bits"]) for n, d in mode_entry.get("datasets", {}).items()
            if isinstance(d.get("correct_bits"), str)}


@dataclass
class DatasetModeResult:
    """Everything one (dataset, mode) evaluation produced, per query, in row order.

    It is what the resume sidecar stores, so reports, the threshold sweep and the predictions file can be
    rebuilt from it without re-encoding anything.
    """

    dataset: str
    mode: str
    meta_task: str
    ood: bool
    indices: list[int]
    correct: list[bool]
    augmented: list[bool]
    p_augment: list[float]
    latency_ms: list[float | None]  # None: not timed (accuracy came from a batch)
    n_candidates: list[int]
    timings_ms: dict[str, float] = field(default_factory=dict)  # mean per timing component
    predictions: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.correct)

    @property
    def p_at_1(self) -> float:
        return precision_at_1(self.correct)

    @property
    def augment_rate(self) -> float:
        return float(np.mean(self.augmented)) if self.augmented else 0.0

    @property
    def chance(self) -> float:
        """Expected Precision@1 of a random ranking: mean over queries of 100 / n_candidates."""
        return float(np.mean([100.0 / c for c in self.n_candidates])) if self.n_candidates else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DatasetModeResult":
        return cls(**d)

    def summary(self, floor: Mapping[str, Any] | None = None, ci95: Sequence[float] | None = None) -> dict[str, Any]:
        """The per-dataset entry of the report (the fixed keys of docs/architecture.md first, then additions).

        `floor` is the dataset's {"floor_text_only", "floor_rule"} (None: not computed); `ci95` its Precision@1
        interval (computed here when not given).
        """
        n_cands = sorted(set(self.n_candidates))
        if ci95 is None:
            ci95 = bootstrap_ci(self.correct, key=self.dataset)
        floor = floor or {}
        return {
            "meta_task": self.meta_task,
            "ood": self.ood,
            "n": self.n,
            "p_at_1": round_or_none(self.p_at_1, 4),
            "ci95": None if ci95 is None else [round_or_none(v, 4) for v in ci95],
            "chance": round_or_none(self.chance, 4),
            "floor_text_only": round_or_none(floor.get("floor_text_only"), 4),
            "augment_rate": round_or_none(self.augment_rate, 4),
            "latency_ms_mean": round_or_none(latency_stats(self.latency_ms)["mean"], 3),
            # additions
            "floor_rule": floor.get("floor_rule", "not computed"),
            "n_candidates": n_cands[0] if len(n_cands) == 1 else round_or_none(float(np.mean(self.n_candidates)), 2),
            "latency_ms": {k: round_or_none(v, 3) for k, v in latency_stats(self.latency_ms).items()},
            "timings_ms_mean": {k: round_or_none(v, 3) for k, v in self.timings_ms.items()},
            "correct_bits": encode_correct(self.correct),
            "augmented_bits": encode_correct(self.augmented),  # '1': the query took /augment (msolomon.decisions)
        }


def round_or_none(x: float | None, nd: int = 4) -> float | None:
    """`x` rounded to `nd` decimals for a report; None stays None."""
    return None if x is None else round(float(x), nd)


def _meta_task_order(tasks: Iterable[str]) -> list[str]:
    tasks = set(tasks)
    return [t for t in META_TASKS if t in tasks] + sorted(tasks - set(META_TASKS))


def _grouped(scores: Mapping[str, float], infos: Mapping[str, Any]) -> dict[str, Any]:
    """Macro averages of per-dataset scores: overall, IND, OOD, per meta-task. `infos[name]` has .meta_task, .ood."""
    by_task = {
        t: round_or_none(macro(s for n, s in scores.items() if infos[n].meta_task == t), 4)
        for t in _meta_task_order(infos[n].meta_task for n in scores)
    }
    return {
        "overall": round_or_none(macro(scores.values()), 4),
        "ind": round_or_none(macro(s for n, s in scores.items() if not infos[n].ood), 4),
        "ood": round_or_none(macro(s for n, s in scores.items() if infos[n].ood), 4),
        "by_meta_task": by_task,
    }


def _grouped_ci(samples: Mapping[str, np.ndarray], infos: Mapping[str, Any]) -> dict[str, Any]:
    """Bootstrap intervals of the macro averages of `_grouped`, from each dataset's resampled scores."""
    def ci(names: list[str]) -> list[float] | None:
        if not names:
            return None
        return [round_or_none(v, 4) for v in percentile_interval(np.mean([samples[n] for n in names], axis=0))]

    return {
        "overall_ci95": ci(list(samples)),
        "ind_ci95": ci([n for n in samples if not infos[n].ood]),
        "ood_ci95": ci([n for n in samples if infos[n].ood]),
        "by_meta_task_ci95": {t: ci([n for n in samples if infos[n].meta_task == t])
                              for t in _meta_task_order(infos[n].meta_task for n in samples)},
    }


def aggregate_mode(results: Mapping[str, DatasetModeResult],
                   floors: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The report's entry for one mode, from its per-dataset results (keyed by dataset name).

    `floors` maps a dataset to its {"floor_text_only", "floor_rule"} (see `text_only_floor`).
    """
    results = dict(results)
    floors = floors or {}
    scores = {n: r.p_at_1 for n, r in results.items()}
    out = _grouped(scores, results)
    samples = {n: bootstrap_means(r.correct, key=n) for n, r in results.items() if r.n}
    out.update(_grouped_ci(samples, results))
    floor_values = {n: floors[n]["floor_text_only"] for n in results
                    if floors.get(n, {}).get("floor_text_only") is not None}
    floor_macro = _grouped(floor_values, results) if len(floor_values) == len(results) and results else None
    all_aug = [a for r in results.values() for a in r.augmented]
    all_lat = [x for r in results.values() for x in r.latency_ms]
    n_total = sum(r.n for r in results.values())
    timings: dict[str, float] = {}
    for key in sorted({k for r in results.values() for k in r.timings_ms}):
        weighted = [(r.timings_ms[key], r.n) for r in results.values() if key in r.timings_ms]
        w = sum(n for _, n in weighted)
        timings[key] = round_or_none(sum(v * n for v, n in weighted) / w, 3) if w else None
    out.update({
        "augment_rate": round_or_none(float(np.mean(all_aug)) if all_aug else 0.0, 4),
        "latency_ms": {k: round_or_none(v, 3) for k, v in latency_stats(all_lat).items()},
        "datasets": {n: r.summary(floors.get(n), None if n not in samples else percentile_interval(samples[n]))
                     for n, r in results.items()},
        # additions
        "n": n_total,
        "augment_rate_macro": round_or_none(macro(r.augment_rate for r in results.values()), 4),
        "chance": round_or_none(macro(r.chance for r in results.values()), 4),
        "chance_macro": _grouped({n: r.chance for n, r in results.items()}, results),
        "floor_text_only_macro": floor_macro,
        "timings_ms_mean": timings,
    })
    return out


def threshold_curve(
    never: Mapping[str, DatasetModeResult],
    always: Mapping[str, DatasetModeResult],
    p_augment: Mapping[str, Sequence[float]],
    thresholds: Sequence[float],
) -> list[dict[str, Any]]:
    """Auto mode's accuracy and cost at each decision threshold, without re-encoding.

    `p_augment` does not depend on the threshold, and the `never` / `always` runs hold each query's result for
    either decision, so at threshold t a query takes its `always` result when p_augment >= t (the model's own
    rule) and its `never` result otherwise; its latency is that path's total. t = 0 reproduces `always`,
    t > 1 reproduces `never`.
    """
    names = list(never)
    if set(names) != set(always) or set(names) != set(p_augment):
        raise ValueError("threshold_curve needs never, always and p_augment for the same datasets")
    for n in names:
        if never[n].indices != always[n].indices or len(p_augment[n]) != never[n].n:
            raise ValueError(f"dataset {n!r}: never/always runs cover different queries; rerun with a fresh sidecar")
    curve = []
    for t in thresholds:
        scores, aug_all, lat_all = {}, [], []
        for n in names:
            aug = np.asarray(p_augment[n], dtype=np.float64) >= t
            corr = np.where(aug, always[n].correct, never[n].correct)
            lat = [a if use else e for use, a, e in zip(aug, always[n].latency_ms, never[n].latency_ms)]
            scores[n] = precision_at_1(corr.tolist())
            aug_all.extend(aug.tolist())
            lat_all.extend(lat)
        entry = {"threshold": float(t)}
        entry.update(_grouped(scores, never))
        entry.update({
            "augment_rate": round_or_none(float(np.mean(aug_all)) if aug_all else 0.0, 4),
            "latency_ms_mean": round_or_none(latency_stats(lat_all)["mean"], 3),
            "datasets": {n: round_or_none(s, 4) for n, s in scores.items()},
        })
        curve.append(entry)
    return curve

