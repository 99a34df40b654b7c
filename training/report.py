"""The reproduce report: the paper's comparison (NoAug, AlwaysAug, M-Solomon) as JSON, markdown and a plot."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from msolomon.data import META_TASKS
from msolomon.files import atomic_file, atomic_write_text
from msolomon.metrics import correct_by_dataset, paired_gain_ci
from msolomon.report import fmt, fmt_ci, timing_sample_note

MAIN_ROWS = (("NoAug", "noaug", "never"), ("AlwaysAug", "alwaysaug", "always"), ("M-Solomon", "msolomon", "auto"))
PAPER_HEADLINE_SETS = ("FashionIQ", "ImageNet-R")  # the MMEB sets of the paper's headline results (seed review)


def pilot_rule(split: dict) -> str:
    """The pilot's rule in words, as the split file records it (older split files: the margin alone)."""
    rule = f"D^A: AlwaysAug beats NoAug by more than {split.get('margin')} points"
    if split.get("require_significant"):
        rule += " and the gain's paired 95% bootstrap interval lies above 0 (a gain within noise counts as comparable)"
    rule += "; D^E: the rest (NoAug better or comparable)."
    budget = split.get("latency_budget")
    if budget is not None and split.get("budget_unmet"):
        rule += f" The latency budget of {budget}x AlwaysAug's was out of reach: {split['budget_unmet']}."
    elif budget is not None:
        predicted = split.get("predicted") or {}
        rule += (f" Then, for a latency budget of {budget}x AlwaysAug's, datasets moved from D^A to D^E: the most "
                 "accurate split predicted within the budget")
        if predicted:
            ratio = predicted.get("latency_ratio", float("nan"))
            rule += (f" (the trained split, predicted on {split.get('pilot_on') or 'the pilot reports'}: IND "
                     f"{predicted.get('ind_p_at_1', float('nan')):.1f} at {ratio:.2f}x")
            rule += "; over the budget on these reports: see `split.note`)" if ratio > budget else ")"
        rule += "."
        edge = split.get("budget_edge") or {}
        if edge.get("near"):
            other = edge.get("left_out")
            rule += (f" This choice lies within {edge.get('tolerance', 0):.0%} of the budget, about how far two "
                     "pilots' timings differ, so another run could choose another split")
            rule += (f" (next: augmenting {', '.join(other['augment'])}, IND {other['ind_p_at_1']:.2f} at "
                     f"{other['latency_ratio']:.3f}x)." if other else ".")
    return rule


def mirror_sets(dataset_meta: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """MiniMMEB datasets whose MMEB analogue is one of the paper's headline sets, e.g. FashionCIR -> FashionIQ."""
    return {name: meta["analogue"] for name, meta in sorted(dataset_meta.items())
            if meta.get("analogue") in PAPER_HEADLINE_SETS}


def _fmt_gain(gain: Any, ci: Any) -> str:
    if gain is None:
        return "–"
    return f"{gain:+.1f}" + (f" [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else "")


GAINS = (("msolomon", "auto", "noaug", "never", "M-Solomon(auto) − NoAug(never)"),
         ("msolomon", "auto", "alwaysaug", "always", "M-Solomon(auto) − AlwaysAug(always)"))


def gain_interval(result: Mapping[str, Any], a: tuple[str, str], b: tuple[str, str],
                  datasets: list[str] | None = None) -> dict[str, Any] | None:
    """`paired_gain_ci` of model/mode `a` over `b` on `datasets` (default: every dataset both evaluated), from the
    per-query correctness in their reports; None when a report lacks it or the runs cover different queries."""
    m = result["models"]
    ca = correct_by_dataset(m[a[0]]["modes"][a[1]])
    cb = correct_by_dataset(m[b[0]]["modes"][b[1]])
    names = [n for n in (datasets if datasets is not None else ca) if n in ca and n in cb]
    if not names or any(len(ca[n]) != len(cb[n]) for n in names):
        return None
    out = paired_gain_ci({n: ca[n] for n in names}, {n: cb[n] for n in names})
    out["gain"] = round(out["gain"], 4)
    out["ci95"] = [round(v, 4) for v in out["ci95"]]
    return out


def gains(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each claimed gain with its 95% paired bootstrap interval: M-Solomon(auto) − NoAug(never) and
    M-Solomon(auto) − AlwaysAug(always), overall (macro over every dataset) and on each mirror set."""
    scopes: list[tuple[str, list[str] | None]] = [("overall", None)]
    scopes += [(f"{name} ({analogue} mirror)", [name]) for name, analogue in result.get("mirrors", {}).items()]
    rows = []
    for scope, datasets in scopes:
        for ka, ma, kb, mb, label in GAINS:
            g = gain_interval(result, (ka, ma), (kb, mb), datasets)
            if g is None and datasets is not None:
                continue
            rows.append({"scope": scope, "comparison": label, "gain": None if g is None else g["gain"],
                         "ci95": None if g is None else g["ci95"], "n": None if g is None else g["n"],
                         "ci_above_0": None if g is None else g["ci95"][0] > 0})
    return rows


LEVEL_MARGIN = 2.0  # points: "level with" AlwaysAug when the paired interval's lower end is above -2
LATENCY_CLAIM = 0.6  # the paper's "about half the latency", with room: at most 0.6x AlwaysAug's


def verdict(ci: Sequence[float] | None, margin: float | None = None) -> str | None:
    """A claim judged by its paired 95% interval: "holds" when it lies above zero; with a `margin`, "level" when
    it lies above -margin (not worse by more than the margin); else "does not hold" (None without an interval)."""
    if not ci:
        return None
    if ci[0] > 0:
        return "holds"
    if margin is not None and ci[0] > -margin:
        return "level"
    return "does not hold"


def claims(result: Mapping[str, Any]) -> list[dict]:
    """The paper's claims checked on this run, each by its paired interval (`verdict`): M-Solomon beats NoAug,
    beats or is level with AlwaysAug (within LEVEL_MARGIN), and costs at most LATENCY_CLAIM x AlwaysAug's latency;
    overall and on the mirror sets. `holds` only when all three do."""
    m = result["models"]
    rows = []

    def entry(scope: str, get, datasets: list[str] | None) -> None:
        no, al, ms = get("noaug", "never"), get("alwaysaug", "always"), get("msolomon", "auto")
        g_no = gain_interval(result, ("msolomon", "auto"), ("noaug", "never"), datasets)
        g_al = gain_interval(result, ("msolomon", "auto"), ("alwaysaug", "always"), datasets)
        ratio = None if not al[1] or ms[1] is None else round(ms[1] / al[1], 4)
        verdicts = {"over_noaug": verdict(g_no and g_no["ci95"]),
                    "against_alwaysaug": verdict(g_al and g_al["ci95"], LEVEL_MARGIN),
                    "latency": None if ratio is None else "holds" if ratio <= LATENCY_CLAIM else "does not hold"}
        rows.append({"scope": scope, "noaug": no[0], "alwaysaug": al[0], "msolomon": ms[0],
                     "gain_over_noaug": None if ms[0] is None else round(ms[0] - no[0], 2),
                     "gain_over_alwaysaug": None if ms[0] is None else round(ms[0] - al[0], 2),
                     "gain_over_noaug_ci95": None if g_no is None else g_no["ci95"],
                     "gain_over_alwaysaug_ci95": None if g_al is None else g_al["ci95"],
                     "latency_ratio_vs_alwaysaug": ratio, "verdicts": verdicts,
                     "holds": verdicts["over_noaug"] == "holds" and verdicts["latency"] == "holds"
                     and verdicts["against_alwaysaug"] in ("holds", "level")})

    entry("overall", lambda k, mode: (m[k]["modes"][mode]["overall"], m[k]["modes"][mode]["latency_ms"]["mean"]),
          None)
    for name, analogue in result.get("mirrors", {}).items():
        if name in m["msolomon"]["modes"]["auto"]["datasets"]:
            entry(f"{name} ({analogue} mirror)", lambda k, mode, n=name: (
                m[k]["modes"][mode]["datasets"][n]["p_at_1"], m[k]["modes"][mode]["datasets"][n]["latency_ms_mean"]),
                [name])
    return rows


def markdown(result: Mapping[str, Any]) -> str:
    m = result["models"]
    tasks = [t for t in META_TASKS if t in m["msolomon"]["modes"]["auto"]["by_meta_task"]]
    head = ["model", "mode"] + [{"vqa": "VQA"}.get(t, t.capitalize()) for t in tasks] + [
        "IND", "OOD", "Overall [95% CI]", "/augment rate", "latency ms (mean)"]
    lines = ["# M-Solomon on MiniMMEB: the paper's comparison", "",
             "Precision@1 (%) on MiniMMEB test; latency per query at batch size 1 on this machine's CPU. "
             "[lo, hi]: 95% bootstrap interval over queries (resampled within each dataset, then macro-averaged)."
             + timing_sample_note(m["msolomon"]),
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(label: str, key: str, mode: str) -> str:
        r = m[key]["modes"][mode]
        cells = [label, mode] + [fmt(r["by_meta_task"].get(t)) for t in tasks] + [
            fmt(r["ind"]), fmt(r["ood"]), f"**{fmt(r['overall'])}**" + (
                f" [{fmt(r['overall_ci95'][0])}, {fmt(r['overall_ci95'][1])}]" if r.get("overall_ci95") else ""),
            fmt(r["augment_rate"], 2), fmt(r["latency_ms"]["mean"])]
        return "| " + " | ".join(cells) + " |"

    lines += [row(label, key, mode) for label, key, mode in MAIN_ROWS]
    ref = m["msolomon"]["modes"]["auto"]
    floor_macro, chance_macro = ref.get("floor_text_only_macro"), ref.get("chance_macro")
    if floor_macro or chance_macro:
        lines.append("")
        for label, g in (("Text-only floor (never looks at the image, macro)", floor_macro),
                         ("Chance (random pick of a candidate, macro)", chance_macro)):
            if g:
                lines.append(f"{label}: IND {fmt(g.get('ind'))}, OOD {fmt(g.get('ood'))}, "
                             f"overall {fmt(g.get('overall'))}.  ")
    lines += ["", "Every model in every mode:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [row(key, key, mode) for key in m for mode in ("never", "always", "auto") if mode in m[key]["modes"]]
    lines += ["", "## Claims checked", "",
              "Gains in Precision@1 points with their 95% paired bootstrap interval (the same queries in both runs, "
              "resampled together within each dataset, then macro-averaged). A claim *holds* when its interval lies "
              f"above zero; against AlwaysAug it is *level* when the interval lies above −{LEVEL_MARGIN:g}; the "
              f"latency claim is at most {LATENCY_CLAIM:g}× AlwaysAug's.", "",
              "| scope | NoAug | AlwaysAug | M-Solomon | vs NoAug [95% CI] | vs AlwaysAug [95% CI] | "
              "latency ÷ AlwaysAug | all three |", "|---|---|---|---|---|---|---|---|"]
    for c in claims(result):
        v = c["verdicts"]
        lines.append(f"| {c['scope']} | {fmt(c['noaug'])} | {fmt(c['alwaysaug'])} | {fmt(c['msolomon'])} | "
                     f"{_fmt_gain(c['gain_over_noaug'], c.get('gain_over_noaug_ci95'))}: {v['over_noaug'] or '–'} | "
                     f"{_fmt_gain(c['gain_over_alwaysaug'], c.get('gain_over_alwaysaug_ci95'))}: "
                     f"{v['against_alwaysaug'] or '–'} | {fmt(c['latency_ratio_vs_alwaysaug'], 2)}: "
                     f"{v['latency'] or '–'} | {'holds' if c['holds'] else 'does not hold'} |")
    g_rows = gains(result)
    if g_rows:
        lines += ["", "| scope | gain | points [95% CI] | interval above 0 |", "|---|---|---|---|"]
        for g in g_rows:
            lines.append(f"| {g['scope']} | {g['comparison']} | {_fmt_gain(g['gain'], g['ci95'])} | "
                         f"{'–' if g['ci_above_0'] is None else ('yes' if g['ci_above_0'] else 'no')} |")
    if result.get("validation"):
        lines += ["", "## Validation, before test", "",
                  shipping_sentence(result["validation"], bool((result.get("shipping") or {}).get("shipped")))]
        shipping = result.get("shipping")
        if shipping:
            lines += ["", f"Shipping: {shipping['note']}"]
    split = result["split"]
    trained = set(split.get("augment") or ())
    differ = sorted(n for n, ev in split["datasets"].items() if (ev["assignment"] == "augment") != (n in trained))
    lines += ["", "## Pilot split (from the NoAug and AlwaysAug pilot evaluations)", "",
              pilot_rule(split), "",
              "`pilot` is what the pilot chose on the reports below; `trained` is the split M-Solomon was trained on "
              "(`split.augment` / `split.embed`)" + (f"; they differ on {', '.join(differ)} (`split.note` says why)."
                                                     if differ else "; they agree."), "",
              "| dataset | meta-task | NoAug | AlwaysAug | delta [95% CI] | pilot | trained |",
              "|---|---|---|---|---|---|---|"]

    def side(augment: bool) -> str:
        return "D^A (augment)" if augment else "D^E (embed)"

    for name, ev in sorted(split["datasets"].items()):
        lines.append(f"| {name} | {ev.get('meta_task')} | {fmt(ev['noaug_p_at_1'])} | {fmt(ev['alwaysaug_p_at_1'])} "
                     f"| {_fmt_gain(ev['delta'], ev.get('delta_ci95'))} | {side(ev['assignment'] == 'augment')} | "
                     f"{side(name in trained)} |")
    lines += ["", "## Per dataset (native mode of each model)", "",
              "Text-only floor: the most frequent training answer per question template, without the image "
              "('majority'); 'chance' where the positives are images or the set has no train split. "
              "P@1 with its 95% bootstrap interval.", "",
              "| dataset | task | OOD | chance | text-only floor | floor rule | NoAug P@1 [95% CI] | "
              "AlwaysAug P@1 [95% CI] | M-Solomon P@1 [95% CI] | M-Solomon /augment rate |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    ds = ref["datasets"]
    for name in sorted(ds):
        cells = []
        for _, k, mode in MAIN_ROWS:
            d = m[k]["modes"][mode]["datasets"].get(name, {})
            cells.append(fmt_ci(d.get("p_at_1"), d.get("ci95")))
        rule = ds[name].get("floor_rule")
        rule = {"majority-per-template": "majority"}.get(rule, rule or "–")
        lines.append(f"| {name} | {ds[name]['meta_task']} | {'yes' if ds[name]['ood'] else ''} | "
                     f"{fmt(ds[name].get('chance'))} | {fmt(ds[name].get('floor_text_only'))} | "
                     f"{rule} | " + " | ".join(cells) +
                     f" | {fmt(ds[name]['augment_rate'], 2)} |")
    lines += decision_lines(result)
    if "timings_s" in result:
        times = ", ".join(f"{k} {v:.0f}" for k, v in result["timings_s"].items())
        lines += ["", "Stage times (s, summed over every invocation on the run folder): " + times]
    return "\n".join(lines) + "\n"


def two_model_oracle(result: Mapping[str, Any]) -> dict[str, Any] | None:
    """The per-query oracle of the NoAug and AlwaysAug models (the better of the two on each query), or None."""
    from msolomon.decisions import oracle

    m = result["models"]
    never = m.get("noaug", {}).get("modes", {}).get("never")
    always = m.get("alwaysaug", {}).get("modes", {}).get("always")
    if not never or not always:
        return None
    try:
        return oracle(never, always)
    except ValueError:  # a report from before per-query bits
        return None


def decision_lines(result: Mapping[str, Any]) -> list[str]:
    """How M-Solomon decided: its labels (per dataset or per query), the two-model oracle, its own decisions block."""
    from msolomon.report import decisions_markdown

    lines = ["", "## Decisions", ""]
    labels = result["split"].get("labels")
    if result.get("decisions") == "query" and labels:
        lines.append(f"M-Solomon was trained on **per-query labels** (`{result['split'].get('labels_file')}`, "
                     f"training.query_labels): {labels['augment_rate']:.1%} of training queries labelled augment at "
                     f"margin {labels['margin']:g}; per dataset: " + ", ".join(
                         f"{n} {d['augment_rate']:.2f}" for n, d in labels["datasets"].items()) + ".")
    else:
        lines.append("M-Solomon was trained on the pilot's **per-dataset** split (the paper's recipe).")
    two = two_model_oracle(result)
    if two:
        lines += ["", f"Two-model oracle (for each query the better of NoAug and AlwaysAug; NoAug when both are "
                      f"right): overall {fmt(two['overall'])}, IND {fmt(two['ind'])}, OOD {fmt(two['ood'])}, "
                      f"augmenting {fmt(two['augment_rate'], 2)} of queries at {fmt(two['latency_ms_mean'])} ms."]
    block = result["models"].get("msolomon", {}).get("decisions")
    lines += decisions_markdown(block) if block else []
    return lines


def plot(result: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from msolomon.report import plot_floors

    m = result["models"]
    ref = m["msolomon"]["modes"]["auto"]["datasets"]
    names = sorted(ref)
    fig = plt.figure(figsize=(16, max(4.6, 0.42 * len(names) + 1.4)))
    gs = fig.add_gridspec(1, 3, width_ratios=[1, 1, 1.2])
    ax1, ax2, ax3 = fig.add_subplot(gs[0]), fig.add_subplot(gs[1]), fig.add_subplot(gs[2])
    colours = {"noaug": "tab:blue", "alwaysaug": "tab:orange", "msolomon": "tab:green"}
    markers = {"never": "o", "always": "s", "auto": "*"}
    for key in m:
        for mode, r in m[key]["modes"].items():
            main = (key, mode) in {(k, md) for _, k, md in MAIN_ROWS}
            ax1.scatter(r["latency_ms"]["mean"], r["overall"], c=colours.get(key, "gray"),
                        marker=markers.get(mode, "o"), s=160 if main else 50, alpha=1.0 if main else 0.35,
                        edgecolors="black" if main else "none", label=f"{key} / {mode}")
    for label, orc, marker in (("two-model oracle", two_model_oracle(result), "X"),
                               ("M-Solomon's own oracle", (m["msolomon"].get("decisions") or {}).get("oracle"), "P")):
        if orc and orc.get("latency_ms_mean") is not None:
            ax1.scatter(orc["latency_ms_mean"], orc["overall"], c="tab:purple", marker=marker, s=120,
                        edgecolors="black", label=f"{label}: {orc['overall']:.1f}")
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
    series = []
    for label, key, mode in MAIN_ROWS:
        ds = m[key]["modes"][mode]["datasets"]
        series.append((label, [ds.get(n, {}).get("p_at_1") for n in names], [ds.get(n, {}).get("ci95") for n in names],
                       colours[key]))
    plot_floors(ax3, names, series, [ref[n].get("chance") for n in names],
                [ref[n].get("floor_text_only") for n in names])
    ax3.set_title("per dataset: P@1, text-only floor, chance")
    fig.tight_layout()
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, dpi=110, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)


def write_reproduce_report(result: Mapping[str, Any], out: Path) -> None:
    """DIR/report.json ({"split", "models": {noaug, alwaysaug, msolomon}} + settings, claims, gains), report.md,
    report.png."""
    data = dict(result)
    data["claims"] = claims(result)
    data["gains"] = gains(result)
    data["oracle"] = two_model_oracle(result)
    atomic_write_text(out / "report.json", json.dumps(data, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out / "report.md", markdown(result))
    plot(result, out / "report.png")


CARD_TITLES = {
    "msolomon": ("M-Solomon tiny (MiniMMEB): the shipped default model", "assets/model",
                 "decides per query whether to augment (`/augment`) or embed at once (`/embed`), trained with "
                 "`L_rep + λ·L_gen` with the D^A / D^E split found by the pilot study"),
    "noaug": ("NoAug tiny (MiniMMEB): the paper's no-augmentation baseline", "assets/baselines/noaug",
              "always embeds at once (`/embed` on every query), trained with the same recipe with every dataset in "
              "D^E"),
    "alwaysaug": ("AlwaysAug tiny (MiniMMEB): the paper's always-augment baseline", "assets/baselines/alwaysaug",
                  "always writes an augmentation first (`/augment` on every query), trained with the same recipe "
                  "with every dataset in D^A"),
}

MODEL_CARD_BODY = """
A small Qwen2-VL (`Qwen2VLForConditionalGeneration`, stock transformers) that {what}. It is fine-tuned from the
pretrained tiny base MLLM (`assets/base`, `python -m training.pretrain`), as the paper fine-tunes Qwen2-VL-2B; same
classes and code path as Qwen2-VL-2B. It only knows MiniMMEB's small world (digits, drawn shapes and scenes, charts,
forms, signs, garments, a few photos). Weights are stored in float16 and computed in float32 on a CPU.

{made_by}

```bash
{command}
```

Load it with `MSolomon.from_pretrained("{path}")`{default}. Files: safetensors weights, the local byte-level BPE
tokenizer (Qwen2-VL special tokens + `/augment`, `/embed`), the image processor settings, `msolomon.json` (format
settings), `report.json` (the reproduce report: `{{"split": ..., "models": {{"noaug": ..., "alwaysaug": ...,
"msolomon": ...}}}}`).

{pilot_sentence}{shipping_sentence}

"""


def validation_comparison(msolomon: Mapping[str, Any], noaug: Mapping[str, Any], alwaysaug: Mapping[str, Any],
                          split: str) -> dict[str, Any]:
    """Whether M-Solomon may ship, judged on validation reports only (M-Solomon in auto against the pilot's NoAug
    in never and AlwaysAug in always, on the queries all three evaluated) by the claims' rule: it must beat NoAug
    (interval above 0) and be level with or above AlwaysAug (interval above -LEVEL_MARGIN)."""
    runs = {"msolomon": msolomon["modes"]["auto"], "noaug": noaug["modes"]["never"],
            "alwaysaug": alwaysaug["modes"]["always"]}
    bits = {k: correct_by_dataset(v) for k, v in runs.items()}
    names = sorted(set.intersection(*(set(b) for b in bits.values())))
    if not names or any(len({len(b[n]) for b in bits.values()}) > 1 for n in names):
        raise ValueError("the validation reports of M-Solomon, NoAug and AlwaysAug cover different queries: "
                         "evaluate them on the same split and limit")
    ms = {n: bits["msolomon"][n] for n in names}
    out: dict[str, Any] = {"split": split, "datasets": names, "p_at_1": {}, "gains": {}}
    for key in runs:
        out["p_at_1"][key] = round(100.0 * sum(sum(bits[key][n]) / len(bits[key][n]) for n in names) / len(names), 4)
    for key, margin in (("noaug", None), ("alwaysaug", LEVEL_MARGIN)):
        g = paired_gain_ci(ms, {n: bits[key][n] for n in names})
        out["gains"][key] = {"gain": round(g["gain"], 4), "ci95": [round(v, 4) for v in g["ci95"]],
                             "verdict": verdict(g["ci95"], margin)}
    out["ship"] = (out["gains"]["noaug"]["verdict"] == "holds"
                   and out["gains"]["alwaysaug"]["verdict"] in ("holds", "level"))
    return out


def shipping_sentence(validation: Mapping[str, Any] | None, shipped: bool = True) -> str:
    """The card's sentence on why this model ships, generated from the validation comparison the run recorded
    before it read test (never a fixed claim)."""
    if not validation:
        return "The report does not record a validation comparison made before the test evaluation."
    no, al = validation["gains"]["noaug"], validation["gains"]["alwaysaug"]
    said = (f"On the {validation['split']} split, before any test evaluation (`validation.json`), M-Solomon scored "
            f"{validation['p_at_1']['msolomon']:.1f} against NoAug's {validation['p_at_1']['noaug']:.1f} "
            f"({_fmt_gain(no['gain'], no['ci95'])}: {no['verdict']}) and AlwaysAug's "
            f"{validation['p_at_1']['alwaysaug']:.1f} ({_fmt_gain(al['gain'], al['ci95'])}: {al['verdict']})")
    if validation["ship"]:
        return said + ": the rule for shipping held."
    if shipped:
        return said + ": the rule for shipping did not hold, and it was shipped anyway (`--force-ship`)."
    return said + ": the rule for shipping did not hold, so it was not shipped; its test figures are a record."


def pilot_sentence(pilot_on: str | None) -> str:
    """The card's sentence on where the split was chosen, from what the report recorded (never a fixed claim)."""
    if pilot_on == "val":
        return ("The pilot split was chosen on the validation split carved from MiniMMEB's training distribution "
                "(val); this run read the test sets only in its final evaluation below.")
    if pilot_on is None:
        return "The report does not record which split the pilot split was chosen on."
    return (f"The pilot split was chosen on the {pilot_on} split: the figures below were measured on data that "
            "helped choose the split, so they overstate what a new split of the same data would give.")


def write_model_card(result: Mapping[str, Any], model_dir: Path, command: str, model_key: str = "msolomon",
                     made_by: str = "Made by (the three models of the paper in one run):") -> None:
    """README.md (how the model was made, the pilot split, the measured table) and report.json, for any of the
    three shipped models (assets/model, assets/baselines/noaug, assets/baselines/alwaysaug)."""
    from msolomon.report import atomic_write_text

    title, path, what = CARD_TITLES[model_key]
    if model_key == "msolomon" and result.get("decisions") == "query":
        what = ("decides per query whether to augment (`/augment`) or embed at once (`/embed`), trained with "
                "`L_rep + λ·L_gen` on per-query labels: each training query labelled by whether augmenting helped its "
                "own retrieval under a fold model that never saw it (`training.query_labels`)")
    head = f"# {title}\n" + MODEL_CARD_BODY.format(
        what=what, command=command, path=path, made_by=made_by,
        pilot_sentence=pilot_sentence(result["split"].get("pilot_on")),
        shipping_sentence=(" " + shipping_sentence(result["validation"], True)) if result.get("validation") else "",
        default="; it is the default of every command that takes `--model`" if model_key == "msolomon" else "")
    atomic_write_text(model_dir / "README.md", head + markdown(result).split("\n", 1)[1])
    data = dict(result)
    data["claims"] = claims(result)
    data["gains"] = gains(result)
    atomic_write_text(model_dir / "report.json", json.dumps(data, indent=2, sort_keys=True) + "\n")


MEASURED_START = "Precision@1 (%) on MiniMMEB"  # where a card's generated part begins (`markdown(result)`'s body)


def refresh_card(model_dir: Path) -> bool:
    """Regenerate a shipped card's measured part (tables, claims, gains) and its report.json's `claims` and `gains`
    from the report it ships with, keeping the card's head (how the model was made) as written. The figures come
    from the same per-query results; only how they are judged and printed can change. Returns whether anything
    changed."""
    from msolomon.files import read_json
    from msolomon.report import atomic_write_text

    card, report = Path(model_dir) / "README.md", Path(model_dir) / "report.json"
    result = read_json(report)
    text = card.read_text(encoding="utf-8")
    start = text.find(MEASURED_START)
    if result is None or start < 0:
        raise ValueError(f"{model_dir}: no report.json or no measured part in README.md to refresh")
    new_text = text[:start] + markdown(result).split("\n", 1)[1].lstrip("\n")
    data = dict(result, claims=claims(result), gains=gains(result))
    new_report = json.dumps(data, indent=2, sort_keys=True) + "\n"
    changed = new_text != text or new_report != report.read_text(encoding="utf-8")
    if changed:
        atomic_write_text(card, new_text)
        atomic_write_text(report, new_report)
    return changed
