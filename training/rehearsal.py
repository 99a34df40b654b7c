"""Rehearsal: keep the base's generative knowledge while fine-tuning the embedder.

Fine-tuning the pretrained base on MiniMMEB alone makes it forget what MiniMMEB does not show: asked what a DigitsR
rendition shows, the base names the right digit on 51 of 100 test images, the fine-tuned M-Solomon on 15, and its
augmentations then name the wrong digit. Rehearsal (experience replay) adds to every fine-tuning step a small batch
of the base's own pretraining examples (`training.pretrain_data`, disjoint from every benchmark image), trained with
the pretraining loss: L = L_rep + λ·L_gen + μ·L_replay.

The replay rows of a step are drawn by a generator seeded with the ids of that step's examples, so a resumed run sees
exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import random
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from msolomon.settings import option


@dataclass
class RehearsalSettings:
    """Which pretraining examples are replayed, how many per step, and their loss weight."""

    replay: str | None = option(None, "a pretraining data folder (training.pretrain's OUT/data) whose train "
                                "examples are replayed with the next-token loss while fine-tuning (training.reproduce "
                                "also takes auto: the init's own pretraining data, made again from its "
                                "pretrain_report.json; and none)", metavar="DIR")
    replay_batch: int = option(8, "pretraining examples replayed per micro-batch")
    replay_weight: float = option(1.0, "μ, the weight of the replayed examples' next-token loss")


def rehearsal_problem(r: RehearsalSettings) -> str | None:
    """What is wrong with these settings, in one line (checked before any data or model is made), or None."""
    if r.replay_batch < 1:
        return f"--replay-batch must be >= 1, got {r.replay_batch}"
    if r.replay_weight < 0:
        return f"--replay-weight must be >= 0 (a negative weight would unlearn the base), got {r.replay_weight}"
    if r.replay:
        from training.pretrain_data import is_pretrain_data

        if not is_pretrain_data(r.replay):
            return (f"--replay {r.replay}: not a pretraining data folder (made by `python -m training.pretrain "
                    f"--out DIR --data-only`, in DIR/data, in minutes)")
    return None


def recorded_rehearsal(run_dir: str | Path) -> dict | None:
    """The rehearsal settings a training run folder was made with (None: no record; older runs had no
    rehearsal, so a record without the field reads as none)."""
    from msolomon.files import read_json

    state = read_json(Path(run_dir) / "train_settings.json")
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        return None
    recorded = state["config"].get("rehearsal") or {}
    return {"replay": recorded.get("replay"), "replay_batch": recorded.get("replay_batch", 8),
            "replay_weight": recorded.get("replay_weight", 1.0)}


def same_rehearsal(recorded: dict, r: RehearsalSettings) -> bool:
    """Whether a run recorded with `recorded` was trained as `r` asks (without replay, batch and weight do not
    matter; a folder is the same however its path is written)."""
    if not recorded["replay"] and not r.replay:
        return True
    if not recorded["replay"] or not r.replay:
        return False
    return (Path(recorded["replay"]).resolve() == Path(r.replay).resolve()
            and recorded["replay_batch"] == r.replay_batch and float(recorded["replay_weight"]) == r.replay_weight)


def check_run_matches(run_dir: str | Path, r: RehearsalSettings) -> None:
    """Refuse to resume or reuse a run folder trained with other rehearsal settings (it would silently keep
    the old model while the report prints the new command)."""
    recorded = recorded_rehearsal(run_dir)
    if recorded is not None and not same_rehearsal(recorded, r):
        raise ValueError(f"{run_dir} was trained with rehearsal {recorded}, not {asdict(r)}: use another --out")


def replay_indices(example_ids: Sequence[str], n_rows: int, k: int, seed: int) -> list[int]:
    """`k` distinct row indices out of `n_rows`, fixed by the batch's example ids and the seed."""
    key = zlib.crc32("\n".join(example_ids).encode("utf-8"), seed & 0xFFFFFFFF)
    return random.Random(key).sample(range(n_rows), min(k, n_rows))


class RehearsalCollator:
    """The embedder's batch (`training.collator.Collator`) plus a batch of replayed pretraining rows
    (`training.pretrain.PretrainCollator`): {"embed": ..., "replay": ...}."""

    def __init__(self, embed_collator: Callable, replay_collator: Callable, rows: Sequence[dict], per_batch: int,
                 seed: int = 0):
        if not rows:
            raise ValueError("rehearsal needs at least one pretraining example to replay")
        if per_batch < 1:
            raise ValueError(f"--replay-batch must be >= 1, got {per_batch}")
        self.embed_collator = embed_collator
        self.replay_collator = replay_collator
        self.rows = list(rows)
        self.per_batch = per_batch
        self.seed = seed

    def __call__(self, examples: Sequence) -> dict:
        picks = replay_indices([ex.row.id for ex in examples], len(self.rows), self.per_batch, self.seed)
        return {"embed": self.embed_collator(examples), "replay": self.replay_collator([self.rows[i] for i in picks])}


def rehearsal_loss(weight: float) -> Callable:
    """The loss function of `MSolomonForTraining` for rehearsal batches: the embedder's loss on "embed" plus
    `weight` times the next-token loss on "replay" (its figures as replay_loss, replay_token_acc)."""
    from training.pretrain import pretrain_loss
    from training.trainer import embedder_loss

    def loss_fn(model, batch: dict, loop):
        loss, figures = embedder_loss(model, batch["embed"], loop)
        replay, replay_figures = pretrain_loss(model, batch["replay"], loop)
        total = loss + weight * replay
        return total, {**figures, "loss": total.detach(), "replay_loss": replay_figures["loss"],
                       "replay_token_acc": replay_figures["token_acc"]}

    return loss_fn


def load_replay_rows(folder: str) -> list[dict]:
    """The train examples of a pretraining data folder, with a clear error when it is not one."""
    from training.pretrain_data import is_pretrain_data, load_rows

    if not is_pretrain_data(folder):
        raise ValueError(f"--replay {folder}: not a pretraining data folder (made by `python -m training.pretrain "
                         f"--out DIR --data-only`, in DIR/data, in minutes)")
    rows = load_rows(Path(folder), "train")
    if not rows:
        raise ValueError(f"--replay {folder}: no train examples")
    return rows
