"""The joint trainer: L = L_rep + λ·L_gen from one teacher-forced pass per query (pretraining: the next-token loss).

The trained thing is `MSolomonForTraining`, an `nn.Module` whose forward returns the losses and figures; with more
than one process (torchrun / `accelerate launch` set the usual env variables; gloo on CPU, nccl on GPU) it is
wrapped in stock `DistributedDataParallel`, and the InfoNCE gathers embeddings across ranks, so N processes on a
global batch equal one process on it. Batches come from a `DataLoader` (the collator as `collate_fn`, `StepSampler`
keeping the seeded order and resume, `workers` collating in other processes). Checkpoints are folders replaced
atomically (`msolomon.files.replace_dir`: safetensors weights, optimizer state, trainer state); a killed run resumes
from the last one with the same data order.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from msolomon.backbone import unwrap
from msolomon.files import (
    append_jsonl,
    atomic_write_json,
    atomic_write_jsonl,
    read_json,
    read_jsonl,
    recover_dir,
    replace_dir,
)
from msolomon.settings import option
from training.collator import Collator, CollatorSettings
from training.losses import generation_loss, info_nce, world

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
FINAL = "final"
STATE = "trainer_state.json"
OPTIMIZER = "optimizer.pt"
LOG = "train_log.jsonl"
POSTFIX = (("loss", "loss"), ("rep_loss", "rep"), ("gen_loss", "gen"), ("decision_acc", "dec"), ("token_acc", "tok"),
           ("replay_loss", "rpl"))


@dataclass
class OptimSettings:
    """AdamW with linear warm-up and decay."""

    lr: float = option(1e-3, "peak learning rate (AdamW)")
    weight_decay: float = option(0.01, "AdamW weight decay (matrices only; biases and norms get none)")
    warmup_steps: int = option(50, "linear warm-up steps (at most half the run)")
    max_grad_norm: float = option(1.0, "clip the gradient norm to this (0: no clipping)")


@dataclass
class LoopSettings:
    """The loop: batches, the loss's weights, logging and checkpoints."""

    batch_size: int = option(32, "examples per process and micro-batch")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    max_steps: int | None = option(None, "optimizer steps (default: from --epochs)")
    epochs: float = option(1.0, "passes over the training examples (when --max-steps is not given)")
    seed: int = option(0, "seed of the data order")
    temperature: float = option(0.02, "InfoNCE temperature")
    gen_weight: float = option(1.0, "λ, the weight of the generation loss")
    save_every: int = option(200, "steps between checkpoints")
    log_every: int = option(10, "steps between log lines (the only host syncs of the loop)")
    bf16: bool | None = option(None, "bf16 autocast (default: on for CUDA)")
    mask_false_negatives: bool = option(True, "do not use other copies of a query's positive as its negatives")
    workers: int = option(0, "DataLoader worker processes collating batches (0: on the training thread)")
    collator: CollatorSettings = field(default_factory=CollatorSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)


class MSolomonForTraining(torch.nn.Module):
    """The thing being trained: an `nn.Module` whose `forward(batch)` returns `{"loss": tensor, **figures}` (the
    figures detached 0-d tensors or numbers, read on the host only when logged). Wraps an `MSolomon` (its backbone
    is this module's only child, so `parameters()`, `train()` and `DistributedDataParallel` see exactly it) and a
    loss function `loss_fn(msolomon, batch, loop) -> (loss, figures)`: `embedder_loss` (L_rep + λ·L_gen) by
    default, `training.pretrain.pretrain_loss` for pretraining."""

    def __init__(self, model, loss_fn: Callable | None = None, loop: LoopSettings | None = None):
        super().__init__()
        self.backbone = model.model
        object.__setattr__(self, "msolomon", model)  # not a module: keep it out of the module tree
        self.loss_fn = loss_fn or embedder_loss
        self.loop = loop or LoopSettings()

    def forward(self, batch: dict) -> dict:
        loss, figures = self.loss_fn(self.msolomon, batch, self.loop)
        return {**figures, "loss": loss}  # the figures' "loss" is detached: this one carries the graph


def embedder_loss(model, batch: dict, loop: LoopSettings):
    """L_rep + λ·L_gen of one micro-batch (this process's shard) and its figures, with no host sync."""
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
    keys = batch["target_keys"].to(device) if loop.mask_false_negatives else None
    rep = info_nce(q_emb, t_emb, n_pos, loop.temperature, keys)
    gen = generation_loss(q_hidden, q["labels"].to(device), unwrap(model.model).lm_head,
                          (model.augment_id, model.embed_id))
    loss = rep.loss + loop.gen_weight * gen.loss
    figures = {"loss": loss.detach(), "rep_loss": rep.loss.detach(), "gen_loss": gen.loss.detach(),
               "in_batch_acc": rep.accuracy, "decision_acc": gen.decision_accuracy,
               "augment_share": batch["n_augment"] / max(n_pos, 1)}
    return loss, figures


def distributed(module: torch.nn.Module) -> torch.nn.Module:
    """`module` wrapped in stock DistributedDataParallel when torch.distributed runs with more than one process
    (bucketed gradient all-reduce, averaged over ranks); `module` itself otherwise. A rank's shard may hold no image,
    leaving the vision tower unused there: `find_unused_parameters` covers that."""
    _, size = world()
    if size == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device = next(module.parameters()).device
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=True, broadcast_buffers=False)


def host_figures(figures: dict) -> dict[str, float]:
    """The figures as plain floats (the one host sync, at logging time)."""
    return {k: float(v.item() if isinstance(v, torch.Tensor) else v) for k, v in figures.items()}


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


class StepSampler(torch.utils.data.Sampler):
    """The DataLoader's batch sampler: this rank's micro-batches of steps `start`..`stop` in the seeded order of
    `batch_indices` (so a resumed run continues exactly where the killed one was)."""

    def __init__(self, n_examples: int, loop: LoopSettings, start: int, stop: int):
        self.n, self.loop, self.start, self.stop = n_examples, loop, start, stop

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            for micro in range(self.loop.grad_accum):
                yield batch_indices(self.n, step, micro, self.loop)

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.loop.grad_accum


def total_steps(n_examples: int, loop: LoopSettings) -> int:
    _, size = world()
    per_epoch = n_examples // (loop.batch_size * size * loop.grad_accum)
    return loop.max_steps if loop.max_steps is not None else max(1, math.ceil(per_epoch * loop.epochs))


def save_checkpoint(model, optimizer, scheduler, step: int, out: Path, extra: dict) -> None:
    """Model (MSolomon's files: safetensors), optimizer and scheduler state, trainer state, as one folder replaced
    all or nothing (`msolomon.files.replace_dir`), so a kill never leaves a half checkpoint."""
    rank, _ = world()
    if rank != 0:
        return

    def write(folder: Path) -> None:
        model.write_files(folder)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, folder / OPTIMIZER)
        atomic_write_json(folder / STATE, {"step": step, **extra}, sort_keys=True, default=str)

    replace_dir(out / CHECKPOINT, write)


def recover_checkpoint(out: Path) -> None:
    """If a kill fell between the two renames of `save_checkpoint`, put the previous complete checkpoint back."""
    recover_dir(Path(out) / CHECKPOINT, complete=lambda p: (p / STATE).is_file())


def load_optimizer_state(path: Path, optimizer, scheduler) -> None:
    state = torch.load(path / OPTIMIZER, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])


class Trainer:
    """Owns the loop: batches, optimisation, logging, checkpoints, resume; the losses are `MSolomonForTraining`'s."""

    def __init__(self, model, examples: Sequence, out_dir: str | Path, loop: LoopSettings | None = None,
                 extra_state: dict | None = None, collator: Callable[[Sequence], dict] | None = None,
                 loss_fn: Callable | None = None):
        """`collator` and `loss_fn` default to the embedder's (L_rep + λ·L_gen); pretraining passes its own
        (next-token loss only), so both stages share the module, batching, checkpoints and resume."""
        self.model = model
        self.examples = list(examples)
        self.out = Path(out_dir)
        self.loop = loop or LoopSettings()
        self.extra_state = extra_state or {}
        self.collator = collator or Collator(model.encoder, self.loop.collator)
        self.module = MSolomonForTraining(model, loss_fn, self.loop)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        self.wrapped = distributed(self.module)
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
        return contextlib.nullcontext()

    def batches(self, start: int, stop: int | None = None) -> torch.utils.data.DataLoader:
        """The collated micro-batches of steps `start`..`stop` (default: the last), in order."""
        sampler = StepSampler(len(self.examples), self.loop, start, self.steps if stop is None else stop)
        return torch.utils.data.DataLoader(self.examples, batch_sampler=sampler, collate_fn=self.collator,
                                           num_workers=self.loop.workers,
                                           persistent_workers=False, multiprocessing_context=(
                                               "spawn" if self.loop.workers else None))

    def train_step(self, step: int, micro_batches: Sequence[dict] | None = None) -> dict:
        """One optimizer step over `micro_batches` (default: this step's, collated here); returns the figures
        (averaged over micro-batches, still on the device)."""
        if micro_batches is None:
            micro_batches = list(self.batches(step, step + 1))
        self.module.train()
        figures: dict = {}
        n = len(micro_batches)
        for i, batch in enumerate(micro_batches):
            sync = i == n - 1 or self.wrapped is self.module  # DDP all-reduces on the last micro-batch only
            with contextlib.nullcontext() if sync else self.wrapped.no_sync():
                with self._autocast():
                    out = self.wrapped(batch)
                (out["loss"] / n).backward()
            for k, v in out.items():
                v = v.detach() if isinstance(v, torch.Tensor) else v
                figures[k] = figures.get(k, 0.0) + v / n
        if self.loop.optim.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.loop.optim.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        figures["lr"] = self.scheduler.get_last_lr()[0]
        return figures

    def _log_path(self) -> Path:
        return self.out / LOG

    def _trim_log(self, upto: int) -> None:
        """Drop log lines past the resumed step (they came from the killed run after its checkpoint)."""
        path = self._log_path()
        if path.is_file():
            kept = [r for r in read_jsonl(path) if isinstance(r, dict) and r.get("step", upto + 1) <= upto]
            atomic_write_jsonl(path, kept)

    def resume_step(self) -> int:
        ckpt = self.out / CHECKPOINT
        recover_checkpoint(self.out)
        state = read_json(ckpt / STATE)
        if not isinstance(state, dict) or "step" not in state:
            return 0
        load_optimizer_state(ckpt, self.optimizer, self.scheduler)
        step = int(state["step"])
        # the loaded state holds the learning rate of the schedule it was saved under; this run's schedule (the
        # same on a plain resume, rebuilt when a finished pretraining run is continued to more steps) sets it
        self.scheduler.base_lrs = [self.loop.optim.lr] * len(self.optimizer.param_groups)
        for group, fn in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas):
            group["initial_lr"] = self.loop.optim.lr
            group["lr"] = self.loop.optim.lr * fn(step)
        logger.info("resuming from %s at step %d", ckpt, step)
        return step

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
            atomic_write_json(self.out / "train_settings.json", settings, sort_keys=True, default=str)
        bar = tqdm(range(start, self.steps), initial=start, total=self.steps, desc="training", disable=rank != 0)
        t0 = time.perf_counter()
        loader = iter(self.batches(start))
        for step in bar:
            figures = self.train_step(step, [next(loader) for _ in range(self.loop.grad_accum)])
            done = step + 1
            if rank == 0 and (done % self.loop.log_every == 0 or done == self.steps):
                metrics = host_figures(figures)
                append_jsonl(self._log_path(), [{"step": done, "elapsed_s": round(time.perf_counter() - t0, 2),
                                                 **{k: round(v, 5) for k, v in metrics.items()}}])
                bar.set_postfix({short: f"{metrics[key]:.3f}" for key, short in POSTFIX if key in metrics})
            if done % self.loop.save_every == 0 and done < self.steps:
                self.module.eval()
                save_checkpoint(self.model, self.optimizer, self.scheduler, done, self.out, self.extra_state)
        self.module.eval()
        final = self.out / FINAL
        if rank == 0:
            self.model.save_pretrained(final)
            save_checkpoint(self.model, self.optimizer, self.scheduler, self.steps, self.out, self.extra_state)
        return final
