"""One evaluation run: per dataset, encode candidates once, then every needed mode (resuming from the sidecar);
aggregate into the report (with the decisions block when all three modes ran) and write JSON, markdown and plot."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from msolomon.evaluation.benchmark import (
    Benchmark,
    dataset_floors,
    open_benchmark,
    parse_meta_tasks,
    select_datasets,
)
from msolomon.evaluation.encode import encode_candidates_once, evaluate_dataset_mode, unique_candidates
from msolomon.evaluation.settings import (
    FLOOR_NOTES,
    MODES,
    TIE_RULE,
    EvalSettings,
    EvaluationError,
    default_model_path,
)
from msolomon.evaluation.sidecar import SIDECAR_VERSION, Sidecar
from msolomon.metrics import DatasetModeResult, aggregate_mode, latency_stats, threshold_curve
from msolomon.report import atomic_write_json, atomic_write_text, markdown_report, output_paths, plot_report

logger = logging.getLogger(__name__)


def _model_name(model: Any, given: str | None) -> str:
    if given:
        return given
    for attr in ("name_or_path", "path", "model_path"):
        v = getattr(model, attr, None)
        if v:
            return str(v)
    return type(model).__name__


def load_model(path: str | Path) -> Any:
    """`MSolomon.from_pretrained(path)`; a folder that does not exist or is not a model is an `EvaluationError`."""
    p = Path(path)
    if not p.exists() and p.absolute() == default_model_path():
        raise EvaluationError(f"model not found: {path} (the shipped default model is missing; pass --model)")
    from msolomon.model import MSolomon

    try:
        return MSolomon.from_pretrained(str(path))
    except (OSError, ValueError) as err:  # from_pretrained names the folder and the problem
        raise EvaluationError(f"--model {path}: {err}") from None


def report_path(out: str | Path) -> Path:
    """Where the JSON report goes: `out` itself, or `out/report.json` when `out` is a folder (or ends with /)."""
    text = str(out)
    out = Path(out)
    if out.is_dir() or text.endswith(("/", os.sep)):
        return out / "report.json"
    return out


def _same_permissions(paths: Sequence[Path]) -> None:
    """Give every output file the permissions a plain new file gets (temporary files are created 0600)."""
    from msolomon.report import default_file_mode

    mode = default_file_mode()
    for path in paths:
        if Path(path).is_file():
            os.chmod(path, mode)


def evaluate(model: Any, data: str | Path | Benchmark, settings: EvalSettings | None = None,
             out: str | Path | None = None, *, model_name: str | None = None) -> dict[str, Any]:
    """Evaluate `model` (an MSolomon, anything with its `encode_queries`/`encode_candidates`, or a path) on a
    MiniMMEB or MMEB-eval folder (or an opened `Benchmark`) and return the evaluation report
    (docs/architecture.md, "The evaluation report"). `settings` default: `EvalSettings()`, every mode on test.

    With `out` (a file, or a folder: then `out/report.json`), also writes FILE.json, FILE.md, FILE.png,
    FILE.predictions.jsonl and the resume sidecar FILE.parts/, which a finished run keeps when
    `settings.keep_parts` (the default here, so that a caller's rerun skips finished work; the command line removes
    it). Reusing one `out` for a *different* in-memory model needs `fresh=True` or another `model_name`, since the
    sidecar knows models only by name.
    """
    settings = settings if settings is not None else EvalSettings()
    bench = data if isinstance(data, Benchmark) else open_benchmark(
        data, settings.image_root, settings.split, meta_tasks=parse_meta_tasks(settings.meta_task),
        allow_outside_root=settings.allow_images_outside_root)
    if isinstance(model, (str, Path)):
        model_name = model_name or str(model)
        model = load_model(model)
    return evaluate_benchmark(model, bench, settings, report_path(out) if out is not None else None,
                              model_name=_model_name(model, model_name))


def evaluate_benchmark(model: Any, bench: Benchmark, settings: EvalSettings, out: Path | None = None,
                       model_name: str = "model",
                       floors: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The evaluation proper: per dataset, encode candidates once, then every needed mode; aggregate; write.
    Without `settings.keep_parts`, the resume sidecar is removed once the report is written."""
    from tqdm.auto import tqdm

    names = select_datasets(bench, settings.datasets)
    if floors is None:  # before any encoding: a bad data file fails early
        floors = dataset_floors(bench, names, settings.limit)
    paths = output_paths(out) if out is not None else None
    sidecar = None
    if paths is not None:
        fingerprint = {"version": SIDECAR_VERSION, "model": model_name,
                       "model_signature": getattr(model, "signature", None), "data": str(bench.data_dir.resolve()),
                       "image_root": str(bench.image_root.resolve()), "split": settings.split,
                       "limit": settings.limit, "threshold": settings.threshold,
                       "max_new_tokens": settings.max_new_tokens, "batch_size": settings.batch_size,
                       "timed_per_dataset": settings.timed_per_dataset, "gate_margin": settings.gate_margin}
        sidecar = Sidecar(paths["parts"], paths["predictions"], fingerprint)
        sidecar.prepare(resume=not settings.fresh)

    run_modes = settings.run_modes
    if set(run_modes) != set(settings.modes):
        logger.info("threshold sweep: also running %s", ", ".join(m for m in run_modes if m not in settings.modes))
    results: dict[str, dict[str, DatasetModeResult]] = {m: {} for m in run_modes}
    disable = None if settings.show_progress_bar is None else not settings.show_progress_bar
    for name in tqdm(names, desc="datasets", disable=disable, unit="dataset"):
        info = bench.infos[name]
        signature = bench.signature(name)
        todo = []
        for m in run_modes:
            done = sidecar.load(name, m, signature) if sidecar else None
            if done is not None:
                results[m][name] = done
            else:
                todo.append(m)
        if not todo:
            logger.info("%s: done in an earlier run, skipped", name)
            continue
        rows = bench.read(name, settings.limit)
        if not rows:
            logger.warning("%s: no rows, skipped", name)
            continue
        unique, row_index = unique_candidates(rows)
        n_dup = sum(int((ix[1:] == ix[0]).any()) for ix in row_index)
        if n_dup:
            logger.warning("%s: %d queries list their positive twice; they can never count as correct", name, n_dup)
        vecs = sidecar.load_candidates(name, signature, len(unique)) if sidecar else None
        if vecs is None:
            logger.info("%s: %d queries, %d unique candidates (of %d listed)", name, len(rows), len(unique),
                        sum(len(ix) for ix in row_index))
            vecs = encode_candidates_once(model, unique, settings)
            if sidecar and len(todo) > 1:
                sidecar.save_candidates(name, signature, vecs)
        for m in todo:
            r = evaluate_dataset_mode(model, rows, info, m, vecs, row_index, unique, settings)
            r.settings["data_signature"] = signature
            results[m][name] = r
            if sidecar:
                sidecar.save(r)
            lat = latency_stats(r.latency_ms)["mean"]
            logger.info("%s [%s]: P@1 %.2f, augment rate %.2f, latency %s", name, m, r.p_at_1, r.augment_rate,
                        "not timed" if lat is None else f"{lat:.1f} ms")
        if sidecar:
            sidecar.drop_candidates(name)

    report = build_report(results, settings, model_name, bench, names, floors)
    if paths is not None:
        write_outputs(report, paths["json"])
        if not settings.keep_parts and sidecar is not None:
            shutil.rmtree(paths["parts"], ignore_errors=True)
    return report


def build_report(results: Mapping[str, Mapping[str, DatasetModeResult]], settings: EvalSettings, model_name: str,
                 bench: Benchmark, names: Sequence[str],
                 floors: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The evaluation report (docs/architecture.md, "The evaluation report"), plus additions (settings, tie rule,
    floors, intervals, threshold curve)."""
    if floors is None:
        floors = dataset_floors(bench, names, settings.limit)
    modes_out = {}
    for m in settings.run_modes:
        per = {n: results[m][n] for n in names if n in results[m]}
        modes_out[m] = aggregate_mode(per, floors)
    report: dict[str, Any] = {"model": model_name, "data": str(bench.data_dir), "split": settings.split,
                              "modes": modes_out}
    if settings.thresholds:
        report["thresholds"] = _sweep(results, names, settings.thresholds)
    if all(m in modes_out for m in MODES):
        from msolomon.decisions import decisions

        report["decisions"] = decisions(modes_out["auto"], modes_out["never"], modes_out["always"])
    report.update({
        "image_root": str(bench.image_root), "benchmark": bench.kind,
        "settings": {"modes": list(settings.modes), "limit": settings.limit, "threshold": settings.threshold,
                     "max_new_tokens": settings.max_new_tokens, "datasets": list(names),
                     "batch_size": settings.batch_size, "timed_per_dataset": settings.timed_per_dataset,
                     "gate_margin": settings.gate_margin},
        "metric": {"precision_at_1": TIE_RULE, "macro": "overall, ind, ood and by_meta_task average datasets equally",
                   "augment_rate": "fraction of all queries (micro); augment_rate_macro averages datasets",
                   "latency_ms": latency_note(settings),
                   **FLOOR_NOTES,
                   "floor_rules": {n: floors[n]["floor_rule"] for n in names if n in floors}},
    })
    return report


def latency_note(settings: EvalSettings) -> str:
    """What the report's latency is, in words: every query timed, or a sample beside batched accuracy."""
    note = "per query at batch size 1, QueryResult.timings['total'], search excluded"
    k = settings.timed_per_dataset
    if k is None:
        return note
    return (f"{note}; measured on {k} evenly spaced queries per dataset encoded one at a time, while the others "
            f"were encoded in batches of {settings.batch_size} for accuracy and not timed")


def _sweep(results: Mapping[str, Mapping[str, DatasetModeResult]], names: Sequence[str],
           thresholds: Sequence[float]) -> list[dict[str, Any]]:
    never = {n: results["never"][n] for n in names if n in results["never"]}
    always = {n: results["always"][n] for n in names if n in results["always"]}
    p_aug = {}
    for n in never:
        source = next((results[m][n] for m in ("auto", "never", "always") if m in results and n in results[m]
                       and all(p is not None for p in results[m][n].p_augment)), None)
        if source is None:
            raise EvaluationError(f"{n}: the model gave no p_augment, so the threshold sweep cannot be computed")
        p_aug[n] = source.p_augment
    return threshold_curve(never, always, p_aug, thresholds)


def write_outputs(report: Mapping[str, Any], out: str | Path) -> dict[str, Path]:
    """Write FILE.json, FILE.md and FILE.png (the predictions file is written as parts finish)."""
    paths = output_paths(Path(out))
    atomic_write_json(paths["json"], report)
    atomic_write_text(paths["md"], markdown_report(report))
    plot_report(report, paths["png"])
    _same_permissions([paths["json"], paths["md"], paths["png"], paths["predictions"]])
    return paths

