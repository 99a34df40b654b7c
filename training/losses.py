"""The two losses of M-Solomon: InfoNCE over terminal-token embeddings (L_rep) and next-token cross-entropy
on the generated segment (L_gen). Both are written so that N processes on N shards of a global batch give
the same loss and gradients as one process on the whole batch (after gradients are averaged over ranks).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when torch.distributed is not initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """All-gather a (n, d) tensor whose n may differ by rank, keeping gradients to the local rows.

    Returns the gathered tensor with each rank's rows padded to the largest n, a validity mask, and the
    padded per-rank row count. Gradients flow back to each rank's own rows (the all-gather's backward sums
    them), which is what makes the sharded loss equal the whole-batch loss."""
    rank, size = world()
    if size == 1:
        return x, torch.ones(x.shape[0], dtype=torch.bool, device=x.device), x.shape[0]
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_fn

    n = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.zeros_like(n) for _ in range(size)]
    dist.all_gather(counts, n)
    width = int(max(c.item() for c in counts))
    padded = torch.cat([x, x.new_zeros(width - x.shape[0], x.shape[1])], 0) if x.shape[0] < width else x
    gathered = torch.cat(dist_fn.all_gather(padded), 0)
    valid = torch.cat([torch.arange(width, device=x.device) < c.item() for c in counts])
    return gathered, valid, width


@dataclass
class RepOutput:
    loss: torch.Tensor
    accuracy: torch.Tensor  # 0-d, detached: read on the host only when logged


def gather_keys(keys: torch.Tensor) -> torch.Tensor:
    """All-gather integer keys laid out like `gather_rows` (padding = -1); no gradients."""
    rank, size = world()
    if size == 1:
        return keys
    import torch.distributed as dist

    n = torch.tensor([keys.shape[0]], device=keys.device)
    counts = [torch.zeros_like(n) for _ in range(size)]
    dist.all_gather(counts, n)
    width = int(max(c.item() for c in counts))
    padded = torch.cat([keys, keys.new_full((width - keys.shape[0],), -1)])
    out = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(out, padded)
    return torch.cat(out)


def info_nce(queries: torch.Tensor, targets: torch.Tensor, n_positives: int, temperature: float,
             keys: torch.Tensor | None = None) -> RepOutput:
    """InfoNCE of local queries against every target of every rank (in-batch and hard negatives).

    `targets` holds the local positives (one per query, in order) followed by local hard negatives. The loss
    is the mean over local queries; averaging gradients over ranks gives the global mean. With `keys` (one
    content key per target), other copies of a query's own positive are not used as its negatives."""
    rank, size = world()
    q = F.normalize(queries.float(), dim=-1)
    t = F.normalize(targets.float(), dim=-1)
    pos, neg = t[:n_positives], t[n_positives:]
    all_pos, pos_valid, pos_width = gather_rows(pos)
    all_neg, neg_valid, _ = gather_rows(neg)
    gathered = torch.cat([all_pos, all_neg], 0)
    valid = torch.cat([pos_valid, neg_valid], 0)
    scores = (q @ gathered.T) / temperature
    scores = scores.masked_fill(~valid[None, :], float("-inf"))
    labels = torch.arange(q.shape[0], device=q.device) + rank * pos_width
    if keys is not None:
        all_keys = torch.cat([gather_keys(keys[:n_positives]), gather_keys(keys[n_positives:])])
        same = all_keys[None, :] == all_keys[labels][:, None]
        same[torch.arange(q.shape[0], device=q.device), labels] = False
        scores = scores.masked_fill(same, float("-inf"))
    loss = F.cross_entropy(scores, labels)
    accuracy = (scores.detach().argmax(-1) == labels).float().mean()
    return RepOutput(loss, accuracy)


@dataclass
class GenOutput:
    loss: torch.Tensor  # scaled so that averaging over ranks gives the global token mean
    n_tokens: torch.Tensor  # 0-d
    decision_accuracy: torch.Tensor  # 0-d, detached (NaN when no row is labelled)


def generation_loss(hidden: torch.Tensor, labels: torch.Tensor, lm_head, decision_ids: tuple[int, int]) -> GenOutput:
    """Token-mean cross-entropy on the labelled segment tokens; logits are computed only where labels are,
    so the full-vocabulary head never runs over the prompt. Also reports how often the decision token (the
    first labelled token of each row) is the larger of the two decision logits."""
    rank, size = world()
    shifted = labels[:, 1:]
    where = shifted != -100
    states = hidden[:, :-1][where]
    logits = lm_head(states).float()
    target = shifted[where]
    total = F.cross_entropy(logits, target, reduction="sum")
    n_local = torch.tensor([int(where.sum())], device=hidden.device, dtype=torch.float)
    n_global = n_local.clone()
    if size > 1:
        import torch.distributed as dist

        dist.all_reduce(n_global)
    loss = total / n_global.clamp(min=1) * size
    # decision accuracy: the first labelled position of each row is the decision token
    first = torch.zeros_like(where)
    rows = torch.arange(labels.shape[0], device=labels.device)[where.any(dim=1)]
    first[rows, where[rows].float().argmax(dim=1)] = True
    is_first = first[where]
    pair = logits[is_first][:, list(decision_ids)]
    chosen = torch.where(pair[:, 0] >= pair[:, 1], decision_ids[0], decision_ids[1])
    acc = (chosen == target[is_first]).float().mean().detach()  # NaN when no row is labelled (mean of nothing)
    return GenOutput(loss, n_local[0], acc)
