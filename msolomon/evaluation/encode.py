"""Encoding a dataset in one mode and scoring each query against its own candidates: candidates are encoded once
per dataset (they never generate, so every mode and threshold shares them); queries are timed one at a time as a
user of the demo would see them, or batched for accuracy with an evenly spaced timed sample."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from msolomon.data import DatasetInfo, EvalRow
from msolomon.evaluation.settings import EvalSettings
from msolomon.inputs import Candidate, Query
from msolomon.metrics import TIMING_KEYS, DatasetModeResult, is_correct


def candidate_key(c: Candidate) -> tuple:
    """Identity of a candidate for de-duplication: its text, image path and instruction."""
    img = c.image
    if img is None:
        ikey: Any = None
    elif isinstance(img, (str, Path)):
        ikey = str(img)
    else:  # an in-memory image: only the same object is the same candidate
        ikey = ("object", id(img))
    return (c.text, ikey, getattr(c, "instruction", None))


def unique_candidates(rows: Sequence[EvalRow]) -> tuple[list[Candidate], list[np.ndarray]]:
    """The distinct candidates of a dataset in first-seen order, and each row's candidate indices into them."""
    seen: dict[tuple, int] = {}
    unique: list[Candidate] = []
    per_row = []
    for row in rows:
        idx = []
        for c in row.candidates:
            k = candidate_key(c)
            if k not in seen:
                seen[k] = len(unique)
                unique.append(c)
            idx.append(seen[k])
        per_row.append(np.asarray(idx, dtype=np.int64))
    return unique, per_row


def _image_str(img: Any) -> str | None:
    if img is None:
        return None
    return str(img) if isinstance(img, (str, Path)) else f"<{type(img).__name__}>"


def _float_or_none(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def encode_candidates_once(model: Any, candidates: Sequence[Candidate], settings: EvalSettings) -> np.ndarray:
    """One `encode_candidates` call over a dataset's unique candidates; checks shape and finiteness."""
    vecs = model.encode_candidates(list(candidates), batch_size=settings.candidate_batch_size,
                                   show_progress_bar=settings.show_progress_bar)
    vecs = np.asarray(vecs, dtype=np.float32)
    if vecs.ndim != 2 or vecs.shape[0] != len(candidates):
        raise RuntimeError(f"encode_candidates returned shape {vecs.shape} for {len(candidates)} candidates")
    if not np.isfinite(vecs).all():
        raise RuntimeError("encode_candidates returned non-finite values")
    return vecs


def _encode(model: Any, queries: Sequence[Query], mode: str, settings: EvalSettings,
            pools: Sequence[np.ndarray] | None = None) -> tuple[list[Any], float]:
    """Encode queries in one `encode_queries` call; returns the results and the wall time in ms. `pools`: each
    query's candidate vectors, given only for the cascade's gate (auto mode with `settings.gate_margin`)."""
    extra = {}
    if pools is not None:
        from msolomon.gate import MarginGate

        extra["gate"] = MarginGate(settings.gate_margin, lambda position: pools[position])
    t0 = time.perf_counter()
    out = model.encode_queries(list(queries), augment=mode, threshold=settings.threshold, batch_size=len(queries),
                               max_new_tokens=settings.max_new_tokens, show_progress_bar=False, **extra)
    wall = (time.perf_counter() - t0) * 1000.0
    out = list(out) if isinstance(out, (list, tuple)) else [out]
    if len(out) != len(queries):
        raise RuntimeError(f"encode_queries returned {len(out)} results for {len(queries)} queries")
    return out, wall


def timed_rows(n: int, k: int | None) -> set[int]:
    """Positions of the rows timed one at a time: all (k None), else k evenly spaced ones (first and last
    included), so the sample covers the whole file rather than its head."""
    if k is None or k >= n:
        return set(range(n))
    if k <= 0:
        return set()
    return {int(round(x)) for x in np.linspace(0, n - 1, k)}


def encode_rows(model: Any, rows: Sequence[EvalRow], mode: str, settings: EvalSettings,
                progress: Any = None, pools: Sequence[np.ndarray] | None = None) -> list[tuple[Any, float | None]]:
    """Each row's query result and its latency in ms, in row order. The timed rows (`timed_rows`) are encoded
    alone, batch size 1, as a user of the demo would; the rest in batches of `settings.batch_size`, untimed (None).
    Whether a row is timed does not change its decision: the throughput bench counts no flips across batch sizes."""
    timed = timed_rows(len(rows), settings.timed_per_dataset)
    out: list[tuple[Any, float | None] | None] = [None] * len(rows)
    for i in sorted(timed):
        (res,), wall = _encode(model, [rows[i].query], mode, settings, None if pools is None else [pools[i]])
        total = _float_or_none((getattr(res, "timings", None) or {}).get("total"))
        out[i] = (res, total if total is not None else wall)
        if progress is not None:
            progress.update(1)
    rest = [i for i in range(len(rows)) if i not in timed]
    for start in range(0, len(rest), settings.batch_size):
        chunk = rest[start:start + settings.batch_size]
        results, _ = _encode(model, [rows[i].query for i in chunk], mode, settings,
                             None if pools is None else [pools[i] for i in chunk])
        for i, res in zip(chunk, results):
            out[i] = (res, None)
        if progress is not None:
            progress.update(len(chunk))
    return out  # type: ignore[return-value]


def evaluate_dataset_mode(model: Any, rows: Sequence[EvalRow], info: DatasetInfo, mode: str,
                          cand_vecs: np.ndarray, row_index: Sequence[np.ndarray], unique: Sequence[Candidate],
                          settings: EvalSettings) -> DatasetModeResult:
    """Encode every query of one dataset in one mode and score it against its own candidate list."""
    from tqdm.auto import tqdm

    res = DatasetModeResult(dataset=info.name, mode=mode, meta_task=info.meta_task, ood=bool(info.ood),
                            indices=[], correct=[], augmented=[], p_augment=[], latency_ms=[], n_candidates=[],
                            settings={"threshold": settings.threshold, "max_new_tokens": settings.max_new_tokens,
                                      "gate_margin": settings.gate_margin if mode == "auto" else None})
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    disable = None if settings.show_progress_bar is None else not settings.show_progress_bar
    with tqdm(total=len(rows), desc=f"{info.name} [{mode}]", leave=False, disable=disable, unit="query") as bar:
        gated = mode == "auto" and settings.gate_margin is not None  # each query's own candidates, for the gate
        pools = [cand_vecs[idx] for idx in row_index] if gated else None
        encoded = encode_rows(model, rows, mode, settings, bar, pools)
    for row, idx, (qr, latency) in zip(rows, row_index, encoded):
        emb = np.asarray(qr.embedding, dtype=np.float32).reshape(-1)
        scores = cand_vecs[idx] @ emb
        ok = is_correct(scores)
        if latency is not None:  # the stage breakdown of timed queries only: batched ones share their clock
            for k, v in dict(getattr(qr, "timings", None) or {}).items():
                v = _float_or_none(v)
                if v is not None:
                    sums[k] = sums.get(k, 0.0) + v
                    counts[k] = counts.get(k, 0) + 1
        augmented = qr.decision == "/augment"
        p_aug = _float_or_none(qr.p_augment)
        res.indices.append(int(row.index))
        res.correct.append(ok)
        res.augmented.append(augmented)
        res.p_augment.append(p_aug)
        res.latency_ms.append(None if latency is None else float(latency))
        res.n_candidates.append(len(idx))
        order = np.argsort(-scores, kind="stable")[: settings.top_k]
        q = row.query
        res.predictions.append({
            "dataset": info.name, "index": int(row.index), "mode": mode,
            "query": q.text, "image": _image_str(q.image), "instruction": getattr(q, "instruction", None),
            "decision": qr.decision, "p_augment": p_aug, "augmentation": qr.augmentation,
            "gated": bool(getattr(qr, "gated", False)),
            "correct": ok, "latency_ms": None if latency is None else round(float(latency), 3),
            "n_candidates": len(idx),
            "positive_score": float(scores[0]),
            "top": [{"index": int(j), "text": unique[idx[j]].text, "image": _image_str(unique[idx[j]].image),
                     "score": float(scores[j]), "correct": bool(j == 0)} for j in order],
        })
    res.timings_ms = {k: sums[k] / counts[k] for k in sorted(sums, key=_timing_order)}
    return res


def _timing_order(k: str) -> tuple[int, str]:
    return (TIMING_KEYS.index(k) if k in TIMING_KEYS else len(TIMING_KEYS), k)


# --- resume sidecar ----------------------------------------------------------------------------------------------

