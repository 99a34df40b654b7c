"""The error explorer: predictions files written by `python -m msolomon.evaluation` (FILE.predictions.jsonl,
one record per query and mode, with its decision, augmentation, correctness and top candidates), read only from
the folders the server was started with, never from a path typed into the page.
"""
from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from msolomon.report import MODE_ORDER, plot_report

logger = logging.getLogger(__name__)

SUFFIX = ".predictions.jsonl"
TABLE_HEADERS = ["dataset", "mode", "queries", "P@1 %", "augment rate", "latency ms (mean)"]
QUERY_HEADERS = ["#", "dataset", "mode", "decision", "right", "p(/augment)", "query"]


def find_files(folders: Iterable[Path | None]) -> dict[str, Path]:
    """Predictions files under the given folders, labelled by their path relative to their folder."""
    found: dict[str, Path] = {}
    for folder in folders:
        if folder is None or not Path(folder).is_dir():
            continue
        for path in sorted(Path(folder).rglob("*" + SUFFIX)):
            found[f"{Path(folder).name}/{path.relative_to(folder)}"] = path
    return found


NUMBER_FIELDS = ("latency_ms", "p_augment", "positive_score")


def _check_record(r: Any, name: str, line: int) -> dict[str, Any] | None:
    """One predictions line as the explorer reads it, or None to skip it (not a prediction); a field of the wrong
    type is refused naming the file, the line and the field."""
    import math

    if not isinstance(r, dict) or "dataset" not in r or "mode" not in r:
        return None
    for key in ("dataset", "mode"):
        if not isinstance(r[key], str):
            raise ValueError(f"{name}, line {line}: {key} must be text, got {r[key]!r}")
    for key in NUMBER_FIELDS:
        v = r.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise ValueError(f"{name}, line {line}: {key} must be a number, got {v!r}")
    if r.get("top") is not None and not isinstance(r["top"], list):
        raise ValueError(f"{name}, line {line}: top must be a list of candidates, got {type(r['top']).__name__}")
    return r


def load(path: Path) -> list[dict[str, Any]]:
    """The predictions of a file; a line cut by a run killed mid-way is skipped, a malformed one named."""
    records = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except ValueError:
                logger.info("%s, line %d: not JSON (a run cut while writing?); skipped", path.name, n)
                continue
            r = _check_record(raw, path.name, n)
            if r is not None:
                records.append(r)
    if not records:
        raise ValueError(f"{path.name} holds no predictions (expected the .predictions.jsonl of an evaluation)")
    return records


def _mode_key(mode: str) -> int:
    return MODE_ORDER.index(mode) if mode in MODE_ORDER else len(MODE_ORDER)


def dataset_table(records: Sequence[dict]) -> list[list[Any]]:
    """Per (dataset, mode): queries, Precision@1, augment rate, mean latency."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["dataset"], r["mode"])].append(r)
    rows = []
    for (dataset, mode), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], _mode_key(kv[0][1]))):
        lat = [float(r["latency_ms"]) for r in rs if r.get("latency_ms") is not None]
        rows.append([dataset, mode, len(rs), round(100 * float(np.mean([bool(r.get("correct")) for r in rs])), 1),
                     round(float(np.mean([r.get("decision") == "/augment" for r in rs])), 2),
                     round(float(np.mean(lat)), 1) if lat else None])
    return rows


def summary_report(records: Sequence[dict], name: str) -> dict[str, Any]:
    """The parts of an evaluation report the accuracy-latency plot reads, rebuilt from predictions."""
    by_mode: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_mode[r["mode"]][r["dataset"]].append(r)
    modes = {}
    for mode, per in by_mode.items():
        lat = [float(r["latency_ms"]) for rs in per.values() for r in rs if r.get("latency_ms") is not None]
        datasets = {d: {"p_at_1": float(100 * np.mean([bool(r.get("correct")) for r in rs]))} for d, rs in per.items()}
        modes[mode] = {"overall": float(np.mean([d["p_at_1"] for d in datasets.values()])),
                       "latency_ms": {"mean": float(np.mean(lat)) if lat else None}, "datasets": datasets}
    return {"model": name, "modes": modes}


def plot(path: Path, records: Sequence[dict], out: Path) -> Path:
    """The accuracy-latency plot: from the report beside the predictions file when there is one (it has the
    threshold curve), else from the predictions themselves."""
    report_file = path.with_name(path.name[: -len(SUFFIX)] + ".json")
    report = None
    if report_file.is_file():
        try:
            report = json.loads(report_file.read_text(encoding="utf-8"))
            report["modes"] = {m: v for m, v in report["modes"].items()
                               if isinstance(v, dict) and "overall" in v and isinstance(v.get("datasets"), dict)}
            if not report["modes"]:
                report = None
        except (ValueError, KeyError, TypeError, AttributeError):
            report = None
    if report is None:
        report = summary_report(records, path.name[: -len(SUFFIX)])
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_report(report, out)
    return out


QUALITY_HEADERS = ["dataset", "queries", "auto P@1 %", "oracle P@1 %", "helped", "hurt", "same (augmented)",
                   "missed", "saved", "same (embedded)", "decision accuracy"]
QUALITY = ("helped", "hurt", "same (augmented)", "missed", "saved", "same (embedded)")  # the count columns, in order


def _category(took_augment: bool, never_right: bool, always_right: bool) -> str:
    """`msolomon.decisions`' rule for one query: which path it took against the two paths' outcomes."""
    gain, loss = always_right and not never_right, never_right and not always_right
    if took_augment:
        return "helped" if gain else "hurt" if loss else "same (augmented)"
    return "missed" if gain else "saved" if loss else "same (embedded)"


def decision_quality(records: Sequence[dict]) -> list[list[Any]]:
    """The `decisions` block as a table, from the predictions of one model evaluated in auto, never and always:
    per dataset (and all datasets pooled) the augmented queries augmenting helped / hurt / left the same, the
    embedded ones it would have helped (missed) / hurt (saved), the per-query oracle and the decision accuracy
    where the two paths disagree. Marks each record with its query's category (`quality`) for the query browser.
    Empty when the file lacks one of the three modes."""
    from msolomon.decisions import dataset_decisions

    by_query: dict[tuple[str, Any], dict[str, dict]] = defaultdict(dict)
    for r in records:
        by_query[(r["dataset"], r.get("index"))][r["mode"]] = r
    per: dict[str, list[tuple[bool, bool, bool, bool]]] = defaultdict(list)
    for (dataset, _), modes in by_query.items():
        if not {"auto", "never", "always"} <= set(modes):
            continue
        took = modes["auto"].get("decision") == "/augment"
        e, a = bool(modes["never"].get("correct")), bool(modes["always"].get("correct"))
        per[dataset].append((took, e, a, bool(modes["auto"].get("correct"))))
        for r in modes.values():
            r["quality"] = _category(took, e, a)
    rows = []
    pooled: list[tuple[bool, bool, bool, bool]] = []
    for dataset in sorted(per) + (["all"] if len(per) > 1 else []):
        triples = per[dataset] if dataset != "all" else pooled
        if dataset != "all":
            pooled += triples
        took, never, always, auto_right = (list(x) for x in zip(*triples))
        d = dataset_decisions(took, never, always)
        oracle_right = [e or a for e, a in zip(never, always)]
        rows.append([dataset, len(triples), round(100 * float(np.mean(auto_right)), 1),
                     round(100 * float(np.mean(oracle_right)), 1), d["augmented"]["helped"], d["augmented"]["hurt"],
                     d["augmented"]["same"], d["embedded"]["missed"], d["embedded"]["saved"], d["embedded"]["same"],
                     d["decision_accuracy"]])
    return rows


def quality_cell(rows: Sequence[Sequence[Any]], row: int, col: int) -> tuple[str, str] | None:
    """The (dataset, category) a click on the decision-quality table asks to list, or None for a cell that is
    not a count."""
    if not 0 <= row < len(rows) or not 0 <= col < len(QUALITY_HEADERS):
        return None
    header = QUALITY_HEADERS[col]
    if header not in QUALITY:
        return None
    return str(rows[row][0]), header


def select(records: Sequence[dict], dataset: str = "all", mode: str = "all", decision: str = "all",
           outcome: str = "all", quality: str = "all") -> list[dict]:
    """The records that pass the query browser's filters."""
    out = []
    for r in records:
        if quality != "all" and r.get("quality") != quality:
            continue
        if dataset != "all" and r["dataset"] != dataset:
            continue
        if mode != "all" and r["mode"] != mode:
            continue
        if decision != "all" and r.get("decision") != decision:
            continue
        if outcome != "all" and bool(r.get("correct")) != (outcome == "right"):
            continue
        out.append(r)
    return out


def query_rows(records: Sequence[dict], limit: int = 500) -> list[list[Any]]:
    def short(text: Any) -> str:
        text = " ".join(str(text or "").replace("<|image_1|>", " ").split())
        return text if len(text) <= 90 else text[:87] + "…"

    rows = [[i, r["dataset"], r["mode"], r.get("decision"), "yes" if r.get("correct") else "no",
             None if r.get("p_augment") is None else round(float(r["p_augment"]), 3), short(r.get("query"))]
            for i, r in enumerate(records[:limit])]
    if len(records) > limit:  # said in the list itself, so nobody takes the first rows for all of them
        rows.append(["…", "", "", "", "", None, f"{len(records) - limit} more not listed: filter by dataset, mode, "
                                               "decision or outcome to see them"])
    return rows


def evaluate_from_page(model: Any, data_dir: Path, datasets: Sequence[str], limit: int, modes: Sequence[str],
                       out_root: Path) -> Path:
    """Evaluate on a few queries of a few MiniMMEB datasets; returns the predictions file it wrote."""
    from msolomon.evaluation import EvalSettings, evaluate

    if not datasets:
        raise ValueError("choose at least one dataset")
    if not modes:
        raise ValueError("choose at least one mode")
    out = Path(out_root) / time.strftime("run-%Y%m%d-%H%M%S") / "report.json"
    settings = EvalSettings(modes=tuple(modes), limit=int(limit), datasets=tuple(datasets), fresh=True)
    evaluate(model, data_dir, settings, out=out, model_name="the demo's model")
    return out.with_name("report" + SUFFIX)


def detail_html(r: dict) -> str:
    """One query: its text, decision, augmentation and top candidates, the known answer marked."""
    from html import escape

    verdict = "<b style='color:#16a34a'>right</b>" if r.get("correct") else "<b style='color:#dc2626'>wrong</b>"
    top = "".join(
        f"<li>{'<b>' if c.get('correct') else ''}{escape(str(c.get('text') or Path(str(c.get('image'))).name))}"
        f" <small>({float(c.get('score', float('nan'))):.3f})</small>{' ✓ answer</b>' if c.get('correct') else ''}"
        "</li>" for c in r.get("top") or [])
    p = r.get("p_augment")
    lat = r.get("latency_ms")
    latency = "not timed (batched)" if lat is None else f"{float(lat):.1f} ms"
    return (f"<div id='explorer-detail'><p>{escape(r['dataset'])} #{r.get('index')} · mode {escape(r['mode'])} · "
            f"{escape(str(r.get('decision')))} (p(/augment) {'–' if p is None else f'{float(p):.3f}'}) · {verdict} · "
            f"{latency}</p>"
            f"<p><b>query</b>: {escape(str(r.get('query') or ''))}</p>"
            f"<p><b>augmentation</b>: {escape(r.get('augmentation') or '(none)')}</p>"
            f"<p><b>top candidates</b> (positive score {float(r.get('positive_score', float('nan'))):.3f}):</p>"
            f"<ol>{top}</ol></div>")


def detail_image(r: dict) -> Any:
    """The query's image as a PIL image, or None when it has none or the file is not on this machine."""
    from msolomon.processing import load_image

    img = r.get("image")
    if not img or not Path(str(img)).is_file():
        return None
    try:
        return load_image(str(img))
    except ValueError:
        return None
