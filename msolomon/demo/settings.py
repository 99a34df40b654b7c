"""What the demo runs with: the model, the server, the caches and the limits on what visitors may send."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from msolomon.runtime import check_threads, default_threads
from msolomon.settings import option, threads_option

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
    max_custom_corpora: int = 10  # per visitor (their browser's key)
    max_eval_queries: int = 50  # per dataset, for the evaluation run from the page


@dataclass
class DemoSettings:
    """Everything `python app.py` can change (its flags are these fields); tests build the demo with small values."""

    model: str | None = option(None, "a checkpoint folder the library loads (default: assets/model)")
    adapter: str | None = option(None, "a LoRA adapter folder on top of --model")
    quantization: str | None = option(None, "bitsandbytes quantization", choices=["8bit", "4bit"])
    host: str = option("127.0.0.1", "address to bind (default 127.0.0.1: this machine only)")
    port: int = option(7860, "port to serve on")
    threads: int | None = threads_option()  # None: msolomon.runtime.default_threads(), resolved here
    reports_dir: Path | None = option(None, "folder of evaluation outputs for the error explorer",
                                      flag="--reports")
    cache_dir: Path | None = option(None, "generated data and cached indexes (default: $MSOLOMON_CACHE, else "
                                          "~/.cache/msolomon)")
    baselines_dir: Path = option(DEFAULT_BASELINES, "folder with noaug/ and alwaysaug/ (default assets/baselines)",
                                 flag="--baselines")
    max_batch: int = option(16, "concurrent searches served by one model call (1: one at a time)")
    batch_wait_ms: float = option(4.0, "how long the first of concurrent searches waits for others to join its model "
                                       "call (default 4)")
    keep_corpora: float = option(30.0, "days a visitor's own corpus is kept after its last use (removed at start "
                                       "and after each new corpus)", metavar="DAYS")
    cache_budget_mb: float = option(2048.0, "disk budget for visitors' corpora and uploads: beyond it the least "
                                            "recently used corpora are removed first", metavar="MB")
    index: list[str] = option([], "a prebuilt index folder (python -m msolomon.index build) served as a corpus named "
                                  "after its folder (repeatable)", repeat=True, metavar="DIR")
    corpus_scale: str = option("small", "MiniMMEB scale of the default corpus", choices=["tiny", "small", "full"])
    corpus_seed: int = option(0, "seed of the default corpus", cli=False)
    sample_photos: bool = option(True, "the sample photos in the default corpus", cli=False)
    max_new_tokens: int = option(64, "cap on a search's augmentation", cli=False)
    queue_size: int = option(64, "pending searches beyond this get 'busy, try again'", cli=False)
    n_examples_per_dataset: int = option(1, "example queries per dataset", cli=False)
    warm_baselines: bool = option(True, "index the default corpus with the trained baselines in the background at "
                                        "start, so the first Compare does not wait", cli=False)
    what_if: bool = option(True, "after each page search, run the path not taken and show what it gives (one more "
                                 "model call per search, timed apart; --no-what-if under heavy load)")
    limits: Limits = field(default_factory=Limits, metadata={"cli": False})

    def __post_init__(self) -> None:
        self.cache_dir = Path(self.cache_dir) if self.cache_dir is not None else default_cache_dir()
        if self.reports_dir is not None:
            self.reports_dir = Path(self.reports_dir)
        self.baselines_dir = Path(self.baselines_dir)
        self.threads = default_threads() if self.threads is None else check_threads(self.threads)
        if self.max_batch < 1 or self.queue_size < 1:
            raise ValueError("max_batch and queue_size must be at least 1")
        if self.keep_corpora < 0 or self.cache_budget_mb < 0:
            raise ValueError("keep_corpora and cache_budget_mb must not be negative")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise ValueError(f"batch_wait_ms must be between 0 and 1000, got {self.batch_wait_ms}")
