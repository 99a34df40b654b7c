"""msolomon.files: atomic writes, and folder replacement that a SIGKILL at any step leaves loadable.

The kill tests run the save in a child process that counts the file-system steps of the save (every os.replace,
os.rename, shutil.rmtree and mkdir: a kill between two of them stands for a kill anywhere between them, e.g. halfway
through writing the staging folder) and SIGKILLs itself just before step k, for every k; the
parent then loads the folder and finds the old version or the new one, never neither. One child imports and sets up
once, then forks a process per k that runs the save and is killed there (a fresh interpreter per k cost about 3 s
of imports each).
"""
from __future__ import annotations

import json
import os
import select
import stat
import subprocess
import sys
import tempfile
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

# a child that installs the step counter and runs the test's SETUP (which defines `save(target)`) once; then, for each
# plan it reads from stdin (a JSON list of [k, target]), it forks one process per entry that saves to target and
# SIGKILLs itself just before step k (k = 0: never), and answers with the step counts and exit statuses
CHILD = textwrap.dedent("""
    import json, os, shutil, signal, sys, traceback
    kill_at = [0]
    steps = [0]
    def step(name):
        steps[0] += 1
        if steps[0] == kill_at[0]:
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
    SETUP
    for line in sys.stdin:
        answer = {}
        for k, target in json.loads(line):
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    signal.alarm(120)  # a save that hangs ends with SIGALRM (status -14), never a hung suite
                    kill_at[0], steps[0] = k, 0  # count the save only
                    save(target)
                    os.write(write, str(steps[0]).encode())
                    code = 0
                except BaseException:
                    traceback.print_exc()
                finally:
                    os._exit(code)
            os.close(write)
            _, status = os.waitpid(pid, 0)
            counted = os.read(read, 64).decode()
            os.close(read)
            answer[k] = [-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status), counted]
        sys.stdout.write(json.dumps(answer) + "\\n")
        sys.stdout.flush()
""")


def _kill_at_every_step(setup: str, check, prepare) -> int:
    """Run the save once unkilled to count its steps, then once per step killed there, each on its own copy:
    `prepare(k)` returns the folder save k writes; `check(k, target, killed)` after each."""
    body = CHILD.replace("SETUP", textwrap.dedent(setup).strip())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    errors = tempfile.TemporaryFile("w+")  # a file, not a pipe: a full stderr pipe would block the child
    child = subprocess.Popen([sys.executable, "-c", body], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=errors, text=True)

    def failed(why: str) -> AssertionError:
        child.kill()
        child.wait(60)
        errors.seek(0)
        return AssertionError(f"{why}: {errors.read()[-2000:]}")

    def ask(plan: dict[int, Path]) -> dict[int, list]:
        child.stdin.write(json.dumps([[k, str(t)] for k, t in plan.items()]) + "\n")
        child.stdin.flush()
        if not select.select([child.stdout], [], [], 300)[0]:
            raise failed("no answer from the child in 300 s")
        line = child.stdout.readline()
        if not line:
            raise failed("the child stopped")
        return {int(k): v for k, v in json.loads(line).items()}

    try:
        first = prepare(0)
        status, counted = ask({0: first})[0]
        if status != 0:
            raise failed(f"the unkilled save ended with status {status}")
        n = int(counted)
        check(0, first, killed=False)
        assert n >= 3
        targets = {k: prepare(k) for k in range(1, n + 1)}
        answers = ask(targets)
    finally:
        child.stdin.close()
        try:
            child.wait(60)
        except subprocess.TimeoutExpired:
            child.kill()
        errors.close()
    for k, target in targets.items():
        assert answers[k][0] == -9, (k, answers[k])
        check(k, target, killed=True)
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
    setup = f"""
        from msolomon import MSolomon
        model = MSolomon.from_pretrained({str(tmp_path / "new")!r})
        def save(target):
            model.save_pretrained(target)
    """

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

    n = _kill_at_every_step(setup, check, prepare)
    assert seen == {"old", "new"}, (n, seen)


def test_a_kill_at_any_step_of_an_index_save_leaves_the_old_or_the_new_index(tmp_path):
    from msolomon.index import VectorIndex

    rng = np.random.default_rng(0)
    old_vecs, new_vecs = rng.normal(size=(20, 8)).astype(np.float32), rng.normal(size=(30, 8)).astype(np.float32)
    VectorIndex.build(old_vecs, [{"i": i} for i in range(20)]).save(tmp_path / "old")
    np.save(tmp_path / "new.npy", new_vecs)
    old = VectorIndex.load(tmp_path / "old")
    new = VectorIndex.build(new_vecs, [{"i": i} for i in range(30)])
    setup = f"""
        import numpy as np
        from msolomon.index import VectorIndex
        index = VectorIndex.build(np.load({str(tmp_path / "new.npy")!r}), [{{"i": i}} for i in range(30)])
        def save(target):
            index.save(target)
    """

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

    _kill_at_every_step(setup, check, prepare)
    assert seen == {20, 30}
