"""Threads: one helper every command line uses to set torch's (and faiss's) CPU threads once.

Why it matters: torch starts one intra-op thread per core. On a small machine shared with another job (the demo
beside an evaluation, a training run beside the tests) every process then spins that many threads on the same
cores, and a small model's many short ops spend their time waiting for each other: on a 2-core machine with
another job running, an evaluation took 282 ms per query with torch's default and 14.8 ms with one thread.

    @dataclass
    class MySettings:
        threads: int | None = threads_option()   # --threads N (None: default_threads()), checked: at least 1

    settings, _ = parse_settings(MySettings, argv, prog=...)   # msolomon.settings
    process_environment(settings.threads)   # msolomon.settings: calls set_threads once, before the model runs

The default is `$MSOLOMON_THREADS`, else `$OMP_NUM_THREADS`, else half the cores this process may use (at least
one): room for a second process (the demo and an evaluation, say) without oversubscription. Inter-op threads
(torch's pool for parallel independent ops, which this code does not use) are set to 1, so no process ever runs
more than `threads` busy threads.
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Mapping

logger = logging.getLogger(__name__)

_applied: dict[str, int] = {}


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's cpuset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_threads(environ: Mapping[str, str] | None = None) -> int:
    """`$MSOLOMON_THREADS`, else `$OMP_NUM_THREADS`, else half the available cores (at least one); `environ`:
    the environment to read (default: this process's)."""
    environ = os.environ if environ is None else environ
    for name in ("MSOLOMON_THREADS", "OMP_NUM_THREADS"):
        value = environ.get(name, "").strip()
        if value.isdigit() and int(value) >= 1:
            return int(value)
    return max(1, available_cores() // 2)


def check_threads(value) -> int:
    """A thread count from the command line or a config: an integer of at least 1 (a clear ValueError)."""
    if isinstance(value, bool):
        raise ValueError(f"threads must be an integer of at least 1, got {value!r}")
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"threads must be an integer of at least 1, got {value!r}") from None
    if n < 1 or (isinstance(value, float) and value != n):
        raise ValueError(f"threads must be an integer of at least 1, got {value!r}")
    return n


def parse_threads_flag(text: Any) -> int:
    try:
        return check_threads(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).replace("threads", "--threads", 1)) from None


def threads_help(what: str, default: int | None) -> str:
    if default is None:
        text = (f"default: {default_threads()}: $MSOLOMON_THREADS, else $OMP_NUM_THREADS, else half the "
                f"{available_cores()} cores")
    else:
        text = f"default: {default}"
    return f"CPU threads for {what}, set once at start ({text})"


def set_threads(threads: int | None = None, faiss: bool = True) -> int:
    """Set torch's intra-op threads to `threads` (None: `default_threads()`), its inter-op threads to 1 and,
    with `faiss`, faiss's OpenMP threads; returns the count. Call it once, early; a later call with another
    count changes the intra-op and faiss threads only (torch fixes inter-op threads at their first use)."""
    import torch

    n = default_threads() if threads is None else check_threads(threads)
    if _applied.get("intra") != n:
        torch.set_num_threads(n)
        _applied["intra"] = n
    if "inter" not in _applied:
        try:
            torch.set_num_interop_threads(1)
            _applied["inter"] = 1
        except RuntimeError:  # parallel work already ran in this process: torch keeps its inter-op pool
            _applied["inter"] = torch.get_num_interop_threads()
            logger.debug("torch inter-op threads already fixed at %d", _applied["inter"])
    if faiss and _applied.get("faiss") != n:
        try:
            import faiss as _faiss
        except ImportError:  # pragma: no cover - faiss is a dependency; a bare torch install still works
            pass
        else:
            _faiss.omp_set_num_threads(n)
            _applied["faiss"] = n
    return n


def threads_info() -> dict[str, int]:
    """What this process runs with now: torch intra-op and inter-op threads, and the available cores."""
    import torch

    return {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
            "cores": available_cores()}
