"""Documents: small forms (`Key: value` lines under a title) and coloured street signs with one word each.

Both test reading text in an image; signs are the out-of-distribution variant (TextVQA), forms the trained one
(DocVQA). Text uses the bitmap font, drawn at 1x so it stays crisp.
"""
from __future__ import annotations

from PIL import Image, ImageDraw

from msolomon.worlds.canvas import BACKGROUNDS, COLOURS, draw_text
from msolomon.worlds.common import INSTR, Ctx, Item, label_candidates, pick_wrong, random_background


def render_document(title: str, lines: list[str], size: int = 84, paper: tuple[int, int, int] = (250, 248, 240),
                    ink: tuple[int, int, int] = (25, 25, 25)) -> Image.Image:
    """A small form: an underlined title and a few `Key: value` lines in the bitmap font."""
    img = Image.new("RGB", (size, size), (170, 170, 170))
    draw = ImageDraw.Draw(img)
    draw.rectangle((1, 1, size - 2, size - 2), fill=paper, outline=(120, 120, 120))
    draw_text(draw, (4, 2), title, ink)
    draw.line((4, 13, 4 + 6 * len(title), 13), fill=ink)
    for k, line in enumerate(lines):
        draw_text(draw, (4, 16 + 12 * k), line, ink)
    return img


SIGN_SLOTS = ((4, 6), (44, 6), (4, 33), (44, 33), (4, 60), (44, 60))


def render_signs(signs: list[tuple[str, str, int]], background: str = "white", size: int = 84) -> Image.Image:
    """Coloured signs (colour, word, slot) each with a short word printed on it, on posts."""
    img = Image.new("RGB", (size, size), BACKGROUNDS[background])
    draw = ImageDraw.Draw(img)
    for colour, word, slot in signs:
        x, y = SIGN_SLOTS[slot]
        w, h = 36, 17
        draw.line((x + w // 2, y + h, x + w // 2, min(size - 1, y + h + 6)), fill=(90, 90, 90), width=2)
        draw.rectangle((x, y, x + w, y + h), fill=COLOURS[colour], outline=(40, 40, 40))
        r, g, b = COLOURS[colour]
        ink = (0, 0, 0) if (0.299 * r + 0.587 * g + 0.114 * b) > 150 else (255, 255, 255)
        draw_text(draw, (x + (w - 6 * len(word)) // 2 + 1, y + 3), word, ink)
    return img


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
        path = ctx.store.put(f"{ctx.split}/{i:05d}", lambda: render_document(title, lines))
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
        signs = list(zip(rng.sample(list(COLOURS), k), rng.sample(SIGN_WORDS, k),
                         rng.sample(range(len(SIGN_SLOTS)), k)))
        bg = random_background(rng)
        path = ctx.store.put(f"{ctx.split}/{i:05d}", lambda: render_signs(signs, bg))
        colour, word, _ = rng.choice(signs)
        q = f"What word is written on the {colour} sign?"
        others = [w for c, w, _ in signs if c != colour]
        items.append(Item(INSTR["vqa"].format(question=q), path, (word, ""), None,
                          label_candidates(word, list(SIGN_WORDS), rng), answer=f"The {colour} sign says {word}.",
                          wrong=[f"The {colour} sign says {w}." for w in others + pick_wrong(rng, SIGN_WORDS, word, 1)],
                          facts=["The signs read: " + "; ".join(f"{c} sign {w}" for c, w, _ in signs) + "."]))
    return items
