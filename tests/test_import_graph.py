"""The project's modules import each other without a cycle: every import counts (top-level, under TYPE_CHECKING
and inside functions), so no pair of modules needs the other to be half-initialised, and the layers stay apart
(the worlds draw images and questions; the benchmark, `msolomon.data.minimmeb`, builds on them)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("msolomon", "training")


def module_files(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _targets(module: str, node: ast.Import | ast.ImportFrom, is_package: bool, known: dict[str, Path]) -> list[str]:
    """The project modules an import statement loads (a name imported from a package may be a submodule)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".") if is_package else module.split(".")[:-1]
            parts = parts[:len(parts) - (node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    out = []
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.append(name)
    return out


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module].update(_targets(module, node, path.name == "__init__.py", files))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_sees_a_cycle_through_type_checking(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import x\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.c import y\nx = 1\n")
    (pkg / "c.py").write_text("def f():\n    from . import a\n")
    (pkg / "d.py").write_text("import pkg.a\n")
    graph = import_graph(module_files(tmp_path, ("pkg",)))
    assert graph["pkg.d"] == {"pkg.a"} and graph["pkg.c"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_the_project_imports_without_a_cycle() -> None:
    files = module_files()
    assert {"msolomon.model", "msolomon.data.minimmeb", "msolomon.worlds.common", "training.train"} <= set(files)
    assert cycles(import_graph(files)) == []


def test_one_name_per_thing() -> None:
    """A class, or a private module-level helper, is defined once across the project (a second `Example` or `_fmt`
    is a copy or a clash); public per-command entry points (`main`, `run`, `stage_train`) repeat by design. Only
    `msolomon.settings` adds flags to an argparse parser."""
    seen: dict[str, str] = {}
    clashes = []
    for module, path in module_files().items():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            once = isinstance(node, ast.ClassDef) or (isinstance(node, ast.FunctionDef) and node.name.startswith("_"))
            if not once:
                continue
            if node.name in seen:
                clashes.append((node.name, seen[node.name], module))
            seen.setdefault(node.name, module)
    assert not clashes
    parsers = [str(p.relative_to(ROOT)) for p in sorted(ROOT.rglob("*.py"))
               if p.parts[len(ROOT.parts)] not in ("runs", "tests", ".venv")
               and "add_argument(" in p.read_text(encoding="utf-8")]
    assert parsers == ["msolomon/settings.py"]
