"""Scenes: shapes of eight colours on a 3x3 grid, and crops of single objects out of them.

One world serves classification, VQA, retrieval both ways, composed retrieval and grounding, because every attribute
of every object is known exactly: captions, answers and hard negatives (one attribute changed) follow from it.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image, ImageDraw

from msolomon.worlds.canvas import BACKGROUNDS, COLOURS, SHAPES, SIZES, SS, finish
from msolomon.worlds.common import (
    INSTR,
    TARGET_CROP,
    TARGET_IMAGE,
    Ctx,
    Item,
    Target,
    article,
    cap,
    join_words,
    label_candidates,
    pick_wrong,
    plural,
    random_background,
    same_words,
    shuffled_candidates,
)

POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")


# --- drawing ---------------------------------------------------------------------------------------------------


def _shape_polygon(shape: str, box: tuple[float, float, float, float]) -> list[tuple[float, float]] | None:
    x0, y0, x1, y1 = box
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if shape == "star":
        pts = []
        for k in range(10):
            r = (w / 2) if k % 2 == 0 else (w / 2) * 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + r * math.cos(a), cy + r * math.sin(a) * h / w))
        return pts
    if shape == "cross":
        t = w / 3
        return [(cx - t / 2, y0), (cx + t / 2, y0), (cx + t / 2, cy - t / 2), (x1, cy - t / 2), (x1, cy + t / 2),
                (cx + t / 2, cy + t / 2), (cx + t / 2, y1), (cx - t / 2, y1), (cx - t / 2, cy + t / 2),
                (x0, cy + t / 2), (x0, cy - t / 2), (cx - t / 2, cy - t / 2)]
    return None


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float],
               fill: tuple[int, int, int] | int, outline: tuple[int, int, int] | int | None = None,
               width: int = 0) -> None:
    """Draw one of SHAPES filling `box` (x0, y0, x1, y1)."""
    if shape == "circle":
        draw.ellipse(box, fill=fill, outline=outline, width=width)
    elif shape == "square":
        draw.rectangle(box, fill=fill, outline=outline, width=width)
    else:
        poly = _shape_polygon(shape, box)
        if poly is None:
            raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
        draw.polygon(poly, fill=fill, outline=outline, width=width)


@dataclass(frozen=True)
class Obj:
    """One object of a scene: what it is and which cell of the 3x3 grid it occupies (jitter in output pixels)."""

    shape: str
    colour: str
    size: str  # "small" | "large"
    cell: int  # 0..8, row-major; POSITIONS[cell] names it
    dx: int = 0
    dy: int = 0

    @property
    def row(self) -> int:
        return self.cell // 3

    @property
    def col(self) -> int:
        return self.cell % 3

    def describe(self, with_size: bool = True) -> str:
        return f"{self.size} {self.colour} {self.shape}" if with_size else f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: str = "white"


def render_scene(scene: Scene, size: int = 84) -> Image.Image:
    """A scene of shapes on a plain background, one object per grid cell."""
    s = size * SS
    canvas = Image.new("RGB", (s, s), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(canvas)
    cell = s / 3
    for o in scene.objects:
        d = cell * (0.78 if o.size == "large" else 0.42)
        cx = (o.col + 0.5) * cell + o.dx * SS
        cy = (o.row + 0.5) * cell + o.dy * SS
        draw_shape(draw, o.shape, (cx - d / 2, cy - d / 2, cx + d / 2, cy + d / 2), COLOURS[o.colour])
    return finish(canvas, (size, size))


def render_crop(shape: str, colour: str, background: str, size: int = 56, margin: float = 0.16) -> Image.Image:
    """The crop of one object out of a scene: the object centred and filling most of the crop."""
    s = size * SS
    canvas = Image.new("RGB", (s, s), BACKGROUNDS[background])
    m = s * margin
    draw_shape(ImageDraw.Draw(canvas), shape, (m, m, s - m, s - m), COLOURS[colour])
    return finish(canvas, (size, size))


# --- describing scenes -----------------------------------------------------------------------------------------

POS_PHRASE = ("at the top left", "at the top", "at the top right", "on the left", "in the center", "on the right",
              "at the bottom left", "at the bottom", "at the bottom right")


def scene_caption(scene: Scene, positions: bool = True) -> str:
    """'A large red circle at the top left and a small blue star in the center.'"""
    objs = sorted(scene.objects, key=lambda o: o.cell)
    parts = [article(o.describe()) + (" " + POS_PHRASE[o.cell] if positions else "") for o in objs]
    return cap(join_words(parts)) + "."


SUMMARY_LEVELS = ((True, True), (False, True), (True, False))  # (sizes, places): most to least detailed


def scene_summary(prefix: str, scene: Scene, limit: int = 18, focus: Obj | None = None,
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


def distinct_summaries(prefix: str, scene: Scene, others: Sequence[Scene],
                       limit: int = 18) -> tuple[str, list[str]]:
    """The answer for `scene` and wrong answers for `others`, at the shortest level that still tells them apart."""
    options = []
    for k in range(len(SUMMARY_LEVELS)):
        ans = scene_summary(prefix, scene, level=k)
        wrong = [scene_summary(prefix, o, level=k) for o in others]
        if not any(same_words(ans, w) for w in wrong):
            n = len(ans.split())
            options.append((n > limit, k if n <= limit else n, ans, wrong))  # fits: most detail; else: shortest
    if not options:  # full detail always tells distinct scenes apart; this is only a guard
        return scene_summary(prefix, scene, level=0), [scene_summary(prefix, o, level=0) for o in others]
    _, _, ans, wrong = min(options)
    return ans, wrong


# --- sampling scenes -------------------------------------------------------------------------------------------


def sample_objects(rng: random.Random, k: int, distinct_shapes: bool = False, distinct_colours: bool = False,
                   cells: Sequence[int] | None = None) -> tuple[Obj, ...]:
    cells = list(cells) if cells is not None else rng.sample(range(9), k)
    shapes = rng.sample(SHAPES, k) if distinct_shapes else [rng.choice(SHAPES) for _ in range(k)]
    names = list(COLOURS)
    colours = rng.sample(names, k) if distinct_colours else [rng.choice(names) for _ in range(k)]
    return tuple(Obj(shapes[j], colours[j], rng.choice(SIZES), cells[j], rng.randint(-2, 2), rng.randint(-2, 2))
                 for j in range(k))


def scene_key(scene: Scene) -> tuple:
    """What a caption can tell apart: objects and their attributes (not jitter or background)."""
    return tuple(sorted((o.shape, o.colour, o.size, o.cell) for o in scene.objects))


def replace_obj(scene: Scene, j: int, **changes: Any) -> Scene:
    objs = list(scene.objects)
    o = objs[j]
    objs[j] = Obj(**{**asdict(o), **changes})
    return Scene(tuple(objs), scene.background)


def one_attribute_variant(rng: random.Random, scene: Scene, kind: str | None = None) -> Scene:
    """The same scene with one attribute of one object changed: the hard negative of MMEB-style retrieval."""
    j = rng.randrange(len(scene.objects))
    o = scene.objects[j]
    kind = kind or rng.choice(("colour", "shape", "size", "position"))
    used = {x.cell for x in scene.objects}
    if kind == "colour":
        return replace_obj(scene, j, colour=rng.choice([c for c in COLOURS if c != o.colour]))
    if kind == "shape":
        return replace_obj(scene, j, shape=rng.choice([s for s in SHAPES if s != o.shape]))
    if kind == "size":
        return replace_obj(scene, j, size="small" if o.size == "large" else "large")
    free = [c for c in range(9) if c not in used]
    return replace_obj(scene, j, cell=rng.choice(free)) if free else replace_obj(
        scene, j, size="small" if o.size == "large" else "large")


def scene_family(rng: random.Random, taken: set, n_objects: tuple[int, int] = (2, 3), size: int = 4) -> list[Scene]:
    """A base scene and one-attribute variants of it, all with distinct captions (also across `taken`)."""
    while True:
        k = rng.randint(*n_objects)
        base = Scene(sample_objects(rng, k, distinct_colours=True), random_background(rng))
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
    n_gallery = max(n, ctx.n_candidates) if ctx.is_eval else n
    taken: set = set()
    families = [scene_family(rng, taken) for _ in range(-(-n_gallery // fam_size))]
    members = [(f, m) for f in range(len(families)) for m in range(fam_size)]
    def img(fm: tuple[int, int]) -> str:  # written on first use: i2t test needs only the query images
        return ctx.store.put(f"{ctx.split}/{fm[0]:05d}_{fm[1]}", lambda: render_scene(families[fm[0]][fm[1]]))

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
        if ctx.is_eval:
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
    labels = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    items = []
    for i in range(n):
        while True:  # a validation or test query never repeats a query of an earlier split
            o = Obj(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(SIZES), rng.randrange(9),
                    rng.randint(-3, 3), rng.randint(-3, 3))
            bg = random_background(rng)
            if ctx.split == "train" or (o, bg) not in ctx.taken:
                break
        ctx.taken.add((o, bg))
        path = ctx.store.put(f"{ctx.split}/{i:05d}", lambda: render_scene(Scene((o,), bg)))
        label = f"{o.colour} {o.shape}"
        near = [f"{c} {o.shape}" for c in COLOURS if c != o.colour] + [f"{o.colour} {s}" for s in SHAPES
                                                                         if s != o.shape]
        wrong = rng.sample(near, 3)
        items.append(Item(INSTR["cls_object"], path, (label, ""), (rng.choice(near), ""),
                          label_candidates(label, labels, rng), answer=f"This is a {label}.",
                          wrong=[f"This is a {w}." for w in wrong],
                          facts=[f"The image shows one {o.size} {o.shape} {POS_PHRASE[o.cell]} on a {bg} background.",
                                 f"It is filled with {o.colour}."]))
    return items


VQA_SCENE_ANSWERS = [str(k) for k in range(7)] + list(COLOURS) + list(SHAPES) + list(POSITIONS) + \
    list(SIZES) + ["yes", "no"]


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
            focus = rng.choice(SHAPES)
            for j in rng.sample(range(k), rng.randint(0, k)):
                objs[j] = Obj(**{**asdict(objs[j]), "shape": focus})
            objs = tuple(objs)
        else:
            objs = sample_objects(rng, k, distinct_shapes=(kind == "colour"), distinct_colours=(kind != "colour"))
        scene = Scene(objs, random_background(rng))
        path = ctx.store.put(f"{ctx.split}/{i:05d}", lambda: render_scene(scene))
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
            wrong = [f"The {o.shape} is {c}." for c in pick_wrong(rng, [x.colour for x in objs] + list(COLOURS),
                                                                   o.colour)]
            step = f"The only {o.shape} is filled with {o.colour}."
        elif kind == "shape":
            q, val = f"What shape is the {o.colour} object?", o.shape
            ans = f"The {o.colour} object is {article(o.shape)}."
            wrong = [f"The {o.colour} object is {article(s)}." for s in pick_wrong(rng, SHAPES, o.shape)]
            step = f"The {o.colour} object has the outline of {article(o.shape)}."
        elif kind == "position":
            q, val = f"Where is the {what}?", POSITIONS[o.cell]
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
                ask = f"{rng.choice([c for c in COLOURS if c not in {x.colour for x in objs}])} {o.shape}"
            q, val = f"Is there {article(ask)}?", "yes" if present else "no"
            ans = f"Yes, there is {article(ask)}." if present else f"No, there is no {ask}."
            wrong = [f"No, there is no {ask}." if present else f"Yes, there is {article(ask)}."]
            step = f"{'One' if present else 'None'} of the objects is {article(ask)}."
        facts = [f"The image shows {scene_caption(scene)[0].lower()}{scene_caption(scene)[1:-1]}.", step]
        neg_pool = {"count": [str(c) for c in range(7)], "colour": list(COLOURS), "shape": list(SHAPES),
                    "position": list(POSITIONS), "size": list(SIZES), "exists": ["yes", "no"]}[kind]
        neg = rng.choice([a for a in neg_pool if a != val])
        items.append(Item(INSTR["vqa"].format(question=q), path, (val, ""), (neg, ""),
                          label_candidates(val, VQA_SCENE_ANSWERS, rng), answer=ans, wrong=wrong, facts=facts))
    return items


# --- grounding -------------------------------------------------------------------------------------------------


def _crop_gallery(ctx: Ctx, margin: float = 0.16, size: int = 56) -> Callable[[str, str, str], Target]:
    """Every (shape, colour, background) crop is one gallery image, written once: 6 x 8 x 3 = 144 candidates.
    Another `margin` and `size` frame the crops differently (RefScenes': not ScenesGround's training pixels)."""
    folder = "crops" if (margin, size) == (0.16, 56) else f"crops_{round(margin * 100)}_{size}"

    def crop(shape: str, colour: str, bg: str) -> Target:
        return (TARGET_CROP, ctx.store.put(f"{folder}/{bg}_{colour}_{shape}",
                                           lambda: render_crop(shape, colour, bg, size=size, margin=margin)))
    return crop


def _all_crops(crop: Callable[[str, str, str], Target]) -> list[Target]:
    return [crop(s, c, b) for b in BACKGROUNDS for c in COLOURS for s in SHAPES]


def build_scenes_ground(ctx: Ctx, n: int) -> list[Item]:
    """MSCOCO grounding analogue: a scene and an object label (the shape); candidates are object crops, so the
    colour has to be read off the image."""
    rng = ctx.rng
    crop = _crop_gallery(ctx)
    pool = _all_crops(crop) if ctx.is_eval else []
    items = []
    for i in range(n):
        scene = Scene(sample_objects(rng, rng.randint(3, 4), distinct_shapes=True, distinct_colours=True),
                        random_background(rng))
        path = ctx.store.put(f"{ctx.split}/{i:05d}", lambda: render_scene(scene))
        o = rng.choice(scene.objects)
        bg = scene.background
        pos = crop(o.shape, o.colour, bg)
        others = [crop(x.shape, x.colour, bg) for x in scene.objects if x is not o]
        recolour = [crop(o.shape, c, bg) for c in COLOURS if c != o.colour]
        rebg = [crop(o.shape, o.colour, b) for b in BACKGROUNDS if b != bg]
        # Training's hard negative is sometimes the same object on another background: without it nothing teaches
        # a crop's embedding its background, and the augmented query ("... on a blue background") ranks the wrong
        # background's crop first (docs/decisions.md). Evaluation splits keep their draws, so they stay v2's bytes.
        neg = rng.choice(others + recolour[:2] + ([] if ctx.is_eval else rebg))
        cands = shuffled_candidates(pos, others + recolour + rebg, pool, ctx.n_candidates, rng) \
            if ctx.is_eval else None
        wrong_objs = [x for x in scene.objects if x is not o]
        items.append(Item(
            INSTR["grounding"].format(label=o.shape), path, pos, neg, cands,
            answer=f"The region shows the {o.colour} {o.shape} on a {bg} background.",
            wrong=[f"The region shows the {x.colour} {x.shape} on a {bg} background." for x in wrong_objs[:2]]
            + [f"The region shows the {c} {o.shape} on a {bg} background."
               for c in pick_wrong(rng, COLOURS, o.colour, 1)],
            facts=[f"The image shows {scene_caption(scene)[0].lower()}{scene_caption(scene)[1:-1]}.",
                   f"The only {o.shape} is the {o.colour} one {POS_PHRASE[o.cell]}."]))
    return items


def build_ref_scenes(ctx: Ctx, n: int) -> list[Item]:
    """RefCOCO analogue (OOD): a referring expression picks one of two same-shape objects by place or size."""
    rng = ctx.rng
    crop = _crop_gallery(ctx, margin=0.06, size=64)  # tighter, larger crops: an out-of-distribution gallery
    pool = _all_crops(crop)
    items = []
    for i in range(n):
        while True:
            shape = rng.choice(SHAPES)
            k = rng.randint(3, 4)
            shapes = [shape, shape] + rng.sample([s for s in SHAPES if s != shape], k - 2)
            objs = [Obj(**{**asdict(o), "shape": sh})
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
        scene = Scene(tuple(objs), random_background(rng))
        path = ctx.store.put(f"{ctx.split}/{i:05d}", lambda: render_scene(scene))
        phrase, o = rng.choice(rel)
        other = b if o is a else a
        expr = f"the {phrase} {shape}" if phrase in ("larger", "smaller") else f"the {shape} {phrase}"
        bg = scene.background
        pos = crop(shape, o.colour, bg)
        hard = [crop(shape, other.colour, bg)] + [crop(x.shape, x.colour, bg) for x in objs[2:]] + \
            [crop(shape, c, bg) for c in COLOURS if c != o.colour]
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
    families: list[tuple[Scene, list[tuple[Scene, str]]]] = []
    changed: list[int] = []  # per family, which object the modifications change
    taken: set = set()
    while len(families) * per_family < n or len(gallery) < (ctx.n_candidates if ctx.is_eval else 0):
        ref = Scene(sample_objects(rng, rng.randint(2, 3), distinct_shapes=True, distinct_colours=True),
                      random_background(rng))
        if scene_key(ref) in taken:
            continue
        j = rng.randrange(len(ref.objects))
        o = ref.objects[j]
        kind = rng.choice(("colour", "shape", "position"))
        used_colours = {x.colour for x in ref.objects}
        if kind == "colour":
            vals = rng.sample([c for c in COLOURS if c not in used_colours], n_targets)
            tg = [(replace_obj(ref, j, colour=v), f"make the {o.shape} {v}") for v in vals]
        elif kind == "shape":
            vals = rng.sample([s for s in SHAPES if s != o.shape], n_targets)
            tg = [(replace_obj(ref, j, shape=v), f"turn the {o.colour} {o.shape} into {article(v)}") for v in vals]
        else:
            vals = rng.sample([c for c in range(9) if c not in {x.cell for x in ref.objects}], n_targets)
            tg = [(replace_obj(ref, j, cell=v), f"move the {o.colour} {o.shape} to the {POSITIONS[v]}")
                  for v in vals]
        keys = {scene_key(ref)} | {scene_key(t) for t, _ in tg}
        if len(keys) < n_targets + 1 or keys & taken:
            continue
        taken |= keys
        f = len(families)
        families.append((ref, tg))
        changed.append(j)
        gallery += [(f, m) for m in range(n_targets + 1)]  # m = 0 the reference, 1.. the targets

    def scene_of(fm: tuple[int, int]) -> Scene:
        return families[fm[0]][0] if fm[1] == 0 else families[fm[0]][1][fm[1] - 1][0]

    def target(fm: tuple[int, int]) -> Target:
        return (TARGET_IMAGE, ctx.store.put(f"{ctx.split}/{fm[0]:05d}_{fm[1]}", lambda: render_scene(scene_of(fm))))

    queries = [(f, m) for f in range(len(families)) for m in rng.sample(range(1, n_targets + 1), per_family)]
    rng.shuffle(queries)
    pool = [target(fm) for fm in gallery] if ctx.is_eval else []
    items = []
    for f, m in queries[:n]:
        ref, tg = families[f]
        t_scene, mod = tg[m - 1]
        sibs = [(f, k) for k in range(n_targets + 1) if k != m]
        cands = shuffled_candidates(target((f, m)), [target(s) for s in sibs], pool, ctx.n_candidates, rng) \
            if ctx.is_eval else None
        items.append(Item(
            INSTR["composed"].format(modification=mod), target((f, 0))[1], target((f, m)),
            target(rng.choice([s for s in sibs if s[1] != 0])), cands,
            answer=scene_summary("", t_scene, focus=t_scene.objects[changed[f]]),
            wrong=[scene_summary("", s, focus=s.objects[changed[f]]) for s, _ in tg
                   if s is not t_scene][:2] + [scene_summary("", ref, focus=ref.objects[changed[f]])],
            facts=[f"The reference image shows {scene_caption(ref)[0].lower()}{scene_caption(ref)[1:-1]}.",
                   f"The note asks to {mod}; everything else stays the same."]))
    return items
