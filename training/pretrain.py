"""`python -m training.pretrain --out DIR`: the tiny base MLLM, our analogue of Qwen2-VL-2B-Instruct.

M-Solomon starts from an MLLM that can already see and answer; augmentation carries that knowledge into the
embedding. Ours is a small Qwen2-VL trained generatively (next-token loss on the answer) on image–question–answer
data that MiniMMEB's world builders make with seeds of their own (`training.pretrain_data`), disjoint from every
benchmark image by pixel hash.

    1. the benchmark to stay apart from (MiniMMEB at --benchmark-seed/--benchmark-scale)   DIR/benchmark/
    2. pretraining data (train + held-out)                                                   DIR/data/
    3. generative pretraining, resumable, curves in DIR/train_log.jsonl                      DIR/checkpoint, DIR/final
    4. held-out exact match, with the image and without it (the text-only floor)            DIR/report.json, .md, .png
    5. --ship assets/base: the base in half precision with its model card

Every stage skips what is done, so a killed run resumes where it stopped.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from msolomon.files import append_jsonl, atomic_file, atomic_write_json, read_json, read_jsonl
from msolomon.settings import (
    command_line,
    flat_settings,
    option,
    parse_settings,
    process_environment,
    threads_option,
    usage_error,
)
from training.trainer import FINAL, LoopSettings, OptimSettings

logger = logging.getLogger("training.pretrain")

# the default backbone, chosen by measurement (README "Choosing the backbone"): `never` latency 20 ms at batch
# size 1 on one thread, 5 M parameters (10 MB in half precision)
BASE_BACKBONE: dict[str, Any] = {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2,
                                 "intermediate_size": 1024, "vision_dim": 128, "vision_depth": 2, "vision_heads": 4,
                                 "vocab_size": 4096}


# peak learning rate, chosen on short runs judged on held-out data of pretraining seed 0 (the shipped base is
# trained and evaluated at seed 1): 2e-3, the first base's, left the language model blind to digits (every digit
# answered "three") though a linear probe read them from the vision features; 5e-4 and 1e-3 learned them
PRETRAIN_LR = 5e-4

# every invocation that trained, in order (a base continued with a larger --max-steps is made by several)
COMMANDS = "commands.jsonl"
# the steps the final model was trained for (a larger --max-steps continues the folder)
FINAL_STEPS = "final_steps.json"


def pretrain_loop() -> LoopSettings:
    """The pretraining loop: the training loop's settings with pretraining's defaults."""
    return LoopSettings(epochs=5.0, max_steps=6000, save_every=250, log_every=25,
                        optim=OptimSettings(lr=PRETRAIN_LR, warmup_steps=200, weight_decay=0.01))


@dataclass
class PretrainSettings:
    """Every setting of a pretraining run; the loop's are `training.trainer.LoopSettings` (other defaults)."""

    out: str = option("", "the run folder (required)", metavar="DIR")
    data: str | None = option(None, "an existing pretraining data folder (default: OUT/data, generated)",
                              metavar="DIR")
    benchmark: str | None = option(None, "the MiniMMEB folder whose images are excluded (default: OUT/benchmark, "
                                   "generated)", metavar="DIR")
    benchmark_seed: int = option(0, "seed of the MiniMMEB to stay apart from")
    benchmark_scale: str = option("small", "scale of the MiniMMEB to stay apart from",
                                  choices=("tiny", "small", "full"))
    n_per_dataset: int = option(3000, "training items per world builder")
    n_heldout: int = option(60, "held-out items per world builder")
    datasets: list[str] | None = option(None, "world builders to draw from (default: every benchmark world; the "
                                        "pretraining-only Reading task only when named, e.g. "
                                        "DocVQA,SignVQA,Reading)")
    backbone: dict[str, Any] = option(dict(BASE_BACKBONE), "TinySettings fields (merged over the default backbone)")
    max_response_tokens: int = option(48, "answer tokens trained on per example")
    max_new_tokens: int = option(48, "generated tokens per held-out answer")
    threads: int | None = threads_option("torch and faiss")
    ship: str | None = option(None, "copy the base here in half precision with its model card (e.g. assets/base)",
                              metavar="DIR")
    data_only: bool = option(False, "make the pretraining data (OUT/data) and stop, without training: the folder "
                             "that --replay of training.train and training.reproduce reads (minutes, not an hour)")
    loop: LoopSettings = field(default_factory=pretrain_loop)


# the embedder's loop settings that next-token pretraining never reads: no flag, so --help lists only what acts
PRETRAIN_UNUSED = ("temperature", "gen_weight", "mask_false_negatives", "max_segment_tokens", "padding_side",
                   "use_negatives")


PROG = "python -m training.pretrain"


def parse_args(argv: Sequence[str] | None = None) -> PretrainSettings:
    settings, _ = parse_settings(PretrainSettings, argv, prog=PROG, description=__doc__,
                                 unused=PRETRAIN_UNUSED)
    if not settings.out:
        usage_error(PROG, "--out is required")
    if settings.loop.collator.length_chunks < 1:
        usage_error(PROG, f"--length-chunks must be 1 or more, got {settings.loop.collator.length_chunks}")
    settings.backbone = {**BASE_BACKBONE, **settings.backbone}
    given = typed_flags(argv)
    if "--epochs" in given and "--max-steps" not in given:  # the default step budget must not silently win
        settings.loop.max_steps = None
    return settings


# --- batches and loss ------------------------------------------------------------------------------------------


class PretrainCollator:
    """prompt(image, question) + answer + terminal, labels on the answer and the terminal token only."""

    def __init__(self, encoder, max_response_tokens: int = 48, padding_side: str = "right", length_chunks: int = 4):
        self.encoder = encoder
        self.max_response_tokens = max_response_tokens
        self.padding_side = padding_side
        self.length_chunks = length_chunks  # sub-batches of similar length (`Encoder.collate_by_length`)

    def encode(self, row: dict):
        from msolomon.inputs import Query

        enc = self.encoder
        answer = enc.tokenizer.encode(" ".join(row["response"].split()), add_special_tokens=False)
        tail = answer[: self.max_response_tokens] + [enc.terminal_id]
        prompt = enc.encode_prompt(Query(text=row["prompt"], image=row.get("image")), reserve=len(tail))
        return prompt.extended(tail, labels=tail)

    def __call__(self, rows: Sequence[dict]) -> dict:
        return self.encoder.collate_by_length([self.encode(r) for r in rows], self.padding_side, self.length_chunks)


def pretrain_loss(model, batch: dict, loop) -> tuple[Any, dict]:
    """Next-token cross-entropy on the answers (logits only where labels are) and its token accuracy (figures
    stay on the device: `MSolomonForTraining`'s loss function)."""
    import torch

    from msolomon.backbone import unwrap

    hidden = model.forward_hidden(batch)
    labels = batch["labels"].to(hidden.device)
    shifted = labels[:, 1:]
    where = shifted != -100
    logits = unwrap(model.model).lm_head(hidden[:, :-1][where]).float()
    target = shifted[where]
    loss = torch.nn.functional.cross_entropy(logits, target)
    acc = (logits.argmax(-1) == target).float().mean()
    return loss, {"loss": loss.detach(), "gen_loss": loss.detach(), "token_acc": acc}


# --- generative evaluation -------------------------------------------------------------------------------------


def generate_answers(model, rows: Sequence[dict], with_image: bool = True, batch_size: int = 16,
                     max_new_tokens: int = 48) -> list[str]:
    """Greedy answers of the base (stock `generate` with the KV cache), with or without each row's image."""
    import torch

    from msolomon.backbone import unwrap
    from msolomon.inputs import Query

    enc = model.encoder
    core = unwrap(model.model)
    out: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            items = [enc.encode_prompt(Query(text=r["prompt"], image=r["image"] if with_image else None),
                                       reserve=max_new_tokens + 1) for r in chunk]
            batch = enc.collate(items, "left")
            kwargs = {k: batch[k].to(model.device) for k in ("input_ids", "attention_mask", "mm_token_type_ids")}
            if batch["pixel_values"] is not None:
                kwargs["pixel_values"] = batch["pixel_values"].to(model.device, model.dtype)
                kwargs["image_grid_thw"] = batch["image_grid_thw"].to(model.device)
            ids = core.generate(**kwargs, max_new_tokens=max_new_tokens, do_sample=False,
                                eos_token_id=model.terminal_id, pad_token_id=model.pad_id)
            new = ids[:, batch["input_ids"].shape[1]:]
            out += [model.tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
    return out


def evaluate_base(model, rows: Sequence[dict], max_new_tokens: int = 48) -> dict:
    """Held-out exact match per world and overall, with the image and without it (the text-only floor)."""
    from training.pretrain_data import exact_match, word_accuracy

    seen = generate_answers(model, rows, True, max_new_tokens=max_new_tokens)
    blind = generate_answers(model, rows, False, max_new_tokens=max_new_tokens)

    def scores(idx: Sequence[int]) -> dict:
        refs = [rows[i]["response"] for i in idx]
        s, b = [seen[i] for i in idx], [blind[i] for i in idx]
        return {"n": len(idx), "exact_match": round(exact_match(s, refs), 1),
                "text_only_floor": round(exact_match(b, refs), 1), "word_accuracy": round(word_accuracy(s, refs), 1),
                "word_accuracy_text_only": round(word_accuracy(b, refs), 1)}

    by = {name: scores([i for i, r in enumerate(rows) if r["dataset"] == name])
          for name in sorted({r["dataset"] for r in rows})}
    overall = scores(range(len(rows)))
    examples = [{"dataset": r["dataset"], "prompt": r["prompt"], "reference": r["response"], "with_image": s,
                 "without_image": b} for r, s, b in list(zip(rows, seen, blind))[:: max(1, len(rows) // 30)]]
    return {"overall": overall, "datasets": by, "examples": examples}


# --- stages ----------------------------------------------------------------------------------------------------


def stage_benchmark(s: PretrainSettings, out: Path) -> Path:
    from msolomon.data.minimmeb import generate, is_minimmeb

    if s.benchmark:
        return Path(s.benchmark)
    path = out / "benchmark"
    if not is_minimmeb(path):
        logger.info("generating MiniMMEB (%s, seed %d) to exclude its images", s.benchmark_scale, s.benchmark_seed)
        generate(path, seed=s.benchmark_seed, scale=s.benchmark_scale, progress=False)
    return path


def stage_data(s: PretrainSettings, out: Path, benchmark: Path) -> Path:
    from training.pretrain_data import PretrainDataSettings, generate, is_pretrain_data

    if s.data:
        return Path(s.data)
    path = out / "data"
    if not is_pretrain_data(path):
        generate(path, PretrainDataSettings(
            n_per_dataset=s.n_per_dataset, n_heldout_per_dataset=s.n_heldout, seed=s.loop.seed,
            benchmark_seed=s.benchmark_seed, benchmark_scale=s.benchmark_scale,
            datasets=tuple(s.datasets) if s.datasets else None), benchmark, progress=sys.stderr.isatty())
    return path


def build_base(s: PretrainSettings, rows: Sequence[dict], resume: Path | None):
    import torch

    from msolomon.backbone import default_corpus
    from msolomon.model import MSolomon

    if resume is not None:
        return MSolomon.from_pretrained(resume, device="cpu" if not torch.cuda.is_available() else None,
                                        dtype=torch.float32)
    corpus = default_corpus() + sorted({t for r in rows for t in (r["prompt"], r["response"])})
    model = MSolomon.tiny(seed=s.loop.seed, corpus=corpus, **s.backbone)
    if torch.cuda.is_available():
        model.model.to("cuda")
    return model


def trained_steps(out: Path) -> int:
    """The optimizer steps behind OUT's last checkpoint (0 without one)."""
    from training.trainer import CHECKPOINT, STATE, recover_checkpoint

    recover_checkpoint(out)
    state = read_json(out / CHECKPOINT / STATE, None)
    return int(state.get("step", 0)) if isinstance(state, dict) else 0


def final_steps(out: Path) -> int | None:
    """The steps OUT's final model was trained for (None without one). Folders from before this was recorded fall
    back to their checkpoint's step, which a finished run saves at its last step."""
    from training.trainer import CHECKPOINT, STATE

    if not (out / FINAL / "config.json").is_file():
        return None
    recorded = read_json(out / FINAL_STEPS, None)
    if isinstance(recorded, dict) and isinstance(recorded.get("steps"), int):
        return recorded["steps"]
    return trained_steps(out) if (out / CHECKPOINT / STATE).is_file() else None


def asks_more_steps(s: PretrainSettings, out: Path, extend: bool) -> bool:
    """Whether this run continues a finished folder: `--max-steps` given (`extend`) and larger than the steps of
    its final model. Pretraining then resumes from the last checkpoint; the schedule is rebuilt for the new total,
    so the learning rate restarts at its value for that step and decays to 0 again. Without `--max-steps` a
    rerun reuses the final model, whatever the default step count."""
    if not extend or s.loop.max_steps is None or not (out / FINAL / "config.json").is_file():
        return False
    done = final_steps(out)
    if done is None:
        raise ValueError(f"{out} has a final model but no checkpoint or record of its steps, so it cannot be "
                         "continued; pretrain into a new --out instead")
    return s.loop.max_steps > done


def typed_flags(argv: Sequence[str] | None) -> list[str]:
    """The flags typed on the command line (`--name` of `--name value` and `--name=value`)."""
    return [a.split("=", 1)[0] for a in (sys.argv[1:] if argv is None else argv) if a.startswith("--")]


def max_steps_given(argv: Sequence[str] | None) -> bool:
    """Whether `--max-steps` was typed (a larger one continues a finished run folder)."""
    return "--max-steps" in typed_flags(argv)


def keep_earlier(out: Path, steps: int) -> None:
    """Before a continuation replaces them, copy the final model and its report to `final-STEPS/` and
    `report-STEPS.json`, so the shorter base stays at hand."""
    import shutil

    from msolomon.files import atomic_write_bytes, replace_dir

    kept = out / f"{FINAL}-{steps}"
    if not kept.exists():
        replace_dir(kept, lambda staging: shutil.copytree(out / FINAL, staging, dirs_exist_ok=True))
    report = out / "report.json"
    if report.is_file() and not (out / f"report-{steps}.json").exists():
        atomic_write_bytes(out / f"report-{steps}.json", report.read_bytes())


def record_command(out: Path, command: str, end: int | None, prior: int | None, prior_command: str | None
                   ) -> list[dict]:
    """Append this invocation to OUT/commands.jsonl when it trained (its steps: from where the last recorded one
    ended, or from the final model it continued, to `end`), and return every recorded one: the base's card lists
    them, since a continued base is made by more than one command. A folder trained before the history was kept
    gets its earlier command (from its report) as the first line."""
    path = out / COMMANDS
    history = [r for r in read_jsonl(path) if isinstance(r, dict) and "command" in r]
    start = history[-1]["steps"][1] if history and history[-1].get("steps") else (prior or 0)
    if end is None or end <= start:
        return history
    new = []
    if not history and prior:
        new.append({"command": prior_command or "(not recorded)", "steps": [0, prior]})
    new.append({"command": command, "steps": [start, end]})
    append_jsonl(path, new)
    return history + new


def stage_train(s: PretrainSettings, out: Path, data: Path, extend: bool = False):
    from training.pretrain_data import load_rows
    from training.trainer import CHECKPOINT, STATE, Trainer

    final = out / FINAL
    if (final / "config.json").is_file() and not asks_more_steps(s, out, extend):
        from msolomon.model import MSolomon

        return MSolomon.from_pretrained(final)
    at = trained_steps(out)
    if s.loop.max_steps is not None and at > s.loop.max_steps:
        raise ValueError(f"{out}'s checkpoint is at step {at}, past --max-steps {s.loop.max_steps}: rerun with "
                         f"--max-steps {at} or more")
    if (final / "config.json").is_file():
        done = final_steps(out)
        logger.info("continuing %s from its %d-step final model (checkpoint at step %d) to %d steps; the linear "
                    "schedule is rebuilt for %d", out, done, at, s.loop.max_steps, s.loop.max_steps)
        keep_earlier(out, done)
    rows = load_rows(data, "train")
    resume = out / CHECKPOINT if (out / CHECKPOINT / STATE).is_file() else None
    model = build_base(s, rows, resume)
    loop = s.loop
    collator = PretrainCollator(model.encoder, s.max_response_tokens, length_chunks=loop.collator.length_chunks)
    trainer = Trainer(model, rows, out, loop, extra_state={"pretrain": flat_settings(s)}, collator=collator,
                      loss_fn=pretrain_loss)
    logger.info("pretraining on %d examples for %d steps", len(rows), trainer.steps)
    t0 = time.perf_counter()
    trainer.train()
    atomic_write_json(out / FINAL_STEPS, {"steps": trainer.steps})
    with open(out / "train_time_s.txt", "a") as fh:
        fh.write(f"{time.perf_counter() - t0:.1f}\n")
    return model


def shipped_matches(model, dest: Path) -> bool:
    """Whether `dest` already holds `model`'s weights in float16 (a rerun then leaves the shipped files alone)."""
    import torch

    from msolomon.model import MSolomon

    if not (Path(dest) / "model.safetensors").is_file():
        return False
    try:
        shipped = MSolomon.from_pretrained(dest, device="cpu", dtype=torch.float32).model.state_dict()
    except (ValueError, OSError):
        return False
    state = model.model.state_dict()
    return set(shipped) == set(state) and all(
        torch.equal(shipped[k], state[k].detach().cpu().to(torch.float16).to(torch.float32)) for k in state)


def half_precision_copy(model, dest: Path) -> None:
    """Save `model` with its weights in float16 (loaded back in float32 for CPU compute)."""
    import torch

    if shipped_matches(model, dest):
        logger.info("%s already holds these weights in float16", dest)
        return
    model.model.to(torch.float16)
    try:
        model.save_pretrained(dest)
    finally:
        model.model.to(torch.float32)


def write_report(result: dict, out: Path) -> None:
    from msolomon.report import atomic_write_text

    atomic_write_text(out / "report.json", json.dumps(result, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out / "report.md", report_markdown(result))
    plot_curves(out / "train_log.jsonl", out / "report.png")


def report_markdown(result: dict) -> str:
    ev = result["eval"]
    lines = ["# Tiny base MLLM: held-out generative accuracy", "",
             f"Exact match of the whole answer on {ev['overall']['n']} fresh held-out questions "
             "(pretraining-style, images never seen in training), greedy decoding. The text-only floor asks the "
             "same questions without the image.", "",
             "Word accuracy gives partial credit: the share of the reference's words the answer has in the same "
             "place.", "",
             "| world | n | exact match | text-only floor | gain | word accuracy | text-only |",
             "|---|---|---|---|---|---|---|"]

    def line(label: str, d: dict) -> str:
        return (f"| {label} | {d['n']} | {d['exact_match']:.1f} | {d['text_only_floor']:.1f} | "
                f"{d['exact_match'] - d['text_only_floor']:+.1f} | {d.get('word_accuracy', float('nan')):.1f} | "
                f"{d.get('word_accuracy_text_only', float('nan')):.1f} |")

    lines += [line(name, d) for name, d in ev["datasets"].items()]
    o = ev["overall"]
    lines.append(line("**overall**", o))
    if "half_precision" in result:
        h = result["half_precision"]["overall"]
        lines += ["", f"Stored in float16: exact match {h['exact_match']:.1f} (float32: {o['exact_match']:.1f})."]
    lines += ["", "Examples (reference / with the image / without it):", ""]
    for ex in ev["examples"][:12]:
        lines.append(f"- **{ex['dataset']}** {ex['prompt']}  \n  ref: {ex['reference']}  \n"
                     f"  seen: {ex['with_image']}  \n  blind: {ex['without_image']}")
    return "\n".join(lines) + "\n"


def plot_curves(log: Path, dest: Path, others: Sequence[tuple[str, Path]] = (), label: str | None = None) -> None:
    """Training loss and token accuracy against step; `others` (label, train_log.jsonl) are drawn beside, so bases
    can be compared on one figure (`bench/pretrain_curves.py`)."""
    runs = [(label, Path(log)), *[(name, Path(path)) for name, path in others]]
    runs = [(name, rows) for name, path in runs if (rows := read_jsonl(path))]
    if not runs:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, rows in runs:
        steps = [r["step"] for r in rows]
        ax[0].plot(steps, [r["loss"] for r in rows], label=name, lw=1)
        ax[1].plot(steps, [r.get("token_acc", float("nan")) for r in rows], label=name, lw=1)
    ax[0].set(xlabel="step", ylabel="next-token loss (answer)", yscale="log", title="pretraining loss")
    ax[1].set(xlabel="step", ylabel="token accuracy (train batch)", title="answer token accuracy")
    if any(name for name, _ in runs):
        ax[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(dest, "wb") as fh:
        fig.savefig(fh, dpi=110, format="png")
    plt.close(fig)


def run(s: PretrainSettings, extend: bool = False) -> dict:
    from msolomon.files import accumulate_timings
    from msolomon.model import files_signature
    from training.pretrain_data import load_rows

    if s.threads:
        process_environment(s.threads)
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    benchmark = stage_benchmark(s, out)
    data = stage_data(s, out, benchmark)
    timings["data_s"] = time.perf_counter() - t
    if s.data_only:
        logger.info("pretraining data in %s (--data-only: no training)", data)
        return {"data_only": str(data), "data": read_json(data / "pretrain.json")}
    t = time.perf_counter()
    prior = final_steps(out)
    prior_command = (read_json(out / "report.json", None) or {}).get("command")
    model = stage_train(s, out, data, extend)
    timings["train_s"] = time.perf_counter() - t
    commands = record_command(out, command_line("python -m training.pretrain", s), final_steps(out), prior,
                              prior_command)
    signature = files_signature(out / FINAL)
    earlier = read_json(out / "report.json", None)
    if earlier and earlier.get("final_signature") == signature and (not s.ship or "half_precision" in earlier):
        result = earlier  # this final model was evaluated already: a rerun (e.g. to re-ship) does not repeat it
        if s.ship:
            half_precision_copy(model, Path(s.ship))
    else:
        t = time.perf_counter()
        heldout = load_rows(data, "heldout")
        result = {"settings": flat_settings(s), "data": read_json(data / "pretrain.json"),
                  "eval": evaluate_base(model, heldout, s.max_new_tokens), "final_signature": signature}
        if s.ship:
            from msolomon.model import MSolomon

            half_precision_copy(model, Path(s.ship))
            shipped = MSolomon.from_pretrained(s.ship, device="cpu")
            result["half_precision"] = evaluate_base(shipped, heldout, s.max_new_tokens)
        timings["eval_s"] = time.perf_counter() - t
    result.setdefault("command", command_line("python -m training.pretrain", s))
    if commands:
        result["commands"] = commands
    result["timings_s"] = accumulate_timings(out / "timings.json", timings)
    write_report(result, out)
    if s.ship:
        write_base_card(result, Path(s.ship), out)
    return result


def command_lines(result: dict) -> list[str]:
    """The card's commands: one, or every invocation that trained (a continued base), with its steps."""
    runs = result.get("commands") or []
    if len(runs) < 2:
        return ["```bash", result["command"], "```"]
    lines = ["Pretrained in steps, one command after the other (each line: the optimizer steps it ran). A larger "
             "`--max-steps` on a finished run folder continues it from its last checkpoint, the linear schedule "
             "rebuilt for the new total:", "", "```bash"]
    for r in runs:
        steps = f"   # steps {r['steps'][0]}-{r['steps'][1]}" if r.get("steps") else ""
        lines.append(f"{r['command']}{steps}")
    if result["command"] != runs[-1]["command"]:
        lines.append(f"{result['command']}   # no training: the held-out evaluation and this copy")
    return lines + ["```"]


def write_base_card(result: dict, dest: Path, out: Path) -> None:
    """The base's model card: the command, the data, the figures."""
    from msolomon.report import atomic_write_text

    s = result["settings"]
    d = result["data"]
    card = ["# M-Solomon tiny base MLLM", "",
            "A small Qwen2-VL (`Qwen2VLForConditionalGeneration`, stock transformers) pretrained generatively, the "
            "offline analogue of Qwen2-VL-2B-Instruct: NoAug, AlwaysAug and M-Solomon fine-tune from it.", "",
            f"Backbone: `{json.dumps(s['backbone'])}`; weights stored in float16.", "",
            "## Command", "", *command_lines(result), "",
            "## Data", "",
            f"{d['n_train']} image–question–answer examples from MiniMMEB's world builders (digits, scenes and "
            "shapes, charts, forms and signs, garments, photos) drawn with pretraining's own random streams; "
            f"{d['n_heldout']} held-out examples. Handwritten digits come only from the train half of scikit-learn's "
            f"digits under benchmark seed {s['benchmark_seed']}. Every image was hashed by its pixels against all "
            f"{d['benchmark_images']} MiniMMEB images (seed {s['benchmark_seed']}, scale {s['benchmark_scale']}) and "
            "collisions were dropped (`tests/test_pretrain.py` checks disjointness).", "",
            "## Held-out generative accuracy", "", report_markdown(result).split("\n", 2)[2],
            "## Time", "", "Stage times in seconds, summed over every invocation on the run folder (a resumed run adds "
            f"up): `{json.dumps({k: round(v, 1) for k, v in result['timings_s'].items()})}`.", ""]
    atomic_write_text(dest / "README.md", "\n".join(card))
    atomic_write_text(dest / "pretrain_report.json", json.dumps(result, indent=2, sort_keys=True) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = parse_args(argv)
    process_environment(settings.threads)
    try:
        result = run(settings, extend=max_steps_given(argv))
    except (ValueError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 2
    if result.get("data_only"):
        d = result["data"]
        sys.stdout.write(f"pretraining data: {result['data_only']} ({d['n_train']} train, {d['n_heldout']} held-out "
                         f"examples; none of the {d['benchmark_images']} benchmark images)\n")
        return 0
    sys.stdout.write(report_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
