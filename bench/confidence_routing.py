"""Can the retrieval's own confidence decide per query when to augment? No model is run: rules are scored on one
model's three paths already evaluated on validation.

    python bench/confidence_routing.py --predictions runs/q1/eval/ship.val.predictions.jsonl \
        --report runs/q1/eval/ship.val.json --json docs/decisions/confidence_routing.json

In auto mode the `/embed` path's embedding comes out of the decision's own prefill (README, "How inference works"),
so a search with it costs a few milliseconds before any token is written. That makes a cascade possible: search
with the embedded query first, and augment only when that search is unsure. The confidence of a search is its
top-1 margin (the first candidate's score minus the second's). Rules, each routing the model's own `never` and
`always` results query by query (the `--predictions` file of an evaluation in modes auto, never and always):

- auto: the model's first token, as shipped;
- skip at t: a query the model would augment takes its embedded result when that margin is at least t;
- add at t: a query the model would embed takes its augmented result when that margin is below t;
- the more confident path: both paths run, the one with the larger top-1 margin (or top-1 score) is kept;
- the model's own oracle: the better path per query (not a rule: the ceiling).

Latency is estimated from the report's per-dataset mean of each mode (a query costs its dataset's `never` mean when
embedded, its `always` mean when augmented; both for the more-confident rules), so only ratios between rules are
meant. Each rule's gain over auto has a paired 95% bootstrap interval (same queries). Validation only: nothing here
reads test.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
from template_routing import macro, rate, route  # noqa: E402

Paths = dict[str, dict[str, list[dict]]]  # mode -> dataset -> predictions in row order
THRESHOLDS = "0.01,0.02,0.03,0.05,0.08,0.1,0.15"


@dataclass
class ConfidenceRoutingSettings(C.BenchSettings):
    predictions: str = C.option("", "one model's validation predictions in modes auto, never and always "
                                "(msolomon.evaluation --modes auto,never,always writes NAME.predictions.jsonl)",
                                metavar="FILE")
    report: str = C.option("", "the same evaluation's report (per-dataset latency of each mode)", metavar="FILE")
    thresholds: str = C.option(THRESHOLDS, "top-1 margins to try (comma-separated)")


def top1_margin(prediction: Mapping) -> float:
    """The first candidate's score minus the second's, as `msolomon.gate.MarginGate` reads it (a lone candidate's
    infinite margin is kept at 2, the widest two cosines can differ)."""
    from msolomon.gate import top1_margin as margin_of

    return min(margin_of([t["score"] for t in prediction["top"]]), 2.0)


def read_paths(path: Path) -> Paths:
    rows: dict[str, dict[str, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    try:
        for line in path.read_text().splitlines():
            if line.strip():
                p = json.loads(line)
                rows[p["mode"]][p["dataset"]][p["index"]] = p
    except (OSError, ValueError, KeyError) as err:
        raise SystemExit(f"--predictions {path}: not a predictions file ({err})") from None
    missing = {"auto", "never", "always"} - set(rows)
    if missing:
        raise SystemExit(f"--predictions {path}: no {', '.join(sorted(missing))} rows (evaluate with --modes "
                         "auto,never,always)")
    paths = {m: {n: [v[i] for i in sorted(v)] for n, v in by.items()} for m, by in rows.items()}
    if any(len(paths[m][n]) != len(paths["auto"][n]) for m in ("never", "always") for n in paths["auto"]):
        raise SystemExit(f"--predictions {path}: the three modes do not cover the same queries")
    return paths


def mode_latency(report: Path) -> dict[str, dict[str, float]]:
    """mode -> dataset -> mean ms per query, from an evaluation report."""
    try:
        modes = json.loads(report.read_text())["modes"]
        return {m: {n: float(d["latency_ms_mean"]) for n, d in modes[m]["datasets"].items()}
                for m in ("never", "always")}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"--report {report}: no per-dataset latency of never and always ({err})") from None


def path_bits(paths: Paths) -> dict[str, dict[str, list[bool]]]:
    """mode (never, always) -> dataset -> each query's correctness, in row order."""
    return {m: {n: [bool(p["correct"]) for p in rows] for n, rows in paths[m].items()} for m in ("never", "always")}


def decisions(paths: Paths, rule: Callable[[dict, dict], bool]) -> dict[str, list[bool]]:
    """Per dataset, True where the rule takes the augmented path; `rule(auto, never)` sees one query's two rows."""
    return {n: [rule(a, e) for a, e in zip(paths["auto"][n], paths["never"][n])] for n in paths["auto"]}


def score(paths: Paths, decide: Mapping[str, Sequence[bool]], latency: Mapping[str, Mapping[str, float]],
          reference: Mapping[str, Sequence[bool]], both: bool = False) -> dict:
    """Macro P@1, augment rate and estimated mean latency of a routing, and its paired gain over `reference`."""
    from msolomon.metrics import paired_gain_ci

    bits = path_bits(paths)
    routed = route(bits["never"], bits["always"], decide)
    costs = [sum(latency["always"][n] if (both or a) else latency["never"][n] for a in d) / len(d)
             for n, d in decide.items()]
    paired = paired_gain_ci(routed, reference)
    return {"p_at_1": round(macro(routed), 2), "augment_rate": round(rate(decide), 3),
            "latency_ms_est": round(sum(costs) / len(costs), 1), "gain_over_auto": round(paired["gain"], 2),
            "ci95": [round(x, 2) for x in paired["ci95"]]}, routed


def main(argv: Sequence[str] | None = None) -> int:
    args = C.parse(ConfidenceRoutingSettings, argv, __doc__, model=False, data=False)
    if not args.predictions or not args.report:
        raise SystemExit("--predictions and --report are required")
    try:
        thresholds = [float(t) for t in args.thresholds.split(",") if t.strip()]
    except ValueError:
        raise SystemExit(f"--thresholds {args.thresholds!r}: comma-separated numbers") from None
    paths = read_paths(Path(args.predictions))
    latency = mode_latency(Path(args.report))
    auto = decisions(paths, lambda a, e: a["decision"] == "/augment")
    bits = path_bits(paths)
    reference = route(bits["never"], bits["always"], auto)
    rules: dict[str, dict] = {}
    rules["auto"], _ = score(paths, auto, latency, reference)
    for t in thresholds:
        skip = decisions(paths, lambda a, e, t=t: a["decision"] == "/augment" and top1_margin(e) < t)
        rules[f"skip at {t}"], _ = score(paths, skip, latency, reference)
    for t in thresholds:
        add = decisions(paths, lambda a, e, t=t: a["decision"] == "/augment" or top1_margin(e) < t)
        rules[f"add at {t}"], _ = score(paths, add, latency, reference)
    for name, key in (("margin", top1_margin), ("top-1 score", lambda p: p["top"][0]["score"])):
        pick = {n: [key(w) > key(e) for e, w in zip(paths["never"][n], paths["always"][n])] for n in paths["never"]}
        rules[f"the more confident path ({name})"], _ = score(paths, pick, latency, reference, both=True)
    oracle = {n: [(not e) and w for e, w in zip(bits["never"][n], bits["always"][n])] for n in bits["never"]}
    rules["own oracle"], _ = score(paths, oracle, latency, reference)
    per_dataset = {n: {"auto": round(100 * sum(reference[n]) / len(reference[n]), 1),
                       "augment_rate": round(sum(auto[n]) / len(auto[n]), 3),
                       "median_margin_embedded_path": round(C.median(top1_margin(p) for p in paths["never"][n]), 4)}
                   for n in sorted(reference)}
    # what every rule reads, per query in row order, so that a reviewer recomputes each figure from this file alone
    evidence = {n: {"auto_augments": "".join("1" if a else "0" for a in auto[n]),
                    "never_bits": "".join("1" if b else "0" for b in bits["never"][n]),
                    "always_bits": "".join("1" if b else "0" for b in bits["always"][n]),
                    "never_top1_margin": [round(top1_margin(p), 4) for p in paths["never"][n]],
                    "latency_ms_mean": {m: latency[m][n] for m in ("never", "always")}} for n in sorted(auto)}
    result = {"machine": C.machine(C.start(args)), "predictions": args.predictions, "report": args.report,
              "queries": sum(len(v) for v in auto.values()), "datasets": len(auto), "rules": rules,
              "per_dataset": per_dataset, "evidence": evidence}
    rows = [[name, r["p_at_1"], r["augment_rate"], r["latency_ms_est"], f"{r['gain_over_auto']:+.2f}",
             f"[{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}]"] for name, r in rules.items()]
    C.finish(args, "Confidence routing on validation (no model run)",
             [("rules", C.table(["rule", "P@1 (macro)", "augment rate", "latency ms (est.)", "vs auto", "95% CI"],
                                rows))], result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
