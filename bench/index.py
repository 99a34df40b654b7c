"""faiss exact search against HNSW, IVF and IVF-PQ at 10k, 100k and 1M vectors of the model's dimension.

    python bench/index.py [--threads 1] [--build-threads N] [--sizes 10000,100000,1000000] [--queries 200]
                          [--vectors model|powerlaw] [--model PATH] [--hnsw-max N] [--pq-min N|none]
                          [--json FILE] [--tiny]

For each corpus size: build time, search latency p50 at one query per call (the demo's case), recall@10 against
exact search, and the index's size in memory (its serialised bytes), for `Flat` (exact), `HNSW32` at several
efSearch values, `IVF{nlist},Flat` (nlist ≈ √n) at several nprobe values, and from `--pq-min` vectors on the
IVF-PQ index `factory="auto"` builds beyond 5M vectors (`OPQ{m},IVF{nlist},PQ{m}x8`, m = dim / 4 bytes per
vector). The searches of one query run interleaved over every index and setting; p50 over the queries. For HNSW
and IVF the table keeps the fastest setting whose recall@10 is at least 0.95, which is what
`VectorIndex.build(..., factory="auto")` picks from; for IVF-PQ, the nprobe `factory="auto"` sets.

Vectors: a million real embeddings take hours to encode on a CPU, so the corpus is drawn from a Gaussian fitted to
the model's own candidate embeddings (mean and covariance of the MiniMMEB test candidates, `--vectors model`,
the default), L2-normalised like real ones; `--vectors powerlaw` draws from a Gaussian with a power-law spectrum
instead (no model needed; `--tiny` uses it). Queries are fresh draws from the same distribution.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import numpy as np  # noqa: E402

HNSW_EF = (16, 32, 64, 128, 256)
IVF_NPROBE = (1, 4, 8, 16, 32, 64, 128)
RECALL_GOAL = 0.95
K = 10


def ivf_lists(n: int) -> int:
    from msolomon.index import ivf_lists as rule

    return rule(n)


def ivf_of(index):
    import faiss

    return faiss.extract_index_ivf(index)


class Distribution:
    """A Gaussian (mean, covariance factor) to draw L2-normalised vectors from, in chunks."""

    def __init__(self, mean: np.ndarray, factor: np.ndarray, source: str):
        self.mean, self.factor, self.source = mean.astype(np.float32), factor.astype(np.float32), source
        self.dim = mean.shape[0]

    def draw(self, n: int, seed: int, chunk: int = 100_000) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.dim), np.float32)
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            z = rng.standard_normal((m, self.factor.shape[0]), dtype=np.float32)
            x = z @ self.factor + self.mean
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[s:s + m] = x
        return out

    def effective_rank(self) -> float:
        """exp(entropy of the normalised eigenvalues): how many directions the vectors really spread over."""
        ev = np.linalg.svd(self.factor, compute_uv=False) ** 2
        p = ev / ev.sum()
        return float(np.exp(-(p * np.log(p + 1e-30)).sum()))


def powerlaw(dim: int, seed: int = 0, alpha: float = 1.0) -> Distribution:
    """Eigenvalues (k+1)^-alpha in a random basis around a shared mean direction (as embeddings have)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    scale = (np.arange(1, dim + 1, dtype=np.float64) ** -alpha) ** 0.5
    factor = (scale[:, None] * basis.T)
    mean = rng.standard_normal(dim)
    mean *= 0.5 * np.sqrt((scale ** 2).sum()) / np.linalg.norm(mean)
    return Distribution(mean, factor, f"power-law spectrum (alpha {alpha}) in {dim} dimensions")


def fitted(args) -> Distribution:
    """Mean and covariance of the model's embeddings of every MiniMMEB test candidate."""
    model, name = C.load_model(args)
    bench, names, _ = C.minimmeb(args)
    cands = C.unique_candidates([row for n in names for row in bench.read(n)])[1]
    vectors = model.encode_candidates(cands, batch_size=32).astype(np.float64)
    mean = vectors.mean(0)
    cov = np.cov(vectors - mean, rowvar=False) + 1e-6 * np.eye(vectors.shape[1])
    factor = np.linalg.cholesky(cov).T
    return Distribution(mean, factor, f"Gaussian fitted to {len(cands)} candidate embeddings of {name} "
                                      f"({vectors.shape[1]} dimensions)")


def serialized_mb(index) -> float:
    import faiss

    return float(faiss.serialize_index(index).nbytes) / 2 ** 20


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / len(t) for f, t in zip(found, truth)]))


def bench_size(n: int, dist: Distribution, queries: np.ndarray, build_threads: int, threads: int,
               hnsw_max: int | None, pq_min: int | None) -> tuple[list[dict], dict]:
    import faiss

    from msolomon import VectorIndex
    from msolomon.index.vector import ivf_pq_factory

    corpus = dist.draw(n, seed=1000 + n)
    faiss.omp_set_num_threads(build_threads)
    factories = {"Flat": "Flat", "IVF": f"IVF{ivf_lists(n)},Flat"}
    if hnsw_max is None or n <= hnsw_max:
        factories["HNSW"] = "HNSW32"
    if pq_min is not None and n >= pq_min:  # what factory="auto" builds beyond HNSW_MAX, at this size
        factories["IVF-PQ"] = ivf_pq_factory(n, dist.dim)
    built, build_s, size_mb = {}, {}, {}
    for kind, factory in factories.items():
        t0 = time.perf_counter()
        built[kind] = VectorIndex.build(corpus, factory=factory)
        build_s[kind] = time.perf_counter() - t0
        size_mb[kind] = serialized_mb(built[kind].index)
    truth = built["Flat"].index.search(queries, K)[1]
    faiss.omp_set_num_threads(threads)
    # every (kind, setting) searched one query at a time, interleaved: query i runs them in a rotated order
    from msolomon.index.vector import ivf_pq_nprobe

    auto_nprobe = ivf_pq_nprobe(ivf_lists(n))  # what factory="auto" sets on its IVF-PQ index
    variants = [("Flat", None)] + [("IVF", p) for p in IVF_NPROBE if p <= ivf_lists(n)]
    if "IVF-PQ" in built:
        variants += [("IVF-PQ", p) for p in sorted(set(IVF_NPROBE) | {auto_nprobe}) if p <= ivf_lists(n)]
    if "HNSW" in built:
        variants += [("HNSW", ef) for ef in HNSW_EF]
    times = {v: [] for v in variants}
    found = {v: np.empty((len(queries), K), np.int64) for v in variants}
    for i, q in enumerate(queries):
        for v in C.rotations(variants, i):
            kind, setting = v
            index = built[kind]
            if kind.startswith("IVF"):
                ivf_of(index.index).nprobe = setting
            elif kind == "HNSW":
                index.index.hnsw.efSearch = setting
            t0 = time.perf_counter()
            _, pos = index.search_arrays(q[None], K)
            times[v].append((time.perf_counter() - t0) * 1e3)
            found[v][i] = pos[0]
    rows = []
    exact_p50 = C.median(times[("Flat", None)])
    for v in variants:
        kind, setting = v
        p50 = C.median(times[v])
        knob = "nprobe" if kind.startswith("IVF") else "efSearch"
        rows.append({"n": n, "kind": kind, "factory": factories[kind],
                     "setting": None if setting is None else f"{knob}={setting}",
                     "build_s": build_s[kind], "p50_ms": p50, "p95_ms": C.percentile(times[v], 95),
                     "speedup_vs_exact": exact_p50 / p50, "recall_at_10": recall_at_k(found[v], truth),
                     "memory_mb": size_mb[kind]})
    best = {}
    for kind in ("HNSW", "IVF"):
        ok = [r for r in rows if r["kind"] == kind and r["recall_at_10"] >= RECALL_GOAL]
        best[kind] = min(ok, key=lambda r: r["p50_ms"]) if ok else None
    if "IVF-PQ" in built:  # compressed codes rarely reach the goal: the row of the setting factory="auto" uses
        best["IVF-PQ"] = next(r for r in rows if r["kind"] == "IVF-PQ" and r["setting"] == f"nprobe={auto_nprobe}")
    del built, corpus
    return rows, best


@dataclass
class IndexSettings(C.BenchSettings):
    sizes: str | None = C.option(None, "comma-separated corpus sizes (default: 10000,100000,1000000)")
    queries: int = C.option(200, "search queries per size (default: 200)")
    vectors: str | None = C.option(None, "where the corpus distribution comes from (default: model; powerlaw with "
                                         "--tiny)", choices=("model", "powerlaw"))
    dim: int | None = C.option(None, "with --vectors powerlaw: dimension (default: the model's)")
    build_threads: int | None = C.option(None, "faiss threads while building (default: --threads); searches always "
                                               "use --threads")
    hnsw_max: int | None = C.option(None, "skip HNSW above this corpus size (default: never)")
    pq_min: int | None = C.option(1_000_000, "also build the IVF-PQ index factory='auto' uses beyond HNSW_MAX, at "
                                             "this corpus size and above (default: 1000000; its training is slow)")


def main(argv=None) -> int:
    args = C.parse(IndexSettings, argv, __doc__)
    threads = C.start(args)
    build_threads = args.build_threads or threads
    sizes = [int(s) for s in (args.sizes or ("2000,5000" if args.tiny else "10000,100000,1000000")).split(",")]
    n_queries = min(args.queries, 50) if args.tiny else args.queries
    vectors = args.vectors or ("powerlaw" if args.tiny else "model")
    if vectors == "model":
        dist = fitted(args)
    else:
        dim = args.dim
        if dim is None:
            if args.tiny and args.model is None:
                dim = 64
            else:
                import json

                from msolomon.model import DEFAULT_MODEL_DIR

                cfg = json.loads((Path(args.model or DEFAULT_MODEL_DIR) / "config.json").read_text())
                dim = (cfg.get("text_config") or cfg)["hidden_size"]
        dist = powerlaw(dim)
    queries = dist.draw(n_queries, seed=7)
    rows, best = [], {}
    for n in sizes:
        t0 = time.perf_counter()
        r, b = bench_size(n, dist, queries, build_threads, threads, args.hnsw_max, args.pq_min)
        rows += r
        best[str(n)] = b
        print(f"  {n:,} vectors done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    top = max(sizes)
    at_top = [b for b in best[str(top)].values() if b is not None and b["recall_at_10"] >= RECALL_GOAL]
    fastest = max(at_top, key=lambda r: r["speedup_vs_exact"]) if at_top else None
    ratios = {}
    for n in sizes:
        for kind, b in best[str(n)].items():
            ratios[f"{kind.lower()}_speedup_at_{n}"] = b["speedup_vs_exact"] if b else None
            ratios[f"{kind.lower()}_recall_at_{n}"] = b["recall_at_10"] if b else None
            flat = next(r for r in rows if r["n"] == n and r["kind"] == "Flat")
            ratios[f"{kind.lower()}_memory_vs_exact_at_{n}"] = b["memory_mb"] / flat["memory_mb"] if b else None
    checks = [(f"best of HNSW/IVF at {top:,}: search speed-up over exact (recall@10 ≥ {RECALL_GOAL})",
               fastest["speedup_vs_exact"] if fastest else None, ">=", 20.0)]
    result = {"machine": C.machine(threads), "build_threads": build_threads, "vectors": dist.source,
              "effective_rank": dist.effective_rank(), "dim": dist.dim, "queries": n_queries, "k": K,
              "rows": rows, "best": best, "ratios": ratios,
              "targets": {c[0]: {"value": c[1], "goal": f"{c[2]} {c[3]}"} for c in checks}}
    main_rows = [[r["n"], r["factory"], r["setting"] or "exact", r["build_s"], r["p50_ms"], r["speedup_vs_exact"],
                  r["recall_at_10"], r["memory_mb"]]
                 for n in sizes for r in [x for x in rows if x["n"] == n and x["kind"] == "Flat"]
                 + [b for b in best[str(n)].values() if b is not None]]
    sweep = [[r["n"], r["factory"], r["setting"], r["p50_ms"], r["speedup_vs_exact"], r["recall_at_10"]]
             for r in rows if r["kind"] != "Flat"]
    C.finish(args, f"faiss search, {dist.dim}-d vectors ({dist.source}; effective rank "
                   f"{dist.effective_rank():.0f}), {n_queries} queries, one per call; builds on {build_threads} "
                   f"thread(s)",
             [("exact against the fastest setting with recall@10 ≥ 0.95",
               C.table(["vectors", "index", "setting", "build s", "search p50 ms", "× faster than exact",
                        "recall@10", "MB"], main_rows)),
              ("every setting", C.table(["vectors", "index", "setting", "p50 ms", "× faster", "recall@10"], sweep)),
              ("target", C.table(["what", "measured", "goal", ""], C.target_rows(checks)))], result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
