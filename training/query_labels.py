"""`python -m training.query_labels`: a label per training query, /augment or /embed, from models that never saw it.

    python -m training.query_labels --data MINIMMEB --augmentations SYNTH.jsonl --out DIR [--folds 2] \\
        [--margins 0,0.01,0.02,...] [--epochs 2] [--replay DIR] [--threads N]

The paper labels per dataset (the pilot's D^A / D^E), so every query of a dataset gets the same decision. Here each
training query is labelled by whether augmenting helps *its* retrieval, judged by cross-fitting:

1. **Fold models.** The training rows are cut into `--folds` folds by a stable draw from their ids
   (`training.collator.fold_of`). For each fold k, one model fine-tunes from the base on the *other* folds, training
   both paths on every row: the row as AlwaysAug trains it (`/augment` + teacher augmentation, L_gen + L_rep) and
   again as an `/embed` twin (L_rep only). So it has a NoAug path and an AlwaysAug path that learned from the same
   rows, and it never saw a query of fold k.                                              DIR/fold{k}/final
2. **Evidence.** Fold k's queries are ranked by fold k's model in `never` and in `always` mode (the model writes its
   own augmentation, as M-Solomon will), each against its positive, its hard negative and other targets of its
   dataset's training rows (as many as the validation split lists per query). A query's *margin* in a mode is the
   positive's score minus the best other candidate's; its *gain* is the margin with augmenting minus without.
                                                                       DIR/views/fold{k}/, DIR/eval/fold{k}.json
3. **The margin τ, chosen on validation.** A gain near 0 is noise: label `augment` only when gain > τ. Each fold
   model also ranks the validation queries both ways; τ is the value at which routing the validation queries by
   *one* model's gains picks the right path of *another* model most often (macro Precision@1 over the datasets;
   both pairs averaged): a near-tie that does not carry over to an independent model is not a reason to augment.
   Among the values within `--tolerance` points of the best, the largest wins (fewer augmentations, less latency).
   With one value in `--margins` nothing is chosen and the validation split is not read.     DIR/margin.json
4. **Labels.** `labels.jsonl`: one line per training query (id, dataset, label, the evidence: fold, margins, ranks,
   gain), and a summary per dataset.                              DIR/labels.jsonl, DIR/labels.summary.{json,md}

Validation is read only in step 3, test never. Every stage skips what is done, so a killed run resumes.
`python -m training.train --labeling query --labels DIR/labels.jsonl` then trains M-Solomon on them.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from msolomon.files import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_json
from msolomon.settings import option, parse_settings, process_environment, threads_option, usage_error
from training.rehearsal import RehearsalSettings
from training.train import ModelSettings
from training.trainer import LoopSettings, OptimSettings

logger = logging.getLogger("training.query_labels")

DEFAULT_MARGINS = [0.0, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2]


def fold_loop() -> LoopSettings:
    """The fold models' loop: reproduce's fine-tuning defaults (2 epochs at 5e-4)."""
    return LoopSettings(epochs=2.0, save_every=200, log_every=20, optim=OptimSettings(lr=5e-4))


@dataclass
class LabelRule:
    """How queries are labelled: the cross-fitting and the margin (shared by training.reproduce --decisions query)."""

    folds: int = option(2, "cross-fitting folds: each fold is labelled by a model trained on the others")
    margins: list[float] = option(DEFAULT_MARGINS, "candidate values of τ (cosine-score points): label augment "
                                  "when gain > τ; chosen on validation (one value: used as given, val not read)")
    tolerance: float = option(0.25, "P@1 points: among the margins this close to the best on validation, take the "
                              "largest (fewer augmentations)")
    max_augment_rate: float | None = option(None, "only margins whose validation augment rate is at most this "
                                            "(a latency budget for per-query decisions)")


def rule_problem(r: LabelRule) -> str | None:
    """What is wrong with a label rule, or None."""
    if r.folds < 2:
        return f"--folds {r.folds}: cross-fitting needs at least 2 folds"
    if not r.margins or any(m != m or m < 0 for m in r.margins):
        return f"--margins {r.margins}: one or more margins >= 0"
    if r.max_augment_rate is not None and not 0 <= r.max_augment_rate <= 1:
        return f"--max-augment-rate {r.max_augment_rate}: a share between 0 and 1"
    return None


@dataclass
class QueryLabelSettings:
    """Every setting of the labelling; the fold models' model and loop settings are `training.train`'s."""

    data: str = option("", "a MiniMMEB folder (train rows to label; val for the margin) (required)", metavar="DIR")
    augmentations: str = option("", "teacher augmentations of the training rows (training.synthesize's JSONL) "
                                "(required)", metavar="FILE")
    out: str = option("", "the labelling folder; every stage skips what is already there (required)", metavar="DIR")
    rule: LabelRule = field(default_factory=LabelRule)
    datasets: list[str] | None = option(None, "training datasets to label (default: all)")
    max_new_tokens: int = option(32, "generated tokens per augmentation in the always runs")
    eval_batch_size: int = option(32, "queries per batch when ranking")
    only_fold: int | None = option(None, "train fold K's model and stop: run each fold so, as parallel processes "
                                   "at --threads 1 (or on other machines), then once without it for the rest",
                                   metavar="K")
    threads: int | None = threads_option()
    model: ModelSettings = field(default_factory=ModelSettings)
    rehearsal: RehearsalSettings = field(default_factory=RehearsalSettings)
    loop: LoopSettings = field(default_factory=fold_loop)


def settings_problem(s: QueryLabelSettings) -> str | None:
    """What is wrong with the settings, or None (checked before any training)."""
    if not s.data or not s.augmentations or not s.out:
        return "--data, --augmentations and --out are required"
    if not Path(s.data).is_dir():
        return f"--data {s.data}: no such folder"
    if not Path(s.augmentations).is_file():
        return f"--augmentations {s.augmentations}: no such file (make it with python -m training.synthesize)"
    if s.only_fold is not None and not 0 <= s.only_fold < s.rule.folds:
        return f"--only-fold {s.only_fold}: a fold from 0 to {s.rule.folds - 1} (--folds {s.rule.folds})"
    return rule_problem(s.rule)


# --- 1. fold models ---------------------------------------------------------------------------------------------


def train_fold(s: QueryLabelSettings, k: int, out: Path) -> Path:
    """Fold k's model: both paths trained on every row of the other folds (resumes; skips a finished one)."""
    from training.rehearsal import check_run_matches
    from training.train import TrainSettings, run

    run_dir = out / f"fold{k}"
    final = run_dir / "final"
    check_run_matches(run_dir, s.rehearsal)
    if (final / "config.json").is_file():
        return final
    config = TrainSettings(data=s.data, out=str(run_dir), labeling="alwaysaug", augmentations=s.augmentations,
                         embedded_twins=1.0, holdout=f"{k}/{s.rule.folds}", datasets=s.datasets, model=s.model,
                         rehearsal=s.rehearsal, loop=s.loop)
    logger.info("fold %d of %d: training its model on the other folds", k, s.rule.folds)
    t0 = time.perf_counter()
    path = run(config)
    atomic_write_text(run_dir / "train_time_s.txt", f"{time.perf_counter() - t0:.1f}\n")  # read by the labelling run
    return path


# --- 2. evidence -------------------------------------------------------------------------------------------------


def _target(rec: Mapping[str, Any], kind: str) -> tuple[str, str]:
    return (rec.get(f"{kind}_text") or "", rec.get(f"{kind}_image_path") or "")


def write_fold_view(data: Path, names: Sequence[str], k: int, folds: int, n_candidates: Mapping[str, int],
                    out: Path, seed: int = 0) -> dict[str, list[str]]:
    """Fold k's training queries as an MMEB-eval folder (out/NAME/test.jsonl; image paths stay relative to `data`):
    each query against its positive, its hard negative and other targets of its dataset's training rows drawn by a
    seeded generator, `n_candidates[NAME]` in all (or every distinct target when there are fewer). Returns the
    training ids in row order per dataset (also written to out/ids.json)."""
    import numpy as np

    from msolomon.data.mmeb import read_train_records
    from training.collator import fold_of, stable_draw

    ids: dict[str, list[str]] = {}
    for name in names:
        recs = read_train_records(data / "train", name)
        pool = list(dict.fromkeys(t for r in recs for t in (_target(r, "pos"), _target(r, "neg")) if any(t)))
        rows = []
        ids[name] = []
        for rec in recs:
            if fold_of(rec["id"], folds) != k:
                continue
            pos, neg = _target(rec, "pos"), _target(rec, "neg")
            cands = [pos] + ([neg] if any(neg) and neg != pos else [])
            rng = np.random.default_rng([seed, int(stable_draw(rec["id"], "cands:") * 2 ** 32)])
            others = [t for t in pool if t not in cands]
            want = max(0, min(len(others), n_candidates[name] - len(cands)))
            cands += [others[i] for i in rng.choice(len(others), size=want, replace=False)]
            rows.append({"qry_text": rec.get("qry") or "", "qry_img_path": rec.get("qry_image_path") or "",
                         "tgt_text": [c[0] for c in cands], "tgt_img_path": [c[1] for c in cands]})
            ids[name].append(rec["id"])
        write_if_changed(out / name / "test.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_if_changed(out / "ids.json", json.dumps(ids, indent=1) + "\n")
    return ids


def write_if_changed(path: Path, text: str) -> None:
    """Write atomically unless the file already holds `text`: a rewrite would change the file's time stamp, and the
    evaluation's resume would then take the view for new data and rank it all again."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    atomic_write_text(path, text)


def rank_both_ways(model_dir: Path, data: str | Path, image_root: Path, names: Sequence[str], report: Path,
                   s: QueryLabelSettings, split: str = "test", meta: Mapping[str, Mapping[str, Any]] | None = None
                   ) -> dict[str, dict[str, list[dict]]]:
    """Rank `names` in never and always mode with one model (resumable); per dataset and mode, each query's
    {correct, margin, rank} in row order, read from the evaluation's predictions file."""
    from dataclasses import replace

    from msolomon.evaluation import EvalSettings, StaleResultsError, evaluate
    from msolomon.files import read_jsonl
    from msolomon.report import output_paths

    settings = EvalSettings(modes=("never", "always"), datasets=tuple(names), max_new_tokens=s.max_new_tokens,
                            show_progress_bar=False, split=split, batch_size=s.eval_batch_size, latency_queries=0,
                            meta_task=tuple(f"{n}={m['meta_task']}" for n, m in (meta or {}).items() if n in names),
                            image_root=str(image_root))
    try:
        evaluate(str(model_dir), data, settings, out=report, model_name=str(model_dir))
    except StaleResultsError as err:
        logger.warning("%s; ranking again", err)
        evaluate(str(model_dir), data, replace(settings, fresh=True), out=report, model_name=str(model_dir))
    out: dict[str, dict[str, list[dict]]] = {n: {"never": [], "always": []} for n in names}
    for p in sorted(read_jsonl(output_paths(report)["predictions"]), key=lambda p: (p["dataset"], p["index"])):
        if p["dataset"] in out and p["mode"] in ("never", "always"):
            best_other = max((t["score"] for t in p["top"] if not t["correct"]), default=None)
            margin = p["positive_score"] - best_other if best_other is not None else 0.0
            rank = next((i for i, t in enumerate(p["top"]) if t["correct"]), None)
            out[p["dataset"]][p["mode"]].append({"correct": bool(p["correct"]), "margin": float(margin),
                                                 "rank": rank, "augmentation": p.get("augmentation")})
    return out


# --- 3. the margin -----------------------------------------------------------------------------------------------


def routed_accuracy(labeler: Mapping[str, Mapping[str, list[dict]]], judge: Mapping[str, Mapping[str, list[dict]]],
                    tau: float) -> tuple[float, float]:
    """Route each query by the labeler's gain (augment when gain > tau) and score the judge's path: macro P@1 over
    datasets and the share of queries routed to always."""
    scores, n_aug, n = [], 0, 0
    for name, lab in labeler.items():
        gains = [a["margin"] - e["margin"] for e, a in zip(lab["never"], lab["always"])]
        right = [(judge[name]["always"] if g > tau else judge[name]["never"])[i]["correct"]
                 for i, g in enumerate(gains)]
        scores.append(100.0 * sum(right) / len(right) if right else 0.0)
        n_aug += sum(g > tau for g in gains)
        n += len(gains)
    return (sum(scores) / len(scores) if scores else 0.0), (n_aug / n if n else 0.0)


def dataset_routing(labeler: Mapping[str, Mapping[str, list[dict]]], judge: Mapping[str, Mapping[str, list[dict]]],
                    margin_points: float = 1.0) -> tuple[float, float]:
    """The paper's per-dataset rule under the same protocol: augment every query of a dataset where the labeler's
    `always` beats its `never` by more than `margin_points` P@1 points; macro P@1 of the judge's paths and the share
    of queries augmented."""
    scores, n_aug, n = [], 0, 0
    for name, lab in labeler.items():
        k = len(lab["never"])
        if not k:
            continue
        gain = 100.0 * (sum(q["correct"] for q in lab["always"]) - sum(q["correct"] for q in lab["never"])) / k
        path = judge[name]["always" if gain > margin_points else "never"]
        scores.append(100.0 * sum(q["correct"] for q in path) / k)
        n_aug += k if gain > margin_points else 0
        n += k
    return (sum(scores) / len(scores) if scores else 0.0), (n_aug / n if n else 0.0)


def choose_margin(val: Sequence[Mapping[str, Mapping[str, list[dict]]]], margins: Sequence[float],
                  tolerance: float, max_augment_rate: float | None = None) -> dict[str, Any]:
    """τ from the fold models' validation rankings: routed by one model, judged by another (every ordered pair)."""
    table = []
    for tau in sorted(margins):
        pairs = [routed_accuracy(val[a], val[b], tau) for a in range(len(val)) for b in range(len(val)) if a != b]
        acc = sum(p[0] for p in pairs) / len(pairs)
        rate = sum(p[1] for p in pairs) / len(pairs)
        table.append({"margin": tau, "routed_p_at_1": round(acc, 4), "augment_rate": round(rate, 4)})
    allowed = [r for r in table if max_augment_rate is None or r["augment_rate"] <= max_augment_rate]
    if not allowed:
        raise ValueError(f"no margin keeps the validation augment rate at or below {max_augment_rate}: "
                         f"{[(r['margin'], r['augment_rate']) for r in table]}")
    best = max(r["routed_p_at_1"] for r in allowed)
    chosen = max(r["margin"] for r in allowed if r["routed_p_at_1"] >= best - tolerance)
    judge_paths = {}
    for mode in ("never", "always"):
        per = [sum(q["correct"] for q in v[n][mode]) / len(v[n][mode]) for v in val for n in v if v[n][mode]]
        judge_paths[mode] = round(100.0 * sum(per) / len(per), 4) if per else None
    per_dataset = [dataset_routing(val[a], val[b]) for a in range(len(val)) for b in range(len(val)) if a != b]
    judge_paths["per_dataset_rule"] = round(sum(p[0] for p in per_dataset) / len(per_dataset), 4)
    judge_paths["per_dataset_rule_augment_rate"] = round(sum(p[1] for p in per_dataset) / len(per_dataset), 4)
    return {"margin": chosen, "table": table, "tolerance": tolerance, "max_augment_rate": max_augment_rate,
            "fold_models_on_val": judge_paths,
            "rule": "routed by one fold model's gains, judged by another's paths (every ordered pair, averaged); "
                    "the largest margin within the tolerance of the best"}


# --- 4. labels ---------------------------------------------------------------------------------------------------


def label_records(evidence: Mapping[int, Mapping[str, Mapping[str, list[dict]]]],
                  ids: Mapping[int, Mapping[str, list[str]]], tau: float) -> list[dict]:
    """One record per training query: augment when its fold model's gain > tau."""
    records = []
    for k in sorted(evidence):
        for name, runs in evidence[k].items():
            for rid, e, a in zip(ids[k][name], runs["never"], runs["always"]):
                gain = a["margin"] - e["margin"]
                records.append({"id": rid, "dataset": name, "label": "augment" if gain > tau else "embed",
                                "evidence": {"fold": k, "gain": round(gain, 6),
                                             "margin_never": round(e["margin"], 6),
                                             "margin_always": round(a["margin"], 6),
                                             "correct_never": e["correct"], "correct_always": a["correct"],
                                             "rank_never": e["rank"], "rank_always": a["rank"],
                                             "augmentation": a["augmentation"]}})
    return records


def summarise(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per dataset: how many queries, the share labelled augment, and how the two paths compared."""
    per: dict[str, dict[str, Any]] = {}
    for r in records:
        d = per.setdefault(r["dataset"], {"n": 0, "augment": 0, "helped": 0, "hurt": 0, "both": 0, "neither": 0,
                                          "gain_sum": 0.0})
        ev = r["evidence"]
        d["n"] += 1
        d["augment"] += r["label"] == "augment"
        e, a = ev["correct_never"], ev["correct_always"]
        d["helped" if a and not e else "hurt" if e and not a else "both" if a else "neither"] += 1
        d["gain_sum"] += ev["gain"]
    out = {}
    for name in sorted(per):
        d = per[name]
        out[name] = {"n": d["n"], "augment_rate": round(d["augment"] / d["n"], 4),
                     "never_p_at_1": round(100.0 * (d["hurt"] + d["both"]) / d["n"], 2),
                     "always_p_at_1": round(100.0 * (d["helped"] + d["both"]) / d["n"], 2),
                     "helped": d["helped"], "hurt": d["hurt"], "both_right": d["both"], "both_wrong": d["neither"],
                     "mean_gain": round(d["gain_sum"] / d["n"], 5)}
    n = len(records)
    return {"n": n, "augment_rate": round(sum(r["label"] == "augment" for r in records) / n, 4) if n else 0.0,
            "datasets": out}


def _num(x: Any, nd: int = 2) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def summary_markdown(summary: Mapping[str, Any], margin: Mapping[str, Any]) -> str:
    lines = ["# Per-query labels", "",
             f"{summary['n']} training queries, {summary['augment_rate']:.1%} labelled augment, at margin "
             f"τ = {margin['margin']:g} ({margin.get('rule', 'given')}).", "",
             "Each query was ranked by the fold model that did not train on it, without and with its own "
             "augmentation, against its positive, its hard negative and other targets of its dataset (P@1 columns: "
             "those rankings, not the benchmark's).", "",
             "| dataset | n | augment rate | never P@1 | always P@1 | helped | hurt | both right | both wrong | "
             "mean gain |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, d in summary["datasets"].items():
        lines.append(f"| {name} | {d['n']} | {d['augment_rate']:.2f} | {d['never_p_at_1']:.1f} | "
                     f"{d['always_p_at_1']:.1f} | {d['helped']} | {d['hurt']} | {d['both_right']} | "
                     f"{d['both_wrong']} | {d['mean_gain']:+.4f} |")
    if margin.get("table"):
        lines += ["", "## The margin, chosen on validation", "",
                  "| τ | routed P@1 (val) | augment rate (val) |", "|---:|---:|---:|"]
        for r in margin["table"]:
            mark = " **(chosen)**" if r["margin"] == margin["margin"] else ""
            lines.append(f"| {r['margin']:g}{mark} | {r['routed_p_at_1']:.2f} | {r['augment_rate']:.3f} |")
        paths = margin.get("fold_models_on_val") or {}
        lines += ["", "The same protocol for the rules without per-query labels (macro P@1 of the judging fold model "
                      f"on validation): never {_num(paths.get('never'))}, always {_num(paths.get('always'))}, the "
                      f"paper's per-dataset rule (augment a set where the labeling model's always beats its never by "
                      f"more than 1 point) {_num(paths.get('per_dataset_rule'))} at augment rate "
                      f"{_num(paths.get('per_dataset_rule_augment_rate'), 3)}. Per-query labels that do not beat the "
                      "per-dataset rule here carry no routing signal an independent model shares."]
    return "\n".join(lines) + "\n"


# --- the pipeline ------------------------------------------------------------------------------------------------


def run(s: QueryLabelSettings) -> Path:
    """Every stage; returns the labels file (with `only_fold`, that fold model's folder). Stages skip what is
    done."""
    from msolomon.data.minimmeb import load_minimmeb
    from msolomon.data.mmeb import list_train_datasets

    problem = settings_problem(s)
    if problem:
        raise ValueError(problem)
    data, out = Path(s.data), Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = load_minimmeb(data)["datasets"]
    names = s.datasets or list_train_datasets(data / "train")
    unknown = sorted(set(names) - set(list_train_datasets(data / "train")))
    if unknown:
        raise ValueError(f"datasets with no training rows in {data / 'train'}: {unknown}")
    if s.only_fold is not None:  # one fold model only, beside the others' processes; no shared file is written
        return train_fold(s, s.only_fold, out)
    timings: dict[str, float] = read_json(out / "timings.json", {}) or {}
    finals, evidence, ids = {}, {}, {}
    rule = s.rule
    for k in range(rule.folds):
        finals[k] = train_fold(s, k, out)
        own = out / f"fold{k}" / "train_time_s.txt"  # its own time, also when it ran in a process of its own
        if own.is_file():
            timings[f"train_fold{k}_s"] = float(own.read_text())
    n_candidates = {n: meta[n]["n_candidates"] for n in names}
    for k in range(rule.folds):
        t = time.perf_counter()
        view = out / "views" / f"fold{k}"
        ids[k] = write_fold_view(data, names, k, rule.folds, n_candidates, view, s.loop.seed)
        evidence[k] = rank_both_ways(finals[k], view, data, names, out / "eval" / f"fold{k}.json", s, meta=meta)
        timings.setdefault(f"rank_fold{k}_s", round(time.perf_counter() - t, 1))
    if len(rule.margins) == 1:
        margin: dict[str, Any] = {"margin": float(rule.margins[0]), "rule": "given (--margins): validation not read"}
    else:
        t = time.perf_counter()
        val = [rank_both_ways(finals[k], data, data, names, out / "eval" / f"fold{k}.val.json", s, split="val")
               for k in range(rule.folds)]
        margin = choose_margin(val, rule.margins, rule.tolerance, rule.max_augment_rate)
        timings.setdefault("choose_margin_s", round(time.perf_counter() - t, 1))
    atomic_write_json(out / "margin.json", margin)
    records = label_records(evidence, ids, margin["margin"])
    atomic_write_jsonl(out / "labels.jsonl", records)
    summary = summarise(records)
    summary.update({"margin": margin["margin"], "folds": rule.folds, "timings_s": timings})
    atomic_write_json(out / "labels.summary.json", summary)
    atomic_write_text(out / "labels.summary.md", summary_markdown(summary, margin))
    atomic_write_json(out / "timings.json", timings)
    logger.info("%d labels (%.1f%% augment) at margin %g: %s", len(records), 100 * summary["augment_rate"],
                margin["margin"], out / "labels.jsonl")
    return out / "labels.jsonl"


PROG = "python -m training.query_labels"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings, _ = parse_settings(QueryLabelSettings, argv, prog=PROG, description=__doc__)
    problem = settings_problem(settings)
    if problem:
        usage_error(PROG, problem)
    process_environment(settings.threads)
    try:
        path = run(settings)
    except ValueError as err:
        logger.error("%s", err)
        return 2
    if settings.only_fold is not None:
        sys.stdout.write(f"fold {settings.only_fold}'s model: {path} (run again without --only-fold to label)\n")
        return 0
    sys.stdout.write((path.parent / "labels.summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
