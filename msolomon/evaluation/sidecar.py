"""The resume sidecar: per-(dataset, mode) partial results next to the report, written atomically, so an interrupted
evaluation resumes where it stopped and never mixes results of other settings."""
from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from msolomon.evaluation.settings import EvaluationError, StaleResultsError
from msolomon.files import atomic_file
from msolomon.metrics import DatasetModeResult
from msolomon.report import append_jsonl, atomic_write_json, read_jsonl, write_jsonl

logger = logging.getLogger(__name__)

SIDECAR_VERSION = 1


def _safe_name(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    if safe != name:
        safe += "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return safe


class Sidecar:
    """Per-(dataset, mode) partial results next to the report, so reruns skip finished work.

    The manifest records the settings that change results (model, data, limit, threshold, max_new_tokens); a rerun
    with other settings refuses to mix results and asks for `--fresh`. The predictions file is kept in step with
    the stored parts: appended when a part finishes, rebuilt from the parts if an interrupted run left it out of step.
    """

    def __init__(self, folder: Path, predictions: Path, fingerprint: dict[str, Any]):
        self.folder = Path(folder)
        self.predictions = Path(predictions)
        self.fingerprint = fingerprint

    def prepare(self, resume: bool) -> None:
        manifest = self.folder / "manifest.json"
        if not resume:
            if self.folder.exists():
                if not manifest.exists() and any(self.folder.iterdir()):
                    raise EvaluationError(f"{self.folder} is not an evaluation sidecar (no manifest.json); "
                                          "not deleting it: choose another --out")
                shutil.rmtree(self.folder)
            self.predictions.unlink(missing_ok=True)
        elif manifest.exists():
            old = json.loads(manifest.read_text(encoding="utf-8"))
            if old != self.fingerprint:
                diff = sorted(k for k in set(old) | set(self.fingerprint) if old.get(k) != self.fingerprint.get(k))
                raise StaleResultsError(
                    f"{self.folder} holds results of a run with other settings ({', '.join(diff)}); "
                    "pass --fresh (resume=False) to start over, or write to another --out")
        elif self.folder.exists() and any(self.folder.iterdir()):
            raise EvaluationError(f"{self.folder} exists but has no manifest.json; remove it or pass --fresh")
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(manifest, self.fingerprint)
        self._reconcile_predictions()

    def _part(self, dataset: str, mode: str) -> Path:
        return self.folder / f"{_safe_name(dataset)}.{mode}.json"

    def _cands(self, dataset: str, signature: str) -> Path:
        return self.folder / f"{_safe_name(dataset)}.{signature}.candidates.npy"

    def load(self, dataset: str, mode: str, signature: str) -> DatasetModeResult | None:
        """A stored part, or None when there is none or it was made from other data files (then it is redone)."""
        p = self._part(dataset, mode)
        if not p.exists():
            return None
        try:
            r = DatasetModeResult.from_dict(json.loads(p.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError):
            logger.warning("ignoring unreadable sidecar part %s", p)
            return None
        if (r.dataset, r.mode) != (dataset, mode):
            return None
        if r.settings.get("data_signature") != signature:
            logger.warning("%s [%s]: data files changed since the stored result; evaluating again", dataset, mode)
            return None
        return r

    def save(self, result: DatasetModeResult) -> None:
        """Store the part first, then append its predictions (a crash in between is repaired by reconcile).
        A part that replaces a stale one has its old predictions dropped first."""
        part = self._part(result.dataset, result.mode)
        if part.exists():
            part.unlink()
            self._reconcile_predictions()
        atomic_write_json(part, result.to_dict())
        append_jsonl(self.predictions, result.predictions)

    def load_candidates(self, dataset: str, signature: str, n: int) -> np.ndarray | None:
        p = self._cands(dataset, signature)
        if not p.exists():
            return None
        try:
            v = np.load(p)
        except (OSError, ValueError):
            return None
        return v if v.ndim == 2 and v.shape[0] == n else None

    def save_candidates(self, dataset: str, signature: str, vecs: np.ndarray) -> None:
        p = self._cands(dataset, signature)
        with atomic_file(p, "wb") as f:
            np.save(f, vecs)

    def drop_candidates(self, dataset: str) -> None:
        for p in self.folder.glob(f"{_safe_name(dataset)}.*.candidates.npy"):
            p.unlink(missing_ok=True)

    def _all_parts(self) -> list[DatasetModeResult]:
        parts = []
        for p in sorted(self.folder.glob("*.json")):
            if p.name == "manifest.json":
                continue
            try:
                parts.append(DatasetModeResult.from_dict(json.loads(p.read_text(encoding="utf-8"))))
            except (json.JSONDecodeError, TypeError):
                logger.warning("ignoring unreadable sidecar part %s", p)
                p.unlink(missing_ok=True)
        return parts

    def _reconcile_predictions(self) -> None:
        parts = self._all_parts()
        expected = {(r.dataset, r.mode): r.n for r in parts}
        found: dict[tuple[str, str], int] = {}
        for rec in read_jsonl(self.predictions):
            key = (rec.get("dataset"), rec.get("mode"))
            found[key] = found.get(key, 0) + 1
        if found != expected:
            if found:
                logger.info("rebuilding %s from %d stored parts", self.predictions, len(parts))
            write_jsonl(self.predictions, (p for r in parts for p in r.predictions))


# --- the run -----------------------------------------------------------------------------------------------------

