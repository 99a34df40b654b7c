"""A build's shards on disk: the plan of each (its items) and its encoded result, each written all or nothing.

    DIR/shards/s000012.plan.jsonl   the items of shard 12 (one payload per line), written by the driver
    DIR/shards/s000012/             its result, written by whichever worker encoded it:
        vectors.npy                 (n, d) float32, the items that encoded, in plan order
        items.jsonl                 their payloads
        skipped.jsonl               the plan's items that did not (an image that does not decode), with reasons
        meta.json                   {"digest": the plan's digest, "count": n, "sha256": of vectors.npy, "signature"}

A result counts only when its meta names the plan's digest and the model's signature and its vectors hash to
what meta says: a shard cut by a kill, left by another model, or damaged on disk is encoded again. Workers and the
driver share nothing but this folder (on a cluster: a shared file system).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from msolomon.files import atomic_write_jsonl, read_jsonl, replace_dir
from msolomon.index.sources import item_key

logger = logging.getLogger(__name__)


def items_digest(payloads: Sequence[dict]) -> str:
    h = hashlib.sha256()
    for p in payloads:
        h.update(item_key(p.get("text"), p.get("image")).encode())
        h.update(b"\n")
    return h.hexdigest()[:32]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ShardStore:
    """The shards folder of one build."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def plan_file(self, shard: int) -> Path:
        return self.root / f"s{shard:06d}.plan.jsonl"

    def result_dir(self, shard: int) -> Path:
        return self.root / f"s{shard:06d}"

    def write_plan(self, shard: int, payloads: Sequence[dict]) -> str:
        """Write (or keep, when unchanged) shard's plan; returns its digest."""
        digest = items_digest(payloads)
        path = self.plan_file(shard)
        if not (path.is_file() and items_digest(read_jsonl(path)) == digest):
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_jsonl(path, payloads)
        return digest

    def read_plan(self, shard: int) -> list[dict]:
        return read_jsonl(self.plan_file(shard), strict=True)

    def is_done(self, shard: int, digest: str, signature: str | None) -> bool:
        """Whether shard's result is complete, for this plan and this model, and undamaged."""
        folder = self.result_dir(shard)
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            if meta.get("digest") != digest or meta.get("signature") != signature:
                return False
            return _file_sha256(folder / "vectors.npy") == meta.get("sha256")
        except (OSError, ValueError):
            return False

    def write_result(self, shard: int, digest: str, signature: str | None, vectors: np.ndarray,
                     payloads: list[dict], skipped: list[dict]) -> None:
        def write(tmp: Path) -> None:
            np.save(tmp / "vectors.npy", np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
            atomic_write_jsonl(tmp / "items.jsonl", payloads)
            atomic_write_jsonl(tmp / "skipped.jsonl", skipped)
            meta = {"digest": digest, "count": len(payloads), "sha256": _file_sha256(tmp / "vectors.npy"),
                    "signature": signature}
            (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")

        replace_dir(self.result_dir(shard), write)

    def read_vectors(self, shard: int) -> np.ndarray:
        """A shard's vectors, memory-mapped (rows are read when used)."""
        return np.load(self.result_dir(shard) / "vectors.npy", mmap_mode="r", allow_pickle=False)

    def read_payloads(self, shard: int) -> list[dict]:
        """The payloads of a shard's encoded items, in the order of its vectors."""
        payloads = read_jsonl(self.result_dir(shard) / "items.jsonl", strict=True)
        count = len(self.read_vectors(shard))
        if len(payloads) != count:
            raise ValueError(f"shard {shard}: {count} vectors but {len(payloads)} payloads")
        return payloads

    def read_skipped(self, shard: int) -> list[dict]:
        return read_jsonl(self.result_dir(shard) / "skipped.jsonl", strict=True)

    def existing(self) -> list[int]:
        """Shard numbers that have a plan on disk."""
        if not self.root.is_dir():
            return []
        return sorted(int(p.name[1:7]) for p in self.root.glob("s*.plan.jsonl"))

    def remove(self, shard: int) -> None:
        import shutil

        self.plan_file(shard).unlink(missing_ok=True)
        shutil.rmtree(self.result_dir(shard), ignore_errors=True)


def encode_items(model: Any, payloads: Sequence[dict], batch_size: int = 32
                 ) -> tuple[np.ndarray, list[dict], list[dict]]:
    """Encode items (payloads with `text` and/or `image`) with a loaded model: (vectors, the payloads encoded, the
    ones skipped with their reasons). Each image is decoded once, here; one that does not decode is skipped, never
    stopping the rest. The one encoding path of `python -m msolomon.index` and of the demo's corpora."""
    from msolomon.inputs import Candidate
    from msolomon.processing import load_image

    candidates, kept, skipped = [], [], []
    for p in payloads:
        image = None
        if p.get("image"):
            try:
                image = load_image(p["image"])
            except ValueError as err:
                skipped.append({"path": p.get("source") or p["image"], "reason": str(err)})
                continue
        candidates.append(Candidate(text=p.get("text"), image=image))
        kept.append(p)
    if not candidates:
        return np.zeros((0, 0), dtype=np.float32), kept, skipped
    vectors = model.encode_candidates(candidates, batch_size=batch_size, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32), kept, skipped


def encode_shard(model: Any, store: ShardStore, shard: int, digest: str, signature: str | None,
                 batch_size: int = 32) -> dict[str, Any]:
    """Encode one planned shard with a loaded model and write its result; returns a small summary."""
    vectors, kept, skipped = encode_items(model, store.read_plan(shard), batch_size)
    store.write_result(shard, digest, signature, vectors, kept, skipped)
    return {"shard": shard, "count": len(kept), "skipped": len(skipped)}
