"""`python -m training.pilot`: the per-dataset split D^A / D^E from the NoAug and AlwaysAug reports.

    python -m training.pilot --noaug NOAUG.json --alwaysaug ALWAYSAUG.json --out SPLIT.json [--margin 1.0]
                             [--require-significant]

A dataset goes to D^A ("augment") when AlwaysAug's Precision@1 beats NoAug's by more than `--margin` points, else
to D^E ("embed"): NoAug better or comparable, as in the paper. `--require-significant` reads "comparable"
statistically: it also requires the paired 95% bootstrap interval of the gain (the same queries, resampled together)
to lie above 0, since on 300 validation queries a gain of a few points is within noise (its interval spans about
±7). That rule augments fewer datasets, so it generates less, but measured on validation it cost accuracy (README,
"6 epochs, and the pilot's rule"), so the margin alone is the default. Each model is read in its own mode (NoAug:
`never`, AlwaysAug: `always`). Only in-distribution datasets (the ones with training data) are split. The output,
`{"augment": [...], "embed": [...], "margin": ..., "require_significant": ..., "datasets": {NAME: figures}}`, keeps
the per-dataset figures behind each assignment, the gain's interval among them (when the reports carry per-query
correctness).

`--frontier FILE.png` also predicts every possible split's accuracy and latency from the two reports (a D^E dataset
scored and timed as NoAug, a D^A one as AlwaysAug) and draws the splits no other beats on both. `--latency-budget R`
then takes the most accurate split within R x AlwaysAug's latency that augments only datasets the rule put in D^A
(it moves sets from D^A to D^E until the budget holds). Both need reports with latencies (`msolomon.evaluation
--latency-queries N`).
"""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from msolomon.files import atomic_file, atomic_write_json
from msolomon.metrics import correct_by_dataset, paired_gain_ci
from msolomon.model import AUGMENT_MODES
from msolomon.settings import option, parse_settings, usage_error

logger = logging.getLogger("training.pilot")


@dataclass
class PilotSettings:
    """How the split is made from the two reports."""

    margin: float = option(1.0, "P@1 points AlwaysAug must win by to put a dataset in D^A")
    require_significant: bool = option(False, "also require the gain's paired 95% bootstrap interval to lie above 0 "
                                       "(a gain within noise counts as comparable: D^E)")
    noaug_mode: str = option("never", "the NoAug report's mode to read", choices=AUGMENT_MODES)
    alwaysaug_mode: str = option("always", "the AlwaysAug report's mode to read", choices=AUGMENT_MODES)
    datasets: list[str] | None = option(None, "datasets to split (default: the in-distribution datasets of both "
                                        "reports)")
    latency_budget: float | None = option(None, "after the rule: the most accurate split whose predicted latency is at "
                                          "most this fraction of AlwaysAug's, augmenting only sets the rule augments "
                                          "(e.g. 0.5; the reports need --latency-queries)")


@dataclass
class PilotCommandSettings:
    """`python -m training.pilot`: the two reports in, the split file out."""

    noaug: str = option(help="evaluation report of the NoAug model (JSON)", metavar="FILE")
    alwaysaug: str = option(help="evaluation report of the AlwaysAug model (JSON)", metavar="FILE")
    out: str = option(help="split file to write (JSON)", metavar="FILE")
    frontier: str | None = option(None, "also write the accuracy-latency frontier of every split: FILE.png and "
                                  "FILE.json (the reports need latencies: --latency-queries)", metavar="FILE.png")
    pilot: PilotSettings = field(default_factory=PilotSettings)


def pilot_split(noaug: dict, alwaysaug: dict, settings: PilotSettings | None = None) -> dict:
    """The split and its evidence, from two evaluation reports (docs/architecture.md, "The evaluation report")."""
    s = settings or PilotSettings()
    try:
        a = noaug["modes"][s.noaug_mode]["datasets"]
        b = alwaysaug["modes"][s.alwaysaug_mode]["datasets"]
    except KeyError as err:
        raise ValueError(f"a report lacks mode or datasets {err}: evaluate NoAug with '{s.noaug_mode}' and "
                         f"AlwaysAug with '{s.alwaysaug_mode}'") from None
    on = {noaug.get("split"), alwaysaug.get("split")}
    if len(on) > 1:
        raise ValueError(f"the two reports are of different splits ({noaug.get('split')!r} and "
                         f"{alwaysaug.get('split')!r}): the pilot compares the same queries")
    names = list(s.datasets) if s.datasets else sorted(n for n in a if n in b and not a[n].get("ood", False))
    missing = [n for n in names if n not in a or n not in b]
    if missing:
        raise ValueError(f"datasets missing from a report: {missing}")
    if not names:
        raise ValueError("no in-distribution dataset is in both reports")
    intervals = gain_intervals(a, b, names, required=s.require_significant)
    evidence, augment, embed = {}, [], []
    for name in names:
        delta = b[name]["p_at_1"] - a[name]["p_at_1"]
        ci = intervals.get(name)
        significant = ci is not None and ci[0] > 0
        side = "augment" if delta > s.margin and (significant or not s.require_significant) else "embed"
        (augment if side == "augment" else embed).append(name)
        evidence[name] = {"meta_task": a[name].get("meta_task"), "noaug_p_at_1": a[name]["p_at_1"],
                          "alwaysaug_p_at_1": b[name]["p_at_1"], "delta": round(delta, 3),
                          "delta_ci95": ci, "n": a[name].get("n"), "assignment": side}
    return {"augment": augment, "embed": embed, "margin": s.margin, "require_significant": s.require_significant,
            "modes": {"noaug": s.noaug_mode, "alwaysaug": s.alwaysaug_mode}, "pilot_on": on.pop(),
            "datasets": evidence}


def gain_intervals(noaug: dict, alwaysaug: dict, names: Sequence[str], required: bool) -> dict[str, list[float]]:
    """Per dataset, the paired 95% bootstrap interval of AlwaysAug's gain over NoAug (P@1 points), from the two
    reports' per-query correctness. Datasets without it are left out, or refused when the rule needs them."""
    a, b = correct_by_dataset({"datasets": noaug}), correct_by_dataset({"datasets": alwaysaug})
    out = {}
    for name in names:
        if name in a and name in b and len(a[name]) == len(b[name]) and len(a[name]):
            out[name] = [round(x, 3) for x in paired_gain_ci({name: b[name]}, {name: a[name]})["ci95"]]
        elif required:
            raise ValueError(f"dataset {name!r}: the two reports lack matching per-query correctness "
                             "(correct_bits over the same queries), which the significance rule needs; evaluate "
                             "both models on the same split and limit, or leave out --require-significant")
    return out


MAX_FRONTIER_DATASETS = 16  # 2^16 splits are enumerated in well under a second


def split_frontier(noaug: dict, alwaysaug: dict, settings: PilotSettings | None = None,
                   chosen: Sequence[str] | None = None) -> dict:
    """What each possible split would cost and give, predicted from the two reports: a dataset in D^E is scored and
    timed as NoAug, one in D^A as AlwaysAug (the pilot's own premise), averaged over the in-distribution datasets.
    Every subset is enumerated; the frontier keeps the splits no other split beats on both accuracy and latency.
    It answers "how much accuracy would a latency budget cost?" on the pilot's data (validation), not on test."""
    s = settings or PilotSettings()
    a = noaug["modes"][s.noaug_mode]["datasets"]
    b = alwaysaug["modes"][s.alwaysaug_mode]["datasets"]
    names = list(s.datasets) if s.datasets else sorted(n for n in a if n in b and not a[n].get("ood", False))
    untimed = [n for n in names if a[n].get("latency_ms_mean") is None or b[n].get("latency_ms_mean") is None]
    if untimed:
        raise ValueError(f"the frontier needs each dataset's latency, missing for {', '.join(untimed)}: evaluate "
                         "both models with --latency-queries N (N > 0)")
    if len(names) > MAX_FRONTIER_DATASETS:
        raise ValueError(f"{len(names)} datasets: the frontier enumerates every split, at most "
                         f"{MAX_FRONTIER_DATASETS} datasets")
    acc_e = [a[n]["p_at_1"] for n in names]
    acc_a = [b[n]["p_at_1"] for n in names]
    lat_e = [a[n]["latency_ms_mean"] for n in names]
    lat_a = [b[n]["latency_ms_mean"] for n in names]
    k = len(names)
    always_ms = sum(lat_a) / k

    def point(mask: int) -> dict:
        embed = [i for i in range(k) if mask >> i & 1]
        acc = sum(acc_e[i] if mask >> i & 1 else acc_a[i] for i in range(k)) / k
        ms = sum(lat_e[i] if mask >> i & 1 else lat_a[i] for i in range(k)) / k
        return {"embed": [names[i] for i in embed], "ind_p_at_1": round(acc, 3), "latency_ms": round(ms, 3),
                "latency_ratio": round(ms / always_ms, 4), "augment_share": round(1 - len(embed) / k, 4)}

    points = [point(mask) for mask in range(1 << k)]
    best, frontier = float("-inf"), []
    for pt in sorted(points, key=lambda p: (p["latency_ms"], -p["ind_p_at_1"])):
        if pt["ind_p_at_1"] > best:
            frontier.append(pt)
            best = pt["ind_p_at_1"]
    budgets = {}
    for ratio in (0.5, 0.6, 0.75):
        within = [p for p in frontier if p["latency_ratio"] <= ratio]
        budgets[str(ratio)] = max(within, key=lambda p: p["ind_p_at_1"]) if within else None
    chosen_point = points[split_mask(names, chosen)] if chosen is not None else None
    return {"datasets": names, "pilot_on": noaug.get("split"), "always": points[0], "never": points[-1],
            "chosen": chosen_point,
            "frontier": frontier, "best_within": budgets, "n_splits": len(points), "points": points}


def split_mask(names: Sequence[str], embed: Sequence[str]) -> int:
    """The index in `split_frontier`'s points of the split that embeds `embed` (bit i: names[i] in D^E)."""
    return sum(1 << i for i, n in enumerate(names) if n in embed)


# Two pilots of the same NoAug and AlwaysAug models (MiniMMEB seed 1, the same accuracies to the query) predicted the
# same split at 0.547x and 0.499x AlwaysAug's latency: the timings of one pilot against another's differ by about
# 10% (docs/decisions.md section 9e). A split whose prediction lies that close to the budget is flagged.
TIMING_TOLERANCE = 0.10


def budget_edge(frontier: dict, best: dict, allowed: set[str], budget: float,
                tolerance: float = TIMING_TOLERANCE) -> dict:
    """How close the budget's choice is to its edge: the chosen split's predicted ratio, and the next more accurate
    split the budget left out (the fastest of them). `near` when either lies within `tolerance` of the budget, so
    that timings a few percent off (another machine, another process running) could choose another split."""
    names = frontier["datasets"]
    better = [p for p in frontier["points"] if p["ind_p_at_1"] > best["ind_p_at_1"]
              and set(names) - set(p["embed"]) <= allowed]
    over = min(better, key=lambda p: p["latency_ratio"]) if better else None
    near = best["latency_ratio"] >= budget * (1 - tolerance) or (
        over is not None and over["latency_ratio"] <= budget * (1 + tolerance))
    return {"tolerance": tolerance, "chosen_ratio": best["latency_ratio"], "near": bool(near),
            "left_out": None if over is None else {
                "augment": [n for n in names if n not in over["embed"]], "ind_p_at_1": over["ind_p_at_1"],
                "latency_ratio": over["latency_ratio"]}}


class BudgetOutOfReach(ValueError):
    """No split is predicted within the latency budget (training.reproduce then keeps the margin's split)."""


def budget_split(split: dict, frontier: dict, budget: float) -> dict:
    """`split` re-assigned to the most accurate split within `budget` x AlwaysAug's predicted latency (the
    per-dataset evidence is kept; `latency_budget` and the prediction are recorded).

    The budget only moves datasets from D^A to D^E: a dataset the rule put in D^E (a gain within the margin, or not
    significant) is never augmented to use up the budget, since a gain that small is noise on validation and costs
    a generation per query. Among equally accurate splits the faster one is taken."""
    if not 0 < budget <= 1:
        raise ValueError(f"--latency-budget must be in (0, 1], a fraction of AlwaysAug's latency, got {budget}")
    names = frontier["datasets"]
    allowed = set(split["augment"])
    within = [p for p in frontier["points"] if p["latency_ratio"] <= budget
              and set(names) - set(p["embed"]) <= allowed]
    if not within:
        raise BudgetOutOfReach(f"no split is predicted within {budget}x AlwaysAug's latency (NoAug alone is at "
                         f"{frontier['never']['latency_ratio']}x)")
    best = max(within, key=lambda p: (p["ind_p_at_1"], -p["latency_ratio"]))
    edge = budget_edge(frontier, best, allowed, budget)
    if edge["near"]:
        other = edge["left_out"]
        logger.warning("the budget's split is near its edge: predicted at %.3fx AlwaysAug's latency against a budget "
                       "of %gx%s; pilot timings a few percent off could choose another split",
                       best["latency_ratio"], budget, "" if other is None else
                       f" (left out: augmenting {', '.join(other['augment'])} at {other['latency_ratio']:.3f}x, "
                       f"IND {other['ind_p_at_1']:.2f} against {best['ind_p_at_1']:.2f})")
    out = dict(split, embed=[n for n in names if n in best["embed"]],
               augment=[n for n in names if n not in best["embed"]], latency_budget=budget,
               predicted={k: best[k] for k in ("ind_p_at_1", "latency_ratio", "augment_share")}, budget_edge=edge)
    out["datasets"] = {n: dict(ev, assignment="embed" if n in best["embed"] else "augment")
                       for n, ev in split["datasets"].items()}
    return out


def plot_frontier(result: dict, path: Path) -> None:
    """Every split as a grey dot, the frontier as a line; AlwaysAug, NoAug and the chosen split named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    pts = result["points"]
    ax.scatter([p["latency_ratio"] for p in pts], [p["ind_p_at_1"] for p in pts], s=6, color="0.75",
               label=f"each of the {len(pts)} splits")
    fr = result["frontier"]
    ax.plot([p["latency_ratio"] for p in fr], [p["ind_p_at_1"] for p in fr], "-o", color="tab:blue", ms=3,
            label="frontier (no split beats it on both)")
    for key, label, style in (("always", "AlwaysAug (augment all)", "s"), ("never", "NoAug (embed all)", "v"),
                              ("chosen", "the pilot's split", "*")):
        p = result.get(key)
        if p:
            ax.plot(p["latency_ratio"], p["ind_p_at_1"], style, ms=11 if style == "*" else 8, label=label,
                    color="tab:red" if style == "*" else "black")
    ax.axvline(0.5, ls="--", color="tab:orange", lw=1, label="half of AlwaysAug's latency")
    ax.axhline(result["always"]["ind_p_at_1"], ls=":", color="black", lw=1, label="AlwaysAug's accuracy")
    ax.set_xlabel("predicted mean latency ÷ AlwaysAug's (in-distribution datasets)")
    ax.set_ylabel(f"predicted IND P@1 ({result.get('pilot_on') or 'pilot'} split)")
    ax.set_title("What a latency budget costs: every D^A / D^E split")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, dpi=120, format="png")
    plt.close(fig)


def write_json_atomic(path: Path, data: dict) -> None:
    atomic_write_json(path, data, sort_keys=True)


PROG = "python -m training.pilot"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args, _ = parse_settings(PilotCommandSettings, argv, prog=PROG, description=__doc__)
    reports = []
    for flag in ("noaug", "alwaysaug"):
        path = Path(getattr(args, flag))
        if not path.is_file():
            usage_error(PROG, f"--{flag} {path}: no such file")
        try:
            reports.append(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            usage_error(PROG, f"--{flag} {path}: not JSON ({err})")
    splits = {r.get("split") for r in reports}
    if splits != {"val"}:  # the test sets are kept for the end: nothing is chosen on them
        shown = ", ".join(map(str, sorted(splits, key=str)))
        usage_error(PROG, f"the pilot reads validation reports only (these are of split {shown}); evaluate NoAug "
                          "and AlwaysAug with --split val")
    try:
        result = pilot_split(reports[0], reports[1], args.pilot)
    except ValueError as err:
        usage_error(PROG, str(err))
    front = None
    if args.pilot.latency_budget is not None or args.frontier:
        try:
            front = split_frontier(reports[0], reports[1], args.pilot)
            if args.pilot.latency_budget is not None:
                result = budget_split(result, front, args.pilot.latency_budget)
        except ValueError as err:
            usage_error(PROG, str(err))
    result["sources"] = {"noaug": str(args.noaug), "alwaysaug": str(args.alwaysaug)}
    write_json_atomic(Path(args.out), result)
    for name, ev in result["datasets"].items():
        logger.info("%-24s NoAug %5.1f  AlwaysAug %5.1f  delta %+5.1f -> %s", name, ev["noaug_p_at_1"],
                    ev["alwaysaug_p_at_1"], ev["delta"], ev["assignment"])
    logger.info("D^A (augment): %s", result["augment"])
    logger.info("D^E (embed):   %s", result["embed"])
    if args.frontier:
        front["chosen"] = front["points"][split_mask(front["datasets"], result["embed"])]
        png = Path(args.frontier)
        write_json_atomic(png.with_suffix(".json"), {k: v for k, v in front.items() if k != "points"})
        plot_frontier(front, png)
        c = front["chosen"]
        logger.info("the split: predicted IND %.1f at %.2fx AlwaysAug's latency (AlwaysAug %.1f, NoAug %.1f)",
                    c["ind_p_at_1"], c["latency_ratio"], front["always"]["ind_p_at_1"], front["never"]["ind_p_at_1"])
        for ratio, p in front["best_within"].items():
            if p:
                logger.info("best split within %sx: IND %.1f at %.2fx, D^E = %s", ratio, p["ind_p_at_1"],
                            p["latency_ratio"], ", ".join(p["embed"]) or "none")
        logger.info("frontier: %s and %s", png, png.with_suffix(".json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
