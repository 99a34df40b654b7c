"""`python -m training.train`: train NoAug, AlwaysAug or M-Solomon (adaptive) with L_rep + λ·L_gen.

    python -m training.train --data DIR --out RUN --labeling noaug|alwaysaug|adaptive|query \\
        [--augmentations SYNTH.jsonl] [--split SPLIT.json] [--labels LABELS.jsonl] [--init base|tiny|PATH] \\
        [--config FILE.yaml|json] [--threads N] ...

`--data` is a MiniMMEB folder or an MMEB-train folder (`--image-root` for its images). `--init base` (the
default) fine-tunes the shipped pretrained tiny base MLLM (assets/base, made by `training.pretrain`), as the paper
fine-tunes Qwen2-VL; `--init tiny` trains the small Qwen2-VL from scratch for comparison; a checkpoint path (e.g.
Qwen2-VL-2B-Instruct) trains it in full, with `--lora`, or with `--qlora` (4-bit base). Multi-process:
`torchrun --nproc_per_node N -m training.train ...` or `accelerate launch -m training.train ...` (stock
DistributedDataParallel). Settings come from the command line or one YAML/JSON file (command-line values win;
`--help` lists each with its default). A rerun with the same --out resumes from the last checkpoint.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from msolomon.settings import option, parse_settings, process_environment, threads_option, usage_error
from training.collator import LABELINGS, augmented_twins_problem, embedded_twins_problem
from training.rehearsal import RehearsalSettings
from training.trainer import LoopSettings

logger = logging.getLogger("training.train")

DEFAULT_BASE_DIR = Path(__file__).resolve().parents[1] / "assets" / "base"


@dataclass
class ModelSettings:
    """The model that is trained: its starting point and, for a checkpoint, full, LoRA or QLoRA training."""

    init: str = option("base", "the starting point: base (the shipped pretrained base, assets/base), tiny (the "
                       "small Qwen2-VL from scratch) or a checkpoint path", metavar="base|tiny|PATH")
    tiny: dict[str, Any] = option({}, "TinySettings overrides for --init tiny")
    model_seed: int | None = option(None, "seed of the weights of --init tiny (default: --seed)")
    lora: bool = option(False, "train a LoRA adapter on a checkpoint")
    qlora: bool = option(False, "train a LoRA adapter on a 4-bit checkpoint (needs bitsandbytes and CUDA)")
    lora_r: int = option(16, "LoRA rank")
    lora_alpha: int = option(64, "LoRA alpha")
    lora_dropout: float = option(0.05, "LoRA dropout")
    lora_targets: list[str] = option(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                     "modules LoRA adapts")
    device: str | None = option(None, "torch device (default: cuda:LOCAL_RANK when available, else cpu)")


@dataclass
class TrainSettings:
    """Every setting of a training run: the data here, the model and the loop (`training.trainer`) nested, all on
    one flat command line and in one config file."""

    data: str = option("", "a MiniMMEB folder or an MMEB-train folder (required)", metavar="DIR")
    out: str = option("", "the run folder (a rerun resumes from its last checkpoint) (required)", metavar="RUN")
    labeling: str = option("noaug", "which segment each example is trained on", choices=LABELINGS)
    split: str | None = option(None, "the pilot's split file (training.pilot; --labeling adaptive)", metavar="FILE")
    labels: str | None = option(None, "per-query labels (training.query_labels' labels.jsonl; --labeling query)",
                                metavar="FILE")
    augmented_twins: float = option(0.0, "--labeling adaptive or query: the share of /embed rows also trained as an "
                                    "augmented twin (query + teacher augmentation, L_rep only), so the augmented "
                                    "path's embedding learns from every dataset as AlwaysAug's does (1: all; costs "
                                    "steps)")
    embedded_twins: float = option(0.0, "the share of /augment rows also trained as an /embed twin (L_rep only), so "
                                   "the /embed path's embedding learns from them too (costs steps)")
    holdout: str | None = option(None, "K/N: leave out fold K of N of the training rows (a stable draw by row id): "
                                 "the cross-fitting of training.query_labels", metavar="K/N")
    augmentations: str | None = option(None, "teacher augmentations (training.synthesize's JSONL)", metavar="FILE")
    image_root: str | None = option(None, "folder the image paths resolve against (default: the data folder)")
    datasets: list[str] | None = option(None, "datasets to train on (default: all)")
    limit: int | None = option(None, "rows per dataset (default: all)")
    model: ModelSettings = field(default_factory=ModelSettings)
    rehearsal: RehearsalSettings = field(default_factory=RehearsalSettings)
    loop: LoopSettings = field(default_factory=LoopSettings)


PROG = "python -m training.train"


@dataclass
class TrainCommandSettings:
    """`python -m training.train`: the run's settings and the process's threads (a process setting, not a training
    setting: not recorded in the run)."""

    threads: int | None = threads_option()
    settings: TrainSettings = field(default_factory=TrainSettings)


def parse_args(argv: Sequence[str] | None = None) -> TrainSettings:
    return parse_command_line(argv)[0]


def parse_command_line(argv: Sequence[str] | None = None) -> tuple[TrainSettings, int | None]:
    """The settings and the `--threads` value."""
    command, _ = parse_settings(TrainCommandSettings, argv, prog=PROG, description=__doc__)
    problem = settings_problem(command.settings)
    if problem:
        usage_error(PROG, problem)
    return command.settings, command.threads


def settings_problem(config: TrainSettings) -> str | None:
    """What is wrong with the settings of a run, or None (checked before anything is loaded)."""
    if not config.data or not config.out:
        return "--data and --out are required (on the command line or in --config)"
    if not Path(config.data).is_dir():
        return f"--data {config.data}: no such folder"
    if config.labeling != "noaug" and not config.augmentations:
        return f"--labeling {config.labeling} needs --augmentations (the output of training.synthesize)"
    if config.labeling == "adaptive" and not config.split:
        return "--labeling adaptive needs --split (the output of training.pilot)"
    if config.labeling == "query" and not config.labels:
        return "--labeling query needs --labels (the labels.jsonl of training.query_labels)"
    if config.loop.collator.length_chunks < 1:
        return f"--length-chunks must be 1 or more, got {config.loop.collator.length_chunks}"
    from training.rehearsal import rehearsal_problem

    return (augmented_twins_problem(config.augmented_twins, config.labeling)
            or embedded_twins_problem(config.embedded_twins, config.labeling) or holdout_problem(config.holdout)
            or rehearsal_problem(config.rehearsal))


def parse_holdout(spec: str | None) -> tuple[int, int] | None:
    """`K/N` -> (K, N); None stays None. Raises ValueError with the rule."""
    if spec is None:
        return None
    try:
        k, n = (int(x) for x in str(spec).split("/"))
    except ValueError:
        raise ValueError(f"--holdout {spec!r}: expected K/N, fold K of N folds (e.g. 0/2)") from None
    if n < 2 or not 0 <= k < n:
        raise ValueError(f"--holdout {spec!r}: N must be at least 2 and K in 0 .. N-1")
    return k, n


def holdout_problem(spec: str | None) -> str | None:
    try:
        parse_holdout(spec)
    except ValueError as err:
        return str(err)
    return None


def load_rows(config: TrainSettings):
    """Training rows from a MiniMMEB folder or an MMEB-train folder (less the held-out fold, with --holdout)."""
    from msolomon.data.minimmeb import is_minimmeb
    from msolomon.data.mmeb import list_train_datasets, read_train_dataset

    data = Path(config.data)
    if is_minimmeb(data):
        folder, image_root = data / "train", Path(config.image_root or data)
    else:
        folder, image_root = data, Path(config.image_root or data)
    names = config.datasets or list_train_datasets(folder)
    missing = sorted(set(names) - set(list_train_datasets(folder)))
    if missing:
        raise ValueError(f"datasets not found under {folder}: {missing}")
    rows = []
    for name in names:
        rows.extend(read_train_dataset(folder, name, image_root, limit=config.limit))
    holdout = parse_holdout(config.holdout)
    if holdout is not None:
        from training.collator import fold_of

        k, n = holdout
        rows = [r for r in rows if fold_of(r.id, n) != k]
    return rows


def init_distributed() -> None:
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def build_model(config: TrainSettings, corpus: Sequence[str], resume_dir: Path | None):
    """The model to train: a fresh tiny one, a checkpoint (full, LoRA or QLoRA), or the run's own last
    checkpoint when resuming."""
    import torch

    from msolomon.model import MSolomon

    m = config.model
    device = m.device or ("cuda:" + os.environ.get("LOCAL_RANK", "0") if torch.cuda.is_available() else "cpu")
    adapter_resume = resume_dir is not None and (resume_dir / "adapter_config.json").is_file()
    if resume_dir is not None and not adapter_resume:  # full fine-tuning keeps fp32 weights (bf16 via autocast)
        return MSolomon.from_pretrained(resume_dir, device=device, dtype=torch.float32)
    if m.init == "tiny":
        if m.lora or m.qlora:
            raise ValueError("--init tiny trains from scratch in full; LoRA/QLoRA need a checkpoint to adapt")
        seed = config.loop.seed if m.model_seed is None else m.model_seed
        model = MSolomon.tiny(seed=seed, corpus=list(corpus), **m.tiny)
        model.model.to(device)
        return model
    # a frozen LoRA base may sit in bf16 on GPU; weights that are trained in full stay fp32 (bf16 via autocast)
    adapted = m.lora or m.qlora
    model = MSolomon.from_pretrained(resolve_init(m.init), quantization="4bit" if m.qlora else None, device=device,
                                     dtype=torch.bfloat16 if adapted and torch.cuda.is_available() else torch.float32)
    if not adapted:
        return model
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    base = model.model
    if m.qlora:
        base = prepare_model_for_kbit_training(base, gradient_checkpointing_kwargs={"use_reentrant": False})
    if adapter_resume:
        peft_model = PeftModel.from_pretrained(base, str(resume_dir), is_trainable=True)
    else:
        lora = LoraConfig(r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout,
                          target_modules=m.lora_targets,
                          trainable_token_indices={"embed_tokens": [model.augment_id, model.embed_id]})
        peft_model = get_peft_model(base, lora)
    return MSolomon(peft_model, model.processor, model.settings)


def resolve_init(init: str) -> str:
    """`base` is the shipped pretrained base; anything else is a checkpoint path (or hub id in the cache)."""
    if init != "base":
        return init
    if not (DEFAULT_BASE_DIR / "config.json").is_file():
        raise ValueError(f"the shipped base model is missing from {DEFAULT_BASE_DIR}: make it with "
                         "`python -m training.pretrain --out runs/pretrain --ship assets/base`, or train from scratch "
                         "with --init tiny")
    return str(DEFAULT_BASE_DIR)


def run(config: TrainSettings) -> Path:
    """Train and return the folder of the final model."""
    from msolomon import prompts
    from training.collator import assign_labels, load_query_labels, load_split
    from training.trainer import CHECKPOINT, Trainer, recover_checkpoint

    init_distributed()
    out = Path(config.out)
    rows = load_rows(config)
    augmentations = {}
    if config.augmentations:
        from training.synthesize import load_augmentations

        augmentations = load_augmentations(config.augmentations)
    split = load_split(config.split) if config.labeling == "adaptive" else None
    labels = load_query_labels(config.labels) if config.labeling == "query" else None
    examples = assign_labels(rows, config.labeling, augmentations, split, config.augmented_twins,
                             config.embedded_twins, labels)
    if not examples:
        raise ValueError("no training examples after label assignment")
    corpus = [t for r in rows for t in (r.query.text, r.positive.text) if t] + list(augmentations.values())
    corpus += list(prompts.MMEB_INSTRUCTIONS.values())
    from training.rehearsal import check_run_matches, load_replay_rows

    check_run_matches(out, config.rehearsal)
    replay_rows = load_replay_rows(config.rehearsal.replay) if config.rehearsal.replay else None
    recover_checkpoint(out)
    resume = out / CHECKPOINT if (out / CHECKPOINT / "trainer_state.json").is_file() else None
    model = build_model(config, corpus, resume)
    twins = [ex for ex in examples if not ex.learn_segment]
    n_aug_twins = sum(ex.decision == prompts.AUGMENT for ex in twins)
    n_aug = sum(ex.decision == prompts.AUGMENT for ex in examples) - n_aug_twins
    logger.info("%d examples (%d /augment, %d /embed; twins: %d augmented, %d embedded) from %d datasets",
                len(examples), n_aug, len(examples) - n_aug - len(twins), n_aug_twins, len(twins) - n_aug_twins,
                len({ex.row.dataset for ex in examples}))
    collator, loss_fn = None, None
    if replay_rows is not None:
        collator, loss_fn = rehearsal_parts(model, config, replay_rows)
    trainer = Trainer(model, examples, out, config.loop, extra_state={"config": asdict(config)}, collator=collator,
                      loss_fn=loss_fn)
    return trainer.train()


def rehearsal_parts(model, config: TrainSettings, replay_rows: list[dict]):
    """The collator and loss of a run that replays pretraining examples (`training.rehearsal`)."""
    from training.collator import Collator
    from training.pretrain import PretrainCollator
    from training.rehearsal import RehearsalCollator, rehearsal_loss

    r = config.rehearsal
    logger.info("rehearsal: %d pretraining examples, %d replayed per micro-batch at weight %g", len(replay_rows),
                r.replay_batch, r.replay_weight)
    collator = RehearsalCollator(Collator(model.encoder, config.loop.collator),
                                 PretrainCollator(model.encoder, padding_side=config.loop.collator.padding_side,
                                                  length_chunks=config.loop.collator.length_chunks),
                                 replay_rows, r.replay_batch, seed=config.loop.seed)
    return collator, rehearsal_loss(r.replay_weight)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config, threads = parse_command_line(argv)
    process_environment(threads)
    try:
        final = run(config)
    except ValueError as err:
        logger.error("%s", err)
        return 2
    logger.info("final model: %s", final)
    return 0


if __name__ == "__main__":
    sys.exit(main())
