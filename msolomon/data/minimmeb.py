"""MiniMMEB: an MMEB-format benchmark generated offline and deterministically from a seed.

    python -m msolomon.data.minimmeb --out DIR [--seed N] [--scale tiny|small|full] [--n-candidates K]

It mirrors MMEB's structure at a scale a CPU can train on: the four meta-tasks (classification, VQA, retrieval,
grounding), in-distribution datasets with train and test splits and out-of-distribution datasets with a test split
only. Images are scikit-learn's real handwritten digits, crops of the sample photos that ship inside pip packages,
and drawn scenes, charts, documents, signs and garments (`drawing.py`). Every dataset also writes the ground truth an
oracle teacher needs (`oracle.py`), so teacher synthesis runs end to end without a 72B model.

Layout (image paths in rows are relative to DIR, so DIR is the image root):

    DIR/minimmeb.json                 meta: seed, scale, and per dataset its meta-task, OOD flag, splits, candidates
    DIR/train/NAME/original.jsonl     MMEB-train rows + "id"            (in-distribution datasets only)
    DIR/train/NAME/oracle.jsonl       per id: answer, plausible wrong answers, reasoning facts
    DIR/test/NAME/test.jsonl          MMEB-eval rows (candidate 0 is the positive)
    DIR/test/NAME/oracle.jsonl        the same ground truth for test queries, keyed "NAME:index"
    DIR/images/NAME/...png

The same seed gives byte-identical files; another seed gives different data with the same structure. Nothing here
decides which datasets augmentation helps: that is what the pilot study measures.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from msolomon import prompts
from msolomon.data import META_TASKS
from msolomon.data import drawing as D

logger = logging.getLogger(__name__)

BENCHMARK_NAME = "MiniMMEB"
VERSION = 1
META_FILE = "minimmeb.json"
INSTR = prompts.MMEB_INSTRUCTIONS
TARGET_IMAGE = INSTR["target_image"]
TARGET_CROP = INSTR["target_cropped"]


# --- settings --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """Rows per dataset at one scale: tiny for tests, small for CPU training in minutes, full for real runs."""

    name: str
    n_train: int  # per in-distribution dataset
    n_test: int  # per dataset
    n_candidates: int  # retrieval and grounding candidates per query


SCALES: dict[str, Scale] = {
    "tiny": Scale("tiny", n_train=40, n_test=20, n_candidates=20),
    "small": Scale("small", n_train=800, n_test=100, n_candidates=100),
    "full": Scale("full", n_train=4000, n_test=1000, n_candidates=100),
}


@dataclass(frozen=True)
class Settings:
    """Everything that determines the generated files."""

    seed: int = 0
    scale: str = "small"
    n_train: int = 800
    n_test: int = 100
    n_candidates: int = 100
    datasets: tuple[str, ...] | None = None  # a subset of DATASETS; None = all

    @classmethod
    def make(cls, seed: int = 0, scale: str = "small", n_candidates: int | None = None, n_train: int | None = None,
             n_test: int | None = None, datasets: Sequence[str] | None = None) -> "Settings":
        if scale not in SCALES:
            raise ValueError(f"unknown scale {scale!r}; expected one of {sorted(SCALES)}")
        sc = SCALES[scale]
        s = cls(seed=int(seed), scale=scale, n_train=sc.n_train if n_train is None else int(n_train),
                n_test=sc.n_test if n_test is None else int(n_test),
                n_candidates=sc.n_candidates if n_candidates is None else int(n_candidates),
                datasets=tuple(datasets) if datasets else None)
        if s.n_train < 1 or s.n_test < 1 or s.n_candidates < 2:
            raise ValueError("n_train and n_test must be >= 1 and n_candidates >= 2")
        unknown = sorted(set(s.datasets or ()) - set(DATASETS))
        if unknown:
            raise ValueError(f"unknown MiniMMEB dataset(s) {unknown}; expected some of {list(DATASETS)}")
        return s


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
            D.save_png(make(), self.root / rel)
            self.written.add(rel)
        return rel


@dataclass
class Ctx:
    """What a dataset builder gets: the settings, its image store and its own random stream."""

    settings: Settings
    name: str
    split: str
    store: Store
    rng: random.Random

    @property
    def n_candidates(self) -> int:
        return self.settings.n_candidates


# --- small text helpers ----------------------------------------------------------------------------------------

POS_PHRASE = ("at the top left", "at the top", "at the top right", "on the left", "in the center", "on the right",
              "at the bottom left", "at the bottom", "at the bottom right")


def join_words(parts: Sequence[str]) -> str:
    parts = list(parts)
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def plural(word: str, n: int) -> str:
    return word if n == 1 else word + "es" if word.endswith(("s", "x")) else word + "s"


def scene_caption(scene: D.Scene, positions: bool = True) -> str:
    """'A large red circle at the top left and a small blue star in the center.'"""
    objs = sorted(scene.objects, key=lambda o: o.cell)
    parts = [article(o.describe()) + (" " + POS_PHRASE[o.cell] if positions else "") for o in objs]
    return cap(join_words(parts)) + "."


SUMMARY_LEVELS = ((True, True), (False, True), (True, False))  # (sizes, places): most to least detailed


def scene_summary(prefix: str, scene: D.Scene, limit: int = 18, focus: D.Obj | None = None,
                  level: int | None = None) -> str:
    """A short answer-style description of a scene: the most detail that fits in about `limit` words.

    Levels: every attribute; without sizes; without places (but `focus`, if given, keeps its place).
    """
    objs = sorted(scene.objects, key=lambda o: (o is not focus, o.cell))
    text = ""
    for k in ([level] if level is not None else range(len(SUMMARY_LEVELS))):
        with_size, with_pos = SUMMARY_LEVELS[k]
        parts = [article(o.describe(with_size)) + (" " + POS_PHRASE[o.cell] if with_pos or o is focus else "")
                 for o in objs]
        text = f"{prefix} {join_words(parts)}." if prefix else cap(join_words(parts)) + "."
        if len(text.split()) <= limit:
            break
    return text


def distinct_summaries(prefix: str, scene: D.Scene, others: Sequence[D.Scene],
                       limit: int = 18) -> tuple[str, list[str]]:
    """The answer for `scene` and wrong answers for `others`, at the shortest level that still tells them apart."""
    options = []
    for k in range(len(SUMMARY_LEVELS)):
        ans = scene_summary(prefix, scene, level=k)
        wrong = [scene_summary(prefix, o, level=k) for o in others]
        if not any(_same_words(ans, w) for w in wrong):
            n = len(ans.split())
            options.append((n > limit, k if n <= limit else n, ans, wrong))  # fits: most detail; else: shortest
    if not options:  # full detail always tells distinct scenes apart; this is only a guard
        return scene_summary(prefix, scene, level=0), [scene_summary(prefix, o, level=0) for o in others]
    _, _, ans, wrong = min(options)
    return ans, wrong


def _same_words(a: str, b: str) -> bool:
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


# --- digits (scikit-learn's real handwritten digits) -----------------------------------------------------------


_DIGITS_CACHE: dict[str, Any] = {}


def load_digits() -> tuple[Any, Any]:
    """scikit-learn's digits (images 8x8 with values 0..16, targets), read from the CSV inside the wheel.

    Same arrays as `sklearn.datasets.load_digits()`, without importing scikit-learn (a second and a half).
    """
    import gzip

    import numpy as np

    path = D.package_dir("sklearn") / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, "rt") as fh:
        data = np.loadtxt(fh, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def digit_split(seed: int) -> dict[str, list[int]]:
    """Indices of scikit-learn's 1,797 digits split 70/30 per class into train and test, so test images are unseen."""
    if "data" not in _DIGITS_CACHE:
        _DIGITS_CACHE["data"] = load_digits()
    target = _DIGITS_CACHE["data"][1]
    rng = rng_for(seed, "digits-split")
    split: dict[str, list[int]] = {"train": [], "test": []}
    for cls in range(10):
        idx = [i for i in range(len(target)) if int(target[i]) == cls]
        rng.shuffle(idx)
        cut = round(len(idx) * 0.7)
        split["train"] += idx[:cut]
        split["test"] += idx[cut:]
    return split


def digit_pools(seed: int) -> dict[str, list[tuple[Any, int]]]:
    """(8x8 image, class) per split, from `digit_split`."""
    images, target = _DIGITS_CACHE["data"] if "data" in _DIGITS_CACHE else load_digits()
    return {k: [(images[i], int(target[i])) for i in idx] for k, idx in digit_split(seed).items()}


CONFUSABLE = {0: [6, 8, 9], 1: [7, 4], 2: [7, 3], 3: [8, 5, 9], 4: [9, 1], 5: [6, 3, 8], 6: [5, 0, 8], 7: [1, 2],
              8: [3, 0, 9], 9: [4, 8, 7]}


def _digit_jitter(rng: random.Random) -> dict:
    return {"height": rng.randint(36, 46), "angle": rng.uniform(-12, 12), "dx": rng.randint(-4, 4),
            "dy": rng.randint(-4, 4)}


def build_digits_cls(ctx: Ctx, n: int) -> list[Item]:
    """ImageNet-1K analogue: a real handwritten digit; candidates are the ten class names."""
    rng, pool = ctx.rng, digit_pools(ctx.settings.seed)[ctx.split]
    labels = list(D.DIGIT_WORDS)
    items = []
    for i in range(n):
        img8, d = pool[rng.randrange(len(pool))]
        jit = _digit_jitter(rng)
        path = ctx.store.put(f"{ctx.split}/{i:05d}", lambda: D.render_handwritten(img8, **jit))
        word = labels[d]
        neg = labels[rng.choice(CONFUSABLE[d])]
        items.append(Item(
            INSTR["classification"], path, (word, ""), (neg, ""), label_candidates(word, labels, rng),
            answer=f"This is a handwritten digit {word}.",
            wrong=[f"This is a handwritten digit {labels[c]}." for c in CONFUSABLE[d]],
            facts=["The image shows one handwritten numeral in white ink on black.",
                   f"The strokes form the digit {d}."]))
    return items


def build_digits_vqa(ctx: Ctx, n: int) -> list[Item]:
    """OK-VQA / reasoning analogue: arithmetic and order questions about real handwritten digits."""
    rng, pool = ctx.rng, digit_pools(ctx.settings.seed)[ctx.split]
    answers = [str(k) for k in range(19)] + ["even", "odd"]
    by_cls: dict[int, list] = {}
    for img8, d in pool:
        by_cls.setdefault(d, []).append(img8)
    items = []
    kinds = ("sum", "larger", "difference", "after", "before", "parity")
    for i in range(n):
        kind = kinds[rng.randrange(len(kinds))]
        if kind in ("sum", "larger", "difference"):
            a, b = rng.randrange(10), rng.randrange(10)
            while kind != "sum" and a == b:
                b = rng.randrange(10)
            ia, ib = rng.choice(by_cls[a]), rng.choice(by_cls[b])
            params = {"height": rng.randint(32, 40), "angles": (rng.uniform(-10, 10), rng.uniform(-10, 10)),
                      "offsets": tuple(rng.randint(-2, 2) for _ in range(4))}
            path = ctx.store.put(f"{ctx.split}/{i:05d}", lambda: D.render_handwritten_pair(ia, ib, **params))
            seen = f"The image shows two handwritten digits: {a} on the left and {b} on the right."
            if kind == "sum":
                q, val = "What is the sum of the two digits?", a + b
                ans = f"The digits are {a} and {b}, so the sum is {val}."
                misread = [(a, c) for c in CONFUSABLE[b]] + [(c, b) for c in CONFUSABLE[a]]
                wrong = [f"The digits are {x} and {y}, so the sum is {x + y}." for x, y in misread[:3]]
                step = f"{a} + {b} = {val}."
            elif kind == "larger":
                q, val = "Which of the two digits is larger?", max(a, b)
                ans = f"The digits are {a} and {b}; the larger one is {val}."
                wrong = [f"The digits are {a} and {b}; the larger one is {min(a, b)}."]
                step = f"{val} is greater than {min(a, b)}."
            else:
                q, val = "What is the larger digit minus the smaller digit?", abs(a - b)
                ans = f"The digits are {a} and {b}, so the difference is {val}."
                wrong = [f"The digits are {a} and {b}, so the difference is {x}." for x in (val - 1, val + 1, a + b)
                         if 0 <= x <= 18 and x != val]
                step = f"{max(a, b)} - {min(a, b)} = {val}."
            facts = [seen, step]
        else:
            lo, hi = (1, 9) if kind == "before" else (0, 9)
            d = rng.randint(lo, hi)
            img8 = rng.choice(by_cls[d])
            jit = _digit_jitter(rng)
            path = ctx.store.put(f"{ctx.split}/{i:05d}", lambda: D.render_handwritten(img8, **jit))
            if kind == "after":
                q, val = "What number comes after the digit shown?", d + 1
                ans = f"The digit is {d}, and the number after it is {val}."
                wrong = [f"The digit is {c}, and the number after it is {c + 1}." for c in CONFUSABLE[d]]
                step = f"{d} + 1 = {val}."
            elif kind == "before":
                q, val = "What number comes before the digit shown?", d - 1
                ans = f"The digit is {d}, and the number before it is {val}."
                wrong = [f"The digit is {c}, and the number before it is {c - 1}." for c in CONFUSABLE[d] if c > 0]
                step = f"{d} - 1 = {val}."
            else:
                q, val = "Is the digit shown even or odd?", "even" if d % 2 == 0 else "odd"
                ans = f"The digit is {d}, which is {val}."
                wrong = [f"The digit is {c}, which is {'even' if c % 2 == 0 else 'odd'}." for c in CONFUSABLE[d]
                         if c % 2 != d % 2] or [f"The digit is {d}, which is {'odd' if val == 'even' else 'even'}."]
                step = f"{d} is {'divisible' if val == 'even' else 'not divisible'} by two."
            facts = [f"The image shows one handwritten digit, a {d}.", step]
        val = str(val)
        neg = rng.choice([a_ for a_ in answers if a_ != val and (a_.isdigit() == val.isdigit())])
        items.append(Item(INSTR["vqa"].format(question=q), path, (val, ""), (neg, ""),
                          label_candidates(val, answers, rng), answer=ans, wrong=wrong or [ans.replace(val, neg)],
                          facts=facts))
    return items


# --- drawn scenes ----------------------------------------------------------------------------------------------


def sample_objects(rng: random.Random, k: int, distinct_shapes: bool = False, distinct_colours: bool = False,
                   cells: Sequence[int] | None = None) -> tuple[D.Obj, ...]:
    cells = list(cells) if cells is not None else rng.sample(range(9), k)
    shapes = rng.sample(D.SHAPES, k) if distinct_shapes else [rng.choice(D.SHAPES) for _ in range(k)]
    names = list(D.COLOURS)
    colours = rng.sample(names, k) if distinct_colours else [rng.choice(names) for _ in range(k)]
    return tuple(D.Obj(shapes[j], colours[j], rng.choice(D.SIZES), cells[j], rng.randint(-2, 2), rng.randint(-2, 2))
                 for j in range(k))


def random_background(rng: random.Random) -> str:
    return rng.choice(list(D.BACKGROUNDS))


def scene_key(scene: D.Scene) -> tuple:
    """What a caption can tell apart: objects and their attributes (not jitter or background)."""
    return tuple(sorted((o.shape, o.colour, o.size, o.cell) for o in scene.objects))


def replace_obj(scene: D.Scene, j: int, **changes: Any) -> D.Scene:
    objs = list(scene.objects)
    o = objs[j]
    objs[j] = D.Obj(**{**asdict(o), **changes})
    return D.Scene(tuple(objs), scene.background)


def one_attribute_variant(rng: random.Random, scene: D.Scene, kind: str | None = None) -> D.Scene:
    """The same scene with one attribute of one object changed: the hard negative of MMEB-style retrieval."""
    j = rng.randrange(len(scene.objects))
    o = scene.objects[j]
    kind = kind or rng.choice(("colour", "shape", "size", "position"))
    used = {x.cell for x in scene.objects}
    if kind == "colour":
        return replace_obj(scene, j, colour=rng.choice([c for c in D.COLOURS if c != o.colour]))
    if kind == "shape":
        return replace_obj(scene, j, shape=rng.choice([s for s in D.SHAPES if s != o.shape]))
    if kind == "size":
        return replace_obj(scene, j, size="small" if o.size == "large" else "large")
    free = [c for c in range(9) if c not in used]
    return replace_obj(scene, j, cell=rng.choice(free)) if free else replace_obj(
        scene, j, size="small" if o.size == "large" else "large")


def scene_family(rng: random.Random, taken: set, n_objects: tuple[int, int] = (2, 3), size: int = 4) -> list[D.Scene]:
    """A base scene and one-attribute variants of it, all with distinct captions (also across `taken`)."""
    while True:
        k = rng.randint(*n_objects)
        base = D.Scene(sample_objects(rng, k, distinct_colours=True), random_background(rng))
        fam, keys = [base], {scene_key(base)}
        tries = 0
        while len(fam) < size and tries < 40:
            tries += 1
            v = one_attribute_variant(rng, base)
            if scene_key(v) not in keys and scene_key(v) not in taken:
                fam.append(v)
                keys.add(scene_key(v))
        if len(fam) == size and not (keys & taken):
            taken |= keys
            return fam


def _scene_retrieval(ctx: Ctx, n: int, direction: str) -> list[Item]:
    rng = ctx.rng
    fam_size = 4
    n_gallery = n if ctx.split == "train" else max(n, ctx.n_candidates)
    taken: set = set()
    families = [scene_family(rng, taken) for _ in range(-(-n_gallery // fam_size))]
    members = [(f, m) for f in range(len(families)) for m in range(fam_size)]
    def img(fm: tuple[int, int]) -> str:  # written on first use: i2t test needs only the query images
        return ctx.store.put(f"{ctx.split}/{fm[0]:05d}_{fm[1]}", lambda: D.render_scene(families[fm[0]][fm[1]]))

    cap_of = {fm: scene_caption(families[fm[0]][fm[1]]) for fm in members}
    order = members[:]
    rng.shuffle(order)
    items = []
    for f, m in order[:n]:
        scene = families[f][m]
        sibs = [(f, k) for k in range(fam_size) if k != m]
        if direction == "t2i":
            target = lambda fm: (TARGET_IMAGE, img(fm))  # noqa: E731
            qry, qimg = INSTR["t2i"].format(caption=cap_of[(f, m)]), ""
            answer, wrong = distinct_summaries("", scene,
                                               [families[f][k] for k in range(fam_size) if k != m])
            facts = [f"The caption describes {cap_of[(f, m)][0].lower()}{cap_of[(f, m)][1:-1]}.",
                     "A matching image must show exactly these objects in these places."]
        else:
            target = lambda fm: (cap_of[fm], "")  # noqa: E731
            qry, qimg = INSTR["i2t"], img((f, m))
            answer, wrong = distinct_summaries("", scene,
                                               [families[f][k] for k in range(fam_size) if k != m])
            facts = [f"I see {scene_caption(scene, positions=False)[0].lower()}"
                     f"{scene_caption(scene, positions=False)[1:-1]} on a {scene.background} background.",
                     f"Their places: {'; '.join(f'{o.colour} {o.shape} {POS_PHRASE[o.cell]}' for o in scene.objects)}."]
        pos, neg = target((f, m)), target(rng.choice(sibs))
        cands = None
        if ctx.split == "test":
            cands = shuffled_candidates(pos, [target(s) for s in sibs], [target(x) for x in members],
                                        ctx.n_candidates, rng)
        items.append(Item(qry, qimg, pos, neg, cands, answer=answer, wrong=wrong, facts=facts))
    return items


def build_scenes_t2i(ctx: Ctx, n: int) -> list[Item]:
    """MSCOCO_t2i analogue: a caption that fully specifies a drawn scene; candidates are scene images."""
    return _scene_retrieval(ctx, n, "t2i")


def build_scenes_i2t(ctx: Ctx, n: int) -> list[Item]:
    """MSCOCO_i2t analogue: a drawn scene; candidates are captions."""
    return _scene_retrieval(ctx, n, "i2t")


def build_shapes_cls(ctx: Ctx, n: int) -> list[Item]:
    """VOC2007 analogue: one drawn object; candidates are all 48 colour-shape labels."""
    rng = ctx.rng
    labels = [f"{c} {s}" for c in D.COLOURS for s in D.SHAPES]
    items = []
    for i in range(n):
        o = D.Obj(rng.choice(D.SHAPES), rng.choice(list(D.COLOURS)), rng.choice(D.SIZES), rng.randrange(9),
                  rng.randint(-3, 3), rng.randint(-3, 3))
        bg = random_background(rng)
        path = ctx.store.put(f"{ctx.split}/{i:05d}", lambda: D.render_scene(D.Scene((o,), bg)))
        label = f"{o.colour} {o.shape}"
        near = [f"{c} {o.shape}" for c in D.COLOURS if c != o.colour] + [f"{o.colour} {s}" for s in D.SHAPES
                                                                         if s != o.shape]
        wrong = rng.sample(near, 3)
        items.append(Item(INSTR["cls_object"], path, (label, ""), (rng.choice(near), ""),
                          label_candidates(label, labels, rng), answer=f"This is a {label}.",
                          wrong=[f"This is a {w}." for w in wrong],
                          facts=[f"The image shows one {o.size} {o.shape} {POS_PHRASE[o.cell]} on a {bg} background.",
                                 f"It is filled with {o.colour}."]))
    return items


VQA_SCENE_ANSWERS = [str(k) for k in range(7)] + list(D.COLOURS) + list(D.SHAPES) + list(D.POSITIONS) + \
    list(D.SIZES) + ["yes", "no"]


def build_scenes_vqa(ctx: Ctx, n: int) -> list[Item]:
    """Visual7W / GQA analogue: counting, attribute, position and existence questions about a drawn scene."""
    rng = ctx.rng
    items = []
    kinds = ("count", "colour", "shape", "position", "size", "exists")
    for i in range(n):
        kind = kinds[rng.randrange(len(kinds))]
        k = rng.randint(2, 6)
        if kind == "count":  # repeat a shape so counts above one are common
            objs = list(sample_objects(rng, k))
            focus = rng.choice(D.SHAPES)
            for j in rng.sample(range(k), rng.randint(0, k)):
                objs[j] = D.Obj(**{**asdict(objs[j]), "shape": focus})
            objs = tuple(objs)
        else:
            objs = sample_objects(rng, k, distinct_shapes=(kind == "colour"), distinct_colours=(kind != "colour"))
        scene = D.Scene(objs, random_background(rng))
        path = ctx.store.put(f"{ctx.split}/{i:05d}", lambda: D.render_scene(scene))
        o = rng.choice(objs)
        what = f"{o.colour} {o.shape}"
        if kind == "count":
            cnt = sum(x.shape == focus for x in objs)
            q, val = f"How many {plural(focus, 2)} are there?", str(cnt)
            say = (lambda c: f"There {'is' if c == 1 else 'are'} {c if c else 'no'} {plural(focus, c)}.")
            ans, wrong = say(cnt), [say(c) for c in (cnt - 1, cnt + 1, cnt + 2) if c >= 0]
            step = f"Counting the {plural(focus, 2)} gives {cnt}."
        elif kind == "colour":
            q, val = f"What colour is the {o.shape}?", o.colour
            ans = f"The {o.shape} is {o.colour}."
            wrong = [f"The {o.shape} is {c}." for c in pick_wrong(rng, [x.colour for x in objs] + list(D.COLOURS),
                                                                   o.colour)]
            step = f"The only {o.shape} is filled with {o.colour}."
        elif kind == "shape":
            q, val = f"What shape is the {o.colour} object?", o.shape
            ans = f"The {o.colour} object is {article(o.shape)}."
            wrong = [f"The {o.colour} object is {article(s)}." for s in pick_wrong(rng, D.SHAPES, o.shape)]
            step = f"The {o.colour} object has the outline of {article(o.shape)}."
        elif kind == "position":
            q, val = f"Where is the {what}?", D.POSITIONS[o.cell]
            ans = f"The {what} is {POS_PHRASE[o.cell]}."
            near = [c for c in range(9) if c != o.cell and abs(c // 3 - o.row) + abs(c % 3 - o.col) == 1]
            wrong = [f"The {what} is {POS_PHRASE[c]}." for c in near]
            step = f"The {what} is in row {o.row + 1}, column {o.col + 1} of the picture."
        elif kind == "size":
            q, val = f"Is the {what} small or large?", o.size
            ans = f"The {what} is {o.size}."
            wrong = [f"The {what} is {'small' if o.size == 'large' else 'large'}."]
            step = f"The {what} fills {'most' if o.size == 'large' else 'less than half'} of its part of the picture."
        else:
            present = rng.random() < 0.5
            if present:
                ask = what
            else:
                ask = f"{rng.choice([c for c in D.COLOURS if c not in {x.colour for x in objs}])} {o.shape}"
            q, val = f"Is there {article(ask)}?", "yes" if present else "no"
            ans = f"Yes, there is {article(ask)}." if present else f"No, there is no {ask}."
            wrong = [f"No, there is no {ask}." if present else f"Yes, there is {article(ask)}."]
            step = f"{'One' if present else 'None'} of the objects is {article(ask)}."
        facts = [f"The image shows {scene_caption(scene)[0].lower()}{scene_caption(scene)[1:-1]}.", step]
        neg_pool = {"count": [str(c) for c in range(7)], "colour": list(D.COLOURS), "shape": list(D.SHAPES),
                    "position": list(D.POSITIONS), "size": list(D.SIZES), "exists": ["yes", "no"]}[kind]
        neg = rng.choice([a for a in neg_pool if a != val])
        items.append(Item(INSTR["vqa"].format(question=q), path, (val, ""), (neg, ""),
                          label_candidates(val, VQA_SCENE_ANSWERS, rng), answer=ans, wrong=wrong, facts=facts))
    return items


# --- grounding -------------------------------------------------------------------------------------------------


def _crop_gallery(ctx: Ctx) -> Callable[[str, str, str], Target]:
    """Every (shape, colour, background) crop is one gallery image, written once: 6 x 8 x 3 = 144 candidates."""
    def crop(shape: str, colour: str, bg: str) -> Target:
        return (TARGET_CROP, ctx.store.put(f"crops/{bg}_{colour}_{shape}",
                                           lambda: D.render_crop(shape, colour, bg)))
    return crop


def _all_crops(crop: Callable[[str, str, str], Target]) -> list[Target]:
    return [crop(s, c, b) for b in D.BACKGROUNDS for c in D.COLOURS for s in D.SHAPES]


def build_scenes_ground(ctx: Ctx, n: int) -> list[Item]:
    """MSCOCO grounding analogue: a scene and an object label (the shape); candidates are object crops, so the
    colour has to be read off the image."""
    rng = ctx.rng
    crop = _crop_gallery(ctx)
    pool = _all_crops(crop) if ctx.split == "test" else []
    items = []
    for i in range(n):
        scene = D.Scene(sample_objects(rng, rng.randint(3, 4), distinct_shapes=True, distinct_colours=True),
                        random_background(rng))
        path = ctx.store.put(f"{ctx.split}/{i:05d}", lambda: D.render_scene(scene))
        o = rng.choice(scene.objects)
        bg = scene.background
        pos = crop(o.shape, o.colour, bg)
        others = [crop(x.shape, x.colour, bg) for x in scene.objects if x is not o]
        recolour = [crop(o.shape, c, bg) for c in D.COLOURS if c != o.colour]
        rebg = [crop(o.shape, o.colour, b) for b in D.BACKGROUNDS if b != bg]
        neg = rng.choice(others + recolour[:2])
        cands = shuffled_candidates(pos, others + recolour + rebg, pool, ctx.n_candidates, rng) \
            if ctx.split == "test" else None
        wrong_objs = [x for x in scene.objects if x is not o]
        items.append(Item(
            INSTR["grounding"].format(label=o.shape), path, pos, neg, cands,
            answer=f"The region shows the {o.colour} {o.shape} on a {bg} background.",
            wrong=[f"The region shows the {x.colour} {x.shape} on a {bg} background." for x in wrong_objs[:2]]
            + [f"The region shows the {c} {o.shape} on a {bg} background."
               for c in pick_wrong(rng, D.COLOURS, o.colour, 1)],
            facts=[f"The image shows {scene_caption(scene)[0].lower()}{scene_caption(scene)[1:-1]}.",
                   f"The only {o.shape} is the {o.colour} one {POS_PHRASE[o.cell]}."]))
    return items


def build_ref_scenes(ctx: Ctx, n: int) -> list[Item]:
    """RefCOCO analogue (OOD): a referring expression picks one of two same-shape objects by place or size."""
    rng = ctx.rng
    crop = _crop_gallery(ctx)
    pool = _all_crops(crop)
    items = []
    for i in range(n):
        while True:
            shape = rng.choice(D.SHAPES)
            k = rng.randint(3, 4)
            shapes = [shape, shape] + rng.sample([s for s in D.SHAPES if s != shape], k - 2)
            objs = [D.Obj(**{**asdict(o), "shape": sh})
                    for o, sh in zip(sample_objects(rng, k, distinct_colours=True), shapes)]
            a, b = objs[0], objs[1]
            rel = []
            if a.col != b.col:
                rel += [("on the left", min((a, b), key=lambda x: x.col)),
                        ("on the right", max((a, b), key=lambda x: x.col))]
            if a.row != b.row:
                rel += [("at the top", min((a, b), key=lambda x: x.row)),
                        ("at the bottom", max((a, b), key=lambda x: x.row))]
            if a.size != b.size:
                rel += [("larger", a if a.size == "large" else b), ("smaller", a if a.size == "small" else b)]
            if rel:
                break
        scene = D.Scene(tuple(objs), random_background(rng))
        path = ctx.store.put(f"{ctx.split}/{i:05d}", lambda: D.render_scene(scene))
        phrase, o = rng.choice(rel)
        other = b if o is a else a
        expr = f"the {phrase} {shape}" if phrase in ("larger", "smaller") else f"the {shape} {phrase}"
        bg = scene.background
        pos = crop(shape, o.colour, bg)
        hard = [crop(shape, other.colour, bg)] + [crop(x.shape, x.colour, bg) for x in objs[2:]] + \
            [crop(shape, c, bg) for c in D.COLOURS if c != o.colour]
        items.append(Item(
            INSTR["grounding_ref"].format(expression=expr), path, pos, None,
            shuffled_candidates(pos, hard, pool, ctx.n_candidates, rng),
            answer=f"It is the {o.colour} {shape} {POS_PHRASE[o.cell]}.",
            wrong=[f"It is the {other.colour} {shape} {POS_PHRASE[other.cell]}."],
            facts=[f"There are two {plural(shape, 2)}: a {a.size} {a.colour} one {POS_PHRASE[a.cell]} and a {b.size} "
                   f"{b.colour} one {POS_PHRASE[b.cell]}.", f"{cap(expr)} is the {o.colour} one."]))
    return items


# --- composed image retrieval ----------------------------------------------------------------------------------


def build_shapes_cir(ctx: Ctx, n: int) -> list[Item]:
    """CIRR analogue: a reference scene plus a modification text; the target is the modified scene. Candidates
    include the reference itself and the other modifications of the same reference (one attribute apart)."""
    rng = ctx.rng
    per_family, n_targets = 3, 4
    gallery: list[tuple[int, int]] = []
    families: list[tuple[D.Scene, list[tuple[D.Scene, str]]]] = []
    changed: list[int] = []  # per family, which object the modifications change
    taken: set = set()
    while len(families) * per_family < n or len(gallery) < (ctx.n_candidates if ctx.split == "test" else 0):
        ref = D.Scene(sample_objects(rng, rng.randint(2, 3), distinct_shapes=True, distinct_colours=True),
                      random_background(rng))
        if scene_key(ref) in taken:
            continue
        j = rng.randrange(len(ref.objects))
        o = ref.objects[j]
        kind = rng.choice(("colour", "shape", "position"))
        used_colours = {x.colour for x in ref.objects}
        if kind == "colour":
            vals = rng.sample([c for c in D.COLOURS if c not in used_colours], n_targets)
            tg = [(replace_obj(ref, j, colour=v), f"make the {o.shape} {v}") for v in vals]
        elif kind == "shape":
            vals = rng.sample([s for s in D.SHAPES if s != o.shape], n_targets)
            tg = [(replace_obj(ref, j, shape=v), f"turn the {o.colour} {o.shape} into {article(v)}") for v in vals]
        else:
            vals = rng.sample([c for c in range(9) if c not in {x.cell for x in ref.objects}], n_targets)
            tg = [(replace_obj(ref, j, cell=v), f"move the {o.colour} {o.shape} to the {D.POSITIONS[v]}")
                  for v in vals]
        keys = {scene_key(ref)} | {scene_key(t) for t, _ in tg}
        if len(keys) < n_targets + 1 or keys & taken:
            continue
        taken |= keys
        f = len(families)
        families.append((ref, tg))
        changed.append(j)
        gallery += [(f, m) for m in range(n_targets + 1)]  # m = 0 the reference, 1.. the targets

    def scene_of(fm: tuple[int, int]) -> D.Scene:
        return families[fm[0]][0] if fm[1] == 0 else families[fm[0]][1][fm[1] - 1][0]

    def target(fm: tuple[int, int]) -> Target:
        return (TARGET_IMAGE, ctx.store.put(f"{ctx.split}/{fm[0]:05d}_{fm[1]}", lambda: D.render_scene(scene_of(fm))))

    queries = [(f, m) for f in range(len(families)) for m in rng.sample(range(1, n_targets + 1), per_family)]
    rng.shuffle(queries)
    pool = [target(fm) for fm in gallery] if ctx.split == "test" else []
    items = []
    for f, m in queries[:n]:
        ref, tg = families[f]
        t_scene, mod = tg[m - 1]
        sibs = [(f, k) for k in range(n_targets + 1) if k != m]
        cands = shuffled_candidates(target((f, m)), [target(s) for s in sibs], pool, ctx.n_candidates, rng) \
            if ctx.split == "test" else None
        items.append(Item(
            INSTR["composed"].format(modification=mod), target((f, 0))[1], target((f, m)),
            target(rng.choice([s for s in sibs if s[1] != 0])), cands,
            answer=scene_summary("", t_scene, focus=t_scene.objects[changed[f]]),
            wrong=[scene_summary("", s, focus=s.objects[changed[f]]) for s, _ in tg
                   if s is not t_scene][:2] + [scene_summary("", ref, focus=ref.objects[changed[f]])],
            facts=[f"The reference image shows {scene_caption(ref)[0].lower()}{scene_caption(ref)[1:-1]}.",
                   f"The note asks to {mod}; everything else stays the same."]))
    return items


def _fashion_mod(attr: str, value: str) -> str:
    return {"colour": f"is {value}", "pattern": {"plain": "is plain", "striped": "has stripes", "dotted": "has dots",
                                                 "checked": "has a check pattern"}.get(value, value),
            "sleeves": f"has {value} sleeves"}[attr]


def fashion_describe(g: dict) -> str:
    pat = {"plain": "plain", "striped": "striped", "dotted": "dotted", "checked": "checked"}[g["pattern"]]
    return f"A {pat} {g['colour']} {g['kind']} with {g['sleeves']} sleeves."


def build_fashion_cir(ctx: Ctx, n: int) -> list[Item]:
    """FashionIQ analogue (OOD): a garment image plus a style note naming one or two changes -> the target garment.
    The gallery is every garment appearance (2 kinds x 8 colours x 4 patterns x 2 sleeves = 128 images)."""
    rng = ctx.rng
    values = {"colour": list(D.COLOURS), "pattern": list(D.PATTERNS), "sleeves": list(D.SLEEVES)}

    def image(g: dict) -> Target:
        key = f"gallery/{g['kind']}_{g['colour']}_{g['pattern']}_{g['sleeves']}"
        return (TARGET_IMAGE, ctx.store.put(key, lambda: D.render_garment(g["kind"], g["colour"], g["pattern"],
                                                                          g["sleeves"])))

    pool = [image({"kind": k, "colour": c, "pattern": p, "sleeves": s}) for k in D.GARMENTS for c in D.COLOURS
            for p in D.PATTERNS for s in D.SLEEVES]
    items = []
    while len(items) < n:
        ref = {"kind": rng.choice(D.GARMENTS), **{a: rng.choice(v) for a, v in values.items()}}
        a, b = rng.sample(list(values), 2)
        va = rng.choice([x for x in values[a] if x != ref[a]])
        vb = rng.choice([x for x in values[b] if x != ref[b]])
        full = {**ref, a: va, b: vb}
        only_a = {**ref, a: va}
        only_b = {**ref, b: vb}
        alt_attr = a if len(values[a]) > 2 else b  # sleeves has one alternative only
        alt = {**full, alt_attr: rng.choice([x for x in values[alt_attr] if x not in (ref[alt_attr], full[alt_attr])])}
        family = [ref, full, only_a, only_b, alt]
        for target, note in ((full, f"{_fashion_mod(a, va)} and {_fashion_mod(b, vb)}"), (only_a, _fashion_mod(a, va))):
            if len(items) >= n:
                break
            hard = [image(g) for g in family if g != target]
            items.append(Item(
                INSTR["composed_fashion"].format(modification=note), image(ref)[1], image(target), None,
                shuffled_candidates(image(target), hard, pool, ctx.n_candidates, rng),
                answer=fashion_describe(target),
                wrong=[fashion_describe(g) for g in family if g != target][:3],
                facts=[f"The reference is {fashion_describe(ref)[0].lower()}{fashion_describe(ref)[1:-1]}.",
                       f"The note says the wanted item {note}."]))
    return items


# --- charts, documents, signs ----------------------------------------------------------------------------------

LETTERS = "ABCDE"
CHART_ANSWERS = list(LETTERS) + [str(k) for k in range(10)] + list(D.COLOURS)


def build_chart_vqa(ctx: Ctx, n: int) -> list[Item]:
    """ChartQA analogue: questions about a bar chart whose values are printed above the bars."""
    rng = ctx.rng
    kinds = ("tallest", "shortest", "value", "above", "difference", "colour")
    items = []
    for i in range(n):
        kind = kinds[rng.randrange(len(kinds))]
        k = rng.randint(3, 5)
        while True:
            vals = [rng.randint(1, 9) for _ in range(k)]
            if vals.count(max(vals)) == 1 and vals.count(min(vals)) == 1:
                break
        labels = list(LETTERS[:k])
        cols = rng.sample(list(D.COLOURS), k)
        path = ctx.store.put(f"{ctx.split}/{i:05d}", lambda: D.render_bar_chart(vals, labels, cols))
        j = rng.randrange(k)
        big, small = vals.index(max(vals)), vals.index(min(vals))
        if kind == "tallest":
            q, val = "Which bar is the tallest?", labels[big]
            say = lambda x: f"Bar {labels[x]} is the tallest, with a value of {vals[x]}."  # noqa: E731
            ans, wrong = say(big), [say(x) for x in sorted(range(k), key=lambda x: -vals[x])[1:3]]
        elif kind == "shortest":
            q, val = "Which bar is the shortest?", labels[small]
            say = lambda x: f"Bar {labels[x]} is the shortest, with a value of {vals[x]}."  # noqa: E731
            ans, wrong = say(small), [say(x) for x in sorted(range(k), key=lambda x: vals[x])[1:3]]
        elif kind == "value":
            q, val = f"What is the value of bar {labels[j]}?", str(vals[j])
            ans = f"Bar {labels[j]} has a value of {vals[j]}."
            wrong = [f"Bar {labels[j]} has a value of {v}." for v in (vals[j] - 1, vals[j] + 1) if 1 <= v <= 9]
        elif kind == "above":
            t = rng.randint(2, 7)
            c = sum(v > t for v in vals)
            q, val = f"How many bars have a value above {t}?", str(c)
            say = lambda x: f"{x} of the {k} bars have a value above {t}."  # noqa: E731
            ans, wrong = say(c), [say(x) for x in (c - 1, c + 1) if 0 <= x <= k]
        elif kind == "difference":
            d = max(vals) - min(vals)
            q, val = "What is the difference between the tallest and the shortest bar?", str(d)
            say = lambda x: f"The tallest bar is {max(vals)} and the shortest {min(vals)}: a difference of {x}."  # noqa
            ans, wrong = say(d), [say(x) for x in (d - 1, d + 1) if 0 <= x <= 9]
        else:
            q, val = f"What colour is bar {labels[j]}?", cols[j]
            ans = f"Bar {labels[j]} is {cols[j]}."
            wrong = [f"Bar {labels[j]} is {c}." for c in pick_wrong(rng, cols, cols[j], 2)]
        facts = ["The chart has bars " + ", ".join(f"{lab}={v} ({c})" for lab, v, c in zip(labels, vals, cols)) + "."]
        neg = rng.choice([a for a in CHART_ANSWERS if a != val and a.isdigit() == val.isdigit()])
        items.append(Item(INSTR["vqa"].format(question=q), path, (val, ""), (neg, ""),
                          label_candidates(val, CHART_ANSWERS, rng), answer=ans, wrong=wrong, facts=facts))
    return items


DOC_TITLES = ("FORM", "INVOICE", "TICKET", "ORDER")
DOC_FIELDS: dict[str, tuple[str, ...]] = {
    "Name": ("Ava", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana"),
    "City": ("Rome", "Oslo", "Lima", "Kyiv", "Bern", "Doha", "Riga", "Nice"),
    "Day": ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
    "Total": ("12", "25", "37", "40", "58", "63", "71", "94"),
    "Code": ("AX1", "BQ7", "CZ4", "DK2", "EM9", "FR5", "GT3", "HW8"),
    "Room": ("101", "116", "204", "233", "305", "342", "410", "427"),
}
DOC_ANSWERS = [v for vals in DOC_FIELDS.values() for v in vals]


def build_doc_vqa(ctx: Ctx, n: int) -> list[Item]:
    """DocVQA analogue: read one field of a small rendered form."""
    rng = ctx.rng
    items = []
    for i in range(n):
        title = rng.choice(DOC_TITLES)
        keys = rng.sample(list(DOC_FIELDS), 4)
        vals = {k: rng.choice(DOC_FIELDS[k]) for k in keys}
        lines = [f"{k}: {vals[k]}" for k in keys]
        path = ctx.store.put(f"{ctx.split}/{i:05d}", lambda: D.render_document(title, lines))
        key = rng.choice(keys)
        q = f"What is the {key.lower()} on the {title.lower()}?"
        val = vals[key]
        say = lambda v: f"The {key.lower()} on the {title.lower()} is {v}."  # noqa: E731
        others = [vals[k] for k in keys if k != key]
        wrong = [say(v) for v in pick_wrong(rng, DOC_FIELDS[key], val, 2)] + [say(rng.choice(others))]
        neg = rng.choice([v for v in DOC_FIELDS[key] if v != val])
        items.append(Item(INSTR["vqa"].format(question=q), path, (val, ""), (neg, ""),
                          label_candidates(val, DOC_ANSWERS, rng), answer=say(val), wrong=wrong,
                          facts=[f"The {title.lower()} reads: " + "; ".join(lines) + ".",
                                 f"The line that starts with {key} gives {val}."]))
    return items


SIGN_WORDS = ("STOP", "OPEN", "EXIT", "SALE", "PARK", "SHOP", "TAXI", "CAFE", "BANK", "HOTEL", "BUS", "GYM", "ZOO",
              "INN", "BAR", "SPA", "POST", "FOOD", "GATE", "WEST", "EAST", "NORTH", "SOUTH", "PIER")


def build_sign_vqa(ctx: Ctx, n: int) -> list[Item]:
    """TextVQA analogue (OOD): read the word on the sign of a given colour."""
    rng = ctx.rng
    items = []
    for i in range(n):
        k = rng.randint(2, 3)
        signs = list(zip(rng.sample(list(D.COLOURS), k), rng.sample(SIGN_WORDS, k),
                         rng.sample(range(len(D.SIGN_SLOTS)), k)))
        bg = random_background(rng)
        path = ctx.store.put(f"{ctx.split}/{i:05d}", lambda: D.render_signs(signs, bg))
        colour, word, _ = rng.choice(signs)
        q = f"What word is written on the {colour} sign?"
        others = [w for c, w, _ in signs if c != colour]
        items.append(Item(INSTR["vqa"].format(question=q), path, (word, ""), None,
                          label_candidates(word, list(SIGN_WORDS), rng), answer=f"The {colour} sign says {word}.",
                          wrong=[f"The {colour} sign says {w}." for w in others + pick_wrong(rng, SIGN_WORDS, word, 1)],
                          facts=["The signs read: " + "; ".join(f"{c} sign {w}" for c, w, _ in signs) + "."]))
    return items


# --- photos and renditions -------------------------------------------------------------------------------------

PHOTO_PHRASES = {"astronaut": "an astronaut", "brick wall": "a brick wall", "cameraman": "a cameraman",
                 "cat": "a cat", "coffee cup": "a coffee cup", "coins": "coins", "grass": "grass", "gravel": "gravel",
                 "galaxies": "galaxies in deep space", "tissue stain": "a stained tissue sample",
                 "moon surface": "the moon's surface", "printed page": "a printed page", "retina": "a retina",
                 "rocket": "a rocket", "motorcycle": "a motorcycle", "chessboard": "a chessboard",
                 "temple": "a temple", "flower": "a flower", "portrait": "a portrait of a woman"}
PHOTO_CONFUSABLE = {"grass": ["gravel", "brick wall"], "gravel": ["grass", "moon surface"],
                    "brick wall": ["gravel", "chessboard"], "cameraman": ["portrait", "astronaut"],
                    "portrait": ["cameraman", "astronaut"], "astronaut": ["portrait", "rocket"],
                    "printed page": ["chessboard", "coins"], "moon surface": ["coins", "gravel"],
                    "retina": ["tissue stain", "coffee cup"], "tissue stain": ["retina", "flower"]}


def build_photo_cls(ctx: Ctx, n: int) -> list[Item]:
    """SUN397 / ImageNet analogue on real photos (scikit-image, scikit-learn, matplotlib samples): name the photo a
    random crop comes from; candidates are the 19 photo labels."""
    rng = ctx.rng
    labels = list(D.PHOTOS)
    items = []
    for i in range(n):
        label = labels[rng.randrange(len(labels))]
        w, h = D.load_photo(label).size
        side = rng.uniform(0.35, 0.8) * min(w, h)
        x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
        box = (x0 / w, y0 / h, (x0 + side) / w, (y0 + side) / h)
        flip = rng.random() < 0.5
        path = ctx.store.put(f"{ctx.split}/{i:05d}", lambda: D.photo_crop(label, box, flip=flip))
        near = PHOTO_CONFUSABLE.get(label, []) + pick_wrong(rng, labels, label, 2)
        near = [x for x in dict.fromkeys(near) if x != label][:3]
        items.append(Item(INSTR["cls_photo"], path, (label, ""), (near[0], ""), label_candidates(label, labels, rng),
                          answer=f"This is a close-up of {PHOTO_PHRASES[label]}.",
                          wrong=[f"This is a close-up of {PHOTO_PHRASES[x]}." for x in near],
                          facts=["The picture is a crop of a larger photograph.",
                                 f"Its content matches {PHOTO_PHRASES[label]}."]))
    return items


RENDITION_PHRASES = {"seven_segment": "seven-segment", "dot_matrix": "dot-matrix", "printed": "blocky printed",
                     "outline": "outlined"}
_DARK = [(18, 18, 24), (20, 24, 70), (70, 20, 30), (25, 60, 35)]
_LIGHT = [(248, 248, 244), (235, 228, 205), (215, 230, 245)]


def build_digits_r(ctx: Ctx, n: int) -> list[Item]:
    """ImageNet-R analogue (OOD): DigitsCLS's ten classes drawn in styles never seen in training (seven-segment,
    dot-matrix, printed, outlined), in colour."""
    rng = ctx.rng
    labels = list(D.DIGIT_WORDS)
    items = []
    for i in range(n):
        d = rng.randrange(10)
        style = rng.choice(D.RENDITION_STYLES)
        dark_bg = rng.random() < 0.5
        bg = rng.choice(_DARK if dark_bg else _LIGHT)
        fg = rng.choice(list(D.COLOURS.values()) + ([(250, 250, 250)] if dark_bg else [(15, 15, 15)]))
        if dark_bg and sum(fg) < 300:
            fg = (250, 250, 250)
        params = {"dx": rng.randint(-4, 4), "dy": rng.randint(-4, 4), "thickness": rng.uniform(0.8, 1.3),
                  "slant": rng.choice((0.0, 0.0, 0.15, -0.1))}
        path = ctx.store.put(f"{ctx.split}/{i:05d}",
                             lambda: D.render_digit_rendition(d, style, fg, bg, **params))
        word = labels[d]
        items.append(Item(INSTR["classification"], path, (word, ""), None, label_candidates(word, labels, rng),
                          answer=f"This is the digit {word}, drawn in {RENDITION_PHRASES[style]} style.",
                          wrong=[f"This is the digit {labels[c]}, drawn in {RENDITION_PHRASES[style]} style."
                                 for c in CONFUSABLE[d]],
                          facts=[f"The image shows a single numeral drawn in {RENDITION_PHRASES[style]} style.",
                                 f"Its shape is that of the digit {d}."]))
    return items


# --- the registry ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """One MiniMMEB dataset: where it sits in MMEB's taxonomy and how its rows are built."""

    name: str
    meta_task: str
    ood: bool
    analogue: str  # the MMEB dataset it mirrors
    query: str
    candidates: str
    build: Callable[[Ctx, int], list[Item]]

    @property
    def splits(self) -> list[str]:
        return ["test"] if self.ood else ["train", "test"]


DATASETS: dict[str, DatasetSpec] = {s.name: s for s in [
    DatasetSpec("DigitsCLS", "classification", False, "ImageNet-1K", "a real handwritten digit (scikit-learn)",
                "the 10 digit names", build_digits_cls),
    DatasetSpec("ShapesCLS", "classification", False, "VOC2007", "one drawn shape",
                "the 48 colour-shape labels", build_shapes_cls),
    DatasetSpec("PhotoCLS", "classification", False, "SUN397", "a random crop of a real sample photo",
                "the 19 photo labels", build_photo_cls),
    DatasetSpec("ScenesVQA", "vqa", False, "Visual7W", "a drawn scene + a counting/attribute/position question",
                "the 34 answers (counts, colours, shapes, positions, sizes, yes/no)", build_scenes_vqa),
    DatasetSpec("DigitsVQA", "vqa", False, "OK-VQA", "one or two handwritten digits + an arithmetic or order "
                "question", "the 21 answers 0-18, even, odd", build_digits_vqa),
    DatasetSpec("ChartVQA", "vqa", False, "ChartQA", "a bar chart + a question about its bars",
                "the 23 answers (bar letters, 0-9, colours)", build_chart_vqa),
    DatasetSpec("DocVQA", "vqa", False, "DocVQA", "a small rendered form + which value a field has",
                "the 47 field values", build_doc_vqa),
    DatasetSpec("ScenesT2I", "retrieval", False, "MSCOCO_t2i", "a caption that fully describes a scene",
                "scene images; hard negatives change one attribute", build_scenes_t2i),
    DatasetSpec("ScenesI2T", "retrieval", False, "MSCOCO_i2t", "a drawn scene",
                "captions; hard negatives describe one-attribute variants", build_scenes_i2t),
    DatasetSpec("ShapesCIR", "retrieval", False, "CIRR", "a reference scene + a modification text",
                "scene images incl. the reference and its other modifications", build_shapes_cir),
    DatasetSpec("ScenesGround", "grounding", False, "MSCOCO", "a scene + the name of one object's shape",
                "object crops (shape x colour x background)", build_scenes_ground),
    DatasetSpec("DigitsR", "classification", True, "ImageNet-R", "a digit drawn in an unseen style "
                "(seven-segment, dot-matrix, printed, outlined)", "the 10 digit names", build_digits_r),
    DatasetSpec("SignVQA", "vqa", True, "TextVQA", "coloured signs with words + which word a sign shows",
                "the 24 sign words", build_sign_vqa),
    DatasetSpec("FashionCIR", "retrieval", True, "FashionIQ", "a garment image + a style note (one or two "
                "changes)", "garment images (128 appearances)", build_fashion_cir),
    DatasetSpec("RefScenes", "grounding", True, "RefCOCO", "a scene + a referring expression (left/right/top/"
                "bottom/larger/smaller)", "object crops; the other same-shape object is the hard negative",
                build_ref_scenes),
]}
assert {s.meta_task for s in DATASETS.values()} == set(META_TASKS)


# --- writing ---------------------------------------------------------------------------------------------------


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False)


def _write_text(path: Path, text: str) -> None:
    """Write to a temporary name, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    _write_text(path, "".join(_dumps(r) + "\n" for r in rows))


def _oracle_row(qid: str, name: str, split: str, it: Item) -> dict:
    wrong = [w for w in dict.fromkeys(it.wrong) if w and not _same_words(w, it.answer)]
    if not wrong:
        raise RuntimeError(f"{qid}: no plausible wrong answer differs from the answer {it.answer!r}")
    return {"id": qid, "dataset": name, "split": split, "question": prompts.teacher_question(it.qry_text),
            "answer": it.answer, "wrong_answers": wrong, "facts": it.facts}


def build_dataset(spec: DatasetSpec, settings: Settings, root: Path) -> dict:
    """Generate one dataset's splits under `root`; returns its entry of minimmeb.json."""
    store = Store(root, spec.name)
    entry: dict[str, Any] = {"meta_task": spec.meta_task, "ood": spec.ood, "splits": spec.splits,
                             "description": f"{spec.analogue} analogue. Query: {spec.query}. Candidates: "
                                            f"{spec.candidates}.",
                             "analogue": spec.analogue}
    for split in spec.splits:
        n = settings.n_train if split == "train" else settings.n_test
        ctx = Ctx(settings, spec.name, split, store, rng_for(settings.seed, spec.name, split))
        items = spec.build(ctx, n)
        if len(items) != n:
            raise RuntimeError(f"{spec.name}/{split}: built {len(items)} rows, expected {n}")
        if split == "train":
            ids = [f"{spec.name}:train:{i}" for i in range(n)]
            rows = [{"id": qid, "qry": it.qry_text, "qry_image_path": it.qry_img, "pos_text": it.pos[0],
                     "pos_image_path": it.pos[1], "neg_text": it.neg[0] if it.neg else "",
                     "neg_image_path": it.neg[1] if it.neg else ""} for qid, it in zip(ids, items)]
            _write_jsonl(root / "train" / spec.name / "original.jsonl", rows)
        else:
            ids = [f"{spec.name}:{i}" for i in range(n)]  # the query ids read_eval_dataset gives
            counts = {len(it.cands or ()) for it in items}
            if len(counts) != 1 or any(it.cands[0] != it.pos for it in items):
                raise RuntimeError(f"{spec.name}/test: candidate lists are ragged or miss the positive: {counts}")
            entry["n_candidates"] = counts.pop()
            if spec.meta_task in ("retrieval", "grounding") and entry["n_candidates"] < settings.n_candidates:
                logger.warning("%s: its gallery holds %d candidates, fewer than the %d asked for", spec.name,
                               entry["n_candidates"], settings.n_candidates)
            rows = [{"qry_text": it.qry_text, "qry_img_path": it.qry_img, "tgt_text": [c[0] for c in it.cands],
                     "tgt_img_path": [c[1] for c in it.cands]} for it in items]
            _write_jsonl(root / "test" / spec.name / "test.jsonl", rows)
        _write_jsonl(root / split / spec.name / "oracle.jsonl",
                     [_oracle_row(qid, spec.name, split, it) for qid, it in zip(ids, items)])
        entry[f"n_{split}"] = n
    entry["n_images"] = len(store.written)
    return entry


def generate(out: str | Path, seed: int = 0, scale: str = "small", n_candidates: int | None = None,
             datasets: Sequence[str] | None = None, progress: bool | None = None, **overrides: int) -> dict:
    """Write MiniMMEB to `out` and return its meta dict.

    The tree is built in a temporary sibling folder and renamed into place, so `out` is always either the old
    benchmark or the complete new one. An existing `out` is replaced only if it is empty or a MiniMMEB folder.
    """
    settings = Settings.make(seed=seed, scale=scale, n_candidates=n_candidates, datasets=datasets, **overrides)
    out = Path(out)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or is_minimmeb(out))):
        raise FileExistsError(f"{out} exists and is not a MiniMMEB folder; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    names = list(settings.datasets or DATASETS)
    t0 = time.perf_counter()
    try:
        from tqdm.auto import tqdm

        show = progress if progress is not None else sys.stderr.isatty()
        entries = {}
        for name in tqdm(names, desc="MiniMMEB", unit="dataset", disable=not show):
            t = time.perf_counter()
            entries[name] = build_dataset(DATASETS[name], settings, tmp)
            logger.info("%s: %s in %.1fs", name, {k: v for k, v in entries[name].items() if k.startswith("n_")},
                        time.perf_counter() - t)
        meta = {"name": BENCHMARK_NAME, "version": VERSION, "seed": settings.seed, "scale": settings.scale,
                "settings": {"n_train": settings.n_train, "n_test": settings.n_test,
                             "n_candidates": settings.n_candidates},
                "datasets": {k: entries[k] for k in sorted(entries)}}
        _write_text(tmp / META_FILE, json.dumps(meta, sort_keys=True, indent=2) + "\n")
        os.chmod(tmp, 0o755)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote MiniMMEB (%d datasets, scale %s, seed %d) to %s in %.1fs", len(names), settings.scale,
                settings.seed, out, time.perf_counter() - t0)
    return meta


def is_minimmeb(path: str | Path) -> bool:
    """Whether `path` is a MiniMMEB folder (it holds a minimmeb.json naming MiniMMEB)."""
    meta = Path(path) / META_FILE
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text(encoding="utf-8")).get("name") == BENCHMARK_NAME
    except (OSError, ValueError):
        return False


def load_minimmeb(path: str | Path) -> dict:
    """The meta dict of a MiniMMEB folder (minimmeb.json)."""
    meta = Path(path) / META_FILE
    if not meta.is_file():
        raise FileNotFoundError(f"{path} is not a MiniMMEB folder: {META_FILE} is missing "
                                f"(generate one with: python -m msolomon.data.minimmeb --out {path})")
    data = json.loads(meta.read_text(encoding="utf-8"))
    if data.get("name") != BENCHMARK_NAME:
        raise ValueError(f"{meta} does not describe a MiniMMEB benchmark (name={data.get('name')!r})")
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m msolomon.data.minimmeb", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (replaced if it is a MiniMMEB folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--n-candidates", type=int, default=None,
                        help="candidates per retrieval/grounding query (default: the scale's, 100 for small/full)")
    parser.add_argument("--n-train", type=int, default=None, help="override the scale's train rows per dataset")
    parser.add_argument("--n-test", type=int, default=None, help="override the scale's test rows per dataset")
    parser.add_argument("--datasets", default=None, help="comma-separated subset of: " + ",".join(DATASETS))
    parser.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    overrides = {k: v for k, v in (("n_train", args.n_train), ("n_test", args.n_test)) if v is not None}
    meta = generate(args.out, seed=args.seed, scale=args.scale, n_candidates=args.n_candidates,
                    datasets=args.datasets.split(",") if args.datasets else None,
                    progress=False if args.quiet else None, **overrides)
    ds = meta["datasets"]
    sys.stdout.write(f"MiniMMEB seed={meta['seed']} scale={meta['scale']}: {len(ds)} datasets "
          f"({sum(not d['ood'] for d in ds.values())} IND, {sum(d['ood'] for d in ds.values())} OOD), "
          f"{sum(d.get('n_train', 0) for d in ds.values())} train / {sum(d['n_test'] for d in ds.values())} test rows "
          f"-> {args.out} in {time.perf_counter() - t0:.1f}s\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
