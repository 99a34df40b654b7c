"""Charts: bar charts with a letter under each bar and its value printed above it.

Values are printed, so every ChartQA-style question can be answered by reading the image alone.
"""
from __future__ import annotations

from PIL import Image, ImageDraw

from msolomon.worlds.canvas import COLOURS, draw_text
from msolomon.worlds.common import INSTR, Ctx, Item, label_candidates, pick_wrong


def render_bar_chart(values: list[int], labels: list[str], colours: list[str], size: int = 84,
                     vmax: int = 9) -> Image.Image:
    """A bar chart with a letter under each bar and its value above it (drawn at 1x: bitmap text stays crisp)."""
    img = Image.new("RGB", (size, size), (252, 252, 252))
    draw = ImageDraw.Draw(img)
    base, top, left = size - 13, 12, 5
    draw.line((left, top - 2, left, base), fill=(60, 60, 60))
    draw.line((left, base, size - 2, base), fill=(60, 60, 60))
    slot = (size - left - 3) / len(values)
    unit = (base - top) / vmax
    for k, (v, lab, col) in enumerate(zip(values, labels, colours)):
        x0 = left + 2 + k * slot + slot * 0.14
        x1 = left + 2 + (k + 1) * slot - slot * 0.14
        y = base - v * unit
        draw.rectangle((round(x0), round(y), round(x1), base - 1), fill=COLOURS[col])
        cx = (x0 + x1) / 2
        draw_text(draw, (round(cx - 3), base + 1), lab, (20, 20, 20))
        draw_text(draw, (round(cx - 3), round(y) - 11), str(v), (20, 20, 20))
    return img


LETTERS = "ABCDE"
CHART_ANSWERS = list(LETTERS) + [str(k) for k in range(10)] + list(COLOURS)


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
        cols = rng.sample(list(COLOURS), k)
        path = ctx.store.put(f"{ctx.split}/{i:05d}", lambda: render_bar_chart(vals, labels, cols))
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
