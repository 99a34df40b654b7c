"""Writing the evaluation's outputs: the JSON report, its markdown tables, the accuracy-latency plot,
and the per-query predictions file. Files are written atomically so an interrupted run never leaves a
half-written report or sidecar part behind.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from msolomon.files import (  # noqa: F401 (re-exported)
    append_jsonl,
    atomic_file,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    default_file_mode,
    read_jsonl,
)

MODE_ORDER = ("never", "auto", "always")
MODE_LABELS = {"never": "never (NoAug path)", "auto": "auto (model decides)", "always": "always (AlwaysAug path)"}




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


def fmt(x: Any, nd: int = 1) -> str:
    """A cell of a report's tables: floats to `nd` decimals, "–" for a missing value, yes/no for a flag."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def fmt_ci(x: Any, ci: Any, nd: int = 1) -> str:
    """A score with its interval: "18.9 [15.0, 22.8]" (just the score when there is no interval)."""
    if x is None or not ci:
        return fmt(x, nd)
    return f"{fmt(x, nd)} [{fmt(ci[0], nd)}, {fmt(ci[1], nd)}]"


def _group_line(label: str, groups: Any) -> str | None:
    if not isinstance(groups, Mapping):
        return None
    return (f"{label}: overall {fmt(groups.get('overall'))}, IND {fmt(groups.get('ind'))}, "
            f"OOD {fmt(groups.get('ood'))}")


def timing_sample_note(report: Mapping[str, Any]) -> str:
    """The sentence saying latency was sampled, when the queries were batched for accuracy."""
    settings = report.get("settings") or {}
    k = settings.get("timed_per_dataset")
    if k is None:
        return ""
    return (f" Latency measured on {k} evenly spaced queries per dataset encoded alone; the rest were encoded in "
            f"batches of {settings.get('batch_size')} for accuracy.")


def markdown_report(report: Mapping[str, Any]) -> str:
    """Markdown tables: modes x (meta-tasks, IND, OOD, overall, augment rate, latency); per dataset with chance, the
    text-only floor and P@1 with its 95% interval; thresholds."""
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
        "raw input to normalised embedding, search excluded. [lo, hi]: 95% bootstrap interval over queries."
        + timing_sample_note(report),
        "",
        "| mode | " + " | ".join(tasks)
        + " | IND | OOD | overall [95% CI] | augment rate | latency mean ms | p50 | p95 |",
        "|---|" + "---:|" * (len(tasks) + 7),
    ]
    for m in order:
        r = modes[m]
        cells = [fmt(r["by_meta_task"].get(t)) for t in tasks]
        cells += [fmt(r["ind"]), fmt(r["ood"]), fmt_ci(r["overall"], r.get("overall_ci95")),
                  fmt(r["augment_rate"], 2)]
        cells += [fmt(r["latency_ms"][k]) for k in ("mean", "p50", "p95")]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if order:
        first_mode = modes[order[0]]
        lines.append("")
        lines.append(_group_line("Chance (random pick of a candidate, macro)", first_mode.get("chance_macro"))
                     or f"Chance (random ranking, macro): {fmt(first_mode.get('chance'))}")
        floor_line = _group_line("Text-only floor (never looks at the image, macro)",
                                 first_mode.get("floor_text_only_macro"))
        if floor_line:
            lines += ["", floor_line]
    names: list[str] = []
    for m in order:
        names += [n for n in modes[m]["datasets"] if n not in names]
    lines += ["", "## Per dataset", "",
              "Text-only floor: 'majority' = the most frequent training answer per question template, without the "
              "image; 'chance' = image positives or no train split, where text alone cannot beat a random pick.", "",
              "| dataset | meta-task | OOD | n | candidates | chance | text-only floor | floor rule | "
              + " | ".join(f"{m} P@1 [95% CI] | {m} aug | {m} ms" for m in order) + " |",
              "|---|---|---|---:|---:|---:|---:|---|" + "---:|" * (3 * len(order))]
    for name in names:
        first = next(modes[m]["datasets"][name] for m in order if name in modes[m]["datasets"])
        rule = first.get("floor_rule")
        cells = [name, first["meta_task"], fmt(first["ood"]), fmt(first["n"]), fmt(first.get("n_candidates")),
                 fmt(first.get("chance")), fmt(first.get("floor_text_only")),
                 {"majority-per-template": "majority"}.get(rule, rule or "–")]
        for m in order:
            d = modes[m]["datasets"].get(name)
            cells += ([fmt_ci(d["p_at_1"], d.get("ci95")), fmt(d["augment_rate"], 2), fmt(d["latency_ms_mean"])]
                      if d else ["–"] * 3)
        lines.append("| " + " | ".join(cells) + " |")
    lines += decisions_markdown(report.get("decisions"))
    curve = report.get("thresholds")
    if curve:
        lines += ["", "## Decision threshold sweep (auto mode, from the never/always runs)", "",
                  "| threshold | IND | OOD | overall | augment rate | latency mean ms |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for e in curve:
            lines.append(f"| {e['threshold']:g} | {fmt(e['ind'])} | {fmt(e['ood'])} | {fmt(e['overall'])} | "
                         f"{fmt(e['augment_rate'], 2)} | {fmt(e['latency_ms_mean'])} |")
    return "\n".join(lines) + "\n"


def decisions_markdown(block: Mapping[str, Any] | None) -> list[str]:
    """The decisions section (msolomon.decisions): auto against the per-query oracle, with the counts per dataset."""
    if not block:
        return []
    orc = block["oracle"]
    gap = block.get("gap_closed") or {}
    lines = ["", "## Decisions: auto against the per-query oracle", "",
             "The oracle takes, for each query, the better of the never and always paths (never when both are right). "
             "Augmented queries: helped (always right, never wrong), hurt (the reverse), same. Embedded queries: "
             "missed (augmenting would have been right), saved (it would have been wrong), same. Decision accuracy: "
             "the share of the queries whose two paths disagree where auto took the right one.", "",
             f"Oracle: overall {fmt(orc.get('overall'))}, IND {fmt(orc.get('ind'))}, OOD {fmt(orc.get('ood'))}, "
             f"augment rate {fmt(orc.get('augment_rate'), 2)}, latency {fmt(orc.get('latency_ms_mean'))} ms. "
             f"Decision accuracy {fmt(block.get('decision_accuracy'), 3)} on {block.get('disagreements')} "
             f"disagreements (macro {fmt(block.get('decision_accuracy_macro'), 3)}). Share of the gap between "
             f"always and the oracle closed by auto: overall {fmt(gap.get('overall'), 2)}, "
             f"IND {fmt(gap.get('ind'), 2)}.", "",
             "| dataset | auto P@1 | oracle P@1 | helped | hurt | same (aug) | missed | saved | same (emb) | "
             "decision accuracy |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, d in block["datasets"].items():
        a, e = d["augmented"], d["embedded"]
        lines.append(f"| {name} | {fmt(d.get('p_at_1'))} | {fmt(d.get('oracle_p_at_1'))} | {a['helped']} | "
                     f"{a['hurt']} | {a['same']} | {e['missed']} | {e['saved']} | {e['same']} | "
                     f"{fmt(d.get('decision_accuracy'), 3)} |")
    return lines


def plot_floors(ax: Any, names: list[str], series: list[tuple[str, list[Any], list[Any], Any]],
                chance: list[Any], floor: list[Any]) -> None:
    """Horizontal bars of Precision@1 per dataset (one bar per series, with its 95% interval as an error bar),
    and each dataset's text-only floor and chance as marks across the bars.

    `series`: (label, P@1 values, [lo, hi] intervals or None, colour or None), values in `names` order.
    """
    import numpy as np

    k = max(1, len(series))
    height = 0.8 / k
    y = np.arange(len(names), dtype=float)
    for i, (label, vals, cis, colour) in enumerate(series):
        pos = y - 0.4 + height * (i + 0.5)
        v = np.array([np.nan if x is None else x for x in vals], dtype=float)
        err = np.array([[x - c[0], c[1] - x] if (c and x is not None) else [0.0, 0.0] for x, c in zip(vals, cis)],
                       dtype=float).T.reshape(2, -1)
        ax.barh(pos, np.nan_to_num(v), height, xerr=err, color=colour, label=label, alpha=0.85,
                error_kw={"elinewidth": 0.8, "capsize": 1.5, "ecolor": "0.2"})
    for vals, style, label in ((floor, {"color": "crimson", "marker": "|", "s": 260, "linewidths": 2.2},
                                "text-only floor"),
                               (chance, {"color": "black", "marker": "|", "s": 260, "linewidths": 1.2}, "chance")):
        pts = [(x, yy) for x, yy in zip(vals, y) if x is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], zorder=3, label=label, **style)
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("Precision@1, % (bars: 95% bootstrap interval)")
    tops = [c[1] for _, _, cis, _ in series for c in cis if c] + [x for _, vals, _, _ in series for x in vals
                                                                 if x is not None]
    tops += [x for x in list(chance) + list(floor) if x is not None]
    ax.set_xlim(0, min(100.0, 1.1 * max(tops, default=100.0) + 2.0))
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)


def plot_report(report: Mapping[str, Any], path: Path) -> None:
    """Left: Precision@1 (overall) against mean latency, one point per mode, plus the threshold curve when present.
    Right: Precision@1 per dataset and mode with its 95% interval, beside the dataset's text-only floor and chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = _ordered_modes(report["modes"])
    names: list[str] = []
    for m in order:
        names += [n for n in report["modes"][m]["datasets"] if n not in names]
    fig, (ax, ax_ds) = plt.subplots(1, 2, figsize=(13, max(4.4, 0.5 * len(names) + 1.2)), dpi=100,
                                    gridspec_kw={"width_ratios": [1, 1.1]})
    try:
        first = {n: next(report["modes"][m]["datasets"][n] for m in order if n in report["modes"][m]["datasets"])
                 for n in names}
        series = []
        for m in order:
            ds = report["modes"][m]["datasets"]
            series.append((m, [ds[n]["p_at_1"] if n in ds else None for n in names],
                           [ds[n].get("ci95") if n in ds else None for n in names], None))
        plot_floors(ax_ds, names, series, [first[n].get("chance") for n in names],
                    [first[n].get("floor_text_only") for n in names])
        ax_ds.set_title("Per dataset: P@1 by mode, text-only floor and chance")
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
            ci = r.get("overall_ci95")
            yerr = [[y - ci[0]], [ci[1] - y]] if ci else None
            ax.errorbar([x], [y], yerr=yerr, fmt=markers.get(m, "D"), markersize=11 if m == "auto" else 7,
                        capsize=3, zorder=2, label=f"{MODE_LABELS.get(m, m)}: {y:.1f}"
                                                   + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else ""))
        orc = (report.get("decisions") or {}).get("oracle") or {}
        if orc.get("latency_ms_mean") is not None and orc.get("overall") is not None:
            ax.plot([orc["latency_ms_mean"]], [orc["overall"]], "P", markersize=10, color="tab:purple", zorder=2,
                    label=f"per-query oracle (better of never/always): {orc['overall']:.1f}")
        first_mode = report["modes"][order[0]] if order else {}
        for key, style, label in (("floor_text_only_macro", {"color": "crimson", "linestyle": "--"},
                                   "text-only floor (macro)"),
                                  ("chance_macro", {"color": "black", "linestyle": ":"}, "chance (macro)")):
            level = (first_mode.get(key) or {}).get("overall")
            if level is not None:
                ax.axhline(level, linewidth=1, label=f"{label}: {level:.1f}", **style)
        ax.set_xlabel("mean latency per query, ms (batch size 1)")
        ax.set_ylabel("Precision@1, % (macro over datasets)")
        ax.set_title(f"Accuracy vs latency: {Path(str(report.get('model'))).name or report.get('model')}")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        with atomic_file(path, "wb") as fh:
            fig.savefig(fh, format="png")
    finally:
        plt.close(fig)


def write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    atomic_write_jsonl(path, records)
