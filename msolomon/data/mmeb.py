"""Readers for MMEB as published (TIGER-Lab/MMEB-eval, TIGER-Lab/MMEB-train) and for MiniMMEB, which shares the format.

Layout: one folder per dataset holding parquet (`test-00000-of-00001.parquet`, `original-00000-of-00001.parquet`)
or jsonl files. Image paths in the rows are relative to a separate image root. Every malformed input raises
`DataFormatError` naming the file, the row and the problem, so a user never has to read a pyarrow traceback.

eval columns:  qry_text, qry_img_path, tgt_text (list), tgt_img_path (list); candidate 0 is the positive.
train columns: qry, qry_image_path, pos_text, pos_image_path [, neg_text, neg_image_path] [, id].
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from msolomon.data import META_TASKS, DataFormatError, DatasetInfo, EvalRow, TrainRow
from msolomon.inputs import Candidate, Query

logger = logging.getLogger(__name__)

DATA_SUFFIXES = (".parquet", ".jsonl")
EVAL_COLUMNS = ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path")
TRAIN_COLUMNS = ("qry", "qry_image_path", "pos_text", "pos_image_path")
TRAIN_OPTIONAL = ("neg_text", "neg_image_path", "id")
MINIMMEB_META = "minimmeb.json"  # the file that marks a MiniMMEB folder (msolomon.data.minimmeb.META_FILE)
OUTSIDE_ROOT_FLAG = "--allow-images-outside-root"

# --- MMEB's 36 image datasets (VLM2Vec; research/paper-notes.md sections 2, 4 and 5) -----------------------------
_IND = {
    "classification": ["ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397"],
    "vqa": ["OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W"],
    "retrieval": ["VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t", "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS", "WebQA"],
    "grounding": ["MSCOCO"],
}
_OOD = {
    "classification": ["Place365", "ImageNet-A", "ImageNet-R", "ObjectNet", "Country211"],
    "vqa": ["ScienceQA", "VizWiz", "GQA", "TextVQA"],
    "retrieval": ["FashionIQ", "Wiki-SS-NQ", "OVEN", "EDIS"],
    "grounding": ["RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing"],
}
MMEB_DATASETS: dict[str, DatasetInfo] = {
    name: DatasetInfo(name, task, ood, extra={"benchmark": "MMEB", "train": not ood, "n_eval": 1000})
    for ood, table in ((False, _IND), (True, _OOD))
    for task, names in table.items()
    for name in names
}
assert len(MMEB_DATASETS) == 36 and sum(not i.ood for i in MMEB_DATASETS.values()) == 20


def _norm(name: str) -> str:
    """MMEB-train spells some names differently from MMEB-eval (ImageNet_1K vs ImageNet-1K): compare loosely."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


_BY_NORM = {_norm(n): info for n, info in MMEB_DATASETS.items()}


def dataset_info(name: str, folder_meta: Mapping[str, Any] | str | Path | None = None) -> DatasetInfo:
    """Where a dataset sits in MMEB's taxonomy (meta-task, in- or out-of-distribution).

    `folder_meta` (a MiniMMEB `minimmeb.json` dict, its "datasets" mapping, or a folder holding `minimmeb.json`)
    takes precedence over the built-in table of MMEB's 36 datasets.
    """
    if isinstance(folder_meta, (str, Path)):
        path = Path(folder_meta)
        path = path / MINIMMEB_META if path.is_dir() else path
        folder_meta = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    if folder_meta:
        table = folder_meta.get("datasets", folder_meta)
        entry = table.get(name) if isinstance(table, Mapping) else None
        if isinstance(entry, Mapping) and "meta_task" in entry:
            if entry["meta_task"] not in META_TASKS:
                raise DataFormatError(f"dataset {name!r}: meta_task {entry['meta_task']!r} is not one of {META_TASKS}")
            return DatasetInfo(name, entry["meta_task"], bool(entry.get("ood", False)), extra=dict(entry))
    info = MMEB_DATASETS.get(name) or _BY_NORM.get(_norm(name))
    if info is None:
        raise DataFormatError(f"unknown dataset {name!r}: not one of MMEB's 36 datasets and no folder metadata "
                              f"names it (known: {', '.join(sorted(MMEB_DATASETS))})")
    return DatasetInfo(name, info.meta_task, info.ood, extra=dict(info.extra, mmeb_name=info.name))


# --- files ----------------------------------------------------------------------------------------------------------


def _data_files(folder: Path, name: str, split: str) -> list[Path]:
    """The data files of one dataset: those whose name starts with `split` if any do, else all of them."""
    ds = Path(folder) / name
    if not ds.is_dir():
        raise DataFormatError(f"{ds}: dataset folder not found")
    files = sorted(p for p in ds.iterdir() if p.is_file() and p.suffix in DATA_SUFFIXES)
    chosen = [p for p in files if p.name.startswith(split)]
    if not chosen:
        # never read MiniMMEB's side files as data
        chosen = [p for p in files if not p.name.startswith("oracle")]
    if not chosen:
        raise DataFormatError(f"{ds}: no .parquet or .jsonl data files")
    return chosen


def _list_datasets(folder: str | Path) -> list[str]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFormatError(f"{folder}: folder not found")
    return sorted(p.name for p in folder.iterdir()
                  if p.is_dir() and any(f.suffix in DATA_SUFFIXES and not f.name.startswith("oracle")
                                        for f in p.iterdir() if f.is_file()))


def list_eval_datasets(folder: str | Path) -> list[str]:
    """Names of the datasets in an MMEB-eval style folder (sub-folders holding parquet or jsonl), sorted."""
    return _list_datasets(folder)


def list_train_datasets(folder: str | Path) -> list[str]:
    """Names of the datasets in an MMEB-train style folder, sorted."""
    return _list_datasets(folder)


def _iter_rows(path: Path, columns: tuple[str, ...], optional: tuple[str, ...] = ()) -> Iterator[tuple[int, dict]]:
    """(row number, row dict) of a parquet or jsonl file; row numbers count from 0 in file order."""
    if path.suffix == ".parquet":
        yield from _iter_parquet(path, columns, optional)
    else:
        yield from _iter_jsonl(path, columns)


def _iter_parquet(path: Path, columns: tuple[str, ...], optional: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - pyarrow is a dependency
        raise DataFormatError(f"{path}: reading parquet needs pyarrow ({e})") from e
    try:
        pf = pq.ParquetFile(path)
        names = set(pf.schema_arrow.names)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ...
        raise DataFormatError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from e
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataFormatError(f"{path}: row 0: missing column(s) {missing} (file has {sorted(names)})")
    wanted = list(columns) + [c for c in optional if c in names]
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=512, columns=wanted):
            for item in batch.to_pylist():
                yield row, item
                row += 1
    except DataFormatError:
        raise
    except Exception as e:
        raise DataFormatError(f"{path}: row {row}: cannot decode ({type(e).__name__}: {e})") from e


def _iter_jsonl(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    row = 0
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{path}: row {row} (line {line_no}): invalid JSON ({e.msg})") from e
            if not isinstance(item, dict):
                raise DataFormatError(f"{path}: row {row} (line {line_no}): expected a JSON object, "
                                      f"got {type(item).__name__}")
            missing = [c for c in columns if c not in item]
            if missing:
                raise DataFormatError(f"{path}: row {row} (line {line_no}): missing column(s) {missing}")
            yield row, item
            row += 1


def inside_root(path: str | Path, root: str | Path) -> bool:
    """Whether `path` stays inside `root` once `..` and symbolic links are resolved."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


class _Checker:
    """Field validation and image resolution for one file, with errors that name the file and row.

    Image paths must resolve inside the image root (absolute paths, `..` and symbolic links included) unless
    `allow_outside_root`: a crafted dataset must not make the library read, or a teacher send, any other file."""

    def __init__(self, path: Path, image_root: Path, check_images: bool, allow_outside_root: bool = False) -> None:
        self.path, self.check_images = path, check_images
        self.image_root = Path(image_root).absolute()  # so every image path comes out absolute
        self.allow_outside_root = allow_outside_root
        self._exists: dict[str, bool] = {}
        self._inside: dict[str, bool] = {}
        self.row = 0

    def fail(self, problem: str) -> DataFormatError:
        return DataFormatError(f"{self.path}: row {self.row}: {problem}")

    def text(self, value: Any, column: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(f"column {column!r} must be a string or null, got {type(value).__name__}")
        return value if value.strip() else None

    def image(self, value: Any, column: str) -> str | None:
        rel = self.text(value, column)
        if rel is None:
            return None
        path = Path(rel.strip())
        full = str(path if path.is_absolute() else self.image_root / path)
        if not self.allow_outside_root:
            inside = self._inside.get(full)
            if inside is None:
                inside = self._inside[full] = inside_root(full, self.image_root)
            if not inside:
                raise self.fail(f"image path {rel!r} (column {column!r}) resolves outside the image root "
                                f"{self.image_root} (to {os.path.realpath(full)}); images must stay inside "
                                f"--image-root, or pass {OUTSIDE_ROOT_FLAG} if you trust this dataset")
        if self.check_images:
            ok = self._exists.get(full)
            if ok is None:
                ok = self._exists[full] = Path(full).is_file()
            if not ok:
                raise self.fail(f"image file not found: {rel!r} (column {column!r}, resolved to {full})")
        return full

    def strings(self, value: Any, column: str) -> list:
        if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays from pandas
            value = value.tolist()
        if not isinstance(value, (list, tuple)):
            raise self.fail(f"column {column!r} must be a list, got {type(value).__name__}")
        return list(value)


def read_eval_dataset(folder: str | Path, name: str, image_root: str | Path | None,
                      limit: int | None = None, split: str = "test", check_images: bool = True,
                      allow_outside_root: bool = False) -> list[EvalRow]:
    """Read one MMEB-eval dataset into `EvalRow`s (query id `f"{name}:{index}"`, candidate 0 the positive).

    Query text is kept as published, with MMEB's `<|image_1|>` placeholder: the format module maps it.
    Image paths become absolute paths under `image_root` (the dataset folder's parent when None); one that
    resolves outside it raises `DataFormatError` unless `allow_outside_root`.
    """
    folder = Path(folder)
    root = Path(image_root) if image_root is not None else folder
    rows: list[EvalRow] = []
    for path in _data_files(folder, name, split):
        chk = _Checker(path, root, check_images, allow_outside_root)
        for row, item in _iter_rows(path, EVAL_COLUMNS):
            if limit is not None and len(rows) >= limit:
                return rows
            chk.row = row
            q_text = chk.text(item["qry_text"], "qry_text")
            q_img = chk.image(item["qry_img_path"], "qry_img_path")
            if q_text is None and q_img is None:
                raise chk.fail("query has neither text nor image")
            texts = chk.strings(item["tgt_text"], "tgt_text")
            imgs = chk.strings(item["tgt_img_path"], "tgt_img_path")
            if len(texts) != len(imgs):
                raise chk.fail(f"tgt_text has {len(texts)} entries but tgt_img_path has {len(imgs)}")
            if not texts:
                raise chk.fail("empty candidate list (tgt_text and tgt_img_path are empty)")
            candidates = []
            for k, (t, i) in enumerate(zip(texts, imgs)):
                c_text = chk.text(t, f"tgt_text[{k}]")
                c_img = chk.image(i, f"tgt_img_path[{k}]")
                if c_text is None and c_img is None:
                    raise chk.fail(f"candidate {k} has neither text nor image")
                candidates.append(Candidate(text=c_text, image=c_img))
            index = len(rows)
            rows.append(EvalRow(name, index, Query(text=q_text, image=q_img, id=f"{name}:{index}"), candidates))
    logger.debug("read %d eval rows of %s from %s", len(rows), name, folder)
    return rows


def read_train_records(folder: str | Path, name: str, split: str = "original") -> list[dict]:
    """The raw records of one MMEB-train dataset (image paths as written, not resolved), each with the `id` that
    `read_train_dataset` gives its row: for tools that write derived files in the dataset's own format."""
    records = []
    for path in _data_files(Path(folder), name, split):
        for _, item in _iter_rows(path, TRAIN_COLUMNS, TRAIN_OPTIONAL):
            raw_id = item.get("id")
            records.append({**item, "id": f"{name}:{len(records)}" if raw_id is None else str(raw_id)})
    return records


def read_train_dataset(folder: str | Path, name: str, image_root: str | Path | None,
                       limit: int | None = None, split: str = "original",
                       check_images: bool = True, allow_outside_root: bool = False) -> list[TrainRow]:
    """Read one MMEB-train dataset into `TrainRow`s (positive target, optional hard negative, stable id).

    MMEB-train folders hold `original-*.parquet` and `diverse_instruction-*.parquet`; `split` picks one (all files
    when none match). Ids come from an `id` column when present, else `f"{name}:{row}"`; they must be unique.
    """
    folder = Path(folder)
    root = Path(image_root) if image_root is not None else folder
    rows: list[TrainRow] = []
    seen: dict[str, tuple[Path, int]] = {}
    for path in _data_files(folder, name, split):
        chk = _Checker(path, root, check_images, allow_outside_root)
        for row, item in _iter_rows(path, TRAIN_COLUMNS, TRAIN_OPTIONAL):
            if limit is not None and len(rows) >= limit:
                return rows
            chk.row = row
            raw_id = item.get("id")
            if raw_id is None:
                rid = f"{name}:{len(rows)}"
            elif isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) and str(raw_id).strip():
                rid = str(raw_id)
            else:
                raise chk.fail(f"column 'id' must be a non-empty string or an integer, got {raw_id!r}")
            if rid in seen:
                p, r = seen[rid]
                raise chk.fail(f"duplicate id {rid!r} (first at {p}: row {r})")
            seen[rid] = (path, row)
            q_text, q_img = chk.text(item["qry"], "qry"), chk.image(item["qry_image_path"], "qry_image_path")
            if q_text is None and q_img is None:
                raise chk.fail("query has neither text nor image")
            p_text, p_img = chk.text(item["pos_text"], "pos_text"), chk.image(item["pos_image_path"], "pos_image_path")
            if p_text is None and p_img is None:
                raise chk.fail("positive target has neither text nor image")
            n_text = chk.text(item.get("neg_text"), "neg_text")
            n_img = chk.image(item.get("neg_image_path"), "neg_image_path")
            negative = Candidate(text=n_text, image=n_img) if (n_text or n_img) else None
            rows.append(TrainRow(name, rid, Query(text=q_text, image=q_img, id=rid),
                                 Candidate(text=p_text, image=p_img), negative))
    logger.debug("read %d train rows of %s from %s", len(rows), name, folder)
    return rows
