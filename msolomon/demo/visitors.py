"""Visitors' own corpora: private to the browser that made them, kept on disk across restarts, and bounded.

A visitor is known by a random key kept in their browser (`gr.BrowserState`); the server only ever stores a hash of
it (`visitor_id`), so the folders on disk do not hold the key that opens them. Layout under the cache folder:

    corpora/<visitor id>/<corpus slug>/corpus.json   name, note, created and last-used times (written last)
    corpora/<visitor id>/<corpus slug>/index/        the `VectorIndex` (payloads hold the image paths)
    uploads/<visitor id>/<sha256>.<ext>              the visitor's images, once per content

A corpus folder without a readable `corpus.json` was cut while being written: it is skipped with a log line and
removed by the next `prune`. `prune` removes corpora unused for longer than the retention, then the least recently
used ones until the cache's visitor data fit the size budget; uploads no corpus uses go with them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from msolomon.files import atomic_write_text
from msolomon.index import VectorIndex

logger = logging.getLogger(__name__)

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
META = "corpus.json"


class VisitorError(ValueError):
    """A visitor request the store refuses (a malformed key, a cap reached); the message says what to do."""


def new_key() -> str:
    """A fresh visitor key for a browser that has none (128 random bits)."""
    return secrets.token_urlsafe(16)


def visitor_id(key: str | None) -> str:
    """The on-disk name of a visitor: a hash of their key. A missing or malformed key is refused."""
    if not isinstance(key, str) or not KEY_PATTERN.match(key):
        raise VisitorError("this browser has no valid visitor key; reload the page to get one")
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def slug(name: str) -> str:
    """A folder name for a corpus name (the name itself stays in corpus.json)."""
    return hashlib.sha256(name.encode()).hexdigest()[:16]


@dataclass
class StoredCorpus:
    """One visitor corpus as stored: its name, note, payloads' index and when it was last used."""

    name: str
    note: str
    index: VectorIndex
    created: float
    used: float


def _folder_size(path: Path) -> int:
    """Bytes under `path`. Other requests save and rename corpus folders meanwhile, so a file or folder that goes
    away during the walk counts as nothing (os.walk skips a folder it can no longer list)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


class CorpusStore:
    """Visitors' corpora on disk, with per-visitor caps checked atomically (a slot is reserved before the work)."""

    def __init__(self, cache_dir: Path, max_per_visitor: int, keep_days: float, budget_mb: float):
        self.root = Path(cache_dir) / "corpora"
        self.uploads = Path(cache_dir) / "uploads"
        self.max_per_visitor = max_per_visitor
        self.keep_days = keep_days
        self.budget_mb = budget_mb
        self._lock = threading.Lock()
        self._reserved: dict[str, set[str]] = {}
        self._touched: dict[tuple[str, str], float] = {}  # last touch written, per (visitor, corpus)

    # ------------------------------------------------------------------ paths
    def visitor_dir(self, vid: str) -> Path:
        return self.root / vid

    def upload_dir(self, vid: str) -> Path:
        return self.uploads / vid

    def corpus_dir(self, vid: str, name: str) -> Path:
        return self.visitor_dir(vid) / slug(name)

    # ------------------------------------------------------------------ reading
    def names(self, vid: str) -> list[str]:
        """The visitor's complete corpora by name, from their small meta files (no index is read)."""
        folder = self.visitor_dir(vid)
        metas = [self._meta(sub) for sub in sorted(folder.iterdir())] if folder.is_dir() else []
        return [m["name"] for m in metas if m is not None]

    def _meta(self, sub: Path) -> dict | None:
        """A corpus folder's corpus.json when the folder is complete (its index written), else None."""
        if ".tmp-" in sub.name or ".old-" in sub.name or not (sub / "index" / "meta.json").is_file():
            return None
        try:
            meta = json.loads((sub / META).read_text(encoding="utf-8"))
            return meta if isinstance(meta.get("name"), str) and "created" in meta else None
        except (OSError, ValueError, AttributeError):
            return None

    def load_all(self, vid: str) -> dict[str, StoredCorpus]:
        """The visitor's complete corpora, oldest first; half-written ones are skipped with a log line."""
        out: list[StoredCorpus] = []
        folder = self.visitor_dir(vid)
        for sub in sorted(folder.iterdir()) if folder.is_dir() else []:
            if ".tmp-" in sub.name or ".old-" in sub.name:  # being written or replaced by another request now
                continue
            stored = self._read(sub)
            if stored is not None:
                out.append(stored)
        return {c.name: c for c in sorted(out, key=lambda c: c.created)}

    def _read(self, sub: Path) -> StoredCorpus | None:
        try:
            meta = json.loads((sub / META).read_text(encoding="utf-8"))
            index = VectorIndex.load(sub / "index")
            return StoredCorpus(str(meta["name"]), str(meta.get("note", "")), index, float(meta["created"]),
                                float(meta.get("used", meta["created"])))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
            logger.warning("skipping the incomplete corpus folder %s (%s); the next prune removes it", sub.name,
                           type(err).__name__)
            return None

    # ------------------------------------------------------------------ writing
    @contextmanager
    def reserve(self, vid: str, name: str) -> Iterator[None]:
        """Hold one of the visitor's corpus slots for `name` while it is built; refused when the visitor already
        has `max_per_visitor` corpora (built or being built) and `name` is not one of them."""
        with self._lock:
            held = self._reserved.setdefault(vid, set())
            existing = set(self.names(vid))
            if name not in existing and name not in held and len(existing | held) >= self.max_per_visitor:
                raise VisitorError(f"you have {len(existing | held)} corpora, the most one visitor keeps; delete "
                                   "one in the Corpora tab, or index under one of their names to replace it")
            if name in held:
                raise VisitorError(f"the corpus {name!r} is being indexed already; wait for it to finish")
            held.add(name)
        try:
            yield
        finally:
            with self._lock:
                held.discard(name)

    def save(self, vid: str, name: str, note: str, index: VectorIndex) -> StoredCorpus:
        """Write a corpus atomically: the index and then corpus.json in a temporary folder, renamed into place."""
        final = self.corpus_dir(vid, name)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(final.name + f".tmp-{secrets.token_hex(4)}")
        now = time.time()
        try:
            index.save(tmp / "index")
            atomic_write_text(tmp / META, json.dumps({"name": name, "note": note, "created": now, "used": now}))
            old = final.with_name(final.name + f".old-{secrets.token_hex(4)}")
            if final.exists():
                final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return StoredCorpus(name, note, index, now, now)

    TOUCH_EVERY_S = 3600.0  # retention counts in days: a search writes corpus.json at most once an hour

    def touch(self, vid: str, name: str) -> None:
        """Mark a corpus used now (retention counts from the last use); at most once an hour per corpus, so a
        search does not write to disk."""
        now = time.time()
        if now - self._touched.get((vid, name), 0.0) < self.TOUCH_EVERY_S:
            return
        self._touched[(vid, name)] = now
        meta_file = self.corpus_dir(vid, name) / META
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            meta["used"] = time.time()
            atomic_write_text(meta_file, json.dumps(meta))
        except (OSError, ValueError):
            pass

    def delete(self, vid: str, name: str) -> bool:
        folder = self.corpus_dir(vid, name)
        if not folder.is_dir():
            return False
        shutil.rmtree(folder, ignore_errors=True)
        self._drop_unused_uploads(vid)
        return True

    # ------------------------------------------------------------------ bounds
    def prune(self, now: float | None = None) -> list[str]:
        """Remove half-written corpus folders, corpora unused for longer than `keep_days`, then the least recently
        used until visitor data (corpora and uploads) fit `budget_mb`. Returns what was removed (folder names)."""
        now = time.time() if now is None else now
        removed: list[str] = []
        live: list[tuple[float, Path, str]] = []
        with self._lock:
            busy = {slug(n) for held in self._reserved.values() for n in held}
            for vdir in sorted(self.root.iterdir()) if self.root.is_dir() else []:
                for sub in sorted(vdir.iterdir()):
                    if sub.name in busy or sub.name.split(".tmp-")[0] in busy:
                        continue
                    meta = self._meta(sub)
                    used = float(meta.get("used", meta["created"])) if meta is not None else 0.0
                    if meta is None or now - used > self.keep_days * 86400:
                        shutil.rmtree(sub, ignore_errors=True)
                        removed.append(f"{vdir.name}/{sub.name}")
                    else:
                        live.append((used, sub, vdir.name))
            budget = self.budget_mb * 2**20
            total = sum(_folder_size(p) for p in (self.root, self.uploads) if p.is_dir())
            for _, sub, vid in sorted(live):
                if total <= budget:
                    break
                before = total
                shutil.rmtree(sub, ignore_errors=True)
                self._drop_unused_uploads(vid)
                total = sum(_folder_size(p) for p in (self.root, self.uploads) if p.is_dir())
                removed.append(f"{vid}/{sub.name}")
                logger.info("cache over its budget: removed the least recently used corpus %s/%s (%.1f MB)", vid,
                            sub.name, (before - total) / 2**20)
            for vdir in sorted(self.uploads.iterdir()) if self.uploads.is_dir() else []:
                self._drop_unused_uploads(vdir.name)
        if removed:
            logger.info("pruned %d visitor corpora", len(removed))
        return removed

    def _drop_unused_uploads(self, vid: str) -> None:
        """Delete the visitor's uploaded images that none of their corpora lists (not while one is being built:
        its images are on disk before its corpus is)."""
        folder = self.upload_dir(vid)
        if not folder.is_dir() or self._reserved.get(vid):
            return
        used: set[str] = set()
        for sub in self.visitor_dir(vid).iterdir() if self.visitor_dir(vid).is_dir() else []:
            payloads = sub / "index" / "payloads.jsonl"
            if payloads.is_file():
                used |= {Path(json.loads(line)["payload"].get("image") or "").name
                         for line in payloads.read_text(encoding="utf-8").splitlines() if line.strip()}
        for path in folder.iterdir():
            if path.name not in used:
                path.unlink(missing_ok=True)
