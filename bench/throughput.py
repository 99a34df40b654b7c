"""Throughput against batch size: `encode_candidates` items/s, and `encode_queries` in auto mode with its
decision-split batching against one query at a time; peak memory of each.

    python bench/throughput.py [--threads 1] [--model PATH] [--data DIR] [--batch-sizes 1,4,16,64]
                               [--queries 64] [--candidates 256] [--rounds 3] [--json FILE] [--tiny]

Queries: MiniMMEB test queries, datasets taken in turn (image and text queries, some the model augments and some
it embeds at once: the mix a search service gets). Candidates: the unique candidates of the same datasets, in
turn. Each round runs every configuration once over the same items, in a rotated order; the figure is the median
over rounds. `encode_queries` at batch b runs the queries in batches of b (one prefill decides the whole batch;
`/embed` rows finish in one cached step, `/augment` rows decode together and leave as they finish) and is compared
with the same queries one at a time (batch 1), measured in the same round. Peak memory is the process's peak
resident set during the call (Linux VmHWM, reset before each call), and its growth over the resident set before.
JSON: `ratios` (queries_batch{b}_over_one_at_a_time, candidates_batch{b}_over_batch1), `queries`, `candidates`,
`targets`.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def items(bench, names, n_queries: int, n_candidates: int):
    rows = {n: bench.read(n) for n in names}
    queries = [rows[n][j].query for j in range(max(len(r) for r in rows.values())) for n in names
               if j < len(rows[n])][:n_queries]
    per = {n: C.unique_candidates(rows[n])[1] for n in names}
    cands = [per[n][j] for j in range(max(len(v) for v in per.values())) for n in names if j < len(per[n])]
    return queries, cands[:n_candidates]


def measure(fn) -> tuple[float, float | None, float | None]:
    """(seconds, peak resident MB, growth over the resident set before) of one call."""
    import gc

    gc.collect()
    C.reset_peak_rss()
    before = C.rss_mb()
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    peak = C.rss_mb(peak=True)
    return seconds, peak, (peak - before) if peak is not None and before is not None else None


@dataclass
class ThroughputSettings(C.BenchSettings):
    batch_sizes: str = C.option("1,4,16,64", "comma-separated (default: 1,4,16,64)")
    queries: int | None = C.option(None, "queries per configuration (default: 64; --tiny: 8)")
    candidates: int | None = C.option(None, "candidates (default: 256; --tiny: 16)")
    rounds: int | None = C.option(None, "interleaved rounds (default: 3; --tiny: 1)")
    max_new_tokens: int | None = C.option(None, "augmentation cap (default: 64; --tiny: 8)")


def main(argv=None) -> int:
    args = C.parse(ThroughputSettings, argv, __doc__)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.tiny and args.batch_sizes == "1,4,16,64":
        sizes = [1, 4]
    n_q = args.queries or (8 if args.tiny else 64)
    n_c = args.candidates or (16 if args.tiny else 256)
    rounds = args.rounds or (1 if args.tiny else 3)
    threads = C.start(args)
    model, model_name = C.load_model(args)
    bench, names, folder = C.minimmeb(args)
    queries, cands = items(bench, names, n_q, n_c)
    mnt = args.max_new_tokens or (8 if args.tiny else 64)

    model.encode_queries(queries[:2], augment="auto", batch_size=2, max_new_tokens=mnt)  # warm up
    model.encode_candidates(cands[:4], batch_size=4)
    configs = [("queries", 1, "one at a time")] + [("queries", b, "batched") for b in sizes if b > 1] \
        + [("candidates", b, "batched") for b in sizes]
    got: dict = {c: {"s": [], "peak": [], "growth": []} for c in configs}
    decisions, flips = None, 0
    for r in range(rounds):
        for cfg in C.rotations(configs, r):
            kind, b, _ = cfg
            if kind == "queries":
                out = []
                s, peak, growth = measure(lambda: out.extend(
                    model.encode_queries(queries, augment="auto", batch_size=b, max_new_tokens=mnt)))
                seen = [o.decision for o in out]
                if decisions is None:
                    decisions = seen
                # batching must not change what the model decides (padding moves p_augment by ~1e-6 at most)
                flips = max(flips, sum(a != d for a, d in zip(seen, decisions)))
            else:
                s, peak, growth = measure(lambda: model.encode_candidates(cands, batch_size=b))
            got[cfg]["s"].append(s)
            got[cfg]["peak"].append(peak)
            got[cfg]["growth"].append(growth)

    one = ("queries", 1, "one at a time")
    q_rows, c_rows, ratios = [], [], {}
    queries_out, cands_out = {}, {}
    for cfg in configs:
        kind, b, how = cfg
        n = len(queries) if kind == "queries" else len(cands)
        per_s = C.median(n / s for s in got[cfg]["s"])
        peak = max((x for x in got[cfg]["peak"] if x is not None), default=None)
        growth = max((x for x in got[cfg]["growth"] if x is not None), default=None)
        if kind == "queries":
            ratio = C.median(got[one]["s"][r] / got[cfg]["s"][r] for r in range(rounds))
            key = "one_at_a_time" if cfg == one else f"batch{b}"
            if cfg != one:
                ratios[f"queries_batch{b}_over_one_at_a_time"] = ratio
            queries_out[key] = {"batch_size": b, "items_per_s": per_s, "speedup": ratio, "peak_rss_mb": peak,
                                "peak_growth_mb": growth}
            q_rows.append([how if cfg == one else f"batch {b}", b, per_s, ratio, peak, growth])
        else:
            base = ("candidates", sizes[0], "batched")
            ratio = C.median(got[base]["s"][r] / got[cfg]["s"][r] for r in range(rounds))
            ratios[f"candidates_batch{b}_over_batch{sizes[0]}"] = ratio
            cands_out[f"batch{b}"] = {"batch_size": b, "items_per_s": per_s, "speedup": ratio, "peak_rss_mb": peak,
                                      "peak_growth_mb": growth}
            c_rows.append([b, per_s, ratio, peak, growth])
    augment_rate = sum(d == "/augment" for d in decisions) / len(decisions)
    checks = [("batched auto at 16 / one at a time", ratios.get("queries_batch16_over_one_at_a_time"), ">=", 3.0)]
    result = {"machine": C.machine(threads), "model": model_name, "model_size": C.model_summary(model),
              "data": str(folder), "n_queries": len(queries), "n_candidates": len(cands), "rounds": rounds,
              "augment_rate": augment_rate, "decision_flips_across_batch_sizes": flips, "max_new_tokens": mnt,
              "ratios": ratios, "queries": queries_out,
              "candidates": cands_out,
              "targets": {c[0]: {"value": c[1], "goal": f"{c[2]} {c[3]}"} for c in checks}}
    C.finish(args, f"throughput: {model_name}, {len(queries)} queries ({augment_rate:.0%} augmented in auto), "
                   f"{len(cands)} candidates, {rounds} interleaved rounds",
             [("encode_queries, auto mode", C.table(["run", "batch", "queries/s", "× one at a time", "peak MB",
                                                     "peak growth MB"], q_rows)),
              ("encode_candidates", C.table(["batch", "candidates/s", f"× batch {sizes[0]}", "peak MB",
                                             "peak growth MB"], c_rows)),
              ("target", C.table(["what", "measured", "goal", ""], C.target_rows(checks)))], result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
