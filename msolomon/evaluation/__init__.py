"""MMEB-style evaluation: Precision@1 per dataset, meta-task, IND / OOD and overall, for the modes
`auto`, `never` and `always`, with the `/augment` rate and per-query latency at batch size 1.

    python -m msolomon.evaluation --model PATH --data DIR [--image-root DIR] --out FILE.json \
        [--modes auto,never,always] [--limit N] [--thresholds 0,0.25,0.5,0.75,1] [--datasets A,B] \
        [--max-new-tokens N] [--threshold 0.5] [--batch-size 1] [--latency-queries N] [--threads N] [--fresh]

    from msolomon.evaluation import EvalSettings, evaluate
    report = evaluate(model, "DIR", EvalSettings(modes=("auto", "never", "always")), out="FILE.json")

Why it is built this way:
- Each dataset's unique candidates (by text, image and instruction) are encoded once and shared by every mode
  and threshold: candidates never generate, so their embeddings do not depend on the query path.
- Queries are encoded one at a time by default, so `QueryResult.timings["total"]` is the latency a user of the demo
  sees (raw input to normalised embedding; search is excluded). `--batch-size B` encodes queries in batches for
  accuracy (5x faster at 32 on two CPU threads) and times only `--latency-queries` evenly spaced queries per
  dataset one at a time; the others store no latency.
- The threshold sweep reuses the `never` and `always` runs (p_augment does not depend on the threshold), so a
  whole accuracy-latency curve costs no extra encoding.
- Results are kept per (dataset, mode) in a sidecar folder next to the report (FILE.parts/), written atomically,
  so an interrupted run resumes where it stopped; `--fresh` starts over.
Metric conventions (tie rule, macro vs micro) are documented in `msolomon.metrics`.

The package, one job per module: `settings` (what to evaluate, declared once for the API and the command line),
`benchmark` (datasets, taxonomy, text-only floors), `encode` (one dataset in one mode), `sidecar` (resume),
`run` (`evaluate`, the report, the files), `cli` (the command line).
"""
from msolomon.evaluation.benchmark import (
    CUSTOM_META_TASK,
    Benchmark,
    dataset_floor,
    dataset_floors,
    open_benchmark,
    parse_meta_tasks,
    select_datasets,
)
from msolomon.evaluation.cli import main
from msolomon.evaluation.encode import (
    candidate_key,
    encode_candidates_once,
    encode_rows,
    evaluate_dataset_mode,
    timed_rows,
    unique_candidates,
)
from msolomon.evaluation.run import (
    build_report,
    evaluate,
    evaluate_benchmark,
    latency_note,
    load_model,
    report_path,
    write_outputs,
)
from msolomon.evaluation.settings import (
    DEFAULT_LATENCY_QUERIES,
    DEFAULT_THRESHOLDS,
    FLOOR_NOTES,
    MODES,
    TIE_RULE,
    EvalCommandSettings,
    EvalSettings,
    EvaluationError,
    StaleResultsError,
    default_model_path,
)
from msolomon.evaluation.sidecar import SIDECAR_VERSION, Sidecar

__all__ = ["CUSTOM_META_TASK", "DEFAULT_LATENCY_QUERIES", "DEFAULT_THRESHOLDS", "FLOOR_NOTES", "MODES",
           "SIDECAR_VERSION", "TIE_RULE", "Benchmark", "EvalCommandSettings", "EvalSettings", "EvaluationError",
           "Sidecar", "StaleResultsError", "build_report", "candidate_key", "dataset_floor", "dataset_floors",
           "default_model_path", "encode_candidates_once", "encode_rows", "evaluate", "evaluate_benchmark",
           "evaluate_dataset_mode", "latency_note", "load_model", "main", "open_benchmark", "parse_meta_tasks",
           "report_path", "select_datasets", "timed_rows", "unique_candidates", "write_outputs"]
