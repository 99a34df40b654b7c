"""What every world builder shares: the item it returns, the context it gets, its random streams, and the small
helpers for answers and candidate lists. Builders draw all randomness from `Ctx.rng`, so a seed fixes every byte.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from msolomon import prompts
from msolomon.worlds.canvas import BACKGROUNDS, save_png

INSTR = prompts.MMEB_INSTRUCTIONS
TARGET_IMAGE = INSTR["target_image"]
TARGET_CROP = INSTR["target_cropped"]


def rng_for(seed: int, *keys: object) -> random.Random:
    """An independent random stream per (seed, keys): adding a dataset never changes another one's data."""
    digest = hashlib.sha256(":".join(str(k) for k in (seed, *keys)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


# --- what a builder returns ------------------------------------------------------------------------------------

Target = tuple[str, str]  # (text, image path relative to DIR); "" = none


@dataclass
class Item:
    """One query with its ground truth: the positive, an optional hard negative, candidates (test), oracle facts."""

    qry_text: str
    qry_img: str
    pos: Target
    neg: Target | None = None
    cands: list[Target] | None = None
    answer: str = ""
    wrong: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)


class Store:
    """Writes each image once, under images/NAME/, and hands back its path relative to DIR."""

    def __init__(self, root: Path, name: str) -> None:
        self.root, self.name = root, name
        self.written: set[str] = set()

    def put(self, key: str, make: Callable[[], Any]) -> str:
        rel = f"images/{self.name}/{key}.png"
        if rel not in self.written:
            save_png(make(), self.root / rel)
            self.written.add(rel)
        return rel


class WorldSettings(Protocol):
    """What a builder reads of a benchmark's settings (`msolomon.data.minimmeb.MiniMMEBSettings` has both): the
    worlds know nothing of the benchmark built on them, so nothing here imports it."""

    seed: int
    n_candidates: int


@dataclass
class Ctx:
    """What a dataset builder gets: the settings, its image store and its own random stream."""

    settings: WorldSettings
    name: str
    split: str
    store: Store
    rng: random.Random
    # queries built by earlier splits of the same dataset, for builders that must not repeat one across splits
    taken: set = field(default_factory=set)

    @property
    def n_candidates(self) -> int:
        return self.settings.n_candidates

    @property
    def is_eval(self) -> bool:
        """Validation and test rows get candidate lists; training rows get a positive and a hard negative."""
        return self.split in ("val", "test")

    @property
    def pool_split(self) -> str:
        """Which half of a real-image pool (digits) a split draws from: validation is carved from train."""
        return "test" if self.split == "test" else "train"


# --- small text helpers ----------------------------------------------------------------------------------------


def join_words(parts: Sequence[str]) -> str:
    parts = list(parts)
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def plural(word: str, n: int) -> str:
    return word if n == 1 else word + "es" if word.endswith(("s", "x")) else word + "s"


def same_words(a: str, b: str) -> bool:
    """Two answers that only list the same things in another order say the same thing."""
    def bag(t: str) -> list[str]:
        return sorted(t.lower().replace(",", " ").replace(".", " ").replace(" and ", " ").split())
    return bag(a) == bag(b)


def shuffled_candidates(pos: Target, hard: Sequence[Target], pool: Sequence[Target], n: int,
                        rng: random.Random) -> list[Target]:
    """Candidate 0 the positive, then hard negatives first, then random pool items, n in all (fewer if the pool is
    smaller); everything after the positive in random order. Duplicates of the positive never appear."""
    chosen: list[Target] = []
    seen = {pos}
    hard = list(dict.fromkeys(hard))
    rng.shuffle(hard)
    for t in hard:
        if len(chosen) >= n - 1:
            break
        if t not in seen:
            seen.add(t)
            chosen.append(t)
    if len(chosen) < n - 1:
        rest = [t for t in dict.fromkeys(pool) if t not in seen]
        chosen += rng.sample(rest, min(len(rest), n - 1 - len(chosen)))
    rng.shuffle(chosen)
    return [pos] + chosen


def label_candidates(pos: str, labels: Sequence[str], rng: random.Random) -> list[Target]:
    """Classification / VQA candidates: the whole label (answer) set, the positive first."""
    rest = [lab for lab in labels if lab != pos]
    rng.shuffle(rest)
    return [(pos, "")] + [(lab, "") for lab in rest]


def pick_wrong(rng: random.Random, options: Sequence[str], right: str, k: int = 3) -> list[str]:
    opts = [o for o in dict.fromkeys(options) if o != right]
    return rng.sample(opts, min(k, len(opts)))


def random_background(rng: random.Random) -> str:
    return rng.choice(list(BACKGROUNDS))
