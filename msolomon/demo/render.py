"""HTML for the page's results: the ranked list, the latency bars, the side-by-side comparison.

Plain HTML with inline styles and no scripts: nothing is fetched from outside the machine, and every text that
comes from a visitor or a model is escaped (a query full of `<|im_end|>` shows as text, not as markup).
"""
from __future__ import annotations

import math
from html import escape
from pathlib import Path
from typing import Sequence

from msolomon.demo.service import RANK_DEPTH, TIMING_ORDER, HitView, SearchOutcome, StepByStep, WhatIf

COLOURS = {"preprocess": "#9ca3af", "decide": "#6366f1", "generate": "#f59e0b", "embed": "#10b981",
           "search": "#0ea5e9", "queue": "#d1d5db"}
RIGHT, WRONG = "#16a34a", "#dc2626"


def _name(hit: HitView) -> str:
    """How a candidate reads on the page: an image by its file name (with its text, when it has one: grounding
    crops all share one instruction text), else its text."""
    if hit.image:
        return escape(Path(hit.image).name) + (f" · {escape(hit.text)}" if hit.text else "")
    return escape(hit.text) if hit.text else "?"


def _candidate_name(text: str | None, image: str | None) -> str:
    """`_name` for a candidate given by its text and image."""
    return _name(HitView(0, 0.0, text or None, image, False))


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


PATHS = {"never": "without augmenting (/embed, the NoAug path)", "always": "with an augmentation (/augment, the "
                                                                           "AlwaysAug path)"}
VERDICT_COLOURS = {"helped": RIGHT, "hurt": WRONG, "changed nothing": "#6b7280"}


def what_if_html(w: WhatIf | None, pending: bool = False) -> str:
    """The path not taken, beside the decision: its top 3, where the search's top result went, and for a query
    with a known answer the answer's rank on both paths with the verdict."""
    if w is None:
        text = "computing what the other path gives…" if pending else ""
        return f"<div id='what-if' style='color:#777'>{text}</div>"
    aug = f" It writes: <i>{escape(w.augmentation)}</i>." if w.augmentation else ""
    top = "".join(f"<li>{'<b>' if h.correct else ''}{thumbnail(h.image, 28)}{_name(h)} "
                  f"<small>({h.score:.3f})</small>{' ✓ answer</b>' if h.correct else ''}</li>" for h in w.hits)
    moved = ""
    if w.top_moved_to is not None:
        moved = ("<p>The search's top result stays first on this path.</p>" if w.top_moved_to == 1 else
                 f"<p>The search's top result would rank <b>#{w.top_moved_to}</b> on this path.</p>")
    answer = ""
    if w.answer_ranks is not None:
        def rank(r: int | None) -> str:
            return f"#{r}" if r else f"below #{RANK_DEPTH}"

        colour = VERDICT_COLOURS.get(w.verdict or "", "#374151")
        answer = (f"<p>Known answer: {rank(w.answer_ranks.get('never'))} without augmenting, "
                  f"{rank(w.answer_ranks.get('always'))} with it → <b style='color:{colour}'>augmenting "
                  f"{escape(w.verdict or '')}</b>.</p>")
    return (f"<div id='what-if' style='border-left:3px solid #a5b4fc;padding-left:8px'>"
            f"<div style='font-weight:600'>What if: {escape(PATHS[w.mode])}</div>"
            f"<div style='font-size:0.85em;color:#555'>its extra model call took {w.ms:.1f} ms, not counted in the "
            f"search's time.{aug}</div><ol style='margin:4px 0 0 18px;padding:0'>{top}</ol>{moved}{answer}</div>")


def _chip(text: str, colour: str, title: str = "") -> str:
    shown = escape(text).replace("\n", "↵")
    tip = f" title='{escape(title)}'" if title else ""
    return (f"<span class='tok'{tip} style='display:inline-block;margin:1px;padding:0 3px;border-radius:3px;"
            f"background:{colour};font-family:ui-monospace,monospace;font-size:0.85em;white-space:pre'>{shown}</span>")


def step_html(s: StepByStep) -> str:
    """The teaching view: the prompt token by token, the decision against the threshold, each written token with
    its probability, and how the ranking moves from `/embed` to the full augmentation."""
    ex = s.explanation
    chips = "".join(_chip(f"<image × {p.count} tokens>" if p.image else p.text,
                          "#e0e7ff" if p.image else "#fde68a" if p.special else "#f3f4f6") for p in ex.prompt)
    p_aug = ex.p_augment
    decided = ("the mode forces it" if s.mode != "auto" else
               f"p(/augment) {p_aug:.3f} {'≥' if p_aug >= s.threshold else '<'} threshold {s.threshold:g}")
    bar = (f"<div style='display:flex;height:18px;max-width:480px;border:1px solid #ccc'>"
           f"<div style='width:{100 * p_aug:.1f}%;background:#f59e0b'></div>"
           f"<div style='width:{100 * (1 - p_aug):.1f}%;background:#10b981'></div></div>"
           f"<div style='position:relative;max-width:480px;height:12px'><div style='position:absolute;"
           f"left:{100 * s.threshold:.1f}%;border-left:2px solid #111;height:12px'></div></div>")
    written = "".join(
        _chip(w.text, "#fed7aa" if not w.terminal else "#fde68a",
              "runner-ups: " + ", ".join(f"{t!r} {p:.2f}" for t, p in w.alternatives))
        + f"<sub style='font-size:0.7em;color:#555'>{w.probability:.2f}{' forced' if w.forced else ''}</sub> "
        for w in ex.written)
    rows = []
    def score(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f}"

    def rank(r: int | None) -> str:
        return f"#{r}" if r else f"below #{RANK_DEPTH}"

    for c in s.candidates:
        if c.embed_rank and c.augment_rank:
            moved = c.embed_rank - c.augment_rank
            arrow = f"▲{moved}" if moved > 0 else f"▼{-moved}" if moved < 0 else "="
        else:
            arrow = "▲" if c.augment_rank else "▼"
        mark = f" <b style='color:{RIGHT}'>✓ answer</b>" if c.correct else ""
        rows.append(f"<tr class='step-candidate'><td>{thumbnail(c.image, 28)}{_candidate_name(c.name, c.image)}"
                    f"{mark}</td><td align='right'>{score(c.embed_score)}</td>"
                    f"<td align='center'>{rank(c.embed_rank)}</td><td align='right'>{score(c.augment_score)}</td>"
                    f"<td align='center'>{rank(c.augment_rank)}</td><td align='center'>{arrow}</td></tr>")
    table = ("<table style='width:100%;border-collapse:collapse'><thead><tr><th align='left'>candidate</th>"
             "<th>score with /embed</th><th>rank</th><th>score with the augmentation</th><th>rank</th><th>moved</th>"
             "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    traj = []
    for t in s.trajectory:
        so_far = "".join(w.text for w in ex.written[: t["written"]]).strip() or "(nothing yet)"
        ans = "" if not s.answer else f"<td align='center'>{rank(t['answer_rank'])}</td>"
        mark = " ✓" if t["top_correct"] else ""
        traj.append(f"<tr class='step-prefix'><td>{t['written']}</td><td>{escape(so_far)}</td>"
                    f"<td>{thumbnail(t['top_image'], 24)}{_candidate_name(t['top'], t['top_image'])}{mark}"
                    f"</td>{ans}</tr>")
    ans_head = "<th>answer's rank</th>" if s.answer else ""
    trajectory = ("<table style='width:100%;border-collapse:collapse'><thead><tr><th align='left'>tokens written</th>"
                  "<th align='left'>augmentation so far</th><th align='left'>top candidate</th>" + ans_head +
                  "</tr></thead><tbody>" + "".join(traj) + "</tbody></table>")
    answer = f" The known answer is <b>{escape(s.answer)}</b>." if s.answer else ""
    return (f"<div id='step-by-step'>"
            f"<h3>1. The prompt, as the model reads it ({ex.n_prompt_tokens} tokens)</h3><div>{chips}</div>"
            f"<h3>2. The decision: p(/augment) {p_aug:.3f} against p(/embed) {1 - p_aug:.3f}</h3>{bar}"
            f"<p>Mode <b>{escape(s.mode)}</b>: <b>{escape(s.decision)}</b> ({escape(decided)}). The black mark is the "
            f"threshold.</p>"
            f"<h3>3. What it writes after /augment, token by token (probability under each; hover for the "
            f"runner-ups)</h3><div>{written}</div>"
            f"<h3>4. The ranking with /embed and with the augmentation</h3><p>Scores are cosine similarities "
            f"between the query embedding and each candidate.{answer}</p>{table}"
            f"<h3>5. The moment augmenting changes the ranking</h3><p>The query embedded after each written token "
            f"(the prefix, then the terminal token): where the top candidate changes, the written words moved it."
            f"</p>{trajectory}<p style='font-size:0.85em;color:#555'>Computed in {s.ms:.0f} ms.</p></div>")
