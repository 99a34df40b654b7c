"""`python -m msolomon.compare`: several evaluation reports of the same queries side by side, with paired intervals.

    python -m msolomon.compare NAME=REPORT.json[:MODE] [NAME=REPORT.json[:MODE] ...] --reference NAME \\
        [--oracle NOAUG=REPORT.json:never,ALWAYSAUG=REPORT.json:always] [--json OUT.json]

Each entry is one model in one mode (`auto` by default). Per entry: in-distribution and overall Precision@1 with
their intervals, the augment rate, the mean latency, and, where its report ran all three modes, its decision accuracy
and its own per-query oracle (`msolomon.decisions`); then its gain over the reference entry with the paired 95%
bootstrap interval (the same queries resampled together), overall and in-distribution. `--oracle` adds the
two-model oracle of two entries (the better of the two on each query). It reads reports only: nothing is encoded.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from msolomon.decisions import oracle
from msolomon.files import atomic_write_json
from msolomon.metrics import correct_by_dataset, paired_gain_ci
from msolomon.settings import option, parse_settings, usage_error


def parse_entry(spec: str) -> tuple[str, Path, str]:
    """NAME=FILE[:MODE] -> (name, file, mode)."""
    if "=" not in spec:
        raise ValueError(f"{spec!r}: expected NAME=REPORT.json[:MODE]")
    from msolomon.model import AUGMENT_MODES

    name, rest = spec.split("=", 1)
    path, sep, mode = rest.rpartition(":")
    if not sep or mode not in AUGMENT_MODES:
        path, mode = rest, "auto"
    return name, Path(path), mode


def load_entry(path: Path, mode: str) -> tuple[dict, dict]:
    """The report and its mode entry; a clear error when either is missing."""
    if not path.is_file():
        raise ValueError(f"{path}: no such report")
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err})") from None
    if mode not in report.get("modes", {}):
        raise ValueError(f"{path} has no {mode!r} mode (it has {sorted(report.get('modes', {}))})")
    return report, report["modes"][mode]


def _ind(entry: Mapping[str, Any]) -> dict[str, list[bool]]:
    bits = correct_by_dataset(entry)
    return {n: b for n, b in bits.items() if not entry["datasets"][n].get("ood")}


def _gain(a: Mapping[str, Any], b: Mapping[str, Any], ind: bool) -> dict[str, Any] | None:
    x, y = (_ind(a), _ind(b)) if ind else (correct_by_dataset(a), correct_by_dataset(b))
    if not x or set(x) != set(y):
        return None
    g = paired_gain_ci(x, y)
    return {"gain": round(g["gain"], 3), "ci95": [round(v, 3) for v in g["ci95"]],
            "above_0": g["ci95"][0] > 0}


def compare(entries: Sequence[tuple[str, Path, str]], reference: str | None = None,
            oracle_pair: tuple[str, str] | None = None) -> dict[str, Any]:
    loaded = {name: load_entry(path, mode) for name, path, mode in entries}
    if reference is not None and reference not in loaded:
        raise ValueError(f"--reference {reference!r} is not one of the entries {sorted(loaded)}")
    rows = []
    for name, path, mode in entries:
        report, e = loaded[name]
        row: dict[str, Any] = {"name": name, "report": str(path), "mode": mode, "ind": e.get("ind"),
                               "ind_ci95": e.get("ind_ci95"), "overall": e.get("overall"),
                               "overall_ci95": e.get("overall_ci95"), "augment_rate": e.get("augment_rate"),
                               "latency_ms_mean": (e.get("latency_ms") or {}).get("mean"),
                               "datasets": {n: d.get("p_at_1") for n, d in e["datasets"].items()}}
        block = report.get("decisions")
        if block and mode == "auto":
            row.update({"decision_accuracy": block.get("decision_accuracy"),
                        "own_oracle_ind": block["oracle"].get("ind"),
                        "own_oracle_overall": block["oracle"].get("overall"),
                        "gap_closed": block.get("gap_closed")})
        if reference is not None and name != reference:
            ref = loaded[reference][1]
            row["vs_reference"] = {"overall": _gain(e, ref, ind=False), "ind": _gain(e, ref, ind=True)}
        rows.append(row)
    out: dict[str, Any] = {"reference": reference, "entries": rows}
    if oracle_pair is not None:
        a, b = oracle_pair
        if a not in loaded or b not in loaded:
            raise ValueError(f"--oracle names {oracle_pair}, not entries of {sorted(loaded)}")
        out["two_model_oracle"] = {"of": [a, b], **oracle(loaded[a][1], loaded[b][1])}
    return out


def _f(x: Any, nd: int = 1) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def _g(g: Mapping[str, Any] | None) -> str:
    return "–" if not g else f"{g['gain']:+.1f} [{g['ci95'][0]:+.1f}, {g['ci95'][1]:+.1f}]"


def markdown(result: Mapping[str, Any]) -> str:
    ref = result.get("reference")
    lines = ["| entry | mode | IND [95% CI] | overall | augment rate | latency ms | decision accuracy | "
             "own oracle IND | "
             f"IND vs {ref or '–'} | overall vs {ref or '–'} |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["entries"]:
        ci = r.get("ind_ci95")
        vs = r.get("vs_reference") or {}
        lines.append(f"| {r['name']} | {r['mode']} | {_f(r['ind'])}" + (f" [{_f(ci[0])}, {_f(ci[1])}]" if ci else "")
                     + f" | {_f(r['overall'])} | {_f(r['augment_rate'], 2)} | {_f(r['latency_ms_mean'])} | "
                     f"{_f(r.get('decision_accuracy'), 3)} | {_f(r.get('own_oracle_ind'))} | {_g(vs.get('ind'))} | "
                     f"{_g(vs.get('overall'))} |")
    orc = result.get("two_model_oracle")
    if orc:
        lines += ["", f"Two-model oracle of {orc['of'][0]} and {orc['of'][1]}: IND {_f(orc['ind'])}, overall "
                      f"{_f(orc['overall'])}, augment rate {_f(orc['augment_rate'], 2)}."]
    return "\n".join(lines) + "\n"


PROG = "python -m msolomon.compare"


@dataclass
class CompareSettings:
    """`python -m msolomon.compare`: the entries and what to add to their table."""

    entries: list[tuple[str, Path, str]] = option(help="a model's report and mode", positional=True,
                                                  metavar="NAME=REPORT.json[:MODE]", parse=parse_entry)
    reference: str | None = option(None, "the entry every other is compared with (paired)")
    oracle: str | None = option(None, "two entries whose per-query oracle to add", metavar="A,B")
    json: str | None = option(None, "also write the comparison as JSON", metavar="FILE")


def main(argv: Sequence[str] | None = None) -> int:
    args, _ = parse_settings(CompareSettings, argv, prog=PROG, description=__doc__, config_file=False)
    try:
        pair = tuple(args.oracle.split(",")) if args.oracle else None
        if pair is not None and len(pair) != 2:
            raise ValueError(f"--oracle {args.oracle!r}: two entry names, comma-separated")
        result = compare(args.entries, args.reference, pair)  # type: ignore[arg-type]
    except ValueError as err:
        usage_error(PROG, str(err))
    sys.stdout.write(markdown(result))
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
