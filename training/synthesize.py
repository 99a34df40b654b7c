"""Query augmentation synthesis: `python -m training.synthesize`.

A teacher MLLM reads each training query (the R1-style prompt of `msolomon.prompts`: think, then answer in tags)
and its answer becomes the query's augmentation. Results go to an append-only JSONL file keyed by query id, one
line per query, flushed and fsync'd as each result arrives:

    {"id", "dataset", "question", "augmentation", "status": "ok"|"no_answer"|"error", "reply", "backend", "error"}

A rerun resumes: `ok` and `no_answer` rows are done and skipped, `error` rows (failed after retries) are tried
again, and an unterminated last line (a crash mid-write) is cut off before appending. Replies without an
`<answer>` tag get status `no_answer` and `augmentation: null`: they are counted and reported, never used.
The run's counts per dataset are logged and written beside the output as `NAME.summary.json`.

    python -m training.synthesize --data MINIMMEB_DIR --out aug.jsonl --backend oracle
    python -m training.synthesize --data MMEB-train --image-root IMAGES --out aug.jsonl --backend openai \
        --base-url http://HOST:8000/v1 --api-model Qwen/Qwen2.5-VL-72B-Instruct --concurrency 64

Exit status: 0 done, 1 some queries ended in error (rerun to retry them), 2 bad arguments or data, 130 interrupted.
"""
from __future__ import annotations

import os

from msolomon.settings import option, parse_settings, process_environment

process_environment(set_threads=False)  # before transformers is imported (the teachers import it)

import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from msolomon import prompts  # noqa: E402
from msolomon.data import DataFormatError  # noqa: E402
from msolomon.files import atomic_write_text  # noqa: E402
from msolomon.settings import threads_option  # noqa: E402
from training.teachers import (  # noqa: E402
    BACKENDS,
    OpenAIBackend,
    OpenAISettings,
    OracleBackend,
    Teacher,
    TeacherError,
    TeacherItem,
    TeacherReply,
    TransformersBackend,
)

logger = logging.getLogger(__name__)

STATUSES = ("ok", "no_answer", "error")
DONE_STATUSES = ("ok", "no_answer")
ROW_FIELDS = ("id", "dataset", "question", "augmentation", "status", "reply", "backend", "error")
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
MAX_LOGGED_ERRORS = 5  # the first failures are logged as warnings, the rest at debug level (all are in the file)


class UsageError(ValueError):
    """Bad arguments or missing inputs: the command line exits with status 2 and this message."""


@dataclass
class SynthesisSettings:
    """Everything one synthesis run needs (the command line fills it; tests and `reproduce` build it directly)."""

    data: str = option(help="a MiniMMEB folder or an MMEB-train folder (one sub-folder per set)", metavar="DIR")
    out: str = option(help="output JSONL file (appended to; a rerun resumes)", metavar="FILE")
    backend: str = option("oracle", "the teacher", choices=BACKENDS)
    image_root: str | None = option(None, "folder the image paths resolve against (default: MiniMMEB's own, or "
                                    "--data)", metavar="DIR")
    datasets: list[str] | None = option(None, "dataset names (default: every training dataset in --data)")
    limit: int | None = option(None, "at most N queries per dataset (the first N)", metavar="N")
    model: str | None = option(None, "transformers: local Qwen2-VL / Qwen2.5-VL instruct checkpoint folder",
                               metavar="DIR")
    batch_size: int = option(4, "transformers: queries per generate call")
    max_new_tokens: int = option(512, "reply length cap (transformers and openai)")
    device: str | None = option(None, "transformers: e.g. cpu, cuda:0 (default: all GPUs if any, else cpu)")
    base_url: str = option("http://127.0.0.1:8000/v1", "openai: the OpenAI-compatible server (e.g. vLLM)")
    api_model: str | None = option(None, "openai: served model name (default: the one model GET /models lists)")
    api_key_env: str | None = option(None, f"openai: environment variable holding the API key (default: "
                                     f"{DEFAULT_API_KEY_ENV} if set, else none)")
    concurrency: int = option(8, "openai: requests in flight")
    timeout: float = option(120.0, "openai: seconds per request")
    retries: int = option(4, "openai: retries on timeouts, connection errors, 429 and 5xx")
    backoff: float = option(1.0, "openai: first retry delay in seconds (doubles, with jitter)")
    error_rate: float = option(0.1, "oracle: share of deliberately wrong answers")
    no_answer_rate: float = option(0.0, "oracle: share of replies without an answer tag")
    seed: int = option(0, "oracle: seed of its errors")
    delay: float = option(0.0, "oracle: seconds per item (lets tests kill a run part-way)", hidden=True)
    max_consecutive_errors: int = option(50, "stop after this many failed queries in a row, e.g. a server that is "
                                         "down (0: never)")
    progress: bool | None = option(None, "show a progress bar (default: when stderr is a terminal)")
    allow_images_outside_root: bool = option(False, "let image paths resolve outside the image root, and the openai "
                                             "teacher send them; only for data you trust")
    extra: dict[str, Any] = option({}, "backend-specific extras", cli=False)

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if not Path(self.data).is_dir():
            raise UsageError(f"--data {self.data}: folder not found")
        if self.image_root is not None and not Path(self.image_root).is_dir():
            raise UsageError(f"--image-root {self.image_root}: folder not found")
        if Path(self.out).is_dir():
            raise UsageError(f"--out {self.out} is a folder; give a .jsonl file path")
        checks = [
            (self.limit is None or self.limit >= 1, "--limit must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.max_new_tokens >= 1, "--max-new-tokens must be at least 1"),
            (self.concurrency >= 1, "--concurrency must be at least 1"),
            (self.timeout > 0, "--timeout must be positive"),
            (self.retries >= 0, "--retries must be 0 or more"),
            (self.backoff >= 0, "--backoff must be 0 or more"),
            (0.0 <= self.error_rate <= 1.0, "--error-rate must be between 0 and 1"),
            (0.0 <= self.no_answer_rate <= 1.0, "--no-answer-rate must be between 0 and 1"),
            (self.delay >= 0, "--delay must be 0 or more"),
            (self.max_consecutive_errors >= 0, "--max-consecutive-errors must be 0 or more"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        if self.datasets is not None and not self.datasets:
            raise UsageError("--datasets is empty")
        if self.backend == "transformers":
            if not self.model:
                raise UsageError("--backend transformers needs --model PATH (a local Qwen2-VL / Qwen2.5-VL checkpoint)")
            if not Path(self.model).is_dir():
                raise UsageError(f"--model {self.model}: checkpoint folder not found")
        if self.backend == "openai" and self.api_key_env and not os.environ.get(self.api_key_env):
            raise UsageError(f"--api-key-env {self.api_key_env}: that environment variable is not set")

    def public(self) -> dict[str, Any]:
        """The settings as recorded in the summary (never an API key: only the variable's name is kept)."""
        return asdict(self)


# ------------------------------------------------------------------------------------------------------------ data

def _is_minimmeb(path: Path) -> bool:
    try:
        from msolomon.data.minimmeb import is_minimmeb
    except ImportError:  # the generator module is optional for reading; its marker file is enough
        return (path / "minimmeb.json").is_file() and (path / "train").is_dir()
    return bool(is_minimmeb(path))


def resolve_data(settings: SynthesisSettings) -> tuple[Path, Path | None, bool]:
    """(folder of training datasets, image root, whether it is MiniMMEB) for `--data` / `--image-root`.

    A MiniMMEB folder keeps its training sets in DIR/train/NAME/ with image paths relative to DIR; an MMEB-train
    folder holds one sub-folder per dataset with image paths relative to `--image-root` (default: the folder).
    """
    data = Path(settings.data)
    mini = _is_minimmeb(data)
    folder = data / "train" if mini else data
    root = Path(settings.image_root) if settings.image_root else (data if mini else None)
    return folder, root, mini


def plan(settings: SynthesisSettings) -> list[TeacherItem]:
    """Every query the run covers, in dataset order (done or not); query ids must be unique across datasets."""
    from msolomon.data.mmeb import list_train_datasets, read_train_dataset

    folder, root, _ = resolve_data(settings)
    try:
        available = list_train_datasets(folder)
    except DataFormatError as err:
        raise UsageError(str(err)) from None
    if not available:
        raise UsageError(f"{folder}: no training datasets (sub-folders with .parquet or .jsonl files)")
    names = settings.datasets or available
    unknown = [n for n in names if n not in available]
    if unknown:
        raise UsageError(f"--datasets: {', '.join(unknown)} not in {folder} (available: {', '.join(available)})")
    items: list[TeacherItem] = []
    seen: dict[str, str] = {}
    for name in names:
        # images are checked per item by the teacher, so one missing file costs one row, not the run
        rows = read_train_dataset(folder, name, root, limit=settings.limit, check_images=False,
                                  allow_outside_root=settings.allow_images_outside_root)
        for row in rows:
            if row.id in seen:
                raise DataFormatError(f"query id {row.id!r} appears in both {seen[row.id]} and {name}: "
                                      "synthesis output is keyed by id, so ids must be unique")
            seen[row.id] = name
            q = row.query
            image = str(q.image) if q.image is not None else None
            items.append(TeacherItem(row.id, name, prompts.teacher_question(q.text, q.instruction), image))
        _check_image_root(name, [i.image for i in items if i.dataset == name and i.image][:20], root or folder)
    return items


def _check_image_root(name: str, images: list[str], root: Path) -> None:
    """Fail early when none of a dataset's first images exist: almost surely a wrong --image-root."""
    if images and not any(Path(p).is_file() for p in images):
        raise UsageError(f"{name}: none of the first {len(images)} query images exist (e.g. {images[0]}); "
                         f"images resolve against {root}: check --image-root")


# ------------------------------------------------------------------------------------------------------- the file

def summary_path(out: str | Path) -> Path:
    """Where the run summary goes: `aug.jsonl` -> `aug.summary.json`."""
    out = Path(out)
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(stem + ".summary.json")


def _parse_line(path: Path, line_no: int, line: bytes) -> dict:
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataFormatError(f"{path}: line {line_no}: not valid JSON ({err}); fix or delete that line") from None
    if not isinstance(row, dict) or not isinstance(row.get("id"), str) or row.get("status") not in STATUSES:
        raise DataFormatError(f"{path}: line {line_no}: not a synthesis row (needs a string 'id' and a 'status' "
                              f"in {STATUSES})")
    return row


def read_results(path: str | Path, repair: bool = False) -> dict[str, dict]:
    """The latest row per query id in a synthesis file ({} if there is none).

    An unterminated last line is what a crash mid-write leaves: it is ignored, and with `repair=True` cut off
    the file so that appending starts on a fresh line. Any other malformed line raises `DataFormatError`.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # everything after the last newline is an unfinished write
    if end < len(data):
        tail = data[end:]
        if repair:
            logger.warning("%s: dropping an unfinished last line (%d bytes, a crash mid-write); that query will "
                           "be synthesised again", path, len(tail))
            with open(path, "r+b") as fh:
                fh.truncate(end)
                fh.flush()
                os.fsync(fh.fileno())
        else:
            logger.warning("%s: ignoring an unfinished last line (%d bytes)", path, len(tail))
    rows: dict[str, dict] = {}
    for line_no, line in enumerate(data[:end].split(b"\n"), 1):
        if line.strip():
            row = _parse_line(path, line_no, line)
            rows[row["id"]] = row
    return rows


def load_augmentations(path: str | Path) -> dict[str, str]:
    """Query id -> augmentation for every query whose latest row has status `ok` (what the trainer uses).

    A teacher's answer is untrusted text: control-token strings in it (`<|im_end|>`, `/augment`, `<think>`, ...)
    are neutralised here, so they never become control tokens in a training target."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: augmentation file not found (run python -m training.synthesize first)")
    return {qid: prompts.neutralize(row["augmentation"], prompts.CONTROL_TOKENS)
            for qid, row in read_results(path).items()
            if row["status"] == "ok" and isinstance(row.get("augmentation"), str) and row["augmentation"].strip()}


class ResultWriter:
    """Appends one JSON line per result, flushed and fsync'd, holding an exclusive lock on the file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fh = open(path, "a", encoding="utf-8")
        try:
            import fcntl

            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not POSIX: no lock
            pass
        except OSError:
            self.fh.close()
            raise UsageError(f"{path} is being written by another synthesis run") from None

    def write(self, row: dict) -> None:
        self.fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


def result_row(reply: TeacherReply, backend: str) -> dict:
    """The output row for one teacher reply: the answer is extracted here, with the format module's parser."""
    item = reply.item
    if reply.error is not None or reply.reply is None:
        augmentation, status = None, "error"
    else:
        augmentation = prompts.extract_answer(reply.reply)
        status = "ok" if augmentation else "no_answer"
    return {"id": item.id, "dataset": item.dataset, "question": item.question, "augmentation": augmentation,
            "status": status, "reply": reply.reply, "backend": backend,
            "error": reply.error if status == "error" else None}


# -------------------------------------------------------------------------------------------------------- the run

def make_teacher(settings: SynthesisSettings) -> Teacher:
    """The backend the settings name (the slow part, loading a model, happens here)."""
    if settings.backend == "oracle":
        _, _, mini = resolve_data(settings)
        if not mini:
            raise UsageError(f"--backend oracle needs a MiniMMEB folder (python -m msolomon.data.minimmeb); "
                             f"{settings.data} is not one")
        return OracleBackend(settings.data, error_rate=settings.error_rate, no_answer_rate=settings.no_answer_rate,
                             seed=settings.seed, delay=settings.delay)
    if settings.backend == "transformers":
        return TransformersBackend(settings.model, batch_size=settings.batch_size,
                                   max_new_tokens=settings.max_new_tokens, device=settings.device)
    key_env = settings.api_key_env or DEFAULT_API_KEY_ENV
    folder, root, _ = resolve_data(settings)
    return OpenAIBackend(OpenAISettings(
        base_url=settings.base_url, model=settings.api_model, api_key=os.environ.get(key_env) or None,
        concurrency=settings.concurrency, timeout=settings.timeout, retries=settings.retries,
        backoff=settings.backoff, max_tokens=settings.max_new_tokens, image_root=str(root or folder),
        allow_images_outside_root=settings.allow_images_outside_root))


def _empty_counts() -> dict[str, int]:
    return {"total": 0, "skipped": 0, "done": 0, "ok": 0, "no_answer": 0, "error": 0}


def _progress_bar(total: int, backend: str, show: bool | None):
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if show is None else not show
    return tqdm(total=total, desc=f"synthesis ({backend})", unit="query", disable=disable, dynamic_ncols=True)


def synthesize(settings: SynthesisSettings, teacher: Teacher | None = None) -> dict[str, Any]:
    """Run (or resume) synthesis and return the summary, which is also logged and written beside the output.

    Summary: per dataset and in total, `total` queries, `skipped` (done by an earlier run), `done` (this run),
    and this run's `ok` / `no_answer` / `error`; `file` counts the latest status of every covered query.
    """
    settings.validate()
    items = plan(settings)
    out = Path(settings.out)
    writer = ResultWriter(out)  # lock first, then read: no other run can append in between
    started = time.monotonic()
    own_teacher = teacher is None
    counts: dict[str, dict[str, int]] = {}
    interrupted = False
    stopped: str | None = None
    try:
        previous = read_results(out, repair=True)
        pending: list[TeacherItem] = []
        for item in items:
            c = counts.setdefault(item.dataset, _empty_counts())
            c["total"] += 1
            if previous.get(item.id, {}).get("status") in DONE_STATUSES:
                c["skipped"] += 1
            else:
                pending.append(item)
        skipped = len(items) - len(pending)
        logger.info("%d queries in %d dataset(s): %d already done in %s, %d to synthesise",
                    len(items), len(counts), skipped, out, len(pending))
        if pending and teacher is None:
            teacher = make_teacher(settings)
        backend = teacher.name if teacher is not None else settings.backend
        bar = _progress_bar(len(pending), backend, settings.progress)
        replies = _replies(teacher, pending)
        errors_in_row = total_errors = 0
        try:
            for reply in replies:
                row = result_row(reply, backend)
                writer.write(row)
                previous[row["id"]] = row
                c = counts[row["dataset"]]
                c["done"] += 1
                c[row["status"]] += 1
                if row["status"] == "error":
                    errors_in_row += 1
                    log = logger.warning if total_errors < MAX_LOGGED_ERRORS else logger.debug
                    log("%s: %s", row["id"], row["error"])
                    total_errors += 1
                else:
                    errors_in_row = 0
                bar.update(1)
                bar.set_postfix(ok=sum(v["ok"] for v in counts.values()),
                                no_answer=sum(v["no_answer"] for v in counts.values()),
                                error=sum(v["error"] for v in counts.values()), refresh=False)
                if settings.max_consecutive_errors and errors_in_row >= settings.max_consecutive_errors:
                    stopped = (f"stopped after {errors_in_row} failures in a row (last: {row['error']}); "
                               "fix the cause and rerun the same command to resume")
                    logger.error("%s", stopped)
                    break
        except KeyboardInterrupt:
            interrupted = True
            logger.warning("interrupted: every result so far is saved in %s; rerun the same command to resume", out)
        finally:
            bar.close()
            close = getattr(replies, "close", None)
            if close is not None:
                close()  # a generator backend releases its workers now, not at garbage collection
    finally:
        writer.close()
        if own_teacher and teacher is not None:
            teacher.close()
    summary = _summary(settings, teacher, counts, previous, items, time.monotonic() - started, interrupted)
    summary["stopped"] = stopped
    _report(summary, out)
    return summary


def _replies(teacher: Teacher | None, pending: list[TeacherItem]) -> Iterator[TeacherReply]:
    if pending and teacher is not None:
        yield from teacher.replies(pending)


def _summary(settings, teacher, counts, latest, items, elapsed, interrupted) -> dict[str, Any]:
    total = _empty_counts()
    for c in counts.values():
        for k, v in c.items():
            total[k] += v
    file_counts: dict[str, Counter] = {}
    for item in items:
        status = latest.get(item.id, {}).get("status", "missing")
        file_counts.setdefault(item.dataset, Counter())[status] += 1
    file_total: Counter = Counter()
    for c in file_counts.values():
        file_total.update(c)
    return {
        "out": str(settings.out),
        "teacher": teacher.describe() if teacher is not None else {"backend": settings.backend},
        "settings": settings.public(),
        "elapsed_s": round(elapsed, 3),
        "interrupted": interrupted,
        "datasets": counts,
        "total": total,
        "file": {"datasets": {k: dict(v) for k, v in file_counts.items()}, "total": dict(file_total)},
    }


def _report(summary: dict[str, Any], out: Path) -> None:
    t = summary["total"]
    for name, c in summary["datasets"].items():
        logger.info("  %-24s total %6d  skipped %6d  done %6d  ok %6d  no_answer %5d  error %5d",
                    name, c["total"], c["skipped"], c["done"], c["ok"], c["no_answer"], c["error"])
    path = summary_path(out)
    atomic_write_text(path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    logger.info("synthesis%s: %d done this run (ok %d, no_answer %d, error %d), %d skipped as already done, "
                "%.1fs; %s, summary in %s", " interrupted" if summary["interrupted"] else "", t["done"], t["ok"],
                t["no_answer"], t["error"], t["skipped"], summary["elapsed_s"], out, path)
    if t["no_answer"]:
        logger.warning("%d replies had no <answer> tag: kept with status no_answer and no augmentation "
                       "(not used for training)", t["no_answer"])
    if t["error"]:
        logger.warning("%d queries failed (status error, see the 'error' field); rerun the command to retry them",
                       t["error"])


# ----------------------------------------------------------------------------------------------------- the command

@dataclass
class SynthesisCommandSettings:
    """`python -m training.synthesize`: the run's settings, and how this process runs (not recorded)."""

    synthesis: SynthesisSettings
    threads: int | None = threads_option("the teacher model (transformers backend)")
    verbose: bool = option(False, "debug logging (every error and retry)", flag=("-v", "--verbose"))


def parse_command_line(argv: list[str] | None = None) -> tuple[SynthesisSettings, SynthesisCommandSettings]:
    command, _ = parse_settings(SynthesisCommandSettings, argv, prog="python -m training.synthesize",
                                description="Synthesise answer-style query augmentations with a teacher MLLM "
                                            "(resumable JSONL output).")
    return command.synthesis, command


def main(argv: list[str] | None = None) -> int:
    settings, args = parse_command_line(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        for noisy in ("httpx", "urllib3", "transformers"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    process_environment(args.threads, set_threads=settings.backend == "transformers")
    try:
        summary = synthesize(settings)
    except (UsageError, DataFormatError, TeacherError) as err:
        logger.error("%s", err)
        return 2
    except KeyboardInterrupt:  # before the first result (e.g. while a model loads): nothing to save
        logger.warning("interrupted")
        return 130
    if summary["interrupted"]:
        return 130
    return 1 if summary["total"]["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
