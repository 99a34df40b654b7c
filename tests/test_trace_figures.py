"""`bench/trace_figures.py`: the README's results table and the cards recompute from the committed reports, and a
changed figure or a stale verdict is caught."""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _trace():
    spec = importlib.util.spec_from_file_location("trace_figures", ROOT / "bench" / "trace_figures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["trace_figures"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _copy(tmp_path: Path) -> Path:
    files = [str(p.relative_to(ROOT)) for folder in ("docs/results", "docs/decisions", "docs/perf")
             for p in (ROOT / folder).glob("*.json")]
    for rel in ("README.md", "docs/results.md", *files, *(f"{c}/{f}" for c in _trace().CARDS
                                                         for f in ("README.md", "report.json"))):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, tmp_path / rel)
    return tmp_path


def _edit_row(path: Path, starts: str, old: str, new: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    i = next(i for i, line in enumerate(lines) if line.startswith(starts))
    assert old in lines[i]
    lines[i] = lines[i].replace(old, new, 1)
    path.write_text("".join(lines), encoding="utf-8")


def test_the_committed_figures_trace(capsys):
    trace = _trace()
    assert trace.main(["--root", str(ROOT)]) == 0
    out = capsys.readouterr().out
    assert "every figure traces" in out and "assets/model: 4" in out  # dozens of card rows were compared
    assert "docs/results.md: 44 rows" in out  # every table of the results page


def test_each_table_of_the_results_page_is_checked_against_its_file(tmp_path):
    trace = _trace()
    root = _copy(tmp_path)
    results = root / "docs/results.md"
    _edit_row(results, "| AlwaysAug, 4 epochs |", "| 61.7 |", "| 61.9 |")  # a latency, from trio-4ep
    _edit_row(results, "| 2 epochs (`trio-2ep", "| level |", "| holds |")  # a verdict its interval does not give
    _edit_row(results, "| NoAug | `noaug.val.json`", "58.1 [56.7, 59.5]", "58.1 [56.7, 59.6]")
    _edit_row(results, "| 6 epochs | `trio-6ep.test.json`", "| 52.1 |", "| 53.1 |")  # the pilot's input
    _edit_row(results, "| **M-Solomon, shipped (rehearsal", "| 41.7 |", "| 47.1 |")  # held-out exact match
    problems, counted = trace.trace(root)
    assert len(problems) == 5, problems
    assert ["61.9" in problems[0], "holds" in problems[1], "59.6" in problems[2], "53.1" in problems[3],
            "47.1" in problems[4]] == [True] * 5
    # a row whose file says something else is caught too: the file, not the page, is the reference
    report = root / "docs/results/trio-4ep.test.json"
    report.write_text(report.read_text(encoding="utf-8").replace('"noaug_p_at_1": 24.3333', '"noaug_p_at_1": 99.0', 1),
                      encoding="utf-8")
    assert len(trace.trace(root)[0]) == 6


def test_a_changed_figure_and_a_stale_verdict_are_caught(tmp_path):
    trace = _trace()
    root = _copy(tmp_path)
    readme = root / "README.md"
    first = next(iter(trace.README_ROWS))  # the M-Solomon row: its /augment rate, one hundredth off
    lines = readme.read_text(encoding="utf-8").splitlines(keepends=True)
    i = next(i for i, line in enumerate(lines) if line.startswith(f"| {first} |"))
    cells = lines[i].split(" | ")
    cells[5] = f"{float(cells[5]) + 0.01:.2f}"
    lines[i] = " | ".join(cells)
    readme.write_text("".join(lines), encoding="utf-8")
    card = root / "assets/model/README.md"
    text = card.read_text(encoding="utf-8")
    assert ": level |" in text
    card.write_text(text.replace(": level |", ": holds |", 1), encoding="utf-8")
    problems, _ = trace.trace(root)
    assert len(problems) == 2
    assert "README.md results row" in problems[0] and cells[5] in problems[0]
    assert "assets/model/README.md table row" in problems[1]
    # the latency sentence: its ratio is auto (latency.json) over the AlwaysAug model (latency_alwaysaug.json)
    text = readme.read_text(encoding="utf-8")
    assert "**0.47×**" in text
    readme.write_text(text.replace("**0.47×**", "**0.45×**", 1), encoding="utf-8")
    problems, _ = trace.trace(root)
    latency = [x for x in problems if "latency sentence" in x]
    assert len(problems) == 3 and len(latency) == 1 and "'0.45'" in latency[0] and "'0.47'" in latency[0]
