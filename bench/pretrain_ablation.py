"""Short pretraining runs side by side: does the base learn to *see*, at which learning rate, patch size and length?

    python bench/pretrain_ablation.py [--threads 2] [--lr 2e-3,1e-3,5e-4] [--patch 14,7] [--steps 200,500]
                                      [--worlds DigitsCLS,ShapesCLS] [--pretrain-data DIR] [--json FILE] [--tiny]

Each variant (every combination of the lists) is a fresh base of the default backbone (`training.pretrain`'s
BASE_BACKBONE, seed 0), trained by the pretraining loop (`training.trainer.Trainer`, next-token loss on the answer,
batch 32, warm-up 50 steps, linear decay) on the chosen worlds only, then judged by held-out exact match per world
with the image and without it (`training.pretrain.evaluate_base`). Digit and shape names are one token each at the
end of a templated answer, so exact match there is the share of images the base reads.

The data are pretraining data at pretraining seed 0 (`--pretrain-data`, else generated once into the cache beside
MiniMMEB small), never the seed the shipped base is trained and evaluated at (1): choosing a setting here does not
look at the base's reported held-out set. Timings are wall seconds of training at --threads.
JSON: `variants` (settings, exact match per world, text-only floor, seconds), `machine`.
"""
from __future__ import annotations

import itertools
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

TINY_BACKBONE = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64,
                 "vision_dim": 32, "vision_depth": 1, "vision_heads": 2, "vocab_size": 512}


def pretrain_data(args, worlds: list[str]) -> Path:
    """Pretraining data at pretraining seed 0 for `worlds` (cached), kept apart from MiniMMEB small seed 0."""
    from training.pretrain_data import PretrainDataSettings, generate, is_pretrain_data

    if args.pretrain_data:
        return Path(args.pretrain_data)
    _, _, benchmark = C.minimmeb(args, split="train")
    n, held = (16, 4) if args.tiny else (3000, 40)
    if args.tiny:
        folder = Path(tempfile.mkdtemp(prefix="msolomon-ablation-")) / "pretrain"
    else:
        cache = Path(os.environ.get("MSOLOMON_CACHE") or Path.home() / ".cache" / "msolomon") / "bench"
        folder = cache / f"pretrain-seed0-{'-'.join(worlds)}-{n}"
    if not is_pretrain_data(folder):
        generate(folder, PretrainDataSettings(n_per_dataset=n, n_heldout_per_dataset=held, seed=0,
                                              datasets=tuple(worlds)), benchmark, progress=False)
    return folder


def size(spec: str) -> tuple[int, int, int]:
    """A `HIDDENxLAYERSxVISION` spec, e.g. `256x4x128`: hidden size, text layers, vision width."""
    parts = spec.lower().split("x")
    if len(parts) != 3 or not all(x.isdigit() and int(x) > 0 for x in parts):
        raise ValueError(f"size {spec!r}: expected HIDDENxLAYERSxVISION, e.g. 256x4x128")
    hidden, layers, vision = (int(x) for x in parts)
    if hidden % 8 or vision % 8:
        raise ValueError(f"size {spec!r}: hidden and vision widths must be multiples of 8")
    return hidden, layers, vision


def sized(backbone: dict, size: tuple[int, int, int] | None) -> dict:
    """The backbone at another size: heads, key-value heads and vision heads as the base's, MLP 4x the width."""
    if size is None:
        return dict(backbone)
    hidden, layers, vision = size
    return {**backbone, "hidden_size": hidden, "num_layers": layers, "intermediate_size": 4 * hidden,
            "vision_dim": vision}


def run_variant(rows, heldout, lr: float, patch: int, steps: int, backbone: dict, batch_size: int) -> dict:
    from msolomon.backbone import default_corpus
    from msolomon.model import MSolomon
    from training.pretrain import PretrainCollator, evaluate_base, pretrain_loss
    from training.trainer import LoopSettings, OptimSettings, Trainer

    corpus = default_corpus() + sorted({t for r in rows + heldout for t in (r["prompt"], r["response"])})
    model = MSolomon.tiny(seed=0, corpus=corpus, **{**backbone, "patch_size": patch})
    loop = LoopSettings(max_steps=steps, batch_size=batch_size, save_every=10 ** 9, log_every=max(1, steps // 4),
                        optim=OptimSettings(lr=lr, warmup_steps=min(50, steps // 4), weight_decay=0.01))
    with tempfile.TemporaryDirectory(prefix="msolomon-ablation-run-") as out:
        trainer = Trainer(model, rows, out, loop, collator=PretrainCollator(model.encoder), loss_fn=pretrain_loss)
        t0 = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t0
    model.model.eval()
    result = evaluate_base(model, heldout, max_new_tokens=24)
    params = sum(t.numel() for t in model.model.parameters())
    return {"lr": lr, "patch": patch, "steps": steps, "train_s": train_s,
            "size": f"{backbone['hidden_size']}x{backbone['num_layers']}x{backbone['vision_dim']}",
            "params_m": round(params / 1e6, 2),
            "exact_match": {k: v["exact_match"] for k, v in result["datasets"].items()},
            "text_only_floor": {k: v["text_only_floor"] for k, v in result["datasets"].items()},
            "overall": result["overall"]["exact_match"]}


@dataclass
class AblationSettings(C.BenchSettings):
    lr: list[float] | None = C.option(None, "peak learning rates (default: 2e-3,1e-3,5e-4)", parse=float)
    patch: list[int] | None = C.option(None, "vision patch sizes (default: 14)", parse=int)
    steps: list[int] | None = C.option(None, "training steps per variant (default: 200)", parse=int)
    sizes: list[tuple[int, int, int]] | None = C.option(
        None, "backbone sizes HIDDENxLAYERSxVISION, e.g. 128x2x64,256x4x128,320x6x128 (default: the base's)",
        parse=size)
    worlds: str = C.option("DigitsCLS,ShapesCLS", "world builders to pretrain on")
    pretrain_data: str | None = C.option(None, "pretraining data (default: seed 0 for --worlds, generated once into "
                                               "the cache)", metavar="DIR")


def main(argv=None) -> int:
    args = C.parse(AblationSettings, argv, __doc__, model=False)
    logging.basicConfig(level=logging.WARNING)
    threads = C.start(args)
    from training.pretrain import BASE_BACKBONE
    from training.pretrain_data import load_rows

    worlds = [w.strip() for w in args.worlds.split(",") if w.strip()]
    folder = pretrain_data(args, worlds)
    rows = [r for r in load_rows(folder, "train") if r["dataset"] in worlds]
    heldout = [r for r in load_rows(folder, "heldout") if r["dataset"] in worlds]
    if not rows or not heldout:
        raise SystemExit(f"{folder} has no examples of {', '.join(worlds)}")
    backbone = TINY_BACKBONE if args.tiny else BASE_BACKBONE
    grid = itertools.product(args.sizes or [None], args.lr or ([1e-3] if args.tiny else [2e-3, 1e-3, 5e-4]),
                             args.patch or [14], args.steps or ([2] if args.tiny else [200]))
    variants = [run_variant(rows, heldout, lr, patch, steps, sized(backbone, size), 4 if args.tiny else 32)
                for size, lr, patch, steps in grid]
    names = sorted(variants[0]["exact_match"])
    table = C.table(["size", "params M", "lr", "patch", "steps", *names, "overall", "train s"],
                    [[v["size"], v["params_m"], v["lr"], v["patch"], v["steps"], *(v["exact_match"][n] for n in names),
                      v["overall"], round(v["train_s"])] for v in variants])
    floor = C.table(names, [[variants[0]["text_only_floor"][n] for n in names]])
    result = {"machine": C.machine(threads), "worlds": worlds, "data": str(folder), "n_train": len(rows),
              "n_heldout": len(heldout), "variants": variants}
    C.finish(args, "Pretraining ablation: held-out exact match (%) per world",
             [(f"{len(rows)} training examples, {len(heldout)} held-out, batch {4 if args.tiny else 32}", table),
              ("text-only floor of the first variant (no image)", floor)], result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
