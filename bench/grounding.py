"""Why a model misses grounding targets: how far apart its crop embeddings sit by what differs between two crops, and
which crop wins when the positive does not.

    python bench/grounding.py [--models assets/model,assets/baselines/alwaysaug,assets/baselines/noaug]
        [--data DIR] [--split val] [--predictions NAME=FILE.predictions.jsonl:MODE,...] [--threads 2] [--json FILE]

ScenesGround's candidates are crops named BACKGROUND_COLOUR_SHAPE: the positive, the scene's other objects, the object
recoloured and the object on other backgrounds. Per model: the mean cosine between crops that differ only in their
background, only in colour, only in shape (higher: the model tells them apart less). Per predictions file (an
evaluation's, one mode): of the queries it got wrong, whether the top crop differs from the positive in background,
colour or shape. Reads the validation split by default; no test image is needed.
"""
from __future__ import annotations

import itertools
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

DATASET = "ScenesGround"
PARTS = ("background", "colour", "shape")


def crop_parts(image: str) -> tuple[str, ...]:
    parts = Path(str(image)).stem.split("_")
    if len(parts) != 3:
        raise SystemExit(f"{image}: not a ScenesGround crop named BACKGROUND_COLOUR_SHAPE")
    return tuple(parts)


def crop_cosines(model, candidates) -> dict[str, float]:
    import numpy as np

    vecs = np.asarray(model.encode_candidates(candidates, batch_size=32, show_progress_bar=False))
    names = [crop_parts(c.image) for c in candidates]
    sums: dict[str, list[float]] = {p: [] for p in PARTS}
    for i, j in itertools.combinations(range(len(candidates)), 2):
        diff = [p for p, a, b in zip(PARTS, names[i], names[j]) if a != b]
        if len(diff) == 1:
            sums[diff[0]].append(float(vecs[i] @ vecs[j]))
    return {f"{p}_only": sum(v) / len(v) for p, v in sums.items() if v} | {
        f"{p}_only_pairs": len(v) for p, v in sums.items()}


def error_kinds(path: Path, mode: str) -> dict[str, int]:
    kinds: Counter = Counter()
    for line in path.read_text().splitlines():
        p = json.loads(line)
        if p.get("dataset") != DATASET or p.get("mode") != mode:
            continue
        if p["correct"]:
            kinds["right"] += 1
            continue
        pos = next((t for t in p["top"] if t["correct"]), None)
        if pos is None:
            kinds["positive below the top 5"] += 1
            continue
        diff = [k for k, a, b in zip(PARTS, crop_parts(p["top"][0]["image"]), crop_parts(pos["image"])) if a != b]
        kinds["top crop differs in " + " and ".join(diff)] += 1
    return dict(kinds.most_common())


@dataclass
class GroundingSettings(C.BenchSettings):
    models: str = C.option("assets/model,assets/baselines/alwaysaug,assets/baselines/noaug",
                           "comma-separated model folders")
    split: str = C.option("val", "the MiniMMEB split to read")
    predictions: str = C.option("", "NAME=FILE.predictions.jsonl:MODE, comma-separated")


def main(argv: list[str] | None = None) -> int:
    args = C.parse(GroundingSettings, argv, __doc__, model=False)
    threads = C.start(args)
    from msolomon import MSolomon

    bench, _, folder = C.minimmeb(args, split=args.split)
    if DATASET not in bench.names:
        raise SystemExit(f"{folder} has no {DATASET}")
    from msolomon.evaluation import unique_candidates

    candidates, _ = unique_candidates(bench.read(DATASET))
    result: dict = {"machine": C.machine(threads), "data": str(folder), "split": args.split,
                    "crops": len(candidates), "cosines": {}, "errors": {}}
    for path in [m for m in args.models.split(",") if m]:
        result["cosines"][path] = crop_cosines(MSolomon.from_pretrained(path), candidates)
    for spec in [s for s in args.predictions.split(",") if s]:
        name, rest = spec.split("=", 1)
        file, _, mode = rest.rpartition(":")
        result["errors"][name] = error_kinds(Path(file), mode)
    rows = [[m] + [C.rnd(c.get(f"{k}_only"), 3) for k in PARTS] for m, c in result["cosines"].items()]
    sections = [("Mean cosine between crops that differ only in ...",
                 C.table(["model", "background", "colour", "shape"], rows))]
    if result["errors"]:
        kinds = sorted({k for e in result["errors"].values() for k in e})
        sections.append(("What wins when the positive does not (queries)",
                         C.table(["run"] + kinds, [[n] + [e.get(k, 0) for k in kinds]
                                                   for n, e in result["errors"].items()])))
    C.finish(args, f"{DATASET}: crops and errors ({args.split})", sections, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
