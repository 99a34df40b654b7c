"""MiniMMEB: deterministic generation, MMEB structure, candidate lists, and the oracle teacher."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from msolomon.data import META_TASKS
from msolomon.data import minimmeb as M
from msolomon.data.mmeb import list_eval_datasets, list_train_datasets, read_eval_dataset, read_train_dataset
from msolomon.data.oracle import OracleTeacher
from msolomon.prompts import MMEB_INSTRUCTIONS, extract_answer

TINY = M.SCALES["tiny"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("minimmeb")
    out = {"a": base / "seed0", "b": base / "seed0_again", "c": base / "seed1"}
    M.generate(out["a"], seed=0, scale="tiny", progress=False)
    M.generate(out["b"], seed=0, scale="tiny", progress=False)
    M.generate(out["c"], seed=1, scale="tiny", progress=False)
    return out


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_same_seed_gives_byte_identical_files(bench: dict[str, Path]) -> None:
    a, b = tree_hashes(bench["a"]), tree_hashes(bench["b"])
    assert a == b
    assert len(a) > 500
    assert not [k for k in a if k.endswith(".tmp")]
    assert not [p for p in bench["a"].parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_other_seed_gives_other_data_with_the_same_structure(bench: dict[str, Path]) -> None:
    a, c = tree_hashes(bench["a"]), tree_hashes(bench["c"])
    data_files = [k for k in a if k.endswith(".jsonl")]
    assert data_files == [k for k in c if k.endswith(".jsonl")]
    assert all(a[k] != c[k] for k in data_files)
    ma, mc = M.load_minimmeb(bench["a"]), M.load_minimmeb(bench["c"])
    assert (ma["seed"], mc["seed"]) == (0, 1)
    assert sorted(ma["datasets"]) == sorted(mc["datasets"])
    for name, info in ma["datasets"].items():
        for key in ("meta_task", "ood", "splits", "n_candidates", "n_test"):
            assert info[key] == mc["datasets"][name][key]
    for rel in data_files:
        columns_a = {tuple(sorted(r)) for r in jsonl(bench["a"] / rel)}
        assert columns_a == {tuple(sorted(r)) for r in jsonl(bench["c"] / rel)} and len(columns_a) == 1


# Digest of every validation and test file (rows and images) of tiny seed 0 as version 2 wrote them: version 3
# changed only ScenesGround's training negatives, so every figure measured on v2's val and test still holds.
V2_EVAL_DIGEST = "ba4df8f6fdb1e39b18204e20375671a67a1e4d884be70b677b7f6ab961c151a4"


def eval_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).parts
        if p.is_file() and ("val" in rel[:3] or "test" in rel[:3]):
            digest.update(str(Path(*rel)).encode())
            digest.update(hashlib.sha256(p.read_bytes()).digest())
    return digest.hexdigest()


def test_validation_and_test_are_version_2s_bytes(bench: dict[str, Path]) -> None:
    assert eval_digest(bench["a"]) == V2_EVAL_DIGEST
    assert eval_digest(bench["c"]) != V2_EVAL_DIGEST  # the digest sees the data


def test_scenes_ground_training_negatives_include_other_backgrounds(bench: dict[str, Path]) -> None:
    """A crop's background is learnt only if some negative differs from the positive by background alone."""
    rows = jsonl(bench["a"] / "train" / "ScenesGround" / "original.jsonl")
    kinds = {"background": 0, "other": 0}
    for row in rows:
        pos_bg, _, pos_obj = Path(row["pos_image_path"]).stem.partition("_")
        neg_bg, _, neg_obj = Path(row["neg_image_path"]).stem.partition("_")
        assert (pos_bg, pos_obj) != (neg_bg, neg_obj)
        kinds["background" if pos_obj == neg_obj else "other"] += 1
    assert kinds["background"] >= len(rows) // 10 and kinds["other"] >= len(rows) // 2, kinds


def test_datasets_cover_mmeb(bench: dict[str, Path]) -> None:
    meta = M.load_minimmeb(bench["a"])
    assert meta["name"] == "MiniMMEB" and meta["version"] == M.VERSION == 3 and meta["scale"] == "tiny"
    ds = meta["datasets"]
    ind = [n for n, d in ds.items() if not d["ood"]]
    ood = [n for n, d in ds.items() if d["ood"]]
    assert len(ds) >= 12 and len(ind) >= 8 and len(ood) >= 4
    assert {d["meta_task"] for d in ds.values()} == set(META_TASKS)
    assert all(ds[n]["splits"] == ["train", "val", "test"] for n in ind)
    assert all(ds[n]["splits"] == ["test"] for n in ood)
    assert sorted(list_train_datasets(bench["a"] / "train")) == sorted(ind)
    assert sorted(list_eval_datasets(bench["a"] / "test")) == sorted(ds)
    assert all(d["description"] and d["n_test"] == TINY.n_test for d in ds.values())
    assert all(ds[n]["n_train"] == TINY.n_train for n in ind)
    assert M.is_minimmeb(bench["a"]) and not M.is_minimmeb(bench["a"] / "test")


def test_the_two_headline_ood_sets(bench: dict[str, Path]) -> None:
    ds = M.load_minimmeb(bench["a"])["datasets"]
    root = bench["a"]
    # composed image retrieval (FashionIQ-like): reference image + modification text -> target image
    composed = [n for n, d in ds.items() if d["ood"] and d["meta_task"] == "retrieval" and
                read_eval_dataset(root / "test", n, root, limit=1)[0].query.text.startswith(
                    MMEB_INSTRUCTIONS["composed_fashion"].split("{")[0])]
    assert composed
    row = read_eval_dataset(root / "test", composed[0], root, limit=1)[0]
    assert row.query.image and all(c.image for c in row.candidates)
    # renditions (ImageNet-R-like): an OOD classification set over the classes of an IND one
    labels = {n: sorted(c.text for c in read_eval_dataset(root / "test", n, root, limit=1)[0].candidates)
              for n, d in ds.items() if d["meta_task"] == "classification"}
    assert any(labels[o] == labels[i] for o in labels if ds[o]["ood"] for i in labels if not ds[i]["ood"])


def test_rows_read_back_and_candidates_are_as_configured(bench: dict[str, Path]) -> None:
    root = bench["a"]
    meta = M.load_minimmeb(root)["datasets"]
    for name, info in meta.items():
        rows = read_eval_dataset(root / "test", name, image_root=root)
        assert len(rows) == TINY.n_test
        n = {len(r.candidates) for r in rows}
        assert n == {info["n_candidates"]}
        if info["meta_task"] in ("retrieval", "grounding"):
            assert info["n_candidates"] == TINY.n_candidates
        for r in rows:
            keys = [(c.text, c.image) for c in r.candidates]
            assert len(set(keys)) == len(keys), f"{name}: duplicate candidates make ties"
        unique = {(c.text, c.image) for r in rows for c in r.candidates}
        assert len(unique) <= 200, f"{name}: {len(unique)} unique candidates"
        if "train" in info["splits"]:
            train = read_train_dataset(root / "train", name, image_root=root)
            assert len(train) == TINY.n_train
            assert len({t.id for t in train}) == len(train)
            assert all(t.negative is not None for t in train)


def test_candidate_zero_is_the_positive() -> None:
    settings = M.MiniMMEBSettings.make(seed=3, scale="tiny")
    for spec in M.DATASETS.values():
        ctx = M.Ctx(settings, spec.name, "test", _NullStore(spec.name), M.rng_for(3, spec.name, "test"))
        items = spec.build(ctx, 12)
        assert len(items) == 12
        for it in items:
            assert it.cands[0] == it.pos
            assert it.pos not in it.cands[1:]
            assert it.answer and it.wrong and it.answer not in it.wrong
            assert len(it.answer.split()) <= 26


class _NullStore(M.Store):
    """A store that renders nothing: the builders' logic without the PNG cost."""

    def __init__(self, name: str) -> None:
        super().__init__(Path("/nonexistent"), name)

    def put(self, key: str, make) -> str:  # noqa: ANN001
        return f"images/{self.name}/{key}.png"


def test_text_positive_agrees_with_the_oracle(bench: dict[str, Path]) -> None:
    root = bench["a"]
    meta = M.load_minimmeb(root)["datasets"]
    for name, info in meta.items():
        if info["meta_task"] not in ("classification", "vqa"):
            continue
        rows = jsonl(root / "test" / name / "test.jsonl")
        oracle = {r["id"]: r for r in jsonl(root / "test" / name / "oracle.jsonl")}
        for i, row in enumerate(rows):
            label = row["tgt_text"][0]
            answer = oracle[f"{name}:{i}"]["answer"].lower()
            phrase = M.PHOTO_PHRASES.get(label, label) if name == "PhotoCLS" else label
            assert phrase.lower() in answer, (name, label, answer)


def test_n_candidates_option(tmp_path: Path) -> None:
    names = ["ScenesT2I", "ShapesCIR", "ScenesGround", "FashionCIR", "DigitsCLS"]
    meta = M.generate(tmp_path / "mm", seed=0, scale="tiny", n_candidates=7, datasets=names, progress=False,
                      n_train=5, n_test=6)
    for name in names:
        rows = read_eval_dataset(tmp_path / "mm" / "test", name, tmp_path / "mm")
        want = 10 if name == "DigitsCLS" else 7  # classification always offers the whole label set
        assert {len(r.candidates) for r in rows} == {want} and meta["datasets"][name]["n_candidates"] == want
        assert len(rows) == 6


def test_digit_test_images_are_unseen() -> None:
    split = M.digit_split(0)
    assert not set(split["train"]) & set(split["test"])
    assert len(split["train"]) + len(split["test"]) == 1797
    assert M.digit_split(1) != split


def test_cli_and_overwrite_rules(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    assert M.main(["--out", str(out), "--scale", "tiny", "--seed", "5", "--quiet", "--datasets", "DigitsCLS,DigitsR",
                   "--n-test", "3", "--n-train", "4"]) == 0
    assert "MiniMMEB seed=5 scale=tiny: 2 datasets (1 IND, 1 OOD)" in capsys.readouterr().out
    assert M.load_minimmeb(out)["seed"] == 5
    M.generate(out, seed=6, scale="tiny", datasets=["DigitsR"], n_test=2, progress=False)  # replaces a MiniMMEB
    assert sorted(M.load_minimmeb(out)["datasets"]) == ["DigitsR"] and not (out / "train").exists()
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        M.generate(other, scale="tiny", datasets=["DigitsR"], progress=False)
    assert (other / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="unknown MiniMMEB dataset"):
        M.generate(tmp_path / "x", scale="tiny", datasets=["Nope"])


# --- the oracle teacher ----------------------------------------------------------------------------------------

def test_oracle_replies_parse_and_are_right_without_errors(bench: dict[str, Path]) -> None:
    teacher = OracleTeacher(bench["a"], error_rate=0.0)
    ids = teacher.ids()
    assert len(ids) == 11 * TINY.n_train + 15 * TINY.n_test
    assert len(teacher.ids(split="train")) == 11 * TINY.n_train
    first = jsonl(bench["a"] / "train" / "DigitsCLS" / "original.jsonl")[0]["id"]
    assert first in teacher and teacher.ids("DigitsCLS", "train")[0] == first
    for qid in ids:
        reply = teacher.reply(qid, prompt="ignored")
        assert reply.startswith("<think>") and "</think><answer>" in reply
        answer = extract_answer(reply)
        assert answer == teacher.record(qid)["answer"] and teacher.is_correct(qid, answer)
    assert teacher.reply(ids[0]) == OracleTeacher(bench["a"], error_rate=0.0).reply(ids[0])
    with pytest.raises(KeyError, match="no ground truth"):
        teacher.reply("Nope:1")


def test_oracle_error_rate_is_what_was_asked(bench: dict[str, Path]) -> None:
    teacher = OracleTeacher(bench["a"], error_rate=0.3, seed=0)
    ids = teacher.ids()
    assert len(ids) >= 300
    wrong = {q for q in ids if not teacher.is_correct(q, extract_answer(teacher.reply(q)))}
    assert abs(len(wrong) / len(ids) - 0.3) <= 0.08
    for q in list(wrong)[:50]:  # a wrong answer is one of the plausible wrong answers, still well formed
        assert extract_answer(teacher.reply(q)) in teacher.record(q)["wrong_answers"]
    fewer = {q for q in ids if OracleTeacher(bench["a"], error_rate=0.1).outcome(q) == "wrong"}
    assert fewer <= wrong  # raising the rate only adds errors
    other_seed = {q for q in ids if OracleTeacher(bench["a"], error_rate=0.3, seed=1).outcome(q) == "wrong"}
    assert other_seed != wrong


def test_oracle_no_answer_rate(bench: dict[str, Path]) -> None:
    always = OracleTeacher(bench["a"], error_rate=0.0, no_answer_rate=1.0)
    ids = always.ids()
    assert all(extract_answer(always.reply(q)) is None for q in ids[:100])
    some = OracleTeacher(bench["a"], error_rate=0.0, no_answer_rate=0.25)
    missing = sum(extract_answer(some.reply(q)) is None for q in ids)
    assert abs(missing / len(ids) - 0.25) <= 0.08
    with pytest.raises(ValueError):
        OracleTeacher(bench["a"], error_rate=1.5)
    with pytest.raises(FileNotFoundError, match="MiniMMEB"):
        OracleTeacher(bench["a"] / "images")


def test_same_files_in_a_fresh_process_and_for_a_subset(bench: dict[str, Path], tmp_path: Path) -> None:
    """Hash randomisation or generating only some datasets must not change a dataset's bytes."""
    import os
    import subprocess
    import sys

    names = ["ScenesVQA", "FashionCIR"]
    out = tmp_path / "sub"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-m", "msolomon.data.minimmeb", "--out", str(out), "--scale", "tiny", "--quiet",
                    "--datasets", ",".join(names)], check=True, env=env, cwd=Path(__file__).resolve().parents[1],
                   capture_output=True)
    sub = tree_hashes(out)
    full = tree_hashes(bench["a"])
    assert sorted(M.load_minimmeb(out)["datasets"]) == sorted(names)
    for rel, digest in sub.items():
        if rel != M.META_FILE:
            assert full[rel] == digest, rel
    assert len(sub) > 100
