"""Files and folders, written so that a kill at any moment leaves the old version or the new one, never neither.

One module for every write in the project (checkpoints, `MSolomon.save_pretrained`, `VectorIndex.save`, reports,
MiniMMEB, synthesis output, pretraining data) and for the tolerant reads that go with them:

    atomic_write_text(path, text)        # temp file in the same folder, fsync, rename over `path`
    atomic_write_json(path, obj)
    with atomic_file(path, "wb") as fh:  # stream into the temp file; renamed over `path` only on success
        ...
    replace_dir(path, write)             # write(staging) fills a sibling folder, which then takes `path`'s place
    recover_dir(path)                    # after a kill between replace_dir's two renames: put the old one back
    read_json(path, default)             # a missing or unreadable file gives `default`
    read_jsonl(path)                     # records; a torn last line (a killed append) is skipped

New files get the permissions `open()` would give them under the umask (`default_file_mode`), not mkstemp's 0600.

The folder swap: `write` fills `NAME.tmp`; then `NAME` is renamed to `NAME.old`, `NAME.tmp` to `NAME`, and `NAME.old`
is removed. A kill while writing leaves `NAME` whole; a kill between the two renames leaves `NAME.old` and no
`NAME`, which `recover_dir` (called by every reader and by the next `replace_dir`) renames back.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

logger = logging.getLogger(__name__)

STAGING = ".tmp"
PREVIOUS = ".old"


def default_file_mode() -> int:
    """The permissions open() gives a new file under the current umask (mkstemp's files are 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """A handle on a temporary file beside `path`; on a clean exit it is flushed, synced and renamed over
    `path` (with `default_file_mode` permissions), on an exception removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to a temporary file in the same folder, then rename it over `path`."""
    with atomic_file(path, "w") as fh:
        fh.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_file(path, "wb") as fh:
        fh.write(data)


def atomic_write_json(path: str | Path, obj: Any, *, sort_keys: bool = False, default=None) -> None:
    """Indented JSON (NaN refused, so the file is valid JSON for every reader) written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False, sort_keys=sort_keys,
                                       default=default) + "\n")


def atomic_write_jsonl(path: str | Path, records) -> None:
    with atomic_file(path, "w") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def append_jsonl(path: str | Path, records) -> None:
    """Append records, one JSON line each, flushed and synced (a kill tears at most the last line, which
    `read_jsonl` skips)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_json(path: str | Path, default: Any = None) -> Any:
    """The parsed file, or `default` when it is missing, not a regular file, or not valid JSON."""
    path = Path(path)
    try:
        if not path.is_file():
            return default
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def read_jsonl(path: str | Path, *, strict: bool = False) -> list:
    """The records of a JSON-lines file (missing file: none). Blank lines are skipped, and so is a line that is
    not valid JSON (a torn last line from a killed writer); `strict` raises ValueError on one instead."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                if strict:
                    raise ValueError(f"{path}:{n}: not a JSON line") from None
                logger.warning("%s:%d: skipped a line that is not JSON (a torn write?)", path, n)
    return out


def sibling(path: str | Path, suffix: str) -> Path:
    path = Path(path)
    return path.with_name(path.name + suffix)


def recover_dir(path: str | Path, complete: Callable[[Path], bool] | None = None) -> bool:
    """Undo a kill between `replace_dir`'s two renames: if `path` is missing (or, with `complete`, incomplete)
    and `NAME.old` is there, put it back. Leftover staging is removed. True when something was recovered."""
    path = Path(path)
    old, staging = sibling(path, PREVIOUS), sibling(path, STAGING)
    recovered = False
    missing = not path.exists() or (complete is not None and not complete(path))
    if old.is_dir() and missing:
        if path.exists():
            shutil.rmtree(path)
        os.replace(old, path)
        logger.warning("recovered %s from %s (an interrupted replacement)", path, old.name)
        recovered = True
    elif old.is_dir() and path.exists():  # the new version was already in place: the old one is garbage
        shutil.rmtree(old, ignore_errors=True)
    if staging.exists():
        shutil.rmtree(staging, ignore_errors=True)
    return recovered


def readable_dir(path: str | Path) -> Path:
    """`path`, recovered first if an interrupted `replace_dir` left only `NAME.old`; where the folder cannot be
    written (read-only media), the old version is read in place."""
    path = Path(path)
    if path.exists() or not sibling(path, PREVIOUS).is_dir():
        return path
    try:
        recover_dir(path)
    except OSError:
        return sibling(path, PREVIOUS)
    return path


def replace_dir(path: str | Path, write: Callable[[Path], None], *, mode: int | None = None) -> Path:
    """Replace the folder `path` with one that `write(staging)` fills, all or nothing (see the module docstring).
    `mode`: the new folder's permissions (default: what mkdir gives under the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    staging = sibling(path, STAGING)
    staging.mkdir()
    try:
        write(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return install_dir(staging, path, mode=mode)


def install_dir(staging: str | Path, path: str | Path, *, mode: int | None = None) -> Path:
    """Move the complete folder `staging` into `path`'s place by the two renames of the module docstring (a kill
    between them is undone by `recover_dir`). `staging` must be on the same file system (beside `path`)."""
    staging, path = Path(staging), Path(path)
    try:
        os.chmod(staging, (0o777 & ~_umask()) if mode is None else mode)
        _fsync_dir(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = sibling(path, PREVIOUS)
    if path.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
        os.replace(staging, path)
        shutil.rmtree(old)
    else:
        os.replace(staging, path)
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def accumulate_timings(path: Path, timings: dict[str, float]) -> dict[str, float]:
    """Stage times summed over every invocation of a resumable pipeline on one folder (`path` holds the sums), so
    a resumed or re-shipped run still reports the time its stages really took; returns this run's keys and the total."""
    total = read_json(path, {}) or {}
    for key, value in timings.items():
        total[key] = round(total.get(key, 0.0) + value, 1)
    total["total_s"] = round(sum(v for k, v in total.items() if k != "total_s"), 1)
    atomic_write_json(path, total, sort_keys=True)
    return dict(sorted(total.items()))
