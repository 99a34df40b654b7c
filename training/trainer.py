"""The joint trainer: L = L_rep + λ·L_gen from one teacher-forced pass per query.

Runs in one process or many (torchrun / `accelerate launch` set the usual env variables; gloo on CPU,
nccl on GPU). Gradients are averaged over ranks after each backward, as DDP does, and the InfoNCE
gathers embeddings across ranks, so N processes on a global batch equal one process on it.
Checkpoints are written atomically (safetensors weights, optimizer state, trainer state); a killed run
resumes from the last one with the same data order.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from msolomon.backbone import unwrap
from training.collator import Collator, CollatorSettings, Example
from training.losses import generation_loss, info_nce, world

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
FINAL = "final"
STATE = "trainer_state.json"
OPTIMIZER = "optimizer.pt"
POSTFIX = (("loss", "loss"), ("rep_loss", "rep"), ("gen_loss", "gen"), ("decision_acc", "dec"), ("token_acc", "tok"))


@dataclass
class OptimSettings:
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    max_grad_norm: float = 1.0


@dataclass
class LoopSettings:
    batch_size: int = 32  # per process and micro-batch
    grad_accum: int = 1
    max_steps: int | None = None
    epochs: float = 1.0
    seed: int = 0
    temperature: float = 0.02
    gen_weight: float = 1.0  # λ
    save_every: int = 200
    log_every: int = 10
    bf16: bool | None = None  # default: on for CUDA
    mask_false_negatives: bool = True
    collator: CollatorSettings = field(default_factory=CollatorSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)


def target_keys(examples: Sequence[Example], device, use_negatives: bool = True) -> torch.Tensor:
    """A content key per target (positives, then negatives): equal keys mark the same candidate, so a
    query is not pushed away from another copy of its own positive (e.g. a shared class label)."""
    def key(c) -> int:  # stable across processes (Python's hash() is salted per process)
        text = f"{c.text}\x00{c.image if c.image is not None else ''}".encode()
        return int.from_bytes(hashlib.blake2b(text, digest_size=7).digest(), "big")

    keys = [key(ex.row.positive) for ex in examples]
    if use_negatives:  # exactly the targets the collator encoded
        keys += [key(ex.row.negative) for ex in examples if ex.row.negative is not None]
    return torch.tensor(keys, dtype=torch.long, device=device)


def compute_loss(model, batch: dict, examples: Sequence[Example], loop: LoopSettings):
    """Loss and metrics of one micro-batch (this process's shard)."""
    q = batch["query"]
    t = batch["target"]
    device = model.device
    q_hidden = model.forward_hidden(q)
    t_hidden = model.forward_hidden(t)
    rows_q = torch.arange(q_hidden.shape[0], device=device)
    rows_t = torch.arange(t_hidden.shape[0], device=device)
    q_emb = q_hidden[rows_q, q["last_index"].to(device)]
    t_emb = t_hidden[rows_t, t["last_index"].to(device)]
    n_pos = q_emb.shape[0]
    keys = target_keys(examples, device, loop.collator.use_negatives) if loop.mask_false_negatives else None
    rep = info_nce(q_emb, t_emb, n_pos, loop.temperature, keys)
    gen = generation_loss(q_hidden, q["labels"].to(device), unwrap(model.model).lm_head,
                          (model.augment_id, model.embed_id))
    loss = rep.loss + loop.gen_weight * gen.loss
    metrics = {"loss": loss.item(), "rep_loss": rep.loss.item(), "gen_loss": gen.loss.item(),
               "in_batch_acc": rep.accuracy, "decision_acc": gen.decision_accuracy,
               "augment_share": batch["n_augment"] / max(n_pos, 1)}
    return loss, metrics


def average_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """All-reduce and average gradients over ranks (what DDP does, without its forward wrapper, so the
    model's own forward helpers can be called directly)."""
    rank, size = world()
    if size == 1:
        return
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= size


def batch_indices(n_examples: int, step: int, micro: int, loop: LoopSettings) -> list[int]:
    """Indices of this rank's micro-batch: a fixed permutation per epoch (seeded), so a resumed run sees
    exactly the batches an uninterrupted one would."""
    rank, size = world()
    global_bs = loop.batch_size * size
    per_epoch = n_examples // global_bs
    if per_epoch == 0:
        raise ValueError(f"{n_examples} training examples are fewer than one global batch of {global_bs}")
    index = step * loop.grad_accum + micro
    epoch, within = divmod(index, per_epoch)
    g = torch.Generator().manual_seed(loop.seed * 100_003 + epoch)
    perm = torch.randperm(n_examples, generator=g)
    start = within * global_bs + rank * loop.batch_size
    return perm[start:start + loop.batch_size].tolist()


def total_steps(n_examples: int, loop: LoopSettings) -> int:
    _, size = world()
    per_epoch = n_examples // (loop.batch_size * size * loop.grad_accum)
    return loop.max_steps if loop.max_steps is not None else max(1, math.ceil(per_epoch * loop.epochs))


def _trainable(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.model.named_parameters() if p.requires_grad]


def save_checkpoint(model, optimizer, scheduler, step: int, out: Path, extra: dict) -> None:
    """Model (MSolomon.save_pretrained: safetensors), optimizer and scheduler state, trainer state; written
    into a temporary folder and renamed, so a kill never leaves a half checkpoint."""
    rank, _ = world()
    if rank != 0:
        return
    final = out / CHECKPOINT
    tmp = out / (CHECKPOINT + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / OPTIMIZER)
    (tmp / STATE).write_text(json.dumps({"step": step, **extra}, indent=2, sort_keys=True))
    old = out / (CHECKPOINT + ".old")
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def recover_checkpoint(out: Path) -> None:
    """If a kill fell between the two renames of `save_checkpoint`, put the previous complete checkpoint back."""
    final, old = out / CHECKPOINT, out / (CHECKPOINT + ".old")
    if not (final / STATE).is_file() and (old / STATE).is_file():
        if final.exists():
            shutil.rmtree(final)
        old.rename(final)
        logger.warning("recovered the previous checkpoint from %s", old)


def load_optimizer_state(path: Path, optimizer, scheduler) -> None:
    state = torch.load(path / OPTIMIZER, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])


class Trainer:
    """Owns the loop: batches, losses, optimisation, logging, checkpoints, resume."""

    def __init__(self, model, examples: Sequence[Example], out_dir: str | Path, loop: LoopSettings | None = None,
                 extra_state: dict | None = None, collator: Callable[[Sequence], dict] | None = None,
                 loss_fn: Callable | None = None):
        """`collator` and `loss_fn` default to the embedder's (L_rep + λ·L_gen); pretraining passes its own
        (next-token loss only), so both stages share batching, checkpoints and resume."""
        self.model = model
        self.examples = list(examples)
        self.out = Path(out_dir)
        self.loop = loop or LoopSettings()
        self.extra_state = extra_state or {}
        self.collator = collator or Collator(model.encoder, self.loop.collator)
        self.loss_fn = loss_fn or compute_loss
        self.params = [p for _, p in _trainable(model)]
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        o = self.loop.optim
        decay = [p for p in self.params if p.ndim >= 2]
        no_decay = [p for p in self.params if p.ndim < 2]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=o.lr)
        from transformers import get_linear_schedule_with_warmup

        self.steps = total_steps(len(self.examples), self.loop)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, min(o.warmup_steps, self.steps // 2),
                                                         self.steps)

    def _autocast(self):
        device = self.model.device
        use = self.loop.bf16 if self.loop.bf16 is not None else device.type == "cuda"
        if use:
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        import contextlib

        return contextlib.nullcontext()

    def train_step(self, step: int) -> dict:
        self.model.model.train()
        metrics_sum: dict[str, float] = {}
        for micro in range(self.loop.grad_accum):
            idx = batch_indices(len(self.examples), step, micro, self.loop)
            chunk = [self.examples[i] for i in idx]
            batch = self.collator(chunk)
            with self._autocast():
                loss, metrics = self.loss_fn(self.model, batch, chunk, self.loop)
            (loss / self.loop.grad_accum).backward()
            for k, v in metrics.items():
                metrics_sum[k] = metrics_sum.get(k, 0.0) + v / self.loop.grad_accum
        average_gradients(self.params)
        if self.loop.optim.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.loop.optim.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        metrics_sum["lr"] = self.scheduler.get_last_lr()[0]
        return metrics_sum

    def _log_path(self) -> Path:
        return self.out / "train_log.jsonl"

    def _trim_log(self, upto: int) -> None:
        """Drop log lines past the resumed step (they came from the killed run after its checkpoint)."""
        path = self._log_path()
        if not path.is_file():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= upto:
                    keep.append(line)
            except (ValueError, KeyError):
                continue
        path.write_text("".join(k + "\n" for k in keep))

    def resume_step(self) -> int:
        ckpt = self.out / CHECKPOINT
        recover_checkpoint(self.out)
        if not (ckpt / STATE).is_file():
            return 0
        state = json.loads((ckpt / STATE).read_text())
        load_optimizer_state(ckpt, self.optimizer, self.scheduler)
        logger.info("resuming from %s at step %d", ckpt, state["step"])
        return int(state["step"])

    def train(self) -> Path:
        """Run to the last step; returns the folder of the final model."""
        from tqdm.auto import tqdm

        rank, size = world()
        self.out.mkdir(parents=True, exist_ok=True)
        start = self.resume_step()
        if rank == 0:
            self._trim_log(start)
        settings = {"loop": asdict(self.loop), "n_examples": len(self.examples), "world_size": size,
                    "total_steps": self.steps, **self.extra_state}
        if rank == 0:
            (self.out / "train_settings.json").write_text(json.dumps(settings, indent=2, sort_keys=True, default=str))
        bar = tqdm(range(start, self.steps), initial=start, total=self.steps, desc="training", disable=rank != 0)
        t0 = time.perf_counter()
        for step in bar:
            metrics = self.train_step(step)
            done = step + 1
            if rank == 0 and (done % self.loop.log_every == 0 or done == self.steps):
                row = {"step": done, "elapsed_s": round(time.perf_counter() - t0, 2),
                       **{k: round(v, 5) for k, v in metrics.items()}}
                with open(self._log_path(), "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                bar.set_postfix({short: f"{metrics[key]:.3f}" for key, short in POSTFIX if key in metrics})
            if done % self.loop.save_every == 0 and done < self.steps:
                self.model.model.eval()
                save_checkpoint(self.model, self.optimizer, self.scheduler, done, self.out, self.extra_state)
        self.model.model.eval()
        final = self.out / FINAL
        if rank == 0:
            self.model.save_pretrained(final)
            save_checkpoint(self.model, self.optimizer, self.scheduler, self.steps, self.out, self.extra_state)
        return final
