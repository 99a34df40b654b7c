"""Typed inputs and results of the public API.

`Query` and `Candidate` are what users pass in; `QueryResult` is what `encode_queries` returns.
They carry no model logic, so data readers, the evaluation and the demo can share them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

ImageLike = Union[str, Path, "Any"]  # a path or a PIL image


@dataclass
class Candidate:
    """A retrieval target: text, image or both. Candidates never generate."""

    text: str | None = None
    image: ImageLike | None = None
    instruction: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.text, str) and not self.text.strip():
            self.text = None
        if self.text is None and self.image is None:
            raise ValueError(f"{type(self).__name__} needs a text, an image or both; got neither")


@dataclass
class Query(Candidate):
    """A query: optional text, optional image, optional task instruction (MMEB style).

    The text may contain MMEB's `<|image_1|>` placeholder; the format module puts the image there.
    """

    id: str | None = None


@dataclass
class QueryResult:
    """What `MSolomon.encode_queries` returns for one query."""

    decision: str  # "/augment" or "/embed"
    p_augment: float
    augmentation: str | None
    embedding: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    token_ids: list[int] = field(default_factory=list)  # the generated segment incl. terminal token

    @property
    def augmented(self) -> bool:
        return self.decision == "/augment"


def as_query(item: "Query | Candidate | str | Any") -> Query:
    """Turn a string, a PIL image, a dict or a Candidate into a Query."""
    if isinstance(item, Query):
        return item
    if isinstance(item, Candidate):
        return Query(text=item.text, image=item.image, instruction=item.instruction)
    if isinstance(item, str):
        return Query(text=item)
    if isinstance(item, dict):
        return Query(**item)
    if hasattr(item, "convert") and hasattr(item, "size"):  # PIL image
        return Query(image=item)
    raise ValueError(f"cannot make a Query from {type(item).__name__}: pass a str, a PIL image, a dict or a Query")


def as_candidate(item: "Candidate | str | Any") -> Candidate:
    """Turn a string, a PIL image, a dict or a Query into a Candidate."""
    if isinstance(item, Candidate) and not isinstance(item, Query):
        return item
    if isinstance(item, Query):
        return Candidate(text=item.text, image=item.image, instruction=item.instruction)
    if isinstance(item, str):
        return Candidate(text=item)
    if isinstance(item, dict):
        return Candidate(**item)
    if hasattr(item, "convert") and hasattr(item, "size"):
        return Candidate(image=item)
    raise ValueError(f"cannot make a Candidate from {type(item).__name__}: pass a str, a PIL image, a dict or a Candidate")
