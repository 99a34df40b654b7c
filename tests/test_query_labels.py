"""Per-query labels (training.query_labels) at a tiny scale: each query is labelled by a fold model that did not
train on it; validation is read only to choose the margin and test never; the labels follow the evidence."""
from __future__ import annotations

import json
import shutil

import pytest

from msolomon.settings import build
from training.query_labels import QueryLabelSettings, choose_margin, label_records, run, summarise

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_layers": 1, "vision_dim": 32, "vision_depth": 1}
SETS = ["DigitsCLS", "ScenesVQA"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from msolomon.data.minimmeb import generate
    from training.synthesize import SynthesisSettings, synthesize

    root = tmp_path_factory.mktemp("ql")
    data = root / "minimmeb"
    generate(data, seed=0, scale="tiny", datasets=SETS)
    synth = root / "synthesis.jsonl"
    synthesize(SynthesisSettings(data=str(data), out=str(synth), backend="oracle", seed=0, progress=False))
    return data, synth


def _settings(out, data, synth, **kw) -> QueryLabelSettings:
    values = dict(data=str(data), augmentations=str(synth), out=str(out), init="tiny", tiny=TINY, max_steps=2,
                  batch_size=8, max_new_tokens=4, margins=[0.0, 0.05])
    values.update(kw)
    return build(QueryLabelSettings, values)


def _labels(out) -> list[dict]:
    return [json.loads(x) for x in (out / "labels.jsonl").read_text().splitlines()]


def test_labels_come_from_models_that_did_not_train_on_the_query(tiny_data, tmp_path):
    from training.collator import fold_of
    from training.train import TrainSettings, load_rows

    data, synth = tiny_data
    out = tmp_path / "labels"
    run(_settings(out, data, synth))
    records = _labels(out)
    from msolomon.data.mmeb import read_train_dataset

    train_ids = {r.id for n in SETS for r in read_train_dataset(data / "train", n, data)}
    assert {r["id"] for r in records} == train_ids and len(records) == len(train_ids)  # every query, once
    margin = json.loads((out / "margin.json").read_text())["margin"]
    for r in records:
        ev = r["evidence"]
        assert ev["fold"] == fold_of(r["id"], 2)
        assert r["label"] == ("augment" if ev["gain"] > margin else "embed")
        assert ev["gain"] == pytest.approx(ev["margin_always"] - ev["margin_never"], abs=1e-5)
    # the rows each fold model trained on, rebuilt from the settings it saved: none of the queries it labelled
    for k in range(2):
        saved = json.loads((out / f"fold{k}" / "train_settings.json").read_text())["config"]
        assert saved["holdout"] == f"{k}/2" and saved["embedded_twins"] == 1.0
        config = TrainSettings(data=saved["data"], out=str(out / f"fold{k}"), holdout=saved["holdout"],
                             datasets=saved["datasets"], limit=saved["limit"], labeling=saved["labeling"])
        trained = {r.id for r in load_rows(config)}
        labelled = {r["id"] for r in records if r["evidence"]["fold"] == k}
        assert labelled and not trained & labelled and trained | labelled == train_ids
    # a rerun skips every stage: the views keep their files (so the rankings are not redone) and the labels are equal
    view = out / "views" / "fold0" / "DigitsCLS" / "test.jsonl"
    stamp = view.stat().st_mtime_ns
    def stored_parts():  # each dataset's stored ranking (the sidecar's manifest is rewritten on every run)
        return {p: p.stat().st_mtime_ns for p in (out / "eval").rglob("*.parts/*.json") if p.name != "manifest.json"}

    parts = stored_parts()
    run(_settings(out, data, synth))
    assert view.stat().st_mtime_ns == stamp and _labels(out) == records
    assert parts and stored_parts() == parts
    summary = json.loads((out / "labels.summary.json").read_text())
    assert summary["n"] == len(records) and set(summary["datasets"]) == set(SETS)
    # each fold model's own training time, kept by its folder (a fold may train in a process of its own)
    assert all(summary["timings_s"][f"train_fold{k}_s"] > 0 for k in range(2))
    assert "margin" in (out / "labels.summary.md").read_text()


def test_labels_do_not_change_when_validation_or_test_change(tiny_data, tmp_path):
    data, synth = tiny_data
    own = tmp_path / "minimmeb"
    shutil.copytree(data, own)
    first = tmp_path / "a"
    run(_settings(first, own, synth, margins=[0.02]))  # one margin: nothing to choose, validation not read
    before = _labels(first)
    for split in ("val", "test"):  # overwrite every validation and test file with rows that cannot be read
        for f in (own / split).rglob("*.jsonl"):
            f.write_text("not json\n")
    second = tmp_path / "b"
    shutil.copytree(first / "fold0", second / "fold0")  # the same fold models (they read train only)
    shutil.copytree(first / "fold1", second / "fold1")
    run(_settings(second, own, synth, margins=[0.02]))
    assert _labels(second) == before
    assert not (second / "eval" / "fold0.val.json").exists()


def test_the_margin_is_chosen_by_one_model_judged_by_another():
    def runs(gains, never, always):
        return {"D": {"never": [{"correct": c, "margin": 0.0} for c in never],
                      "always": [{"correct": c, "margin": g} for g, c in zip(gains, always)]}}

    # model 0's gains: 0.3 where augmenting is right for model 1, 0.01 (a near-tie) where it is wrong
    m0 = runs([0.3, 0.3, 0.01, 0.01], [False, False, True, True], [True, True, False, False])
    m1 = runs([0.3, 0.3, 0.01, 0.01], [False, False, True, True], [True, True, False, False])
    chosen = choose_margin([m0, m1], [0.0, 0.05, 0.5], tolerance=0.0)
    table = {r["margin"]: r for r in chosen["table"]}
    assert table[0.0]["routed_p_at_1"] == 50.0 and table[0.05]["routed_p_at_1"] == 100.0
    assert table[0.5]["routed_p_at_1"] == 50.0 and chosen["margin"] == 0.05
    # within the tolerance the largest margin wins (fewer augmentations)
    assert choose_margin([m0, m1], [0.0, 0.05, 0.5], tolerance=60.0)["margin"] == 0.5
    # a budget on the augment rate rules out margins above it
    assert choose_margin([m0, m1], [0.0, 0.05, 0.5], tolerance=0.0, max_augment_rate=0.0)["margin"] == 0.5


def test_label_records_and_summary():
    ev = {0: {"D": {"never": [{"correct": True, "margin": 0.1, "rank": 0, "augmentation": None},
                              {"correct": False, "margin": -0.1, "rank": 2, "augmentation": None}],
                    "always": [{"correct": False, "margin": -0.05, "rank": 1, "augmentation": "x"},
                               {"correct": True, "margin": 0.2, "rank": 0, "augmentation": "y"}]}}}
    recs = label_records(ev, {0: {"D": ["D:train:0", "D:train:1"]}}, tau=0.05)
    assert [r["label"] for r in recs] == ["embed", "augment"]
    s = summarise(recs)["datasets"]["D"]
    assert (s["helped"], s["hurt"], s["augment_rate"]) == (1, 1, 0.5)


def test_bad_settings_are_refused_before_any_training(tmp_path):
    from training.query_labels import main

    with pytest.raises(SystemExit, match="--folds 1"):
        main(["--data", str(tmp_path), "--augmentations", __file__, "--out", str(tmp_path / "o"), "--folds", "1"])
    with pytest.raises(SystemExit, match="no such file"):
        main(["--data", str(tmp_path), "--augmentations", str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="--only-fold 2: a fold from 0 to 1"):
        main(["--data", str(tmp_path), "--augmentations", __file__, "--out", str(tmp_path / "o"), "--only-fold", "2"])
    assert not (tmp_path / "o").exists()


def test_only_fold_trains_that_fold_model_and_labels_nothing(tiny_data, tmp_path, monkeypatch):
    """Folds run as parallel processes (`--only-fold K`), then one run without it labels from their models."""
    import training.query_labels as ql

    data, synth = tiny_data
    trained = []
    monkeypatch.setattr(ql, "train_fold", lambda s, k, out: trained.append(k) or out / f"fold{k}" / "final")
    out = tmp_path / "labels"
    assert ql.run(_settings(out, data, synth, only_fold=1)) == out / "fold1" / "final"
    assert trained == [1] and not (out / "labels.jsonl").exists() and not (out / "timings.json").exists()


def test_the_per_dataset_rule_is_scored_under_the_same_protocol():
    from training.query_labels import dataset_routing

    def runs(never, always):
        return {"D": {"never": [{"correct": c} for c in never], "always": [{"correct": c} for c in always]},
                "E": {"never": [{"correct": c} for c in always], "always": [{"correct": c} for c in never]}}

    # augmenting helps D (3 of 4 against 1 of 4) and hurts E, for both models
    a = runs([True, False, False, False], [True, True, True, False])
    acc, rate = dataset_routing(a, a)
    assert acc == 75.0 and rate == 0.5  # D augmented, E embedded: 75% on both
