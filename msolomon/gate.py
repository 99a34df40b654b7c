"""A cascade for `MSolomon.encode_queries(gate=...)`: augment only when the embedded search is unsure.

In auto mode a query's `/embed` embedding costs no more than the decision's prefill. Searching with it first and
writing an augmentation only when that search is unsure is a per-query decision that needs no labels: the search's
confidence is its top-1 margin, the best candidate's score minus the second best's. Whether it pays depends on the
model: its `/embed` path must be good on the queries it was taught to augment (`docs/decisions.md`, section 5c).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np


def top1_margin(scores: Sequence[float] | np.ndarray) -> float:
    """The best score minus the second best (infinite for a single candidate: nothing to confuse it with)."""
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("a search over no candidates has no margin")
    if values.size == 1:
        return math.inf
    top = np.partition(values, values.size - 2)[-2:]
    return float(top[1] - top[0])


@dataclass
class MarginGate:
    """Keep a query's embedded result when its search's top-1 margin is at least `margin`.

    `candidates` is the (n, d) matrix every query searches (a corpus), or a function from a query's position in the
    `encode_queries` call to its own (k, d) candidates (a benchmark's per-query lists). Vectors are L2-normalised,
    so scores are cosines, as everywhere else."""

    margin: float
    candidates: np.ndarray | Callable[[int], np.ndarray]

    def __post_init__(self):
        if isinstance(self.margin, bool) or not isinstance(self.margin, (int, float)) or not self.margin >= 0:
            raise ValueError(f"the gate's margin must be a number >= 0, got {self.margin!r}")

    def __call__(self, positions: Sequence[int], vectors: np.ndarray) -> list[bool]:
        out = []
        for position, vector in zip(positions, np.asarray(vectors, dtype=np.float32)):
            pool = self.candidates(position) if callable(self.candidates) else self.candidates
            out.append(top1_margin(np.asarray(pool, dtype=np.float32) @ vector) >= self.margin)
        return out
