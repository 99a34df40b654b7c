"""HTML for the page's results: the ranked list, the latency bars, the side-by-side comparison.

Plain HTML with inline styles and no scripts: nothing is fetched from outside the machine, and every text that
comes from a visitor or a model is escaped (a query full of `<|im_end|>` shows as text, not as markup).
"""
from __future__ import annotations

import math
from html import escape
from pathlib import Path
from typing import Sequence

from msolomon.demo.service import TIMING_ORDER, HitView, SearchOutcome

COLOURS = {"preprocess": "#9ca3af", "decide": "#6366f1", "generate": "#f59e0b", "embed": "#10b981",
           "search": "#0ea5e9", "queue": "#d1d5db"}
RIGHT, WRONG = "#16a34a", "#dc2626"


def _name(hit: HitView) -> str:
    """How a candidate reads on the page: an image by its file name (with its text, when it has one: grounding
    crops all share one instruction text), else its text."""
    if hit.image:
        return escape(Path(hit.image).name) + (f" · {escape(hit.text)}" if hit.text else "")
    return escape(hit.text) if hit.text else "?"


def _key(hit: HitView) -> tuple[str | None, str | None]:
    """A candidate's identity: its text and its image. Not its name: two crops share a text."""
    return hit.text, hit.image


def thumbnail(image: str | None, size: int = 40) -> str:
    """A small inline picture of an image candidate (a data: URI: nothing of the server's folders is served)."""
    if not image:
        return ""
    import base64
    import io

    from msolomon.processing import load_image

    try:
        picture = load_image(image)
    except ValueError:
        return ""
    picture.thumbnail((size, size))
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode()
    return (f"<img src='data:image/png;base64,{data}' alt='{escape(Path(image).name)}' "
            f"style='height:{size}px;vertical-align:middle;margin-right:4px'>")


def decision_label(out: SearchOutcome) -> dict[str, float]:
    """gr.Label's confidences: p(/augment) and p(/embed)."""
    p = float(out.p_augment)
    return {"/augment": p, "/embed": 1.0 - p}


def decision_html(out: SearchOutcome) -> str:
    why = {"auto": f"p(/augment) = {out.p_augment:.3f} {'≥' if out.p_augment >= out.threshold else '<'} "
                   f"threshold {out.threshold:g}",
           "never": "mode never forces /embed (the NoAug path)",
           "always": "mode always forces /augment (the AlwaysAug path)"}[out.mode]
    colour = "#b45309" if out.decision == "/augment" else "#047857"
    state = "" if out.final else " · writing the augmentation…"
    return (f"<div id='decision'><span style='font-size:1.4em;font-weight:700;color:{colour}'>"
            f"{escape(out.decision)}</span> <span style='color:#555'>({escape(why)}){state}</span></div>")


def hits_html(out: SearchOutcome) -> str:
    """The ranked list: rank, score, text or image name, and the known answer marked when the query is a
    benchmark example."""
    if not out.final:
        return "<div id='hits' style='color:#777'>searching after the augmentation is written…</div>"
    head = ""
    if out.example:
        if out.positive_rank == 1:
            head = f"<p style='color:{RIGHT};font-weight:600'>✓ right: the known answer ({escape(out.answer or '')})" \
                   " ranks first.</p>"
        else:
            where = f"ranks {out.positive_rank}" if out.positive_rank else "is not in this corpus"
            head = f"<p style='color:{WRONG};font-weight:600'>✗ wrong: the known answer ({escape(out.answer or '')})" \
                   f" {where}.</p>"
    rows = []
    for h in out.hits:
        mark = f"<b style='color:{RIGHT}'>✓ answer</b>" if h.correct else ""
        kind = "image" if h.image else "text"
        label = _name(h)
        rows.append(f"<tr><td>{h.rank}</td><td>{h.score:.3f}</td><td>{kind}</td><td>{label}</td><td>{mark}</td></tr>")
    return (f"<div id='hits'>{head}<table style='width:100%;border-collapse:collapse'>"
            "<thead><tr><th align='left'>#</th><th align='left'>score</th><th align='left'>kind</th>"
            "<th align='left'>candidate</th><th></th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>")


def gallery_items(out: SearchOutcome) -> list[tuple[object, str]]:
    """(image, caption) for the image candidates among the hits: the decoded image, not its path, so the page
    gets a copy in gradio's own cache and the server's folders stay unserved; the caption names the file."""
    from msolomon.processing import load_image

    items = []
    for h in out.hits:
        if not h.image:
            continue
        try:
            picture = load_image(h.image)
        except ValueError:  # a file gone from disk: listed in the table, not shown
            continue
        items.append((picture, f"#{h.rank} · {Path(h.image).name} · {h.score:.3f}" + (" · ✓ answer" if h.correct
                                                                                      else "")))
    return items


def latency_html(timings: dict[str, float], title: str = "") -> str:
    """A small horizontal bar chart of the steps' times and the total (ms)."""
    steps = [(k, float(timings[k])) for k in (*TIMING_ORDER, "queue") if k in timings]
    total = float(timings.get("total", sum(v for k, v in steps if k != "queue")))
    scale = max([v for _, v in steps] + [total, 1e-9])
    rows = []
    for key, value in steps + [("total", total)]:
        width = 0 if not math.isfinite(value) else max(100 * value / scale, 0.5 if value > 0 else 0)
        colour = COLOURS.get(key, "#374151")
        label = key if key != "queue" else "queue (waiting to be batched)"
        rows.append(f"<div style='display:flex;align-items:center;gap:6px;margin:2px 0'>"
                    f"<span style='width:170px;font-size:0.85em'>{label}</span>"
                    f"<span style='display:inline-block;height:12px;width:{width:.1f}%;max-width:60%;"
                    f"background:{colour}'></span><span style='font-size:0.85em'>{value:.1f} ms</span></div>")
    caption = f"<div style='font-weight:600'>{escape(title)}</div>" if title else ""
    return f"<div class='latency'>{caption}{''.join(rows)}</div>"


def compare_html(runs: Sequence[tuple[str, SearchOutcome]], note: str) -> str:
    """The comparison: one column per configuration, then a table of the ranks each gave each candidate."""
    cols = []
    for label, out in runs:
        aug = escape(out.augmentation) if out.augmentation else "<i>(none)</i>"
        top = "".join(f"<li>{'<b>' if h.correct else ''}{thumbnail(h.image, 28)}{_name(h)} "
                      f"<small>({h.score:.3f})</small>"
                      f"{' ✓</b>' if h.correct else ''}</li>" for h in out.hits)
        cols.append(f"<div style='flex:1;min-width:200px;border:1px solid #ddd;border-radius:6px;padding:8px'>"
                    f"<div style='font-weight:700'>{escape(label)}</div>"
                    f"<div>{escape(out.decision)} · p(/augment) {out.p_augment:.3f} · "
                    f"<b>{out.timings.get('total', 0.0):.1f} ms</b></div>"
                    f"<div style='font-size:0.85em;color:#555'>augmentation: {aug}</div>"
                    f"<ol style='margin:4px 0 0 18px;padding:0'>{top}</ol></div>")
    order: dict[tuple, HitView] = {}  # one row per candidate, keyed by what it is, not by how it reads
    for _, out in runs:
        for h in out.hits:
            order.setdefault(_key(h), h)
    ranks = {label: {_key(h): h.rank for h in out.hits} for label, out in runs}
    rows = []
    for key, hit in order.items():
        cells = [ranks[label].get(key) for label, _ in runs]
        differs = len({c for c in cells}) > 1
        style = " style='background:#fef3c7'" if differs else ""
        mark = " ✓" if hit.correct else ""
        rows.append(f"<tr class='candidate'{style}><td>{thumbnail(hit.image)}{_name(hit)}{mark}</td>"
                    + "".join(f"<td align='center'>{c or '–'}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{escape(label)}</th>" for label, _ in runs)
    table = (f"<table style='width:100%;border-collapse:collapse;margin-top:10px'><thead><tr><th align='left'>"
             f"candidate</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
             "<p style='font-size:0.85em;color:#555'>Rank each configuration gave each candidate in its top-k "
             "(– = not in it); highlighted rows are where the rankings differ.</p>")
    return (f"<div id='compare'><p>{escape(note)}</p><div style='display:flex;gap:8px;flex-wrap:wrap'>"
            f"{''.join(cols)}</div>{table}</div>")
