"""Corpora the demo searches, and an on-disk cache of their indexes.

The default corpus is MiniMMEB's test candidates (generated once from a fixed seed into the cache folder) plus a
few sample photos from scikit-image; each MiniMMEB dataset's own candidates are also a corpus, the setting MMEB
scores in. Custom corpora come from uploaded images and a text file with one candidate per line.

Indexes are cached under `CACHE/indexes/<model key>-<content key>/`: the model key is the checkpoint's file
signature and the content key hashes every candidate's text and image bytes, so a restart never re-encodes and a
changed model or corpus never reuses stale vectors.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from msolomon.demo.settings import Limits
from msolomon.files import atomic_write_text
from msolomon.index import VectorIndex
from msolomon.inputs import Candidate
from msolomon.prompts import MMEB_IMAGE_PLACEHOLDER

logger = logging.getLogger(__name__)

ALL_MINIMMEB = "MiniMMEB test (all) + sample photos"
DATASET_PREFIX = "MiniMMEB: "
CUSTOM_PREFIX = "custom: "
INDEX_DATASET = "prebuilt index"  # the `datasets` tag of a corpus served with --index
SAMPLE_PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "horse", "coins", "moon", "page", "text",
                 "brick", "grass", "gravel", "clock", "hubble_deep_field", "immunohistochemistry")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")

Encode = Callable[[list[dict]], np.ndarray]  # payloads (text, image) in, one vector each out
Progress = Callable[[float, str], None]


class CorpusError(ValueError):
    """A corpus the demo refuses (too many items, a file too large, an unreadable image): the message says why."""


@dataclass
class Corpus:
    """A searchable set of candidates: payloads (text, image, datasets) in index order, and their index."""

    name: str
    payloads: list[dict]
    index: VectorIndex
    note: str = ""
    datasets: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.payloads)


def display_text(text: str | None) -> str | None:
    """A candidate's text as a person reads it: without MMEB's image placeholder."""
    if not text:
        return None
    shown = " ".join(text.replace(MMEB_IMAGE_PLACEHOLDER, " ").split())
    return shown or None


def payload(text: str | None, image: str | None, datasets: Sequence[str] = ()) -> dict:
    return {"text": text, "image": image, "datasets": list(datasets), "label": display_text(text)}


def candidate_of(p: dict) -> Candidate:
    return Candidate(text=p.get("text"), image=p.get("image"))


def payload_key(text: str | None, image: Any) -> str:
    """Identity of a candidate across datasets and example queries: its text and image path."""
    return json.dumps([text, str(image) if image is not None else None])


# --- keys ---------------------------------------------------------------------------------------------------------


def model_key(model: Any) -> str | None:
    """The checkpoint's file signature; for an in-memory model (e.g. `MSolomon.tiny`) a hash of its weights when
    they are small enough to hash quickly, else None (then indexes are not cached on disk)."""
    sig = getattr(model, "signature", None)
    if sig:
        return str(sig)
    try:
        import torch

        params = list(model.model.state_dict().items())
        if sum(t.numel() for _, t in params) > 50_000_000:
            return None
        h = hashlib.sha256()
        for name, t in params:
            h.update(name.encode())
            h.update(t.detach().to(torch.float32).cpu().numpy().tobytes())
        return "w" + h.hexdigest()[:15]
    except (AttributeError, TypeError, RuntimeError):
        return None


def content_key(payloads: Iterable[dict]) -> str:
    """A hash of every candidate's text and image bytes, in order."""
    h = hashlib.sha256()
    file_hashes: dict[str, str] = {}
    for p in payloads:
        h.update(json.dumps(p.get("text")).encode())
        img = p.get("image")
        if img:
            if img not in file_hashes:
                file_hashes[img] = hashlib.sha256(Path(img).read_bytes()).hexdigest()
            h.update(file_hashes[img].encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


# --- building and caching indexes ------------------------------------------------------------------------------------


class IndexCache:
    """Builds indexes in chunks (so searches can run between them) and keeps them on disk by (model, content)."""

    def __init__(self, folder: Path | None, chunk: int = 64):
        self.folder = Path(folder) if folder is not None else None
        self.chunk = chunk
        self._locks: dict[Path, list] = {}  # cache entry -> [its lock, requests holding or awaiting it]
        self._locks_lock = threading.Lock()

    @contextlib.contextmanager
    def _lock(self, where: Path | None) -> Iterator[None]:
        """One lock per cache entry: concurrent requests for the same content encode it once and never write the
        same folder at the same time (the second waits, then reads what the first saved). An entry's lock is
        forgotten when no request uses it, so a long-running demo keeps none for past uploads."""
        if where is None:
            yield
            return
        with self._locks_lock:
            entry = self._locks.setdefault(where, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._locks_lock:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._locks[where]

    def path(self, mkey: str | None, ckey: str) -> Path | None:
        return self.folder / f"{mkey}-{ckey}" if self.folder is not None and mkey else None

    def get(self, payloads: list[dict], encode: Encode, mkey: str | None,
            progress: Progress | None = None) -> tuple[VectorIndex, bool]:
        """The index of `payloads` and whether it came from the cache."""
        where = self.path(mkey, content_key(payloads))
        with self._lock(where):
            return self._get(payloads, encode, where, progress)

    def _get(self, payloads: list[dict], encode: Encode, where: Path | None,
             progress: Progress | None) -> tuple[VectorIndex, bool]:
        if where is not None and (where / "meta.json").is_file():
            try:
                index = VectorIndex.load(where)
                if len(index) == len(payloads):
                    index.payloads = list(payloads)  # the live paths (the cache folder may have moved)
                    return index, True
            except (ValueError, OSError, RuntimeError) as err:
                logger.warning("ignoring a broken cached index at %s: %s", where, err)
        vectors = []
        for start in range(0, len(payloads), self.chunk):
            vectors.append(encode(payloads[start:start + self.chunk]))
            if progress is not None:
                done = min(start + self.chunk, len(payloads))
                progress(done / len(payloads), f"encoded {done} / {len(payloads)} candidates")
        index = VectorIndex.build(np.concatenate(vectors, 0), payloads)
        if where is not None:
            try:
                index.save(where)
            except (OSError, ValueError, RuntimeError) as err:  # a cache is an optimisation: the index is complete
                logger.warning("could not cache the index at %s: %s", where, err)
        return index, False


def subset(index: VectorIndex, positions: Sequence[int]) -> VectorIndex:
    """A flat index over some rows of another (no re-encoding)."""
    vectors = index.index.reconstruct_n(0, len(index))[list(positions)]
    return VectorIndex.build(vectors, [index.payloads[i] for i in positions])


# --- the default corpus --------------------------------------------------------------------------------------------


def ensure_minimmeb(cache_dir: Path, seed: int, scale: str) -> Path:
    """The MiniMMEB folder of this seed and scale in the cache, generated on first use."""
    from msolomon.data.minimmeb import generate, is_minimmeb

    folder = Path(cache_dir) / f"minimmeb-{scale}-seed{seed}"
    if not is_minimmeb(folder):
        logger.info("generating MiniMMEB (seed %d, scale %s) into %s: once, at first start", seed, scale, folder)
        generate(folder, seed=seed, scale=scale, progress=False)
    return folder


def minimmeb_payloads(bench: Any, cache_file: Path | None = None) -> list[dict]:
    """Every distinct test candidate of a MiniMMEB benchmark, with the datasets it belongs to. Reading every
    candidate list takes seconds, so the result is kept in `cache_file`, stamped with the data files it came from."""
    stamp = {name: bench.signature(name) for name in bench.names}
    if cache_file is not None and cache_file.is_file():
        try:
            saved = json.loads(cache_file.read_text(encoding="utf-8"))
            if saved.get("stamp") == stamp and saved.get("folder") == str(bench.folder):
                return saved["payloads"]
        except (ValueError, KeyError, TypeError):
            logger.info("rebuilding the unreadable candidate list %s", cache_file)
    payloads = _benchmark_payloads(bench)
    if cache_file is not None:
        atomic_write_text(cache_file, json.dumps({"stamp": stamp, "folder": str(bench.folder), "payloads": payloads}))
    return payloads


def _benchmark_payloads(bench: Any) -> list[dict]:
    by_key: dict[str, dict] = {}
    for name in bench.names:
        for row in bench.read(name):
            for c in row.candidates:
                key = payload_key(c.text, c.image)
                p = by_key.get(key)
                if p is None:
                    p = by_key[key] = payload(c.text, str(c.image) if c.image is not None else None)
                if name not in p["datasets"]:
                    p["datasets"].append(name)
    return list(by_key.values())


def sample_photo_payloads(cache_dir: Path, size: int = 192) -> list[dict]:
    """scikit-image's sample photos, saved once as small PNGs (they ship inside the pip package)."""
    from PIL import Image
    from skimage import data

    folder = Path(cache_dir) / "sample-photos"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in SAMPLE_PHOTOS:
        path = folder / f"{name}.png"
        if not path.is_file():
            try:
                arr = getattr(data, name)()
            except (AttributeError, OSError, ValueError) as err:  # not every version ships every photo
                logger.info("sample photo %s unavailable: %s", name, err)
                continue
            img = Image.fromarray(arr if arr.dtype == np.uint8 else (255 * arr / max(arr.max(), 1)).astype(np.uint8))
            img.thumbnail((size, size))
            img.convert("RGB").save(path)
        out.append(payload(None, str(path), ["sample photos"]) | {"label": f"sample photo: {name.replace('_', ' ')}"})
    return out


# --- custom corpora ----------------------------------------------------------------------------------------------


def custom_payloads(images: Sequence[str] | None, text_file: str | None, store: Path, limits: Limits) -> list[dict]:
    """Validate uploaded images and a text file (one candidate per line) and copy the images into `store`.

    Raises `CorpusError` naming the first problem: too many items, an oversized file, an unreadable image."""
    from msolomon.processing import load_image

    images = [str(p) for p in (images or [])]
    lines: list[str] = []
    if text_file:
        size = Path(text_file).stat().st_size
        if size > limits.max_text_file_mb * 2**20:
            raise CorpusError(f"the text file is {size / 2**20:.1f} MB; the limit is {limits.max_text_file_mb:g} MB")
        raw = Path(text_file).read_bytes()
        try:
            content = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CorpusError("the text file is not UTF-8 text (one candidate per line)") from None
        for n, line in enumerate(content.splitlines(), 1):
            line = line.strip()
            if not line:
                continue
            if len(line) > limits.max_line_chars:
                raise CorpusError(f"line {n} of the text file has {len(line)} characters; the limit is "
                                  f"{limits.max_line_chars}")
            lines.append(line)
    total = len(images) + len(lines)
    if total == 0:
        raise CorpusError("nothing to index: upload images and/or a text file with one candidate per line")
    if total > limits.max_corpus_items:
        raise CorpusError(f"{total} items; a custom corpus holds at most {limits.max_corpus_items}")
    store.mkdir(parents=True, exist_ok=True)
    out = [payload(line, None, ["custom"]) for line in dict.fromkeys(lines)]
    seen: set[str] = set()
    for path in images:
        name = Path(path).name
        if Path(path).suffix.lower() not in IMAGE_SUFFIXES:
            raise CorpusError(f"{name}: not an image file (accepted: {', '.join(IMAGE_SUFFIXES)})")
        size = Path(path).stat().st_size
        if size > limits.max_image_mb * 2**20:
            raise CorpusError(f"{name} is {size / 2**20:.1f} MB; the limit per image is {limits.max_image_mb:g} MB")
        try:
            load_image(path)
        except ValueError as err:  # the message names the visitor's file, never where the server keeps it
            raise CorpusError(str(err).replace(str(path), name)) from None
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
        if digest in seen:  # the same picture uploaded twice (under any name) is one candidate
            continue
        seen.add(digest)
        target = store / f"{digest}{Path(path).suffix.lower()}"
        if not target.exists():
            shutil.copyfile(path, target)
        out.append(payload(None, str(target), ["custom"]) | {"label": name})
    return out
