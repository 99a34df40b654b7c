"""Training steps/s and peak memory of the default backbone at the reproduce settings, with and without the
selective logits of the generation loss.

    python bench/train.py [--threads 1] [--model PATH] [--data DIR] [--steps 6] [--batch-size 32]
                          [--rows-per-dataset 128] [--length-chunks 4] [--json FILE] [--tiny]

The model is the shipped base (assets/base, what `training.reproduce` fine-tunes; else the shipped model), trained
as reproduce trains M-Solomon: the pilot's split from the shipped model's report.json (adaptive labels; AlwaysAug
labels when there is none), oracle augmentations, batch 32, lr 5e-4, λ = 1, temperature 0.02, hard negatives.
Three copies of the model train on the same batches, interleaved step by step:
- selective: `training.losses.generation_loss`, the language-model head only on the labelled segment positions;
- chunked: the same, with the query and target batches run in --length-chunks sub-batches of rows of similar length
  (`--length-chunks` of training.train: less padding to compute);
- full: the head over every position of the query batch, then cross-entropy with -100 ignored (written here only).
The three losses are checked equal on the first batch. Steps/s is 1 / the median step time; peak memory is the
process's peak resident set during a step (VmHWM reset before it) and its growth over the resident set before.
JSON: `ratios` (selective_speedup, selective_peak_growth_saving_mb, chunked_speedup over selective), `steps`,
`padding_share` (of the query and target batches' positions, one sub-batch against the chunks), `targets` (none).
"""
from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

REPRODUCE = {"batch_size": 32, "lr": 5e-4, "gen_weight": 1.0, "temperature": 0.02}


def full_logits_loss(model, batch, loop):
    """`training.trainer.embedder_loss` with the generation loss computed over every position's logits."""
    import torch
    import torch.nn.functional as F

    from msolomon.backbone import unwrap
    from training.losses import info_nce
    q, t = batch["query"], batch["target"]
    device = model.device
    q_hidden = model.forward_hidden(q)
    t_hidden = model.forward_hidden(t)
    q_emb = q_hidden[torch.arange(q_hidden.shape[0], device=device), q["last_index"].to(device)]
    t_emb = t_hidden[torch.arange(t_hidden.shape[0], device=device), t["last_index"].to(device)]
    keys = batch["target_keys"].to(device) if loop.mask_false_negatives else None
    rep = info_nce(q_emb, t_emb, q_emb.shape[0], loop.temperature, keys)
    logits = unwrap(model.model).lm_head(q_hidden[:, :-1]).float()  # (B, L-1, V): every position
    labels = q["labels"].to(device)[:, 1:]
    gen = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    loss = rep.loss + loop.gen_weight * gen
    return loss, {"loss": loss.detach(), "rep_loss": rep.loss.detach(), "gen_loss": gen.detach()}


def training_examples(args, folder: Path, tmp: Path, rows_per_dataset: int):
    from training.collator import assign_labels
    from training.synthesize import SynthesisSettings, load_augmentations, synthesize
    from training.train import TrainSettings, load_rows

    rows = load_rows(TrainSettings(data=str(folder), out=str(tmp / "unused"), limit=rows_per_dataset))
    synthesis = tmp / "synthesis.jsonl"
    synthesize(SynthesisSettings(data=str(folder), out=str(synthesis), backend="oracle", limit=rows_per_dataset,
                                 progress=False))
    augmentations = load_augmentations(synthesis)
    split, source = None, "AlwaysAug labels (no pilot split found)"
    report = Path(args.model or C.ROOT / "assets" / "model") / "report.json"
    if args.tiny:
        split, source = {"augment": ["ScenesVQA"], "embed": ["DigitsCLS", "ScenesT2I"]}, "a fixed tiny split"
    elif report.is_file() and "split" in json.loads(report.read_text()):
        split = json.loads(report.read_text())["split"]
        source = f"the pilot split of {report}"
    elif (C.ROOT / "assets" / "model" / "report.json").is_file():
        data = json.loads((C.ROOT / "assets" / "model" / "report.json").read_text())
        if "split" in data:
            split, source = data["split"], "the pilot split of assets/model/report.json"
    names = {r.dataset for r in rows}
    if split is not None:
        split = {"augment": [n for n in split["augment"] if n in names],
                 "embed": [n for n in names if n not in split["augment"]]}
    examples = assign_labels(rows, "adaptive" if split else "alwaysaug", augmentations, split)
    return examples, source


def padding_share(batch: dict) -> float:
    """Padded positions over all positions the forward passes compute, for the query and target batches."""
    real = total = 0
    for key in ("query", "target"):
        parts = [sub for _, sub in batch[key]["chunks"]] if batch[key].get("chunks") else [batch[key]]
        for sub in parts:
            real += int(sub["attention_mask"].sum())
            total += sub["attention_mask"].numel()
    return 1 - real / total


def load_base(args):
    from msolomon import MSolomon

    if args.tiny and args.model is None:
        return MSolomon.tiny(seed=0), "MSolomon.tiny(seed=0) (untrained)"
    import torch

    path = Path(args.model) if args.model else C.ROOT / "assets" / "base"
    if not args.model and not (path / "config.json").is_file():
        path = C.ROOT / "assets" / "model"
    return MSolomon.from_pretrained(path, dtype=torch.float32, device="cpu"), str(path)


@dataclass
class TrainBenchSettings(C.BenchSettings):
    steps: int | None = C.option(None, "measured steps per variant (default: 6; --tiny: 2)")
    batch_size: int | None = C.option(None, "per step (default: 32, reproduce's; --tiny: 4)")
    rows_per_dataset: int | None = C.option(None, "training rows read per dataset (default: 128; --tiny: 8)")
    length_chunks: int = C.option(4, "sub-batches of similar length in the chunked variant")


def main(argv=None) -> int:
    args = C.parse(TrainBenchSettings, argv, __doc__)
    steps = args.steps or (2 if args.tiny else 6)
    batch = args.batch_size or (4 if args.tiny else REPRODUCE["batch_size"])
    per_ds = args.rows_per_dataset or (8 if args.tiny else 128)
    threads = C.start(args)
    import torch

    from training.collator import CollatorSettings
    from training.trainer import LoopSettings, OptimSettings, Trainer, embedder_loss

    model, model_name = load_base(args)
    bench, names, folder = C.minimmeb(args, split="train")
    with tempfile.TemporaryDirectory() as tmp:
        examples, labels = training_examples(args, folder, Path(tmp), per_ds)
        loop = LoopSettings(batch_size=batch, max_steps=steps + 1, seed=0, temperature=REPRODUCE["temperature"],
                            gen_weight=REPRODUCE["gen_weight"], optim=OptimSettings(lr=REPRODUCE["lr"]),
                            collator=CollatorSettings(length_chunks=1))  # the one padded batch
        chunked_loop = copy.deepcopy(loop)
        chunked_loop.collator = CollatorSettings(length_chunks=args.length_chunks)

        def twin():
            return type(model)(copy.deepcopy(model.model), model.processor, copy.deepcopy(model.settings))

        other, third = twin(), twin()
        trainers = {"selective": Trainer(model, examples, Path(tmp) / "a", loop, loss_fn=embedder_loss),
                    "chunked": Trainer(third, examples, Path(tmp) / "c", chunked_loop, loss_fn=embedder_loss),
                    "full": Trainer(other, examples, Path(tmp) / "b", loop, loss_fn=full_logits_loss)}
        # the same loss every way (checked on the first batch, before any step)
        some = [examples[i] for i in range(batch)]
        first, first_chunked = trainers["selective"].collator(some), trainers["chunked"].collator(some)
        with torch.no_grad():
            a = embedder_loss(model, first, loop)[0].item()
            b = full_logits_loss(other, first, loop)[0].item()
            c = embedder_loss(third, first_chunked, chunked_loop)[0].item()
        for name, value in (("full", b), ("chunked", c)):
            if abs(a - value) > 1e-3 * max(1.0, abs(a)):
                raise SystemExit(f"the losses differ: selective {a:.6f}, {name} {value:.6f}")
        if first["query"].get("chunks") or first["target"].get("chunks"):
            raise SystemExit("the one-batch variants were chunked: their loop must set length_chunks=1")
        padding = {"one_batch": padding_share(first), f"{args.length_chunks}_chunks": padding_share(first_chunked)}
        for name, tr in trainers.items():  # warm-up step
            tr.train_step(0)
        got = {name: {"s": [], "peak": [], "growth": []} for name in trainers}
        for step in range(1, steps + 1):
            for name in C.rotations(list(trainers), step):
                import gc

                gc.collect()
                C.reset_peak_rss()
                before = C.rss_mb()
                t0 = time.perf_counter()
                trainers[name].train_step(step)
                got[name]["s"].append(time.perf_counter() - t0)
                peak = C.rss_mb(peak=True)
                got[name]["peak"].append(peak)
                got[name]["growth"].append(peak - before if peak is not None and before is not None else None)
    out, rows = {}, []
    for name in trainers:
        med = C.median(got[name]["s"])
        peak = max((x for x in got[name]["peak"] if x is not None), default=None)
        growth = max((x for x in got[name]["growth"] if x is not None), default=None)
        out[name] = {"step_s_median": med, "steps_per_s": 1 / med, "peak_rss_mb": peak, "peak_growth_mb": growth}
    speedup = C.median(f / s for f, s in zip(got["full"]["s"], got["selective"]["s"]))
    chunked_speedup = C.median(s / c for s, c in zip(got["selective"]["s"], got["chunked"]["s"]))
    saving = (out["full"]["peak_growth_mb"] - out["selective"]["peak_growth_mb"]
              if out["full"]["peak_growth_mb"] is not None and out["selective"]["peak_growth_mb"] is not None else None)
    for name, label in (("selective", "selective logits (the default)"),
                        ("chunked", f"selective logits, {args.length_chunks} length chunks"), ("full", "full logits")):
        o = out[name]
        rows.append([label, o["step_s_median"], o["steps_per_s"], out["full"]["step_s_median"] / o["step_s_median"],
                     o["peak_rss_mb"], o["peak_growth_mb"]])
    n_aug = sum(ex.decision == "/augment" for ex in examples)
    result = {"machine": C.machine(threads), "model": model_name, "model_size": C.model_summary(model),
              "data": str(folder), "labels": labels, "examples": len(examples), "augment_share": n_aug / len(examples),
              "batch_size": batch, "steps": steps, "reproduce_settings": REPRODUCE,
              "first_batch_loss": {"selective": a, "full": b, "chunked": c}, "length_chunks": args.length_chunks,
              "padding_share": padding,
              "ratios": {"selective_speedup": speedup, "selective_peak_growth_saving_mb": saving,
                         "chunked_speedup": chunked_speedup},
              "variants": out, "targets": {}}
    C.finish(args, f"training steps: {model_name}, batch {batch}, {steps} interleaved steps per variant, "
                   f"{len(examples)} examples ({n_aug / len(examples):.0%} /augment; {labels})",
             [("generation loss: selective against full logits; length chunks",
               C.table(["variant", "s/step (median)", "steps/s", "× full", "peak MB", "peak growth MB"], rows)),
              ("padding", f"share of padded positions in the query and target batches of the first step: "
                          f"{padding['one_batch']:.1%} in one batch, "
                          f"{padding[f'{args.length_chunks}_chunks']:.1%} in {args.length_chunks} length chunks; "
                          f"chunked ÷ selective step time (median of per-step ratios): "
                          f"{chunked_speedup:.2f}× faster")],
             result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
