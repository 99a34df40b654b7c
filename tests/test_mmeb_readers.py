"""MMEB readers: the published MMEB-eval (parquet and jsonl) and MMEB-train formats load into typed rows, and every
malformed input raises DataFormatError naming the file and the row."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from msolomon.data import META_TASKS, DataFormatError, EvalRow, TrainRow
from msolomon.data.mmeb import (
    MMEB_DATASETS,
    dataset_info,
    list_eval_datasets,
    list_train_datasets,
    read_eval_dataset,
    read_train_dataset,
)
from msolomon.inputs import Candidate, Query

CLS = "<|image_1|> Represent the given image for classification"
T2I = "Find me an everyday image that matches the given caption: {}"
TGT = "<|image_1|> Represent the given image."


@pytest.fixture()
def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "eval_images"
    for rel in ("ImageNet-1K/a.jpg", "ImageNet-1K/b.jpg", "MSCOCO_t2i/x.png", "MSCOCO_t2i/y.png", "MSCOCO_t2i/z.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(root / rel)
    return root


def eval_rows() -> dict[str, list[dict]]:
    return {
        "ImageNet-1K": [
            {"qry_text": CLS, "qry_img_path": "ImageNet-1K/a.jpg", "tgt_text": ["goldfish", "tench", "shark"],
             "tgt_img_path": ["", "", ""]},
            {"qry_text": CLS, "qry_img_path": "ImageNet-1K/b.jpg", "tgt_text": ["tench", "goldfish", "shark"],
             "tgt_img_path": ["", None, ""]},
        ],
        "MSCOCO_t2i": [
            {"qry_text": T2I.format("a dog"), "qry_img_path": "", "tgt_text": [TGT, TGT, TGT],
             "tgt_img_path": ["MSCOCO_t2i/x.png", "MSCOCO_t2i/y.png", "MSCOCO_t2i/z.png"]},
            {"qry_text": T2I.format("a cat"), "qry_img_path": None, "tgt_text": [TGT, TGT],
             "tgt_img_path": ["MSCOCO_t2i/y.png", "MSCOCO_t2i/z.png"]},
        ],
    }


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_jsonl(path: Path, rows: list, raw_lines: list[str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in rows] + (raw_lines or [])
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_eval_formats_load_into_typed_rows(tmp_path: Path, image_root: Path, fmt: str) -> None:
    folder = tmp_path / "MMEB-eval"
    for name, rows in eval_rows().items():
        if fmt == "parquet":
            write_parquet(folder / name / "test-00000-of-00001.parquet", rows)
        else:
            write_jsonl(folder / name / "test.jsonl", rows)
    (folder / "not-a-dataset").mkdir()
    assert list_eval_datasets(folder) == ["ImageNet-1K", "MSCOCO_t2i"]

    rows = read_eval_dataset(folder, "ImageNet-1K", image_root)
    assert len(rows) == 2 and all(isinstance(r, EvalRow) for r in rows)
    r = rows[0]
    assert (r.dataset, r.index) == ("ImageNet-1K", 0)
    assert isinstance(r.query, Query) and r.query.text == CLS  # the <|image_1|> placeholder is kept
    assert r.query.id == "ImageNet-1K:0" and rows[1].query.id == "ImageNet-1K:1"
    assert r.query.image == str((image_root / "ImageNet-1K/a.jpg").absolute())
    assert Path(r.query.image).is_absolute()
    assert [c.text for c in r.candidates] == ["goldfish", "tench", "shark"]
    assert all(isinstance(c, Candidate) and c.image is None for c in r.candidates)

    t2i = read_eval_dataset(folder, "MSCOCO_t2i", image_root)
    assert t2i[0].query.image is None and t2i[0].query.text == T2I.format("a dog")
    assert t2i[1].query.image is None  # None and "" both mean no image
    assert [Path(c.image).name for c in t2i[0].candidates] == ["x.png", "y.png", "z.png"]
    assert all(c.text == TGT for c in t2i[0].candidates)
    assert len(t2i[1].candidates) == 2  # candidate lists may differ in length between rows

    assert len(read_eval_dataset(folder, "MSCOCO_t2i", image_root, limit=1)) == 1


def test_eval_reads_sharded_files_in_order_and_skips_side_files(tmp_path: Path, image_root: Path) -> None:
    rows = eval_rows()["ImageNet-1K"]
    folder = tmp_path / "eval"
    write_parquet(folder / "ImageNet-1K" / "test-00001-of-00002.parquet", rows[1:])
    write_parquet(folder / "ImageNet-1K" / "test-00000-of-00002.parquet", rows[:1])
    write_jsonl(folder / "ImageNet-1K" / "oracle.jsonl", [{"id": "x", "answer": "y"}])
    write_jsonl(folder / "OnlyOracle" / "oracle.jsonl", [{"id": "x", "answer": "y"}])
    assert list_eval_datasets(folder) == ["ImageNet-1K"]
    got = read_eval_dataset(folder, "ImageNet-1K", image_root)
    assert [r.query.image.endswith(p) for r, p in zip(got, ("a.jpg", "b.jpg"))] == [True, True]
    assert [r.index for r in got] == [0, 1]


def train_rows(with_id: bool) -> list[dict]:
    rows = [
        {"qry": "<|image_1|> Represent the given image with the following question: What is it?",
         "qry_image_path": "ImageNet-1K/a.jpg", "pos_text": "a fish", "pos_image_path": "",
         "neg_text": "a shark", "neg_image_path": ""},
        {"qry": "Find me an everyday image that matches the given caption: a dog", "qry_image_path": "",
         "pos_text": TGT, "pos_image_path": "MSCOCO_t2i/x.png", "neg_text": "", "neg_image_path": ""},
    ]
    if with_id:
        for k, r in enumerate(rows):
            r["id"] = f"row-{k}"
    return rows


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
@pytest.mark.parametrize("with_id", [True, False])
def test_train_formats_load_into_typed_rows(tmp_path: Path, image_root: Path, fmt: str, with_id: bool) -> None:
    folder = tmp_path / "MMEB-train"
    rows = train_rows(with_id)
    if fmt == "parquet":
        write_parquet(folder / "OK-VQA" / "original-00000-of-00001.parquet", rows)
        write_parquet(folder / "OK-VQA" / "diverse_instruction-00000-of-00001.parquet", rows[:1])
    else:
        write_jsonl(folder / "OK-VQA" / "original.jsonl", rows)
    assert list_train_datasets(folder) == ["OK-VQA"]
    got = read_train_dataset(folder, "OK-VQA", image_root)
    assert len(got) == 2 and all(isinstance(r, TrainRow) for r in got)
    assert [r.id for r in got] == (["row-0", "row-1"] if with_id else ["OK-VQA:0", "OK-VQA:1"])
    assert got[0].query.id == got[0].id
    assert got[0].query.image.endswith("a.jpg") and got[0].positive.text == "a fish"
    assert got[0].negative is not None and got[0].negative.text == "a shark"
    assert got[1].query.image is None and got[1].positive.image.endswith("x.png")
    assert got[1].negative is None  # empty negative columns: no negative
    if fmt == "parquet":  # the split picks the files
        assert len(read_train_dataset(folder, "OK-VQA", image_root, split="diverse_instruction")) == 1


def test_train_without_negative_columns(tmp_path: Path, image_root: Path) -> None:
    rows = [{k: v for k, v in r.items() if not k.startswith("neg")} for r in train_rows(False)]
    write_parquet(tmp_path / "t" / "VisDial" / "original.parquet", rows)
    got = read_train_dataset(tmp_path / "t", "VisDial", image_root, limit=1)
    assert len(got) == 1 and got[0].negative is None


# --- errors: each names the file and the row -------------------------------------------------------------------

def _good() -> dict:
    return dict(eval_rows()["ImageNet-1K"][0])


EVAL_ERRORS = {
    "missing image": ({"qry_img_path": "ImageNet-1K/missing.jpg"}, "image file not found"),
    "missing candidate image": ({"tgt_img_path": ["", "ImageNet-1K/nope.png", ""]}, "image file not found"),
    "missing column": ({"tgt_img_path": None}, "missing column"),
    "tgt_text not a list": ({"tgt_text": "goldfish"}, "must be a list"),
    "qry_text wrong type": ({"qry_text": 7}, "must be a string"),
    "lengths differ": ({"tgt_img_path": ["", ""]}, "tgt_text has 3 entries but tgt_img_path has 2"),
    "empty candidates": ({"tgt_text": [], "tgt_img_path": []}, "empty candidate list"),
    "query with nothing": ({"qry_text": "  ", "qry_img_path": ""}, "neither text nor image"),
    "candidate with nothing": ({"tgt_text": ["goldfish", "", "shark"]}, "candidate 1 has neither text nor image"),
}


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
@pytest.mark.parametrize("case", sorted(EVAL_ERRORS))
def test_eval_errors_name_file_and_row(tmp_path: Path, image_root: Path, fmt: str, case: str) -> None:
    change, problem = EVAL_ERRORS[case]
    bad = {**_good(), **change}
    if case == "missing column":
        del bad["tgt_img_path"]
    rows = [_good(), _good(), bad]
    if fmt == "parquet" and case in ("tgt_text not a list", "qry_text wrong type"):
        pytest.skip("parquet columns have one type; the jsonl case covers it")
    if fmt == "parquet":
        if case == "missing column":
            rows = [{k: v for k, v in r.items() if k != "tgt_img_path"} for r in rows]
        path = write_parquet(tmp_path / "e" / "ImageNet-1K" / "test.parquet", rows)
    else:
        path = write_jsonl(tmp_path / "e" / "ImageNet-1K" / "test.jsonl", rows)
    with pytest.raises(DataFormatError) as err:
        read_eval_dataset(tmp_path / "e", "ImageNet-1K", image_root)
    msg = str(err.value)
    assert str(path) in msg and problem in msg
    row = 0 if (fmt == "parquet" and case == "missing column") else 2
    assert f"row {row}" in msg


def test_eval_bad_json_and_bad_parquet(tmp_path: Path, image_root: Path) -> None:
    path = write_jsonl(tmp_path / "e" / "ImageNet-1K" / "test.jsonl", [_good()], raw_lines=["", "{not json", ])
    with pytest.raises(DataFormatError, match=r"test\.jsonl: row 1 \(line 3\): invalid JSON"):
        read_eval_dataset(tmp_path / "e", "ImageNet-1K", image_root)
    write_jsonl(path, [_good(), [1, 2]])
    with pytest.raises(DataFormatError, match=r"row 1 \(line 2\): expected a JSON object"):
        read_eval_dataset(tmp_path / "e", "ImageNet-1K", image_root)
    pq_path = tmp_path / "p" / "ImageNet-1K" / "test.parquet"
    pq_path.parent.mkdir(parents=True)
    pq_path.write_bytes(b"this is not parquet")
    with pytest.raises(DataFormatError, match="not a readable parquet file") as err:
        read_eval_dataset(tmp_path / "p", "ImageNet-1K", image_root)
    assert str(pq_path) in str(err.value)
    with pytest.raises(DataFormatError, match="dataset folder not found"):
        read_eval_dataset(tmp_path / "p", "Nope", image_root)


TRAIN_ERRORS = {
    "missing image": ({"pos_image_path": "MSCOCO_t2i/gone.png"}, "image file not found"),
    "missing negative image": ({"neg_image_path": "MSCOCO_t2i/gone.png"}, "image file not found"),
    "missing column": ({}, "missing column"),
    "query with nothing": ({"qry": "", "qry_image_path": None}, "query has neither text nor image"),
    "positive with nothing": ({"pos_text": "", "pos_image_path": ""}, "positive target has neither"),
    "wrong type": ({"pos_text": ["a", "b"]}, "must be a string"),
    "duplicate id": ({"id": "row-0"}, "duplicate id 'row-0'"),
}


@pytest.mark.parametrize("case", sorted(TRAIN_ERRORS))
def test_train_errors_name_file_and_row(tmp_path: Path, image_root: Path, case: str) -> None:
    change, problem = TRAIN_ERRORS[case]
    rows = train_rows(with_id=True)
    bad = {**rows[1], **change}
    if case == "missing column":
        del bad["pos_image_path"]
    path = write_jsonl(tmp_path / "t" / "OK-VQA" / "original.jsonl", [rows[0], bad])
    with pytest.raises(DataFormatError) as err:
        read_train_dataset(tmp_path / "t", "OK-VQA", image_root)
    msg = str(err.value)
    assert str(path) in msg and "row 1" in msg and problem in msg


def test_missing_images_can_be_skipped_on_request(tmp_path: Path, image_root: Path) -> None:
    write_jsonl(tmp_path / "e" / "ImageNet-1K" / "test.jsonl", [{**_good(), "qry_img_path": "later.jpg"}])
    rows = read_eval_dataset(tmp_path / "e", "ImageNet-1K", image_root, check_images=False)
    assert rows[0].query.image.endswith("later.jpg")


# --- the MMEB table --------------------------------------------------------------------------------------------

def test_mmeb_table_matches_the_paper() -> None:
    assert len(MMEB_DATASETS) == 36
    assert sum(not i.ood for i in MMEB_DATASETS.values()) == 20
    counts = {t: sum(i.meta_task == t for i in MMEB_DATASETS.values()) for t in META_TASKS}
    assert counts == {"classification": 10, "vqa": 10, "retrieval": 12, "grounding": 4}
    assert dataset_info("ImageNet-R").ood and dataset_info("ImageNet-R").meta_task == "classification"
    assert dataset_info("FashionIQ").ood and dataset_info("FashionIQ").meta_task == "retrieval"
    assert not dataset_info("MSCOCO").ood and dataset_info("MSCOCO").meta_task == "grounding"
    assert dataset_info("ImageNet_1K").meta_task == "classification"  # MMEB-train's spelling
    with pytest.raises(DataFormatError, match="unknown dataset 'Nope'"):
        dataset_info("Nope")


def test_dataset_info_prefers_folder_meta(tmp_path: Path) -> None:
    meta = {"name": "MiniMMEB", "datasets": {"DigitsR": {"meta_task": "classification", "ood": True}}}
    assert dataset_info("DigitsR", meta).ood
    assert dataset_info("DigitsR", meta["datasets"]).meta_task == "classification"
    (tmp_path / "minimmeb.json").write_text(json.dumps(meta))
    assert dataset_info("DigitsR", tmp_path).ood
    assert dataset_info("VOC2007", meta).meta_task == "classification"  # falls back to the MMEB table
