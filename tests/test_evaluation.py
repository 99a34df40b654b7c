"""The evaluation harness against a stand-in model with known embeddings (CPU, no torch, fast).

The stand-in embeds every candidate as a one-hot vector keyed on (text, image file name), and each query as
the one-hot (or a blend, to make ties) of a target it was told to point at: one target for the `/embed` path,
one for the `/augment` path, and a fixed p_augment. So every number the harness reports can be recomputed
here by brute force.
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from msolomon import evaluation as ev
from msolomon.inputs import QueryResult
from msolomon.metrics import is_correct

ROOT = Path(__file__).resolve().parents[1]

# dataset -> (meta_task, ood); the MMEB-eval layout uses real MMEB names with the same taxonomy
DATASETS = {"CatCls": ("classification", False), "ColorVQA": ("vqa", False), "ShapeOOD": ("classification", True)}
MMEB_NAMES = {"CatCls": "ImageNet-1K", "ColorVQA": "OK-VQA", "ShapeOOD": "ImageNet-R"}
LAT_EMBED, LAT_AUG = 10.0, 30.0


def _key(text, image) -> tuple:
    return (text or None, Path(str(image)).name if image else None)


class StandIn:
    """Known embeddings; counts every candidate and query it encodes."""

    def __init__(self, vocab: list[tuple], specs: dict[str, dict]):
        self.pos = {k: i for i, k in enumerate(vocab)}
        self.dim = len(vocab) + 1  # last axis: "points at nothing"
        self.specs = specs
        self.candidate_counts: Counter = Counter()
        self.candidate_calls = 0
        self.query_calls: Counter = Counter()  # (qid, mode) -> n
        self.batch_sizes: list[int] = []  # one entry per encode_queries call

    def vec(self, target) -> np.ndarray:
        """target: a key, a list of keys (blend: a tie between them) or None (orthogonal to all candidates)."""
        v = np.zeros(self.dim, np.float32)
        keys = target if isinstance(target, list) else [target]
        for k in keys:
            if k is None:
                v[-1] = 1.0
            else:
                v[self.pos[k]] += 1.0
        return v / np.linalg.norm(v)

    def encode_candidates(self, candidates, batch_size=32, show_progress_bar=None):
        self.candidate_calls += 1
        keys = [_key(c.text, c.image) for c in candidates]
        self.candidate_counts.update(keys)
        return np.stack([self.vec(k) for k in keys]) if keys else np.zeros((0, self.dim), np.float32)

    def result(self, qid: str, mode: str, threshold: float = 0.5) -> QueryResult:
        s = self.specs[qid]
        aug = {"always": True, "never": False, "auto": s["p"] >= threshold}[mode]
        lat = (LAT_AUG if aug else LAT_EMBED) + s["jitter"]
        return QueryResult(
            decision="/augment" if aug else "/embed", p_augment=s["p"], augmentation=f"aug {qid}" if aug else None,
            embedding=self.vec(s["aug" if aug else "embed"]),
            timings={"preprocess": 1.0, "decide": 2.0, "generate": lat - 5.0 if aug else 0.0, "embed": 2.0,
                     "total": lat})

    def encode_queries(self, queries, augment="auto", threshold=0.5, batch_size=8, max_new_tokens=64,
                       show_progress_bar=None):
        assert batch_size == len(queries), "the harness sizes each call's batch itself"
        self.batch_sizes.append(len(queries))
        out = []
        for q in queries:
            qid = re.search(r"qid:(\S+)", q.text).group(1)
            self.query_calls[(qid, augment)] += 1
            out.append(self.result(qid, augment, threshold))
        if len(queries) > 1:  # a batch shares one clock: its rows' totals are not per-query latencies
            for r in out:
                r.timings = {"total": 999.0}
        return out


def _build(tmp: Path, seed: int = 0, layout: str = "minimmeb") -> tuple[Path, StandIn, dict]:
    """Three small datasets and a stand-in model that knows their answers.

    layout "minimmeb": DIR/minimmeb.json, DIR/test/NAME/test.jsonl, images under DIR.
    layout "mmeb": MMEB-eval as published, DIR/NAME/test-00000-of-00001.parquet (one dataset as jsonl), real MMEB
    names, images under a separate folder DIR/../images_root (pass it as image_root).
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    data = tmp / "bench"
    img_root = data if layout == "minimmeb" else tmp / "images_root"
    (img_root / "images").mkdir(parents=True)
    for name, color in [("red.png", (255, 0, 0)), ("circle.png", (0, 255, 0)), ("square.png", (0, 0, 255)),
                        ("q.png", (9, 9, 9))]:
        Image.new("RGB", (8, 8), color).save(img_root / "images" / name)
    vocab: list[tuple] = []
    specs: dict[str, dict] = {}
    rows_by_ds: dict[str, list[dict]] = {}
    meta = {}
    for short, (task, ood) in DATASETS.items():
        name = short if layout == "minimmeb" else MMEB_NAMES[short]
        if short == "CatCls":  # shared label set: heavy de-duplication
            pool = [(f"label {i}", "") for i in range(5)]
            n, k = 8, 4
        elif short == "ColorVQA":  # text answers, some with an image
            pool = [(f"answer {i}", "images/red.png" if i % 2 else "") for i in range(6)]
            n, k = 6, 3
        else:  # same text, different images: distinct candidates
            pool = [("a shape", "images/circle.png"), ("a shape", "images/square.png")] + \
                   [(f"shape {i}", "") for i in range(3)]
            n, k = 5, 3
        rows = []
        for qi in range(n):
            pick = rng.choice(len(pool), size=k, replace=False)
            cands = [pool[j] for j in pick]
            qid = f"{name}-{qi}"
            keys = [_key(t, im) for t, im in cands]
            choices = keys + [None]
            # point at the positive half the time, else at a negative or at nothing
            pick_target = lambda: keys[0] if rng.random() < 0.5 else choices[1 + rng.integers(len(choices) - 1)]
            specs[qid] = {
                "p": float(rng.choice([0.1, 0.3, 0.5, 0.7, 0.9])),
                "embed": pick_target(),
                "aug": pick_target(),
                "jitter": float(qi),
            }
            rows.append({"qry_text": f"<|image_1|> qid:{qid} what is it?" if short == "ColorVQA" else f"qid:{qid} x",
                         "qry_img_path": "images/q.png" if short == "ColorVQA" else "",
                         "tgt_text": [t for t, _ in cands], "tgt_img_path": [im for _, im in cands]})
            for kk in keys:
                if kk not in vocab:
                    vocab.append(kk)
        # a tie between the positive and a negative on the /augment path, and a miss on the /embed path
        first = [_key(t, im) for t, im in zip(rows[0]["tgt_text"], rows[0]["tgt_img_path"])]
        specs[f"{name}-0"].update({"aug": first[:2], "embed": None, "p": 0.9})
        rows_by_ds[name] = rows
        meta[name] = {"meta_task": task, "ood": ood, "splits": ["test"], "n_candidates": k}
        folder = data / "test" / name if layout == "minimmeb" else data / name
        folder.mkdir(parents=True)
        if layout == "mmeb" and short != "ColorVQA":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), folder / "test-00000-of-00001.parquet")
        else:
            (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if layout == "minimmeb":
        (data / "minimmeb.json").write_text(json.dumps({"datasets": meta}))
    return data, StandIn(vocab, specs), rows_by_ds


def _brute(model: StandIn, rows_by_ds: dict, mode: str, threshold: float = 0.5) -> dict[str, dict]:
    """Per dataset: P@1 (positive strictly above all others), augment rate, mean latency — no de-duplication."""
    out = {}
    for name, rows in rows_by_ds.items():
        correct, aug, lat = [], [], []
        for r in rows:
            qid = re.search(r"qid:(\S+)", r["qry_text"]).group(1)
            res = model.result(qid, mode, threshold)
            C = np.stack([model.vec(_key(t, im)) for t, im in zip(r["tgt_text"], r["tgt_img_path"])])
            s = C @ res.embedding
            correct.append(bool(s[0] > s[1:].max()))
            aug.append(res.decision == "/augment")
            lat.append(res.timings["total"])
        out[name] = {"p": 100 * np.mean(correct), "aug": aug, "lat": lat}
    return out


@pytest.fixture()
def bench(tmp_path):
    return _build(tmp_path)


def test_tie_rule():
    assert is_correct(np.array([0.9, 0.1, 0.2]))
    assert not is_correct(np.array([0.5, 0.5, 0.1]))  # a tie for the top counts as wrong
    assert not is_correct(np.array([0.1, 0.5]))
    assert is_correct(np.array([0.3]))


@pytest.mark.parametrize("layout", ["minimmeb", "mmeb"])
def test_metrics_match_brute_force(tmp_path, layout):
    if layout == "mmeb":
        pytest.importorskip("pyarrow")
    data, model, rows = _build(tmp_path, layout=layout)
    image_root = tmp_path / "images_root" if layout == "mmeb" else None
    rep = ev.evaluate(model, data,
                      ev.EvalSettings(image_root=image_root, modes=("auto", "never", "always"),
                                      show_progress_bar=False),
                      out=tmp_path / "r.json")
    assert rep["benchmark"] == {"minimmeb": "minimmeb", "mmeb": "mmeb-eval"}[layout]
    short = {v: k for k, v in MMEB_NAMES.items()} if layout == "mmeb" else {k: k for k in DATASETS}
    assert rep["split"] == "test" and set(rep["modes"]) == {"auto", "never", "always"}
    for mode in ("auto", "never", "always"):
        m = rep["modes"][mode]
        brute = _brute(model, rows, mode)
        for name, b in brute.items():
            d = m["datasets"][name]
            assert d["p_at_1"] == pytest.approx(b["p"], abs=1e-3)
            assert d["n"] == len(rows[name])
            assert d["augment_rate"] == pytest.approx(np.mean(b["aug"]), abs=1e-4)
            assert d["latency_ms_mean"] == pytest.approx(np.mean(b["lat"]), abs=1e-3)
            assert (d["meta_task"], d["ood"]) == DATASETS[short[name]]
            k = len(rows[name][0]["tgt_text"])
            assert d["chance"] == pytest.approx(100 / k, abs=1e-3) and d["n_candidates"] == k
        p = {short[n]: b["p"] for n, b in brute.items()}
        assert m["overall"] == pytest.approx(np.mean(list(p.values())), abs=1e-3)
        assert m["ind"] == pytest.approx((p["CatCls"] + p["ColorVQA"]) / 2, abs=1e-3)
        assert m["ood"] == pytest.approx(p["ShapeOOD"], abs=1e-3)
        assert m["by_meta_task"] == pytest.approx(
            {"classification": (p["CatCls"] + p["ShapeOOD"]) / 2, "vqa": p["ColorVQA"]}, abs=1e-3)
        all_aug = [a for b in brute.values() for a in b["aug"]]
        all_lat = [x for b in brute.values() for x in b["lat"]]
        assert m["augment_rate"] == pytest.approx(np.mean(all_aug), abs=1e-4)  # micro: over all queries
        assert m["latency_ms"]["mean"] == pytest.approx(np.mean(all_lat), abs=1e-3)
        assert m["latency_ms"]["p50"] == pytest.approx(np.percentile(all_lat, 50), abs=1e-3)
        assert m["latency_ms"]["p95"] == pytest.approx(np.percentile(all_lat, 95), abs=1e-3)
    assert rep["modes"]["always"]["augment_rate"] == 1.0 and rep["modes"]["never"]["augment_rate"] == 0.0
    # the planted tie on the /augment path of each dataset's query 0 counts as wrong
    preds = [json.loads(x) for x in (tmp_path / "r.predictions.jsonl").read_text().splitlines()]
    tied = [p for p in preds if p["index"] == 0 and p["mode"] == "always"]
    assert len(tied) == 3 and all(not p["correct"] and p["top"][0]["score"] == p["top"][1]["score"] for p in tied)


def test_each_unique_candidate_encoded_once(bench):
    data, model, rows = bench
    ev.evaluate(model, data,
                ev.EvalSettings(modes="auto,never,always", thresholds=[0, 0.5, 1], show_progress_bar=False))
    assert model.candidate_calls == len(DATASETS)  # one call per dataset, shared by all modes and thresholds
    expected = set()
    for rs in rows.values():
        expected |= {_key(t, im) for r in rs for t, im in zip(r["tgt_text"], r["tgt_img_path"])}
    assert set(model.candidate_counts) == expected
    assert all(c == 1 for c in model.candidate_counts.values())
    # ("a shape", circle) and ("a shape", square) are different candidates
    assert model.candidate_counts[("a shape", "circle.png")] == model.candidate_counts[("a shape", "square.png")] == 1
    # each query encoded once per mode
    assert set(model.query_calls.values()) == {1}
    assert len(model.query_calls) == 3 * sum(len(r) for r in rows.values())


def test_resume_skips_done_work_and_keeps_predictions_unique(bench, tmp_path):
    data, model, rows = bench
    out = tmp_path / "res" / "report.json"
    n_q = {n: len(r) for n, r in rows.items()}
    ev.evaluate(model, data, ev.EvalSettings(modes=("auto",), datasets=["CatCls"], show_progress_bar=False), out=out)
    assert model.candidate_calls == 1

    model.query_calls.clear()
    model.candidate_calls = 0
    rep = ev.evaluate(model, data, ev.EvalSettings(modes=("auto",), show_progress_bar=False), out=out)
    assert model.candidate_calls == 2  # CatCls was done: skipped
    assert not any(q.startswith("CatCls") for q, _ in model.query_calls)
    assert set(rep["modes"]["auto"]["datasets"]) == set(DATASETS)

    model.query_calls.clear()
    model.candidate_calls = 0
    ev.evaluate(model, data, ev.EvalSettings(modes=("auto", "never"), show_progress_bar=False), out=out)
    assert model.candidate_calls == 3 and {m for _, m in model.query_calls} == {"never"}

    model.query_calls.clear()
    model.candidate_calls = 0
    rep2 = ev.evaluate(model, data, ev.EvalSettings(modes=("auto", "never"), show_progress_bar=False), out=out)
    assert model.candidate_calls == 0 and not model.query_calls  # all done: nothing re-encoded
    assert rep2["modes"]["auto"] == rep["modes"]["auto"]

    preds_path = out.with_name("report.predictions.jsonl")
    keys = [(p["dataset"], p["index"], p["mode"]) for p in map(json.loads, preds_path.read_text().splitlines())]
    assert len(keys) == len(set(keys)) == 2 * sum(n_q.values())

    # an interrupted run can leave the predictions file out of step with the stored parts: it is repaired
    lines = preds_path.read_text().splitlines()
    preds_path.write_text("\n".join(lines[:-3] + lines[:2]) + "\n")
    ev.evaluate(model, data, ev.EvalSettings(modes=("auto", "never"), show_progress_bar=False), out=out)
    keys = [(p["dataset"], p["index"], p["mode"]) for p in map(json.loads, preds_path.read_text().splitlines())]
    assert len(keys) == len(set(keys)) == 2 * sum(n_q.values())

    # a dataset whose files changed since is evaluated again, and its old predictions are replaced
    import os

    f = data / "test" / "CatCls" / "test.jsonl"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    model.query_calls.clear()
    model.candidate_calls = 0
    ev.evaluate(model, data, ev.EvalSettings(modes=("auto", "never"), show_progress_bar=False), out=out)
    assert model.candidate_calls == 1 and {q.split("-")[0] for q, _ in model.query_calls} == {"CatCls"}
    keys = [(p["dataset"], p["index"], p["mode"]) for p in map(json.loads, preds_path.read_text().splitlines())]
    assert len(keys) == len(set(keys)) == 2 * sum(n_q.values())

    # other settings refuse to mix with stored results, unless asked to start over
    with pytest.raises(ev.EvaluationError, match="--fresh"):
        ev.evaluate(model, data, ev.EvalSettings(modes=("auto",), limit=2, show_progress_bar=False), out=out)
    rep3 = ev.evaluate(model, data, ev.EvalSettings(modes=("auto",), limit=2, fresh=True, show_progress_bar=False),
                       out=out)
    assert all(d["n"] == 2 for d in rep3["modes"]["auto"]["datasets"].values())
    assert len(preds_path.read_text().splitlines()) == 2 * len(DATASETS)


def test_threshold_sweep_without_reencoding(bench, tmp_path):
    data, model, rows = bench
    rep = ev.evaluate(model, data, ev.EvalSettings(modes=("auto",), thresholds=[0, 0.5, 1.01], show_progress_bar=False),
                      out=tmp_path / "t.json")
    assert set(rep["modes"]) == {"auto", "never", "always"}  # the sweep ran the two paths it needs
    curve = {e["threshold"]: e for e in rep["thresholds"]}
    for t, mode in [(0.0, "always"), (1.01, "never"), (0.5, "auto")]:
        e, m = curve[t], rep["modes"][mode]
        for k in ("overall", "ind", "ood", "augment_rate"):
            assert e[k] == pytest.approx(m[k], abs=1e-3), (t, k)
        assert e["latency_ms_mean"] == pytest.approx(m["latency_ms"]["mean"], abs=1e-3)
        assert e["by_meta_task"] == pytest.approx(m["by_meta_task"], abs=1e-3)
    assert curve[0.0]["augment_rate"] == 1.0 and curve[1.01]["augment_rate"] == 0.0
    assert sum(model.query_calls.values()) == 3 * sum(len(r) for r in rows.values())


def test_output_files_exist_and_parse(bench, tmp_path, monkeypatch, capsys):
    from PIL import Image

    data, model, rows = bench
    monkeypatch.setattr("msolomon.evaluation.cli.load_model", lambda path: model)
    out = tmp_path / "cli" / "rep.json"
    rc = ev.main(["--model", "stand-in", "--data", str(data), "--out", str(out), "--thresholds", "0,0.5,1",
                  "--quiet"])
    assert rc == 0
    assert "| mode |" in capsys.readouterr().out
    rep = json.loads(out.read_text())
    assert rep["model"] == "stand-in" and rep["data"] == str(data)
    for m in rep["modes"].values():
        assert {"overall", "ind", "ood", "by_meta_task", "augment_rate", "latency_ms", "datasets"} <= set(m)
        assert set(m["latency_ms"]) >= {"mean", "p50", "p95"}
        for d in m["datasets"].values():
            assert {"meta_task", "ood", "n", "p_at_1", "augment_rate", "latency_ms_mean"} <= set(d)
    md = out.with_suffix(".md").read_text()
    assert "| auto |" in md and "| never |" in md and "ShapeOOD" in md and "threshold" in md
    with Image.open(out.with_suffix(".png")) as im:
        assert im.size[0] > 100
    preds = [json.loads(x) for x in out.with_name("rep.predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 3 * sum(len(r) for r in rows.values())
    p = preds[0]
    assert {"dataset", "index", "mode", "query", "image", "decision", "p_augment", "augmentation", "top"} <= set(p)
    assert 1 <= len(p["top"]) <= 5 and {"index", "text", "image", "score", "correct"} <= set(p["top"][0])
    assert any(q["image"] and q["image"].endswith("q.png") for q in preds)


@pytest.mark.parametrize("extra, message", [
    (["--modes", "auto,sometimes"], "unknown mode 'sometimes'"),
    (["--limit", "0"], "--limit must be a positive integer"),
    (["--limit", "-3"], "--limit must be a positive integer"),
    (["--thresholds", "0,abc"], "--thresholds must be comma-separated numbers"),
    (["--threshold", "1.5"], "--threshold must be in [0, 1]"),
    (["--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--latency-queries", "5"], "--latency-queries needs --batch-size > 1"),
    (["--batch-size", "4", "--latency-queries", "-1"], "--latency-queries must be an integer >= 0"),
    (["--datasets", "CatCls,Nope"], "unknown dataset 'Nope'"),
    (["--model", "/no/such/model"], "model folder /no/such/model does not exist"),
])
def test_bad_arguments_exit_2(bench, tmp_path, capsys, extra, message):
    data, _, _ = bench
    with pytest.raises(SystemExit) as e:
        ev.main(["--data", str(data), "--out", str(tmp_path / "x.json"), "--quiet"] + extra)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_data_folder_exits_2_from_the_command_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "msolomon.evaluation", "--data", str(tmp_path / "nope"),
                           "--out", str(tmp_path / "x.json")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "data folder not found" in proc.stderr and "Traceback" not in proc.stderr


def test_with_the_tiny_model(bench, tmp_path, tiny_model):
    """The harness against the real MSolomon API (untrained tiny model): auto agrees with the sweep at its threshold."""
    data, _, _ = bench
    rep = ev.evaluate(tiny_model, data,
                      ev.EvalSettings(limit=2, thresholds=[0, 0.5, 1.01], max_new_tokens=4, show_progress_bar=False),
                      out=tmp_path / "tiny.json", model_name="tiny")
    curve = {e["threshold"]: e for e in rep["thresholds"]}
    auto = rep["modes"]["auto"]
    assert curve[0.5]["overall"] == pytest.approx(auto["overall"], abs=1e-3)
    assert curve[0.5]["augment_rate"] == pytest.approx(auto["augment_rate"], abs=1e-4)
    for mode, t in (("always", 0.0), ("never", 1.01)):
        assert curve[t]["overall"] == pytest.approx(rep["modes"][mode]["overall"], abs=1e-3)
    assert all(m["latency_ms"]["mean"] > 0 for m in rep["modes"].values())
    assert all(d["n"] == 2 for d in auto["datasets"].values())


def test_interrupted_dataset_resumes_without_reencoding_candidates(bench, tmp_path):
    data, model, rows = bench
    out = tmp_path / "crash.json"
    real = model.encode_queries

    def flaky(queries, augment="auto", **kw):
        if augment == "never":
            raise KeyboardInterrupt  # the run dies in the dataset's second mode
        return real(queries, augment=augment, **kw)

    model.encode_queries = flaky
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate(model, data, ev.EvalSettings(modes=("auto", "never"), datasets=["CatCls"], show_progress_bar=False),
                    out=out)
    assert model.candidate_calls == 1
    model.encode_queries = real
    model.query_calls.clear()
    rep = ev.evaluate(model, data,
                      ev.EvalSettings(modes=("auto", "never"), datasets=["CatCls"], show_progress_bar=False), out=out)
    assert model.candidate_calls == 1  # the candidate embeddings were kept in the sidecar
    assert {m for _, m in model.query_calls} == {"never"}  # auto was already done
    assert rep["modes"]["never"]["datasets"]["CatCls"]["n"] == len(rows["CatCls"])
    assert not list((tmp_path / "crash.parts").glob("*.npy"))  # dropped once the dataset is complete


def _write_train(data: Path, name: str, pairs: list[tuple[str, str]]) -> None:
    folder = data / "train" / name
    folder.mkdir(parents=True)
    folder.joinpath("original.jsonl").write_text("".join(
        json.dumps({"qry": q, "qry_image_path": "images/q.png", "pos_text": p, "pos_image_path": ""}) + "\n"
        for q, p in pairs))


def test_report_carries_floors_and_intervals(tmp_path):
    """Every dataset of every mode has p_at_1, ci95, chance and floor_text_only (docs/architecture.md, "The
    evaluation report"), the floor follows its rule, and the macro aggregates have intervals; markdown and plot
    show them."""
    from PIL import Image

    data, model, rows = _build(tmp_path)
    cat = rows["CatCls"]
    pos = [r["tgt_text"][0] for r in cat]
    other = next(f"label {i}" for i in range(5) if f"label {i}" != pos[1])
    # CatCls gets a train split: query 0's template (modulo case and spaces) answers its positive, query 1's a
    # wrong label, and three rows of another template make "label 4" the dataset's most frequent answer
    _write_train(data, "CatCls", [("QID:CatCls-0   X", pos[0]), ("qid:CatCls-1 x", other)]
                 + [("another template", "label 4")] * 3)
    expected = {0: pos[0], 1: other}
    hits = [expected.get(i, "label 4") == p for i, p in enumerate(pos)]
    rep = ev.evaluate(model, data, ev.EvalSettings(modes=("auto", "never", "always"), show_progress_bar=False),
                      out=tmp_path / "r.json")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved == json.loads(json.dumps(rep))
    preds = [json.loads(x) for x in (tmp_path / "r.predictions.jsonl").read_text().splitlines()]
    for mode, m in saved["modes"].items():
        for name, d in m["datasets"].items():
            assert {"p_at_1", "ci95", "chance", "floor_text_only", "floor_rule"} <= set(d)
            lo, hi = d["ci95"]
            assert lo <= d["p_at_1"] <= hi
            mine = sorted((p["index"], p["correct"]) for p in preds if p["dataset"] == name and p["mode"] == mode)
            assert d["correct_bits"] == "".join("1" if c else "0" for _, c in mine)
            if name == "CatCls":
                assert d["floor_rule"] == "majority-per-template"
                assert d["floor_text_only"] == pytest.approx(100 * np.mean(hits), abs=1e-3)
            else:  # ColorVQA and ShapeOOD have no train split
                assert d["floor_rule"] == "chance" and d["floor_text_only"] == d["chance"]
        for key in ("overall", "ind", "ood"):
            lo, hi = m[f"{key}_ci95"]
            assert lo <= m[key] <= hi
        assert m["floor_text_only_macro"]["overall"] == pytest.approx(
            np.mean([d["floor_text_only"] for d in m["datasets"].values()]), abs=1e-3)
    assert saved["metric"]["floor_rules"] == {"CatCls": "majority-per-template", "ColorVQA": "chance",
                                              "ShapeOOD": "chance"}
    assert "majority-per-template" in saved["metric"]["floor_text_only"]
    md = (tmp_path / "r.md").read_text()
    assert "| chance | text-only floor |" in md and "P@1 [95% CI]" in md
    cat_line = next(line for line in md.splitlines() if line.startswith("| CatCls |"))
    assert f"| {100 * np.mean(hits):.1f} | majority |" in cat_line
    with Image.open(tmp_path / "r.png") as im:
        assert im.size[0] > 1000  # two panels: accuracy vs latency, and per-dataset P@1 with floor and chance
    # the floor covers the evaluated queries: with --limit, the first N
    rep2 = ev.evaluate(model, data, ev.EvalSettings(modes=("never",), limit=2, show_progress_bar=False),
                       out=tmp_path / "l.json")
    assert rep2["modes"]["never"]["datasets"]["CatCls"]["floor_text_only"] == pytest.approx(100 * np.mean(hits[:2]))


class HashModel:
    """Embeddings from a hash of the input: a model that has learned nothing, for the real MiniMMEB layout."""

    dim = 16

    def _vec(self, *parts) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha1(repr(parts).encode()).digest()[:4], "little")
        v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        return v / np.linalg.norm(v)

    def encode_candidates(self, candidates, batch_size=32, show_progress_bar=None):
        return np.stack([self._vec(c.text, str(c.image)) for c in candidates])

    def encode_queries(self, queries, augment="auto", threshold=0.5, batch_size=1, max_new_tokens=64,
                       show_progress_bar=None):
        q = queries[0]
        return [QueryResult(decision="/embed", p_augment=0.2, augmentation=None,
                            embedding=self._vec(q.text, str(q.image)), timings={"total": 1.0})]


def test_floors_on_a_generated_minimmeb(tmp_path):
    """On MiniMMEB's own layout the train rows come from DIR/train/NAME/original.jsonl: a VQA set gets the majority
    floor, an image-positive set (text-to-image retrieval) and an out-of-distribution set (no train) get chance.
    The VQA floor is checked against a hand-made train split and three evaluated queries whose majority-per-template
    answers are known: 2 of 3 right, 66.67."""
    from msolomon.data.minimmeb import generate

    data = tmp_path / "mm"
    generate(data, seed=0, scale="tiny", datasets=["DigitsVQA", "ScenesT2I", "DigitsR"], progress=False)
    read = lambda p: [json.loads(x) for x in p.read_text().splitlines() if x.strip()]  # noqa: E731
    # the first three test queries get three templates of their own (their rows are otherwise as generated)
    test_file = data / "test" / "DigitsVQA" / "test.jsonl"
    test = read(test_file)
    prefix = "<|image_1|> Represent the given image with the following question: "
    for row, template in zip(test, ("How many rings?", "Which digit is larger?", "What is the product?")):
        row["qry_text"] = prefix + template
    test_file.write_text("".join(json.dumps(r) + "\n" for r in test))
    pos = [r["tgt_text"][0] for r in test[:3]]
    wrong = "not an answer"
    assert wrong not in pos
    # a hand-made train split: query 0's template answers its positive 2 times out of 3 (those two spelt with other
    # case and spaces: the template is the normalised text), query 1's template answers something else 2 times out
    # of 3, query 2's template is not in training and the answer seen most often overall (4 times) is query 2's
    # positive. Right: queries 0 and 2, wrong: query 1.
    train = ([(prefix + "how many   RINGS?", pos[0]), (prefix + " HOW MANY RINGS? ", f" {pos[0]} "),
              (prefix + "How many rings?", wrong)]
             + [(prefix + "Which digit is larger?", wrong)] * 2 + [(prefix + "Which digit is larger?", pos[1])]
             + [(prefix + "Is it a digit?", pos[2])] * 4)
    if pos[2] in (pos[0], pos[1], wrong):  # the fallback must stay query 2's positive
        train += [(prefix + "Is it a digit?", pos[2])] * 3
    (data / "train" / "DigitsVQA" / "original.jsonl").write_text("".join(
        json.dumps({"id": f"DigitsVQA:train:{i}", "qry": q, "qry_image_path": "", "pos_text": a,
                    "pos_image_path": "", "neg_text": "", "neg_image_path": ""}) + "\n"
        for i, (q, a) in enumerate(train)))
    rep = ev.evaluate(HashModel(), data, ev.EvalSettings(modes=("never",), limit=3, show_progress_bar=False),
                      out=tmp_path / "g.json", model_name="hash")
    ds = rep["modes"]["never"]["datasets"]
    assert rep["metric"]["floor_rules"] == {"DigitsR": "chance", "DigitsVQA": "majority-per-template",
                                            "ScenesT2I": "chance"}
    assert ds["DigitsVQA"]["n"] == 3
    assert ds["DigitsVQA"]["floor_text_only"] == pytest.approx(100 * 2 / 3, abs=1e-3)  # 66.67
    for name in ("ScenesT2I", "DigitsR"):
        n_cands = [len(r["tgt_text"]) for r in read(data / "test" / name / "test.jsonl")[:3]]
        assert ds[name]["floor_text_only"] == ds[name]["chance"] == pytest.approx(np.mean([100 / k for k in n_cands]))
    assert all(d["ci95"][0] <= d["p_at_1"] <= d["ci95"][1] for d in ds.values())


def test_timed_rows_are_evenly_spaced():
    assert ev.timed_rows(5, None) == {0, 1, 2, 3, 4}
    assert ev.timed_rows(5, 9) == {0, 1, 2, 3, 4}
    assert ev.timed_rows(5, 0) == set()
    assert ev.timed_rows(101, 3) == {0, 50, 100}
    assert len(ev.timed_rows(500, 100)) == 100 and max(ev.timed_rows(500, 100)) == 499


def test_batched_accuracy_with_a_timed_sample(bench, tmp_path):
    """--batch-size: the same correctness and decisions as one-at-a-time, but latency only from the timed queries
    (encoded alone), and the sweep and the report still work."""
    data, model, rows = bench
    one = ev.evaluate(model, data,
                      ev.EvalSettings(modes="auto,never,always", thresholds=[0, 0.5, 1.01], show_progress_bar=False))
    model.batch_sizes.clear()
    rep = ev.evaluate(model, data,
                      ev.EvalSettings(modes="auto,never,always", thresholds=[0, 0.5, 1.01], show_progress_bar=False,
                                      batch_size=4, latency_queries=2), out=tmp_path / "b.json")
    assert max(model.batch_sizes) == 4
    assert model.batch_sizes.count(1) == 3 * 2 * len(DATASETS)  # two timed queries per dataset and mode
    for mode in ("auto", "never", "always"):
        a, b = one["modes"][mode], rep["modes"][mode]
        assert (a["overall"], a["augment_rate"]) == (b["overall"], b["augment_rate"])
        for name, d in b["datasets"].items():
            assert d["correct_bits"] == a["datasets"][name]["correct_bits"]
            n = len(rows[name])
            timed = sorted(ev.timed_rows(n, 2))
            brute = _brute(model, {name: rows[name]}, mode)[name]["lat"]
            assert d["latency_ms_mean"] == pytest.approx(np.mean([brute[i] for i in timed]), abs=1e-3)
    for e1, e2 in zip(one["thresholds"], rep["thresholds"]):
        assert e1["overall"] == e2["overall"] and e2["latency_ms_mean"] is not None
    assert rep["settings"]["batch_size"] == 4 and rep["settings"]["timed_per_dataset"] == 2
    assert "evenly spaced" in rep["metric"]["latency_ms"] and "evenly spaced" in (tmp_path / "b.md").read_text()
    preds = [json.loads(x) for x in (tmp_path / "b.predictions.jsonl").read_text().splitlines()]
    assert sum(p["latency_ms"] is not None for p in preds) == 3 * 2 * len(DATASETS)


def test_batched_evaluation_of_the_tiny_model_matches_one_at_a_time(bench, tiny_model):
    """The real MSolomon in batches (padding, decoding rows leaving the batch) decides and ranks as it does alone."""
    data, _, _ = bench
    kw = dict(modes="auto,always", limit=4, max_new_tokens=4, show_progress_bar=False)
    one = ev.evaluate(tiny_model, data, ev.EvalSettings(**kw), model_name="tiny")
    batched = ev.evaluate(tiny_model, data, ev.EvalSettings(batch_size=4, latency_queries=1, **kw), model_name="tiny")
    for mode in ("auto", "always"):
        for name, d in one["modes"][mode]["datasets"].items():
            b = batched["modes"][mode]["datasets"][name]
            assert (b["correct_bits"], b["augment_rate"]) == (d["correct_bits"], d["augment_rate"]), (mode, name)
            assert b["latency_ms_mean"] > 0


def test_the_gate_margin_runs_auto_as_a_cascade(bench, tiny_model):
    """--gate-margin: with every query wanting to augment (threshold 0), a margin every search clears gives the
    never path's results and augments nothing; one no search clears gives the always path's."""
    data, _, _ = bench
    kw = dict(limit=3, max_new_tokens=4, threshold=0.0, show_progress_bar=False)
    plain = ev.evaluate(tiny_model, data, ev.EvalSettings(modes="never,always", **kw), model_name="tiny")
    sure = ev.evaluate(tiny_model, data, ev.EvalSettings(modes="auto", gate_margin=0.0, **kw), model_name="tiny")
    unsure = ev.evaluate(tiny_model, data, ev.EvalSettings(modes="auto", gate_margin=3.0, **kw), model_name="tiny")
    for name, never in plain["modes"]["never"]["datasets"].items():
        gated = sure["modes"]["auto"]["datasets"][name]
        assert (gated["correct_bits"], gated["augment_rate"]) == (never["correct_bits"], 0.0), name
        kept = unsure["modes"]["auto"]["datasets"][name]
        assert (kept["correct_bits"], kept["augment_rate"]) == (
            plain["modes"]["always"]["datasets"][name]["correct_bits"], 1.0), name
    assert sure["settings"]["gate_margin"] == 0.0 and plain["settings"]["gate_margin"] is None
    with pytest.raises(ev.EvaluationError, match="--gate-margin must be a number >= 0"):
        ev.EvalSettings(gate_margin=-1)
