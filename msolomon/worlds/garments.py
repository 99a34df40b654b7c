"""Garments: shirts and dresses whose colour, pattern and sleeves are all visible, photographed product-style.

The FashionIQ analogue needs a small closed world where every combination exists, so a style note always has exactly
one right garment in the gallery.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from msolomon.worlds.canvas import BACKGROUNDS, COLOURS, SS, finish
from msolomon.worlds.common import INSTR, TARGET_IMAGE, Ctx, Item, Target, shuffled_candidates

GARMENTS = ("shirt", "dress")
PATTERNS = ("plain", "striped", "dotted", "checked")
SLEEVES = ("short", "long")


def render_garment(kind: str, colour: str, pattern: str, sleeves: str, size: int = 56,
                   background: str = "white") -> Image.Image:
    """A product-style garment silhouette: kind, colour, pattern and sleeve length are all visible."""
    s = size * SS
    u = s / 16
    mask = Image.new("L", (s, s), 0)
    md = ImageDraw.Draw(mask)
    arm = 7 * u if sleeves == "long" else 3 * u
    if kind == "shirt":
        md.polygon([(5 * u, 2 * u), (11 * u, 2 * u), (11 * u, 14 * u), (5 * u, 14 * u)], fill=255)
    elif kind == "dress":
        md.polygon([(6 * u, 2 * u), (10 * u, 2 * u), (10.5 * u, 7 * u), (13 * u, 14.5 * u), (3 * u, 14.5 * u),
                    (5.5 * u, 7 * u)], fill=255)
    else:
        raise ValueError(f"unknown garment {kind!r}; expected one of {GARMENTS}")
    x_l, x_r = (5 * u, 11 * u) if kind == "shirt" else (6 * u, 10 * u)
    md.polygon([(x_l, 2 * u), (x_l, 4.5 * u), (x_l - 2.2 * u, 2 * u + arm), (x_l - 3.8 * u, 1.3 * u + arm)],
               fill=255)
    md.polygon([(x_r, 2 * u), (x_r, 4.5 * u), (x_r + 2.2 * u, 2 * u + arm), (x_r + 3.8 * u, 1.3 * u + arm)],
               fill=255)
    md.ellipse((7 * u, 1 * u, 9 * u, 3 * u), fill=0)  # neckline
    cloth = Image.new("RGB", (s, s), COLOURS[colour])
    cd = ImageDraw.Draw(cloth)
    if pattern == "striped":
        for y in range(0, s, int(2 * u)):
            cd.rectangle((0, y, s, y + 0.7 * u), fill=(250, 250, 250))
    elif pattern == "dotted":
        r = 0.45 * u
        for i, y in enumerate(np.arange(u, s, 1.6 * u)):
            for x in np.arange(u + (0.8 * u if i % 2 else 0), s, 1.6 * u):
                cd.ellipse((x - r, y - r, x + r, y + r), fill=(250, 250, 250))
    elif pattern == "checked":
        step = int(2 * u)
        for i, y in enumerate(range(0, s, step)):
            for j, x in enumerate(range(0, s, step)):
                if (i + j) % 2:
                    cd.rectangle((x, y, x + step - 1, y + step - 1), fill=(245, 245, 245))
    elif pattern != "plain":
        raise ValueError(f"unknown pattern {pattern!r}; expected one of {PATTERNS}")
    canvas = Image.new("RGB", (s, s), BACKGROUNDS[background])
    canvas.paste(cloth, (0, 0), mask)
    return finish(canvas, (size, size))


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
    values = {"colour": list(COLOURS), "pattern": list(PATTERNS), "sleeves": list(SLEEVES)}

    def image(g: dict) -> Target:
        key = f"gallery/{g['kind']}_{g['colour']}_{g['pattern']}_{g['sleeves']}"
        return (TARGET_IMAGE, ctx.store.put(key, lambda: render_garment(g["kind"], g["colour"], g["pattern"],
                                                                          g["sleeves"])))

    pool = [image({"kind": k, "colour": c, "pattern": p, "sleeves": s}) for k in GARMENTS for c in COLOURS
            for p in PATTERNS for s in SLEEVES]
    items = []
    while len(items) < n:
        ref = {"kind": rng.choice(GARMENTS), **{a: rng.choice(v) for a, v in values.items()}}
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
