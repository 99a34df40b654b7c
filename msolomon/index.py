"""`VectorIndex`: faiss inner-product search over normalised embeddings, with ids and payloads beside it.

On disk (a folder; no pickle anywhere):
    meta.json       {"format": "msolomon-vector-index", "version": 1, "dim": d, "factory": "...", "count": n,
                     "metric": "inner_product"}
    index.faiss     the faiss index (faiss.write_index)
    payloads.jsonl  one line per vector, in index order: {"id": ..., "payload": {...}}
Exact search (`"Flat"`) is the default; any faiss factory string (e.g. `"IVF256,Flat"`, `"HNSW32"`) serves
large corpora.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

FORMAT = "msolomon-vector-index"
VERSION = 1


@dataclass
class Hit:
    """One search result."""

    rank: int
    id: Any
    score: float
    payload: Any


def _as_matrix(vectors, dim: int | None = None, what: str = "vectors") -> np.ndarray:
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (n, d), got shape {arr.shape}")
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
        """Build from an (n, d) array; IVF-type factories are trained on the vectors themselves."""
        import faiss

        arr = _as_matrix(vectors)
        try:
            index = faiss.index_factory(arr.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            raise ValueError(f"bad faiss factory string {factory!r}: {str(err).splitlines()[0]}") from None
        if not index.is_trained:
            try:
                index.train(arr)
            except RuntimeError as err:
                raise ValueError(f"cannot train faiss index {factory!r} on {arr.shape[0]} vectors (IVF needs at "
                                 f"least as many vectors as lists): {str(err).splitlines()[0]}") from None
        self = cls(index, arr.shape[1], factory)
        self.set_search_params(nprobe=nprobe, ef_search=ef_search)
        self.add(arr, payloads, ids)
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
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
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
        """Write the folder described in the module docstring; each file is written then renamed."""
        import faiss

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "version": VERSION, "dim": self.dim, "factory": self.factory,
                "count": len(self), "metric": "inner_product"}
        tmp = path / "index.faiss.tmp"
        faiss.write_index(self.index, str(tmp))
        os.replace(tmp, path / "index.faiss")
        with open(path / "payloads.jsonl.tmp", "w", encoding="utf-8") as fh:
            for i, p in zip(self.ids, self.payloads):
                fh.write(json.dumps({"id": i, "payload": p}, ensure_ascii=False) + "\n")
        os.replace(path / "payloads.jsonl.tmp", path / "payloads.jsonl")
        (path / "meta.json.tmp").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        os.replace(path / "meta.json.tmp", path / "meta.json")

    @classmethod
    def load(cls, path: str | Path) -> "VectorIndex":
        import faiss

        path = Path(path)
        meta_file = path / "meta.json"
        if not meta_file.is_file():
            raise ValueError(f"{path} is not a saved VectorIndex: {meta_file.name} is missing")
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_file}: format is {meta.get('format')!r}, expected {FORMAT!r}")
        index = faiss.read_index(str(path / "index.faiss"))
        ids, payloads = [], []
        with open(path / "payloads.jsonl", encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                ids.append(row["id"])
                payloads.append(row["payload"])
        if index.ntotal != len(ids) or index.d != meta["dim"]:
            raise ValueError(f"{path}: index holds {index.ntotal} vectors of dim {index.d}, but the files list "
                             f"{len(ids)} payloads and dim {meta['dim']}")
        return cls(index, meta["dim"], meta.get("factory", "Flat"), ids, payloads)
