"""The accuracy–latency curve of auto mode over decision thresholds, the threshold with the best accuracy and the
lowest-latency threshold that still reaches always's accuracy; chosen on the validation split, reported on test.

    python bench/thresholds.py [--model PATH] [--data DIR] [--limit 40] [--thresholds 0,0.1,...,1]
                               [--plot FILE.png] [--json FILE] [--tiny]
    python bench/thresholds.py --val-report VAL.json --test-report TEST.json [--plot FILE.png] [--json FILE]

Without reports it runs the evaluation itself, as
`python -m msolomon.evaluation --split val|test --modes auto,never,always --thresholds ... --limit N` would
(the sweep reuses the never and always runs: each query takes its always result when p_augment ≥ t, so the curve
costs no extra encoding). A threshold is chosen on the validation split (in-distribution datasets only; the test
sets are for reporting) and its test accuracy and latency are read from the test sweep. Ties in accuracy go to the
lower latency. JSON: `chosen` (best_accuracy, cheapest_at_always_accuracy: threshold, val and test figures),
`curves` (val, test), `modes` (test overall P@1 and mean latency of never, auto at 0.5, always).
"""
from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

DEFAULT_THRESHOLDS = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,0.95,1,1.01"


def best_accuracy(curve: list[dict]) -> dict:
    return max(curve, key=lambda e: (e["overall"], -e["latency_ms_mean"]))


def cheapest_at(curve: list[dict], accuracy: float) -> dict | None:
    ok = [e for e in curve if e["overall"] >= accuracy - 1e-9]
    return min(ok, key=lambda e: (e["latency_ms_mean"], -e["overall"])) if ok else None


def at(curve: list[dict], t: float) -> dict | None:
    return next((e for e in curve if abs(e["threshold"] - t) < 1e-12), None)


def run_reports(args, thresholds: list[float], tmp: Path) -> tuple[dict, dict]:
    from msolomon.evaluation import EvalSettings, evaluate

    model, name = C.load_model(args)
    _, names, folder = C.minimmeb(args)
    mnt = 8 if args.tiny else 64
    reports = {}
    for split in ("val", "test"):
        settings = EvalSettings(modes=("auto", "never", "always"), limit=args.limit, thresholds=thresholds,
                                split=split, max_new_tokens=mnt, show_progress_bar=False, fresh=True,
                                datasets=names if args.datasets else None)
        reports[split] = evaluate(model, folder, settings, out=tmp / f"{split}.json", model_name=name)
    return reports["val"], reports["test"]


def label_groups(curve: list[dict], points: float = 0.1,
                 rel_latency: float = 0.05) -> list[tuple[list[float], tuple[float, float]]]:
    """Neighbouring thresholds within 0.1 P@1 points and timing noise (5% latency) of each other make one decision set:
    one label, at their mean point, instead of a pile of overlapping ones."""
    groups: list[list[dict]] = []
    for e in sorted(curve, key=lambda e: e["threshold"]):
        last = groups[-1][-1] if groups else None
        if (last is not None and abs(last["overall"] - e["overall"]) <= points
                and abs(last["latency_ms_mean"] - e["latency_ms_mean"])
                <= rel_latency * max(last["latency_ms_mean"], e["latency_ms_mean"])):
            groups[-1].append(e)
        else:
            groups.append([e])
    return [([e["threshold"] for e in g], (sum(e["latency_ms_mean"] for e in g) / len(g),
                                           sum(e["overall"] for e in g) / len(g))) for g in groups]


def plot(val: dict, test: dict, chosen: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=110)
    try:
        for report, style, label in ((test, "-", "test"), (val, "--", "validation (where thresholds are chosen)")):
            curve = report["thresholds"]
            xs, ys = [e["latency_ms_mean"] for e in curve], [e["overall"] for e in curve]
            ax.plot(xs, ys, style, marker=".", color="tab:blue" if label == "test" else "0.6", label=f"auto, {label}")
            if label == "test":  # thresholds that land on (nearly) one point share a label
                for ts, (x, y) in label_groups(curve):
                    text = f"{ts[0]:g}" if len(ts) == 1 else f"{min(ts):g}–{max(ts):g}"
                    ax.annotate(text, (x, y), textcoords="offset points", xytext=(7, 8), fontsize=7, color="0.35")
        modes = test["modes"]
        for m, marker in (("never", "o"), ("always", "s")):
            if m in modes:
                ax.plot([modes[m]["latency_ms"]["mean"]], [modes[m]["overall"]], marker, color="black",
                        markersize=7, label=f"{m} (test): {modes[m]['overall']:.1f}")
        if "always" in modes:
            ax.axhline(modes["always"]["overall"], color="black", linestyle=":", linewidth=1)
        for key, marker, color, text in (("best_accuracy", "*", "tab:red", "best accuracy"),
                                         ("cheapest_at_always_accuracy", "D", "tab:green",
                                          "lowest latency at always's accuracy")):
            c = chosen.get(key)
            if c and c.get("test"):
                ax.plot([c["test"]["latency_ms_mean"]], [c["test"]["overall"]], marker, color=color, markersize=12,
                        label=f"{text}: t = {c['threshold']:g} (chosen on validation)", zorder=5)
        ax.set_xlabel("mean latency per query, ms (batch size 1)")
        ax.set_ylabel("Precision@1, % (macro over datasets)")
        ax.set_title("auto mode over decision thresholds (labels: t)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        from msolomon.files import atomic_file

        with atomic_file(path, "wb") as fh:
            fig.savefig(fh, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)


@dataclass
class ThresholdsSettings(C.BenchSettings):
    val_report: str | None = C.option(None, "an evaluation report (JSON) of the val split with a sweep")
    test_report: str | None = C.option(None, "an evaluation report (JSON) of the test split with a sweep")
    limit: int | None = C.option(None, "queries per dataset when evaluating (default: 40; --tiny: 4)")
    thresholds: str = C.option(DEFAULT_THRESHOLDS, f"(default: {DEFAULT_THRESHOLDS})")
    plot: str | None = C.option(None, "write the curve as a PNG here (default: none)")

    def __post_init__(self) -> None:
        if bool(self.val_report) != bool(self.test_report):
            raise ValueError("give both --val-report and --test-report, or neither (then the evaluation runs here)")


def main(argv=None) -> int:
    args = C.parse(ThresholdsSettings, argv, __doc__)
    args.limit = args.limit or (4 if args.tiny else 40)
    threads = C.start(args)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        if args.val_report:
            val, test = (json.loads(Path(f).read_text()) for f in (args.val_report, args.test_report))
        else:
            val, test = run_reports(args, thresholds, Path(tmp))
    for name, report in (("validation", val), ("test", test)):
        if not report.get("thresholds"):
            raise SystemExit(f"the {name} report has no threshold sweep (run the evaluation with --thresholds)")
    chosen = {}
    val_always = val["modes"]["always"]["overall"]
    for key, entry in (("best_accuracy", best_accuracy(val["thresholds"])),
                       ("cheapest_at_always_accuracy", cheapest_at(val["thresholds"], val_always))):
        chosen[key] = None if entry is None else {"threshold": entry["threshold"], "val": entry,
                                                  "test": at(test["thresholds"], entry["threshold"])}
    test_always = test["modes"]["always"]["overall"]
    test_view = {"best_accuracy": best_accuracy(test["thresholds"]),
                 "cheapest_at_always_accuracy": cheapest_at(test["thresholds"], test_always)}
    modes = {m: {"overall": r["overall"], "latency_ms_mean": r["latency_ms"]["mean"],
                 "augment_rate": r.get("augment_rate")} for m, r in test["modes"].items()}
    if args.plot:
        plot(val, test, chosen, Path(args.plot))
    rows = []
    for e in test["thresholds"]:
        v = at(val["thresholds"], e["threshold"]) or {}
        marks = [k for k, c in (("best accuracy (val)", chosen["best_accuracy"]),
                                ("lowest latency at always's accuracy (val)", chosen["cheapest_at_always_accuracy"]))
                 if c and c["threshold"] == e["threshold"]]
        rows.append([e["threshold"], v.get("overall"), e["overall"], e["augment_rate"], e["latency_ms_mean"],
                     "; ".join(marks)])
    mode_rows = [[m, d["overall"], d["latency_ms_mean"], d["augment_rate"]] for m, d in modes.items()]
    result = {"machine": C.machine(threads), "model": test.get("model"), "limit": test.get("settings", {}).get("limit"),
              "thresholds": thresholds, "chosen": chosen, "test_only_choice": {k: v and v["threshold"]
                                                                               for k, v in test_view.items()},
              "always_overall": {"val": val_always, "test": test_always}, "modes": modes,
              "curves": {"val": val["thresholds"], "test": test["thresholds"]}}
    C.finish(args, f"decision threshold sweep: {test.get('model')}",
             [("auto mode by threshold (P@1 macro %, test latency ms)",
               C.table(["threshold", "val P@1", "test P@1", "test augment rate", "test mean ms", "chosen"], rows)),
              ("modes on test", C.table(["mode", "P@1", "mean ms", "augment rate"], mode_rows))], result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
