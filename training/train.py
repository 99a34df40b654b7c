"""`python -m training.train`: train NoAug, AlwaysAug or M-Solomon (adaptive) with L_rep + λ·L_gen.

    python -m training.train --data DIR --out RUN --labeling noaug|alwaysaug|adaptive \\
        [--augmentations SYNTH.jsonl] [--split SPLIT.json] [--init base|tiny|PATH] [--config FILE.yaml|json] \\
        [--threads N] ...

`--data` is a MiniMMEB folder or an MMEB-train folder (`--image-root` for its images). `--init base` (the
default) fine-tunes the shipped pretrained tiny base MLLM (assets/base, made by `training.pretrain`), as the paper
fine-tunes Qwen2-VL; `--init tiny` trains the small Qwen2-VL from scratch for comparison; a checkpoint path (e.g.
Qwen2-VL-2B-Instruct) trains it in full, with `--lora`, or with `--qlora` (4-bit base). Multi-process: `torchrun --nproc_per_node N -m training.train ...` or
`accelerate launch -m training.train ...`. Settings come from the command line or one YAML/JSON file
(command-line values win). A rerun with the same --out resumes from the last checkpoint.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger("training.train")

DEFAULT_BASE_DIR = Path(__file__).resolve().parents[1] / "assets" / "base"


@dataclass
class TrainConfig:
    """Every setting of a training run (flat, so it maps 1:1 to the command line and to a config file)."""

    data: str = ""
    out: str = ""
    labeling: str = "noaug"
    split: str | None = None
    augmentations: str | None = None
    image_root: str | None = None
    datasets: list[str] | None = None
    limit: int | None = None  # rows per dataset
    init: str = "base"  # "base" (assets/base), "tiny" (from scratch) or a checkpoint path
    tiny: dict[str, Any] = field(default_factory=dict)  # TinyConfig overrides
    model_seed: int = 0
    lora: bool = False
    qlora: bool = False
    lora_r: int = 16
    lora_alpha: int = 64
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                             "gate_proj", "up_proj", "down_proj"])
    batch_size: int = 32
    grad_accum: int = 1
    max_steps: int | None = None
    epochs: float = 1.0
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    max_grad_norm: float = 1.0
    temperature: float = 0.02
    gen_weight: float = 1.0
    max_segment_tokens: int = 48
    use_negatives: bool = True
    mask_false_negatives: bool = True
    seed: int = 0
    save_every: int = 200
    log_every: int = 10
    bf16: bool | None = None
    device: str | None = None


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    return parse_command_line(argv)[0]


def parse_command_line(argv: Sequence[str] | None = None) -> tuple[TrainConfig, int | None]:
    """The settings and the `--threads` value (a process setting, not a training setting: not in TrainConfig)."""
    from msolomon.runtime import add_threads_argument

    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML or JSON file with any of the settings below")
    add_threads_argument(parser)
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool) or f.name == "bf16":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        elif isinstance(default, list) or f.name == "datasets":
            parser.add_argument(flag, dest=f.name, default=None, help="comma-separated")
        elif isinstance(default, dict):
            parser.add_argument(flag, dest=f.name, default=None, help="JSON object")
        else:
            kind = {"limit": int, "max_steps": int}.get(f.name, type(default) if default is not None else str)
            parser.add_argument(flag, dest=f.name, type=kind, default=None)
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    if args.config:
        values.update(load_config_file(args.config, parser))
    for f in fields(TrainConfig):
        v = getattr(args, f.name)
        if v is None:
            continue
        if isinstance(getattr(defaults, f.name), list) or f.name == "datasets":
            v = [x.strip() for x in v.split(",") if x.strip()]
        elif isinstance(getattr(defaults, f.name), dict):
            try:
                v = json.loads(v)
            except json.JSONDecodeError as err:
                parser.error(f"--{f.name.replace('_', '-')} must be a JSON object: {err}")
        values[f.name] = v
    unknown = set(values) - {f.name for f in fields(TrainConfig)}
    if unknown:
        parser.error(f"unknown settings: {sorted(unknown)}")
    config = TrainConfig(**values)
    if not config.data or not config.out:
        parser.error("--data and --out are required (on the command line or in --config)")
    if not Path(config.data).is_dir():
        parser.error(f"--data {config.data}: no such folder")
    if config.labeling not in ("noaug", "alwaysaug", "adaptive"):
        parser.error(f"--labeling must be noaug, alwaysaug or adaptive, got {config.labeling!r}")
    if config.labeling != "noaug" and not config.augmentations:
        parser.error(f"--labeling {config.labeling} needs --augmentations (the output of training.synthesize)")
    if config.labeling == "adaptive" and not config.split:
        parser.error("--labeling adaptive needs --split (the output of training.pilot)")
    return config, args.threads


def load_config_file(path: str, parser: argparse.ArgumentParser) -> dict:
    file = Path(path)
    if not file.is_file():
        parser.error(f"--config {path}: no such file")
    text = file.read_text()
    try:
        if file.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:  # yaml and json raise different types
        parser.error(f"--config {path}: cannot parse ({err})")
    if not isinstance(data, dict):
        parser.error(f"--config {path}: must hold a mapping of settings")
    return data


def load_rows(config: TrainConfig):
    """Training rows from a MiniMMEB folder or an MMEB-train folder."""
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
    return rows


def init_distributed() -> None:
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def build_model(config: TrainConfig, corpus: Sequence[str], resume_dir: Path | None):
    """The model to train: a fresh tiny one, a checkpoint (full, LoRA or QLoRA), or the run's own last
    checkpoint when resuming."""
    import torch

    from msolomon.model import MSolomon

    device = config.device or ("cuda:" + os.environ.get("LOCAL_RANK", "0") if torch.cuda.is_available() else "cpu")
    adapter_resume = resume_dir is not None and (resume_dir / "adapter_config.json").is_file()
    if resume_dir is not None and not adapter_resume:  # full fine-tuning keeps fp32 weights (bf16 via autocast)
        return MSolomon.from_pretrained(resume_dir, device=device, dtype=torch.float32)
    if config.init == "tiny":
        if config.lora or config.qlora:
            raise ValueError("--init tiny trains from scratch in full; LoRA/QLoRA need a checkpoint to adapt")
        model = MSolomon.tiny(seed=config.model_seed, corpus=list(corpus), **config.tiny)
        model.model.to(device)
        return model
    # a frozen LoRA base may sit in bf16 on GPU; weights that are trained in full stay fp32 (bf16 via autocast)
    adapted = config.lora or config.qlora
    model = MSolomon.from_pretrained(resolve_init(config.init), quantization="4bit" if config.qlora else None, device=device,
                                     dtype=torch.bfloat16 if adapted and torch.cuda.is_available() else torch.float32)
    if not (config.lora or config.qlora):
        return model
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    base = model.model
    if config.qlora:
        base = prepare_model_for_kbit_training(base, gradient_checkpointing_kwargs={"use_reentrant": False})
    if adapter_resume:
        peft_model = PeftModel.from_pretrained(base, str(resume_dir), is_trainable=True)
    else:
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=config.lora_targets,
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


def run(config: TrainConfig) -> Path:
    """Train and return the folder of the final model."""
    from msolomon import prompts
    from training.collator import CollatorSettings, assign_labels, load_split
    from training.trainer import CHECKPOINT, LoopSettings, OptimSettings, Trainer, recover_checkpoint

    init_distributed()
    out = Path(config.out)
    rows = load_rows(config)
    augmentations = {}
    if config.augmentations:
        from training.synthesize import load_augmentations

        augmentations = load_augmentations(config.augmentations)
    split = load_split(config.split) if config.labeling == "adaptive" else None
    examples = assign_labels(rows, config.labeling, augmentations, split)
    if not examples:
        raise ValueError("no training examples after label assignment")
    corpus = [t for r in rows for t in (r.query.text, r.positive.text) if t] + list(augmentations.values())
    corpus += list(prompts.MMEB_INSTRUCTIONS.values())
    recover_checkpoint(out)
    resume = out / CHECKPOINT if (out / CHECKPOINT / "trainer_state.json").is_file() else None
    model = build_model(config, corpus, resume)
    loop = LoopSettings(
        batch_size=config.batch_size, grad_accum=config.grad_accum, max_steps=config.max_steps,
        epochs=config.epochs, seed=config.seed, temperature=config.temperature, gen_weight=config.gen_weight,
        save_every=config.save_every, log_every=config.log_every, bf16=config.bf16,
        mask_false_negatives=config.mask_false_negatives,
        collator=CollatorSettings(max_segment_tokens=config.max_segment_tokens, use_negatives=config.use_negatives),
        optim=OptimSettings(lr=config.lr, weight_decay=config.weight_decay, warmup_steps=config.warmup_steps,
                            max_grad_norm=config.max_grad_norm),
    )
    n_aug = sum(ex.decision == prompts.AUGMENT for ex in examples)
    logger.info("%d examples (%d /augment, %d /embed) from %d datasets", len(examples), n_aug,
                len(examples) - n_aug, len({ex.row.dataset for ex in examples}))
    trainer = Trainer(model, examples, out, loop, extra_state={"config": asdict(config)})
    return trainer.train()


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config, threads = parse_command_line(argv)
    from msolomon.runtime import set_threads

    set_threads(threads)
    try:
        final = run(config)
    except ValueError as err:
        logger.error("%s", err)
        return 2
    logger.info("final model: %s", final)
    return 0


if __name__ == "__main__":
    sys.exit(main())
