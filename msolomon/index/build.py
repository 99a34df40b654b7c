"""Encode a collection into a `VectorIndex`, in shards, in this process or on Ray Data actors; resumable.

1. **Plan** (the driver, streaming): the corpus specs are read one item at a time (`sources`); items are cut into
   shards of `shard_size` in reading order and each shard's items are written to its plan file. The driver keeps
   only the keys seen (so no item is planned twice) and the list of shards.
2. **Encode**: every planned shard without a valid result (`shards.ShardStore.is_done`) is encoded, either here
   (`workers=1`: no Ray) or by `workers` Ray Data actors (`map_batches` over the shard numbers, one shard per
   batch), each holding the model with `threads` torch threads (and `gpus_per_worker` GPUs). Workers read the
   plan and write the result themselves; a rerun after a kill encodes only the shards not finished.
3. **Assemble**: the shards' vectors and payloads, in shard order, into `DIR/index/` (a `VectorIndex` folder;
   `factory="auto"` chooses Flat, HNSW or IVF-PQ by size), and `DIR/build.json`: counts, what was skipped and why,
   each stage's time, the model's signature, the settings, and for an approximate index its recall@10 against
   exact search on a sample of the corpus's own vectors.

`add` plans only the items not in the index yet, as shards numbered after the existing ones, encodes them, and
assembles the index again from all shards (the old shards are read, not re-encoded).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from msolomon.files import atomic_write_json
from msolomon.index.shards import ShardStore, encode_shard
from msolomon.index.sources import CollectionItem, Skipped, item_key, key_digest, read_specs

logger = logging.getLogger(__name__)

BUILD_FILE = "build.json"
INDEX_DIR = "index"
MAX_LISTED_SKIPS = 10_000  # build.json lists at most this many skipped items by name (and counts them all)


class IndexBuildError(ValueError):
    """A build, add or search refused: another model's index, a missing index, no items."""


@dataclass
class BuildSettings:
    model: str
    corpus: list[str]
    out: str
    workers: int = 1
    ray_address: str | None = None
    threads: int = 1
    gpus_per_worker: float = 0.0
    shard_size: int = 256
    factory: str = "auto"
    batch_size: int = 32
    recall_sample: int = 1000


def model_signature(model: str) -> str | None:
    from msolomon.model import files_signature, resolve_model_source

    return files_signature(resolve_model_source(model))


def read_build(out: Path) -> dict[str, Any] | None:
    path = Path(out) / BUILD_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def check_model(out: Path, signature: str | None, model: str) -> None:
    """Refuse to touch an index that another model built: its vectors are not comparable with this model's."""
    built = read_build(out)
    if built is not None and built.get("signature") != signature:
        raise IndexBuildError(f"{out} was built by the model {built.get('model')!r} (signature "
                              f"{built.get('signature')}); {model!r} has signature {signature}. Build a new index "
                              "with this model, or use the one that built it.")


@dataclass
class _Plan:
    shards: list[tuple[int, str]] = field(default_factory=list)  # (shard, digest)
    skipped: list[dict] = field(default_factory=list)
    n_skipped: int = 0
    n_items: int = 0


def _plan(entries: Iterator[CollectionItem | Skipped], store: ShardStore, first: int, shard_size: int) -> _Plan:
    """Cut the entries (new items only: `read_specs` leaves out known keys) into shards and write their plans."""
    plan = _Plan()
    chunk: list[dict] = []

    def flush() -> None:
        shard = first + len(plan.shards)
        plan.shards.append((shard, store.write_plan(shard, chunk)))
        chunk.clear()

    for entry in entries:
        if isinstance(entry, Skipped):
            plan.n_skipped += 1
            if len(plan.skipped) < MAX_LISTED_SKIPS:
                plan.skipped.append({"path": entry.path, "reason": entry.reason})
            continue
        chunk.append(entry.payload())
        plan.n_items += 1
        if len(chunk) == shard_size:
            flush()
    if chunk:
        flush()
    return plan


def _encode_here(settings: BuildSettings, store: ShardStore, todo: list[tuple[int, str]], signature: str | None,
                 progress: Any) -> None:
    from msolomon.model import MSolomon
    from msolomon.runtime import set_threads

    set_threads(settings.threads)
    model = MSolomon.from_pretrained(settings.model)
    for shard, digest in todo:
        encode_shard(model, store, shard, digest, signature, settings.batch_size)
        progress.update(1)


class RayShardEncoder:
    """A Ray Data actor: loads the model once, then encodes the shards of each batch it is given."""

    def __init__(self, model: str, shards_dir: str, signature: str | None, threads: int, batch_size: int):
        import os

        os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        from msolomon.model import MSolomon
        from msolomon.runtime import set_threads

        set_threads(threads)
        self.model = MSolomon.from_pretrained(model)
        self.store = ShardStore(shards_dir)
        self.signature = signature
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        done = [encode_shard(self.model, self.store, int(s), str(d), self.signature, self.batch_size)
                for s, d in zip(batch["shard"], batch["digest"])]
        return {"shard": [d["shard"] for d in done], "count": [d["count"] for d in done],
                "skipped": [d["skipped"] for d in done]}


def _encode_on_ray(settings: BuildSettings, store: ShardStore, todo: list[tuple[int, str]],
                   signature: str | None, progress: Any) -> None:
    try:
        import ray
        import ray.data
    except ImportError:
        raise IndexBuildError("--workers N and --ray-address need Ray: pip install 'ray[data]'") from None
    started = not ray.is_initialized()
    if started:
        if settings.ray_address:
            ray.init(address=settings.ray_address, log_to_driver=False)
        else:
            ray.init(num_cpus=settings.workers * settings.threads, include_dashboard=False, log_to_driver=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        # one block per shard, so that the actors share them (a single block would go to one actor)
        ds = ray.data.from_items([{"shard": s, "digest": d} for s, d in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(RayShardEncoder, batch_size=1,
                            compute=ray.data.ActorPoolStrategy(size=settings.workers),
                            num_cpus=settings.threads, num_gpus=settings.gpus_per_worker or None,
                            fn_constructor_kwargs={"model": str(Path(settings.model).resolve()),
                                                   "shards_dir": str(store.root.resolve()), "signature": signature,
                                                   "threads": settings.threads,
                                                   "batch_size": settings.batch_size})
        for _ in ds.iter_rows():
            progress.update(1)
    finally:
        if started:
            ray.shutdown()


def _factory(factory: str, n: int, dim: int) -> str:
    from msolomon.index.vector import choose_index

    return choose_index(n, dim).factory if factory == "auto" else factory


def _shard_count(store: ShardStore, shard: int) -> int:
    return int(json.loads((store.result_dir(shard) / "meta.json").read_text(encoding="utf-8"))["count"])


def _assemble(settings: BuildSettings, store: ShardStore, shards: list[int], new: set[int]) -> dict[str, Any]:
    """The index from the shards, one shard in memory at a time: an exact index is written straight from the shards'
    vectors (`FlatVectors`), an approximate one is held while it is filled (the index itself: for IVF-PQ, a few
    bytes per vector), trained on a seeded sample of at most TRAIN_SAMPLE vectors, and its recall@10 measured against
    exact search done shard by shard. The payloads go from the shards' files to the index's file at save."""
    from msolomon.index.vector import TRAIN_SAMPLE, FlatVectors, VectorIndex, write_index

    counts = {s: _shard_count(store, s) for s in shards}
    total = sum(counts.values())
    if total == 0:
        raise IndexBuildError("no item could be encoded: every item was skipped (see build.json)")
    filled = [s for s in shards if counts[s]]
    dim = int(store.read_vectors(filled[0]).shape[1])
    skipped = {shard: store.read_skipped(shard) for shard in shards if shard in new}  # older ones: in build.json

    def rows() -> Iterator[tuple[int, dict]]:
        position = 0
        for shard in filled:
            for payload in store.read_payloads(shard):
                yield position, payload
                position += 1

    factory = _factory(settings.factory, total, dim)
    if factory == "Flat":
        flat = FlatVectors(dim, total, lambda: (store.read_vectors(s) for s in filled))
        write_index(Path(settings.out) / INDEX_DIR, flat, dim, factory, rows())
        return {"encode_skipped": skipped, "recall_at_10": None, "dim": dim, "count": total, "factory": factory}
    # approximate: a seeded sample to train on and to measure recall with
    rng = np.random.default_rng(0)
    offsets = np.cumsum([0] + [counts[s] for s in filled])
    train_at = np.sort(rng.choice(total, min(total, TRAIN_SAMPLE), replace=False))
    query_at = np.sort(rng.choice(total, min(total, settings.recall_sample), replace=False))
    train_parts, query_parts = [], []
    for i, shard in enumerate(filled):
        vectors = store.read_vectors(shard)  # memory-mapped: only the sampled rows are read
        lo, hi = offsets[i], offsets[i + 1]
        train_parts.append(np.asarray(vectors[train_at[(train_at >= lo) & (train_at < hi)] - lo]))
        query_parts.append(np.asarray(vectors[query_at[(query_at >= lo) & (query_at < hi)] - lo]))
    try:
        index = VectorIndex.create(dim, total, settings.factory, np.concatenate(train_parts))
    except ValueError as err:  # a bad --factory, or too few vectors to train it
        raise IndexBuildError(f"{err}. The encoded shards are kept: rerun with another --factory and only the "
                              "index is assembled again") from None
    for shard in filled:
        index.index.add(np.ascontiguousarray(store.read_vectors(shard), dtype=np.float32))
    write_index(Path(settings.out) / INDEX_DIR, index.index, dim, index.factory, rows())
    recall = _recall_at_10(index, store, filled, np.concatenate(query_parts))
    return {"encode_skipped": skipped, "recall_at_10": recall, "dim": dim, "count": total, "factory": index.factory}


def _recall_at_10(index: Any, store: ShardStore, shards: list[int], queries: np.ndarray) -> float | None:
    """recall@10 of an approximate index against exact search over every vector, done shard by shard, queried
    with a sample of the corpus's own vectors."""
    import faiss

    if not len(queries):
        return None
    k = min(10, index.index.ntotal)
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    offset = 0
    for shard in shards:
        vectors = store.read_vectors(shard)
        exact = faiss.IndexFlatIP(vectors.shape[1])
        exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
        s, i = exact.search(queries, min(k, len(vectors)))
        both_s, both_i = np.hstack([best_s, s]), np.hstack([best_i, i + offset])
        top = np.argsort(-both_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(both_s, top, 1), np.take_along_axis(both_i, top, 1)
        offset += len(vectors)
    _, got = index.search_arrays(queries, k)
    return float(np.mean([len(set(t) & set(g)) / k for t, g in zip(best_i, got)]))


def build(settings: BuildSettings, add: bool = False) -> dict[str, Any]:
    """Build (or, with `add`, extend) the index in `settings.out`; returns what `build.json` holds."""
    from tqdm.auto import tqdm

    out = Path(settings.out)
    signature = model_signature(settings.model)
    check_model(out, signature, settings.model)
    store = ShardStore(out / "shards")
    previous = read_build(out)
    if add and previous is None:
        raise IndexBuildError(f"{out} holds no index to add to; build one first")
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    kept: list[int] = list(previous["shards"]) if add and previous else []
    known: set[bytes] = set()
    for shard in kept:  # the items already in the index, so that `add` never plans one twice
        known.update(key_digest(item_key(p.get("text"), p.get("image"))) for p in store.read_plan(shard))
    first = max(kept) + 1 if kept else 0
    plan = _plan(read_specs(list(settings.corpus), known), store, first, settings.shard_size)
    shards = kept + [s for s, _ in plan.shards]
    for stale in set(store.existing()) - set(shards):  # left by an earlier, different build
        store.remove(stale)
    times["plan_s"] = time.perf_counter() - t0
    todo = [(s, d) for s, d in plan.shards if not store.is_done(s, d, signature)]
    logger.info("%d items in %d new shards (%d already encoded), %d skipped while reading", plan.n_items,
                len(plan.shards), len(plan.shards) - len(todo), plan.n_skipped)
    t1 = time.perf_counter()
    if todo:
        with tqdm(total=len(todo), desc="encoding shards", unit="shard") as progress:
            if settings.workers > 1 or settings.ray_address:
                _encode_on_ray(settings, store, todo, signature, progress)
            else:
                _encode_here(settings, store, todo, signature, progress)
    times["encode_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    new = {s for s, _ in plan.shards}
    assembled = _assemble(settings, store, shards, new)
    times["assemble_s"] = time.perf_counter() - t2
    if previous and previous.get("factory") != assembled["factory"]:
        logger.warning("the index is now %s (it was %s): --factory %s chose it for %d vectors", assembled["factory"],
                       previous.get("factory"), settings.factory, assembled["count"])
    skipped = ((previous or {}).get("skipped", []) if add else []) + plan.skipped + [
        item for items in assembled["encode_skipped"].values() for item in items]
    report = {
        "model": settings.model, "signature": signature, "count": assembled["count"], "dim": assembled["dim"],
        "factory": assembled["factory"], "recall_at_10": assembled["recall_at_10"], "shards": shards,
        "n_skipped": len(skipped) + max(plan.n_skipped - len(plan.skipped), 0), "skipped": skipped[:MAX_LISTED_SKIPS],
        "new_items": plan.n_items - sum(len(items) for items in assembled["encode_skipped"].values()),
        "encoded_shards": len(todo), "times_s": {k: round(v, 3) for k, v in times.items()},
        "settings": asdict(settings), "corpus_history": ((previous or {}).get("corpus_history", []) if add else [])
        + [list(settings.corpus)],
    }
    atomic_write_json(out / BUILD_FILE, report)
    return report


def load_built(folder: str | Path, signature: str | None) -> tuple[Any, dict[str, Any]]:
    """A built index and its build.json, for a model with `signature`; refused when another model built it."""
    from msolomon.index.vector import VectorIndex

    folder = Path(folder)
    built = read_build(folder)
    if built is None or not (folder / INDEX_DIR).is_dir():
        raise IndexBuildError(f"{folder} is not a built index (no build.json and index/): build it with "
                              "python -m msolomon.index build")
    if built.get("signature") != signature:
        raise IndexBuildError(f"{folder} was built by the model {built.get('model')!r} (signature "
                              f"{built.get('signature')}), not by the loaded model (signature {signature}); serve it "
                              "with that model, or build it again with this one")
    return VectorIndex.load(folder / INDEX_DIR), built
