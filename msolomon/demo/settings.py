"""What the demo runs with: the model, the server, the caches and the limits on what visitors may send."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BASELINES = ROOT / "assets" / "baselines"


def default_cache_dir() -> Path:
    """Where generated data and cached indexes live: $MSOLOMON_CACHE, else ~/.cache/msolomon."""
    return Path(os.environ.get("MSOLOMON_CACHE") or Path.home() / ".cache" / "msolomon")


@dataclass
class Limits:
    """Caps on visitor input, each with a clear message when exceeded (a demo must not be a free GPU/CPU farm)."""

    max_corpus_items: int = 2000  # per custom corpus
    max_image_mb: float = 8.0  # per uploaded image
    max_text_file_mb: float = 1.0  # the one-candidate-per-line text file
    max_line_chars: int = 500
    max_query_chars: int = 2000
    max_upload: str = "10mb"  # gradio's own per-file cap, enforced before a handler runs
    max_top_k: int = 50
    max_custom_corpora: int = 20
    max_eval_queries: int = 50  # per dataset, for the evaluation run from the page


@dataclass
class DemoSettings:
    """Everything `python app.py` can change; tests build the demo with small values."""

    model: str | None = None  # None: the shipped default model (assets/model)
    adapter: str | None = None
    quantization: str | None = None
    host: str = "127.0.0.1"
    port: int = 7860
    threads: int = 1
    cache_dir: Path = field(default_factory=default_cache_dir)
    reports_dir: Path | None = None  # where the error explorer looks for *.predictions.jsonl
    baselines_dir: Path = DEFAULT_BASELINES  # noaug/ and alwaysaug/ when present
    corpus_seed: int = 0
    corpus_scale: str = "small"  # MiniMMEB scale of the default corpus: tiny | small | full
    sample_photos: bool = True
    max_new_tokens: int = 64
    max_batch: int = 16  # concurrent searches served by one encode_queries call
    batch_wait_ms: float = 4.0  # how long the first request waits for others to join its batch
    queue_size: int = 64  # pending searches beyond this get "busy, try again"
    n_examples_per_dataset: int = 1
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        self.cache_dir = Path(self.cache_dir)
        if self.reports_dir is not None:
            self.reports_dir = Path(self.reports_dir)
        self.baselines_dir = Path(self.baselines_dir)
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        if self.max_batch < 1 or self.queue_size < 1:
            raise ValueError("max_batch and queue_size must be at least 1")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise ValueError(f"batch_wait_ms must be between 0 and 1000, got {self.batch_wait_ms}")
