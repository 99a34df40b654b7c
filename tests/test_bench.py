"""Performance plumbing: the threads helper, the index chooser, `--threads` on every command line, and each
bench/ script run once at a tiny size (so the benchmarks cannot rot; their figures are not checked here)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def restore_threads():
    import torch

    from msolomon import runtime

    before, applied = torch.get_num_threads(), dict(runtime._applied)
    yield
    torch.set_num_threads(before)
    runtime._applied.clear()
    runtime._applied.update(applied)


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import does: its settings dataclass's annotations are read there
    spec.loader.exec_module(module)
    return module


# --- threads ---------------------------------------------------------------------------------------------------

def test_default_threads_follows_the_environment_else_half_the_cores(monkeypatch):
    from msolomon import runtime

    monkeypatch.delenv("MSOLOMON_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "available_cores", lambda: 8)
    assert runtime.default_threads() == 4
    monkeypatch.setattr(runtime, "available_cores", lambda: 1)
    assert runtime.default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert runtime.default_threads() == 3
    monkeypatch.setenv("MSOLOMON_THREADS", "2")
    assert runtime.default_threads() == 2
    monkeypatch.setenv("MSOLOMON_THREADS", "zero")  # not a count: ignored
    assert runtime.default_threads() == 3


@pytest.mark.parametrize("bad", [0, -1, "two", 1.5, True, None])
def test_check_threads_refuses_what_is_not_a_positive_integer(bad):
    from msolomon.runtime import check_threads

    with pytest.raises(ValueError, match="threads must be an integer of at least 1"):
        check_threads(bad)


def test_set_threads_sets_torch_once_and_returns_the_count(restore_threads):
    import torch

    from msolomon.runtime import set_threads, threads_info

    assert set_threads(1) == 1 and torch.get_num_threads() == 1
    assert set_threads(2) == 2 and torch.get_num_threads() == 2
    info = threads_info()
    assert info["torch_threads"] == 2 and info["cores"] >= 1


@pytest.mark.parametrize("command", [
    ["-m", "msolomon.evaluation"], ["-m", "training.train"], ["-m", "training.synthesize"],
    ["examples/quickstart.py"], ["bench/latency.py"], ["bench/throughput.py"], ["bench/index.py"], ["bench/train.py"],
    ["bench/pretrain_ablation.py"], ["bench/forgetting.py"], ["bench/grounding.py"], ["-m", "training.query_labels"],
])
def test_every_command_that_runs_a_model_takes_threads(command):
    bad = subprocess.run([sys.executable, *command, "--threads", "0"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "--threads must be an integer of at least 1" in bad.stderr


# --- the index chooser -----------------------------------------------------------------------------------------

def test_choose_index_by_corpus_size():
    from msolomon.index import FLAT_MAX, HNSW_MAX, choose_index, ivf_lists

    assert choose_index(0).factory == "Flat" and choose_index(FLAT_MAX).factory == "Flat"
    mid = choose_index(FLAT_MAX + 1)
    assert mid.factory.startswith("HNSW") and mid.ef_search and mid.nprobe is None
    big = choose_index(HNSW_MAX * 4, dim=256)
    lists = ivf_lists(HNSW_MAX * 4)
    assert big.factory == f"OPQ64,IVF{lists},PQ64x8" and big.nprobe == lists // 16  # a sixteenth, as at 1M
    # PQ cuts the vector into equal parts: OPQ rotates a 30-d vector onto 28 dimensions for 7 one-byte codes
    odd = choose_index(HNSW_MAX + 1, dim=30).factory
    assert odd.startswith("OPQ7_28,IVF") and odd.endswith(",PQ7x8")
    with pytest.raises(ValueError, match="give dim"):
        choose_index(HNSW_MAX + 1)
    assert [ivf_lists(n) for n in (1, 10_000, 100_000, 1_000_000)] == [1, 128, 256, 1024]
    with pytest.raises(ValueError):
        choose_index(-1)


def test_auto_factory_builds_what_the_chooser_picks_and_keeps_its_settings(tmp_path, monkeypatch):
    import faiss

    from msolomon import VectorIndex
    from msolomon.index import ivf_lists
    from msolomon.index import vector as index_module

    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert VectorIndex.build(x, factory="auto").factory == "Flat"
    monkeypatch.setattr(index_module, "FLAT_MAX", 100)
    hnsw = VectorIndex.build(x, factory="auto")
    assert hnsw.factory == "HNSW32" and hnsw.index.hnsw.efSearch == index_module.HNSW_EF_SEARCH
    assert [h.id for h in hnsw.search(x[5], k=1)] == [5]
    hnsw.save(tmp_path / "idx")
    assert VectorIndex.load(tmp_path / "idx").index.hnsw.efSearch == index_module.HNSW_EF_SEARCH
    monkeypatch.setattr(index_module, "HNSW_MAX", 200)
    # IVF-PQ with an OPQ rotation in front; 4-bit codes here, as 8-bit ones take faiss a minute to train
    monkeypatch.setattr(index_module, "ivf_pq_factory", lambda n, dim: f"OPQ4,IVF{ivf_lists(n)},PQ4x4")
    ivf = VectorIndex.build(x, factory="auto")
    lists = faiss.extract_index_ivf(ivf.index)
    assert ivf.factory == f"OPQ4,IVF{lists.nlist},PQ4x4" and lists.nprobe == index_module.ivf_pq_nprobe(lists.nlist)
    assert lists.code_size == 2  # 4 codes of 4 bits per 16-d vector
    ivf.save(tmp_path / "ivf")
    assert faiss.extract_index_ivf(VectorIndex.load(tmp_path / "ivf").index).nprobe == lists.nprobe
    explicit = VectorIndex.build(x, factory="auto", nprobe=2).index
    assert faiss.extract_index_ivf(explicit).nprobe == 2  # an explicit setting wins


# --- each benchmark once, tiny ---------------------------------------------------------------------------------

def test_bench_latency_tiny(tmp_path, restore_threads):
    out = tmp_path / "latency.json"
    mod = _bench("latency")
    assert mod.main(["--tiny", "--threads", "1", "--json", str(out)]) == 0  # 0: no mismatch
    data = json.loads(out.read_text())
    assert {"auto_over_always", "auto_over_never", "embed_path_over_never", "augment_over_prefill_plus_decode",
            "kv_reuse_speedup"} <= set(data["ratios"])
    assert set(data["p_at_1"]) == {"auto", "never", "always"} and data["machine"]["threads"] == 1
    assert not data["augmented"]["mismatches"]
    # counts: --tiny runs 4 test queries of each tiny dataset, in one pass, and takes 3 augmented queries apart
    datasets = mod.C.TINY_DATASETS
    per = data["per_dataset"]
    assert set(per) == set(datasets) and all(d["n"] == 4 for d in per.values())
    assert data["queries"] == 4 * len(datasets) and data["passes"] == 1 and data["augmented"]["n"] == 3
    n_aug = round(data["augment_rate_auto"] * data["queries"])
    assert data["augment_rate_auto"] == pytest.approx(n_aug / data["queries"], abs=1e-4)
    assert data["augment_rate_auto"] == pytest.approx(np.mean([d["augment_rate"] for d in per.values()]), abs=1e-4)
    assert data["augmented"]["auto_augmented"] == min(3, n_aug)
    # P@1: the macro mean is the mean over datasets, the micro mean is over queries; each is a count out of n
    for m in ("auto", "never", "always"):
        assert all(round(d["p_at_1"][m] * d["n"] / 100) == pytest.approx(d["p_at_1"][m] * d["n"] / 100, abs=1e-3)
                   for d in per.values())
        assert data["p_at_1"][m] == pytest.approx(np.mean([d["p_at_1"][m] for d in per.values()]), abs=1e-3)
        assert data["p_at_1_micro"][m] == pytest.approx(
            sum(d["p_at_1"][m] * d["n"] for d in per.values()) / data["queries"], abs=1e-3)
    # ratios against the raw timings in the same JSON (one pass: a ratio of means is the ratio of the mean times)
    ms, aug_ms, ratios = data["mean_ms"], data["augmented"]["mean_ms"], data["ratios"]
    assert ratios["auto_over_always"] == pytest.approx(ms["auto"] / ms["always"], rel=2e-3)
    assert ratios["auto_over_never"] == pytest.approx(ms["auto"] / ms["never"], rel=2e-3)
    for d in per.values():
        assert d["auto_over_always"] == pytest.approx(d["mean_ms"]["auto"] / d["mean_ms"]["always"], rel=2e-3)
    assert ratios["augment_over_prefill_plus_decode"] == pytest.approx(aug_ms["shipped"] / aug_ms["parts"], rel=2e-3)
    assert ratios["kv_reuse_speedup"] == pytest.approx(aug_ms["naive_reencode"] / aug_ms["shipped"], rel=2e-3)
    assert ratios["no_kv_cache_speedup"] == pytest.approx(aug_ms["no_kv_cache"] / aug_ms["shipped"], rel=2e-3)
    assert (ratios["embed_path_over_never"] is None) == (n_aug == data["queries"])  # no /embed query in auto: none
    assert data["targets"]["naive re-encode / KV-cache reuse"]["value"] == ratios["kv_reuse_speedup"]


def test_bench_latency_n_augmented_zero_skips_taking_queries_apart(tmp_path, restore_threads):
    """--n-augmented 0 (a baseline's latency alone) times the three modes and takes no query apart."""
    out = tmp_path / "latency.json"
    assert _bench("latency").main(["--tiny", "--threads", "1", "--n-augmented", "0", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["augmented"]["n"] == 0 and data["augmented"]["mean_ms"]["shipped"] is None
    assert data["ratios"]["kv_reuse_speedup"] is None and data["mean_ms"]["always"] > 0


def test_bench_throughput_tiny(tmp_path, restore_threads):
    out = tmp_path / "throughput.json"
    assert _bench("throughput").main(["--tiny", "--threads", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert "queries_batch4_over_one_at_a_time" in data["ratios"] and "candidates_batch4_over_batch1" in data["ratios"]
    # --tiny: 8 queries and 16 candidates, batch sizes 1 and 4, one round
    assert (data["n_queries"], data["n_candidates"], data["rounds"]) == (8, 16, 1)
    assert {k: v["batch_size"] for k, v in data["queries"].items()} == {"one_at_a_time": 1, "batch4": 4}
    assert {k: v["batch_size"] for k, v in data["candidates"].items()} == {"batch1": 1, "batch4": 4}
    assert data["augment_rate"] * 8 == pytest.approx(round(data["augment_rate"] * 8), abs=1e-3)  # k of 8 queries
    # one round: a speedup is the ratio of the two configurations' items per second
    q, c = data["queries"], data["candidates"]
    assert data["ratios"]["queries_batch4_over_one_at_a_time"] == q["batch4"]["speedup"] == pytest.approx(
        q["batch4"]["items_per_s"] / q["one_at_a_time"]["items_per_s"], rel=2e-3)
    assert data["ratios"]["candidates_batch4_over_batch1"] == c["batch4"]["speedup"] == pytest.approx(
        c["batch4"]["items_per_s"] / c["batch1"]["items_per_s"], rel=2e-3)
    assert q["one_at_a_time"]["speedup"] == c["batch1"]["speedup"] == 1.0


def test_bench_index_tiny(tmp_path, restore_threads, monkeypatch):
    out = tmp_path / "index.json"
    from msolomon.index import vector

    # the bench builds what factory="auto" builds beyond 5M; 4-bit codes and no OPQ here, as 8-bit codes and OPQ
    # take faiss a minute to train (the OPQ wrapper's nprobe is tested with the auto factory above)
    monkeypatch.setattr(vector, "ivf_pq_factory", lambda n, dim: f"IVF{vector.ivf_lists(n)},PQ16x4")
    assert _bench("index").main(["--tiny", "--threads", "1", "--sizes", "1000,3000", "--queries", "20",
                                 "--pq-min", "3000", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    kinds = {(r["n"], r["kind"]) for r in data["rows"]}
    assert kinds == {(n, k) for n in (1000, 3000) for k in ("Flat", "HNSW", "IVF")} | {(3000, "IVF-PQ")}
    pq = data["best"]["3000"]["IVF-PQ"]  # the setting factory="auto" uses
    assert pq["factory"] == "IVF64,PQ16x4" and pq["setting"] == f"nprobe={vector.ivf_pq_nprobe(64)}"
    assert data["ratios"]["ivf-pq_memory_vs_exact_at_3000"] < 0.5
    exact = [r for r in data["rows"] if r["kind"] == "Flat"]
    assert all(r["recall_at_10"] == 1.0 for r in exact)
    assert any(b is not None for b in data["best"]["3000"].values())


def test_bench_train_tiny(tmp_path, restore_threads):
    out = tmp_path / "train.json"
    mod = _bench("train")
    assert mod.main(["--tiny", "--threads", "1", "--steps", "1", "--length-chunks", "2", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert abs(data["first_batch_loss"]["selective"] - data["first_batch_loss"]["full"]) < 1e-3
    assert abs(data["first_batch_loss"]["selective"] - data["first_batch_loss"]["chunked"]) < 1e-4
    # never more padding (the tiny rows are nearly equal in length; test_training checks a real cut); the bench
    # refuses to run when its one-batch variants come chunked
    assert data["padding_share"]["2_chunks"] <= data["padding_share"]["one_batch"]
    # --tiny: 8 rows of each tiny dataset, of which only ScenesVQA's augment (the fixed tiny split)
    n_sets = len(mod.C.TINY_DATASETS)
    assert data["examples"] == 8 * n_sets and data["augment_share"] == pytest.approx(1 / n_sets, abs=1e-4)
    assert (data["steps"], data["batch_size"]) == (1, 4)
    # one measured step each: the speedup is the full step's time over the selective one's
    sel, full = data["variants"]["selective"], data["variants"]["full"]
    assert data["ratios"]["selective_speedup"] == pytest.approx(full["step_s_median"] / sel["step_s_median"],
                                                                rel=2e-3)
    for v in (sel, full):
        assert v["steps_per_s"] == pytest.approx(1 / v["step_s_median"], rel=2e-3)
    if sel["peak_growth_mb"] is not None and full["peak_growth_mb"] is not None:
        assert data["ratios"]["selective_peak_growth_saving_mb"] == pytest.approx(
            full["peak_growth_mb"] - sel["peak_growth_mb"], abs=1e-3)


def test_bench_two_processes_tiny(tmp_path, restore_threads):
    out = tmp_path / "two.json"  # the driver in this process; its workers are processes of their own
    assert _bench("two_processes").main(["--tiny", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    from msolomon.runtime import default_threads

    assert (data["queries_per_worker"], data["rounds"]) == (6, 1)  # --tiny
    default = data["settings"]["default"]
    assert default["threads_per_process"] == default_threads(environ={})
    assert len(default["pair_s"]) == 2
    # the slowdown is the slower of the pair's time over the time alone
    assert default["slowdown"] == pytest.approx(max(default["pair_s"]) / default["alone_s"], rel=2e-3)
    assert data["ratios"]["slowdown_default_threads"] == default["slowdown"]


def test_bench_thresholds_tiny(tmp_path, restore_threads):
    out, png = tmp_path / "thresholds.json", tmp_path / "curve.png"
    assert _bench("thresholds").main(["--tiny", "--threads", "1", "--json", str(out), "--plot", str(png)]) == 0
    data = json.loads(out.read_text())
    assert png.stat().st_size > 0
    best, cheap = data["chosen"]["best_accuracy"], data["chosen"]["cheapest_at_always_accuracy"]
    val = {e["threshold"]: e for e in data["curves"]["val"]}
    assert best["val"]["overall"] == max(e["overall"] for e in val.values())
    assert cheap["val"]["overall"] >= data["always_overall"]["val"]
    assert cheap["test"]["threshold"] == cheap["threshold"]


def test_threshold_choice_rules():
    mod = _bench("thresholds")
    curve = [{"threshold": 0.0, "overall": 50.0, "latency_ms_mean": 30.0},
             {"threshold": 0.5, "overall": 52.0, "latency_ms_mean": 20.0},
             {"threshold": 0.7, "overall": 52.0, "latency_ms_mean": 15.0},
             {"threshold": 0.9, "overall": 50.0, "latency_ms_mean": 12.0},
             {"threshold": 1.01, "overall": 40.0, "latency_ms_mean": 10.0}]
    assert mod.best_accuracy(curve)["threshold"] == 0.7  # a tie in accuracy goes to the lower latency
    assert mod.cheapest_at(curve, 50.0)["threshold"] == 0.9
    assert mod.cheapest_at(curve, 60.0) is None


def test_threshold_labels_group_ties_within_timing_noise():
    """Tied thresholds whose latencies differ only by timing noise get one label; a real step gets its own."""
    mod = _bench("thresholds")
    curve = [{"threshold": 0.1, "overall": 48.0, "latency_ms_mean": 53.9},
             {"threshold": 0.2, "overall": 48.5, "latency_ms_mean": 53.0},
             {"threshold": 0.3, "overall": 48.5, "latency_ms_mean": 52.8},
             {"threshold": 0.5, "overall": 48.5, "latency_ms_mean": 40.0},
             {"threshold": 0.0, "overall": 45.7, "latency_ms_mean": 61.7}]
    groups = [ts for ts, _ in mod.label_groups(curve)]
    assert groups == [[0.0], [0.1], [0.2, 0.3], [0.5]]
    (_, (x, y)), = [g for g in mod.label_groups(curve) if g[0] == [0.2, 0.3]]
    assert (round(x, 1), y) == (52.9, 48.5)


def test_bench_pretrain_ablation_tiny(tmp_path, restore_threads):
    """Every combination runs; a patch of 7 gives the vision tower four times the patches of 14."""
    out = tmp_path / "ablation.json"
    assert _bench("pretrain_ablation").main(["--tiny", "--threads", "1", "--patch", "14,7", "--lr", "1e-3",
                                             "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [(v["patch"], v["steps"]) for v in data["variants"]] == [(14, 2), (7, 2)]
    assert set(data["variants"][0]["exact_match"]) == {"DigitsCLS", "ShapesCLS"}
    # --tiny asks 4 held out and 16 of each world; the data's own counts say how many the disjointness filters
    # dropped, and the bench used exactly the rest
    meta = json.loads((Path(data["data"]) / "pretrain.json").read_text())
    kept = {part: sum(c[part] for c in meta["counts"].values()) for part in ("train", "heldout")}
    dropped = sum(c["heldout"] + c["heldout_dropped_collisions"] + c["heldout_dropped_near_duplicates"]
                  for c in meta["counts"].values())
    assert dropped == 2 * 4 and data["n_heldout"] == kept["heldout"] > 0 and data["n_train"] == kept["train"] > 16
    for v in data["variants"]:  # equal worlds: the overall exact match is the mean of the two
        assert v["overall"] == pytest.approx(np.mean(list(v["exact_match"].values())), abs=1e-3)
    import torch
    from PIL import Image

    from msolomon.inputs import Query
    from msolomon.model import MSolomon

    grids, tokens = {}, {}
    for patch in (14, 7):
        model = MSolomon.tiny(hidden_size=32, num_layers=1, vision_dim=32, vision_depth=1, vocab_size=300,
                              patch_size=patch)
        enc = model.encoder.encode_prompt(Query(text="x", image=Image.new("RGB", (56, 56))))
        grids[patch] = [int(x) for x in enc.image_grid_thw[0]]
        tokens[patch] = sum(enc.mm_token_type_ids)
        with torch.inference_mode():  # the tower takes the patches it is given
            model.encode_queries([Query(text="x", image=Image.new("RGB", (56, 56)))], augment="never")
    assert tokens[7] == 4 * tokens[14]
    assert grids[14] == [1, 4, 4] and grids[7] == [1, 8, 8], grids


def test_bench_pretrain_ablation_sizes(tmp_path, restore_threads):
    """--sizes builds each backbone at its own width and depth; a malformed size is refused by name."""
    out = tmp_path / "sizes.json"
    assert _bench("pretrain_ablation").main(["--tiny", "--threads", "1", "--sizes", "32x1x32,64x2x32", "--lr", "1e-3",
                                             "--json", str(out)]) == 0
    variants = json.loads(out.read_text())["variants"]
    assert [v["size"] for v in variants] == ["32x1x32", "64x2x32"]
    assert variants[1]["params_m"] > variants[0]["params_m"]
    with pytest.raises(SystemExit):
        _bench("pretrain_ablation").main(["--tiny", "--sizes", "256x4", "--json", str(out)])


def test_bench_forgetting_tiny(tmp_path, restore_threads, monkeypatch):
    """The model really answers; its answers are then set to known ones (both DigitsR answers right, one with
    other case and spaces, both ShapesCLS answers wrong), so the exact match per world and overall is known."""
    import training.pretrain as P

    real = P.generate_answers
    asked = []

    calls = []

    def known_answers(model, rows, *args, **kwargs):
        answers = real(model, rows, *args, **kwargs)
        assert len(answers) == len(rows)
        calls.append(len(rows))
        if len(calls) == 3:  # the second model of the paired run below answers every question right
            return [r["response"] for r in rows]
        asked.extend(rows)
        digits = [i for i, r in enumerate(rows) if r["dataset"] == "DigitsR"]
        return [("  " + r["response"].upper().rstrip(".") + " " if i == digits[0] else r["response"])
                if r["dataset"] == "DigitsR" else "a wrong answer." for i, r in enumerate(rows)]

    monkeypatch.setattr(P, "generate_answers", known_answers)
    out = tmp_path / "forgetting.json"
    assert _bench("forgetting").main(["--tiny", "--threads", "1", "--limit", "2", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["worlds"] == ["DigitsR", "ShapesCLS"] and data["n_heldout"] == 4
    assert sorted(r["dataset"] for r in asked) == ["DigitsR", "DigitsR", "ShapesCLS", "ShapesCLS"]  # --limit 2
    (model,) = data["models"]
    assert model["exact_match"] == {"DigitsR": 100.0, "ShapesCLS": 0.0} and model["overall"] == 50.0
    assert model["correct_bits"] == {"DigitsR": "11", "ShapesCLS": "00"}
    assert [e["reference"] for e in model["examples"]] == [r["response"] for r in asked]
    # two models on the same questions: the second (all right) is paired against the first (ShapesCLS wrong):
    # DigitsR level, ShapesCLS +100 on both questions, so +50 macro in every resample
    assert _bench("forgetting").main(["--tiny", "--models", "tiny,tiny", "--threads", "1", "--limit", "2", "--json",
                                      str(out)]) == 0
    second = json.loads(out.read_text())["models"][1]
    assert second["correct_bits"] == {"DigitsR": "11", "ShapesCLS": "11"}
    assert second["vs_first"]["macro_gain"] == 50.0 and second["vs_first"]["ci95"] == [50.0, 50.0]
    with pytest.raises(SystemExit, match="not a pretraining data folder"):
        _bench("forgetting").main(["--threads", "1", "--pretrain-data", str(tmp_path)])


def test_bench_pretrain_curves_draws_every_run_and_refuses_a_missing_log(tmp_path, capsys, monkeypatch):
    import matplotlib.axes

    drawn = []
    plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda ax, *a, **k: drawn.append(k.get("label")) or plot(ax, *a, **k))
    logs = []
    for name, slope in (("a", 0.01), ("b", 0.02)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"step": s, "loss": 5 * np.exp(-slope * s), "token_acc": s / 100}) + "\n"
                                for s in range(10, 110, 10)))
        logs.append(f"run {name}={path}")
    out = tmp_path / "curves.png"
    assert _bench("pretrain_curves").main([*sum((["--run", r] for r in logs), []), "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG" and out.stat().st_size > 5000
    assert drawn == ["run a", "run a", "run b", "run b"]  # loss and token accuracy of each run
    with pytest.raises(SystemExit):
        _bench("pretrain_curves").main(["--run", f"c={tmp_path / 'missing.jsonl'}", "--out", str(out)])
    assert "expected LABEL=PATH to an existing train_log.jsonl" in capsys.readouterr().err


def test_bench_gpu_check_tiny(tmp_path, restore_threads):
    """The GPU check's stages (MiniMMEB, oracle augmentations, a checkpoint from a config, LoRA training through
    training.train, encoding in three modes) on a tiny model on the CPU."""
    out = tmp_path / "gpu.json"
    assert _bench("gpu_check").main(["--tiny", "--threads", "1", "--out", str(tmp_path / "run"), "--profile",
                                     "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["size"] == "tiny" and result["train"]["steps"] == 2
    assert (tmp_path / "run" / "lora" / "final" / "adapter_config.json").is_file()  # LoRA, not full fine-tuning
    enc = result["encode"]
    assert enc["augment_rate"]["never"] == 0 and enc["augment_rate"]["always"] == 1
    assert enc["generated_tokens_mean"]["never"] == 2  # `/embed` + terminal, nothing generated
    assert set(enc["ms_per_query_batch16"]) == {"never", "always", "auto"}
    assert (enc["queries"], enc["max_new_tokens"]) == (3, 4)  # --tiny
    assert enc["augment_rate"]["auto"] * 3 == pytest.approx(round(enc["augment_rate"]["auto"] * 3), abs=0.02)
    prof = result["profile"]
    assert prof["decode_steps"] == 4  # the untrained model never picks the terminal token: the cap ends the segment
    # the decode loop is part of the query's time: its per-token figure times the steps fits in the total
    assert prof["loop_ms_per_token"] * prof["decode_steps"] <= prof["query_ms"] + 0.1
    assert prof["profiled_gpu_kernel_ms"] is None and prof["kernel_launches"] is None  # on the CPU: no GPU figures



def test_bench_grounding_on_tiny_data(tmp_path, restore_threads):
    """Crop cosines by what differs, and the kinds of errors read from a predictions file."""
    from msolomon import MSolomon
    from msolomon.data.minimmeb import generate

    data = tmp_path / "minimmeb"
    generate(data, seed=0, scale="tiny", datasets=["ScenesGround"])
    model = tmp_path / "tiny"
    MSolomon.tiny(seed=0).save_pretrained(model)
    preds = tmp_path / "p.predictions.jsonl"
    top = [{"image": "x/beige_red_star.png", "correct": False}, {"image": "x/gray_red_star.png", "correct": True}]
    preds.write_text("\n".join(json.dumps(r) for r in [
        {"dataset": "ScenesGround", "mode": "auto", "correct": False, "top": top},
        {"dataset": "ScenesGround", "mode": "auto", "correct": True, "top": top[::-1]},
        {"dataset": "ScenesGround", "mode": "never", "correct": False, "top": top}]) + "\n")
    out = tmp_path / "g.json"
    assert _bench("grounding").main(["--data", str(data), "--models", str(model), "--threads", "1",
                                     "--predictions", f"m={preds}:auto", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["errors"]["m"] == {"top crop differs in background": 1, "right": 1}
    # the cosines, recomputed here: the validation crops' embeddings, averaged over the pairs whose file names
    # (BACKGROUND_COLOUR_SHAPE) differ in exactly one part
    from msolomon.evaluation import open_benchmark, unique_candidates

    crops, _ = unique_candidates(open_benchmark(data, split="val").read("ScenesGround"))
    assert result["crops"] == len(crops) and result["split"] == "val"
    vecs = np.asarray(MSolomon.from_pretrained(model).encode_candidates(crops, batch_size=32))
    parts = [Path(str(c.image)).stem.split("_") for c in crops]
    want: dict[str, list[float]] = {"background": [], "colour": [], "shape": []}
    for i in range(len(crops)):
        for j in range(i + 1, len(crops)):
            differ = [k for k, a, b in zip(want, parts[i], parts[j]) if a != b]
            if len(differ) == 1:
                want[differ[0]].append(float(vecs[i] @ vecs[j]))
    cos = result["cosines"][str(model)]
    assert want["background"]  # the tiny split has crops that differ only in background
    for k, values in want.items():
        assert cos[f"{k}_only_pairs"] == len(values)
        if values:
            assert cos[f"{k}_only"] == pytest.approx(np.mean(values), abs=1e-3)


def test_template_routing_learns_a_decision_per_question_template():
    """Two templates of one dataset where augmenting helps one and hurts the other: the template rule routes each
    to its better path (learned on the other half of the queries), the dataset rule cannot."""
    tr = _bench("template_routing")
    train = [f"<|image_1|> Represent the image with the following question: What colour is bar {c}?" for c in "AABB"]
    train += [f"<|image_1|> Represent the image with the following question: How many bars are above {k}?"
              for k in range(6)]
    templates = tr.Templates(train, min_doc_freq=0.2)
    colour, count = templates(train[0]), templates(train[4])
    # numbers and single letters masked, even a letter in a fifth of the queries (min_doc_freq); "?" is one too
    assert colour == "what colour is bar _ _" and count == "how many bars are above _ _"
    val = [colour, count, count, colour] * 20  # each half (even, odd positions) has both
    never = {"Charts": [t == count for t in val]}  # the count questions right without augmenting only
    always = {"Charts": [t == colour for t in val]}  # the colour questions right with it only
    rules = {kind: tr.cross_fitted({"Charts": val}, never, always, min_group=10, margin=1.0,
                                   by_template=kind == "template") for kind in ("dataset", "template")}
    assert rules["template"]["Charts"] == [t == colour for t in val]
    assert len(set(rules["dataset"]["Charts"])) == 1  # one decision for the whole set
    result = tr.compare(never, always, rules)
    assert result["template"]["p_at_1"] == 100.0 and result["dataset"]["p_at_1"] == 50.0
    assert result["template_minus_dataset"]["gain"] == 50.0 and result["template_minus_dataset"]["ci95"][0] > 0
    assert result["oracle"] == 100.0
    # a template with too few queries takes its dataset's decision
    dataset, groups = tr.group_rule(val[:6], never["Charts"][:6], always["Charts"][:6], min_group=10, margin=1.0)
    assert all(g["augment"] == dataset and not g["own_decision"] for g in groups.values())


def test_confidence_routing_scores_each_rule_by_hand(tmp_path):
    """A hand-made validation file: the skip, add and more-confident rules route each query as their definitions
    say, and the figures are those worked out by hand below."""

    def row(dataset, index, mode, correct, margin, decision="/embed"):
        return {"dataset": dataset, "index": index, "mode": mode, "correct": correct, "decision": decision,
                "top": [{"score": 0.9}, {"score": 0.9 - margin}]}

    # A: the model augments every query; (never correct, never margin, always correct, always margin)
    a = [(True, 0.2, False, 0.1), (False, 0.01, True, 0.3), (False, 0.3, True, 0.05), (True, 0.05, True, 0.2)]
    # B: the model embeds every query
    b = [(False, 0.005, True, 0.3), (True, 0.5, False, 0.1)]
    rows = []
    for name, queries, decision in (("A", a, "/augment"), ("B", b, "/embed")):
        for i, (nc, nm, ac, am) in enumerate(queries):
            rows += [row(name, i, "auto", ac if decision == "/augment" else nc, am if decision == "/augment" else nm,
                         decision),
                     row(name, i, "never", nc, nm), row(name, i, "always", ac, am)]
    preds = tmp_path / "m.val.predictions.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = tmp_path / "m.val.json"
    report.write_text(json.dumps({"modes": {
        "never": {"datasets": {"A": {"latency_ms_mean": 10}, "B": {"latency_ms_mean": 20}}},
        "always": {"datasets": {"A": {"latency_ms_mean": 100}, "B": {"latency_ms_mean": 200}}}}}))
    out = tmp_path / "c.json"
    assert _bench("confidence_routing").main(["--predictions", str(preds), "--report", str(report), "--thresholds",
                                              "0.01,0.1", "--json", str(out)]) == 0
    rules = json.loads(out.read_text())["rules"]
    # auto: A's always path (1 of 4 wrong), B's never path (1 of 2 wrong); A costs 100 ms, B 20 ms
    assert (rules["auto"]["p_at_1"], rules["auto"]["latency_ms_est"]) == (62.5, 60.0)
    # skip at 0.1: A's sure queries 0 and 2 take the embedded path (right, then wrong): 3 of 4 still; two of A's
    # four queries cost 10 ms instead of 100
    assert (rules["skip at 0.1"]["p_at_1"], rules["skip at 0.1"]["latency_ms_est"]) == (62.5, 37.5)
    assert rules["skip at 0.1"]["augment_rate"] == round(2 / 6, 3)
    # add at 0.01: B's unsure query 0 (margin 0.005) is augmented and becomes right: B 2 of 2
    assert rules["add at 0.01"]["p_at_1"] == 87.5 and rules["add at 0.01"]["gain_over_auto"] == 25.0
    # the more confident path: A keeps never, always, never, always (3 of 4); B always, never (2 of 2)
    assert rules["the more confident path (margin)"]["p_at_1"] == 87.5
    assert rules["own oracle"]["p_at_1"] == 100.0
