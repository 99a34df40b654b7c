"""What an evaluation measures and how, declared once: the API's `EvalSettings` and the command line's flags are the
same fields (`msolomon.settings.parse_settings`), validated once so a long run cannot fail late on a typo."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from msolomon.metrics import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from msolomon.model import AUGMENT_MODES
from msolomon.settings import option, split_list, threads_option

MODES = AUGMENT_MODES  # msolomon.model's
DEFAULT_THRESHOLDS = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_LATENCY_QUERIES = 100  # timed per dataset when queries are batched (1,500 on all 15 MiniMMEB sets)
TIE_RULE = "a query counts only when the positive (candidate 0) is the unique top score; ties count as wrong"
FLOOR_NOTES = {
    "chance": "expected Precision@1 of a random pick of a candidate: mean over queries of 100 / number of candidates",
    "floor_text_only": (
        "what a predictor that never looks at an image reaches. Rule 'majority-per-template': for each test query, "
        "predict the most frequent training positive text among the training rows whose query text (whitespace- "
        "and case-normalised: the template) equals the query's, else the most frequent training positive of the "
        "dataset (ties: first seen in training order); correct when it equals the query's positive (candidate 0) "
        "text, normalised the same way. Training rows are DIR/train/NAME/original.jsonl. Rule 'chance': where the "
        "positives are images, or the dataset has no train split (out-of-distribution sets, MMEB-eval as "
        "published), a text-only predictor cannot beat a random pick of a candidate, so the floor is the chance "
        "value. Reported as computed (it can be below chance); chance is reported separately."),
    "ci95": (f"95% percentile bootstrap interval of Precision@1 over the dataset's queries ({BOOTSTRAP_RESAMPLES} "
             f"resamples, seed {BOOTSTRAP_SEED} with the dataset's name); overall_ci95, ind_ci95, ood_ci95 and "
             "by_meta_task_ci95 resample queries within each dataset, then macro-average"),
    "augmented_bits": "per-query decisions in row order ('1' the query took /augment), for the decisions block",
    "correct_bits": "per-query correctness in row order ('1' correct), for paired intervals between runs "
                    "(msolomon.metrics.paired_gain_ci)",
}


def default_model_path() -> Path:
    """The shipped default model, resolved relative to the repository (assets/model)."""
    return Path(__file__).resolve().parents[2] / "assets" / "model"


class EvaluationError(ValueError):
    """A bad argument or an inconsistent resume state; the message names the problem (the CLI exits with 2)."""


class StaleResultsError(EvaluationError):
    """The resume folder holds results of another model, data or settings: they are never reused silently."""


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass
class EvalSettings:
    """What to evaluate and how (every field but the last two is also a flag of `python -m msolomon.evaluation`)."""

    modes: tuple[str, ...] = option(MODES, "subset of auto,never,always to evaluate")
    split: str = option("test", "MiniMMEB split to evaluate: test, or val, the validation split the pilot and any "
                                "choice of threshold or checkpoint must use", choices=("test", "val"))
    datasets: tuple[str, ...] | None = option(None, "dataset names (default: all)")
    limit: int | None = option(None, "at most N queries per dataset (default: all)", metavar="N")
    image_root: str | None = option(None, "folder image paths resolve against (default: --data)")
    allow_images_outside_root: bool = option(
        False, "let image paths of the data resolve outside --image-root (absolute paths, '..'); only for data you "
               "trust (default: refused)")
    meta_task: tuple[str, ...] | None = option(
        None, "meta-task of a dataset (classification, vqa, retrieval, grounding or custom); one flag per dataset "
              "(default: MMEB's table or minimmeb.json; other datasets: custom, with a warning)", metavar="NAME=TASK",
        repeat=True)
    threshold: float = option(0.5, "auto mode: augment when p_augment >= threshold")
    thresholds: tuple[float, ...] | None = option(
        None, "decision thresholds to sweep for auto mode, computed from the never/always runs (default: no sweep)")
    max_new_tokens: int = option(64, "cap on the generated augmentation")
    gate_margin: float | None = option(
        None, "auto mode as a cascade: a query the model would augment keeps its embedded result when that search "
              "over its own candidates is sure, top-1 margin at least this, msolomon.gate.MarginGate (default: no "
              "gate)", metavar="M")
    candidate_batch_size: int = option(32, "candidates encoded per batch")
    batch_size: int = option(1, "queries encoded per batch for accuracy; above 1, only --latency-queries queries per "
                                "dataset are timed, one at a time (default: 1, every query timed)")
    latency_queries: int | None = option(
        None, f"with --batch-size > 1: evenly spaced queries per dataset timed at batch size 1 (default: "
              f"{DEFAULT_LATENCY_QUERIES}; 0: none)", metavar="N")
    fresh: bool = option(False, "ignore and clear results of an earlier run (default: resume)")
    keep_parts: bool = option(True, "keep the resume folder FILE.parts/ after a finished run, so that a rerun "
                                    "skips finished work")
    top_k: int = option(5, "candidates listed per prediction", cli=False)
    show_progress_bar: bool | None = option(None, "None: tqdm decides (shown on a terminal)", cli=False)

    def __post_init__(self) -> None:
        if isinstance(self.modes, str):
            self.modes = tuple(split_list(self.modes))
        self.modes = tuple(dict.fromkeys(self.modes))
        if not self.modes:
            raise EvaluationError("no mode given: choose from auto, never, always")
        unknown = [m for m in self.modes if m not in MODES]
        if unknown:
            raise EvaluationError(f"unknown mode {', '.join(map(repr, unknown))}: choose from auto, never, always")
        if self.limit is not None and not _positive_int(self.limit):
            raise EvaluationError(f"--limit must be a positive integer, got {self.limit!r}")
        if self.thresholds is not None:
            try:
                self.thresholds = tuple(float(t) for t in self.thresholds)
            except (TypeError, ValueError):
                shown = ",".join(map(str, self.thresholds)) if isinstance(self.thresholds, (list, tuple)) \
                    else self.thresholds
                raise EvaluationError(f"--thresholds must be comma-separated numbers, got {shown!r}") from None
            if not self.thresholds or not all(math.isfinite(t) for t in self.thresholds):
                raise EvaluationError(f"--thresholds must be finite numbers, got {self.thresholds!r}")
        if self.gate_margin is not None:
            try:
                self.gate_margin = float(self.gate_margin)
            except (TypeError, ValueError):
                raise EvaluationError(f"--gate-margin must be a number >= 0, got {self.gate_margin!r}") from None
            if not self.gate_margin >= 0 or not math.isfinite(self.gate_margin):
                raise EvaluationError(f"--gate-margin must be a number >= 0, got {self.gate_margin!r}")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise EvaluationError(f"--threshold must be in [0, 1], got {self.threshold!r}")
        if not _positive_int(self.max_new_tokens):
            raise EvaluationError(f"--max-new-tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not (_positive_int(self.candidate_batch_size) and _positive_int(self.top_k)):
            raise EvaluationError("--candidate-batch-size and top_k must be positive integers")
        if not _positive_int(self.batch_size):
            raise EvaluationError(f"--batch-size must be a positive integer, got {self.batch_size!r}")
        if self.latency_queries is not None and (isinstance(self.latency_queries, bool)
                                                 or not isinstance(self.latency_queries, int)
                                                 or self.latency_queries < 0):
            raise EvaluationError(f"--latency-queries must be an integer >= 0, got {self.latency_queries!r}")
        if self.latency_queries is not None and self.batch_size == 1:
            raise EvaluationError("--latency-queries needs --batch-size > 1 (at batch size 1 every query is timed)")
        if self.datasets is not None:
            self.datasets = tuple(dict.fromkeys(split_list(self.datasets) or ()))
        if self.meta_task is not None:
            self.meta_task = tuple(split_list(self.meta_task) or ())

    @property
    def timed_per_dataset(self) -> int | None:
        """How many queries of a dataset are timed one at a time (None: all)."""
        if self.batch_size == 1:
            return None
        return DEFAULT_LATENCY_QUERIES if self.latency_queries is None else self.latency_queries

    @property
    def run_modes(self) -> tuple[str, ...]:
        """Modes to encode: the requested ones, plus never and always when a threshold sweep needs them."""
        extra = ("never", "always") if self.thresholds else ()
        return tuple(dict.fromkeys(self.modes + extra))


@dataclass
class EvalCommandSettings:
    """`python -m msolomon.evaluation`'s settings: the model, the data and the report beside `EvalSettings`."""

    data: str = option(help="a MiniMMEB folder, or any folder in MMEB-eval's layout (one sub-folder of parquet/jsonl "
                            "files per dataset)")
    out: str = option(help="report FILE.json (a folder: FOLDER/report.json); FILE.md, FILE.png and "
                           "FILE.predictions.jsonl go beside it")
    model: str = option(str(default_model_path()), "model folder (default: the shipped model, assets/model)")
    quiet: bool = option(False, "no progress bars, warnings only (default: progress shown)")
    verbose: bool = option(False, "debug logging, with transformers' loading bar and warnings (default: off)")
    threads: int | None = threads_option("torch and faiss")
    evaluation: EvalSettings = field(default_factory=lambda: EvalSettings(keep_parts=False))
