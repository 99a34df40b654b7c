"""msolomon.files: atomic writes, and folder replacement that a SIGKILL at any step leaves loadable.

The kill tests run the save in a child process that counts the file-system steps of the save (every os.replace,
os.rename, shutil.rmtree and mkdir: a kill between two of them stands for a kill anywhere between them, e.g. halfway
through writing the staging folder) and SIGKILLs itself just before step k, for every k; the
parent then loads the folder and finds the old version or the new one, never neither.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from msolomon.files import (
    atomic_write_json,
    atomic_write_text,
    default_file_mode,
    read_json,
    read_jsonl,
    recover_dir,
    replace_dir,
)

ROOT = Path(__file__).resolve().parents[1]

# a child that installs the step counter, then runs SAVE; with KILL_AT=k it SIGKILLs itself before step k
COUNTER = textwrap.dedent("""
    import os, shutil, signal, sys
    kill_at = int(os.environ.get("KILL_AT", "0"))
    steps = [0]
    def step(name):
        steps[0] += 1
        if steps[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    def wrap(mod, attr):
        real = getattr(mod, attr)
        def inner(*a, **k):
            step(attr)
            return real(*a, **k)
        setattr(mod, attr, inner)
    for attr in ("replace", "rename", "mkdir"):
        wrap(os, attr)
    wrap(shutil, "rmtree")
    def done():
        sys.stdout.write(f"STEPS {steps[0]}\\n")
""")


def _run_child(body: str, kill_at: int, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "KILL_AT": str(kill_at), **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", body], env=env, capture_output=True, text=True, timeout=300)


def _kill_at_every_step(body: str, check, prepare, workers: int = 2) -> int:
    """Run `body` once unkilled to count its steps, then once per step killed there, `workers` children at a time,
    each on its own copy: `prepare(k)` returns the folder child k writes (its $TARGET); `check(k, target, killed)`
    after each."""
    from concurrent.futures import ThreadPoolExecutor

    first = prepare(0)
    full = _run_child(body, 0, {"TARGET": str(first)})
    assert full.returncode == 0, full.stderr[-2000:]
    n = int(full.stdout.split("STEPS")[-1])
    check(0, first, killed=False)
    assert n >= 3
    targets = {k: prepare(k) for k in range(1, n + 1)}
    with ThreadPoolExecutor(workers) as pool:
        procs = dict(zip(targets, pool.map(lambda k: _run_child(body, k, {"TARGET": str(targets[k])}), targets)))
    for k, proc in procs.items():
        assert proc.returncode == -9, (k, proc.returncode, proc.stderr[-2000:])
        check(k, targets[k], killed=True)
    return n


def _reset(old: Path, target: Path) -> None:
    """`target` holds a copy of `old` again, and nothing else named after it is left."""
    import shutil

    for p in target.parent.iterdir():
        if p.name.startswith(target.name):
            shutil.rmtree(p)
    shutil.copytree(old, target)


def test_atomic_write_text_keeps_normal_permissions_and_replaces(tmp_path):
    path = tmp_path / "a" / "r.json"
    atomic_write_json(path, {"x": 1})
    atomic_write_text(path, '{"x": 2}\n')
    assert read_json(path) == {"x": 2}
    assert stat.S_IMODE(path.stat().st_mode) == default_file_mode()
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary left behind
    with pytest.raises(ValueError):
        atomic_write_json(path, {"x": float("nan")})
    assert read_json(path) == {"x": 2}  # a failed write leaves the old file


def test_read_jsonl_skips_a_torn_last_line_and_read_json_defaults(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"st')
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    with pytest.raises(ValueError, match="log.jsonl:3"):
        read_jsonl(path, strict=True)
    assert read_jsonl(tmp_path / "missing.jsonl") == []
    (tmp_path / "bad.json").write_text("{")
    assert read_json(tmp_path / "bad.json", "default") == "default"


def test_replace_dir_recovers_the_old_folder_after_a_kill_between_renames(tmp_path):
    target = tmp_path / "model"
    replace_dir(target, lambda d: (d / "v").write_text("1"))
    replace_dir(target, lambda d: (d / "v").write_text("2"))
    assert (target / "v").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    os.replace(target, tmp_path / "model.old")  # what a kill between the two renames leaves
    (tmp_path / "model.tmp").mkdir()
    assert recover_dir(target)
    assert (target / "v").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with pytest.raises(RuntimeError):  # a failing writer leaves the old folder and no staging
        replace_dir(target, lambda d: (_ for _ in ()).throw(RuntimeError("boom")))
    assert (target / "v").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_kill_at_any_step_of_save_pretrained_leaves_the_old_or_the_new_model(tmp_path):
    import torch

    from msolomon import MSolomon

    small = dict(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1, vision_dim=16,
                 vision_depth=1, vision_heads=2)
    old = MSolomon.tiny(seed=0, **small)
    old.save_pretrained(tmp_path / "old")
    new = MSolomon.tiny(seed=1, **small)
    new.save_pretrained(tmp_path / "new")
    text = ["three"]
    want_old, want_new = old.encode_candidates(text), new.encode_candidates(text)
    assert np.abs(want_old - want_new).max() > 1e-3
    body = COUNTER + textwrap.dedent(f"""
        from msolomon import MSolomon
        model = MSolomon.from_pretrained({str(tmp_path / "new")!r})
        steps[0] = 0  # count the save only
        model.save_pretrained(os.environ["TARGET"])
        done()
    """)

    def prepare(k):
        target = tmp_path / f"run{k}" / "target"
        target.parent.mkdir(exist_ok=True)
        _reset(tmp_path / "old", target)
        return target

    seen = set()

    def check(k, target, killed):
        got = MSolomon.from_pretrained(target, dtype=torch.float32).encode_candidates(text)
        which = "old" if np.abs(got - want_old).max() < 1e-5 else "new" if np.abs(got - want_new).max() < 1e-5 else None
        assert which is not None, f"killed before step {k}: neither the old nor the new model"
        seen.add(which)

    n = _kill_at_every_step(body, check, prepare)
    assert seen == {"old", "new"}, (n, seen)


def test_a_kill_at_any_step_of_an_index_save_leaves_the_old_or_the_new_index(tmp_path):
    from msolomon.index import VectorIndex

    rng = np.random.default_rng(0)
    old_vecs, new_vecs = rng.normal(size=(20, 8)).astype(np.float32), rng.normal(size=(30, 8)).astype(np.float32)
    VectorIndex.build(old_vecs, [{"i": i} for i in range(20)]).save(tmp_path / "old")
    np.save(tmp_path / "new.npy", new_vecs)
    old = VectorIndex.load(tmp_path / "old")
    new = VectorIndex.build(new_vecs, [{"i": i} for i in range(30)])
    body = COUNTER + textwrap.dedent(f"""
        import numpy as np
        from msolomon.index import VectorIndex
        index = VectorIndex.build(np.load({str(tmp_path / "new.npy")!r}), [{{"i": i}} for i in range(30)])
        steps[0] = 0
        index.save(os.environ["TARGET"])
        done()
    """)

    def prepare(k):
        target = tmp_path / f"run{k}" / "target"
        target.parent.mkdir(exist_ok=True)
        _reset(tmp_path / "old", target)
        return target

    seen = set()

    def check(k, target, killed):
        index = VectorIndex.load(target)
        assert len(index) in (20, 30), f"killed before step {k}: {len(index)} rows"
        want = (new if len(index) == 30 else old).index.reconstruct_n(0, len(index))
        assert np.allclose(index.index.reconstruct_n(0, len(index)), want)
        assert json.loads((target / "meta.json").read_text())["count"] == len(index)
        seen.add(len(index))

    _kill_at_every_step(body, check, prepare)
    assert seen == {20, 30}
