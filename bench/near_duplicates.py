"""How near the base's pretraining images sit to the benchmark's test images, and whether the shipped models score
better on the test queries that have a pretraining near duplicate.

    python bench/near_duplicates.py --pretrain-data runs/pretrain/data [--data DIR] [--report assets/model/report.json]
        [--rms 4] [--json FILE]

Every image is reduced to its 8×8 colour signature (`training.pretrain_data.image_signature`); two images are
near when their signatures lie within `--rms` levels (root mean square) of each other, the tolerance of the
pretraining filter. Per test dataset: how many queries have a pretraining image that near (the query's image; for a
text query, its positive's), how many have a fine-tuning training image that near (MiniMMEB's own train split, which
fine-tuning sees by design), and each shipped model's Precision@1 on the near queries and on the rest (from the
report's per-query `correct_bits`, in row order). Per pretraining world: how many of its images the filter drops now
(near a validation or test image). No model is run: this reads images and reports only.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

MODELS = (("msolomon", "auto"), ("alwaysaug", "always"), ("noaug", "never"))


@dataclass
class NearDuplicateSettings(C.BenchSettings):
    pretrain_data: str = C.option("runs/pretrain/data", "the base's pretraining data (training.pretrain --data-only)",
                                  metavar="DIR")
    report: str = C.option("assets/model/report.json", "a reproduce report with per-query correct_bits (test)")
    rms: float = C.option(4.0, "the tolerance in levels (root mean square over the 8×8 colour signature)")
    questions_out: str | None = C.option(None, "also write the test queries' questions (image, plain question, the "
                                         "oracle's answer; the first --questions per dataset with an image) as a "
                                         "held-out file that `bench/forgetting.py --pretrain-data DIR` reads: how "
                                         "well a base answers about the test images themselves", metavar="DIR")
    questions: int = C.option(60, "questions per dataset for --questions-out")


def _signatures(paths):
    import numpy as np

    from training.pretrain_data import SIGNATURE_SIZE, image_signature

    if not paths:
        return np.zeros((0, SIGNATURE_SIZE), dtype=np.float32)
    return np.stack([image_signature(p) for p in paths])


def _query_image(row) -> Path | None:
    """The image a test query stands for (an `EvalRow`): its own, or (a text query) its positive candidate's."""
    if row.query.image is not None:
        return Path(row.query.image)
    positive = row.candidates[0] if row.candidates else None
    return Path(positive.image) if positive is not None and positive.image is not None else None


def _share(bits: list[bool], mask: list[bool], want: bool) -> float | None:
    picked = [b for b, m in zip(bits, mask) if m == want]
    return 100.0 * sum(picked) / len(picked) if picked else None


def write_questions(folder: Path, names: list[str], out: Path, per_dataset: int) -> None:
    """The test queries that show an image, asked as pretraining asks (`plain_question`) with the oracle's answer,
    in the layout of a pretraining data folder (heldout.jsonl; image paths absolute)."""
    from msolomon.files import atomic_write_jsonl, atomic_write_text
    from training.pretrain_data import META_FILE, plain_question

    rows = []
    for name in names:
        tests = [json.loads(line) for line in (folder / "test" / name / "test.jsonl").read_text().splitlines()]
        oracle_file = folder / "test" / name / "oracle.jsonl"
        if not oracle_file.is_file():
            continue
        oracle = [json.loads(line) for line in oracle_file.read_text().splitlines()]
        kept = 0
        for i, (row, truth) in enumerate(zip(tests, oracle)):
            if not row.get("qry_img_path") or not truth.get("answer") or kept >= per_dataset:
                continue
            image = str((folder / row["qry_img_path"]).resolve())  # absolute: the folder written may be anywhere
            rows.append({"id": f"{name}:test:{i}", "dataset": name, "image": image,
                         "prompt": plain_question(row["qry_text"]), "response": truth["answer"]})
            kept += 1
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(out / "heldout.jsonl", rows)
    atomic_write_jsonl(out / "train.jsonl", [])
    atomic_write_text(out / META_FILE, json.dumps({"name": "MiniMMEB test questions", "source": str(folder),
                                                   "n_heldout": len(rows)}) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = C.parse(NearDuplicateSettings, argv, __doc__, model=False)
    threads = C.start(args)
    from msolomon.metrics import correct_by_dataset
    from training.pretrain_data import NearDuplicates, held_out_images, load_rows

    bench, names, folder = C.minimmeb(args, split="test")
    folder = Path(folder)
    report = json.loads(Path(args.report).read_text(encoding="utf-8"))
    pretrain = load_rows(args.pretrain_data, "train")
    pre_paths = sorted({r["image"] for r in pretrain})
    world_of = {r["image"]: r["dataset"] for r in pretrain}
    response = {r["image"]: str(r["response"]) for r in pretrain}
    pre = NearDuplicates(pre_paths, args.rms)
    result: dict = {"machine": C.machine(threads), "data": str(folder), "pretrain_data": args.pretrain_data,
                    "report": args.report, "rms": args.rms, "pretraining_images": len(pre_paths), "datasets": {},
                    "filter_drops": {}}
    rows_out = []
    for name in names:
        rows = bench.read(name)
        images = [_query_image(r) for r in rows]
        have = [i for i, p in enumerate(images) if p is not None]
        sig = _signatures([images[i] for i in have])
        d_pre, nearest = pre.search(sig)
        oracle_file = folder / "test" / name / "oracle.jsonl"
        answers = ([json.loads(line).get("answer") for line in oracle_file.read_text().splitlines()]
                   if oracle_file.is_file() else [])
        same = sum(1 for i, d, j in zip(have, d_pre, nearest) if d <= args.rms and i < len(answers) and answers[i]
                   and response[pre_paths[j]].strip().lower() == str(answers[i]).strip().lower())
        train_paths = sorted((folder / "images" / name / "train").rglob("*.png"))
        d_train, _ = NearDuplicates(train_paths, args.rms).search(sig)
        near_pre = [False] * len(rows)
        for i, d in zip(have, d_pre):
            near_pre[i] = bool(d <= args.rms)
        entry = {"queries": len(rows), "with_image": len(have),
                 "near_pretraining": int(sum(near_pre)),
                 "near_with_the_same_answer": int(same),  # the nearest pretraining example answers as the query
                 "near_fine_tuning_train": int(sum(d <= args.rms for d in d_train)) if train_paths else None,
                 "median_rms_to_pretraining": C.median(d_pre.tolist()) if len(have) else None,
                 "median_rms_to_train": C.median(d_train.tolist()) if train_paths and len(have) else None,
                 "p_at_1": {}}
        for key, mode in MODELS:
            bits = correct_by_dataset(report["models"][key]["modes"][mode]).get(name)
            if bits is None or len(bits) != len(rows):
                continue
            entry["p_at_1"][key] = {"near": _share(bits, near_pre, True), "rest": _share(bits, near_pre, False)}
        result["datasets"][name] = entry
        ms = entry["p_at_1"].get("msolomon", {})
        al = entry["p_at_1"].get("alwaysaug", {})
        rows_out.append([name, entry["queries"], entry["near_pretraining"], entry["near_with_the_same_answer"],
                         entry["near_fine_tuning_train"],
                         C.rnd(entry["median_rms_to_pretraining"], 1), C.rnd(entry["median_rms_to_train"], 1),
                         C.rnd(ms.get("near"), 1), C.rnd(ms.get("rest"), 1), C.rnd(al.get("near"), 1),
                         C.rnd(al.get("rest"), 1)])
    if args.questions_out:
        write_questions(folder, names, Path(args.questions_out), args.questions)
    held = NearDuplicates(held_out_images(folder), args.rms)
    d_held, _ = held.search(_signatures(pre_paths))
    for path, d in zip(pre_paths, d_held):
        drops = result["filter_drops"].setdefault(world_of[path], {"images": 0, "near_val_or_test": 0})
        drops["images"] += 1
        drops["near_val_or_test"] += int(d <= args.rms)
    drop_rows = [[w, v["images"], v["near_val_or_test"], C.rnd(100.0 * v["near_val_or_test"] / v["images"], 1)]
                 for w, v in sorted(result["filter_drops"].items())]
    sections = [
        (f"Test queries with a near image (colour signatures within {args.rms:g} RMS), P@1 near / rest",
         C.table(["dataset", "queries", "near a pretraining image", "its answer the query's",
                  "near a fine-tuning train image",
                  "median RMS to pretraining", "median RMS to train", "M-Solomon near", "M-Solomon rest",
                  "AlwaysAug near", "AlwaysAug rest"], rows_out)),
        ("Pretraining images the filter drops now (near a validation or test image)",
         C.table(["world", "images", "dropped", "%"], drop_rows)),
    ]
    C.finish(args, "Near duplicates between pretraining and the benchmark", sections, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
