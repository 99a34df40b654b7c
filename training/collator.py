"""Training examples and batches: label assignment (noaug / alwaysaug / adaptive / query) and collation.

A training query is `prompt + segment + terminal` with labels on the segment and the terminal token
(prompt and padding are -100): one teacher-forced pass gives both losses (docs/architecture.md, "Training").
The segment is `/embed` or `/augment <teacher answer>`: per dataset with `adaptive` (the paper's pilot split: D^E or
D^A), per query with `query` (`training.query_labels`' labels.jsonl). Twins train the path a row does not take:
with `augmented_twins`, an `/embed` row may also appear as query + `/augment <teacher answer>`; with
`embedded_twins`, an `/augment` row may also appear as query + `/embed`. A twin is trained on L_rep only (no labels),
so both paths' embeddings learn from every dataset while the decision the row teaches is unchanged.
"""
from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import torch

from msolomon import prompts
from msolomon.data import TrainRow
from msolomon.files import read_json
from msolomon.processing import Encoder
from msolomon.settings import option

logger = logging.getLogger(__name__)

LABELINGS = ("noaug", "alwaysaug", "adaptive", "query")
QUERY_LABELS = ("augment", "embed")  # the label of a row in labels.jsonl


@dataclass
class TrainingExample:
    """One training row with its assigned segment."""

    row: TrainRow
    decision: str
    augmentation: str | None = None
    learn_segment: bool = True  # False: a twin, its segment read but not trained (no L_gen)


def load_split(path: str | Path) -> dict[str, list[str]]:
    """The pilot's split file (see training.pilot): {"augment": [...], "embed": [...], ...}."""
    data = read_json(path)
    split = data.get("split", data) if isinstance(data, dict) else None  # also a whole reproduce report
    if not isinstance(split, dict) or "augment" not in split or "embed" not in split:
        raise ValueError(f"{path}: a split file needs {{'augment': [...], 'embed': [...]}}")
    return {"augment": list(split["augment"]), "embed": list(split["embed"])}


def augmented_twins_problem(share: float, labeling: str = "adaptive") -> str | None:
    """What is wrong with an augmented-twin share for a labeling, or None (one rule for the API and both commands)."""
    if not 0.0 <= share <= 1.0:
        return f"--augmented-twins {share}: a share of the /embed rows, between 0 and 1"
    if share and labeling not in ("adaptive", "query"):
        return f"--augmented-twins is for --labeling adaptive or query (M-Solomon): {labeling!r} has no /embed rows"
    return None


def embedded_twins_problem(share: float, labeling: str = "query") -> str | None:
    """What is wrong with an embedded-twin share for a labeling, or None."""
    if not 0.0 <= share <= 1.0:
        return f"--embedded-twins {share}: a share of the /augment rows, between 0 and 1"
    if share and labeling == "noaug":
        return "--embedded-twins is for labelings with /augment rows: 'noaug' has none"
    return None


def stable_draw(row_id: str, salt: str = "") -> float:
    """A number in [0, 1) drawn from a row's id: the same in every process and run (hash() is salted per process)."""
    digest = hashlib.blake2b((salt + row_id).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2 ** 64


def twin_chosen(row_id: str, share: float) -> bool:
    """Whether a row gets a twin: a stable draw from its id (the same rows in every process)."""
    return stable_draw(row_id) < share


def fold_of(row_id: str, folds: int) -> int:
    """The cross-fitting fold (0 .. folds-1) a training row belongs to: a stable draw from its id, independent of
    `twin_chosen`'s draw."""
    return min(int(stable_draw(row_id, salt="fold:") * folds), folds - 1)


def load_query_labels(path: str | Path) -> dict[str, str]:
    """labels.jsonl (training.query_labels): row id -> "augment" | "embed". A malformed line names the file and line."""
    from msolomon.files import read_jsonl

    if not Path(path).is_file():
        raise ValueError(f"{path}: no such labels file (make one with python -m training.query_labels)")
    labels: dict[str, str] = {}
    for n, rec in enumerate(read_jsonl(path, strict=True), 1):
        if not isinstance(rec, dict) or not isinstance(rec.get("id"), str) or rec.get("label") not in QUERY_LABELS:
            raise ValueError(f"{path}: label record {n} needs a string 'id' and a 'label' of {QUERY_LABELS}")
        labels[rec["id"]] = rec["label"]
    if not labels:
        raise ValueError(f"{path}: no labels")
    return labels


def assign_labels(rows: Sequence[TrainRow], labeling: str, augmentations: Mapping[str, str] | None = None,
                  split: Mapping[str, Sequence[str]] | None = None, augmented_twins: float = 0.0,
                  embedded_twins: float = 0.0, labels: Mapping[str, str] | None = None) -> list[TrainingExample]:
    """Attach a segment to each row. Rows that should augment but have no usable teacher answer are left out
    (and counted in the log), never trained on an empty augmentation. `augmented_twins` (adaptive and query
    labelings): the share of `/embed` rows with a teacher answer also trained as an augmented twin (L_rep only);
    `embedded_twins`: the share of `/augment` rows also trained as an `/embed` twin (L_rep only). `labels` (query
    labeling): row id -> "augment" | "embed", every row needs one."""
    if labeling not in LABELINGS:
        raise ValueError(f"labeling must be one of {LABELINGS}, got {labeling!r}")
    problem = augmented_twins_problem(augmented_twins, labeling) or embedded_twins_problem(embedded_twins, labeling)
    if problem:
        raise ValueError(problem)
    augmentations = augmentations or {}
    if labeling == "adaptive":
        if split is None:
            raise ValueError("labeling 'adaptive' needs the pilot's split (--split FILE)")
        augment_sets = set(split["augment"])
        unknown = {r.dataset for r in rows} - augment_sets - set(split["embed"])
        if unknown:
            raise ValueError(f"datasets missing from the split file: {sorted(unknown)}")
    if labeling == "query":
        if labels is None:
            raise ValueError("labeling 'query' needs per-query labels (--labels FILE, from training.query_labels)")
        unlabelled = [r.id for r in rows if r.id not in labels]
        if unlabelled:
            raise ValueError(f"{len(unlabelled)} of {len(rows)} training rows have no label in the labels file (e.g. "
                             f"{unlabelled[0]!r}): it was made for other training data")

    def wants_augment(row: TrainRow) -> bool:
        if labeling == "query":
            return labels[row.id] == "augment"  # type: ignore[index]
        return labeling == "alwaysaug" or (labeling == "adaptive" and row.dataset in augment_sets)

    examples, missing = [], Counter()
    for row in rows:
        text = augmentations.get(row.id)
        if not wants_augment(row):
            examples.append(TrainingExample(row, prompts.EMBED))
            if text and augmented_twins and twin_chosen(row.id, augmented_twins):
                examples.append(TrainingExample(row, prompts.AUGMENT, text, learn_segment=False))
            continue
        if not text:
            missing[row.dataset] += 1
            continue
        examples.append(TrainingExample(row, prompts.AUGMENT, text))
        if embedded_twins and twin_chosen(row.id, embedded_twins):
            examples.append(TrainingExample(row, prompts.EMBED, learn_segment=False))
    if missing:
        logger.warning("left out %d rows with no teacher augmentation: %s", sum(missing.values()), dict(missing))
    return examples


@dataclass
class CollatorSettings:
    """How examples become batches."""

    max_segment_tokens: int = option(48, "teacher-answer tokens kept in a training segment")
    padding_side: str = option("right", "where batches are padded", choices=("right", "left"))
    use_negatives: bool = option(True, "encode the rows' hard negatives as extra targets")
    length_chunks: int = option(4, "run each batch (queries, targets, replayed or pretraining rows) in this many "
                                   "sub-batches of rows of similar length: less padding to compute, the same losses")


def target_keys(examples: Sequence[TrainingExample], use_negatives: bool = True) -> torch.Tensor:
    """A content key per target (positives, then negatives): equal keys mark the same candidate, so a
    query is not pushed away from another copy of its own positive (e.g. a shared class label)."""
    def key(c) -> int:  # stable across processes (Python's hash() is salted per process)
        text = f"{c.text}\x00{c.image if c.image is not None else ''}".encode()
        return int.from_bytes(hashlib.blake2b(text, digest_size=7).digest(), "big")

    keys = [key(ex.row.positive) for ex in examples]
    if use_negatives:  # exactly the targets the collator encoded
        keys += [key(ex.row.negative) for ex in examples if ex.row.negative is not None]
    return torch.tensor(keys, dtype=torch.long)


class Collator:
    """Encodes examples into a query batch (with labels) and a target batch (positives, then hard negatives)."""

    def __init__(self, encoder: Encoder, settings: CollatorSettings | None = None):
        self.encoder = encoder
        self.settings = settings or CollatorSettings()

    def __call__(self, examples: Sequence[TrainingExample]) -> dict:
        enc = self.encoder
        s = self.settings
        queries = [enc.encode_query_with_segment(ex.row.query, ex.decision, ex.augmentation, s.max_segment_tokens)
                   for ex in examples]
        queries = [q if ex.learn_segment else replace(q, labels=[-100] * len(q.labels))
                   for q, ex in zip(queries, examples)]
        targets = [enc.encode_candidate(ex.row.positive) for ex in examples]
        negatives = [enc.encode_candidate(ex.row.negative) for ex in examples
                     if s.use_negatives and ex.row.negative is not None]
        return {
            "query": enc.collate_by_length(queries, s.padding_side, s.length_chunks),
            "target": enc.collate_by_length(targets + negatives, s.padding_side, s.length_chunks),
            "target_keys": target_keys(examples, s.use_negatives),
            "n_augment": sum(ex.decision == prompts.AUGMENT and ex.learn_segment for ex in examples),
        }
