"""Writing the evaluation's outputs: the JSON report, its markdown tables, the accuracy-latency plot,
and the per-query predictions file. Files are written atomically so an interrupted run never leaves a
half-written report or sidecar part behind.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

MODE_ORDER = ("never", "auto", "always")
MODE_LABELS = {"never": "never (NoAug path)", "auto": "auto (model decides)", "always": "always (AlwaysAug path)"}


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def output_paths(out: Path) -> dict[str, Path]:
    """The files that go next to FILE.json: FILE.md, FILE.png, FILE.predictions.jsonl and the sidecar FILE.parts/."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix == ".json" else out
    return {
        "json": out,
        "md": stem.with_name(stem.name + ".md"),
        "png": stem.with_name(stem.name + ".png"),
        "predictions": stem.with_name(stem.name + ".predictions.jsonl"),
        "parts": stem.with_name(stem.name + ".parts"),
    }


def _ordered_modes(modes: Iterable[str]) -> list[str]:
    modes = list(modes)
    return [m for m in MODE_ORDER if m in modes] + [m for m in modes if m not in MODE_ORDER]


def _fmt(x: Any, nd: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def markdown_report(report: Mapping[str, Any]) -> str:
    """Markdown tables: modes x (meta-tasks, IND, OOD, overall, augment rate, latency); per dataset; thresholds."""
    modes = report["modes"]
    order = _ordered_modes(modes)
    tasks: list[str] = []
    for m in order:
        tasks += [t for t in modes[m]["by_meta_task"] if t not in tasks]
    lines = [
        f"# Evaluation: {report.get('model')}",
        "",
        f"Data: `{report.get('data')}` (split {report.get('split')}). Precision@1 in %, macro over datasets; "
        "a query counts when the positive is the unique top score (ties count as wrong). "
        "Augment rate and latency pooled over all queries; latency per query at batch size 1, "
        "raw input to normalised embedding, search excluded.",
        "",
        "| mode | " + " | ".join(tasks) + " | IND | OOD | overall | augment rate | latency mean ms | p50 | p95 |",
        "|---|" + "---:|" * (len(tasks) + 7),
    ]
    for m in order:
        r = modes[m]
        cells = [_fmt(r["by_meta_task"].get(t)) for t in tasks]
        cells += [_fmt(r["ind"]), _fmt(r["ood"]), _fmt(r["overall"]), _fmt(r["augment_rate"], 2)]
        cells += [_fmt(r["latency_ms"][k]) for k in ("mean", "p50", "p95")]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if order:
        lines.append("")
        lines.append(f"Chance (random ranking, macro): {_fmt(modes[order[0]].get('chance'))}")
    names: list[str] = []
    for m in order:
        names += [n for n in modes[m]["datasets"] if n not in names]
    lines += ["", "## Per dataset", "",
              "| dataset | meta-task | OOD | n | candidates | chance | "
              + " | ".join(f"{m} P@1 | {m} aug | {m} ms" for m in order) + " |",
              "|---|---|---|---:|---:|---:|" + "---:|" * (3 * len(order))]
    for name in names:
        first = next(modes[m]["datasets"][name] for m in order if name in modes[m]["datasets"])
        cells = [name, first["meta_task"], _fmt(first["ood"]), _fmt(first["n"]), _fmt(first.get("n_candidates")),
                 _fmt(first.get("chance"))]
        for m in order:
            d = modes[m]["datasets"].get(name)
            cells += [_fmt(d["p_at_1"]), _fmt(d["augment_rate"], 2), _fmt(d["latency_ms_mean"])] if d else ["–"] * 3
        lines.append("| " + " | ".join(cells) + " |")
    curve = report.get("thresholds")
    if curve:
        lines += ["", "## Decision threshold sweep (auto mode, from the never/always runs)", "",
                  "| threshold | IND | OOD | overall | augment rate | latency mean ms |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for e in curve:
            lines.append(f"| {e['threshold']:g} | {_fmt(e['ind'])} | {_fmt(e['ood'])} | {_fmt(e['overall'])} | "
                         f"{_fmt(e['augment_rate'], 2)} | {_fmt(e['latency_ms_mean'])} |")
    return "\n".join(lines) + "\n"


def plot_report(report: Mapping[str, Any], path: Path) -> None:
    """Precision@1 (overall) against mean latency: one point per mode, plus the threshold curve when present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    try:
        curve = report.get("thresholds") or []
        pts = [(e["latency_ms_mean"], e["overall"], e["threshold"]) for e in curve
               if e["latency_ms_mean"] is not None and e["overall"] is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", color="0.6", marker=".", zorder=1,
                    label="auto, threshold sweep")
            same: dict[tuple[float, float], list[str]] = {}  # thresholds that land on one point share a label
            for x, y, t in pts:
                same.setdefault((x, y), []).append(f"{t:g}")
            for (x, y), ts in same.items():
                ax.annotate("t=" + ", ".join(ts), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7,
                            color="0.4")
        markers = {"never": "o", "auto": "*", "always": "s"}
        for m in _ordered_modes(report["modes"]):
            r = report["modes"][m]
            x, y = r["latency_ms"]["mean"], r["overall"]
            if x is None or y is None:
                continue
            ax.scatter([x], [y], marker=markers.get(m, "D"), s=120 if m == "auto" else 60, zorder=2,
                       label=f"{MODE_LABELS.get(m, m)}: {y:.1f}")
        ax.set_xlabel("mean latency per query, ms (batch size 1)")
        ax.set_ylabel("Precision@1, % (macro over datasets)")
        ax.set_title(f"Accuracy vs latency: {Path(str(report.get('model'))).name or report.get('model')}")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        plt.close(fig)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All records of a jsonl file; a torn last line (from an interrupted append) is dropped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def append_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    atomic_write_text(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
