"""Where a collection's items come from: corpus specs read lazily, one item at a time, bad ones named.

A spec is
- a folder: its images (by extension, recursively) and its `.txt` files (one candidate per line), in sorted order;
- a `.txt` file (one candidate per line), or a `.jsonl` / `.parquet` file with `text` and/or `image` columns (image
  paths relative to the file);
- an MMEB dataset folder (a MiniMMEB folder with `minimmeb.json`, or any folder as `mmeb:DIR`): the candidates of
  its test sets.
Each item has a key (its text and the image's absolute path) that says whether two items are the same, so a
rerun, `add`, or two specs naming one file never hold it twice. What cannot become an item (an empty line, a
non-UTF-8 file, a line too long, a missing or oversized image file) is a `Skipped` with the path and the reason;
images that do not decode are found by the encoder, which skips them the same way.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_LINE_CHARS = 2000
MAX_IMAGE_BYTES = 64 * 2**20


class SourceError(ValueError):
    """A corpus spec that cannot be read at all (not found, unknown kind, a file without the needed columns)."""


def item_key(text: str | None, image: str | None) -> str:
    """What makes two items the same: their text and their image's absolute path."""
    return json.dumps([text, image])


def key_digest(key: str) -> bytes:
    """A 16-byte digest of an item's key: what the driver keeps per item to leave duplicates out, so its memory
    grows by about 80 bytes per item whatever the texts' and paths' lengths."""
    return hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()


@dataclass(frozen=True)
class CollectionItem:
    """One candidate: a text, an image (absolute path), or both."""

    text: str | None
    image: str | None
    source: str  # where it came from, for messages: "file.txt:12", "photos/a.png"

    @property
    def key(self) -> str:
        return item_key(self.text, self.image)

    def payload(self) -> dict:
        return {"text": self.text, "image": self.image, "source": self.source}


@dataclass(frozen=True)
class Skipped:
    """Something a spec held that is not an item: where it is and why."""

    path: str
    reason: str


Entry = CollectionItem | Skipped


def _image_item(path: Path, source: str, text: str | None = None) -> Entry:
    if not path.is_file():
        return Skipped(source, f"image not found: {path}")
    size = path.stat().st_size
    if size == 0:
        return Skipped(source, "empty image file")
    if size > MAX_IMAGE_BYTES:
        return Skipped(source, f"image file of {size / 2**20:.1f} MB; the limit is {MAX_IMAGE_BYTES // 2**20} MB")
    return CollectionItem(text, str(path.resolve()), source)


def _text_lines(path: Path) -> Iterator[Entry]:
    try:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                text = " ".join(line.split())
                where = f"{path}:{n}"
                if not text:
                    yield Skipped(where, "empty line")
                elif len(text) > MAX_LINE_CHARS:
                    yield Skipped(where, f"line of {len(text)} characters; the limit is {MAX_LINE_CHARS}")
                else:
                    yield CollectionItem(text, None, where)
    except UnicodeDecodeError as err:
        yield Skipped(str(path), f"not UTF-8 text ({err.reason} at byte {err.start}); lines after it not read")


def _walk(folder: Path) -> Iterator[Path]:
    """The files under `folder` in the order of `sorted(folder.rglob("*"))` (paths compare part by part), with one
    folder's listing in memory at a time, not every path of the collection; folders behind symbolic links are not
    entered."""
    with os.scandir(folder) as listing:
        entries = sorted(listing, key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path))
        elif entry.is_file():
            yield Path(entry.path)


def _folder(root: Path) -> Iterator[Entry]:
    for path in _walk(root):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            yield _image_item(path, str(path))
        elif path.suffix.lower() == ".txt":
            yield from _text_lines(path)


def _record(rec: object, base: Path, where: str) -> Entry:
    if not isinstance(rec, dict):
        return Skipped(where, "not an object with text and/or image")
    text, image = rec.get("text"), rec.get("image")
    if text is not None and not isinstance(text, str):
        return Skipped(where, f"text must be a string, got {type(text).__name__}")
    if image is not None and not isinstance(image, str):
        return Skipped(where, f"image must be a path, got {type(image).__name__}")
    text = " ".join(text.split()) if text else None
    if not text and not image:
        return Skipped(where, "neither text nor image")
    if text and len(text) > MAX_LINE_CHARS:
        return Skipped(where, f"text of {len(text)} characters; the limit is {MAX_LINE_CHARS}")
    if image:
        return _image_item((base / image) if not Path(image).is_absolute() else Path(image), where, text)
    return CollectionItem(text, None, where)


def _jsonl(path: Path) -> Iterator[Entry]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            where = f"{path}:{n}"
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                yield Skipped(where, "not JSON")
                continue
            yield _record(rec, path.parent, where)


def _parquet(path: Path, batch_rows: int = 4096) -> Iterator[Entry]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several kinds for a broken file
        raise SourceError(f"{path}: not a readable parquet file ({err})") from None
    names = set(file.schema_arrow.names)
    if not {"text", "image"} & names:
        raise SourceError(f"{path}: no text or image column (it has {', '.join(sorted(names))})")
    columns = [c for c in ("text", "image") if c in names]
    row = 0
    for batch in file.iter_batches(batch_size=batch_rows, columns=columns):  # lazily: one batch in memory
        for rec in batch.to_pylist():
            row += 1
            yield _record(rec, path.parent, f"{path}:row {row}")


def _mmeb(root: Path) -> Iterator[Entry]:
    from msolomon.evaluation import open_benchmark

    bench = open_benchmark(root)
    for name in bench.names:
        for row in bench.read(name, check_images=False):
            for cand in row.candidates:
                where = f"{name}:{row.index}"
                if cand.image is not None:
                    yield _image_item(Path(str(cand.image)), where, cand.text or None)
                elif cand.text:
                    yield CollectionItem(cand.text, None, where)


def read_spec(spec: str) -> Iterator[Entry]:
    """The entries of one corpus spec (module docstring), read lazily."""
    forced_mmeb = spec.startswith("mmeb:")
    path = Path(spec[5:] if forced_mmeb else spec).expanduser()
    if not path.exists():
        raise SourceError(f"corpus not found: {path}")
    if forced_mmeb or (path.is_dir() and (path / "minimmeb.json").is_file()):
        return _mmeb(path)
    if path.is_dir():
        return _folder(path)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return _text_lines(path)
    if suffix == ".jsonl":
        return _jsonl(path)
    if suffix == ".parquet":
        return _parquet(path)
    if suffix in IMAGE_SUFFIXES:
        return iter([_image_item(path, str(path))])
    raise SourceError(f"{path}: not a corpus (a folder, .txt, .jsonl, .parquet, an image, or mmeb:DIR)")


def read_specs(specs: list[str], seen: set[bytes] | None = None) -> Iterator[Entry]:
    """Every spec's entries in turn; an item whose key digest (`key_digest`) is in `seen` (items read before, or
    already indexed) is left out and every new one is added to it, so specs add up and `add` never reads an indexed
    item as new."""
    if not specs:
        raise SourceError("give at least one --corpus")
    for spec in specs:  # each is checked before anything is read
        read_spec(spec)
    seen = set() if seen is None else seen
    for spec in specs:
        for entry in read_spec(spec):
            if isinstance(entry, CollectionItem):
                digest = key_digest(entry.key)
                if digest in seen:
                    continue
                seen.add(digest)
            yield entry
