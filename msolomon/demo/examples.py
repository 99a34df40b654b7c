"""Clickable examples: held-out MiniMMEB test queries with their known answers (candidate 0 is the positive).

One query per dataset covers the four meta-tasks and both the in-distribution and out-of-distribution sets;
the model's own decision is computed at start (it changes when the model is retrained), and when every chosen
query gets the same decision, one query with the other decision is added from the next few rows.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from msolomon import prompts
from msolomon.demo.corpus import DATASET_PREFIX, display_text, payload_key
from msolomon.inputs import Query

logger = logging.getLogger(__name__)

Decide = Callable[[list[Query]], list[tuple[str, float]]]


def _preset(template: str) -> str:
    return " ".join(template.split("{")[0].replace(prompts.MMEB_IMAGE_PLACEHOLDER, " ").split())


INSTRUCTION_PRESETS: list[str] = list(dict.fromkeys(_preset(t) for t in prompts.MMEB_INSTRUCTIONS.values()))


def split_instruction(text: str | None) -> tuple[str | None, str | None]:
    """An MMEB query text as (instruction preset, the rest): the two render to the same prompt."""
    if not text:
        return None, text
    plain = " ".join(text.replace(prompts.MMEB_IMAGE_PLACEHOLDER, " ").split())
    for preset in sorted(INSTRUCTION_PRESETS, key=len, reverse=True):
        if preset and plain.startswith(preset):
            return preset, plain[len(preset):].strip() or None
    return None, plain


@dataclass
class Example:
    """One held-out query with its known answer and the loaded model's decision on it."""

    id: str  # "DATASET:ROW", as the MMEB reader numbers queries
    dataset: str
    meta_task: str
    ood: bool
    text: str | None
    instruction: str | None
    image: str | None
    answer: str  # the positive, as a person reads it
    positive_key: str
    decision: str = ""
    p_augment: float = float("nan")

    @property
    def corpus(self) -> str:
        return DATASET_PREFIX + self.dataset

    @property
    def query(self) -> Query:
        return Query(text=self.text, image=self.image, instruction=self.instruction, id=self.id)

    @property
    def label(self) -> str:
        split = "OOD" if self.ood else "IND"
        return f"{self.dataset} ({self.meta_task}, {split}) · model says {self.decision} · answer: {self.answer}"


def _example(row: Any, info: Any) -> Example:
    pos = row.candidates[0]
    instruction, text = split_instruction(row.query.text)
    answer = display_text(pos.text) or (Path(str(pos.image)).name if pos.image is not None else "?")
    if pos.image is not None and display_text(pos.text):
        answer = f"{Path(str(pos.image)).name} ({answer})"
    return Example(id=f"{row.dataset}:{row.index}", dataset=row.dataset, meta_task=info.meta_task,
                   ood=bool(info.ood), text=text, instruction=instruction,
                   image=str(row.query.image) if row.query.image is not None else None, answer=answer,
                   positive_key=payload_key(pos.text, pos.image))


def pick_examples(bench: Any, decide: Decide, per_dataset: int = 1, scan: int = 6) -> list[Example]:
    """`per_dataset` queries of each dataset (rows 0.. of its test set), plus one with the missing decision."""
    chosen: list[Example] = []
    spare: list[Example] = []
    for name in bench.names:
        rows = bench.read(name, limit=max(scan, per_dataset))
        found = [_example(r, bench.infos[name]) for r in rows]
        chosen += found[:per_dataset]
        spare += found[per_dataset:]
    for ex, (decision, p) in zip(chosen + spare, decide([e.query for e in chosen + spare])):
        ex.decision, ex.p_augment = decision, p
    missing = {prompts.AUGMENT, prompts.EMBED} - {e.decision for e in chosen}
    for want in sorted(missing):
        extra = next((e for e in spare if e.decision == want), None)
        if extra is not None:
            chosen.append(extra)
        else:
            logger.info("the model decides %s for none of the %d scanned example queries", want, len(spare))
    return chosen


def by_id(examples: Sequence[Example]) -> dict[str, Example]:
    return {e.id: e for e in examples}
