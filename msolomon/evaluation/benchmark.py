"""The benchmark side of an evaluation: which datasets a folder holds, where they sit in MMEB's taxonomy, how to
read them, and each dataset's text-only floor (the score a model that never looks at an image can reach)."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from msolomon.data import DataFormatError, DatasetInfo, EvalRow
from msolomon.evaluation.settings import EvaluationError
from msolomon.metrics import FLOOR_CHANCE, FLOOR_MAJORITY, text_only_floor

logger = logging.getLogger(__name__)


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



def select_datasets(bench: Benchmark, wanted: Sequence[str] | None) -> list[str]:
    if wanted is None:
        return list(bench.names)
    missing = [n for n in wanted if n not in bench.names]
    if missing:
        raise EvaluationError(f"unknown dataset {', '.join(map(repr, missing))} in {bench.data_dir}; "
                              f"available: {', '.join(bench.names)}")
    return list(wanted)

