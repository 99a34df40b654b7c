"""save_pretrained / from_pretrained round trips: full weights, LoRA adapters and bitsandbytes loads."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from msolomon import MSolomon, Query

REPO = Path(__file__).resolve().parents[1]
QUERIES = ["the number after six", "a red circle above a blue square", "how many stars?"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = MSolomon.tiny(seed=3)
    path = tmp_path_factory.mktemp("ckpt") / "model"
    model.save_pretrained(path)
    return model, path


def _same(a, b, images=None):
    qs = QUERIES + ([Query(text="what is it?", image=images[0])] if images else [])
    ra = a.encode_queries(qs, augment="auto", max_new_tokens=8)
    rb = b.encode_queries(qs, augment="auto", max_new_tokens=8)
    for x, y in zip(ra, rb):
        assert x.decision == y.decision and x.token_ids == y.token_ids
        np.testing.assert_allclose(x.embedding, y.embedding, atol=1e-6)
        assert abs(x.p_augment - y.p_augment) < 1e-6
    np.testing.assert_allclose(a.encode_candidates(QUERIES), b.encode_candidates(QUERIES), atol=1e-6)


def test_round_trip_is_identical(saved, sample_images):
    model, path = saved
    assert (path / "model.safetensors").is_file() and (path / "msolomon.json").is_file()
    assert not list(path.glob("*.bin")) and not list(path.glob("*.pkl"))
    loaded = MSolomon.from_pretrained(path)
    assert loaded.augment_id == model.augment_id and loaded.embed_id == model.embed_id
    assert json.loads((path / "msolomon.json").read_text())["decision_tokens"] == ["/augment", "/embed"]
    _same(model, loaded, sample_images)


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def _checkpoint_with_a_save_interrupted(tmp_path: Path, interrupt) -> tuple[Path, dict[str, bytes], MSolomon]:
    """Save model A at tmp_path/ckpt/model, then start saving model B over it with `interrupt` in force (it makes
    the save raise part-way). Returns the path, A's files and A."""
    old = MSolomon.tiny(seed=3)
    path = tmp_path / "ckpt" / "model"
    old.save_pretrained(path)
    before = _contents(path)
    new = MSolomon.tiny(seed=5)
    with interrupt(new), pytest.raises(OSError, match="interrupted"):
        new.save_pretrained(path)
    return path, before, old


def _assert_old_checkpoint_intact(path: Path, before: dict[str, bytes], old: MSolomon) -> None:
    assert _contents(path) == before  # every file of the old checkpoint, byte for byte, and nothing more
    assert sorted(p.name for p in path.parent.iterdir()) == ["model"]  # no staging or previous folder left
    _same(old, MSolomon.from_pretrained(path))


def test_save_interrupted_while_writing_leaves_the_old_checkpoint(tmp_path):
    """The weights of the new model are written, then the tokenizer's save fails: the old checkpoint stays whole
    and loadable as the old model, and the half-written new one is nowhere to be seen."""
    staged: list[dict[str, bytes]] = []

    @contextlib.contextmanager
    def fail_at_the_tokenizer(model):
        def boom(folder, *args, **kwargs):
            staged.append(_contents(Path(folder)))
            raise OSError("interrupted after the weights")

        model.tokenizer.save_pretrained = boom
        yield

    path, before, old = _checkpoint_with_a_save_interrupted(tmp_path, fail_at_the_tokenizer)
    (half,) = staged
    assert "model.safetensors" in half and half["model.safetensors"] != before["model.safetensors"]  # truly midway
    assert "msolomon.json" not in half
    _assert_old_checkpoint_intact(path, before, old)


def test_save_interrupted_between_its_renames_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    """The complete new folder is written, the old one moved aside, and the rename of the new one into place
    fails (as a kill there would leave it): the next load puts the old checkpoint back, whole."""
    import msolomon.files as F

    @contextlib.contextmanager
    def fail_at_the_second_rename(model):
        real, calls = os.replace, []

        def replace(src, dst):
            calls.append((Path(src).name, Path(dst).name))
            if len(calls) == 2:  # model -> model.old done; model.tmp -> model: interrupted
                raise OSError("interrupted between the renames")
            real(src, dst)

        monkeypatch.setattr(F.os, "replace", replace)
        yield
        monkeypatch.undo()
        assert calls == [("model", "model.old"), ("model.tmp", "model")]

    path, before, old = _checkpoint_with_a_save_interrupted(tmp_path, fail_at_the_second_rename)
    assert not path.exists() and (path.parent / "model.old").is_dir()  # the state a kill there leaves
    loaded = MSolomon.from_pretrained(path)  # recovers the old folder before reading
    _same(old, loaded)
    _assert_old_checkpoint_intact(path, before, old)


def test_save_killed_midway_leaves_the_old_checkpoint_and_the_next_save_replaces_it(tmp_path):
    """A process killed (SIGKILL) in the middle of `save_pretrained`, after the new weights are on disk: the old
    checkpoint is intact and loadable; the next save cleans up what the killed one left and replaces it."""
    old = MSolomon.tiny(seed=3)
    path = tmp_path / "ckpt" / "model"
    old.save_pretrained(path)
    before = _contents(path)
    script = (
        "import os, signal, sys\n"
        "from msolomon import MSolomon\n"
        "m = MSolomon.tiny(seed=5)\n"
        "m.tokenizer.save_pretrained = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
        "m.save_pretrained(sys.argv[1])\n"
        "print('not killed')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run([sys.executable, "-c", script, str(path)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert "not killed" not in done.stdout
    assert (path.parent / "model.tmp" / "model.safetensors").is_file()  # killed midway: the new weights were staged
    assert _contents(path) == before
    _same(old, MSolomon.from_pretrained(path))
    new = MSolomon.tiny(seed=5)
    new.save_pretrained(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model"]
    _same(new, MSolomon.from_pretrained(path))


def test_lora_adapter_and_merged_checkpoint(saved, tmp_path):
    from peft import LoraConfig, get_peft_model

    base, base_path = saved
    fresh = MSolomon.from_pretrained(base_path)
    peft_model = get_peft_model(fresh.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                        init_lora_weights=False))
    tuned = MSolomon(peft_model, fresh.processor, fresh.settings)
    adapter_dir = tmp_path / "adapter"
    tuned.save_pretrained(adapter_dir)
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    # base + adapter, given either way
    _same(tuned, MSolomon.from_pretrained(base_path, adapter=adapter_dir))
    _same(tuned, MSolomon.from_pretrained(adapter_dir))
    # the adapter really changes the model
    a = base.encode_candidates(QUERIES)
    b = tuned.encode_candidates(QUERIES)
    assert np.abs(a - b).max() > 1e-3
    # merged checkpoint = plain checkpoint
    merged = MSolomon(peft_model.merge_and_unload(), fresh.processor, fresh.settings)
    merged_dir = tmp_path / "merged"
    merged.save_pretrained(merged_dir)
    np.testing.assert_allclose(MSolomon.from_pretrained(merged_dir).encode_candidates(QUERIES), b, atol=1e-5)


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_quantized_load_runs_on_cpu(saved, bits):
    pytest.importorskip("bitsandbytes")
    _, path = saved
    model = MSolomon.from_pretrained(path, quantization=bits, device="cpu")
    results = model.encode_queries(QUERIES, augment="auto", max_new_tokens=4)
    reference = MSolomon.from_pretrained(path).encode_queries(QUERIES, augment="never")
    full_auto = MSolomon.from_pretrained(path).encode_queries(QUERIES, augment="auto", max_new_tokens=4)
    for r, ref, full in zip(results, reference, full_auto):
        assert r.embedding.shape == ref.embedding.shape and np.isfinite(r.embedding).all()
        assert abs(r.p_augment - full.p_augment) < 0.1  # the quantised decision is the full model's
        if abs(full.p_augment - 0.5) > 0.1:
            assert r.decision == full.decision
    never = model.encode_queries(QUERIES, augment="never")
    cos = [float(x.embedding @ y.embedding) for x, y in zip(never, reference)]
    assert min(cos) > 0.9  # quantised, yet close to the full-precision model


def test_bad_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="model folder .*nowhere does not exist"):
        MSolomon.from_pretrained(tmp_path / "nowhere")


def test_signature_changes_when_the_checkpoint_is_replaced(tmp_path):
    """The evaluation's resume record keys on this, so results of an old checkpoint are not reused."""
    path = tmp_path / "m"
    MSolomon.tiny(seed=0).save_pretrained(path)
    first = MSolomon.from_pretrained(path).signature
    MSolomon.tiny(seed=5).save_pretrained(path)
    second = MSolomon.from_pretrained(path).signature
    assert first and second and first != second
