"""A tiny-scale smoke run of the whole pipeline: data, oracle synthesis, NoAug, AlwaysAug, pilot, M-Solomon,
evaluation, report. Checks the wiring and the report's shape (the tiny scale is too small to show the paper's
claims; the shipped model's report holds the real figures)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from msolomon.settings import build
from training.reproduce import ReproduceSettings, run

# two in-distribution sets of different meta-tasks, a third one, and the two out-of-distribution mirror sets
SUBSET = ["DigitsCLS", "ScenesVQA", "ScenesT2I", "DigitsR", "FashionCIR"]
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_layers": 1, "vision_dim": 32, "vision_depth": 1}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The tiny pipeline with the dataset-level defaults, run once: the smoke test checks it, and the per-query run
    starts from copies of its MiniMMEB, teacher file and baselines (the stages it shares)."""
    tmp_path = tmp_path_factory.mktemp("smoke")
    settings = build(ReproduceSettings, dict(out=str(tmp_path / "rep"), scale="tiny", epochs=1, batch_size=16,
                                             max_new_tokens=8, eval_limit=4, init="tiny", tiny=TINY, datasets=SUBSET,
                                             latency_budget=0.01, latency_queries=1, ship=str(tmp_path / "assets"),
                                             force_ship=True))  # flat names
    return tmp_path, settings, run(settings)


def test_reproduce_smoke(smoke_run):
    tmp_path, settings, result = smoke_run
    out = tmp_path / "rep"
    report = json.loads((out / "report.json").read_text())
    # the comparison that decides shipping was made on validation and written before any test evaluation
    validation = json.loads((out / "validation.json").read_text())
    assert validation["split"] == "val" and set(validation["gains"]) == {"noaug", "alwaysaug"}
    assert json.loads((out / "eval" / "msolomon.val.json").read_text())["split"] == "val"
    first_test = min((out / "eval" / f"{k}.json").stat().st_mtime_ns for k in ("noaug", "alwaysaug", "msolomon"))
    assert (out / "validation.json").stat().st_mtime_ns < first_test
    assert report["validation"] == validation and report["shipping"]["shipped"] is True
    assert "## Validation, before test" in (out / "report.md").read_text()
    assert set(report["models"]) == {"noaug", "alwaysaug", "msolomon"}
    # each baseline in its own mode (the paper's comparison); M-Solomon in all three, for its decisions block
    assert {k: set(v["modes"]) for k, v in report["models"].items()} == {
        "noaug": {"never"}, "alwaysaug": {"always"}, "msolomon": {"auto", "never", "always"}}
    assert report["models"]["msolomon"]["decisions"]["n"] > 0 and report["decisions"] == "dataset"
    split = report["split"]
    # the pilot measured on the validation split, never on test
    assert split["pilot_on"] == "val"
    pilot = json.loads((out / "eval" / "noaug.pilot.json").read_text())
    assert pilot["split"] == "val" and json.loads((out / "eval" / "noaug.json").read_text())["split"] == "test"
    meta = json.loads((out / "minimmeb" / "minimmeb.json").read_text())["datasets"]
    ind = sorted(n for n, m in meta.items() if not m["ood"])
    # the split covers exactly the in-distribution sets and came from the two pilot reports
    assert sorted(split["augment"] + split["embed"]) == ind
    pilot_noaug = json.loads((out / "eval" / "noaug.pilot.json").read_text())["modes"]["never"]["datasets"]
    for name, ev in split["datasets"].items():
        assert ev["noaug_p_at_1"] == pilot_noaug[name]["p_at_1"]
        assert (ev["assignment"] == "augment") == (ev["delta"] > split["margin"])
    assert split["require_significant"] is False and "more than 1.0 points" in (out / "report.md").read_text()
    # a latency budget out of reach (no split is that fast) keeps the rule's split and says so, not a failed run
    assert split["latency_budget"] == 0.01 and "no split is predicted within 0.01x" in split["budget_unmet"]
    assert "The latency budget of 0.01x AlwaysAug's was out of reach" in (out / "report.md").read_text()
    assert report["settings"]["replay"] == "auto" and report["replay_data"] is None  # from scratch: nothing to replay
    assert (out / "report.md").read_text().startswith("# M-Solomon on MiniMMEB")
    assert (out / "report.png").stat().st_size > 1000
    assert (out / "msolomon" / "final" / "model.safetensors").is_file()
    # the three models shipped in half precision, each with its model card
    from safetensors import safe_open

    for sub, title in (("model", "M-Solomon"), ("baselines/noaug", "NoAug"), ("baselines/alwaysaug", "AlwaysAug")):
        folder = tmp_path / "assets" / sub
        assert (folder / "README.md").read_text().startswith(f"# {title} tiny")
        assert "validation split" in (folder / "README.md").read_text()
        # the card says why it shipped, from the comparison the run recorded (here: forced, if the rule failed)
        assert ("the rule for shipping held" if validation["ship"] else "--force-ship") in (
            folder / "README.md").read_text()
        with safe_open(str(folder / "model.safetensors"), "pt") as fh:
            assert {str(fh.get_tensor(k).dtype) for k in fh.keys()} == {"torch.float16"}
    always = report["models"]["alwaysaug"]["modes"]["always"]
    assert always["augment_rate"] == 1.0  # forced modes: true by construction, kept as a check of the report
    assert report["models"]["noaug"]["modes"]["never"]["augment_rate"] == 0.0
    # M-Solomon decides by itself (mode auto) and its decisions follow the split it was trained on: on the
    # in-distribution test sets it augments the D^A sets' queries and embeds the D^E sets' queries at once
    auto = report["models"]["msolomon"]["modes"]["auto"]["datasets"]
    for name in split["augment"]:
        assert auto[name]["augment_rate"] > 0.5, (name, auto[name]["augment_rate"], split)
    for name in split["embed"]:
        assert auto[name]["augment_rate"] < 0.5, (name, auto[name]["augment_rate"], split)
    # and training did something: at this smoke scale (7 steps from scratch, 4 test queries per set) the best of
    # the three models beats a random pick of a candidate overall
    overall = {key: report["models"][key]["modes"][mode]["overall"]
               for key, mode in (("noaug", "never"), ("alwaysaug", "always"), ("msolomon", "auto"))}
    chance = report["models"]["noaug"]["modes"]["never"]["chance"]
    assert max(overall.values()) > chance, (overall, chance)
    # a rerun skips every finished stage: no model is trained again, no file rewritten
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/final/model.safetensors")}
    assert len(stamps) == 3
    again = run(settings)
    assert again["split"] == result["split"]
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/final/model.safetensors")} == stamps
    assert again["timings_s"]["train_noaug_s"] - result["timings_s"]["train_noaug_s"] < 1.0
    # asking for another pilot rule on the same folder is refused, not silently served the old split
    other = build(ReproduceSettings, dict(out=str(out), scale="tiny", epochs=1, batch_size=16, max_new_tokens=8,
                                          eval_limit=4, init="tiny", tiny=TINY, datasets=SUBSET,
                                          require_significant=True))
    with pytest.raises(SystemExit, match="require_significant"):
        run(other)
    # a latency budget is another rule too; once asked for on a fresh pilot, the pilot times its validation runs and
    # only moves sets from D^A to D^E, until the predicted latency fits
    budget = build(ReproduceSettings, dict(out=str(out), scale="tiny", epochs=1, batch_size=16, max_new_tokens=8,
                                           eval_limit=4, init="tiny", tiny=TINY, datasets=SUBSET, latency_budget=0.9))
    with pytest.raises(SystemExit, match="latency budget 0.01"):
        run(budget)
    from training.reproduce import stage_pilot  # the pilot's stage alone: what the budget changes

    (out / "split.json").unlink()
    finals = {name: out / name / "final" for name in ("noaug", "alwaysaug")}
    budgeted = json.loads(stage_pilot(budget, out / "minimmeb", out, finals).read_text())
    assert budgeted["latency_budget"] == 0.9 and budgeted["predicted"]["latency_ratio"] <= 0.9
    assert set(budgeted["augment"]) <= set(result["split"]["augment"])
    timed = json.loads((out / "eval" / "alwaysaug.pilot.json").read_text())["modes"]["always"]["datasets"]
    assert all(timed[n]["latency_ms_mean"] > 0 for n in ind)


def test_the_baselines_train_at_once_as_two_processes_into_the_same_models(smoke_run, tmp_path):
    """With two threads, NoAug and AlwaysAug fine-tune as two one-thread processes: the same models as one after
    the other (the smoke's); the stage's wall time is what the report sums, each run's own time is in its folder."""
    from dataclasses import replace

    from safetensors.torch import load_file

    from training.reproduce import stage_baselines

    smoke, settings, _ = smoke_run
    s = replace(settings, out=str(tmp_path), threads=2, rehearsal=replace(settings.rehearsal, replay=None))
    timings: dict[str, float] = {}
    finals = stage_baselines(s, smoke / "rep" / "minimmeb", smoke / "rep" / "synthesis.jsonl", tmp_path, timings)
    own = {n: float((tmp_path / n / "train_time_s.txt").read_text()) for n in ("noaug", "alwaysaug")}
    assert set(timings) == {"train_baselines_s"} and timings["train_baselines_s"] >= max(own.values()) > 0
    for name in ("noaug", "alwaysaug"):
        assert finals[name] == tmp_path / name / "final"
        ours = load_file(str(finals[name] / "model.safetensors"))
        theirs = load_file(str(smoke / "rep" / name / "final" / "model.safetensors"))
        assert ours.keys() == theirs.keys()
        assert all(torch.allclose(ours[k], theirs[k], atol=1e-4) for k in ours), name
    # done runs are skipped: no process is started and nothing is trained again
    stamp = (tmp_path / "noaug" / "final" / "model.safetensors").stat().st_mtime_ns
    assert stage_baselines(s, smoke / "rep" / "minimmeb", smoke / "rep" / "synthesis.jsonl", tmp_path, {}) == finals
    assert (tmp_path / "noaug" / "final" / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("flags", [["--eval-batch-size", "0"], ["--latency-queries", "-1"]])
def test_bad_evaluation_settings_fail_before_any_training(tmp_path, flags, capsys):
    from training.reproduce import main

    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "run")] + flags)
    assert "--eval-batch-size must be >= 1" in str(e.value)
    assert not (tmp_path / "run").exists()  # nothing generated or trained


@pytest.mark.parametrize("flags, message", [(["--latency-budget", "1.5"], "in \\(0, 1\\] or none, got 1.5"),
                                            (["--latency-budget", "0.5", "--latency-queries", "0"],
                                             "needs --latency-queries >= 1"),
                                            (["--augmented-twins", "2"], "between 0 and 1")])
def test_a_bad_latency_budget_or_twin_share_fails_before_any_training(tmp_path, flags, message):
    import re

    from training.reproduce import main

    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "run")] + flags)
    assert re.search(message, str(e.value))
    assert not (tmp_path / "run").exists()


def test_reproduce_with_per_query_decisions(tmp_path, smoke_run):
    """`--decisions query`: the pipeline labels each training query with cross-fitted fold models, trains M-Solomon
    on those labels, and its report carries the labels' summary, the two-model oracle and M-Solomon's decisions."""
    out = tmp_path / "rep"
    shared = smoke_run[0] / "rep"  # the stages before the split are the same: reused, as a rerun would
    for name in ("minimmeb", "noaug", "alwaysaug"):
        shutil.copytree(shared / name, out / name)
    shutil.copyfile(shared / "synthesis.jsonl", out / "synthesis.jsonl")
    trained = {p: p.stat().st_mtime_ns for p in out.glob("*/final/model.safetensors")}
    assert len(trained) == 2
    settings = build(ReproduceSettings, dict(out=str(out), scale="tiny", epochs=1, batch_size=16, max_new_tokens=8,
                                             eval_limit=4, init="tiny", tiny=TINY, datasets=SUBSET,
                                             decisions="query", margins=[0.0, 0.02], eval_batch_size=4,
                                             latency_queries=1, latency_budget=None, augmented_twins=0.0))
    run(settings)
    assert {p: p.stat().st_mtime_ns for p in trained} == trained  # the baselines were not trained again
    report = json.loads((out / "report.json").read_text())
    assert report["decisions"] == "query"
    saved = json.loads((out / "msolomon" / "train_settings.json").read_text())["config"]
    assert saved["labeling"] == "query" and saved["labels"] == str(out / "labels" / "labels.jsonl")
    labels = [json.loads(x) for x in (out / "labels" / "labels.jsonl").read_text().splitlines()]
    ind = {"DigitsCLS", "ScenesVQA", "ScenesT2I"}
    assert {r["dataset"] for r in labels} == ind and report["split"]["labels"]["n"] == len(labels)
    # the fold models were fine-tuned with this run's recipe, each leaving out its own fold
    for k in range(2):
        fold = json.loads((out / "labels" / f"fold{k}" / "train_settings.json").read_text())["config"]
        assert fold["holdout"] == f"{k}/2" and fold["loop"]["epochs"] == 1
    # M-Solomon was evaluated in all three modes: its decisions block, and the two-model oracle beside it
    block = report["models"]["msolomon"]["decisions"]
    assert set(block["datasets"]) == set(report["models"]["msolomon"]["modes"]["auto"]["datasets"])
    two = report["oracle"]
    never = report["models"]["noaug"]["modes"]["never"]["overall"]
    always = report["models"]["alwaysaug"]["modes"]["always"]["overall"]
    assert two["overall"] >= max(never, always) - 1e-6
    text = (out / "report.md").read_text()
    assert "per-query labels" in text and "Two-model oracle" in text
    # asking for the paper's per-dataset decisions on this folder is refused, not silently served this model
    other = build(ReproduceSettings, dict(out=str(out), scale="tiny", epochs=1, batch_size=16, max_new_tokens=8,
                                          eval_limit=4, init="tiny", tiny=TINY, datasets=SUBSET,
                                          eval_batch_size=4, latency_queries=1, latency_budget=None,
                                          augmented_twins=0.0))
    with pytest.raises(SystemExit, match="labeling query"):
        run(other)


def _mode_entry(bits_by_dataset: dict[str, str]) -> dict:
    return {"datasets": {n: {"correct_bits": b} for n, b in bits_by_dataset.items()}}


def _report(mode: str, bits_by_dataset: dict[str, str]) -> dict:
    return {"modes": {mode: _mode_entry(bits_by_dataset)}}


def test_the_validation_rule_ships_only_a_model_that_beats_noaug_and_is_level_with_alwaysaug():
    from training.report import shipping_sentence, validation_comparison
    from training.reproduce import shipping_record

    n = 200
    noaug = _report("never", {"A": "1" * 100 + "0" * 100, "B": "1" * 60 + "0" * 140})
    always = _report("always", {"A": "1" * 140 + "0" * 60, "B": "1" * 100 + "0" * 100})
    # M-Solomon: right wherever AlwaysAug is, and on 10 more queries per set: beats both
    good = _report("auto", {"A": "1" * 150 + "0" * 50, "B": "1" * 110 + "0" * 90})
    v = validation_comparison(good, noaug, always, "val")
    assert v["p_at_1"] == {"msolomon": 65.0, "noaug": 40.0, "alwaysaug": 60.0}
    assert v["gains"]["noaug"]["verdict"] == "holds" and v["gains"]["alwaysaug"]["verdict"] == "holds"
    assert v["ship"] is True
    # as good as NoAug only: 20 points below AlwaysAug, far outside the level margin
    weak = _report("auto", {"A": "1" * 100 + "0" * 100, "B": "1" * 60 + "0" * 140})
    w = validation_comparison(weak, noaug, always, "val")
    assert w["gains"]["alwaysaug"]["verdict"] == "does not hold" and w["ship"] is False
    settings = build(ReproduceSettings, dict(out="x", ship="assets"))
    assert shipping_record(settings, w)["shipped"] is False
    assert "not shipped" in shipping_sentence(w, shipped=False)
    assert "scored 65.0 against NoAug's 40.0" in shipping_sentence(v) and "shipping held" in shipping_sentence(v)
    assert shipping_record(build(ReproduceSettings, dict(out="x", ship="assets", force_ship=True)), w)["shipped"]
    assert shipping_record(build(ReproduceSettings, dict(out="x")), v)["shipped"] is False  # nothing asked
    # reports of different queries cannot be compared
    with pytest.raises(ValueError, match="different queries"):
        validation_comparison(_report("auto", {"A": "1" * (n - 1)}), noaug, always, "val")


def test_the_defaults_are_the_recipe_that_shipped():
    """`python -m training.reproduce --out DIR` with no other flag trains by the recipe recorded in the shipped
    model's report: every setting the shipped run recorded, but its folders and threads, is today's default."""
    from pathlib import Path

    from msolomon.settings import flat_settings

    shipped = json.loads((Path(__file__).parents[1] / "assets" / "model" / "report.json").read_text())["settings"]
    defaults = flat_settings(ReproduceSettings(out="x"))
    run_specific = {"out", "ship", "threads", "replay"}
    differ = {k: (v, defaults.get(k)) for k, v in shipped.items() if k not in run_specific and defaults.get(k) != v}
    assert not differ, differ
    assert (shipped["latency_budget"], shipped["augmented_twins"], shipped["epochs"]) == (0.5, 1.0, 6.0)
    # the shipped run replayed its base's pretraining data from a folder of that machine; the default makes it again
    assert shipped["replay"] and defaults["replay"] == "auto" and shipped["replay_batch"] == 16


def test_replay_auto_makes_the_inits_own_pretraining_data_again(tmp_path):
    """`--replay auto` regenerates the pretraining data its init's pretrain_report.json describes (its seed, size
    and world builders), once, apart from this run's benchmark; nothing to replay from scratch or without a record."""
    from pathlib import Path

    from msolomon.data.minimmeb import generate
    from training.pretrain_data import load_rows
    from training.reproduce import stage_rehearsal_data

    data = tmp_path / "minimmeb"
    generate(data, seed=0, scale="tiny", datasets=["DigitsCLS", "ScenesT2I"], progress=False)
    base = tmp_path / "base"
    base.mkdir()
    (base / "pretrain_report.json").write_text(json.dumps({"settings": {"n_per_dataset": 3000}, "data": {"settings": {
        "n_per_dataset": 3, "n_heldout_per_dataset": 2, "seed": 7, "datasets": ["DigitsCLS", "ShapesCLS"]}}}))
    out = tmp_path / "run"
    settings = build(ReproduceSettings, dict(out=str(out), init=str(base), scale="tiny"))
    made = stage_rehearsal_data(settings, data, out)
    assert made == str(out / "pretrain-data")
    meta = json.loads((out / "pretrain-data" / "pretrain.json").read_text())
    assert meta["settings"]["n_per_dataset"] == 3 and sorted(meta["settings"]["datasets"]) == ["DigitsCLS", "ShapesCLS"]
    assert meta["benchmark"] == str(data)  # this run's own MiniMMEB images are the ones kept out
    rows = load_rows(made, "train")
    assert 0 < len(rows) <= 6 and {r["dataset"] for r in rows} <= {"DigitsCLS", "ShapesCLS"}
    stamp = (out / "pretrain-data" / "train.jsonl").stat().st_mtime_ns
    assert stage_rehearsal_data(settings, data, out) == made  # made once: a rerun reuses it
    assert (out / "pretrain-data" / "train.jsonl").stat().st_mtime_ns == stamp
    # the seed is the base's: made again, the same examples
    again = stage_rehearsal_data(build(ReproduceSettings, dict(out=str(tmp_path / "run2"), init=str(base))), data,
                                 tmp_path / "run2")
    assert [r["response"] for r in load_rows(again, "train")] == [r["response"] for r in rows]
    other = tmp_path / "other-base"
    other.mkdir()
    (other / "pretrain_report.json").write_text((base / "pretrain_report.json").read_text().replace('"seed": 7',
                                                                                                   '"seed": 8'))
    seeded = stage_rehearsal_data(build(ReproduceSettings, dict(out=str(tmp_path / "run3"), init=str(other))), data,
                                  tmp_path / "run3")
    assert [Path(r["image"]).read_bytes() for r in load_rows(seeded, "train")] != [
        Path(r["image"]).read_bytes() for r in rows]  # another base's seed: other examples
    assert stage_rehearsal_data(build(ReproduceSettings, dict(out=str(out), init="tiny")), data, out) is None
    assert stage_rehearsal_data(build(ReproduceSettings, dict(out=str(out), init=str(tmp_path))), data, out) is None
    assert stage_rehearsal_data(build(ReproduceSettings, dict(out=str(out), init=str(base), replay="none")),
                                data, out) is None
    assert stage_rehearsal_data(build(ReproduceSettings, dict(out=str(out), init=str(base), replay=made)),
                                data, out) == made
