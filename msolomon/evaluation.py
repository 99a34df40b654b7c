"""MMEB-style evaluation: Precision@1 per dataset, meta-task, IND / OOD and overall, for the modes
`auto`, `never` and `always`, with the `/augment` rate and per-query latency at batch size 1.

    python -m msolomon.evaluation --model PATH --data DIR [--image-root DIR] --out FILE.json \
        [--modes auto,never,always] [--limit N] [--thresholds 0,0.25,0.5,0.75,1] [--datasets A,B] \
        [--max-new-tokens N] [--threshold 0.5] [--batch-size 1] [--latency-queries N] [--threads N] [--fresh]

Why it is built this way:
- Each dataset's unique candidates (by text, image and instruction) are encoded once and shared by every mode
  and threshold: candidates never generate, so their embeddings do not depend on the query path.
- Queries are encoded one at a time by default, so `QueryResult.timings["total"]` is the latency a user of the demo
  sees (raw input to normalised embedding; search is excluded). `--batch-size B` encodes queries in batches for
  accuracy (5x faster at 32 on two CPU threads) and times only `--latency-queries` evenly spaced queries per
  dataset one at a time; the others store no latency.
- The threshold sweep reuses the `never` and `always` runs (p_augment does not depend on the threshold), so a
  whole accuracy-latency curve costs no extra encoding.
- Results are kept per (dataset, mode) in a sidecar folder next to the report (FILE.parts/), written atomically,
  so an interrupted run resumes where it stopped; `--fresh` starts over.
Metric conventions (tie rule, macro vs micro) are documented in `msolomon.metrics`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from msolomon.data import DataFormatError, DatasetInfo, EvalRow
from msolomon.files import atomic_file
from msolomon.inputs import Candidate, Query
from msolomon.metrics import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    FLOOR_CHANCE,
    FLOOR_MAJORITY,
    TIMING_KEYS,
    DatasetModeResult,
    aggregate_mode,
    is_correct,
    latency_stats,
    text_only_floor,
    threshold_curve,
)
from msolomon.model import AUGMENT_MODES
from msolomon.report import (
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    markdown_report,
    output_paths,
    plot_report,
    read_jsonl,
    write_jsonl,
)
from msolomon.runtime import add_threads_argument
from msolomon.settings import process_environment, split_list

logger = logging.getLogger(__name__)

MODES = AUGMENT_MODES  # msolomon.model's
DEFAULT_THRESHOLDS = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_LATENCY_QUERIES = 100  # timed per dataset when queries are batched (1,500 on all 15 MiniMMEB sets)
TIE_RULE = "a query counts only when the positive (candidate 0) is the unique top score; ties count as wrong"
FLOOR_NOTES = {
    "chance": "expected Precision@1 of a random pick of a candidate: mean over queries of 100 / number of candidates",
    "floor_text_only": (
        "what a predictor that never looks at an image reaches. Rule 'majority-per-template': for each test query, "
        "predict the most frequent training positive text among the training rows whose query text (whitespace- "
        "and case-normalised: the template) equals the query's, else the most frequent training positive of the "
        "dataset (ties: first seen in training order); correct when it equals the query's positive (candidate 0) "
        "text, normalised the same way. Training rows are DIR/train/NAME/original.jsonl. Rule 'chance': where the "
        "positives are images, or the dataset has no train split (out-of-distribution sets, MMEB-eval as "
        "published), a text-only predictor cannot beat a random pick of a candidate, so the floor is the chance "
        "value. Reported as computed (it can be below chance); chance is reported separately."),
    "ci95": (f"95% percentile bootstrap interval of Precision@1 over the dataset's queries ({BOOTSTRAP_RESAMPLES} "
             f"resamples, seed {BOOTSTRAP_SEED} with the dataset's name); overall_ci95, ind_ci95, ood_ci95 and "
             "by_meta_task_ci95 resample queries within each dataset, then macro-average"),
    "augmented_bits": "per-query decisions in row order ('1' the query took /augment), for the decisions block",
    "correct_bits": "per-query correctness in row order ('1' correct), for paired intervals between runs "
                    "(msolomon.metrics.paired_gain_ci)",
}
SIDECAR_VERSION = 1


def default_model_path() -> Path:
    """The shipped default model, resolved relative to the repository (assets/model)."""
    return Path(__file__).resolve().parents[1] / "assets" / "model"


class EvaluationError(ValueError):
    """A bad argument or an inconsistent resume state; the message names the problem (the CLI exits with 2)."""


class StaleResultsError(EvaluationError):
    """The resume folder holds results of another model, data or settings: they are never reused silently."""


@dataclass
class EvalSettings:
    """What to evaluate and how; validated once so a long run cannot fail late on a typo."""

    modes: tuple[str, ...] = MODES
    limit: int | None = None
    thresholds: tuple[float, ...] | None = None
    datasets: tuple[str, ...] | None = None
    threshold: float = 0.5
    max_new_tokens: int = 64
    candidate_batch_size: int = 32
    top_k: int = 5
    resume: bool = True
    show_progress_bar: bool | None = None  # None: tqdm decides (shown on a terminal)
    split: str = "test"
    batch_size: int = 1  # queries per batch; 1 times every query (the latency setting)
    latency_queries: int | None = None  # with batch_size > 1: queries timed one at a time per dataset

    def __post_init__(self) -> None:
        if isinstance(self.modes, str):
            self.modes = tuple(split_list(self.modes))
        self.modes = tuple(dict.fromkeys(self.modes))
        if not self.modes:
            raise EvaluationError("no mode given: choose from auto, never, always")
        unknown = [m for m in self.modes if m not in MODES]
        if unknown:
            raise EvaluationError(f"unknown mode {', '.join(map(repr, unknown))}: choose from auto, never, always")
        bad_limit = isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit <= 0
        if self.limit is not None and bad_limit:
            raise EvaluationError(f"--limit must be a positive integer, got {self.limit!r}")
        if self.thresholds is not None:
            self.thresholds = tuple(float(t) for t in self.thresholds)
            if not self.thresholds or not all(math.isfinite(t) for t in self.thresholds):
                raise EvaluationError(f"--thresholds must be finite numbers, got {self.thresholds!r}")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise EvaluationError(f"--threshold must be in [0, 1], got {self.threshold!r}")
        if self.max_new_tokens <= 0:
            raise EvaluationError(f"--max-new-tokens must be positive, got {self.max_new_tokens}")
        if self.candidate_batch_size <= 0 or self.top_k <= 0:
            raise EvaluationError("candidate_batch_size and top_k must be positive")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise EvaluationError(f"--batch-size must be a positive integer, got {self.batch_size!r}")
        if self.latency_queries is not None and (isinstance(self.latency_queries, bool)
                                                 or not isinstance(self.latency_queries, int)
                                                 or self.latency_queries < 0):
            raise EvaluationError(f"--latency-queries must be an integer >= 0, got {self.latency_queries!r}")
        if self.latency_queries is not None and self.batch_size == 1:
            raise EvaluationError("--latency-queries needs --batch-size > 1 (at batch size 1 every query is timed)")
        if self.datasets is not None:
            self.datasets = tuple(dict.fromkeys(self.datasets))

    @property
    def timed_per_dataset(self) -> int | None:
        """How many queries of a dataset are timed one at a time (None: all)."""
        if self.batch_size == 1:
            return None
        return DEFAULT_LATENCY_QUERIES if self.latency_queries is None else self.latency_queries

    @property
    def run_modes(self) -> tuple[str, ...]:
        """Modes to encode: the requested ones, plus never and always when a threshold sweep needs them."""
        extra = ("never", "always") if self.thresholds else ()
        return tuple(dict.fromkeys(self.modes + extra))


# --- data --------------------------------------------------------------------------------------------------------


@dataclass
class Benchmark:
    """A test-set folder: which datasets it has, where they sit in MMEB's taxonomy, and how to read them."""

    data_dir: Path
    folder: Path  # the folder that holds one sub-folder per dataset
    image_root: Path
    kind: str  # "minimmeb" or "mmeb-eval"
    names: list[str]
    infos: dict[str, DatasetInfo]
    split: str = "test"
    allow_outside_root: bool = False  # image paths may resolve outside image_root (only for trusted data)

    def read(self, name: str, limit: int | None = None, check_images: bool = True) -> list[EvalRow]:
        from msolomon.data.mmeb import read_eval_dataset

        return read_eval_dataset(self.folder, name, self.image_root, limit=limit, split=self.split,
                                 check_images=check_images, allow_outside_root=self.allow_outside_root)

    def signature(self, name: str) -> str:
        """A short hash of the dataset's data files (names, sizes, modification times): stored results of a
        dataset whose files were since rewritten (e.g. MiniMMEB regenerated in place) are not reused."""
        from msolomon.data.mmeb import DATA_SUFFIXES

        ds = self.folder / name
        files = sorted(f for f in ds.iterdir() if f.is_file() and f.suffix in DATA_SUFFIXES) if ds.is_dir() else []
        stamp = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        return hashlib.sha1(json.dumps(stamp).encode()).hexdigest()[:12]


def open_benchmark(data_dir: str | Path, image_root: str | Path | None = None, split: str = "test",
                   meta_tasks: Mapping[str, str] | None = None, allow_outside_root: bool = False) -> Benchmark:
    """Recognise a MiniMMEB folder (DIR/minimmeb.json, test sets in DIR/test/NAME; DIR/test itself works too)
    or any folder in MMEB-eval's layout (DIR/NAME/*.parquet|jsonl). Meta-task and IND/OOD come from minimmeb.json
    for MiniMMEB, else from MMEB's table of 36 datasets; `meta_tasks` (NAME -> meta-task) overrides both. Any
    other dataset evaluates too: meta-task `custom`, out-of-distribution, with a warning; it counts in `overall`."""
    from msolomon.data.mmeb import MINIMMEB_META, list_eval_datasets

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise EvaluationError(f"data folder not found: {data_dir}")
    if image_root is not None and not Path(image_root).is_dir():
        raise EvaluationError(f"image root folder not found: {image_root}")
    if (data_dir / MINIMMEB_META).is_file():
        kind, meta_dir, folder = "minimmeb", data_dir, data_dir / split
    elif (data_dir.parent / MINIMMEB_META).is_file():  # pointed at DIR/test: images still resolve against DIR
        kind, meta_dir, folder = "minimmeb", data_dir.parent, data_dir
    else:
        kind, meta_dir, folder = "mmeb-eval", None, data_dir
    root = Path(image_root) if image_root is not None else (meta_dir or data_dir)
    try:
        names = list_eval_datasets(folder) if folder.is_dir() else []
    except DataFormatError as e:
        raise EvaluationError(str(e)) from None
    if not names:
        raise EvaluationError(f"no evaluation datasets found in {folder} (expected a MiniMMEB folder or an "
                              "MMEB-eval folder with one sub-folder of parquet/jsonl files per dataset)")
    meta_tasks = dict(meta_tasks or {})
    unknown = sorted(set(meta_tasks) - set(names))
    if unknown:
        raise EvaluationError(f"--meta-task names {', '.join(map(repr, unknown))}, not a dataset in {folder} "
                              f"(available: {', '.join(names)})")
    infos = {n: _dataset_info(n, meta_dir, meta_tasks.get(n)) for n in names}
    return Benchmark(data_dir, folder, root, kind, names, infos, split, allow_outside_root)


CUSTOM_META_TASK = "custom"


def parse_meta_tasks(specs: Sequence[str] | None) -> dict[str, str]:
    """`["NAME=TASK", ...]` (the --meta-task option) as a dict; TASK is an MMEB meta-task or `custom`."""
    from msolomon.data import META_TASKS

    out: dict[str, str] = {}
    for spec in specs or ():
        name, sep, task = spec.partition("=")
        name, task = name.strip(), task.strip()
        if not sep or not name or not task:
            raise EvaluationError(f"--meta-task must look like NAME=TASK, got {spec!r}")
        if task not in META_TASKS + (CUSTOM_META_TASK,):
            raise EvaluationError(f"--meta-task {spec!r}: TASK must be one of {', '.join(META_TASKS)}, "
                                  f"{CUSTOM_META_TASK}")
        out[name] = task
    return out


def _dataset_info(name: str, meta_dir: Path | None, task: str | None) -> DatasetInfo:
    """A dataset's taxonomy entry: the given meta-task, else minimmeb.json's or MMEB's, else `custom` (warned)."""
    from msolomon.data.mmeb import dataset_info

    try:
        info = dataset_info(name, folder_meta=meta_dir)
    except DataFormatError as err:
        if not str(err).startswith("unknown dataset"):
            raise EvaluationError(str(err)) from None
        info = None
    if task is not None:
        ood = info.ood if info is not None else True
        return DatasetInfo(name, task, ood, extra=dict(info.extra if info else {}, meta_task_from="--meta-task"))
    if info is None:
        logger.warning("%s: not one of MMEB's 36 datasets nor named in minimmeb.json; evaluated as meta-task "
                       "%r, out-of-distribution (it counts in overall and ood; set its meta-task with "
                       "--meta-task %s=TASK)", name, CUSTOM_META_TASK, name)
        return DatasetInfo(name, CUSTOM_META_TASK, True, extra={"benchmark": "custom"})
    return info


def _train_folder(bench: Benchmark) -> Path | None:
    """DIR/train of a MiniMMEB benchmark; None for MMEB-eval as published (it has no train split)."""
    if bench.kind != "minimmeb":
        return None
    folder = bench.folder.parent / "train"
    return folder if folder.is_dir() else None


def dataset_floor(bench: Benchmark, name: str, limit: int | None = None) -> dict[str, Any]:
    """A dataset's text-only floor and the rule that gave it: {"floor_text_only": %, "floor_rule": ...}.

    'majority-per-template' (`msolomon.metrics.text_only_floor`) when the dataset has training rows and every
    training and test positive is a text without an image; 'chance' otherwise (image positives, or no train split).
    The test rows are the evaluated ones (the same `limit`).
    """
    from msolomon.data.mmeb import read_eval_dataset, read_train_dataset

    rows = read_eval_dataset(bench.folder, name, bench.image_root, limit=limit, split=bench.split,
                             check_images=False, allow_outside_root=bench.allow_outside_root)
    chance = float(np.mean([100.0 / len(r.candidates) for r in rows])) if rows else 0.0
    out = {"floor_text_only": chance, "floor_rule": FLOOR_CHANCE}
    if not rows or any(r.candidates[0].image is not None or not r.candidates[0].text for r in rows):
        return out  # image positives: naming the answer does not pick an image
    train_dir = _train_folder(bench)
    if train_dir is None or not (train_dir / name).is_dir():
        return out  # no train split: nothing to count
    train = read_train_dataset(train_dir, name, bench.image_root, split="original", check_images=False,
                               allow_outside_root=bench.allow_outside_root)
    if not train or any(t.positive.image is not None or not t.positive.text for t in train):
        return out
    floor = text_only_floor([(t.query.text, t.positive.text) for t in train],
                            [(r.query.text, r.candidates[0].text) for r in rows])
    return {"floor_text_only": floor, "floor_rule": FLOOR_MAJORITY}


def dataset_floors(bench: Benchmark, names: Sequence[str], limit: int | None = None) -> dict[str, dict[str, Any]]:
    """`dataset_floor` of each dataset."""
    return {n: dataset_floor(bench, n, limit) for n in names}


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


# --- encoding ----------------------------------------------------------------------------------------------------


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


def _encode(model: Any, queries: Sequence[Query], mode: str, settings: EvalSettings) -> tuple[list[Any], float]:
    """Encode queries in one `encode_queries` call; returns the results and the wall time in ms."""
    t0 = time.perf_counter()
    out = model.encode_queries(list(queries), augment=mode, threshold=settings.threshold, batch_size=len(queries),
                               max_new_tokens=settings.max_new_tokens, show_progress_bar=False)
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
                progress: Any = None) -> list[tuple[Any, float | None]]:
    """Each row's query result and its latency in ms, in row order. The timed rows (`timed_rows`) are encoded
    alone, batch size 1, as a user of the demo would; the rest in batches of `settings.batch_size`, untimed (None).
    Whether a row is timed does not change its decision: the throughput bench counts no flips across batch sizes."""
    timed = timed_rows(len(rows), settings.timed_per_dataset)
    out: list[tuple[Any, float | None] | None] = [None] * len(rows)
    for i in sorted(timed):
        (res,), wall = _encode(model, [rows[i].query], mode, settings)
        total = _float_or_none((getattr(res, "timings", None) or {}).get("total"))
        out[i] = (res, total if total is not None else wall)
        if progress is not None:
            progress.update(1)
    rest = [i for i in range(len(rows)) if i not in timed]
    for start in range(0, len(rest), settings.batch_size):
        chunk = rest[start:start + settings.batch_size]
        results, _ = _encode(model, [rows[i].query for i in chunk], mode, settings)
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
                            settings={"threshold": settings.threshold, "max_new_tokens": settings.max_new_tokens})
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    disable = None if settings.show_progress_bar is None else not settings.show_progress_bar
    with tqdm(total=len(rows), desc=f"{info.name} [{mode}]", leave=False, disable=disable, unit="query") as bar:
        encoded = encode_rows(model, rows, mode, settings, bar)
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


def _safe_name(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    if safe != name:
        safe += "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return safe


class Sidecar:
    """Per-(dataset, mode) partial results next to the report, so reruns skip finished work.

    The manifest records the settings that change results (model, data, limit, threshold, max_new_tokens); a rerun
    with other settings refuses to mix results and asks for `--fresh`. The predictions file is kept in step with
    the stored parts: appended when a part finishes, rebuilt from the parts if an interrupted run left it out of step.
    """

    def __init__(self, folder: Path, predictions: Path, fingerprint: dict[str, Any]):
        self.folder = Path(folder)
        self.predictions = Path(predictions)
        self.fingerprint = fingerprint

    def prepare(self, resume: bool) -> None:
        manifest = self.folder / "manifest.json"
        if not resume:
            if self.folder.exists():
                if not manifest.exists() and any(self.folder.iterdir()):
                    raise EvaluationError(f"{self.folder} is not an evaluation sidecar (no manifest.json); "
                                          "not deleting it: choose another --out")
                shutil.rmtree(self.folder)
            self.predictions.unlink(missing_ok=True)
        elif manifest.exists():
            old = json.loads(manifest.read_text(encoding="utf-8"))
            if old != self.fingerprint:
                diff = sorted(k for k in set(old) | set(self.fingerprint) if old.get(k) != self.fingerprint.get(k))
                raise StaleResultsError(
                    f"{self.folder} holds results of a run with other settings ({', '.join(diff)}); "
                    "pass --fresh (resume=False) to start over, or write to another --out")
        elif self.folder.exists() and any(self.folder.iterdir()):
            raise EvaluationError(f"{self.folder} exists but has no manifest.json; remove it or pass --fresh")
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(manifest, self.fingerprint)
        self._reconcile_predictions()

    def _part(self, dataset: str, mode: str) -> Path:
        return self.folder / f"{_safe_name(dataset)}.{mode}.json"

    def _cands(self, dataset: str, signature: str) -> Path:
        return self.folder / f"{_safe_name(dataset)}.{signature}.candidates.npy"

    def load(self, dataset: str, mode: str, signature: str) -> DatasetModeResult | None:
        """A stored part, or None when there is none or it was made from other data files (then it is redone)."""
        p = self._part(dataset, mode)
        if not p.exists():
            return None
        try:
            r = DatasetModeResult.from_dict(json.loads(p.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError):
            logger.warning("ignoring unreadable sidecar part %s", p)
            return None
        if (r.dataset, r.mode) != (dataset, mode):
            return None
        if r.settings.get("data_signature") != signature:
            logger.warning("%s [%s]: data files changed since the stored result; evaluating again", dataset, mode)
            return None
        return r

    def save(self, result: DatasetModeResult) -> None:
        """Store the part first, then append its predictions (a crash in between is repaired by reconcile).
        A part that replaces a stale one has its old predictions dropped first."""
        part = self._part(result.dataset, result.mode)
        if part.exists():
            part.unlink()
            self._reconcile_predictions()
        atomic_write_json(part, result.to_dict())
        append_jsonl(self.predictions, result.predictions)

    def load_candidates(self, dataset: str, signature: str, n: int) -> np.ndarray | None:
        p = self._cands(dataset, signature)
        if not p.exists():
            return None
        try:
            v = np.load(p)
        except (OSError, ValueError):
            return None
        return v if v.ndim == 2 and v.shape[0] == n else None

    def save_candidates(self, dataset: str, signature: str, vecs: np.ndarray) -> None:
        p = self._cands(dataset, signature)
        with atomic_file(p, "wb") as f:
            np.save(f, vecs)

    def drop_candidates(self, dataset: str) -> None:
        for p in self.folder.glob(f"{_safe_name(dataset)}.*.candidates.npy"):
            p.unlink(missing_ok=True)

    def _all_parts(self) -> list[DatasetModeResult]:
        parts = []
        for p in sorted(self.folder.glob("*.json")):
            if p.name == "manifest.json":
                continue
            try:
                parts.append(DatasetModeResult.from_dict(json.loads(p.read_text(encoding="utf-8"))))
            except (json.JSONDecodeError, TypeError):
                logger.warning("ignoring unreadable sidecar part %s", p)
                p.unlink(missing_ok=True)
        return parts

    def _reconcile_predictions(self) -> None:
        parts = self._all_parts()
        expected = {(r.dataset, r.mode): r.n for r in parts}
        found: dict[tuple[str, str], int] = {}
        for rec in read_jsonl(self.predictions):
            key = (rec.get("dataset"), rec.get("mode"))
            found[key] = found.get(key, 0) + 1
        if found != expected:
            if found:
                logger.info("rebuilding %s from %d stored parts", self.predictions, len(parts))
            write_jsonl(self.predictions, (p for r in parts for p in r.predictions))


# --- the run -----------------------------------------------------------------------------------------------------


def _model_name(model: Any, given: str | None) -> str:
    if given:
        return given
    for attr in ("name_or_path", "path", "model_path"):
        v = getattr(model, attr, None)
        if v:
            return str(v)
    return type(model).__name__


def load_model(path: str | Path) -> Any:
    """`MSolomon.from_pretrained(path)`; a folder that does not exist or is not a model is an `EvaluationError`."""
    p = Path(path)
    if not p.exists() and p.absolute() == default_model_path():
        raise EvaluationError(f"model not found: {path} (the shipped default model is missing; pass --model)")
    from msolomon.model import MSolomon

    try:
        return MSolomon.from_pretrained(str(path))
    except (OSError, ValueError) as err:  # from_pretrained names the folder and the problem
        raise EvaluationError(f"--model {path}: {err}") from None


def report_path(out: str | Path) -> Path:
    """Where the JSON report goes: `out` itself, or `out/report.json` when `out` is a folder (or ends with /)."""
    text = str(out)
    out = Path(out)
    if out.is_dir() or text.endswith(("/", os.sep)):
        return out / "report.json"
    return out


def _same_permissions(paths: Sequence[Path]) -> None:
    """Give every output file the permissions a plain new file gets (temporary files are created 0600)."""
    from msolomon.report import default_file_mode

    mode = default_file_mode()
    for path in paths:
        if Path(path).is_file():
            os.chmod(path, mode)


def evaluate(model: Any, data_dir: str | Path | Benchmark, image_root: str | Path | None = None,
             modes: Sequence[str] | str = MODES, limit: int | None = None, thresholds: Sequence[float] | None = None,
             out: str | Path | None = None, *, datasets: Sequence[str] | None = None, threshold: float = 0.5,
             max_new_tokens: int = 64, candidate_batch_size: int = 32, resume: bool = True,
             show_progress_bar: bool | None = None, model_name: str | None = None,
             split: str = "test", meta_tasks: Mapping[str, str] | None = None,
             allow_outside_root: bool = False, keep_parts: bool = True, batch_size: int = 1,
             latency_queries: int | None = None) -> dict[str, Any]:
    """Evaluate `model` (an MSolomon, anything with its `encode_queries`/`encode_candidates`, or a path) on a
    MiniMMEB or MMEB-eval folder and return the evaluation report (docs/architecture.md, "The evaluation report").

    With `out` (a file, or a folder: then `out/report.json`), also writes FILE.json, FILE.md, FILE.png,
    FILE.predictions.jsonl and the resume sidecar FILE.parts/, which a finished run removes unless `keep_parts`
    (the default here, so that a caller's rerun skips finished work; the command line removes it).
    Reusing one `out` for a *different* in-memory model needs `resume=False` or another `model_name`, since the
    sidecar knows models only by name.
    """
    settings = EvalSettings(modes=modes if isinstance(modes, str) else tuple(modes), limit=limit,
                            thresholds=tuple(thresholds) if thresholds is not None else None,
                            datasets=tuple(datasets) if datasets is not None else None, threshold=threshold,
                            max_new_tokens=max_new_tokens, candidate_batch_size=candidate_batch_size,
                            resume=resume, show_progress_bar=show_progress_bar, split=split,
                            batch_size=batch_size, latency_queries=latency_queries)
    bench = data_dir if isinstance(data_dir, Benchmark) else open_benchmark(
        data_dir, image_root, settings.split, meta_tasks=meta_tasks, allow_outside_root=allow_outside_root)
    if isinstance(model, (str, Path)):
        model_name = model_name or str(model)
        model = load_model(model)
    return run_evaluation(model, bench, settings, report_path(out) if out is not None else None,
                          model_name=_model_name(model, model_name), keep_parts=keep_parts)


def _select(bench: Benchmark, wanted: Sequence[str] | None) -> list[str]:
    if wanted is None:
        return list(bench.names)
    missing = [n for n in wanted if n not in bench.names]
    if missing:
        raise EvaluationError(f"unknown dataset {', '.join(map(repr, missing))} in {bench.data_dir}; "
                              f"available: {', '.join(bench.names)}")
    return list(wanted)


def run_evaluation(model: Any, bench: Benchmark, settings: EvalSettings, out: Path | None = None,
                   model_name: str = "model", keep_parts: bool = True) -> dict[str, Any]:
    """The evaluation proper: per dataset, encode candidates once, then every needed mode; aggregate; write.
    Without `keep_parts`, the resume sidecar is removed once the report is written."""
    from tqdm.auto import tqdm

    names = _select(bench, settings.datasets)
    floors = dataset_floors(bench, names, settings.limit)  # before any encoding: a bad train file fails early
    paths = output_paths(out) if out is not None else None
    sidecar = None
    if paths is not None:
        fingerprint = {"version": SIDECAR_VERSION, "model": model_name,
                       "model_signature": getattr(model, "signature", None), "data": str(bench.data_dir.resolve()),
                       "image_root": str(bench.image_root.resolve()), "split": settings.split,
                       "limit": settings.limit, "threshold": settings.threshold,
                       "max_new_tokens": settings.max_new_tokens, "batch_size": settings.batch_size,
                       "timed_per_dataset": settings.timed_per_dataset}
        sidecar = Sidecar(paths["parts"], paths["predictions"], fingerprint)
        sidecar.prepare(settings.resume)

    run_modes = settings.run_modes
    if set(run_modes) != set(settings.modes):
        logger.info("threshold sweep: also running %s", ", ".join(m for m in run_modes if m not in settings.modes))
    results: dict[str, dict[str, DatasetModeResult]] = {m: {} for m in run_modes}
    disable = None if settings.show_progress_bar is None else not settings.show_progress_bar
    for name in tqdm(names, desc="datasets", disable=disable, unit="dataset"):
        info = bench.infos[name]
        signature = bench.signature(name)
        todo = []
        for m in run_modes:
            done = sidecar.load(name, m, signature) if sidecar else None
            if done is not None:
                results[m][name] = done
            else:
                todo.append(m)
        if not todo:
            logger.info("%s: done in an earlier run, skipped", name)
            continue
        rows = bench.read(name, settings.limit)
        if not rows:
            logger.warning("%s: no rows, skipped", name)
            continue
        unique, row_index = unique_candidates(rows)
        n_dup = sum(int((ix[1:] == ix[0]).any()) for ix in row_index)
        if n_dup:
            logger.warning("%s: %d queries list their positive twice; they can never count as correct", name, n_dup)
        vecs = sidecar.load_candidates(name, signature, len(unique)) if sidecar else None
        if vecs is None:
            logger.info("%s: %d queries, %d unique candidates (of %d listed)", name, len(rows), len(unique),
                        sum(len(ix) for ix in row_index))
            vecs = encode_candidates_once(model, unique, settings)
            if sidecar and len(todo) > 1:
                sidecar.save_candidates(name, signature, vecs)
        for m in todo:
            r = evaluate_dataset_mode(model, rows, info, m, vecs, row_index, unique, settings)
            r.settings["data_signature"] = signature
            results[m][name] = r
            if sidecar:
                sidecar.save(r)
            lat = latency_stats(r.latency_ms)["mean"]
            logger.info("%s [%s]: P@1 %.2f, augment rate %.2f, latency %s", name, m, r.p_at_1, r.augment_rate,
                        "not timed" if lat is None else f"{lat:.1f} ms")
        if sidecar:
            sidecar.drop_candidates(name)

    report = build_report(results, settings, model_name, bench, names, floors)
    if paths is not None:
        write_outputs(report, paths["json"])
        if not keep_parts and sidecar is not None:
            shutil.rmtree(paths["parts"], ignore_errors=True)
    return report


def build_report(results: Mapping[str, Mapping[str, DatasetModeResult]], settings: EvalSettings, model_name: str,
                 bench: Benchmark, names: Sequence[str],
                 floors: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The evaluation report (docs/architecture.md, "The evaluation report"), plus additions (settings, tie rule,
    floors, intervals, threshold curve)."""
    if floors is None:
        floors = dataset_floors(bench, names, settings.limit)
    modes_out = {}
    for m in settings.run_modes:
        per = {n: results[m][n] for n in names if n in results[m]}
        modes_out[m] = aggregate_mode(per, floors)
    report: dict[str, Any] = {"model": model_name, "data": str(bench.data_dir), "split": settings.split,
                              "modes": modes_out}
    if settings.thresholds:
        report["thresholds"] = _sweep(results, names, settings.thresholds)
    if all(m in modes_out for m in MODES):
        from msolomon.decisions import decisions

        report["decisions"] = decisions(modes_out["auto"], modes_out["never"], modes_out["always"])
    report.update({
        "image_root": str(bench.image_root), "benchmark": bench.kind,
        "settings": {"modes": list(settings.modes), "limit": settings.limit, "threshold": settings.threshold,
                     "max_new_tokens": settings.max_new_tokens, "datasets": list(names),
                     "batch_size": settings.batch_size, "timed_per_dataset": settings.timed_per_dataset},
        "metric": {"precision_at_1": TIE_RULE, "macro": "overall, ind, ood and by_meta_task average datasets equally",
                   "augment_rate": "fraction of all queries (micro); augment_rate_macro averages datasets",
                   "latency_ms": latency_note(settings),
                   **FLOOR_NOTES,
                   "floor_rules": {n: floors[n]["floor_rule"] for n in names if n in floors}},
    })
    return report


def latency_note(settings: EvalSettings) -> str:
    """What the report's latency is, in words: every query timed, or a sample beside batched accuracy."""
    note = "per query at batch size 1, QueryResult.timings['total'], search excluded"
    k = settings.timed_per_dataset
    if k is None:
        return note
    return (f"{note}; measured on {k} evenly spaced queries per dataset encoded one at a time, while the others "
            f"were encoded in batches of {settings.batch_size} for accuracy and not timed")


def _sweep(results: Mapping[str, Mapping[str, DatasetModeResult]], names: Sequence[str],
           thresholds: Sequence[float]) -> list[dict[str, Any]]:
    never = {n: results["never"][n] for n in names if n in results["never"]}
    always = {n: results["always"][n] for n in names if n in results["always"]}
    p_aug = {}
    for n in never:
        source = next((results[m][n] for m in ("auto", "never", "always") if m in results and n in results[m]
                       and all(p is not None for p in results[m][n].p_augment)), None)
        if source is None:
            raise EvaluationError(f"{n}: the model gave no p_augment, so the threshold sweep cannot be computed")
        p_aug[n] = source.p_augment
    return threshold_curve(never, always, p_aug, thresholds)


def write_outputs(report: Mapping[str, Any], out: str | Path) -> dict[str, Path]:
    """Write FILE.json, FILE.md and FILE.png (the predictions file is written as parts finish)."""
    paths = output_paths(Path(out))
    atomic_write_json(paths["json"], report)
    atomic_write_text(paths["md"], markdown_report(report))
    plot_report(report, paths["png"])
    _same_permissions([paths["json"], paths["md"], paths["png"], paths["predictions"]])
    return paths


# --- command line ------------------------------------------------------------------------------------------------


_csv = split_list  # msolomon.settings' one comma-separated splitter


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m msolomon.evaluation",
                                description="MMEB-style evaluation of an M-Solomon model (Precision@1, augment rate, "
                                            "latency) in the modes auto, never and always.")
    p.add_argument("--model", default=str(default_model_path()),
                   help="model folder or hub id (default: the shipped model, assets/model)")
    p.add_argument("--data", required=True,
                   help="a MiniMMEB folder, or any folder in MMEB-eval's layout (one sub-folder of parquet/jsonl "
                        "files per dataset)")
    p.add_argument("--image-root", default=None, help="folder image paths resolve against (default: --data)")
    p.add_argument("--allow-images-outside-root", action="store_true",
                   help="let image paths of the data resolve outside --image-root (absolute paths, '..'); only for "
                        "data you trust (default: refused)")
    p.add_argument("--out", required=True,
                   help="report FILE.json (a folder: FOLDER/report.json); FILE.md, FILE.png and "
                        "FILE.predictions.jsonl go beside it")
    p.add_argument("--keep-parts", action="store_true",
                   help="keep the resume folder FILE.parts/ after a finished run (default: removed)")
    p.add_argument("--modes", default="auto,never,always",
                   help="comma-separated subset of auto,never,always (default: all three)")
    p.add_argument("--limit", type=int, default=None, help="at most N queries per dataset (default: all)")
    p.add_argument("--thresholds", default=None,
                   help="comma-separated decision thresholds to sweep for auto mode, from the never/always runs "
                        "(default: no sweep)")
    p.add_argument("--datasets", default=None, help="comma-separated dataset names (default: all)")
    p.add_argument("--meta-task", action="append", default=None, metavar="NAME=TASK",
                   help="meta-task of a dataset (classification, vqa, retrieval, grounding or custom); repeatable "
                        "(default: MMEB's table or minimmeb.json; other datasets: custom, with a warning)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="cap on the generated augmentation (default: 64)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="auto mode: augment when p_augment >= threshold (default: 0.5)")
    p.add_argument("--candidate-batch-size", type=int, default=32,
                   help="candidates encoded per batch (default: 32)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="queries encoded per batch for accuracy; above 1, only --latency-queries queries per "
                        "dataset are timed, one at a time (default: 1, every query timed)")
    p.add_argument("--latency-queries", type=int, default=None,
                   help=f"with --batch-size > 1: evenly spaced queries per dataset timed at batch size 1 "
                        f"(default: {DEFAULT_LATENCY_QUERIES}; 0: none)")
    add_threads_argument(p, what="torch and faiss")
    p.add_argument("--fresh", action="store_true", help="ignore and clear results of an earlier run (default: resume)")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only (default: progress shown)")
    p.add_argument("--verbose", action="store_true",
                   help="debug logging, with transformers' loading bar and warnings (default: off)")
    p.add_argument("--split", default="test", choices=("test", "val"),
                   help="MiniMMEB split to evaluate: test (default) or val, the validation split the pilot and any "
                        "choice of threshold or checkpoint must use")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; bad arguments print a one-line error and return 2."""
    process_environment(set_threads=False)
    parser = _parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = report_path(args.out)
    try:
        process_environment(args.threads)
        try:
            thresholds = [float(t) for t in _csv(args.thresholds)] if args.thresholds is not None else None
        except ValueError:
            raise EvaluationError(f"--thresholds must be comma-separated numbers, got {args.thresholds!r}") from None
        settings = EvalSettings(modes=tuple(_csv(args.modes)), limit=args.limit,
                                thresholds=tuple(thresholds) if thresholds is not None else None,
                                datasets=tuple(_csv(args.datasets)) if args.datasets else None,
                                threshold=args.threshold, max_new_tokens=args.max_new_tokens,
                                candidate_batch_size=args.candidate_batch_size, resume=not args.fresh,
                                show_progress_bar=False if args.quiet else None, split=args.split,
                                batch_size=args.batch_size, latency_queries=args.latency_queries)
        bench = open_benchmark(args.data, args.image_root, settings.split, meta_tasks=parse_meta_tasks(args.meta_task),
                               allow_outside_root=args.allow_images_outside_root)
        _select(bench, settings.datasets)  # fail on an unknown dataset before loading the model
        model = load_model(args.model)
        report = run_evaluation(model, bench, settings, out, model_name=str(args.model),
                                keep_parts=args.keep_parts)
    except EvaluationError as e:  # a bad argument
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    except DataFormatError as e:  # a malformed data file met during the run
        parser.exit(1, f"{parser.prog}: error: {e}\n")
    sys.stdout.write(markdown_report(report) + f"\nwrote {output_paths(out)['json']}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
