"""What the performance scripts share: the command line (--threads, --json, --tiny, --model, --data), the
machine description, MiniMMEB data, peak memory, medians and ratio tables.

These machines are noisy (other jobs share the cores), so every script measures the things it compares in one
run, interleaved (A, B, C, then B, C, A, ...), takes medians, and reports ratios; absolute times are context.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from msolomon.settings import process_environment  # noqa: E402

process_environment(set_threads=False)

from msolomon.runtime import available_cores  # noqa: E402
from msolomon.settings import option, parse_settings, threads_option  # noqa: E402

TINY_DATASETS = ("ScenesVQA", "DigitsCLS", "ScenesT2I")  # an augmenting VQA set, an image and a text query set


@dataclass
class BenchSettings:
    """The flags every performance script shares; a script's settings subclass it (its own flags come after)."""

    threads: int | None = threads_option("torch and faiss")
    json: str | None = option(None, "also write the results as JSON to FILE", metavar="FILE")
    tiny: bool = option(False, "a seconds-long smoke run: the untrained MSolomon.tiny() model and small sizes (the "
                               "tests use it)")
    model: str | None = option(None, "model folder (default: the shipped model, assets/model)")
    data: str | None = option(None, "a MiniMMEB folder (default: MiniMMEB small, seed 0, generated once into "
                                     "$MSOLOMON_CACHE/bench or ~/.cache/msolomon/bench)")
    datasets: str | None = option(None, "comma-separated dataset names (default: all)")


def parse(cls, argv: Sequence[str] | None, description: str, model: bool = True, data: bool = True):
    """A script's settings (`cls`, a BenchSettings) from its command line; `model`/`data` False: a script without
    --model / without --data and --datasets."""
    unused = (() if model else ("model",)) + (() if data else ("data", "datasets"))
    return parse_settings(cls, argv, description=description, config_file=False, unused=unused)[0]


def start(args: BenchSettings) -> int:
    """Set the threads once; returns the count."""
    return process_environment(args.threads)


def machine(threads: int) -> dict[str, Any]:
    """The machine and settings a result was measured on (with the load average: other jobs show there)."""
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": available_cores(), "threads": threads, "torch": torch.__version__,
            "python": platform.python_version(), "load_avg_1_5_15": [round(x, 2) for x in load] if load else None,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def load_model(args: BenchSettings):
    from msolomon import MSolomon

    if args.tiny and args.model is None:
        return MSolomon.tiny(seed=0), "MSolomon.tiny(seed=0) (untrained)"
    from msolomon.model import DEFAULT_MODEL_DIR

    path = args.model or DEFAULT_MODEL_DIR
    return MSolomon.from_pretrained(path), str(path)


def model_summary(model) -> dict[str, Any]:
    from msolomon.backbone import unwrap

    core = unwrap(model.model)
    text = core.config.get_text_config()
    return {"params_m": round(sum(p.numel() for p in core.parameters()) / 1e6, 2), "hidden": text.hidden_size,
            "layers": text.num_hidden_layers, "dtype": str(model.dtype).replace("torch.", "")}


def minimmeb(args: BenchSettings, split: str = "test"):
    """The MiniMMEB benchmark (evaluation.Benchmark) of --data, else generated once (tiny: into a temporary
    folder that lives as long as the process)."""
    from msolomon.data.minimmeb import generate, is_minimmeb
    from msolomon.evaluation import open_benchmark

    if args.data:
        folder = Path(args.data)
    elif args.tiny:
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="msolomon-bench-")) / "minimmeb"
        generate(folder, seed=0, scale="tiny", datasets=list(TINY_DATASETS))
    else:
        cache = Path(os.environ.get("MSOLOMON_CACHE") or Path.home() / ".cache" / "msolomon") / "bench"
        folder = cache / "minimmeb-small-seed0"
        if not is_minimmeb(folder):
            generate(folder, seed=0, scale="small")
    bench = open_benchmark(folder, split=split)
    names = list(bench.names)
    if getattr(args, "datasets", None):
        wanted = [n.strip() for n in args.datasets.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise SystemExit(f"unknown dataset(s) {', '.join(unknown)}; {folder} has {', '.join(names)}")
        names = wanted
    return bench, names, folder


def unique_candidates(rows) -> tuple[dict, list]:
    """The distinct candidates of evaluation rows (by text, image and instruction) and each one's position."""
    keys, cands = {}, []
    for row in rows:
        for c in row.candidates:
            key = candidate_key(c)
            if key not in keys:
                keys[key] = len(cands)
                cands.append(c)
    return keys, cands


def candidate_key(c) -> tuple:
    return (c.text, str(c.image), c.instruction)


# --- memory ----------------------------------------------------------------------------------------------------

def reset_peak_rss() -> bool:
    """Reset this process's peak resident set (Linux: /proc/self/clear_refs); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mb(peak: bool = False) -> float | None:
    """Current (or peak since the last reset) resident memory in MB, from /proc/self/status."""
    key = "VmHWM:" if peak else "VmRSS:"
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    if peak:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return None


# --- timing and statistics -------------------------------------------------------------------------------------

def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(milliseconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1e3, out


def rotations(names: Sequence[str], i: int) -> list[str]:
    """`names` rotated by i: round i of an interleaved run starts with a different variant each time."""
    k = i % len(names)
    return list(names[k:]) + list(names[:k])


def median(values: Iterable[float]) -> float:
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else float("nan")


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


def rnd(x: Any, digits: int = 3) -> Any:
    """Round floats (also inside dicts and lists) for JSON and tables."""
    if isinstance(x, float):
        return round(x, digits) if x == x else None
    if isinstance(x, dict):
        return {k: rnd(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [rnd(v, digits) for v in x]
    return x


# --- output ----------------------------------------------------------------------------------------------------

def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table (numbers right-aligned), as printed and as pasted into the README."""
    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            if v != v:
                return "–"
            return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    cells = [[cell(v) for v in row] for row in rows]
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(lines)


def target_rows(checks: Sequence[tuple[str, float | None, str, float]]) -> list[list[Any]]:
    """Rows of (what, measured, goal as text, met?) for the targets table."""
    rows = []
    for what, value, op, goal in checks:
        if value is None or value != value:
            met = "not measured"
        else:
            met = "met" if (value <= goal if op == "<=" else value >= goal) else "MISSED"
        rows.append([what, value, f"{op} {goal:g}", met])
    return rows


def finish(args: BenchSettings, title: str, sections: Sequence[tuple[str, str]], result: dict) -> None:
    """Print the title and each (heading, table); write the JSON when --json was given."""
    out = [f"# {title}", f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
           f"{result['machine']['threads']} torch thread(s), load average {result['machine']['load_avg_1_5_15']}"]
    for heading, text in sections:
        out += ["", f"## {heading}", text]
    sys.stdout.write("\n".join(out) + "\n")
    if args.json:
        path = Path(args.json)
        if path.parent != Path(""):
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rnd(result, 4), indent=2, allow_nan=False) + "\n")
        sys.stdout.write(f"\nwrote {path}\n")
