"""A reviewer's check: every number of the README's results table and of the shipped models' cards, recomputed
from the committed reports; exits 1 on a mismatch, naming the file, the row and both values.

    python bench/trace_figures.py [--root .]

What it checks:
1. README.md, "Results on MiniMMEB": each model's row (overall P@1 and its interval, IND, OOD, /augment rate,
   latency) from `assets/model/report.json`, the floor and chance rows from its macro floors.
2. README.md's latency sentence (M-Solomon's auto against its always path, one thread): `docs/perf/latency.json`.
3. Each card (`assets/model`, `assets/baselines/noaug`, `assets/baselines/alwaysaug`): every table row of its
   measured part equals the row `training.report.markdown` prints from the card's own `report.json` (numbers and
   verdicts: a card whose claims were judged by another rule is stale).
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from msolomon.settings import option, parse_settings  # noqa: E402

CARDS = ("assets/model", "assets/baselines/noaug", "assets/baselines/alwaysaug")
README_ROWS = {  # the README's first cell -> (report model, mode)
    "**M-Solomon (`assets/model`, the default)**": ("msolomon", "auto"),
    "AlwaysAug (`assets/baselines/alwaysaug`)": ("alwaysaug", "always"),
    "NoAug (`assets/baselines/noaug`)": ("noaug", "never"),
}
LATENCY_SENTENCE = re.compile(r"times M-Solomon's\s+auto at ([\d.]+) ms and its always path at ([\d.]+) ms: "
                              r"\*\*([\d.]+)×\*\*")


@dataclass
class TraceSettings:
    root: str = option(str(ROOT), "the repository to check")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table_rows(text: str) -> list[list[str]]:
    return [_cells(line) for line in text.splitlines()
            if line.startswith("|") and not set(line.replace("|", "").strip()) <= set("-: ")]


def _f(x: float | None, nd: int = 1) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def readme_rows(report: dict[str, Any]) -> dict[str, list[str]]:
    """The README table's rows as they must read, from the shipped report."""
    rows = {}
    for first, (key, mode) in README_ROWS.items():
        m = report["models"][key]["modes"][mode]
        lo, hi = m["overall_ci95"]
        rows[first] = [first, mode, f"{_f(m['overall'])} [{_f(lo)}, {_f(hi)}]", _f(m["ind"]), _f(m["ood"]),
                       _f(m["augment_rate"], 2), _f(m["latency_ms"]["mean"])]
    auto = report["models"]["msolomon"]["modes"]["auto"]
    floor, chance = auto["floor_text_only_macro"], auto["chance_macro"]
    rows["text-only floor (macro; never looks at the image)"] = [
        "text-only floor (macro; never looks at the image)", "", _f(floor["overall"]), _f(floor["ind"]),
        _f(floor["ood"]), "", ""]
    rows["chance (macro)"] = ["chance (macro)", "", _f(chance["overall"]), _f(chance["ind"]), _f(chance["ood"]), "",
                              ""]
    return rows


def check_readme(root: Path) -> list[str]:
    problems = []
    readme = (root / "README.md").read_text(encoding="utf-8")
    report = json.loads((root / "assets/model/report.json").read_text(encoding="utf-8"))
    expected = readme_rows(report)
    found = {row[0]: row for row in _table_rows(readme) if row[0] in expected}
    for first, want in expected.items():
        got = [c.replace("**", "") for c in found.get(first, [])]
        want = [c.replace("**", "") for c in want]
        if got != want:
            problems.append(f"README.md results row {first!r}: reads {got or 'nothing'}, the report gives {want}")
    latency = json.loads((root / "docs/perf/latency.json").read_text(encoding="utf-8"))
    match = LATENCY_SENTENCE.search(" ".join(readme.split()))
    want = (_f(latency["mean_ms"]["auto"]), _f(latency["mean_ms"]["always"]),
            f"{latency['ratios']['auto_over_always']:.2f}")
    if match is None:
        problems.append("README.md: the latency sentence (M-Solomon's auto against its always path) is missing")
    elif match.groups() != want:
        problems.append(f"README.md latency sentence: reads {match.groups()}, docs/perf/latency.json gives {want}")
    return problems


def check_card(root: Path, folder: str) -> tuple[list[str], int]:
    """(problems, rows checked) of one card against the rows `training.report.markdown` prints from its report."""
    from training.report import MEASURED_START, markdown

    card = (root / folder / "README.md").read_text(encoding="utf-8")
    result = json.loads((root / folder / "report.json").read_text(encoding="utf-8"))
    start = card.find(MEASURED_START)
    if start < 0:
        return [f"{folder}/README.md: no measured part ({MEASURED_START!r})"], 0
    want = _table_rows(markdown(result))
    got = _table_rows(card[start:])
    problems = [f"{folder}/README.md table row {i + 1}: reads {g}, its report.json gives {w}"
                for i, (g, w) in enumerate(zip(got, want)) if g != w]
    if len(got) != len(want):
        problems.append(f"{folder}/README.md: {len(got)} table rows, its report.json gives {len(want)}")
    return problems, len(got)


def trace(root: Path) -> tuple[list[str], dict[str, int]]:
    problems = check_readme(root)
    counted = {"README.md": len(README_ROWS) + 3}
    for folder in CARDS:
        found, n = check_card(root, folder)
        problems += found
        counted[folder] = n
    return problems, counted


def main(argv: Sequence[str] | None = None) -> int:
    settings, _ = parse_settings(TraceSettings, argv, prog="python bench/trace_figures.py", description=__doc__,
                                 config_file=False)
    problems, counted = trace(Path(settings.root))
    for folder, n in counted.items():
        sys.stdout.write(f"{folder}: {n} rows checked\n")
    for line in problems:
        sys.stdout.write(f"MISMATCH {line}\n")
    sys.stdout.write("every figure traces to its committed file\n" if not problems
                     else f"{len(problems)} mismatches\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
