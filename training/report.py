"""The reproduce report: the paper's comparison (NoAug, AlwaysAug, M-Solomon) as JSON, markdown and a plot."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from msolomon.data import META_TASKS

MAIN_ROWS = (("NoAug", "noaug", "never"), ("AlwaysAug", "alwaysaug", "always"), ("M-Solomon", "msolomon", "auto"))
PAPER_HEADLINE_SETS = ("FashionIQ", "ImageNet-R")  # the MMEB sets of the paper's headline results (seed review)


def mirror_sets(dataset_meta: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """MiniMMEB datasets whose MMEB analogue is one of the paper's headline sets, e.g. FashionCIR -> FashionIQ."""
    return {name: meta["analogue"] for name, meta in sorted(dataset_meta.items())
            if meta.get("analogue") in PAPER_HEADLINE_SETS}


def _fmt(x: Any, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def claims(result: Mapping[str, Any]) -> list[dict]:
    """The paper's claims checked on this run: M-Solomon beats NoAug by ≥3 points, is at least AlwaysAug,
    and costs at most 0.6× AlwaysAug's latency; overall and on the mirror sets."""
    m = result["models"]
    rows = []

    def entry(scope: str, get) -> None:
        no, al, ms = get("noaug", "never"), get("alwaysaug", "always"), get("msolomon", "auto")
        rows.append({"scope": scope, "noaug": no[0], "alwaysaug": al[0], "msolomon": ms[0],
                     "gain_over_noaug": None if ms[0] is None else round(ms[0] - no[0], 2),
                     "gain_over_alwaysaug": None if ms[0] is None else round(ms[0] - al[0], 2),
                     "latency_ratio_vs_alwaysaug": None if not al[1] else round(ms[1] / al[1], 3),
                     "holds": bool(ms[0] is not None and ms[0] - no[0] >= 3 and ms[0] >= al[0]
                                   and al[1] and ms[1] / al[1] <= 0.6)})

    entry("overall", lambda k, mode: (m[k]["modes"][mode]["overall"], m[k]["modes"][mode]["latency_ms"]["mean"]))
    for name, analogue in result.get("mirrors", {}).items():
        if name in m["msolomon"]["modes"]["auto"]["datasets"]:
            entry(f"{name} ({analogue} mirror)", lambda k, mode, n=name: (
                m[k]["modes"][mode]["datasets"][n]["p_at_1"], m[k]["modes"][mode]["datasets"][n]["latency_ms_mean"]))
    return rows


def markdown(result: Mapping[str, Any]) -> str:
    m = result["models"]
    tasks = [t for t in META_TASKS if t in m["msolomon"]["modes"]["auto"]["by_meta_task"]]
    head = ["model", "mode"] + [{"vqa": "VQA"}.get(t, t.capitalize()) for t in tasks] + ["IND", "OOD", "Overall", "/augment rate",
                                                                 "latency ms (mean)"]
    lines = ["# M-Solomon on MiniMMEB: the paper's comparison", "",
             "Precision@1 (%) on MiniMMEB test; latency per query at batch size 1 on this machine's CPU.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(label: str, key: str, mode: str) -> str:
        r = m[key]["modes"][mode]
        cells = [label, mode] + [_fmt(r["by_meta_task"].get(t)) for t in tasks] + [
            _fmt(r["ind"]), _fmt(r["ood"]), f"**{_fmt(r['overall'])}**", _fmt(r["augment_rate"], 2),
            _fmt(r["latency_ms"]["mean"])]
        return "| " + " | ".join(cells) + " |"

    lines += [row(label, key, mode) for label, key, mode in MAIN_ROWS]
    lines += ["", "Every model in every mode:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [row(key, key, mode) for key in m for mode in ("never", "always", "auto") if mode in m[key]["modes"]]
    lines += ["", "## Claims checked", "", "| scope | NoAug | AlwaysAug | M-Solomon | vs NoAug | vs AlwaysAug | "
              "latency ÷ AlwaysAug | holds |", "|---|---|---|---|---|---|---|---|"]
    for c in claims(result):
        lines.append(f"| {c['scope']} | {_fmt(c['noaug'])} | {_fmt(c['alwaysaug'])} | {_fmt(c['msolomon'])} | "
                     f"{c['gain_over_noaug']:+.1f} | {c['gain_over_alwaysaug']:+.1f} | "
                     f"{_fmt(c['latency_ratio_vs_alwaysaug'], 2)} | {'yes' if c['holds'] else 'no'} |")
    split = result["split"]
    lines += ["", "## Pilot split (from the NoAug and AlwaysAug pilot evaluations)", "",
              f"Margin: AlwaysAug must beat NoAug by more than {split.get('margin')} points for D^A.", "",
              "| dataset | meta-task | NoAug | AlwaysAug | delta | split |", "|---|---|---|---|---|---|"]
    for name, ev in sorted(split["datasets"].items()):
        lines.append(f"| {name} | {ev.get('meta_task')} | {_fmt(ev['noaug_p_at_1'])} | {_fmt(ev['alwaysaug_p_at_1'])} "
                     f"| {ev['delta']:+.1f} | {'D^A (augment)' if ev['assignment'] == 'augment' else 'D^E (embed)'} |")
    lines += ["", "## Per dataset (native mode of each model)", "",
              "| dataset | task | OOD | chance | NoAug | AlwaysAug | M-Solomon | M-Solomon /augment rate |",
              "|---|---|---|---|---|---|---|---|"]
    ds = m["msolomon"]["modes"]["auto"]["datasets"]
    for name in sorted(ds):
        vals = [m[k]["modes"][mode]["datasets"][name]["p_at_1"] for _, k, mode in MAIN_ROWS]
        lines.append(f"| {name} | {ds[name]['meta_task']} | {'yes' if ds[name]['ood'] else ''} | "
                     f"{_fmt(ds[name].get('chance'))} | " + " | ".join(_fmt(v) for v in vals) +
                     f" | {_fmt(ds[name]['augment_rate'], 2)} |")
    if "timings_s" in result:
        lines += ["", "Stage times (s, summed over every invocation on the run folder): " + ", ".join(f"{k} {v:.0f}" for k, v in result["timings_s"].items())]
    return "\n".join(lines) + "\n"


def plot(result: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = result["models"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = {"noaug": "tab:blue", "alwaysaug": "tab:orange", "msolomon": "tab:green"}
    markers = {"never": "o", "always": "s", "auto": "*"}
    for key in m:
        for mode, r in m[key]["modes"].items():
            main = (key, mode) in {(k, md) for _, k, md in MAIN_ROWS}
            ax1.scatter(r["latency_ms"]["mean"], r["overall"], c=colours.get(key, "gray"),
                        marker=markers.get(mode, "o"), s=160 if main else 50, alpha=1.0 if main else 0.35,
                        edgecolors="black" if main else "none", label=f"{key} / {mode}")
    ax1.set_xlabel("mean latency per query (ms, batch 1)")
    ax1.set_ylabel("overall Precision@1 (%)")
    ax1.set_title("accuracy vs latency")
    ax1.legend(fontsize=7, ncol=1, loc="best")
    tasks = [t for t in META_TASKS if t in m["msolomon"]["modes"]["auto"]["by_meta_task"]] + ["ind", "ood", "overall"]
    width = 0.27
    for i, (label, key, mode) in enumerate(MAIN_ROWS):
        r = m[key]["modes"][mode]
        vals = [r["by_meta_task"].get(t) if t in r["by_meta_task"] else r.get(t) for t in tasks]
        ax2.bar([x + (i - 1) * width for x in range(len(tasks))], [v or 0 for v in vals], width,
                label=label, color=colours[key])
    ax2.set_xticks(range(len(tasks)), [t[:5] for t in tasks])
    ax2.set_ylabel("Precision@1 (%)")
    ax2.set_title("NoAug vs AlwaysAug vs M-Solomon")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write_reproduce_report(result: Mapping[str, Any], out: Path) -> None:
    """DIR/report.json ({"split", "models": {noaug, alwaysaug, msolomon}} + settings), report.md, report.png."""
    data = dict(result)
    data["claims"] = claims(result)
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / "report.json")
    tmp = out / "report.md.tmp"
    tmp.write_text(markdown(result))
    os.replace(tmp, out / "report.md")
    plot(result, out / "report.png")


MODEL_CARD_HEAD = """# M-Solomon tiny (MiniMMEB) — the shipped default model

A small Qwen2-VL (`Qwen2VLForConditionalGeneration`, built from a config and trained from scratch on CPU) that
decides per query whether to augment (`/augment`) or embed at once (`/embed`), trained with
`L_rep + λ·L_gen` on MiniMMEB with the split found by the pilot study. Same classes and code path as
Qwen2-VL-2B; it only knows MiniMMEB's small world (digits, drawn shapes and scenes, charts, forms, signs,
garments, a few photos).

Made by:

```bash
{command}
```

Load it with `MSolomon.from_pretrained("assets/model")`; it is the default of every command that takes `--model`.
Files: safetensors weights, the local byte-level BPE tokenizer (Qwen2-VL special tokens + `/augment`, `/embed`),
the image processor settings, `msolomon.json` (format settings), `report.json` (the reproduce report:
`{{"split": ..., "models": {{"noaug": ..., "alwaysaug": ..., "msolomon": ...}}}}`).

The pilot chose the split on the in-distribution test sets, as the paper's pilot did, so the figures below
include that selection. With 100 test queries per dataset the pilot's sampling error is about ±5 points.

"""


def write_model_card(result: Mapping[str, Any], model_dir: Path, command: str) -> None:
    """assets/model/README.md (how it was made, the pilot split, the measured table) and report.json."""
    card = MODEL_CARD_HEAD.format(command=command) + markdown(result).split("\n", 1)[1]
    (model_dir / "README.md").write_text(card)
    data = dict(result)
    data["claims"] = claims(result)
    (model_dir / "report.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
