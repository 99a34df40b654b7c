"""Does deciding per question template beat deciding per dataset? No model is run: routing rules are scored on paths
already evaluated, on validation only.

    python bench/template_routing.py --data runs/q0/minimmeb --labels runs/q0/labels/labels.jsonl \
        --folds runs/q0/labels/eval/fold0.val.predictions.jsonl,runs/q0/labels/eval/fold1.val.predictions.jsonl \
        --pair baselines=docs/decisions/noaug.val.json:never,docs/decisions/alwaysaug.val.json:always \
        --pair m-solomon=docs/decisions/shipped2.val.json:never,docs/decisions/shipped2.val.json:always \
        --json docs/decisions/template_routing.json

Per-query labels did not transfer between models (docs/decisions.md, section 4); the fallback proposed there is a
decision per group of queries whose evidence agrees, such as a question template ("What colour is bar _?"). A
query's template is its text after the instruction, lower-cased, with every word that fewer than
--min-doc-freq of its dataset's training queries contain (names, colours, values), every number and every single
letter (bar and field letters) replaced by `_`.

Two ways to learn the rule "augment this group when `always` beats `never` in it by more than --margin points":
1. from the training queries' cross-fitted labels (`training.query_labels`: fold models that did not train on a
   query ranked it both ways), groups of at least --min-group training queries, scored on validation by the fold
   models' paths and by each --pair of paths (a `never` and an `always` report);
2. from the judge's own paths on one half of validation, scored on the other half and the reverse (groups of at
   least --min-group-val queries): roughly what a rule could reach if its evidence came from the model that is
   routed (a noisy estimate: half of validation per rule).
The JSON also holds each judge's gain of `always` over `never` per template on validation (templates with at least
--min-group-val queries), so a claim about a template traces to it.
Each is set against the per-dataset rule learned the same way, with a paired 95% interval (same queries).
"""
from __future__ import annotations

import json
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

WORD = re.compile(r"[A-Za-z]+|\d+|[^\sA-Za-z\d]")
IMAGE_PLACEHOLDER = "<|image_1|>"
Bits = Mapping[str, Sequence[bool]]  # dataset -> one correct/wrong per query


@dataclass
class TemplateRoutingSettings(C.BenchSettings):
    labels: str | None = C.option(None, "labels.jsonl of training.query_labels (cross-fitted evidence per "
                                        "training query)", metavar="FILE")
    folds: str | None = C.option(None, "comma-separated predictions files of the fold models on validation "
                                       "(both modes)", metavar="FILES")
    pair: list[str] = C.option(None, "NAME=NEVER_REPORT:MODE,ALWAYS_REPORT:MODE: a judge's two paths from "
                                     "evaluation reports with correct_bits (once per judge)", metavar="SPEC",
                               repeat=True)
    min_doc_freq: float = C.option(0.05, "a word stays in the template when at least this share of the dataset's "
                                         "training queries contain it")
    min_group: int = C.option(40, "training queries a template needs for its own decision (else its dataset's)")
    min_group_val: int = C.option(15, "validation queries (in one half) a template needs in the cross-fitted rule")
    margin: float = C.option(1.0, "augment a group when always beats never in it by more than this (P@1 points)")


def query_body(text: str) -> str:
    """The query's own words: after the image placeholder and the instruction (up to its colon) when there is one."""
    body = text.replace(IMAGE_PLACEHOLDER, " ").strip()
    return body.split(":", 1)[1] if ":" in body else body


def words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(query_body(text))]


class Templates:
    """Question templates of one dataset: the words that at least `min_doc_freq` of its training queries contain."""

    def __init__(self, train_texts: Sequence[str], min_doc_freq: float):
        counts = Counter(w for t in train_texts for w in set(words(t)))
        n = max(len(train_texts), 1)
        self.kept = {w for w, k in counts.items() if k / n >= min_doc_freq and not w.isdigit() and len(w) > 1}

    def __call__(self, text: str) -> str:
        return " ".join(w if w in self.kept else "_" for w in words(text))


def gain_points(never: Sequence[bool], always: Sequence[bool]) -> float:
    return 100.0 * (sum(always) - sum(never)) / len(never) if never else 0.0


def group_rule(templates: Sequence[str], never: Sequence[bool], always: Sequence[bool], min_group: int,
               margin: float) -> tuple[bool, dict[str, dict]]:
    """The dataset's decision and one per template with at least `min_group` queries (the rest take the
    dataset's): augment where `always` beats `never` by more than `margin` points."""
    dataset = gain_points(never, always) > margin
    members: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(templates):
        members[t].append(i)
    groups = {}
    for t, ix in members.items():
        g = gain_points([never[i] for i in ix], [always[i] for i in ix])
        groups[t] = {"n": len(ix), "gain": round(g, 2), "augment": g > margin if len(ix) >= min_group else dataset,
                     "own_decision": len(ix) >= min_group}
    return dataset, groups


def route(never: Bits, always: Bits, decide: Mapping[str, Sequence[bool]]) -> dict[str, list[bool]]:
    """Per dataset, the judge's path each query is routed to (True: always)."""
    return {n: [(always[n][i] if a else never[n][i]) for i, a in enumerate(decide[n])] for n in decide}


def macro(bits: Bits) -> float:
    return sum(100.0 * sum(b) / len(b) for b in bits.values()) / len(bits)


def rate(decide: Mapping[str, Sequence[bool]]) -> float:
    total = sum(len(d) for d in decide.values())
    return sum(sum(d) for d in decide.values()) / total if total else 0.0


def cross_fitted(templates: Mapping[str, Sequence[str]], never: Bits, always: Bits, min_group: int, margin: float,
                 by_template: bool) -> dict[str, list[bool]]:
    """Decisions for every validation query from a rule learned on the other half (even / odd positions)."""
    out: dict[str, list[bool]] = {}
    for n, tpl in templates.items():
        decide = [False] * len(tpl)
        halves = [range(0, len(tpl), 2), range(1, len(tpl), 2)]
        for learn, apply in ((0, 1), (1, 0)):
            ix = list(halves[learn])
            dataset, groups = group_rule([tpl[i] for i in ix], [never[n][i] for i in ix], [always[n][i] for i in ix],
                                         min_group, margin)
            for i in halves[apply]:
                decide[i] = groups[tpl[i]]["augment"] if by_template and tpl[i] in groups else dataset
        out[n] = decide
    return out


def compare(never: Bits, always: Bits, rules: Mapping[str, Mapping[str, Sequence[bool]]]) -> dict:
    """Macro P@1 and augment rate of each rule's routing of the judge's paths; template against dataset, paired."""
    from msolomon.metrics import paired_gain_ci

    routed = {name: route(never, always, d) for name, d in rules.items()}
    out = {name: {"p_at_1": round(macro(r), 2), "augment_rate": round(rate(rules[name]), 3)}
           for name, r in routed.items()}
    paired = paired_gain_ci(routed["template"], routed["dataset"])
    out["template_minus_dataset"] = {"gain": round(paired["gain"], 2), "ci95": [round(x, 2) for x in paired["ci95"]]}
    out["oracle"] = round(macro({n: [a or b for a, b in zip(never[n], always[n])] for n in never}), 2)
    return out


# --- reading what was evaluated ----------------------------------------------------------------------------------


def report_bits(spec: str) -> Bits:
    path, _, mode = spec.rpartition(":")
    if not path:
        raise SystemExit(f"--pair: {spec!r} is not REPORT:MODE")
    try:
        datasets = json.loads(Path(path).read_text())["modes"][mode]["datasets"]
        return {n: [c == "1" for c in d["correct_bits"]] for n, d in datasets.items()}
    except (OSError, ValueError, KeyError) as err:
        raise SystemExit(f"--pair: cannot read {mode!r} correct_bits from {path}: {err}") from None


def prediction_bits(path: Path) -> tuple[Bits, Bits]:
    got: dict[str, dict[str, dict[int, bool]]] = {"never": defaultdict(dict), "always": defaultdict(dict)}
    for line in path.read_text().splitlines():
        p = json.loads(line)
        if p["mode"] in got:
            got[p["mode"]][p["dataset"]][p["index"]] = bool(p["correct"])
    return tuple({n: [v[i] for i in sorted(v)] for n, v in got[m].items()} for m in ("never", "always"))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    args = C.parse(TemplateRoutingSettings, argv, __doc__, model=False)
    if not (args.data and args.labels and args.folds):
        raise SystemExit("--data, --labels and --folds are needed (see --help)")
    data = Path(args.data)
    labels = read_jsonl(Path(args.labels))
    by_set: dict[str, dict[int, dict]] = defaultdict(dict)
    for r in labels:
        name, _, index = r["id"].rpartition(":train:")
        by_set[name][int(index)] = r["evidence"]
    names = sorted(by_set)
    train_texts = {n: [r["qry"] for r in read_jsonl(data / "train" / n / "original.jsonl")] for n in names}
    val_texts = {n: [r["qry_text"] for r in read_jsonl(data / "val" / n / "val.jsonl")] for n in names}
    templates = {n: Templates(train_texts[n], args.min_doc_freq) for n in names}
    val_tpl = {n: [templates[n](t) for t in val_texts[n]] for n in names}

    # 1. rules from the training queries' cross-fitted evidence
    learned, by_dataset, by_template = {}, {}, {}
    for n in names:
        ev = by_set[n]
        ix = sorted(ev)
        dataset, groups = group_rule([templates[n](train_texts[n][i]) for i in ix],
                                     [ev[i]["correct_never"] for i in ix], [ev[i]["correct_always"] for i in ix],
                                     args.min_group, args.margin)
        own = {t: g for t, g in sorted(groups.items(), key=lambda kv: -kv[1]["n"]) if g["own_decision"]}
        learned[n] = {"dataset_augments": dataset, "templates": len(groups),
                      "templates_taking_the_datasets_decision": len(groups) - len(own), "groups": own}
        by_dataset[n] = [dataset] * len(val_tpl[n])
        by_template[n] = [groups[t]["augment"] if t in groups else dataset for t in val_tpl[n]]
    rules = {"never": {n: [False] * len(v) for n, v in val_tpl.items()},
             "always": {n: [True] * len(v) for n, v in val_tpl.items()},
             "dataset": by_dataset, "template": by_template}

    judges: dict[str, tuple[Bits, Bits]] = {}
    for k, path in enumerate(p for p in args.folds.split(",") if p):
        judges[f"fold{k}"] = prediction_bits(Path(path))
    for spec in args.pair or []:
        name, _, paths = spec.partition("=")
        never_spec, _, always_spec = paths.partition(",")
        if not (name and never_spec and always_spec):
            raise SystemExit(f"--pair: {spec!r} is not NAME=NEVER_REPORT:MODE,ALWAYS_REPORT:MODE")
        judges[name] = (report_bits(never_spec), report_bits(always_spec))
    for name, (never, always) in judges.items():
        missing = [n for n in names if n not in never or n not in always
                   or not len(never[n]) == len(always[n]) == len(val_tpl[n])]
        if missing:
            raise SystemExit(f"judge {name!r} has no or other validation queries for {missing}")

    results: dict[str, dict] = {"from_training_labels": {}, "cross_fitted_on_validation": {}}
    per_template: dict[str, dict] = {}
    for name, (never, always) in judges.items():
        never = {n: never[n] for n in names}
        always = {n: always[n] for n in names}
        per_template[name] = {}
        for n in names:
            members: dict[str, list[int]] = defaultdict(list)
            for i, t in enumerate(val_tpl[n]):
                members[t].append(i)
            per_template[name][n] = {t: {"n": len(ix), "gain": round(gain_points([never[n][i] for i in ix],
                                                                                [always[n][i] for i in ix]), 2)}
                                     for t, ix in sorted(members.items(), key=lambda kv: -len(kv[1]))
                                     if len(ix) >= args.min_group_val}
        results["from_training_labels"][name] = compare(never, always, rules)
        own = {kind: cross_fitted(val_tpl, never, always, args.min_group_val, args.margin, kind == "template")
               for kind in ("dataset", "template")}
        results["cross_fitted_on_validation"][name] = compare(never, always, own)

    settings = {"min_doc_freq": args.min_doc_freq, "min_group": args.min_group, "min_group_val": args.min_group_val,
                "margin": args.margin}
    payload = {"machine": C.machine(0), "data": str(data), "labels": args.labels, "folds": args.folds,
               "pairs": args.pair or [], "settings": settings, "split": "val", "results": results, "templates": learned,
               "validation_gain_per_template": per_template}
    rows = []
    for how, per in results.items():
        for judge, r in per.items():
            t = r["template_minus_dataset"]
            rows.append([how, judge, r["dataset"]["p_at_1"], r["template"]["p_at_1"],
                         f"{t['gain']:+.2f} [{t['ci95'][0]:+.2f}, {t['ci95'][1]:+.2f}]",
                         r["template"]["augment_rate"], r["oracle"]])
    C.finish(args, "Routing per question template against routing per dataset (validation, macro P@1)",
             [("Each rule's routing of a judge's never and always paths",
               C.table(["rule learned", "judge", "dataset rule", "template rule", "template − dataset [95% CI]",
                        "template augment rate", "oracle"], rows))], payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
