"""Two processes sharing the cores: how much each slows down, with the default threads and with torch's own
default (one thread per core, what every command used before `--threads`).

    python bench/two_processes.py [--model PATH] [--data DIR] [--queries 60] [--json FILE] [--tiny]

The workload is a search service's or an evaluation's: MiniMMEB test queries (datasets in turn) encoded one at a
time in auto mode. Each worker is its own `python` process that loads the model, waits until every worker is
ready, then times only the encoding. For each thread setting: one worker alone, then two at once (the two-process
case: an evaluation beside the demo, say); slowdown = a worker's time beside the other / its time alone. The
settings run interleaved (alone, pair; alone, pair; ...) --rounds times; figures are medians.
`--tiny` runs the default setting only; `--threads` is the workers' business here (each setting sets theirs), so
the script itself ignores it. JSON: `ratios` (slowdown_default_threads, slowdown_torch_default_threads: the larger
of the two workers), `settings`, `targets`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def worker(args) -> int:
    """One process: load, signal ready, wait for the start file, encode, print the seconds as JSON."""
    threads = C.start(args)
    model, _ = C.load_model(args)
    bench, names, _ = C.minimmeb(args)
    per = max(1, -(-args.queries // len(names)))
    rows = {n: bench.read(n, limit=per) for n in names}
    queries = [rows[n][j].query for j in range(per) for n in names if j < len(rows[n])][:args.queries]
    model.encode_queries(queries[:2], augment="auto", batch_size=1)  # warm up
    Path(args.ready).write_text("ready")
    deadline = time.time() + 600
    while not Path(args.go).exists():
        if time.time() > deadline:
            return 3
        time.sleep(0.01)
    t0 = time.perf_counter()
    model.encode_queries(queries, augment="auto", batch_size=1)
    print(json.dumps({"seconds": time.perf_counter() - t0, "threads": threads, "queries": len(queries)}))
    return 0


def run_group(n: int, threads: int | None, args, tmp: Path) -> list[float]:
    """Start n workers, wait until all are loaded, start them together; their encoding seconds."""
    go = tmp / f"go-{time.monotonic_ns()}"
    procs, readies = [], []
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MSOLOMON_THREADS"):
        env.pop(name, None)  # the setting under test comes from --threads or the helper's default only
    for i in range(n):
        ready = tmp / f"ready-{go.name}-{i}"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--ready", str(ready), "--go", str(go),
               "--queries", str(args.queries)]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        for opt in ("model", "data", "datasets"):
            if getattr(args, opt):
                cmd += [f"--{opt}", str(getattr(args, opt))]
        if args.tiny:
            cmd.append("--tiny")
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
        readies.append(ready)
    deadline = time.time() + 600
    while not all(r.exists() for r in readies):
        if time.time() > deadline or any(p.poll() not in (None, 0) for p in procs):
            for p in procs:
                p.kill()
            raise SystemExit("a worker failed to start: " + " | ".join(p.stderr.read()[-500:] for p in procs
                                                                        if p.poll() not in (None, 0)))
        time.sleep(0.05)
    go.write_text("go")
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=900)
        if p.returncode != 0:
            raise SystemExit(f"a worker failed (exit {p.returncode}): {stderr[-800:]}")
        out.append(json.loads(stdout.strip().splitlines()[-1])["seconds"])
    return out


@dataclass
class TwoProcessesSettings(C.BenchSettings):
    queries: int | None = C.option(None, "queries per worker (default: 60; --tiny: 6)")
    rounds: int | None = C.option(None, "interleaved rounds (default: 2; --tiny: 1)")
    worker: bool = C.option(False, "(internal) run one worker")
    ready: str | None = C.option(None, "(internal) file a worker writes when loaded")
    go: str | None = C.option(None, "(internal) file that starts the workers")


def main(argv=None) -> int:
    args = C.parse(TwoProcessesSettings, argv, __doc__)
    args.queries = args.queries or (6 if args.tiny else 60)
    if args.worker:
        return worker(args)
    rounds = args.rounds or (1 if args.tiny else 2)
    cores = C.available_cores()
    from msolomon.runtime import default_threads

    default = default_threads(environ={})  # what a worker gets without --threads (its thread variables dropped)
    settings = {"default": None} if args.tiny else {"default": None, "torch_default": cores}
    times = {s: {"alone": [], "pair": []} for s in settings}
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:  # make the tiny model and data once, not in every worker
            if args.model is None:
                C.load_model(args)[0].save_pretrained(Path(tmp) / "model")
                args.model = str(Path(tmp) / "model")
            if args.data is None:
                args.data = str(C.minimmeb(args)[2])
        for r in range(rounds):
            for s in C.rotations(list(settings), r):
                times[s]["alone"] += run_group(1, settings[s], args, Path(tmp))
                times[s]["pair"].append(run_group(2, settings[s], args, Path(tmp)))
    out, rows = {}, []
    for s in settings:
        alone = C.median(times[s]["alone"])
        pair = [C.median(x[i] for x in times[s]["pair"]) for i in range(2)]
        slow = max(pair) / alone
        out[s] = {"threads_per_process": settings[s] or default, "alone_s": alone, "pair_s": pair, "slowdown": slow}
        label = (f"default ({default} thread(s) each: half the cores)" if s == "default"
                 else f"torch's default ({cores} threads each: one per core)")
        rows.append([label, alone, max(pair), slow])
    ratios = {f"slowdown_{s}_threads": out[s]["slowdown"] for s in settings}
    checks = [("two processes, default threads: slowdown of the slower", ratios["slowdown_default_threads"],
               "<=", 2.5)]
    result = {"machine": C.machine(default), "queries_per_worker": args.queries, "rounds": rounds, "settings": out,
              "ratios": ratios, "targets": {c[0]: {"value": c[1], "goal": f"{c[2]} {c[3]}"} for c in checks}}
    C.finish(args, f"two processes on {cores} cores: {args.queries} queries each, auto mode, batch 1, "
                   f"{rounds} interleaved rounds",
             [("slowdown beside a second process", C.table(["threads", "alone s", "beside another s",
                                                            "slowdown"], rows)),
              ("target", C.table(["what", "measured", "goal", ""], C.target_rows(checks)))], result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
