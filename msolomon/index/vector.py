"""`VectorIndex`: faiss inner-product search over normalised embeddings, with ids and payloads beside it.

On disk (a folder; no pickle anywhere):
    meta.json       {"format": "msolomon-vector-index", "version": 1, "dim": d, "factory": "...", "count": n,
                     "metric": "inner_product"}
    index.faiss     the faiss index (faiss.write_index)
    payloads.jsonl  one line per vector, in index order: {"id": ..., "payload": {...}}
Exact search (`"Flat"`) is the default; any faiss factory string (e.g. `"IVF256,Flat"`, `"HNSW32"`) serves
large corpora, and `factory="auto"` picks one by corpus size (`choose_index`, measured by `bench/index.py`).
"""
from __future__ import annotations

import json
import math
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from msolomon.files import default_file_mode, readable_dir, replace_dir
from msolomon.inputs import check_count

FORMAT = "msolomon-vector-index"
VERSION = 1
FILES = ("meta.json", "index.faiss", "payloads.jsonl")
MAX_META_BYTES = 1 << 20
# faiss's serialisation of a flat inner-product index: fourcc, d (int32), ntotal (int64), two unused int64,
# is_trained (1 byte), metric type (int32), then the vectors: their number of floats (uint64) and the floats
FLAT_FOURCC = b"IxFI"
FLAT_HEADER = struct.Struct("<4siqqq?iQ")


# `factory="auto"`: exact search up to FLAT_MAX vectors, HNSW up to HNSW_MAX, IVF-PQ beyond (bench/index.py,
# docs/performance.md, docs/indexing.md)
FLAT_MAX = 100_000
HNSW_MAX = 5_000_000
HNSW_EF_SEARCH = 128
IVF_NPROBE = 64
TRAIN_SAMPLE = 256 * 1024  # vectors an IVF / PQ index is trained on at most (faiss wants 30-256 per list)


@dataclass(frozen=True)
class IndexChoice:
    """A faiss factory string and its search settings, as `choose_index` picks them for a corpus size."""

    factory: str
    nprobe: int | None = None
    ef_search: int | None = None
    reason: str = ""


def ivf_lists(n: int) -> int:
    """IVF list count for n vectors: the power of two nearest √n (at least 1), faiss's usual rule of thumb."""
    n = max(int(n), 1)
    return max(1, 2 ** round(math.log2(max(math.sqrt(n), 1))))


def pq_subquantizers(dim: int) -> int:
    """PQ codes of dim / 4 bytes (rounded down, at least 1): 16x smaller than the float32 vectors."""
    return max(check_count(dim, "dim") // 4, 1)


def ivf_pq_nprobe(lists: int) -> int:
    """IVF-PQ's nprobe: a sixteenth of the lists (at least IVF_NPROBE), the share measured at 1M vectors
    (docs/perf/index_pq.json), so that recall does not fall as the lists grow with √n."""
    return min(max(IVF_NPROBE, lists // 16), lists)


def ivf_pq_factory(n: int, dim: int) -> str:
    """The IVF-PQ index `choose_index` builds for n vectors of dimension dim: an OPQ rotation (so that each PQ part
    carries a similar share of the variance; onto 4m dimensions when dim is not a multiple of 4, as PQ cuts the
    vector into m equal parts), √n lists, PQ codes of m = `pq_subquantizers(dim)` bytes."""
    m = pq_subquantizers(dim)
    rotation = f"OPQ{m}" if dim == 4 * m or dim < 4 else f"OPQ{m}_{4 * m}"
    return f"{rotation},IVF{ivf_lists(n)},PQ{m}x8"


def choose_index(n: int, dim: int | None = None) -> IndexChoice:
    """The index for a corpus of n vectors: exact (`Flat`) while a search of every vector stays fast, HNSW (the
    fastest at recall@10 ≥ 0.95, memory ≈ the vectors plus about 260 bytes each, slow to build) in the middle,
    and for the largest corpora IVF-PQ with an OPQ rotation (`OPQ{m},IVF{lists},PQ{m}x8`: codes of m = dim / 4
    bytes per vector, 1/16 of the vectors; recall@10 0.857 at 1M of the shipped model's embeddings,
    docs/performance.md). The PQ factory depends on the vectors' dimension `dim`."""
    n = check_count(n, "n", minimum=0)
    if n <= FLAT_MAX:
        return IndexChoice("Flat", reason=f"{n} vectors <= {FLAT_MAX}: exact search is fast enough")
    if n <= HNSW_MAX:
        return IndexChoice("HNSW32", ef_search=HNSW_EF_SEARCH,
                           reason=f"{FLAT_MAX} < {n} vectors <= {HNSW_MAX}: HNSW is the fastest at high recall")
    if dim is None:
        raise ValueError(f"{n} vectors call for an IVF-PQ index, whose codes depend on the dimension: give dim")
    lists, m = ivf_lists(n), pq_subquantizers(dim)
    return IndexChoice(ivf_pq_factory(n, dim), nprobe=ivf_pq_nprobe(lists),
                       reason=f"{n} vectors > {HNSW_MAX}: IVF-PQ holds {m} bytes per vector (the vectors would "
                              f"take {4 * dim})")


@dataclass
class Hit:
    """One search result."""

    rank: int
    id: Any
    score: float
    payload: Any


def _as_matrix(vectors, dim: int | None = None, what: str = "vectors") -> np.ndarray:
    try:
        arr = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be a numeric array (n, d): {err}") from None
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (n, d), got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{what} have dimension 0 (shape {arr.shape}): an index needs vectors of at least one "
                         "dimension")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{what} have dimension {arr.shape[1]}, the index has {dim}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return np.ascontiguousarray(arr)


class VectorIndex:
    """A faiss index (inner product) plus the ids and payloads (text, image path, ...) of its vectors."""

    def __init__(self, index, dim: int, factory: str = "Flat", ids: list | None = None,
                 payloads: list | None = None):
        self.index = index
        self.dim = dim
        self.factory = factory
        self.ids: list = list(ids or [])
        self.payloads: list = list(payloads or [])

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(cls, vectors, payloads: Sequence[Any] | None = None, factory: str = "Flat",
              ids: Sequence[Any] | None = None, nprobe: int | None = None, ef_search: int | None = None
              ) -> "VectorIndex":
        """Build from an (n, d) array; IVF-type factories are trained on the vectors.
        `factory="auto"` picks the index by corpus size (`choose_index`); explicit `nprobe`/`ef_search` win. IVF/PQ
        factories are trained on at most TRAIN_SAMPLE of the vectors (a seeded sample)."""
        arr = _as_matrix(vectors)
        if arr.shape[0] == 0:
            raise ValueError("no vectors to build an index from (got 0); encode at least one candidate first")
        train = arr
        if len(arr) > TRAIN_SAMPLE:
            train = arr[np.sort(np.random.default_rng(0).choice(len(arr), TRAIN_SAMPLE, replace=False))]
        self = cls.create(arr.shape[1], arr.shape[0], factory, train, nprobe, ef_search)
        self.add(arr, payloads, ids)
        return self

    @classmethod
    def create(cls, dim: int, n: int, factory: str = "Flat", train: np.ndarray | None = None,
               nprobe: int | None = None, ef_search: int | None = None) -> "VectorIndex":
        """An empty index for about `n` vectors of dimension `dim`, to be filled part by part with `add` (so a large
        collection is never held twice); IVF/PQ factories need `train`, a sample of the vectors."""
        import faiss

        if factory == "auto":
            choice = choose_index(n, int(dim))
            factory = choice.factory
            nprobe = choice.nprobe if nprobe is None else nprobe
            ef_search = choice.ef_search if ef_search is None else ef_search
        try:
            index = faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            raise ValueError(f"bad faiss factory string {factory!r}: {str(err).splitlines()[0]}") from None
        if not index.is_trained:
            if train is None:
                raise ValueError(f"the faiss index {factory!r} must be trained: give a sample of the vectors")
            try:
                index.train(_as_matrix(train, int(dim), "training vectors"))
            except RuntimeError as err:
                raise ValueError(f"cannot train faiss index {factory!r} on {len(train)} vectors (IVF needs at "
                                 "least as many vectors as lists; PQ and OPQ 2^bits, 256 for 8-bit codes): "
                                 f"{str(err).splitlines()[0]}") from None
        self = cls(index, int(dim), factory)
        self.set_search_params(nprobe=nprobe, ef_search=ef_search)
        return self

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Recall/speed knobs of approximate indexes (ignored by exact ones)."""
        import faiss

        space = faiss.ParameterSpace()
        if nprobe is not None and "IVF" in self.factory:
            space.set_index_parameter(self.index, "nprobe", int(nprobe))
        if ef_search is not None and "HNSW" in self.factory:
            space.set_index_parameter(self.index, "efSearch", int(ef_search))

    def add(self, vectors, payloads: Sequence[Any] | None = None, ids: Sequence[Any] | None = None) -> None:
        arr = _as_matrix(vectors, self.dim)
        n = arr.shape[0]
        if payloads is not None and len(payloads) != n:
            raise ValueError(f"got {n} vectors but {len(payloads)} payloads")
        if ids is not None and len(ids) != n:
            raise ValueError(f"got {n} vectors but {len(ids)} ids")
        start = len(self)
        self.index.add(arr)
        self.ids.extend(list(ids) if ids is not None else range(start, start + n))
        self.payloads.extend(list(payloads) if payloads is not None else [None] * n)

    def search_arrays(self, queries, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Raw faiss output: scores and positions, each (n_queries, k); position -1 marks no result."""
        k = check_count(k, "k")
        arr = _as_matrix(queries, self.dim, "queries")
        scores, positions = self.index.search(arr, min(k, max(len(self), 1)))
        return scores, positions

    def search(self, queries, k: int = 10):
        """Top-k hits, best first: a list of `Hit` for one query vector, a list of lists for a matrix."""
        single = np.asarray(queries).ndim == 1
        scores, positions = self.search_arrays(queries, k)
        out = [[Hit(rank, self.ids[p], float(s), self.payloads[p])
                for rank, (s, p) in enumerate(zip(srow, prow)) if p >= 0]
               for srow, prow in zip(scores, positions)]
        return out[0] if single else out

    def save(self, path: str | Path) -> None:
        """Write the folder described in the module docstring, all or nothing (see `write_index`)."""
        write_index(path, self.index, self.dim, self.factory, zip(self.ids, self.payloads))

    @classmethod
    def load(cls, path: str | Path) -> "VectorIndex":
        """Read a saved index. Every file must be a regular file; `meta.json` is checked first, and `index.faiss`
        against it (a flat index byte for byte, others by size) before faiss reads it."""
        import faiss

        path = readable_dir(path)  # a save killed between its two renames left only NAME.old: read that
        if not path.is_dir():
            raise ValueError(f"{path}: no such folder (a saved VectorIndex is a folder holding {', '.join(FILES)})")
        meta_file = path / "meta.json"
        if not meta_file.exists():
            raise ValueError(f"{path} is not a saved VectorIndex: {meta_file.name} is missing")
        _check_regular(meta_file)
        meta = _read_meta(meta_file)
        for name in FILES[1:]:
            _check_regular(path / name)
        dim, count, factory = meta["dim"], meta["count"], meta["factory"]
        index_file = path / "index.faiss"
        _check_index_file(index_file, dim, count, factory)
        try:
            index = faiss.read_index(str(index_file))
        except (RuntimeError, MemoryError) as err:
            raise ValueError(f"{index_file}: not a readable faiss index ({str(err).splitlines()[0][:200]})") from None
        if index.ntotal != count or index.d != dim:
            raise ValueError(f"{index_file}: holds {index.ntotal} vectors of dim {index.d}, but meta.json says "
                             f"{count} of dim {dim}")
        ids, payloads = _read_payloads(path / "payloads.jsonl", count)
        return cls(index, dim, factory, ids, payloads)


@dataclass
class FlatVectors:
    """An exact index not held in memory: its vectors as blocks read on demand (`blocks()` yields (m, dim) arrays
    whose rows add up to `count`). `write_index` writes it in faiss's own flat layout, block by block, so an exact
    index of any size is saved with one block in memory; `VectorIndex.load` reads it like any other."""

    dim: int
    count: int
    blocks: Callable[[], Iterable[np.ndarray]]

    @property
    def ntotal(self) -> int:
        return self.count

    def write(self, file: Path) -> None:
        written = 0
        with open(file, "wb") as fh:
            fh.write(FLAT_HEADER.pack(FLAT_FOURCC, self.dim, self.count, 1 << 20, 1 << 20, True, 0,
                                      self.dim * self.count))
            for block in self.blocks():
                arr = _as_matrix(block, self.dim)
                fh.write(arr.astype("<f4", copy=False).tobytes())
                written += len(arr)
        if written != self.count:
            raise ValueError(f"cannot save the index: {written} vectors written, {self.count} expected")


def write_index(path: str | Path, index: Any, dim: int, factory: str, rows: Iterable[tuple[Any, Any]]) -> None:
    """Save a faiss index (or `FlatVectors`) with its (id, payload) rows, one per vector in index order, as a
    VectorIndex folder. The rows are streamed to disk, so a collection whose payloads do not fit in memory saves
    from an iterator (`python -m msolomon.index` reads them shard by shard). All or nothing: the files are written
    to a new folder beside `path`, which then takes its place, so an existing index stays whole until the new one
    is complete. An existing folder that is not a saved VectorIndex is never replaced."""
    import faiss

    path = Path(path)
    _check_replaceable(path)
    count = int(index.ntotal)
    meta = {"format": FORMAT, "version": VERSION, "dim": int(dim), "factory": factory, "count": count,
            "metric": "inner_product"}

    def write(tmp: Path) -> None:
        n = 0
        with open(tmp / "payloads.jsonl", "w", encoding="utf-8") as fh:
            for n, (i, p) in enumerate(rows, 1):
                try:
                    line = json.dumps({"id": i, "payload": p}, ensure_ascii=False, allow_nan=False)
                except (TypeError, ValueError) as err:
                    raise ValueError(f"cannot save the index: payload {n - 1} (id {i!r}) is not JSON ({err})") from None
                fh.write(line + "\n")
        if n != count:
            raise ValueError(f"cannot save the index: {n} payload rows for {count} vectors")
        if isinstance(index, FlatVectors):
            index.write(tmp / "index.faiss")
        else:
            faiss.write_index(index, str(tmp / "index.faiss"))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        mode = default_file_mode()
        for name in FILES:
            os.chmod(tmp / name, mode)

    replace_dir(path, write)


def _check_replaceable(path: Path) -> None:
    """`save` may replace `path` only if it is absent, an empty folder, or a saved VectorIndex (nothing else)."""
    if not path.exists():
        return
    if not path.is_dir():
        raise ValueError(f"cannot save the index to {path}: it exists and is not a folder")
    entries = {p.name for p in path.iterdir()}
    if not entries:
        return
    if "meta.json" not in entries:
        raise ValueError(f"cannot save the index to {path}: the folder is not a saved VectorIndex (no meta.json); "
                         "not replacing it: choose another folder")
    temporary = {f"{name}.tmp" for name in FILES}  # left by an interrupted save of an older version
    extra = sorted(entries - set(FILES) - temporary)
    if extra:
        raise ValueError(f"cannot save the index to {path}: the folder also holds {', '.join(extra[:5])}, which a "
                         "save would delete; move them or choose another folder")


def _check_regular(file: Path) -> None:
    """A clear error unless `file` is a regular file (a FIFO or device would block or never end)."""
    try:
        st = file.stat()
    except FileNotFoundError:
        raise ValueError(f"{file}: missing (a saved VectorIndex holds {', '.join(FILES)})") from None
    except OSError as err:
        raise ValueError(f"{file}: cannot read ({err.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode) else "not a file"
        raise ValueError(f"{file}: is {kind}, not a regular file; refusing to read it")


def _read_meta(meta_file: Path) -> dict:
    size = meta_file.stat().st_size
    if size > MAX_META_BYTES:
        raise ValueError(f"{meta_file}: {size} bytes, too large for index metadata (at most {MAX_META_BYTES})")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{meta_file}: not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_file}: must be a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_file}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version > VERSION:
        raise ValueError(f"{meta_file}: version {version!r} is not one this library reads (at most {VERSION})")
    for key, minimum in (("dim", 1), ("count", 0)):
        value = meta.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{meta_file}: {key!r} must be an integer >= {minimum}, got {value!r}")
    meta.setdefault("factory", "Flat")
    if not isinstance(meta["factory"], str):
        raise ValueError(f"{meta_file}: 'factory' must be a string, got {meta['factory']!r}")
    return meta


def _check_index_file(file: Path, dim: int, count: int, factory: str) -> None:
    """Check `index.faiss` against meta.json before faiss reads it, so a crafted header cannot make faiss
    allocate memory the file does not hold: a flat index header by header and to the byte, others by size."""
    size = file.stat().st_size
    codes = 4 * dim * count
    if factory == "Flat":
        expected = FLAT_HEADER.size + codes
        if size != expected:
            raise ValueError(f"{file}: {size} bytes, but a flat index of {count} vectors of dim {dim} (meta.json) "
                             f"takes {expected}")
        with open(file, "rb") as fh:
            fourcc, d, ntotal, _, _, _, metric, floats = FLAT_HEADER.unpack(fh.read(FLAT_HEADER.size))
        if fourcc != FLAT_FOURCC or (d, ntotal, metric, floats) != (dim, count, 0, dim * count):
            raise ValueError(f"{file}: header does not match meta.json (fourcc {fourcc!r}, dim {d}, {ntotal} "
                             f"vectors, metric {metric}, {floats} floats; expected {FLAT_FOURCC!r}, dim {dim}, "
                             f"{count} vectors, inner product, {dim * count})")
        return
    # approximate indexes: raw vectors or codes, ids, graph links and coarse centroids stay well under this
    lists = max((int(n) for n in re.findall(r"(\d+)", factory)), default=0)
    bound = (1 << 20) + count * (4 * dim + 4096) + lists * 4 * dim + 4 * dim * dim + 4 * 256 * dim  # + OPQ, PQ
    if size > bound or size < 16:
        raise ValueError(f"{file}: {size} bytes is implausible for a {factory!r} index of {count} vectors of dim "
                         f"{dim} (meta.json)")


def _read_payloads(file: Path, count: int) -> tuple[list, list]:
    ids, payloads = [], []
    with open(file, "rb") as fh:
        for line_no, raw in enumerate(fh, 1):
            if len(ids) >= count:
                raise ValueError(f"{file}: line {line_no}: more lines than the {count} vectors of meta.json")
            try:
                line = raw.decode("utf-8")
                row = json.loads(line)
            except UnicodeDecodeError:
                raise ValueError(f"{file}: line {line_no}: not UTF-8 text") from None
            except json.JSONDecodeError as err:
                raise ValueError(f"{file}: line {line_no}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict) or "id" not in row or "payload" not in row:
                raise ValueError(f"{file}: line {line_no}: expected an object with 'id' and 'payload', got "
                                 f"{line.strip()[:80]!r}")
            ids.append(row["id"])
            payloads.append(row["payload"])
    if len(ids) != count:
        raise ValueError(f"{file}: {len(ids)} lines, but meta.json lists {count} vectors")
    return ids, payloads
