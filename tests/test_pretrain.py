"""The pretrained base: its data never holds a benchmark image, the validation split never touches the test,
fine-tuning starts from the saved base, and the pretraining command runs end to end and resumes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from msolomon.data import minimmeb as M
from training import pretrain_data as PD

SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_layers": 1, "num_heads": 4, "num_kv_heads": 2,
         "vision_dim": 32, "vision_depth": 1, "vision_heads": 4, "vocab_size": 512}


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench") / "minimmeb"
    M.generate(root, seed=0, scale="tiny", progress=False)
    return root


@pytest.fixture(scope="module")
def pdata(tmp_path_factory, bench) -> Path:
    root = tmp_path_factory.mktemp("pretrain") / "data"
    PD.generate(root, PD.PretrainDataSettings(n_per_dataset=30, n_heldout_per_dataset=4, benchmark_scale="tiny"),
                bench, progress=False)
    return root


def _rows(root: Path, split: str, name: str) -> list[dict]:
    file = root / split / name / (("original" if split == "train" else split) + ".jsonl")
    return [json.loads(line) for line in file.read_text().splitlines()]


def _images(root: Path, split: str, name: str) -> set[str]:
    out: set[str] = set()
    for r in _rows(root, split, name):
        for key in ("qry_image_path", "pos_image_path", "neg_image_path", "qry_img_path", "tgt_img_path"):
            v = r.get(key)
            out |= {x for x in (v if isinstance(v, list) else [v]) if x}
    return out


def _hashes(root: Path, paths) -> set[str]:
    return {PD.pixel_hash(root / p) for p in paths}


def test_pretraining_images_are_disjoint_from_every_benchmark_image(pdata, bench):
    assert PD.check_disjoint(pdata, [bench]) == []
    meta = json.loads((pdata / PD.META_FILE).read_text())
    assert meta["benchmark_images"] == len(list((bench / "images").rglob("*.png")))
    worlds = set(meta["counts"])
    assert worlds >= {"DigitsCLS", "ScenesVQA", "ChartVQA", "DocVQA", "SignVQA", "PhotoCLS", "DigitsR", "Garments"}
    rows = PD.load_rows(pdata, "train")
    assert len(rows) > 300 and all(Path(r["image"]).is_file() and r["response"] for r in rows)
    # the check is not vacuous: a benchmark image put into the pretraining data is found
    planted = pdata / "images" / "planted.png"
    shutil.copy(next((bench / "images" / "FashionCIR").rglob("*.png")), planted)
    with open(pdata / "train.jsonl", "a") as fh:
        fh.write(json.dumps({"id": "x", "dataset": "x", "image": "images/planted.png", "prompt": "q",
                             "response": "a"}) + "\n")
    try:
        assert PD.check_disjoint(pdata, [bench]) == [str(planted)]
    finally:
        lines = (pdata / "train.jsonl").read_text().splitlines()[:-1]
        (pdata / "train.jsonl").write_text("".join(line + "\n" for line in lines))
        planted.unlink()


def _variant(src: Path, dst: Path, how: str) -> Path:
    """A copy of a benchmark image, changed as a near duplicate would be: one pixel inverted, or shifted right."""
    from PIL import Image

    with Image.open(src) as img:
        a = np.asarray(img.convert("RGB")).copy()
    if how == "pixel":
        a[a.shape[0] // 2, a.shape[1] // 2] = 255 - a[a.shape[0] // 2, a.shape[1] // 2]
    else:
        a = np.concatenate([a[:, :1], a[:, :-1]], axis=1)  # one pixel right, the left column repeated
    Image.fromarray(a).save(dst)
    return dst


def test_near_duplicates_of_validation_and_test_images_are_kept_out(pdata, bench, tmp_path):
    """A changed pixel or a one-pixel shift passes a byte-exact filter; the signature filter catches both, and does
    not call a different picture near."""
    scene = next(p for p in PD.held_out_images(bench) if "/ShapesCLS/test/" in str(p))
    other = next(p for p in PD.held_out_images(bench) if "/ChartVQA/test/" in str(p))
    near = PD.NearDuplicates([scene])
    pixel, shifted = _variant(scene, tmp_path / "pixel.png", "pixel"), _variant(scene, tmp_path / "shift.png", "shift")
    assert PD.pixel_hash(pixel) != PD.pixel_hash(scene) and PD.pixel_hash(shifted) != PD.pixel_hash(scene)
    assert near.nearest(pixel)[0] < 1.0 and near.is_near(pixel) and near.is_near(shifted)
    assert near.nearest(other)[0] > PD.NEAR_DUPLICATE_RMS and not near.is_near(other)
    assert not PD.NearDuplicates([scene], rms=0).is_near(pixel)  # 0: exact matches only
    # the written data hold none, and the meta says how many each world lost
    meta = json.loads((pdata / PD.META_FILE).read_text())
    assert meta["signature"] == {"side": PD.SIGNATURE_SIDE, "near_duplicate_rms": PD.NEAR_DUPLICATE_RMS}
    assert all("train_dropped_near_duplicates" in c for c in meta["counts"].values())
    # a near duplicate planted into the data is found by the check
    planted = _variant(scene, pdata / "images" / "planted_near.png", "shift")
    with open(pdata / "train.jsonl", "a") as fh:
        fh.write(json.dumps({"id": "x", "dataset": "x", "image": "images/planted_near.png", "prompt": "q",
                             "response": "a"}) + "\n")
    try:
        assert PD.check_disjoint(pdata, [bench]) == [str(planted)]
        assert PD.check_disjoint(pdata, [bench], near_duplicate_rms=0) == []  # what the exact filter alone saw
    finally:
        lines = (pdata / "train.jsonl").read_text().splitlines()[:-1]
        (pdata / "train.jsonl").write_text("".join(line + "\n" for line in lines))
        planted.unlink()


def test_fashion_world_builder_would_collide_so_garments_are_drawn_on_other_backdrops(pdata, bench):
    """Every FashionCIR garment on white is a gallery image: the world builder's own items would all be dropped."""
    rows = [r for r in PD.load_rows(pdata, "train") if r["dataset"] == "Garments"]
    assert rows and not (_hashes(Path("/"), [r["image"] for r in rows]) & PD.image_hashes(bench))


def test_reading_task_transcribes_what_is_drawn_and_stays_apart_from_the_benchmark(tmp_path, bench):
    """The pretraining-only reading task: asked for by name, its forms and signs are transcribed in full (every
    line's text is in the answer, in drawing order), none of its images is a benchmark image, and an unknown world
    is refused by name."""
    from msolomon.worlds.documents import DOC_ANSWERS

    root = tmp_path / "reading"
    meta = PD.generate(root, PD.PretrainDataSettings(n_per_dataset=40, n_heldout_per_dataset=6, benchmark_scale="tiny",
                                                     datasets=("DocVQA", "Reading")), bench, progress=False)
    assert set(meta["counts"]) == {"DocVQA", "Reading"} and meta["counts"]["Reading"]["train"] > 30
    rows = [r for r in PD.load_rows(root, "train") if r["dataset"] == "Reading"]
    assert {r["prompt"] for r in rows} >= {"Read the form.", "Read the signs."}
    form = next(r for r in rows if r["prompt"] == "Read the form.")
    title, *lines = form["response"].rstrip(".").split(". ")
    assert title in {"FORM", "INVOICE", "TICKET", "ORDER"} and len(lines) == 4 and all(": " in x for x in lines)
    assert any(v.split(": ")[1] not in DOC_ANSWERS for r in rows if r["prompt"] == "Read the form."
               for v in r["response"].rstrip(".").split(". ")[1:])  # some values are random strings, not the list's
    assert PD.check_disjoint(root, [bench]) == []
    with pytest.raises(ValueError, match="unknown world builder.*Nope"):
        PD.generate(tmp_path / "bad", PD.PretrainDataSettings(datasets=("Nope",)), bench, progress=False)


def test_heldout_images_are_not_training_images(pdata):
    train = {PD.pixel_hash(r["image"]) for r in PD.load_rows(pdata, "train")}
    held = PD.load_rows(pdata, "heldout")
    assert held and not ({PD.pixel_hash(r["image"]) for r in held} & train)


def test_pretraining_digits_come_from_the_train_half_only(pdata):
    """Handwritten digits are drawn from scikit-learn's train half under the benchmark seed (no test digit)."""
    from msolomon.worlds.digits import digit_pools

    pools = digit_pools(0)
    train_ids = {img.tobytes() for img, _ in pools["train"]}
    test_only = {img.tobytes() for img, _ in pools["test"]} - train_ids
    assert len(train_ids) > 1000 and len(test_only) > 400
    from msolomon.worlds.common import Ctx, Store, rng_for

    seen: list = []
    ctx = Ctx(M.MiniMMEBSettings.make(seed=0, scale="tiny"), "DigitsCLS", "train", Store(pdata.parent / "x", "d"),
              rng_for(PD.PRETRAIN_SEED_OFFSET, "DigitsCLS", "train"))
    import msolomon.worlds.digits as digits

    real = digits.render_handwritten
    try:
        digits.render_handwritten = lambda img8, **kw: (seen.append(img8.tobytes()), real(img8, **kw))[1]
        digits.build_digits_cls(ctx, 20)
    finally:
        digits.render_handwritten = real
    assert len(seen) == 20 and set(seen) <= train_ids and not (set(seen) & test_only)


def _pixels(path: Path) -> tuple[tuple[int, ...], bytes]:
    """An image's decoded content, computed here rather than with the generator's `PD.pixel_hash`: the RGB array's
    shape and bytes. Two files showing the same picture give the same key, whatever their names or PNG encoding."""
    from PIL import Image

    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"))
    return arr.shape, arr.tobytes()


def _query_content(root: Path, row: dict) -> tuple:
    """What a validation or test query shows the model: its decoded image, or its text when it has no image."""
    return ("image", _pixels(root / row["qry_img_path"])) if row["qry_img_path"] else ("text", row["qry_text"])


def _shared_queries(root: Path, rows: list[dict], others: list[dict]) -> list[dict]:
    """The rows of `rows` whose query content also is the content of a query in `others` (paths play no part)."""
    seen = {_query_content(root, r) for r in others}
    return [r for r in rows if _query_content(root, r) in seen]


def test_validation_split_is_disjoint_from_test_and_benchmark_fixes(bench, tmp_path):
    """No validation query shows the same content (decoded pixels, or the text of a text-only query) as a test
    query; the check is shown to catch a test image copied under another name and re-encoded, and a repeated text."""
    from PIL import Image

    meta = M.load_minimmeb(bench)["datasets"]
    checked = 0
    for name, d in meta.items():
        if d["ood"]:
            continue
        assert d["splits"] == ["train", "val", "test"] and d["n_val"] == 20
        val, test = _rows(bench, "val", name), _rows(bench, "test", name)
        assert len(val) == 20 and test
        assert _shared_queries(bench, val, test) == [], name
        checked += 1
    assert checked >= 8
    # the check is not vacuous: a test image saved again under a validation-like name (other bytes, same pixels)
    # and a test text repeated in a validation row are both found
    test_img = next(r for r in _rows(bench, "test", "ShapesCLS") if r["qry_img_path"])
    copy = tmp_path / "val" / "ShapesCLS" / "copy.png"
    copy.parent.mkdir(parents=True)
    with Image.open(bench / test_img["qry_img_path"]) as img:
        img.convert("RGB").save(copy, compress_level=0)
    assert copy.read_bytes() != (bench / test_img["qry_img_path"]).read_bytes()
    planted = {"qry_img_path": str(copy), "qry_text": "another question"}
    test_txt = next(r for r in _rows(bench, "test", "ScenesT2I") if not r["qry_img_path"])
    repeated = {"qry_img_path": "", "qry_text": test_txt["qry_text"]}
    unrelated = {"qry_img_path": "", "qry_text": "a query no split holds"}
    val = _rows(bench, "val", "ShapesCLS")
    assert _shared_queries(bench, val + [planted], _rows(bench, "test", "ShapesCLS")) == [planted]
    assert _shared_queries(bench, [unrelated, repeated], _rows(bench, "test", "ScenesT2I")) == [repeated]
    # no ShapesCLS validation or test query shows a training query's pixels
    train_q = {_pixels(bench / r["qry_image_path"]) for r in _rows(bench, "train", "ShapesCLS")}
    for split in ("val", "test"):
        shown = [_pixels(bench / r["qry_img_path"]) for r in _rows(bench, split, "ShapesCLS")]
        assert shown and not (set(shown) & train_q), split
    # RefScenes (out of distribution) never shows a ScenesGround training image
    ground = {_pixels(bench / p) for p in _images(bench, "train", "ScenesGround")}
    assert not ({_pixels(bench / p) for p in _images(bench, "test", "RefScenes")} & ground)


def test_shapes_test_queries_avoid_training_queries_even_when_the_stream_repeats_one(tmp_path):
    """Force the collision: a test stream that replays the training stream must still build unseen queries."""
    from msolomon.worlds.common import Ctx, Store, rng_for
    from msolomon.worlds.scenes import build_shapes_cls

    settings = M.MiniMMEBSettings.make(seed=0, scale="tiny")
    taken: set = set()
    store = Store(tmp_path, "S")
    train = build_shapes_cls(Ctx(settings, "S", "train", store, rng_for(0, "same"), taken), 30)
    test = build_shapes_cls(Ctx(settings, "S", "test", store, rng_for(0, "same"), taken), 30)
    assert not ({PD.pixel_hash(tmp_path / it.qry_img) for it in train}
                & {PD.pixel_hash(tmp_path / it.qry_img) for it in test})


def test_exact_match_normalisation():
    assert PD.exact_match(["The digit is 7.", "the digit is 7", "The digit is 1."], ["The digit is 7."] * 3) == \
        pytest.approx(200 / 3)
    assert PD.word_accuracy(["A red circle and a blue star."], ["A red circle and a green star."]) == \
        pytest.approx(100 * 6 / 7)
    assert PD.word_accuracy(["red"], ["A red circle."]) == 0.0
    assert PD.plain_question("<|image_1|> Represent the given image for classification") == "What does the image show?"
    assert PD.plain_question("<|image_1|> Select the portion of the image that isolates the object of the given "
                             "label: star") == "Describe the star in the image."


def test_pretrain_command_trains_evaluates_and_resumes(tmp_path, bench, pdata):
    from training.pretrain import main

    out = tmp_path / "run"
    args = ["--out", str(out), "--data", str(pdata), "--benchmark", str(bench), "--max-steps", "4",
            "--batch-size", "8", "--save-every", "2", "--log-every", "1", "--warmup-steps", "1",
            "--max-new-tokens", "6",
            "--backbone", json.dumps(SMALL), "--threads", "1", "--ship", str(tmp_path / "base")]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    ev = report["eval"]["overall"]
    assert ev["n"] == len(PD.load_rows(pdata, "heldout")) and 0 <= ev["text_only_floor"] <= 100
    assert set(report["half_precision"]["overall"]) == {"n", "exact_match", "text_only_floor", "word_accuracy",
                                                        "word_accuracy_text_only"}
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and log[-1]["loss"] < log[0]["loss"]
    assert (out / "report.png").stat().st_size > 1000
    card = (tmp_path / "base" / "README.md").read_text()
    assert "Held-out generative accuracy" in card and "text-only floor" in card
    # the card's command is the one that ran: every setting that differs from the defaults
    assert f"python -m training.pretrain --out {out} " in card
    assert all(flag in card for flag in ("--max-steps 4", "--batch-size 8", "--ship "))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "base" / "model.safetensors"), "pt") as fh:
        assert all(fh.get_tensor(k).dtype == torch.float16 for k in fh.keys())
    # a rerun (re-shipping) finds the final model and its evaluation: it trains and evaluates nothing again, and the
    # stage times add up over both invocations instead of reporting the rerun's few seconds as the training time
    stamp = (out / "final" / "model.safetensors").stat().st_mtime_ns
    first = report["timings_s"]
    assert first["train_s"] + 0.1 >= log[-1]["elapsed_s"] and first["eval_s"] > 0  # holds the loop
    assert main(args) == 0
    assert (out / "final" / "model.safetensors").stat().st_mtime_ns == stamp
    again = json.loads((out / "report.json").read_text())
    assert again["eval"] == report["eval"] and again["timings_s"]["eval_s"] == first["eval_s"]
    assert again["timings_s"]["train_s"] >= first["train_s"]
    assert "summed over every invocation" in (tmp_path / "base" / "README.md").read_text()


def test_a_larger_max_steps_continues_a_finished_base_and_the_card_lists_both_commands(tmp_path, bench, pdata):
    from safetensors.torch import load_file

    from training.pretrain import final_steps, main

    out, base = tmp_path / "run", tmp_path / "base"
    common = ["--out", str(out), "--data", str(pdata), "--benchmark", str(bench), "--batch-size", "8",
              "--save-every", "2", "--log-every", "1", "--warmup-steps", "1", "--max-new-tokens", "4",
              "--backbone", json.dumps(SMALL), "--threads", "1"]
    assert main(common + ["--max-steps", "3"]) == 0
    first = load_file(str(out / "final" / "model.safetensors"))
    assert final_steps(out) == 3
    # a rerun without --max-steps reuses the 3-step model, though the default step count is larger
    stamp = (out / "final" / "model.safetensors").stat().st_mtime_ns
    assert main(common) == 0
    assert (out / "final" / "model.safetensors").stat().st_mtime_ns == stamp and final_steps(out) == 3
    # the same folder asked for 4 steps: pretraining resumes at step 3 (it does not reuse the 3-step final model),
    # and its first step moves the weights: it runs at the rebuilt schedule's rate, not the loaded end rate of 0
    assert main(common + ["--max-steps", "4"]) == 0
    assert final_steps(out) == 4
    fourth = load_file(str(out / "final" / "model.safetensors"))
    assert any(not torch.equal(first[k], fourth[k]) for k in first)
    # the 3-step base and its report are kept beside
    kept = load_file(str(out / "final-3" / "model.safetensors"))
    assert all(torch.equal(first[k], kept[k]) for k in first) and (out / "report-3.json").is_file()
    assert main(common + ["--max-steps", "5", "--ship", str(base)]) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5]
    assert log[2]["lr"] == 0.0 and log[3]["lr"] == 0.0 and log[4]["lr"] == 0.0  # each schedule ends at 0
    report = json.loads((out / "report.json").read_text())
    assert [r["steps"] for r in report["commands"]] == [[0, 3], [3, 4], [4, 5]]
    card = (base / "README.md").read_text()
    assert "--warmup-steps 1   # steps 0-3" in card and f"--ship {base}   # steps 4-5" in card
    assert card.index("--max-steps 3 ") < card.index("--max-steps 4 ") < card.index("--max-steps 5 ")
    # asking for fewer or as many steps as it has reuses the final model, and records no new command
    stamp = (out / "final" / "model.safetensors").stat().st_mtime_ns
    for steps in ("4", "5"):
        assert main(common + ["--max-steps", steps]) == 0
    assert (out / "final" / "model.safetensors").stat().st_mtime_ns == stamp and final_steps(out) == 5
    assert len((out / "commands.jsonl").read_text().splitlines()) == 3


def test_continuing_refuses_a_final_model_without_a_checkpoint(tmp_path, bench, pdata, caplog):
    from training.pretrain import main

    out = tmp_path / "run"
    common = ["--out", str(out), "--data", str(pdata), "--benchmark", str(bench), "--batch-size", "8",
              "--save-every", "2", "--warmup-steps", "1", "--max-new-tokens", "2",
              "--backbone", json.dumps(SMALL), "--threads", "1"]
    assert main(common + ["--max-steps", "2"]) == 0
    shutil.rmtree(out / "checkpoint")
    (out / "final_steps.json").unlink()
    assert main(common + ["--max-steps", "4"]) == 2
    assert "cannot be continued" in caplog.text
    assert main(common) == 0  # without --max-steps it is the finished model it was


def test_data_only_makes_the_replay_folder_without_training(tmp_path, bench, capsys):
    """--data-only stops after the data stage: the folder --replay reads, and no model."""
    from training.pretrain import main
    from training.rehearsal import RehearsalSettings, rehearsal_problem

    out = tmp_path / "run"
    assert main(["--out", str(out), "--benchmark", str(bench), "--benchmark-scale", "tiny", "--n-per-dataset", "3",
                 "--n-heldout", "1", "--datasets", "DigitsCLS,ShapesCLS", "--data-only"]) == 0
    assert PD.is_pretrain_data(out / "data") and not (out / "final").exists() and not (out / "report.json").exists()
    assert "pretraining data: " in capsys.readouterr().out
    assert len(PD.load_rows(out / "data", "train")) > 0
    assert rehearsal_problem(RehearsalSettings(replay=str(out / "data"))) is None


def test_fine_tuning_starts_from_the_saved_base(tmp_path, monkeypatch):
    """`--init base` (the default) loads the shipped base: at step 0 the weights are the base's."""
    from msolomon.model import MSolomon
    from training import train as T

    base = MSolomon.tiny(seed=3, **SMALL)
    base.save_pretrained(tmp_path / "base")
    monkeypatch.setattr(T, "DEFAULT_BASE_DIR", tmp_path / "base")
    config = T.TrainSettings(data=str(tmp_path), out=str(tmp_path / "run"), model=T.ModelSettings(device="cpu"))
    assert config.model.init == "base"
    model = T.build_model(config, [], None)
    want = base.model.state_dict()
    got = model.model.state_dict()
    assert set(want) == set(got) and all(torch.equal(want[k], got[k]) for k in want)
    assert model.tokenizer.get_vocab() == base.tokenizer.get_vocab()
    monkeypatch.setattr(T, "DEFAULT_BASE_DIR", tmp_path / "missing")
    with pytest.raises(ValueError, match="training.pretrain"):
        T.build_model(config, [], None)


def _rehearsal_run(out: Path, bench: Path, pdata: Path | None, weight: float = 1.0) -> dict:
    from safetensors.numpy import load_file

    from training import train as T

    args = ["--data", str(bench), "--out", str(out), "--labeling", "noaug", "--init", "tiny", "--tiny",
            json.dumps(SMALL), "--limit", "8", "--batch-size", "4", "--max-steps", "3", "--log-every", "1",
            "--warmup-steps", "1", "--device", "cpu"]
    if pdata is not None:
        args += ["--replay", str(pdata), "--replay-batch", "3", "--replay-weight", str(weight)]
    T.run(T.parse_args(args))
    return load_file(str(out / "final" / "model.safetensors"))


def test_rehearsal_replays_pretraining_rows_without_changing_the_fine_tuning_batches(tmp_path, bench, pdata):
    """`--replay` adds μ·(next-token loss on pretraining rows) to each step: at μ = 0 the run equals one without
    replay (the embedder's batches and order are untouched), at μ = 1 it moves the weights and logs the replay loss;
    the replayed rows of a step are fixed by its examples (a resumed run replays the same ones)."""
    from training.rehearsal import replay_indices

    plain = _rehearsal_run(tmp_path / "plain", bench, None)
    zero = _rehearsal_run(tmp_path / "zero", bench, pdata, weight=0.0)
    replayed = _rehearsal_run(tmp_path / "replay", bench, pdata, weight=1.0)
    assert plain.keys() == zero.keys() == replayed.keys()
    assert max(float(abs(plain[k] - zero[k]).max()) for k in plain) < 1e-6
    assert max(float(abs(plain[k] - replayed[k]).max()) for k in plain) > 1e-4
    log = [json.loads(line) for line in (tmp_path / "replay" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(r["replay_loss"] > 0 for r in log)
    assert "replay_loss" not in json.loads((tmp_path / "plain" / "train_log.jsonl").read_text().splitlines()[0])
    # a run folder trained without replay is not silently resumed or reused with it
    from training import train as T

    with pytest.raises(ValueError, match="trained with rehearsal"):
        T.run(T.parse_args(["--data", str(bench), "--out", str(tmp_path / "plain"), "--labeling", "noaug", "--init",
                            "tiny", "--replay", str(pdata)]))
    # the collator's replayed rows are a function of the batch's examples: the same batch, the same rows
    from types import SimpleNamespace

    from training.rehearsal import RehearsalCollator

    rows = PD.load_rows(pdata, "train")
    collate = RehearsalCollator(lambda ex: len(ex), lambda rs: [r["id"] for r in rs], rows, 3)
    batch = [SimpleNamespace(row=SimpleNamespace(id=f"x:{i}")) for i in range(4)]
    first = collate(batch)
    assert first == collate(batch) and first["embed"] == 4 and len(set(first["replay"])) == 3
    assert first["replay"] != collate(batch[:3])["replay"]
    ids = ["a:1", "b:2", "c:3"]
    picks = replay_indices(ids, 100, 8, seed=0)
    assert picks == replay_indices(ids, 100, 8, seed=0) and len(set(picks)) == 8
    assert picks != replay_indices(["a:1", "b:2", "c:4"], 100, 8, seed=0)
    assert sorted(replay_indices(ids, 5, 8, seed=0)) == [0, 1, 2, 3, 4]  # never more rows than there are


@pytest.mark.parametrize("flags, message", [
    (["--replay", "BENCH"], "not a pretraining data folder"),
    (["--replay", "PDATA", "--replay-weight", "-1"], "--replay-weight must be >= 0"),
    (["--replay", "PDATA", "--replay-batch", "0"], "--replay-batch must be >= 1"),
])
def test_rehearsal_settings_are_checked_before_anything_runs(tmp_path, bench, pdata, capsys, flags, message):
    from training import train as T
    from training.reproduce import main as reproduce_main

    flags = [str(bench) if f == "BENCH" else str(pdata) if f == "PDATA" else f for f in flags]
    with pytest.raises(SystemExit):
        T.main(["--data", str(bench), "--out", str(tmp_path / "run"), "--labeling", "noaug", "--init", "tiny",
                *flags])
    assert message in capsys.readouterr().err
    with pytest.raises(SystemExit, match=message):
        reproduce_main(["--out", str(tmp_path / "rep"), *flags])
    assert not (tmp_path / "run").exists() and not (tmp_path / "rep").exists()
