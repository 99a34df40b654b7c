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
    for rel in ("README.md", "docs/perf/latency.json", *(f"{c}/{f}" for c in _trace().CARDS
                                                         for f in ("README.md", "report.json"))):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, tmp_path / rel)
    return tmp_path


def test_the_committed_figures_trace(capsys):
    trace = _trace()
    assert trace.main(["--root", str(ROOT)]) == 0
    out = capsys.readouterr().out
    assert "every figure traces" in out and "assets/model: 4" in out  # dozens of card rows were compared


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
