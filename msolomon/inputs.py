"""Typed inputs and results of the public API.

`Query` and `Candidate` are what users pass in; `QueryResult` is what `encode_queries` returns.
They carry no model logic, so data readers, the evaluation and the demo can share them.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

ImageLike = Union[str, Path, "Any"]  # a path or a PIL image


class InputTypeError(TypeError, ValueError):
    """An argument of the wrong type. Both a `TypeError` and a `ValueError`, so code that catches the library's
    usual `ValueError` for bad input catches this too."""


def is_pil_image(value: Any) -> bool:
    return hasattr(value, "convert") and hasattr(value, "size") and not isinstance(value, (str, bytes, Path))


def check_text(value: Any, what: str) -> str | None:
    """`value` if it is None or a str that is valid Unicode (no lone surrogate); a clear error otherwise."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputTypeError(f"{what} must be a str or None, got {type(value).__name__} {_short(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{what} is not valid Unicode: a lone surrogate {value[err.start]!r} at character "
                         f"{err.start} (decode the source with errors='replace' or fix it)") from None
    return value


def check_count(value: Any, name: str, minimum: int = 1) -> int:
    """A whole number >= `minimum` (an integral float such as 8.0 is accepted); a clear error otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputTypeError(f"{name} must be an integer, got {type(value).__name__} {_short(value)}")
    if not math.isfinite(float(value)) or float(value) != int(value):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")
    return int(value)


def _short(value: Any) -> str:
    text = repr(value)
    return f"({text[:60]}...)" if len(text) > 60 else f"({text})"


@dataclass
class Candidate:
    """A retrieval target: text, image or both. Candidates never generate."""

    text: str | None = None
    image: ImageLike | None = None
    instruction: str | None = None

    def __post_init__(self) -> None:
        kind = type(self).__name__
        self.text = check_text(self.text, f"{kind}.text")
        self.instruction = check_text(self.instruction, f"{kind}.instruction")
        if self.image is not None and not (isinstance(self.image, (str, Path)) or is_pil_image(self.image)):
            raise InputTypeError(f"{kind}.image must be a file path (str or Path) or a PIL image, got "
                                 f"{type(self.image).__name__}")
        if isinstance(self.image, str) and not self.image.strip():
            raise ValueError(f"{kind}.image is an empty path: pass image=None for a text-only {kind.lower()}")
        if isinstance(self.text, str) and not self.text.strip():
            self.text = None
        if self.text is None and self.image is None:
            raise ValueError(f"{kind} needs a text, an image or both; got neither")


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
    gated: bool = False  # the model asked to augment; `encode_queries(gate=...)` kept the embedded result

    @property
    def augmented(self) -> bool:
        return self.decision == "/augment"


def _convert(item: Any, cls: type) -> Candidate:
    """A `cls` (Query or Candidate) from a str (its text), a Path or PIL image (its image), a dict of its fields,
    or another Query/Candidate."""
    kind = cls.__name__
    if isinstance(item, Candidate):
        return cls(text=item.text, image=item.image, instruction=item.instruction)
    if isinstance(item, str):
        return cls(text=item)
    if isinstance(item, Path) or is_pil_image(item):  # a bare Path is an image file, never text
        return cls(image=item)
    if isinstance(item, dict):
        unknown = sorted(set(map(str, item)) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"cannot make a {kind} from a dict with key(s) {unknown}: use "
                             f"{', '.join(cls.__dataclass_fields__)}")
        return cls(**item)
    raise InputTypeError(f"cannot make a {kind} from {type(item).__name__}: pass a str (text), a Path or PIL image "
                         f"(image), a dict or a {kind}")


def as_query(item: "Query | Candidate | str | Any") -> Query:
    """Turn a string, a Path or PIL image, a dict or a Candidate into a Query."""
    return item if isinstance(item, Query) else _convert(item, Query)


def as_candidate(item: "Candidate | str | Any") -> Candidate:
    """Turn a string, a Path or PIL image, a dict or a Query into a Candidate."""
    if isinstance(item, Candidate) and not isinstance(item, Query):
        return item
    return _convert(item, Candidate)
