"""A reviewer's check: every number of the README's results table and of the shipped models' cards, recomputed
from the committed reports; exits 1 on a mismatch, naming the file, the row and both values.

    python bench/trace_figures.py [--root .]

What it checks:
1. README.md, "Results on MiniMMEB": each model's row (overall P@1 and its interval, IND, OOD, /augment rate,
   latency) from `assets/model/report.json`, the floor and chance rows from its macro floors.
2. README.md's latency sentence (M-Solomon's auto against the AlwaysAug model, one thread): `docs/perf/latency.json`
   (auto) and `docs/perf/latency_alwaysaug.json` (always).
3. Each card (`assets/model`, `assets/baselines/noaug`, `assets/baselines/alwaysaug`): every table row of its
   measured part equals the row `training.report.markdown` prints from the card's own `report.json` (numbers and
   verdicts: a card whose claims were judged by another rule is stale).
4. docs/results.md: every row of its test tables (from the report its row or table names), of the gains table
   (each trio's `gains`, judged by `training.report.verdict`), of the validation table (the report in
   docs/decisions/, paired against AlwaysAug's), of the recipe table (the pilot's inputs in each trio's
   `split.datasets`) and of the forgetting table (the bench's JSON named in the row).
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
LATENCY_SENTENCE = re.compile(r"times M-Solomon's\s+auto at ([\d.]+) ms and the AlwaysAug model at ([\d.]+) ms: "
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
    auto = json.loads((root / "docs/perf/latency.json").read_text(encoding="utf-8"))["mean_ms"]["auto"]
    always = json.loads((root / "docs/perf/latency_alwaysaug.json").read_text(encoding="utf-8"))["mean_ms"]["always"]
    match = LATENCY_SENTENCE.search(" ".join(readme.split()))
    want = (_f(auto), _f(always), f"{auto / always:.2f}")
    if match is None:
        problems.append("README.md: the latency sentence (M-Solomon's auto against the AlwaysAug model) is missing")
    elif match.groups() != want:
        problems.append(f"README.md latency sentence: reads {match.groups()}, docs/perf/latency.json and "
                        f"latency_alwaysaug.json give {want}")
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


RESULTS = "docs/results.md"
RESULTS_TEST_ROWS = {  # first cell -> (file, model, mode); rows with a "file" cell name it in docs/results/
    "M-Solomon, 6 epochs on v2 (the model above before its v3 epoch)": ("trio-v2.test.json", "msolomon", "auto"),
    "AlwaysAug, the same run": ("trio-v2.test.json", "alwaysaug", "always"),
    "NoAug, the same run": ("trio-v2.test.json", "noaug", "never"),
}
RESULTS_MODEL = {"M-Solomon": ("msolomon", "auto"), "AlwaysAug": ("alwaysaug", "always"), "NoAug": ("noaug", "never")}
VAL_ROWS = {"NoAug": "never", "AlwaysAug": "always"}  # any other first cell is an M-Solomon in auto


def _load(root: Path, rel: str) -> dict[str, Any]:
    return json.loads((root / rel).read_text(encoding="utf-8"))


def _gain(g: dict[str, Any]) -> str:
    from training.report import _fmt_gain
    return _fmt_gain(g["gain"], g["ci95"])


def _compare(problems: list[str], where: str, got: Sequence[str], want: Sequence[str]) -> None:
    got = [c.replace("**", "").replace("−", "-") for c in got]
    want = [c.replace("**", "").replace("−", "-") for c in want]
    if got != want:
        problems.append(f"{where}: reads {got}, its file gives {want}")


def _results_file(name: str) -> str:
    name = name.strip("`")
    return name if "/" in name else f"docs/results/{name}"


def check_results(root: Path) -> tuple[list[str], int]:
    """(problems, rows checked) of docs/results.md's tables against the files they name."""
    from msolomon.metrics import correct_by_dataset, paired_gain_ci
    from training.report import LEVEL_MARGIN, verdict

    problems: list[str] = []
    checked = 0
    text = (root / RESULTS).read_text(encoding="utf-8")
    shipped = readme_rows(_load(root, "assets/model/report.json"))
    for row in _table_rows(text):
        first = row[0].replace("**", "")
        where = f"{RESULTS} row {first!r}"
        if row[0] in shipped:
            _compare(problems, where, row, shipped[row[0]])
        elif len(row) in (7, 8) and row[1] in ("auto", "always", "never") and (
                first in RESULTS_TEST_ROWS or len(row) == 8):
            name, key, mode = (RESULTS_TEST_ROWS[first] if first in RESULTS_TEST_ROWS
                               else (row[7], *RESULTS_MODEL[first.split(",")[0]]))
            m = _load(root, _results_file(name))["models"][key]["modes"][mode]
            lo, hi = m["overall_ci95"]
            _compare(problems, where, row[1:7], [mode, f"{_f(m['overall'])} [{_f(lo)}, {_f(hi)}]", _f(m["ind"]),
                                                 _f(m["ood"]), _f(m["augment_rate"], 2),
                                                 _f(m["latency_ms"]["mean"])])
        elif len(row) == 4 and row[0].endswith(".test.json`)"):
            gains = {g["comparison"]: g for g in _load(root, _results_file(row[0].split("(")[1].rstrip(")")))[
                "gains"] if g["scope"] == "overall"}
            no, al = gains["M-Solomon(auto) − NoAug(never)"], gains["M-Solomon(auto) − AlwaysAug(always)"]
            _compare(problems, where, row[1:], [_gain(no), _gain(al), verdict(al["ci95"], LEVEL_MARGIN)])
        elif len(row) == 5 and row[1].endswith(".val.json`"):
            report = _load(root, f"docs/decisions/{row[1].strip('`')}")
            mode = VAL_ROWS.get(first, "auto")
            m = report["modes"][mode]
            lo, hi = m["ind_ci95"]
            against = ""
            if first != "AlwaysAug":
                base = correct_by_dataset(_load(root, "docs/decisions/alwaysaug.val.json")["modes"]["always"])
                against = _gain(paired_gain_ci(correct_by_dataset(m), base))
            _compare(problems, where, row[2:], [f"{_f(m['ind'])} [{_f(lo)}, {_f(hi)}]", against,
                                                _f(m["augment_rate"], 2)])
        elif len(row) == 5 and row[1].endswith(".test.json`"):
            split = _load(root, _results_file(row[1]))["split"]
            per = split["datasets"].values()
            noaug = sum(d["noaug_p_at_1"] for d in per) / len(per)
            always = sum(d["alwaysaug_p_at_1"] for d in per) / len(per)
            embed = ", ".join(split["embed"]) + (f" ({split['latency_budget']}× budget)"
                                                 if split.get("latency_budget") else "")
            _compare(problems, where, row[2:], [_f(noaug), _f(always), embed])
        elif len(row) == 8 and row[1].endswith(".json`") and row[1].startswith("`docs/"):
            entry = {e["model"]: e for e in _load(root, row[1].strip("`"))["models"]}[row[2].strip("`")]
            em = entry["exact_match"]
            _compare(problems, where, row[3:], [_f(entry["overall"])] + [
                _f(em[w]) for w in ("DigitsR", "DigitsCLS", "PhotoCLS", "ChartVQA")])
        else:
            continue
        checked += 1
    return problems, checked


def trace(root: Path) -> tuple[list[str], dict[str, int]]:
    problems = check_readme(root)
    counted = {"README.md": len(README_ROWS) + 3}
    found, n = check_results(root)
    problems += found
    counted[RESULTS] = n
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
