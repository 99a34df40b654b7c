"""Digits: scikit-learn's real handwritten digits and the same ten classes drawn in other styles (renditions).

The train/test split of the 1,797 handwritten images is fixed per seed, so no test image is ever a training image;
renditions are never handwritten, which is what makes DigitsR out of distribution.
"""
from __future__ import annotations

import gzip
import random
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from msolomon.worlds.canvas import COLOURS, SS, finish, glyph_mask, package_dir
from msolomon.worlds.common import INSTR, Ctx, Item, label_candidates, rng_for

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

CONFUSABLE = {0: [6, 8, 9], 1: [7, 4], 2: [7, 3], 3: [8, 5, 9], 4: [9, 1], 5: [6, 3, 8], 6: [5, 0, 8], 7: [1, 2],
              8: [3, 0, 9], 9: [4, 8, 7]}


# --- handwritten digits (scikit-learn's) -----------------------------------------------------------------------


_DIGITS_CACHE: dict[str, Any] = {}


def load_digits() -> tuple[Any, Any]:
    """scikit-learn's digits (images 8x8 with values 0..16, targets), read from the CSV inside the wheel.

    Same arrays as `sklearn.datasets.load_digits()`, without importing scikit-learn (a second and a half).
    """
    path = package_dir("sklearn") / "datasets" / "data" / "digits.csv.gz"
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


def _digit_sprite(img8: np.ndarray, height: int, angle: float) -> Image.Image:
    """An sklearn 8x8 digit (values 0..16) scaled to `height` px and rotated: an 'L' image, ink bright."""
    arr = np.clip(np.asarray(img8, dtype=np.float64) * (255.0 / 16.0), 0, 255).astype(np.uint8)
    sprite = Image.fromarray(arr, mode="L").resize((height, height), Image.Resampling.BICUBIC)
    return sprite.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=0)


def render_handwritten(img8: np.ndarray, size: tuple[int, int] = (56, 56), height: int = 42, angle: float = 0.0,
                       dx: int = 0, dy: int = 0) -> Image.Image:
    """A real handwritten digit (scikit-learn's digits) as white ink on black, MNIST style."""
    canvas = Image.new("L", size, 0)
    sprite = _digit_sprite(img8, height, angle)
    canvas.paste(sprite, ((size[0] - height) // 2 + dx, (size[1] - height) // 2 + dy))
    return canvas.convert("RGB")


def render_handwritten_pair(a8: np.ndarray, b8: np.ndarray, height: int = 38, angles: tuple[float, float] = (0, 0),
                            offsets: tuple[int, int, int, int] = (0, 0, 0, 0)) -> Image.Image:
    """Two handwritten digits side by side on an 84x56 canvas (6 image tokens)."""
    w, h = 84, 56
    canvas = Image.new("L", (w, h), 0)
    for k, (img8, angle) in enumerate(((a8, angles[0]), (b8, angles[1]))):
        sprite = _digit_sprite(img8, height, angle)
        x = k * (w // 2) + (w // 2 - height) // 2 + offsets[2 * k]
        y = (h - height) // 2 + offsets[2 * k + 1]
        canvas.paste(ImageChops.lighter(canvas.crop((x, y, x + height, y + height)), sprite), (x, y))
    return canvas.convert("RGB")


def _digit_jitter(rng: random.Random) -> dict:
    return {"height": rng.randint(36, 46), "angle": rng.uniform(-12, 12), "dx": rng.randint(-4, 4),
            "dy": rng.randint(-4, 4)}


def build_digits_cls(ctx: Ctx, n: int) -> list[Item]:
    """ImageNet-1K analogue: a real handwritten digit; candidates are the ten class names."""
    rng, pool = ctx.rng, digit_pools(ctx.settings.seed)[ctx.pool_split]
    labels = list(DIGIT_WORDS)
    items = []
    for i in range(n):
        img8, d = pool[rng.randrange(len(pool))]
        jit = _digit_jitter(rng)
        path = ctx.store.put(f"{ctx.split}/{i:05d}", lambda: render_handwritten(img8, **jit))
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
    rng, pool = ctx.rng, digit_pools(ctx.settings.seed)[ctx.pool_split]
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
            path = ctx.store.put(f"{ctx.split}/{i:05d}", lambda: render_handwritten_pair(ia, ib, **params))
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
            path = ctx.store.put(f"{ctx.split}/{i:05d}", lambda: render_handwritten(img8, **jit))
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


# --- renditions (the ImageNet-R shift) -------------------------------------------------------------------------


# segments a..g of a seven-segment display, per digit
_SEVEN = {0: "abcdef", 1: "bc", 2: "abdeg", 3: "abcdg", 4: "bcfg", 5: "acdfg", 6: "acdefg", 7: "abc", 8: "abcdefg",
          9: "abcdfg"}
RENDITION_STYLES = ("seven_segment", "dot_matrix", "printed", "outline")


def render_digit_rendition(digit: int, style: str, fg: tuple[int, int, int], bg: tuple[int, int, int],
                           size: int = 56, dx: int = 0, dy: int = 0, thickness: float = 1.0,
                           slant: float = 0.0) -> Image.Image:
    """A digit drawn in a style unlike handwriting (the renditions shift of ImageNet-R): segments, dots, print."""
    s = size * SS
    canvas = Image.new("RGB", (s, s), bg)
    draw = ImageDraw.Draw(canvas)
    gw, gh = 0.46 * s, 0.72 * s  # glyph box
    x0, y0 = (s - gw) / 2 + dx * SS, (s - gh) / 2 + dy * SS
    if style == "seven_segment":
        t = 0.13 * gw * thickness
        mid = y0 + gh / 2
        segs = {"a": (x0, y0, x0 + gw, y0 + t), "d": (x0, y0 + gh - t, x0 + gw, y0 + gh),
                "g": (x0, mid - t / 2, x0 + gw, mid + t / 2), "f": (x0, y0, x0 + t, mid),
                "b": (x0 + gw - t, y0, x0 + gw, mid), "e": (x0, mid, x0 + t, y0 + gh),
                "c": (x0 + gw - t, mid, x0 + gw, y0 + gh)}
        for seg in _SEVEN[digit]:
            a, b, c, d = segs[seg]
            pad = t * 0.15
            draw.rectangle((a + pad, b + pad, c - pad, d - pad), fill=fg)
    else:
        mask = glyph_mask(str(digit))
        rows, cols = mask.shape
        cw, ch = gw / cols, gh / rows
        if style == "dot_matrix":
            r = min(cw, ch) * 0.42 * thickness
            for i in range(rows):
                for j in range(cols):
                    if mask[i, j]:
                        cx, cy = x0 + (j + 0.5) * cw, y0 + (i + 0.5) * ch
                        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg)
        elif style in ("printed", "outline"):
            layer = Image.new("L", (s, s), 0)
            ld = ImageDraw.Draw(layer)
            for i in range(rows):
                for j in range(cols):
                    if mask[i, j]:
                        ld.rectangle((x0 + j * cw, y0 + i * ch, x0 + (j + 1) * cw, y0 + (i + 1) * ch), fill=255)
            if style == "outline":
                k = max(3, int(round(cw * 0.35 * thickness)) | 1)
                grown = layer.filter(ImageFilter.MaxFilter(k))
                arr = (np.asarray(grown) > 0) & ~(np.asarray(layer.filter(ImageFilter.MinFilter(k))) > 0)
                layer = Image.fromarray((arr * 255).astype(np.uint8), mode="L")
            canvas.paste(Image.new("RGB", (s, s), fg), (0, 0), layer)
        else:
            raise ValueError(f"unknown rendition style {style!r}; expected one of {RENDITION_STYLES}")
    if slant:
        canvas = canvas.transform((s, s), Image.Transform.AFFINE, (1, slant, -slant * s / 2, 0, 1, 0),
                                  resample=Image.Resampling.BILINEAR, fillcolor=bg)
    return finish(canvas, (size, size))


RENDITION_PHRASES = {"seven_segment": "seven-segment", "dot_matrix": "dot-matrix", "printed": "blocky printed",
                     "outline": "outlined"}
_DARK = [(18, 18, 24), (20, 24, 70), (70, 20, 30), (25, 60, 35)]
_LIGHT = [(248, 248, 244), (235, 228, 205), (215, 230, 245)]


def build_digits_r(ctx: Ctx, n: int) -> list[Item]:
    """ImageNet-R analogue (OOD): DigitsCLS's ten classes drawn in styles never seen in training (seven-segment,
    dot-matrix, printed, outlined), in colour."""
    rng = ctx.rng
    labels = list(DIGIT_WORDS)
    items = []
    for i in range(n):
        d = rng.randrange(10)
        style = rng.choice(RENDITION_STYLES)
        dark_bg = rng.random() < 0.5
        bg = rng.choice(_DARK if dark_bg else _LIGHT)
        fg = rng.choice(list(COLOURS.values()) + ([(250, 250, 250)] if dark_bg else [(15, 15, 15)]))
        if dark_bg and sum(fg) < 300:
            fg = (250, 250, 250)
        params = {"dx": rng.randint(-4, 4), "dy": rng.randint(-4, 4), "thickness": rng.uniform(0.8, 1.3),
                  "slant": rng.choice((0.0, 0.0, 0.15, -0.1))}
        path = ctx.store.put(f"{ctx.split}/{i:05d}",
                             lambda: render_digit_rendition(d, style, fg, bg, **params))
        word = labels[d]
        items.append(Item(INSTR["classification"], path, (word, ""), None, label_candidates(word, labels, rng),
                          answer=f"This is the digit {word}, drawn in {RENDITION_PHRASES[style]} style.",
                          wrong=[f"This is the digit {labels[c]}, drawn in {RENDITION_PHRASES[style]} style."
                                 for c in CONFUSABLE[d]],
                          facts=[f"The image shows a single numeral drawn in {RENDITION_PHRASES[style]} style.",
                                 f"Its shape is that of the digit {d}."]))
    return items
