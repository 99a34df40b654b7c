"""Evaluation metrics: Precision@1, macro averages, latency statistics and the threshold sweep.

Pure numpy and plain data, no model and no files, so the numbers can be checked on their own
(tests compare them against a brute-force computation) and reused by training's pilot study.

Conventions (the report repeats them under its "metric" key; DESIGN.md section 4 fixes the keys):
- **Precision@1** is a percentage. A query counts as correct only when candidate 0 (the positive) is the
  *unique* highest score. A tie for the top counts as wrong. VLM2Vec uses `argmax(scores) == 0`, which breaks
  ties in favour of candidate 0 and so gives a degenerate model (every embedding equal) 100%; the strict rule
  gives it 0%. The two agree whenever the top score is unique, which is the case for any real model unless a
  dataset lists the positive twice.
- Dataset scores are averaged **macro** (each dataset weighs the same) into meta-task, IND, OOD and overall
  scores, as in MMEB.
- **Augment rate** and **latency** are cost measures and are pooled **micro** (over all queries); the macro
  augment rate is reported too (`augment_rate_macro`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from msolomon.data import META_TASKS

TIMING_KEYS = ("preprocess", "decide", "generate", "embed", "total")


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


def latency_stats(ms: Sequence[float]) -> dict[str, float | None]:
    """Mean, median and 95th percentile (numpy's linear interpolation) of per-query latencies in ms."""
    if not len(ms):
        return {"mean": None, "p50": None, "p95": None}
    arr = np.asarray(ms, dtype=np.float64)
    return {"mean": float(arr.mean()), "p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95))}


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
    latency_ms: list[float]
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

    def summary(self) -> dict[str, Any]:
        """The per-dataset entry of the report (DESIGN.md section 4 keys first, then additions)."""
        n_cands = sorted(set(self.n_candidates))
        return {
            "meta_task": self.meta_task,
            "ood": self.ood,
            "n": self.n,
            "p_at_1": _round(self.p_at_1, 4),
            "augment_rate": _round(self.augment_rate, 4),
            "latency_ms_mean": _round(latency_stats(self.latency_ms)["mean"], 3),
            # additions
            "chance": _round(self.chance, 4),
            "n_candidates": n_cands[0] if len(n_cands) == 1 else _round(float(np.mean(self.n_candidates)), 2),
            "latency_ms": {k: _round(v, 3) for k, v in latency_stats(self.latency_ms).items()},
            "timings_ms_mean": {k: _round(v, 3) for k, v in self.timings_ms.items()},
        }


def _round(x: float | None, nd: int) -> float | None:
    return None if x is None else round(float(x), nd)


def _meta_task_order(tasks: Iterable[str]) -> list[str]:
    tasks = set(tasks)
    return [t for t in META_TASKS if t in tasks] + sorted(tasks - set(META_TASKS))


def _grouped(scores: Mapping[str, float], infos: Mapping[str, Any]) -> dict[str, Any]:
    """Macro averages of per-dataset scores: overall, IND, OOD, per meta-task. `infos[name]` has .meta_task, .ood."""
    by_task = {
        t: _round(macro(s for n, s in scores.items() if infos[n].meta_task == t), 4)
        for t in _meta_task_order(infos[n].meta_task for n in scores)
    }
    return {
        "overall": _round(macro(scores.values()), 4),
        "ind": _round(macro(s for n, s in scores.items() if not infos[n].ood), 4),
        "ood": _round(macro(s for n, s in scores.items() if infos[n].ood), 4),
        "by_meta_task": by_task,
    }


def aggregate_mode(results: Mapping[str, DatasetModeResult]) -> dict[str, Any]:
    """The report's entry for one mode, from its per-dataset results (keyed by dataset name)."""
    results = dict(results)
    scores = {n: r.p_at_1 for n, r in results.items()}
    out = _grouped(scores, results)
    all_aug = [a for r in results.values() for a in r.augmented]
    all_lat = [x for r in results.values() for x in r.latency_ms]
    n_total = sum(r.n for r in results.values())
    timings: dict[str, float] = {}
    for key in sorted({k for r in results.values() for k in r.timings_ms}):
        weighted = [(r.timings_ms[key], r.n) for r in results.values() if key in r.timings_ms]
        w = sum(n for _, n in weighted)
        timings[key] = _round(sum(v * n for v, n in weighted) / w, 3) if w else None
    out.update({
        "augment_rate": _round(float(np.mean(all_aug)) if all_aug else 0.0, 4),
        "latency_ms": {k: _round(v, 3) for k, v in latency_stats(all_lat).items()},
        "datasets": {n: r.summary() for n, r in results.items()},
        # additions
        "n": n_total,
        "augment_rate_macro": _round(macro(r.augment_rate for r in results.values()), 4),
        "chance": _round(macro(r.chance for r in results.values()), 4),
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
            lat = np.where(aug, always[n].latency_ms, never[n].latency_ms)
            scores[n] = precision_at_1(corr.tolist())
            aug_all.extend(aug.tolist())
            lat_all.extend(lat.tolist())
        entry = {"threshold": float(t)}
        entry.update(_grouped(scores, never))
        entry.update({
            "augment_rate": _round(float(np.mean(aug_all)) if aug_all else 0.0, 4),
            "latency_ms_mean": _round(latency_stats(lat_all)["mean"], 3),
            "datasets": {n: _round(s, 4) for n, s in scores.items()},
        })
        curve.append(entry)
    return curve

