"""Data: typed rows shared by the MMEB readers, MiniMMEB, the evaluation and the training collator."""
from __future__ import annotations

from dataclasses import dataclass, field

from msolomon.inputs import Candidate, Query

META_TASKS = ("classification", "vqa", "retrieval", "grounding")


class DataFormatError(ValueError):
    """A data file is malformed: the message names the file, the row and the problem."""


@dataclass
class EvalRow:
    """One MMEB-eval query with its candidate list; candidate 0 is the positive."""

    dataset: str
    index: int
    query: Query
    candidates: list[Candidate]


@dataclass
class TrainRow:
    """One MMEB-train pair (query, positive target, optional hard negative), with a stable id."""

    dataset: str
    id: str
    query: Query
    positive: Candidate
    negative: Candidate | None = None


@dataclass
class DatasetInfo:
    """Where a dataset sits in MMEB's taxonomy."""

    name: str
    meta_task: str
    ood: bool
    extra: dict = field(default_factory=dict)
