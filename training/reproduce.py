"""`python -m training.reproduce --out DIR`: the paper's whole pipeline on MiniMMEB, end to end.

    1. generate MiniMMEB (train + val + test)         DIR/minimmeb/
    2. synthesise augmentations with the oracle       DIR/synthesis.jsonl
    2b. the base's own pretraining data made again, replayed against forgetting (`--replay auto`)  DIR/pretrain-data/
    3. fine-tune NoAug and AlwaysAug from the base    DIR/noaug/, DIR/alwaysaug/
       (with --threads 2 or more, at once: two processes of half the threads; --no-parallel-baselines)
    4. pilot: evaluate both on the validation split (carved from train; the test sets are not touched) and
       split the in-distribution datasets into D^A / D^E                                   DIR/split.json
       (`--latency-budget 0.5`, the default: then move sets from D^A to D^E until the predicted latency is half
       AlwaysAug's; `none`: the margin's split alone, the paper's; `split.json`'s `budget_edge` says how near the
       choice lies to the budget, since pilot timings differ by about 10% between machines)
    5. fine-tune M-Solomon with the pilot's split     DIR/msolomon/
       (`--decisions query`: with per-query labels instead, from cross-fitted fold models   DIR/labels/,
       `training.query_labels`; the pilot's split is still made and reported beside them)
    5b. validation: M-Solomon on the pilot's validation split against the pilot's NoAug and AlwaysAug, the rule
       for shipping judged by paired intervals, written before any test evaluation   DIR/validation.json
    6. evaluate on test, each model in its own mode (NoAug never, AlwaysAug always), M-Solomon in auto, never and
       always (its decisions block: the per-query oracle and how good its decisions were; `--all-modes`: every model
       in every mode, for threshold curves)   DIR/eval/{noaug,alwaysaug,msolomon}.json (+ .md, .png)
    7. the report                                     DIR/report.json, DIR/report.md, DIR/report.png
    8. `--ship assets`: the three models in half precision, with model cards: assets/model (M-Solomon),
       assets/baselines/noaug, assets/baselines/alwaysaug; only when the validation rule held (or `--force-ship`);
       otherwise the report records the test figures as those of a candidate that was not shipped

The defaults are the recipe of the shipped models (6 epochs, rehearsal, the 0.5x budget split, augmented twins);
`--epochs 2 --latency-budget none --augmented-twins 0 --replay none` is the paper's plain recipe, about 3x faster.
The three models fine-tune the shipped pretrained base (assets/base, `training.pretrain`) as the paper fine-tunes
Qwen2-VL; `--init tiny` trains them from scratch instead, for comparison. Every stage skips what is already done,
so a killed run resumes. Deterministic for a seed. `--scale tiny --init tiny` is the smoke run of the tests.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from msolomon.files import accumulate_timings, atomic_write_text, read_json
from msolomon.model import AUGMENT_MODES
from msolomon.settings import command_line as settings_command_line
from msolomon.settings import flat_settings, option, parse_settings, process_environment, threads_option, usage_error
from training.query_labels import LabelRule
from training.rehearsal import RehearsalSettings
from training.train import ModelSettings
from training.trainer import LoopSettings, OptimSettings

logger = logging.getLogger("training.reproduce")

MODELS = ("noaug", "alwaysaug", "msolomon")
LABELING = {"noaug": "noaug", "alwaysaug": "alwaysaug", "msolomon": "adaptive"}
DECISIONS = {"dataset": "adaptive", "query": "query"}  # --decisions -> M-Solomon's --labeling
NATIVE_MODE = {"noaug": "never", "alwaysaug": "always", "msolomon": "auto"}
EVAL_MODES = {"noaug": ("never",), "alwaysaug": ("always",), "msolomon": ("auto", "never", "always")}
ALL_MODES = AUGMENT_MODES


def reproduce_loop() -> LoopSettings:
    """The loop of the three fine-tuning runs: the shipped recipe's 6 epochs (the training loop's other settings)."""
    return LoopSettings(epochs=6.0, save_every=500, log_every=20, optim=OptimSettings(lr=5e-4))


REPLAY_AUTO = "auto"  # --replay auto: the init's own pretraining data, made again (stage_rehearsal_data)
OFF = "none"  # --replay none, --latency-budget none


def reproduce_rehearsal() -> RehearsalSettings:
    """The shipped recipe's rehearsal: 16 of the base's own pretraining examples replayed per step."""
    return RehearsalSettings(replay=REPLAY_AUTO, replay_batch=16)


def parse_budget(value) -> float | None:
    """--latency-budget: a fraction of AlwaysAug's latency in (0, 1], or none (the pilot's rule alone)."""
    if value is None or str(value).strip().lower() == OFF:
        return None
    try:
        budget = float(value)
    except ValueError:
        budget = None
    if budget is None or not 0 < budget <= 1:
        raise ValueError(f"a fraction of AlwaysAug's latency in (0, 1] or none, got {value}")
    return budget


@dataclass
class ReproduceSettings:
    """Every setting of the pipeline; the model and loop settings are `training.train`'s (other defaults)."""

    out: str = option("", "the run folder; every stage skips what is already there (required)", metavar="DIR")
    scale: str = option("small", "MiniMMEB's size", choices=("tiny", "small", "full"))
    data: str | None = option(None, "an existing MiniMMEB folder instead of generating one", metavar="DIR")
    error_rate: float = option(0.1, "the oracle teacher's rate of wrong answers")
    margin: float = option(1.0, "the pilot's margin: augment a dataset when AlwaysAug beats NoAug by more (points)")
    require_significant: bool = option(False, "the pilot also requires AlwaysAug's gain to be significant (paired "
                                       "95% bootstrap interval above 0) to augment a dataset")
    latency_budget: float | None = option(0.5, "after the pilot's rule, move datasets from D^A to D^E until the "
                                          "predicted latency is at most this fraction of AlwaysAug's (the pilot "
                                          "then times --latency-queries validation queries per dataset); none: the "
                                          "pilot's rule alone, the paper's split", parse=parse_budget)
    decisions: str = option("dataset", "how M-Solomon's decisions are labelled: dataset (the paper: the pilot's "
                            "D^A / D^E split) or query (per-query labels from cross-fitted fold models, "
                            "training.query_labels)", choices=tuple(DECISIONS))
    augmented_twins: float = option(1.0, "M-Solomon: the share of /embed rows also trained as an augmented twin (query "
                                    "+ teacher augmentation, L_rep only; training.train --augmented-twins)")
    embedded_twins: float = option(0.0, "M-Solomon: the share of /augment rows also trained as an /embed twin (L_rep "
                                   "only; training.train --embedded-twins)")
    max_new_tokens: int = option(32, "generated tokens per augmentation at evaluation")
    eval_limit: int | None = option(None, "test queries per dataset (default: all)")
    eval_batch_size: int = option(32, "queries per batch at evaluation, for accuracy (1: every query alone and timed)")
    latency_queries: int = option(100, "test queries per dataset timed one at a time, batch size 1 (with "
                                  "--eval-batch-size > 1); the pilot times none")
    threads: int | None = threads_option("torch and faiss")
    parallel_baselines: bool = option(True, "with --threads 2 or more, fine-tune NoAug and AlwaysAug at once as two "
                                      "processes, each with half the threads (two one-thread trainings do more "
                                      "steps per second on two cores than one two-thread training); "
                                      "--no-parallel-baselines: one after the other")
    datasets: list[str] | None = option(None, "a subset of MiniMMEB's datasets (default: all 15)")
    pilot_split: str = option("val", "where the pilot measures: the validation split carved from train (test is "
                                     "kept for the final evaluation and refused)", choices=("val",))
    all_modes: bool = option(False, "evaluate every model in every mode (default: each in its own mode)")
    ship: str | None = option(None, "assets folder to write model/ and baselines/{noaug,alwaysaug}/ into (half "
                              "precision, with model cards), when validation says M-Solomon beats NoAug and is level "
                              "with or above AlwaysAug (validation.json, written before test)", metavar="DIR")
    force_ship: bool = option(False, "with --ship: ship even when that validation rule does not hold (the cards and "
                              "the report say so)")
    labels: LabelRule = field(default_factory=LabelRule)
    model: ModelSettings = field(default_factory=ModelSettings)
    rehearsal: RehearsalSettings = field(default_factory=reproduce_rehearsal)
    loop: LoopSettings = field(default_factory=reproduce_loop)


def stage_data(s: ReproduceSettings, out: Path) -> Path:
    from msolomon.data.minimmeb import generate, is_minimmeb

    if s.data:
        return Path(s.data)
    data = out / "minimmeb"
    if not is_minimmeb(data):
        logger.info("generating MiniMMEB (%s, seed %d)", s.scale, s.loop.seed)
        generate(data, seed=s.loop.seed, scale=s.scale, datasets=s.datasets)
    return data


def stage_synthesis(s: ReproduceSettings, data: Path, out: Path) -> Path:
    from training.synthesize import SynthesisSettings, synthesize

    path = out / "synthesis.jsonl"
    synthesize(SynthesisSettings(data=str(data), out=str(path), backend="oracle", error_rate=s.error_rate,
                                 seed=s.loop.seed, progress=False))
    return path


def stage_rehearsal_data(s: ReproduceSettings, data: Path, out: Path) -> str | None:
    """The folder the fine-tunes replay (None: no rehearsal). `--replay auto` makes the init's own pretraining data
    again, from the settings its `pretrain_report.json` records (`training.pretrain` writes one beside every base),
    into DIR/pretrain-data, excluding this run's MiniMMEB images; an init without that record (`--init tiny`, a
    hub checkpoint) has nothing to rehearse."""
    replay = s.rehearsal.replay
    if replay is None or replay == OFF:
        return None
    if replay != REPLAY_AUTO:
        return replay
    if s.model.init == "tiny":
        return None
    from training.pretrain_data import PretrainDataSettings, generate, is_pretrain_data
    from training.train import resolve_init

    record = read_json(Path(resolve_init(s.model.init)) / "pretrain_report.json")
    data_record = record.get("data") if isinstance(record, dict) else None
    made = data_record.get("settings") if isinstance(data_record, dict) else None  # what made the base's data
    if not isinstance(made, dict):
        logger.warning("--replay auto: %s has no pretrain_report.json with its data settings (a fine-tuned model or "
                       "a hub checkpoint), so no rehearsal; --replay DIR names pretraining data", s.model.init)
        return None
    path = out / "pretrain-data"
    if not is_pretrain_data(path):
        from msolomon.data.minimmeb import load_minimmeb

        meta = load_minimmeb(data)
        logger.info("making %s's pretraining data again for rehearsal (%s)", s.model.init, path)
        plain = PretrainDataSettings()
        signature = data_record.get("signature") or {}  # the near-duplicate filter, when the base's data had it
        generate(path, PretrainDataSettings(
            n_per_dataset=made.get("n_per_dataset", plain.n_per_dataset),
            n_heldout_per_dataset=made.get("n_heldout_per_dataset", plain.n_heldout_per_dataset),
            seed=made.get("seed", plain.seed), benchmark_seed=meta.get("seed", s.loop.seed),
            benchmark_scale=meta.get("scale", s.scale),
            datasets=tuple(made["datasets"]) if made.get("datasets") else None,
            near_duplicate_rms=float(signature.get("near_duplicate_rms", 0.0))), data, progress=False)
    return str(path)


def check_stage_train(s: ReproduceSettings, name: str, out: Path) -> str:
    """Refuse to resume a run folder made with other rehearsal or labeling settings; returns the labeling."""
    from training.rehearsal import check_run_matches

    check_run_matches(out / name, s.rehearsal)
    labeling = DECISIONS[s.decisions] if name == "msolomon" else LABELING[name]
    made = (read_json(out / name / "train_settings.json", {}) or {}).get("config", {})
    if made and made.get("labeling") != labeling:
        raise SystemExit(f"{out / name} is a run with --labeling {made.get('labeling')}, these settings ask for "
                         f"{labeling} (--decisions {s.decisions}): use a new --out, or delete {out / name}")
    return labeling


def stage_train(s: ReproduceSettings, name: str, data: Path, synthesis: Path, split: Path | None, out: Path,
                labels: Path | None = None) -> Path:
    from training.train import TrainSettings, run

    final = out / name / "final"
    labeling = check_stage_train(s, name, out)
    if (final / "config.json").is_file():
        return final
    config = TrainSettings(data=str(data), out=str(out / name), labeling=labeling,
                         augmentations=str(synthesis), split=str(split) if split else None,
                         labels=str(labels) if labels and name == "msolomon" else None,
                         augmented_twins=s.augmented_twins if name == "msolomon" else 0.0,
                         embedded_twins=s.embedded_twins if name == "msolomon" else 0.0, model=s.model,
                         rehearsal=s.rehearsal, loop=s.loop)
    logger.info("training %s", name)
    t0 = time.perf_counter()
    path = run(config)
    atomic_write_text(out / name / "train_time_s.txt", f"{time.perf_counter() - t0:.1f}\n")
    return path


def _train_in_child(s: ReproduceSettings, name: str, data: Path, synthesis: Path, out: Path, threads: int) -> Path:
    """One baseline's fine-tune in a child process of its own (stage_baselines)."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s [{name}] %(name)s: %(message)s")
    process_environment(threads)
    return stage_train(replace(s, threads=threads), name, data, synthesis, None, out)


def stage_baselines(s: ReproduceSettings, data: Path, synthesis: Path, out: Path,
                    timings: dict[str, float]) -> dict[str, Path]:
    """NoAug and AlwaysAug (stage 3): with `parallel_baselines` and two threads or more, as two processes at once,
    each at half the threads; otherwise one after the other. Each run resumes and is skipped when done either way,
    and trains the same model (the same seed and data order; float rounding may differ with the thread count)."""
    from msolomon.runtime import default_threads

    names = ("noaug", "alwaysaug")
    threads = s.threads or default_threads()
    todo = [n for n in names if not (out / n / "final" / "config.json").is_file()]
    finals: dict[str, Path] = {}
    if not s.parallel_baselines or threads < 2 or len(todo) < 2:
        for name in names:
            t = time.perf_counter()
            finals[name] = stage_train(s, name, data, synthesis, None, out)
            timings[f"train_{name}_s"] = time.perf_counter() - t
        return finals
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    for name in names:  # the checks of a rerun with other settings, before any process starts
        check_stage_train(s, name, out)
    logger.info("training noaug and alwaysaug at once, two processes of %d thread(s) each", threads // 2)
    t = time.perf_counter()
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = {n: pool.submit(_train_in_child, s, n, data, synthesis, out, threads // 2) for n in names}
        finals = {n: job.result() for n, job in jobs.items()}
    # the stage's wall time (the report's total sums the stages); each run's own time is in NAME/train_time_s.txt
    timings["train_baselines_s"] = time.perf_counter() - t
    return finals


def stage_eval(s: ReproduceSettings, name: str, model_dir: Path, data: Path, out: Path, modes: Sequence[str],
               datasets: Sequence[str] | None = None, tag: str = "", split: str = "test", timed: bool = True) -> dict:
    """Evaluate one model; `timed=False` (the pilot) measures accuracy only, in batches."""
    from msolomon.evaluation import EvalSettings, StaleResultsError, evaluate

    report_path = out / "eval" / f"{name}{tag}.json"
    batched = s.eval_batch_size > 1
    settings = EvalSettings(modes=tuple(modes), limit=s.eval_limit, datasets=datasets, split=split,
                            max_new_tokens=s.max_new_tokens, show_progress_bar=False, batch_size=s.eval_batch_size,
                            latency_queries=(s.latency_queries if timed else 0) if batched else None)
    try:
        return evaluate(str(model_dir), data, settings, out=report_path, model_name=name)
    except StaleResultsError as err:  # the model or settings changed since: evaluate again from scratch
        logger.warning("%s; evaluating %s again", err, name)
        return evaluate(str(model_dir), data, replace(settings, fresh=True), out=report_path, model_name=name)


def stage_labels(s: ReproduceSettings, data: Path, synthesis: Path, out: Path) -> Path:
    """Per-query labels for M-Solomon (`--decisions query`): fold models fine-tuned with this run's recipe."""
    from msolomon.data.minimmeb import load_minimmeb
    from training.query_labels import QueryLabelSettings
    from training.query_labels import run as run_labels

    meta = load_minimmeb(data)["datasets"]
    ind = sorted(n for n, m in meta.items() if not m["ood"])
    return run_labels(QueryLabelSettings(data=str(data), augmentations=str(synthesis), out=str(out / "labels"),
                                         rule=s.labels, datasets=ind, max_new_tokens=s.max_new_tokens,
                                         eval_batch_size=s.eval_batch_size, model=s.model, rehearsal=s.rehearsal,
                                         loop=s.loop))


def stage_pilot(s: ReproduceSettings, data: Path, out: Path, finals: dict[str, Path]) -> Path:
    from msolomon.data.minimmeb import load_minimmeb
    from training.pilot import (
        BudgetOutOfReach,
        PilotSettings,
        budget_split,
        pilot_split,
        split_frontier,
        write_json_atomic,
    )

    path = out / "split.json"
    asked = (s.margin, s.require_significant, s.latency_budget)
    if path.is_file():
        made = read_json(path, {})  # unreadable: treated as made by no rule, so refused below
        rule = (made.get("margin"), made.get("require_significant", False), made.get("latency_budget"))
        if rule != asked:
            raise SystemExit(f"{path} was made with margin {rule[0]}, require_significant {rule[1]} and latency "
                             f"budget {rule[2]}, these settings ask for {asked[0]}, {asked[1]} and {asked[2]}: "
                             "M-Solomon would be trained on another split than the one asked for; use a new --out, or "
                             "delete split.json and msolomon/ to redo the pilot's split (its evaluations are kept)")
        return path
    meta = load_minimmeb(data)["datasets"]
    ind = sorted(n for n, m in meta.items() if not m["ood"])
    timed = s.latency_budget is not None  # a budget needs each dataset's latency, at batch size 1
    noaug = stage_eval(s, "noaug", finals["noaug"], data, out, ["never"], ind, tag=".pilot", split=s.pilot_split,
                       timed=timed)
    always = stage_eval(s, "alwaysaug", finals["alwaysaug"], data, out, ["always"], ind, tag=".pilot",
                        split=s.pilot_split, timed=timed)
    settings = PilotSettings(margin=s.margin, datasets=ind, require_significant=s.require_significant)
    result = pilot_split(noaug, always, settings)
    if s.latency_budget is not None:
        frontier = split_frontier(noaug, always, settings)  # its own errors (no latencies) fail the run
        try:
            result = budget_split(result, frontier, s.latency_budget)
        except BudgetOutOfReach as err:  # out of reach (short augmentations): the rule's split, not a failed run
            logger.warning("%s: M-Solomon trains on the pilot's rule alone", err)
            result = dict(result, latency_budget=s.latency_budget, budget_unmet=f"{err}; the pilot's rule kept")
    result["sources"] = {"noaug": "eval/noaug.pilot.json", "alwaysaug": "eval/alwaysaug.pilot.json"}
    write_json_atomic(path, result)
    logger.info("pilot split: D^A=%s D^E=%s", result["augment"], result["embed"])
    return path


def stage_validation(s: ReproduceSettings, data: Path, out: Path, msolomon: Path) -> dict:
    """M-Solomon on the pilot's validation split against the pilot's NoAug and AlwaysAug reports: the comparison
    that decides whether the run ships, written to DIR/validation.json before any model is evaluated on test."""
    from msolomon.data.minimmeb import load_minimmeb
    from training.pilot import write_json_atomic
    from training.report import validation_comparison

    meta = load_minimmeb(data)["datasets"]
    ind = sorted(n for n, m in meta.items() if not m["ood"])
    report = stage_eval(s, "msolomon", msolomon, data, out, ["auto"], ind, tag=".val", split=s.pilot_split,
                        timed=False)
    pilots = {k: read_json(out / "eval" / f"{k}.pilot.json") for k in ("noaug", "alwaysaug")}
    comparison = validation_comparison(report, pilots["noaug"], pilots["alwaysaug"], s.pilot_split)
    comparison["reports"] = {"msolomon": "eval/msolomon.val.json", "noaug": "eval/noaug.pilot.json",
                             "alwaysaug": "eval/alwaysaug.pilot.json"}
    path = out / "validation.json"
    before = read_json(path, {}) or {}
    if {k: v for k, v in before.items() if k != "written_at"} == comparison:
        return before  # a rerun: the record and its time stay as first written
    if any((out / "eval" / f"{name}.json").is_file() for name in MODELS):
        logger.warning("%s: test evaluations exist from an earlier M-Solomon of this folder; this comparison is "
                       "written after them", out / "eval")
    comparison["written_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_json_atomic(path, comparison)
    gain = comparison["gains"]["alwaysaug"]
    logger.info("validation: M-Solomon %.1f, against AlwaysAug %+.1f [%+.1f, %+.1f] (%s): %s",
                comparison["p_at_1"]["msolomon"], gain["gain"], *gain["ci95"], gain["verdict"],
                "may ship" if comparison["ship"] else "does not ship")
    return comparison


def shipping_record(s: ReproduceSettings, validation: dict) -> dict:
    """What happens to this run's models, decided from the validation comparison before test is read."""
    if not s.ship:
        return {"asked": False, "shipped": False, "note": "not asked to ship (no --ship); a candidate's record."}
    if validation["ship"]:
        return {"asked": True, "shipped": True, "note": f"shipped to {s.ship}: the validation rule held."}
    if s.force_ship:
        return {"asked": True, "shipped": True,
                "note": f"shipped to {s.ship} with --force-ship although the validation rule did not hold."}
    return {"asked": True, "shipped": False,
            "note": f"not shipped to {s.ship}: the validation rule did not hold (--force-ship ships anyway); "
                    "the test evaluation below is the record of a candidate that was not shipped."}


def run(s: ReproduceSettings) -> dict:
    if s.threads:
        process_environment(s.threads)
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    data = stage_data(s, out)
    timings["data_s"] = time.perf_counter() - t
    t = time.perf_counter()
    synthesis = stage_synthesis(s, data, out)
    timings["synthesis_s"] = time.perf_counter() - t
    t = time.perf_counter()
    replay = stage_rehearsal_data(s, data, out)
    timings["rehearsal_data_s"] = time.perf_counter() - t
    recorded = s  # the settings as asked (the report's and the card's command); the stages get the replay folder
    s = replace(s, rehearsal=replace(s.rehearsal, replay=replay))
    finals = stage_baselines(s, data, synthesis, out, timings)
    t = time.perf_counter()
    split = stage_pilot(s, data, out, finals)
    timings["pilot_s"] = time.perf_counter() - t
    labels = None
    if s.decisions == "query":
        t = time.perf_counter()
        labels = stage_labels(s, data, synthesis, out)
        timings["labels_s"] = time.perf_counter() - t
    t = time.perf_counter()
    finals["msolomon"] = stage_train(s, "msolomon", data, synthesis, split, out, labels)
    timings["train_msolomon_s"] = time.perf_counter() - t
    t = time.perf_counter()
    validation = stage_validation(s, data, out, finals["msolomon"])
    shipping = shipping_record(s, validation)
    timings["validation_s"] = time.perf_counter() - t
    reports = {}
    for name in MODELS:
        t = time.perf_counter()
        modes = ALL_MODES if s.all_modes else EVAL_MODES[name]
        reports[name] = stage_eval(s, name, finals[name], data, out, modes)
        timings[f"eval_{name}_s"] = time.perf_counter() - t
    from training.report import write_reproduce_report

    split_data = read_json(split)
    from msolomon.data.minimmeb import load_minimmeb
    from training.report import mirror_sets

    if labels is not None:
        split_data = dict(split_data, labels=read_json(labels.parent / "labels.summary.json"),
                          labels_file=str(labels.relative_to(out)))
    result = {"split": split_data, "models": reports, "settings": flat_settings(recorded), "replay_data": replay,
              "decisions": s.decisions,
              "validation": validation, "shipping": shipping,
              "mirrors": mirror_sets(load_minimmeb(data)["datasets"]),
              "timings_s": accumulate_timings(out / "timings.json", timings)}
    write_reproduce_report(result, out)
    if shipping["shipped"]:
        ship_models(result, finals, Path(s.ship), command_line(recorded))
    elif shipping["asked"]:
        logger.warning("%s", shipping["note"])
    return result


def command_line(s: ReproduceSettings) -> str:
    """The command that reproduces `s` (the settings that differ from the defaults)."""
    return settings_command_line("python -m training.reproduce", s)


SHIPPED = {"msolomon": "model", "noaug": "baselines/noaug", "alwaysaug": "baselines/alwaysaug"}


def ship_models(result: dict, finals: dict[str, Path], assets: Path, command: str) -> None:
    """Save the three models under `assets` (model/, baselines/noaug/, baselines/alwaysaug/) in float16 (loaded
    back in float32 on a CPU), each with its model card and the run's report."""
    import torch

    from msolomon.model import MSolomon
    from training.report import write_model_card

    for name, sub in SHIPPED.items():
        model = MSolomon.from_pretrained(finals[name], device="cpu", dtype=torch.float32)
        model.model.to(torch.float16)
        dest = assets / sub
        dest.parent.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(dest)  # atomic: a temporary folder renamed into place
        write_model_card(result, dest, command, model_key=name)
        logger.info("shipped %s to %s", name, dest)


PROG = "python -m training.reproduce"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings, args = parse_settings(ReproduceSettings, argv, prog=PROG, description=__doc__)
    if not settings.out:
        usage_error(PROG, "--out is required")
    if settings.eval_batch_size < 1 or settings.latency_queries < 0:  # fail now, not after the fine-tuning
        usage_error(PROG, "--eval-batch-size must be >= 1 and --latency-queries >= 0")
    if settings.latency_budget is not None and settings.latency_queries < 1 and settings.eval_batch_size > 1:
        usage_error(PROG, "--latency-budget needs --latency-queries >= 1 (the pilot times each dataset)")
    from training.collator import augmented_twins_problem, embedded_twins_problem
    from training.query_labels import rule_problem

    labeling = DECISIONS[settings.decisions]  # M-Solomon's
    problem = (augmented_twins_problem(settings.augmented_twins, labeling)
               or embedded_twins_problem(settings.embedded_twins, labeling) or rule_problem(settings.labels))
    if problem:
        usage_error(PROG, problem)
    if settings.data and not Path(settings.data).is_dir():
        usage_error(PROG, f"--data {settings.data}: no such folder")
    from training.rehearsal import rehearsal_problem

    asked = settings.rehearsal
    problem = rehearsal_problem(replace(asked, replay=None) if asked.replay in (REPLAY_AUTO, OFF) else asked)
    if problem:
        usage_error(PROG, problem)
    process_environment(settings.threads)
    try:
        run(settings)
    except ValueError as err:
        logger.error("%s", err)
        return 2
    sys.stdout.write((Path(settings.out) / "report.md").read_text())  # the command's own output: the report
    return 0


if __name__ == "__main__":
    sys.exit(main())
