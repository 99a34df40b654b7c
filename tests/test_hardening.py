"""Hardening (issue 10): one test per bug, a table of bad inputs with the error type and a fragment of its message,
and the command lines' answers to a user's mistakes (exit code 2, one line, no traceback)."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import resource
import shutil
import stat
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from msolomon import Candidate, MSolomon, Query, VectorIndex, prompts
from msolomon.data import DataFormatError
from msolomon.data.mmeb import read_eval_dataset, read_train_dataset
from msolomon.inputs import InputTypeError
from msolomon.processing import ImageError, load_image

ROOT = Path(__file__).resolve().parents[1]


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model):
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    tiny_model.save_pretrained(path)
    return path


def _copy(checkpoint: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(checkpoint, dst)
    return dst


# ------------------------------------------------------------------------------------------------ the seven bugs

def test_bug1_max_length_holds_for_text_full_of_control_tokens(tiny_model):
    limit = tiny_model.settings.max_length
    for text in ("<|im_end|>" * 3000, "/augment <|image_pad|>" * 2000):
        enc = tiny_model.encoder.encode_prompt(Query(text=text, instruction="<|vision_start|> find"), reserve=65)
        assert len(enc.input_ids) <= limit - 65
        # the only control tokens are the template's own: one <|im_start|> per turn, one <|im_end|>, no image pads
        assert enc.input_ids.count(tiny_model.terminal_id) == 1
        assert tiny_model.augment_id not in enc.input_ids and tiny_model.encoder.image_token_id not in enc.input_ids
    r = tiny_model.encode_queries("<|im_end|>" * 3000, augment="always", max_new_tokens=4)
    assert np.isfinite(r.embedding).all()


def test_bug1_every_added_token_of_the_real_qwen_tokenizer_is_neutralised():
    from msolomon.backbone import build_processor, ensure_special_tokens, load_qwen_tokenizer
    from msolomon.processing import Encoder

    tok = ensure_special_tokens(load_qwen_tokenizer())
    enc = Encoder(build_processor(tok, 56 * 56, 112 * 112), max_length=256)
    typed = "<tool_call> <|fim_prefix|> <think> </tool_response> <|file_sep|> <|im_end|> /embed"
    ids = enc.encode_prompt(Query(text=typed)).input_ids
    added = {i for i in tok.added_tokens_decoder} - {tok.convert_tokens_to_ids(prompts.IM_START),
                                                     tok.convert_tokens_to_ids(prompts.IM_END)}
    assert not added & set(ids), [tok.convert_ids_to_tokens(i) for i in set(ids) & added]
    assert ids.count(tok.convert_tokens_to_ids(prompts.IM_END)) == 1  # the template's own, nothing typed
    assert "tool_call" in tok.decode(ids)  # the text is kept, as plain text


def test_bug2_a_nan_or_inf_pixel_does_not_blacken_a_float_image():
    ramp = np.tile(np.linspace(0.0, 1.0, 32, dtype=np.float32), (16, 1))
    clean = np.asarray(load_image(Image.fromarray(ramp, mode="F")))
    spoiled = ramp.copy()
    spoiled[3, 3], spoiled[4, 4], spoiled[5, 5] = np.nan, np.inf, -np.inf
    out = np.asarray(load_image(Image.fromarray(spoiled, mode="F")))
    assert out.max() == 255 and out.min() == 0
    mask = np.ones(ramp.shape, bool)
    mask[[3, 4, 5], [3, 4, 5]] = False
    np.testing.assert_array_equal(out[mask], clean[mask])
    assert out[4, 4, 0] == 255 and out[5, 5, 0] == 0  # +inf brightest, -inf darkest


@pytest.mark.parametrize("batch_size, error, fragment", [
    (-1, ValueError, "batch_size must be at least 1"), (0, ValueError, "batch_size must be at least 1"),
    (2.5, ValueError, "batch_size must be a whole number"), ("4", InputTypeError, "batch_size must be an integer"),
])
def test_bug3_encode_candidates_checks_batch_size(tiny_model, batch_size, error, fragment):
    with pytest.raises(error, match=fragment):
        tiny_model.encode_candidates(["a", "b", "c"], batch_size=batch_size)
    assert tiny_model.encode_candidates(["a", "b", "c"], batch_size=2.0).shape[0] == 3  # an integral float is fine


@pytest.mark.parametrize("vectors", [[], np.zeros((0, 8), np.float32), np.zeros((3, 0), np.float32), [[]]])
def test_bug4_an_empty_input_builds_no_index(vectors):
    with pytest.raises(ValueError, match="no vectors|dimension 0"):
        VectorIndex.build(vectors)


def _siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir())


def test_bug5_save_is_all_or_nothing(tmp_path, monkeypatch):
    import faiss

    path = tmp_path / "idx"
    old = VectorIndex.build(_unit(5, 8), [{"text": f"old {i}"} for i in range(5)])
    old.save(path)
    before = {f: (path / f).read_bytes() for f in ("meta.json", "index.faiss", "payloads.jsonl")}

    bad_payload = VectorIndex.build(_unit(7, 8, 1), [{"text": "new"}] * 6 + [{"tags": {"a set"}}])
    with pytest.raises(ValueError, match="payload 6"):
        bad_payload.save(path)

    def failing_write(index, file):  # the disk fills up while the index file is written
        Path(file).write_bytes(b"partial")
        raise RuntimeError("No space left on device")

    monkeypatch.setattr(faiss, "write_index", failing_write)
    with pytest.raises(RuntimeError, match="No space"):
        VectorIndex.build(_unit(7, 8, 2), [{"text": "new"}] * 7).save(path)
    monkeypatch.undo()

    assert {f: (path / f).read_bytes() for f in before} == before  # the old index, whole
    assert _siblings(path) == ["idx"] and sorted(os.listdir(path)) == sorted(before)  # no temporary left over
    loaded = VectorIndex.load(path)
    assert loaded.payloads == [{"text": f"old {i}"} for i in range(5)] and len(loaded) == 5

    VectorIndex.build(_unit(7, 8, 3), [{"text": "new"}] * 7).save(path)  # a good save replaces it
    assert len(VectorIndex.load(path)) == 7 and _siblings(path) == ["idx"]
    mode = stat.S_IMODE((path / "meta.json").stat().st_mode)
    assert all(stat.S_IMODE((path / f).stat().st_mode) == mode for f in before)


def test_bug5_save_never_replaces_a_folder_that_is_not_an_index(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match="not a saved VectorIndex"):
        VectorIndex.build(_unit(2, 4)).save(folder)
    assert (folder / "thesis.tex").read_text() == "years of work"


def _load_in_thread(path: Path, seconds: float = 20.0):
    box: dict = {}

    def run():
        try:
            box["value"] = VectorIndex.load(path)
        except Exception as err:  # noqa: BLE001 - handed to the test
            box["error"] = err

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "VectorIndex.load hung"
    return box


def test_bug6_load_refuses_a_fifo_instead_of_hanging(tmp_path):
    path = tmp_path / "idx"
    VectorIndex.build(_unit(3, 4)).save(path)
    (path / "payloads.jsonl").unlink()
    os.mkfifo(path / "payloads.jsonl")
    box = _load_in_thread(path)
    assert isinstance(box.get("error"), ValueError) and "FIFO" in str(box["error"])


def test_bug6_a_crafted_index_file_is_refused_before_faiss_allocates(tmp_path):
    path = tmp_path / "idx"
    VectorIndex.build(_unit(1, 160)).save(path)
    index_file = path / "index.faiss"
    data = bytearray(index_file.read_bytes())
    assert len(data) == 685
    struct.pack_into("<Q", data, 37, 400_000_000)  # claims 1.6 GB of floats in a 685-byte file
    index_file.write_bytes(bytes(data))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    box = _load_in_thread(path)
    assert isinstance(box.get("error"), ValueError) and "header does not match" in str(box["error"])
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200_000  # kB: nothing near 1.6 GB
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps(dict(meta, count=10)))  # now the size disagrees with meta.json
    with pytest.raises(ValueError, match="685 bytes, but a flat index of 10 vectors"):
        VectorIndex.load(path)


def _eval_dataset(folder: Path, name: str, rows: list[dict]) -> None:
    (folder / name).mkdir(parents=True, exist_ok=True)
    (folder / name / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("image_path", ["../secret.png", "{outside}", "link.png"])
def test_bug7_dataset_images_must_stay_inside_the_image_root(tmp_path, image_path):
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(secret)
    (root / "link.png").symlink_to(secret)
    path = image_path.format(outside=secret)
    _eval_dataset(root / "data", "D", [{"qry_text": "q", "qry_img_path": path, "tgt_text": ["a"],
                                        "tgt_img_path": [""]}])
    with pytest.raises(DataFormatError, match="outside the image root.*--allow-images-outside-root"):
        read_eval_dataset(root / "data", "D", root)
    with pytest.raises(DataFormatError, match="outside the image root"):
        read_eval_dataset(root / "data", "D", root, check_images=False)
    rows = read_eval_dataset(root / "data", "D", root, allow_outside_root=True)
    assert Path(rows[0].query.image).resolve() == secret.resolve()


def test_an_image_outside_the_root_is_a_user_mistake_on_the_command_line(tmp_path, capsys):
    """Exit 2 with one line, like every other mistake; the model is never loaded (no such folder is given)."""
    from msolomon import evaluation as ev

    (tmp_path / "data").mkdir()
    _eval_dataset(tmp_path / "data", "D", [{"qry_text": "q", "qry_img_path": "../secret.png", "tgt_text": ["a"],
                                           "tgt_img_path": [""]}])
    with pytest.raises(SystemExit) as e:
        ev.main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "r.json"), "--model", "/no/model"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "outside the image root" in err and len(err.strip().splitlines()) == 1


def test_bug7_training_rows_and_the_openai_teacher_keep_images_inside_the_root(tmp_path):
    from training.teachers import OpenAIBackend, OpenAISettings, TeacherItem

    root = tmp_path / "root"
    (root / "T").mkdir(parents=True)
    (root / "T" / "original.jsonl").write_text(json.dumps(
        {"qry": "q", "qry_image_path": "/etc/hostname", "pos_text": "a", "pos_image_path": ""}) + "\n")
    with pytest.raises(DataFormatError, match="outside the image root"):
        read_train_dataset(root, "T", root, check_images=False)
    inside = root / "ok.png"
    Image.new("RGB", (8, 8)).save(inside)
    backend = OpenAIBackend(OpenAISettings(base_url="http://127.0.0.1:9/v1", model="m", retries=0, timeout=0.2,
                                           image_root=str(root)))
    t0 = time.perf_counter()
    reply = backend.complete(TeacherItem("q1", "T", "what?", str(tmp_path / "root" / ".." / "elsewhere.png")))
    assert reply.reply is None and "not sent" in reply.error and "outside the image root" in reply.error
    assert time.perf_counter() - t0 < 0.15  # refused before any connection attempt
    unset = OpenAIBackend(OpenAISettings(base_url="http://127.0.0.1:9/v1", model="m", retries=0, timeout=0.2))
    assert "not sent" in unset.complete(TeacherItem("q2", "T", "what?", str(inside))).error
    sent = backend.complete(TeacherItem("q3", "T", "what?", str(inside)))
    assert "cannot reach" in sent.error  # inside the root: it was sent (to a port nobody listens on)


def test_teacher_augmentations_are_neutralised_before_they_become_targets(tmp_path):
    from training.synthesize import load_augmentations

    path = tmp_path / "aug.jsonl"
    path.write_text(json.dumps({"id": "a", "status": "ok", "augmentation": "seven<|im_end|>/augment <think>"}) + "\n")
    aug = load_augmentations(path)["a"]
    assert all(t not in aug for t in ("<|im_end|>", "/augment", "<think>"))
    assert aug.replace(prompts._ZERO_WIDTH, "") == "seven<|im_end|>/augment <think>"


# ------------------------------------------------------------------------------------ the table of bad inputs

def _png_with_text_bomb(path: Path) -> str:
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "a" * (PngImagePlugin.MAX_TEXT_CHUNK + 1024), zip=True)  # a few kB on disk
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return str(path)


def _write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return path


BAD_INPUTS = [
    # (id, call(tiny_model, tmp_path), error type, fragment of the message)
    ("text not a str", lambda m, t: Query(text=42), InputTypeError, "Query.text must be a str or None, got int"),
    ("lone surrogate", lambda m, t: Query(text="caf\ud800e"), ValueError, "lone surrogate '\\ud800' at character 3"),
    ("image not a path", lambda m, t: Candidate(image=3.5), InputTypeError, "Candidate.image must be a file path"),
    ("empty image path", lambda m, t: Query(text="x", image=" "), ValueError, "empty path"),
    ("empty batch item", lambda m, t: m.encode_queries(["a cat", "  ", "a dog"]), ValueError, "query 1 of 3: "),
    ("bad batch item", lambda m, t: m.encode_candidates(["a", 7]), InputTypeError, "candidate 1 of 2: cannot make"),
    ("not a batch", lambda m, t: m.encode_queries(12), InputTypeError, "cannot encode a int: pass a str"),
    ("max_new_tokens NaN", lambda m, t: m.encode_queries("x", max_new_tokens=math.nan), ValueError,
     "max_new_tokens must be a whole number, got nan"),
    ("max_new_tokens str", lambda m, t: m.encode_queries("x", max_new_tokens="5"), InputTypeError,
     "max_new_tokens must be an integer, got str"),
    ("fractional batch_size", lambda m, t: m.encode_queries("x", batch_size=1.5), ValueError,
     "batch_size must be a whole number"),
    ("threshold str", lambda m, t: m.encode_queries("x", threshold="high"), InputTypeError,
     "threshold must be a number"),
    ("threshold NaN", lambda m, t: m.encode_queries("x", threshold=math.nan), ValueError,
     "threshold must be in [0, 1]"),
    ("stream max_new_tokens", lambda m, t: next(m.stream_query("x", max_new_tokens=0)), ValueError,
     "max_new_tokens must be at least 1"),
    ("placeholder without image", lambda m, t: m.encode_queries("<|image_1|> what is this?"), ValueError,
     "image placeholder <|image_1|> but no image"),
    ("k fractional", lambda m, t: VectorIndex.build(_unit(3, 4)).search(_unit(1, 4)[0], k=2.5), ValueError,
     "k must be a whole number"),
    ("k str", lambda m, t: VectorIndex.build(_unit(3, 4)).search(_unit(1, 4)[0], k="3"), InputTypeError,
     "k must be an integer"),
    ("vectors not numbers", lambda m, t: VectorIndex.build([["a", "b"]]), ValueError, "numeric array"),
    ("PNG text bomb", lambda m, t: load_image(_png_with_text_bomb(t / "bomb.png")), ImageError,
     "bomb.png: malformed image file"),
    ("index folder missing", lambda m, t: VectorIndex.load(t / "nope"), ValueError, "no such folder"),
    ("meta.json not JSON", lambda m, t: VectorIndex.load(_write(t / "i" / "meta.json", "{oops").parent), ValueError,
     "meta.json: not valid JSON"),
    ("meta.json a list", lambda m, t: VectorIndex.load(_write(t / "i" / "meta.json", "[1]").parent), ValueError,
     "must be a JSON object, got list"),
    ("meta.json without dim", lambda m, t: _load_broken_meta(t, "dim"), ValueError, "'dim' must be an integer >= 1"),
    ("payload line malformed", lambda m, t: _load_broken_payloads(t), ValueError, "payloads.jsonl: line 2: not valid"),
    ("model folder missing", lambda m, t: MSolomon.from_pretrained(str(t / "no" / "such")), ValueError,
     "does not exist"),
    ("mistyped folder", lambda m, t: _chdir_load(t, "asset/model"), ValueError, "no such folder here"),
    ("model is a file", lambda m, t: MSolomon.from_pretrained(_write(t / "f.bin", b"x")), ValueError,
     "is a file, not a model folder"),
    ("empty model folder", lambda m, t: MSolomon.from_pretrained((t / "e").mkdir() or t / "e"), ValueError,
     "is empty"),
    ("folder not a model", lambda m, t: MSolomon.from_pretrained(_write(t / "d" / "x.txt", "hi").parent), ValueError,
     "not a model folder: no config.json"),
    ("model path not a str", lambda m, t: MSolomon.from_pretrained(42), InputTypeError, "folder path"),
]


def _load_broken_meta(t: Path, key: str):
    VectorIndex.build(_unit(2, 4)).save(t / "i")
    meta = json.loads((t / "i" / "meta.json").read_text())
    del meta[key]
    (t / "i" / "meta.json").write_text(json.dumps(meta))
    return VectorIndex.load(t / "i")


def _load_broken_payloads(t: Path):
    VectorIndex.build(_unit(3, 4)).save(t / "i")
    lines = (t / "i" / "payloads.jsonl").read_text().splitlines()
    lines[1] = lines[1][:-3]
    (t / "i" / "payloads.jsonl").write_text("\n".join(lines) + "\n")
    return VectorIndex.load(t / "i")


def _chdir_load(t: Path, name: str):
    old = os.getcwd()
    os.chdir(t)
    try:
        return MSolomon.from_pretrained(name)
    finally:
        os.chdir(old)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_table(case, tiny_model, tmp_path):
    _, call, error, fragment = case
    with pytest.raises(error) as info:
        call(tiny_model, tmp_path)
    assert fragment in str(info.value), str(info.value)
    assert len(str(info.value).splitlines()) == 1  # one line, fit for a command line


CHECKPOINT_DAMAGE = [
    ("zero-byte weights", "model.safetensors", b"", "0 bytes, not a safetensors file"),
    ("truncated weights", "model.safetensors", "truncate", "truncated: its header describes"),
    ("huge header", "model.safetensors", struct.pack("<Q", 1 << 40) + b"{}", "corrupt safetensors header"),
    ("padding_side", "msolomon.json", {"padding_side": "middle"}, "msolomon.json: padding_side must be"),
    ("default_threshold", "msolomon.json", {"default_threshold": 2}, "msolomon.json: default_threshold must be"),
    ("msolomon.json not JSON", "msolomon.json", b"{", "msolomon.json: not a readable JSON file"),
    ("no tokenizer", "tokenizer.json", None, "no tokenizer files"),
    ("config not JSON", "config.json", b"]", "config.json: not a readable JSON file"),
]


@pytest.mark.parametrize("case", CHECKPOINT_DAMAGE, ids=[c[0] for c in CHECKPOINT_DAMAGE])
def test_a_damaged_checkpoint_fails_at_load_naming_the_file(case, checkpoint, tmp_path):
    _, name, damage, fragment = case
    folder = _copy(checkpoint, tmp_path)
    target = folder / name
    if damage is None:
        target.unlink()
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif isinstance(damage, dict):
        target.write_text(json.dumps(dict(json.loads(target.read_text()), **damage)))
    else:
        target.write_bytes(damage)
    with pytest.raises(ValueError) as info:
        MSolomon.from_pretrained(folder)
    assert fragment in str(info.value) and str(folder) in str(info.value)


@pytest.mark.parametrize("offline", [True, False])
def test_a_hub_id_is_never_downloaded_and_the_message_says_how_to_load_one(tmp_path, monkeypatch, offline):
    """Nothing is downloaded at run time, whether or not the offline variables are set: only the local cache is read."""
    import huggingface_hub

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if offline:
            monkeypatch.setenv(var, "1")
        else:
            monkeypatch.delenv(var, raising=False)
    calls = []
    real = huggingface_hub.snapshot_download
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda *a, **kw: (calls.append(kw), real(*a, **{**kw, "local_files_only": True}))[1])
    monkeypatch.chdir(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as info:
        MSolomon.from_pretrained("nobody-here/no-such-model")
    assert time.perf_counter() - t0 < 5
    assert calls and all(kw.get("local_files_only") is True for kw in calls)
    message = str(info.value)
    assert "no such folder here" in message and "not in the local hub cache" in message
    assert "huggingface-cli download" in message and "nothing is downloaded" in message


def test_defaults_paths_exif_and_quiet_loading(tmp_path, monkeypatch, capfd, tiny_model):
    monkeypatch.chdir(tmp_path)  # the shipped model is found from any working directory
    model = MSolomon.from_pretrained()
    assert model.settings.max_length > 0
    assert "Loading weights" not in capfd.readouterr().err  # quiet by default
    # a bare Path is an image, never text
    img = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    Image.new("RGB", (40, 20), (200, 0, 0)).save(img, exif=exif)
    assert load_image(img).size == (20, 40)  # applied, as photo viewers do
    r = tiny_model.encode_queries(img, augment="never")
    assert np.isfinite(r.embedding).all()
    assert tiny_model.encode_candidates([img, "text"]).shape[0] == 2


# ------------------------------------------------------------------------------------------------ command lines

def _quickstart():
    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "examples" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv, fragment", [
    (["--datasets", "DigitCLS"], "unknown dataset 'DigitCLS'; choose from DigitsCLS"),
    (["--model", "{tmp}"], "--model: model folder"),
    (["--n", "0"], "--n must be at least 1"),
])
def test_quickstart_mistakes_exit_2_with_one_line(argv, fragment, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _quickstart().main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and fragment in err and len(err.strip().splitlines()) == 1


def test_minimmeb_refuses_an_existing_foreign_folder_with_one_line(tmp_path, capsys):
    from msolomon.data import minimmeb

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as e:
        minimmeb.main(["--out", str(tmp_path / "mine"), "--scale", "tiny", "--quiet"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "is not a MiniMMEB folder" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.fixture(scope="module")
def custom_data(tmp_path_factory):
    """A folder in MMEB-eval's layout with one dataset MMEB does not know."""
    root = tmp_path_factory.mktemp("custom")
    labels = ["cat", "dog", "bird"]
    _eval_dataset(root, "MyPets", [{"qry_text": f"a photo of a {a}", "qry_img_path": "",
                                    "tgt_text": [a] + [b for b in labels if b != a], "tgt_img_path": ["", "", ""]}
                                   for a in labels])
    return root


def test_any_dataset_in_mmeb_layout_evaluates_as_custom(custom_data, tiny_model, tmp_path, caplog):
    from msolomon import evaluation as ev

    rep = ev.evaluate(tiny_model, custom_data, ev.EvalSettings(modes="never", show_progress_bar=False))
    entry = rep["modes"]["never"]
    assert entry["datasets"]["MyPets"]["meta_task"] == "custom" and "custom" in entry["by_meta_task"]
    assert entry["overall"] == pytest.approx(entry["datasets"]["MyPets"]["p_at_1"])  # it counts in overall
    assert "--meta-task MyPets=TASK" in caplog.text
    rep = ev.evaluate(tiny_model, custom_data,
                      ev.EvalSettings(modes="never", show_progress_bar=False, meta_task=("MyPets=classification",)))
    assert rep["modes"]["never"]["datasets"]["MyPets"]["meta_task"] == "classification"
    with pytest.raises(ev.EvaluationError, match="NAME=TASK"):
        ev.parse_meta_tasks(["MyPets"])
    with pytest.raises(ev.EvaluationError, match="TASK must be one of"):
        ev.parse_meta_tasks(["MyPets=cooking"])


def test_evaluation_cli_out_folder_parts_and_permissions(custom_data, checkpoint, tmp_path, capsys):
    from msolomon import evaluation as ev

    out = tmp_path / "eval"
    out.mkdir()
    args = ["--model", str(checkpoint), "--data", str(custom_data), "--modes", "never", "--quiet", "--threads", "1"]
    assert ev.main(args + ["--out", str(out)]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["report.json", "report.md", "report.png", "report.predictions.jsonl"]  # .parts/ removed
    modes = {stat.S_IMODE((out / f).stat().st_mode) for f in files}
    assert len(modes) == 1  # every output has the same permissions
    assert ev.main(args + ["--out", str(tmp_path / "kept.json"), "--keep-parts"]) == 0
    assert (tmp_path / "kept.parts").is_dir()
    with pytest.raises(SystemExit) as e:
        ev.main(args + ["--out", str(tmp_path / "x.json"), "--meta-task", "Nope=vqa"])
    assert e.value.code == 2 and "Nope" in capsys.readouterr().err


def test_every_cli_option_says_its_default(capsys):
    from msolomon import evaluation as ev
    from msolomon.data import minimmeb

    for parser in (ev.cli.parser(), _quickstart()._parser()):
        for action in parser._actions:
            if action.dest == "help" or action.required:
                continue
            assert action.help and ("default" in action.help or action.choices), (parser.prog, action.dest)
    with pytest.raises(SystemExit):
        minimmeb.main(["--help"])
    assert "(default: 0)" in capsys.readouterr().out
