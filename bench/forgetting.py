"""What fine-tuning keeps of the base: held-out generative exact match of several models, per world.

    python bench/forgetting.py --pretrain-data runs/pretrain/data [--models assets/base,assets/model,...]
                               [--worlds DigitsR,DigitsCLS] [--limit N] [--threads 2] [--json FILE] [--tiny]

M-Solomon's augmentations carry what the base MLLM knows into the embedding, so knowledge the fine-tuning forgets
is lost to retrieval too (DigitsR, the ImageNet-R mirror: renditions of digits MiniMMEB trains only in handwriting).
Each model answers the pretraining data's held-out questions (images no model was trained on, disjoint from every
benchmark image) greedily, as `training.pretrain` judges the base: exact match of the whole answer, per world. No
benchmark test image is read, so a fine-tuning recipe may be chosen on these figures.

`--pretrain-data` is the pretraining run's data folder (`training.pretrain --out DIR` makes DIR/data). JSON:
`models` (path, exact match per world and overall, seconds), `machine`.
"""
from __future__ import annotations

import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

DEFAULT_MODELS = "assets/base,assets/baselines/noaug,assets/baselines/alwaysaug,assets/model"


def heldout_rows(args) -> list[dict]:
    from training.pretrain_data import PretrainDataSettings, generate, is_pretrain_data, load_rows

    if args.tiny and not args.pretrain_data:
        _, _, benchmark = C.minimmeb(args, split="train")
        folder = Path(tempfile.mkdtemp(prefix="msolomon-forgetting-")) / "pretrain"
        generate(folder, PretrainDataSettings(n_per_dataset=2, n_heldout_per_dataset=3, seed=1,
                                              datasets=("DigitsR", "ShapesCLS")), benchmark, progress=False)
    elif not args.pretrain_data:
        raise SystemExit("--pretrain-data DIR is required: the data folder of a pretraining run "
                         "(`python -m training.pretrain --out DIR` makes DIR/data)")
    else:
        folder = Path(args.pretrain_data)
        if not is_pretrain_data(folder):
            raise SystemExit(f"--pretrain-data {folder}: not a pretraining data folder (no pretrain.json/train.jsonl)")
    rows = load_rows(folder, "heldout")
    if args.worlds:
        wanted = {w.strip() for w in args.worlds.split(",") if w.strip()}
        unknown = sorted(wanted - {r["dataset"] for r in rows})
        if unknown:
            raise SystemExit(f"no held-out questions of {', '.join(unknown)} in {folder}")
        rows = [r for r in rows if r["dataset"] in wanted]
    if args.limit:
        by_world: dict[str, list[dict]] = {}
        for r in rows:
            by_world.setdefault(r["dataset"], []).append(r)
        rows = [r for world in by_world.values() for r in world[:args.limit]]
    return rows


def load(spec: str, tiny: bool):
    from msolomon import MSolomon

    if tiny and spec == "tiny":
        return MSolomon.tiny(seed=0)
    if not Path(spec).is_dir():
        raise SystemExit(f"--models: {spec} is not a model folder")
    return MSolomon.from_pretrained(spec)


@dataclass
class ForgettingSettings(C.BenchSettings):
    models: str | None = C.option(None, f"comma-separated model folders (default: {DEFAULT_MODELS})")
    pretrain_data: str | None = C.option(None, "the pretraining run's data folder", metavar="DIR")
    worlds: str | None = C.option(None, "comma-separated worlds (default: all)")
    limit: int | None = C.option(None, "held-out questions per world (default: all)")
    max_new_tokens: int = C.option(48, "generated tokens per answer (training.pretrain's)")

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")


def main(argv=None) -> int:
    args = C.parse(ForgettingSettings, argv, __doc__, model=False, data=False)
    logging.basicConfig(level=logging.WARNING)
    threads = C.start(args)
    from msolomon.metrics import paired_gain_ci
    from training.pretrain_data import exact_match, normalise_answer

    rows = heldout_rows(args)
    specs = [m.strip() for m in (args.models or ("tiny" if args.tiny else DEFAULT_MODELS)).split(",") if m.strip()]
    from training.pretrain import generate_answers

    worlds = sorted({r["dataset"] for r in rows})
    results = []
    for spec in specs:
        model = load(spec, args.tiny)
        t0 = time.perf_counter()
        answers = generate_answers(model, rows, True, max_new_tokens=args.max_new_tokens)
        seconds = time.perf_counter() - t0
        per_world = {w: exact_match([a for a, r in zip(answers, rows) if r["dataset"] == w],
                                    [r["response"] for r in rows if r["dataset"] == w]) for w in worlds}
        right = [normalise_answer(a) == normalise_answer(r["response"]) for a, r in zip(answers, rows)]
        bits = {w: [ok for ok, r in zip(right, rows) if r["dataset"] == w] for w in worlds}
        results.append({"model": spec, "exact_match": per_world,
                        "correct_bits": {w: "".join("1" if b else "0" for b in v) for w, v in bits.items()},
                        "overall": exact_match(answers, [r["response"] for r in rows]), "seconds": seconds,
                        "examples": [{"dataset": r["dataset"], "reference": r["response"], "answer": a}
                                     for r, a in list(zip(rows, answers))[:: max(1, len(rows) // 12)]]})
    first = {w: [c == "1" for c in results[0]["correct_bits"][w]] for w in worlds} if results else {}
    for r in results[1:]:  # the same questions: a paired interval against the first model, macro over worlds
        gain = paired_gain_ci({w: [c == "1" for c in r["correct_bits"][w]] for w in worlds}, first)
        r["vs_first"] = {"model": results[0]["model"], "macro_gain": gain["gain"], "ci95": gain["ci95"]}
    table = C.table(["model", *worlds, "overall", "s"],
                    [[r["model"], *(round(r["exact_match"][w], 1) for w in worlds), round(r["overall"], 1),
                      round(r["seconds"])] for r in results])
    result = {"machine": C.machine(threads), "n_heldout": len(rows), "worlds": worlds, "models": results}
    C.finish(args, "What fine-tuning keeps: held-out generative exact match (%) per world",
             [(f"{len(rows)} held-out pretraining questions, greedy, at most {args.max_new_tokens} tokens", table)],
             result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
