"""MiniMMEB: an MMEB-format benchmark generated offline and deterministically from a seed.

    python -m msolomon.data.minimmeb --out DIR [--seed N] [--scale tiny|small|full] [--n-candidates K]

It mirrors MMEB's structure at a scale a CPU can train on: the four meta-tasks (classification, VQA, retrieval,
grounding), in-distribution datasets with train, validation and test splits and out-of-distribution datasets with a
test split only. Images are scikit-learn's real handwritten digits, crops of the sample photos that ship inside pip
packages, and drawn scenes, charts, documents, signs and garments; their renderers and dataset builders live in
`msolomon.worlds`, one module per family, and this module registers them as datasets and writes them. Every dataset
also writes the ground truth an oracle teacher needs (`oracle.py`), so teacher synthesis runs end to end without a
72B model.

Layout (image paths in rows are relative to DIR, so DIR is the image root):

    DIR/minimmeb.json                 meta: seed, scale, and per dataset its meta-task, OOD flag, splits, candidates
    DIR/train/NAME/original.jsonl     MMEB-train rows + "id"            (in-distribution datasets only)
    DIR/train/NAME/oracle.jsonl       per id: answer, plausible wrong answers, reasoning facts
    DIR/val/NAME/val.jsonl            MMEB-eval rows drawn like train (train-side digits), for the pilot only
    DIR/test/NAME/test.jsonl          MMEB-eval rows (candidate 0 is the positive)
    DIR/test/NAME/oracle.jsonl        the same ground truth for test queries, keyed "NAME:index"
    DIR/images/NAME/...png

The same seed gives byte-identical files; another seed gives different data with the same structure. Nothing here
decides which datasets augmentation helps: that is what the pilot study measures.
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msolomon import prompts
from msolomon.data import META_TASKS
from msolomon.data.mmeb import MINIMMEB_META
from msolomon.files import atomic_write_text, install_dir
from msolomon.settings import option, parse_settings, usage_error
from msolomon.worlds.charts import build_chart_vqa
from msolomon.worlds.common import Ctx, Item, Store, Target, rng_for, same_words
from msolomon.worlds.digits import (
    build_digits_cls,
    build_digits_r,
    build_digits_vqa,
    digit_pools,
    digit_split,
    load_digits,
)
from msolomon.worlds.documents import build_doc_vqa, build_sign_vqa
from msolomon.worlds.garments import build_fashion_cir
from msolomon.worlds.photos import PHOTO_PHRASES, build_photo_cls
from msolomon.worlds.scenes import (
    build_ref_scenes,
    build_scenes_ground,
    build_scenes_i2t,
    build_scenes_t2i,
    build_scenes_vqa,
    build_shapes_cir,
    build_shapes_cls,
)

# What other code imports from here, the world builders' names included (they live in msolomon.worlds).
__all__ = ["BENCHMARK_NAME", "DATASETS", "META_FILE", "SCALES", "VERSION", "Ctx", "DatasetSpec", "Item",
           "MiniMMEBSettings", "PHOTO_PHRASES", "Scale", "Store", "Target", "build_dataset", "digit_pools",
           "digit_split", "generate", "is_minimmeb", "load_digits", "load_minimmeb", "main", "rng_for"]

logger = logging.getLogger(__name__)

BENCHMARK_NAME = "MiniMMEB"
VERSION = 3  # 2: a validation split; ShapesCLS test never repeats a training query; RefScenes' own crops.
# 3: ScenesGround's training negatives include the object on another background; val and test are v2's bytes.
META_FILE = MINIMMEB_META  # one name for the marker file: the readers (msolomon.data.mmeb) own it


# --- settings --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """Rows per dataset at one scale: tiny for tests, small for CPU training in minutes, full for real runs."""

    name: str
    n_train: int  # per in-distribution dataset
    n_test: int  # per dataset
    n_candidates: int  # retrieval and grounding candidates per query
    n_val: int  # validation queries per in-distribution dataset (the pilot's, never the test's)


SCALES: dict[str, Scale] = {
    "tiny": Scale("tiny", n_train=40, n_test=20, n_candidates=20, n_val=20),
    "small": Scale("small", n_train=800, n_test=500, n_candidates=100, n_val=300),
    "full": Scale("full", n_train=4000, n_test=1000, n_candidates=100, n_val=1000),
}


@dataclass(frozen=True)
class MiniMMEBSettings:
    """Everything that determines the generated files."""

    seed: int = 0
    scale: str = "small"
    n_train: int = 800
    n_test: int = 500
    n_candidates: int = 100
    datasets: tuple[str, ...] | None = None  # a subset of DATASETS; None = all
    n_val: int = 300

    @classmethod
    def make(cls, seed: int = 0, scale: str = "small", n_candidates: int | None = None, n_train: int | None = None,
             n_test: int | None = None, datasets: Sequence[str] | None = None,
             n_val: int | None = None) -> "MiniMMEBSettings":
        if scale not in SCALES:
            raise ValueError(f"unknown scale {scale!r}; expected one of {sorted(SCALES)}")
        sc = SCALES[scale]
        s = cls(seed=int(seed), scale=scale, n_train=sc.n_train if n_train is None else int(n_train),
                n_test=sc.n_test if n_test is None else int(n_test),
                n_candidates=sc.n_candidates if n_candidates is None else int(n_candidates),
                datasets=tuple(datasets) if datasets else None, n_val=sc.n_val if n_val is None else int(n_val))
        if s.n_train < 1 or s.n_test < 1 or s.n_val < 1 or s.n_candidates < 2:
            raise ValueError("n_train, n_val and n_test must be >= 1 and n_candidates >= 2")
        unknown = sorted(set(s.datasets or ()) - set(DATASETS))
        if unknown:
            raise ValueError(f"unknown MiniMMEB dataset(s) {unknown}; expected some of {list(DATASETS)}")
        return s


# --- the registry ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """One MiniMMEB dataset: where it sits in MMEB's taxonomy and how its rows are built."""

    name: str
    meta_task: str
    ood: bool
    analogue: str  # the MMEB dataset it mirrors
    query: str
    candidates: str
    build: Callable[[Ctx, int], list[Item]]

    @property
    def splits(self) -> list[str]:
        """In order: a later split never repeats a query an earlier one built (see Ctx.taken)."""
        return ["test"] if self.ood else ["train", "val", "test"]


DATASETS: dict[str, DatasetSpec] = {s.name: s for s in [
    DatasetSpec("DigitsCLS", "classification", False, "ImageNet-1K", "a real handwritten digit (scikit-learn)",
                "the 10 digit names", build_digits_cls),
    DatasetSpec("ShapesCLS", "classification", False, "VOC2007", "one drawn shape",
                "the 48 colour-shape labels", build_shapes_cls),
    DatasetSpec("PhotoCLS", "classification", False, "SUN397", "a random crop of a real sample photo",
                "the 19 photo labels", build_photo_cls),
    DatasetSpec("ScenesVQA", "vqa", False, "Visual7W", "a drawn scene + a counting/attribute/position question",
                "the 34 answers (counts, colours, shapes, positions, sizes, yes/no)", build_scenes_vqa),
    DatasetSpec("DigitsVQA", "vqa", False, "OK-VQA", "one or two handwritten digits + an arithmetic or order "
                "question", "the 21 answers 0-18, even, odd", build_digits_vqa),
    DatasetSpec("ChartVQA", "vqa", False, "ChartQA", "a bar chart + a question about its bars",
                "the 23 answers (bar letters, 0-9, colours)", build_chart_vqa),
    DatasetSpec("DocVQA", "vqa", False, "DocVQA", "a small rendered form + which value a field has",
                "the 47 field values", build_doc_vqa),
    DatasetSpec("ScenesT2I", "retrieval", False, "MSCOCO_t2i", "a caption that fully describes a scene",
                "scene images; hard negatives change one attribute", build_scenes_t2i),
    DatasetSpec("ScenesI2T", "retrieval", False, "MSCOCO_i2t", "a drawn scene",
                "captions; hard negatives describe one-attribute variants", build_scenes_i2t),
    DatasetSpec("ShapesCIR", "retrieval", False, "CIRR", "a reference scene + a modification text",
                "scene images incl. the reference and its other modifications", build_shapes_cir),
    DatasetSpec("ScenesGround", "grounding", False, "MSCOCO", "a scene + the name of one object's shape",
                "object crops (shape x colour x background)", build_scenes_ground),
    DatasetSpec("DigitsR", "classification", True, "ImageNet-R", "a digit drawn in an unseen style "
                "(seven-segment, dot-matrix, printed, outlined)", "the 10 digit names", build_digits_r),
    DatasetSpec("SignVQA", "vqa", True, "TextVQA", "coloured signs with words + which word a sign shows",
                "the 24 sign words", build_sign_vqa),
    DatasetSpec("FashionCIR", "retrieval", True, "FashionIQ", "a garment image + a style note (one or two "
                "changes)", "garment images (128 appearances)", build_fashion_cir),
    DatasetSpec("RefScenes", "grounding", True, "RefCOCO", "a scene + a referring expression (left/right/top/"
                "bottom/larger/smaller)", "object crops; the other same-shape object is the hard negative",
                build_ref_scenes),
]}
assert {s.meta_task for s in DATASETS.values()} == set(META_TASKS)


# --- writing ---------------------------------------------------------------------------------------------------


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False)


def _write_text(path: Path, text: str) -> None:
    """Write to a temporary name, then rename: a reader never sees half a file."""
    atomic_write_text(path, text)


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    _write_text(path, "".join(_dumps(r) + "\n" for r in rows))


def _oracle_row(qid: str, name: str, split: str, it: Item) -> dict:
    wrong = [w for w in dict.fromkeys(it.wrong) if w and not same_words(w, it.answer)]
    if not wrong:
        raise RuntimeError(f"{qid}: no plausible wrong answer differs from the answer {it.answer!r}")
    return {"id": qid, "dataset": name, "split": split, "question": prompts.teacher_question(it.qry_text),
            "answer": it.answer, "wrong_answers": wrong, "facts": it.facts}


def build_dataset(spec: DatasetSpec, settings: MiniMMEBSettings, root: Path) -> dict:
    """Generate one dataset's splits under `root`; returns its entry of minimmeb.json."""
    store = Store(root, spec.name)
    entry: dict[str, Any] = {"meta_task": spec.meta_task, "ood": spec.ood, "splits": spec.splits,
                             "description": f"{spec.analogue} analogue. Query: {spec.query}. Candidates: "
                                            f"{spec.candidates}.",
                             "analogue": spec.analogue}
    taken: set = set()
    for split in spec.splits:
        n = {"train": settings.n_train, "val": settings.n_val, "test": settings.n_test}[split]
        ctx = Ctx(settings, spec.name, split, store, rng_for(settings.seed, spec.name, split), taken)
        items = spec.build(ctx, n)
        if len(items) != n:
            raise RuntimeError(f"{spec.name}/{split}: built {len(items)} rows, expected {n}")
        if split == "train":
            ids = [f"{spec.name}:train:{i}" for i in range(n)]
            rows = [{"id": qid, "qry": it.qry_text, "qry_image_path": it.qry_img, "pos_text": it.pos[0],
                     "pos_image_path": it.pos[1], "neg_text": it.neg[0] if it.neg else "",
                     "neg_image_path": it.neg[1] if it.neg else ""} for qid, it in zip(ids, items)]
            _write_jsonl(root / "train" / spec.name / "original.jsonl", rows)
        else:
            ids = [f"{spec.name}:{i}" for i in range(n)]  # the query ids read_eval_dataset gives
            counts = {len(it.cands or ()) for it in items}
            if len(counts) != 1 or any(it.cands[0] != it.pos for it in items):
                raise RuntimeError(f"{spec.name}/{split}: candidate lists are ragged or miss the positive: {counts}")
            entry["n_candidates"] = counts.pop()
            if spec.meta_task in ("retrieval", "grounding") and entry["n_candidates"] < settings.n_candidates:
                logger.warning("%s: its gallery holds %d candidates, fewer than the %d asked for", spec.name,
                               entry["n_candidates"], settings.n_candidates)
            rows = [{"qry_text": it.qry_text, "qry_img_path": it.qry_img, "tgt_text": [c[0] for c in it.cands],
                     "tgt_img_path": [c[1] for c in it.cands]} for it in items]
            _write_jsonl(root / split / spec.name / f"{split}.jsonl", rows)
        if split != "val":  # the pilot needs no teacher; val ids would clash with test ids ("NAME:i")
            _write_jsonl(root / split / spec.name / "oracle.jsonl",
                         [_oracle_row(qid, spec.name, split, it) for qid, it in zip(ids, items)])
        entry[f"n_{split}"] = n
    entry["n_images"] = len(store.written)
    return entry


def generate(out: str | Path, seed: int = 0, scale: str = "small", n_candidates: int | None = None,
             datasets: Sequence[str] | None = None, progress: bool | None = None, **overrides: int) -> dict:
    """Write MiniMMEB to `out` and return its meta dict.

    The tree is built in a temporary sibling folder and renamed into place, so `out` is always either the old
    benchmark or the complete new one. An existing `out` is replaced only if it is empty or a MiniMMEB folder.
    """
    settings = MiniMMEBSettings.make(seed=seed, scale=scale, n_candidates=n_candidates, datasets=datasets, **overrides)
    out = Path(out)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or is_minimmeb(out))):
        raise FileExistsError(f"{out} exists and is not a MiniMMEB folder; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    names = list(settings.datasets or DATASETS)
    t0 = time.perf_counter()
    try:
        from tqdm.auto import tqdm

        show = progress if progress is not None else sys.stderr.isatty()
        entries = {}
        for name in tqdm(names, desc="MiniMMEB", unit="dataset", disable=not show):
            t = time.perf_counter()
            entries[name] = build_dataset(DATASETS[name], settings, tmp)
            logger.info("%s: %s in %.1fs", name, {k: v for k, v in entries[name].items() if k.startswith("n_")},
                        time.perf_counter() - t)
        meta = {"name": BENCHMARK_NAME, "version": VERSION, "seed": settings.seed, "scale": settings.scale,
                "settings": {"n_train": settings.n_train, "n_val": settings.n_val, "n_test": settings.n_test,
                             "n_candidates": settings.n_candidates},
                "datasets": {k: entries[k] for k in sorted(entries)}}
        _write_text(tmp / META_FILE, json.dumps(meta, sort_keys=True, indent=2) + "\n")
        install_dir(tmp, out, mode=0o755)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote MiniMMEB (%d datasets, scale %s, seed %d) to %s in %.1fs", len(names), settings.scale,
                settings.seed, out, time.perf_counter() - t0)
    return meta


def is_minimmeb(path: str | Path) -> bool:
    """Whether `path` is a MiniMMEB folder (it holds a minimmeb.json naming MiniMMEB)."""
    meta = Path(path) / META_FILE
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text(encoding="utf-8")).get("name") == BENCHMARK_NAME
    except (OSError, ValueError):
        return False


def load_minimmeb(path: str | Path) -> dict:
    """The meta dict of a MiniMMEB folder (minimmeb.json)."""
    meta = Path(path) / META_FILE
    if not meta.is_file():
        raise FileNotFoundError(f"{path} is not a MiniMMEB folder: {META_FILE} is missing "
                                f"(generate one with: python -m msolomon.data.minimmeb --out {path})")
    data = json.loads(meta.read_text(encoding="utf-8"))
    if data.get("name") != BENCHMARK_NAME:
        raise ValueError(f"{meta} does not describe a MiniMMEB benchmark (name={data.get('name')!r})")
    return data


PROG = "python -m msolomon.data.minimmeb"


@dataclass
class MiniMMEBCommandSettings:
    """`python -m msolomon.data.minimmeb`: where to write and what (`generate`'s arguments)."""

    out: str = option(help="output folder (created; replaced only if it is empty or a MiniMMEB folder)")
    seed: int = option(0, "random seed: the same seed writes the same files")
    scale: str = option("small", "size of each dataset", choices=sorted(SCALES))
    n_candidates: int | None = option(None, "candidates per retrieval/grounding query (default: the scale's, 100 "
                                            "for small/full)")
    n_train: int | None = option(None, "override the scale's train rows per dataset (default: the scale's)")
    n_test: int | None = option(None, "override the scale's test rows per dataset (default: the scale's)")
    n_val: int | None = option(None, "override the scale's validation rows per in-distribution dataset (default: "
                                     "the scale's)")
    datasets: list[str] | None = option(None, "subset (default: all) of: " + ",".join(DATASETS))
    quiet: bool = option(False, "no progress bar or log lines (default: shown)")


def main(argv: Sequence[str] | None = None) -> int:
    args, _ = parse_settings(MiniMMEBCommandSettings, argv, prog=PROG, description=__doc__.split("\n")[0],
                             config_file=False)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    overrides = {k: v for k, v in (("n_train", args.n_train), ("n_val", args.n_val),
                                   ("n_test", args.n_test)) if v is not None}
    try:
        meta = generate(args.out, seed=args.seed, scale=args.scale, n_candidates=args.n_candidates,
                        datasets=args.datasets or None, progress=False if args.quiet else None, **overrides)
    except FileExistsError as err:  # an existing folder that is not MiniMMEB: never overwritten
        usage_error(PROG, f"--out {err}; choose a new or empty folder")
    except (ValueError, KeyError) as err:  # bad --datasets, sizes
        usage_error(PROG, str(err).strip(chr(39)))
    ds = meta["datasets"]
    sys.stdout.write(f"MiniMMEB seed={meta['seed']} scale={meta['scale']}: {len(ds)} datasets "
          f"({sum(not d['ood'] for d in ds.values())} IND, {sum(d['ood'] for d in ds.values())} OOD), "
          f"{sum(d.get('n_train', 0) for d in ds.values())} train / "
          f"{sum(d.get('n_val', 0) for d in ds.values())} val / "
          f"{sum(d['n_test'] for d in ds.values())} test rows "
          f"-> {args.out} in {time.perf_counter() - t0:.1f}s\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
