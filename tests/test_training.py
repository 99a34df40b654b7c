"""Training: label assignment, losses, two processes == one process, and resume after SIGKILL."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from msolomon import Candidate, MSolomon, Query
from msolomon.data import TrainRow
from msolomon.prompts import AUGMENT, EMBED
from training.collator import Collator, assign_labels
from training.trainer import LoopSettings, MSolomonForTraining, distributed

ROOT = Path(__file__).resolve().parents[1]
NAMES = "zero one two three four five six seven eight nine".split()
SMALL = dict(hidden_size=64, intermediate_size=128, num_layers=2, vision_dim=32, vision_depth=1)


def _rows(n: int = 8) -> list[TrainRow]:
    from PIL import Image

    rows = []
    for i in range(n):
        img = Image.new("RGB", (56, 56), ((37 * i) % 255, (91 * i) % 255, 120))
        if i % 2:
            query = Query(text="<|image_1|> Represent the given image for classification", image=img)
            rows.append(TrainRow("cls", f"cls:{i}", query, Candidate(text=NAMES[i % 10])))
        else:
            rows.append(TrainRow("after", f"after:{i}", Query(text=f"the number after {NAMES[i % 10]}"),
                                 Candidate(image=img), negative=Candidate(text=f"not {NAMES[i % 10]}")))
    return rows


def test_label_assignment():
    rows = _rows(6)
    aug = {r.id: f"the digit {r.id}" for r in rows if r.dataset == "after"}
    assert {e.decision for e in assign_labels(rows, "noaug")} == {EMBED}
    always = assign_labels(rows, "alwaysaug", aug)
    assert {e.decision for e in always} == {AUGMENT} and len(always) == 3  # rows with no answer left out
    adaptive = assign_labels(rows, "adaptive", aug, {"augment": ["after"], "embed": ["cls"]})
    assert all((e.decision == AUGMENT) == (e.row.dataset == "after") for e in adaptive)
    with pytest.raises(ValueError, match="missing from the split"):
        assign_labels(rows, "adaptive", aug, {"augment": ["after"], "embed": []})


def test_labels_cover_segment_and_terminal_only():
    model = MSolomon.tiny(seed=0, **SMALL)
    rows = _rows(4)
    ex = assign_labels(rows, "adaptive", {r.id: "seven" for r in rows}, {"augment": ["after"], "embed": ["cls"]})
    batch = Collator(model.encoder)(ex)
    q = batch["query"]
    for row, e in enumerate(ex):
        labelled = q["input_ids"][row][q["labels"][row] != -100].tolist()
        expected = model.encoder.segment_ids(e.decision, e.augmentation) + [model.terminal_id]
        assert labelled == expected
    assert batch["target"]["input_ids"].shape[0] == 4 + 2  # positives, then the two hard negatives


@pytest.mark.parametrize("side", ["right", "left"])
def test_length_chunks_give_the_same_losses_and_gradients_with_less_padding(side):
    """`--length-chunks`: the query and target batches run as sub-batches of rows of similar length; the hidden
    states at every real position, the loss and the gradients are those of the one padded batch."""
    from training.collator import CollatorSettings
    from training.trainer import embedder_loss

    model = MSolomon.tiny(seed=0, **SMALL)
    rows = _rows(8)
    ex = assign_labels(rows, "adaptive", {r.id: "the digit seven comes after six" for r in rows},
                       {"augment": ["after"], "embed": ["cls"]})
    whole = Collator(model.encoder, CollatorSettings(length_chunks=1, padding_side=side))(ex)
    chunked = Collator(model.encoder, CollatorSettings(length_chunks=2, padding_side=side))(ex)
    q, qc = whole["query"], chunked["query"]
    assert "chunks" not in q and len(qc["chunks"]) == 2
    assert qc["pixel_values"] is None and any(sub["pixel_values"] is not None for _, sub in qc["chunks"])  # once
    assert sorted(torch.cat([rows for rows, _ in qc["chunks"]]).tolist()) == list(range(len(ex)))
    padded = sum(sub["attention_mask"].numel() for _, sub in qc["chunks"])
    assert padded < q["attention_mask"].numel()  # the image rows and the text rows differ in length
    loop = LoopSettings()
    with torch.no_grad():
        h, hc = model.forward_hidden(q), model.forward_hidden(qc)
    assert hc.shape == h.shape
    real = q["attention_mask"].bool()
    assert torch.allclose(h[real], hc[real], atol=1e-5)
    grads = []
    for batch in (whole, chunked):
        model.model.zero_grad()
        loss, _ = embedder_loss(model, batch, loop)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.model.parameters() if p.grad is not None]))
    assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-5)
    assert len(grads[0][1]) == len(grads[1][1]) and all(
        torch.allclose(a, b, atol=1e-5) for a, b in zip(grads[0][1], grads[1][1]))
    # pretraining and replayed rows too: the next-token loss is the one padded batch's
    from PIL import Image

    from training.pretrain import PretrainCollator, pretrain_loss

    pre = [{"prompt": "What is shown?" if i % 2 else "Describe the picture in a few words, please.",
            "response": " ".join(NAMES[: 1 + 2 * i]), "image": Image.new("RGB", (28 * (1 + i % 2), 56), (9 * i, 80, 3))}
           for i in range(6)]
    one, four = (PretrainCollator(model.encoder, padding_side=side, length_chunks=k)(pre) for k in (1, 3))
    assert "chunks" not in one and len(four["chunks"]) == 3
    with torch.no_grad():
        assert pretrain_loss(model, one, loop)[0].item() == pytest.approx(pretrain_loss(model, four, loop)[0].item(),
                                                                        abs=1e-5)


def test_augmented_twins_train_the_augmented_path_of_embed_rows_without_teaching_augment():
    model = MSolomon.tiny(seed=0, **SMALL)
    rows = _rows(8)
    aug = {r.id: "seven" for r in rows}
    split = {"augment": ["after"], "embed": ["cls"]}
    plain = assign_labels(rows, "adaptive", aug, split)
    twinned = assign_labels(rows, "adaptive", aug, split, augmented_twins=1.0)
    twins = [e for e in twinned if not e.learn_segment]
    assert len(twinned) == len(plain) + 4 and {e.row.dataset for e in twins} == {"cls"}
    assert all(e.decision == AUGMENT and e.augmentation == "seven" for e in twins)
    assert [e for e in twinned if e.learn_segment] == plain  # the decisions taught are unchanged
    batch = Collator(model.encoder)(twinned)
    q = batch["query"]
    for row, e in enumerate(twinned):
        segment = model.encoder.segment_ids(e.decision, e.augmentation)
        ids = q["input_ids"][row].tolist()
        assert any(ids[i:i + len(segment)] == segment for i in range(len(ids)))  # the twin reads its augmentation
        assert bool((q["labels"][row] != -100).any()) == e.learn_segment  # ...but is not trained to write it
    assert batch["n_augment"] == 4  # the share of /augment decisions counts taught rows only
    half = assign_labels(rows, "adaptive", aug, split, augmented_twins=0.5)
    assert half == assign_labels(rows, "adaptive", aug, split, augmented_twins=0.5)  # a stable draw
    with pytest.raises(ValueError, match="between 0 and 1"):
        assign_labels(rows, "adaptive", aug, split, augmented_twins=1.5)
    with pytest.raises(ValueError, match="adaptive"):
        assign_labels(rows, "alwaysaug", aug, augmented_twins=0.5)


def _loss_and_grads(model, examples, loop):
    """The trainer's path: the trainable module, wrapped in stock DDP when two processes run."""
    batch = Collator(model.encoder)(examples)
    module = MSolomonForTraining(model, loop=loop)
    wrapped = distributed(module)  # held until backward: DDP's reducer runs there
    loss = wrapped(batch)["loss"]
    loss.backward()
    params = [p for p in module.parameters() if p.requires_grad]
    return loss.detach(), [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]


def _uneven_rows() -> list[TrainRow]:
    """8 rows whose halves carry 2 and 1 hard negatives, so the padded gathers across ranks are exercised."""
    rows = _rows(8)
    rows[4].negative = None
    return rows


def _rank_main(rank: int, world: int, init_file: str, model_dir: str, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only: this machine has no other network
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = MSolomon.from_pretrained(model_dir)
    rows = _uneven_rows()
    aug = {r.id: f"the digit after {r.id}" for r in rows}
    examples = assign_labels(rows, "adaptive", aug, {"augment": ["after"], "embed": ["cls"]})
    shard = examples[rank * 4:(rank + 1) * 4]
    loss, grads = _loss_and_grads(model, shard, LoopSettings(temperature=0.05))
    dist.all_reduce(loss)
    if rank == 0:
        torch.save({"loss": loss / world, "grads": grads}, Path(out_dir) / "dist.pt")
    dist.destroy_process_group()


def test_two_processes_equal_one_process(tmp_path):
    import torch.multiprocessing as mp

    model = MSolomon.tiny(seed=0, **SMALL)
    model.save_pretrained(tmp_path / "m")
    model = MSolomon.from_pretrained(tmp_path / "m")
    rows = _uneven_rows()
    aug = {r.id: f"the digit after {r.id}" for r in rows}
    examples = assign_labels(rows, "adaptive", aug, {"augment": ["after"], "embed": ["cls"]})
    loss, grads = _loss_and_grads(model, examples, LoopSettings(temperature=0.05))
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path / "m"), str(tmp_path)), nprocs=2, join=True)
    dist = torch.load(tmp_path / "dist.pt", weights_only=True)
    assert abs(float(dist["loss"]) - float(loss)) < 1e-5
    assert len(dist["grads"]) == len(grads)
    worst = max(float((a - b).abs().max()) for a, b in zip(dist["grads"], grads))
    assert worst < 1e-5, worst
    assert max(float(g.abs().max()) for g in grads) > 1e-4  # the gradients are not trivially zero


def _write_train_fixture(root: Path, n: int = 48) -> None:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    for name in ("after", "cls"):
        (root / name).mkdir()
    after, cls = [], []
    for i in range(n):
        path = f"images/{i}.png"
        Image.new("RGB", (56, 56), ((37 * i) % 255, (91 * i) % 255, 120)).save(root / path)
        after.append({"qry": f"the number after {NAMES[i % 10]}", "qry_image_path": "", "pos_text": "",
                      "pos_image_path": path, "id": f"after:{i}"})
        cls.append({"qry": "<|image_1|> Represent the given image for classification", "qry_image_path": path,
                    "pos_text": NAMES[i % 10], "pos_image_path": "", "id": f"cls:{i}"})
    for name, rows in (("after", after), ("cls", cls)):
        (root / name / "original.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _train_cmd(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "training.train", "--data", str(data), "--out", str(out), "--labeling", "noaug",
            "--batch-size", "8", "--max-steps", "12", "--save-every", "3", "--log-every", "1", "--warmup-steps", "2",
            "--init", "tiny", "--tiny", json.dumps(SMALL)]


def _weights(folder: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def test_sigkill_and_resume_gives_the_same_weights(tmp_path):
    data = tmp_path / "data"
    _write_train_fixture(data)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    straight = tmp_path / "straight"  # the uninterrupted run, beside the one to kill (one thread each)
    uninterrupted = subprocess.Popen(_train_cmd(data, straight), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(data, killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = killed / "checkpoint" / "trainer_state.json"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text())["step"] >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_at_kill = json.loads(state.read_text())["step"]
    assert step_at_kill < 12, "the run finished before it could be killed"
    subprocess.run(_train_cmd(data, killed), cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    _, err = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, err[-2000:]

    a, b = _weights(straight / "final"), _weights(killed / "final")
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert worst < 1e-5, worst
    steps = [json.loads(line)["step"] for line in (killed / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # the log has each step once


@pytest.mark.parametrize("mode", ["lora", "qlora"])
def test_lora_and_qlora_training_from_a_checkpoint(tmp_path, mode):
    if mode == "qlora":
        pytest.importorskip("bitsandbytes")
    from training.train import main

    data = tmp_path / "data"
    _write_train_fixture(data, n=16)
    base = MSolomon.tiny(seed=0, **SMALL)
    base.save_pretrained(tmp_path / "base")
    out = tmp_path / "run"
    code = main(["--data", str(data), "--out", str(out), "--labeling", "noaug", "--init", str(tmp_path / "base"),
                 f"--{mode}", "--lora-r", "4", "--lora-alpha", "8", "--batch-size", "8", "--max-steps", "3",
                 "--warmup-steps", "1", "--lr", "0.01", "--log-every", "1"])
    assert code == 0
    final = out / "final"
    assert (final / "adapter_model.safetensors").is_file() and not (final / "model.safetensors").exists()
    tuned = MSolomon.from_pretrained(final)
    reference = MSolomon.from_pretrained(tmp_path / "base")
    texts = ["three", "the number after two"]
    moved = np.abs(tuned.encode_candidates(texts) - reference.encode_candidates(texts)).max()
    assert moved > 1e-4  # the adapter learned something
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in log)


def test_settings_from_a_config_file_with_command_line_overrides(tmp_path):
    from training.train import parse_args

    data = tmp_path / "data"
    data.mkdir()
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"data: {data}\nout: {tmp_path / 'out'}\nlabeling: noaug\nbatch_size: 4\nlr: 0.0005\n"
                   "tiny: {hidden_size: 96}\nlora_targets: [q_proj, v_proj]\n")
    config = parse_args(["--config", str(cfg), "--lr", "0.002", "--datasets", "A,B"])
    assert config.loop.batch_size == 4 and config.loop.optim.lr == 0.002 and config.datasets == ["A", "B"]
    assert config.model.tiny == {"hidden_size": 96} and config.model.lora_targets == ["q_proj", "v_proj"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"data: {data}\nout: x\nnot_a_setting: 1\n")
    with pytest.raises(SystemExit) as err:
        parse_args(["--config", str(bad)])
    assert err.value.code == 2
    with pytest.raises(SystemExit):
        parse_args(["--data", str(data), "--out", "x", "--labeling", "adaptive"])  # needs --split/--augmentations
    for twins, labeling in (("0.5", "noaug"), ("1.5", "adaptive")):  # twins: adaptive only, a share in [0, 1]
        with pytest.raises(SystemExit) as err:
            parse_args(["--data", str(data), "--out", "x", "--labeling", labeling, "--augmentations", "a.jsonl",
                        "--split", "s.json", "--augmented-twins", twins])
        assert err.value.code == 2
    assert parse_args(["--data", str(data), "--out", "x", "--labeling", "adaptive", "--augmentations", "a.jsonl",
                       "--split", "s.json", "--augmented-twins", "1"]).augmented_twins == 1.0


def test_training_without_hard_negatives(tmp_path):
    from training.collator import CollatorSettings

    model = MSolomon.tiny(seed=0, **SMALL)
    rows = _rows(6)
    examples = assign_labels(rows, "noaug")
    loop = LoopSettings(collator=CollatorSettings(use_negatives=False), gen_weight=0.5)
    batch = Collator(model.encoder, loop.collator)(examples)
    assert batch["target"]["input_ids"].shape[0] == 6 and batch["target_keys"].shape == (6,)
    module = MSolomonForTraining(model, loop=loop)
    out = module(batch)
    # the loss is L_rep + λ·L_gen of the figures it reports, and each part is what the loss functions give on the
    # terminal states of the same pass (an untrained model: L_gen near log(vocab), far from 0)
    assert abs(float(out["loss"].detach()) - (float(out["rep_loss"]) + 0.5 * float(out["gen_loss"]))) < 1e-5
    with torch.no_grad():
        q_hidden = model.forward_hidden(batch["query"])
        t_hidden = model.forward_hidden(batch["target"])
    q_emb = q_hidden[torch.arange(6), batch["query"]["last_index"]]
    t_emb = t_hidden[torch.arange(6), batch["target"]["last_index"]]
    from training.losses import generation_loss, info_nce

    rep = info_nce(q_emb, t_emb, 6, loop.temperature, batch["target_keys"])
    gen = generation_loss(q_hidden, batch["query"]["labels"], model.model.lm_head, (model.augment_id, model.embed_id))
    assert abs(float(out["rep_loss"]) - float(rep.loss.detach())) < 1e-5
    assert abs(float(out["gen_loss"]) - float(gen.loss.detach())) < 1e-5
    assert float(out["gen_loss"]) > 1.0
    # and gradient steps on this batch lower the loss (the module trains)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    first = out["loss"].item()
    for _ in range(5):
        opt.zero_grad()
        module(batch)["loss"].backward()
        opt.step()
    assert module(batch)["loss"].item() < first - 0.1


def test_a_kill_between_checkpoint_renames_recovers_the_previous_one(tmp_path):
    from training.trainer import CHECKPOINT, STATE, recover_checkpoint

    old = tmp_path / (CHECKPOINT + ".old")
    old.mkdir()
    (old / STATE).write_text(json.dumps({"step": 6}))
    recover_checkpoint(tmp_path)
    assert json.loads((tmp_path / CHECKPOINT / STATE).read_text())["step"] == 6 and not old.exists()


def test_query_labels_set_each_rows_decision_and_embedded_twins_train_the_embed_path():
    rows = _rows(6)
    aug = {r.id: f"the answer to {r.id}" for r in rows}
    labels = {r.id: ("augment" if i in (0, 3) else "embed") for i, r in enumerate(rows)}
    ex = assign_labels(rows, "query", aug, labels=labels)
    assert [e.decision for e in ex] == [AUGMENT if labels[r.id] == "augment" else EMBED for r in rows]
    # rows of one dataset get different decisions: the labels are per query
    assert {e.decision for e in ex if e.row.dataset == "after"} == {AUGMENT, EMBED}
    both = assign_labels(rows, "query", aug, labels=labels, augmented_twins=1.0, embedded_twins=1.0)
    taught = [e for e in both if e.learn_segment]
    assert taught == ex  # twins do not change the decisions taught
    twins = [e for e in both if not e.learn_segment]
    # every row also trains the path it does not take, without labels
    assert sorted((e.row.id, e.decision) for e in twins) == sorted(
        (r.id, EMBED if labels[r.id] == "augment" else AUGMENT) for r in rows)
    with pytest.raises(ValueError, match="have no label"):
        assign_labels(rows, "query", aug, labels={rows[0].id: "augment"})
    with pytest.raises(ValueError, match="needs per-query labels"):
        assign_labels(rows, "query", aug)
    with pytest.raises(ValueError, match="noaug"):
        assign_labels(rows, "noaug", embedded_twins=0.5)


def test_folds_are_stable_and_cover_every_row():
    from training.collator import fold_of, twin_chosen

    ids = [f"D:train:{i}" for i in range(400)]
    folds = [fold_of(i, 2) for i in ids]
    assert folds == [fold_of(i, 2) for i in ids] and set(folds) == {0, 1}
    assert 150 < sum(folds) < 250  # about half in each fold
    # the fold draw is independent of the twin draw: both folds hold twinned and untwinned rows
    assert {(f, twin_chosen(i, 0.5)) for f, i in zip(folds, ids)} == {(0, False), (0, True), (1, False), (1, True)}


def test_a_tiny_run_on_query_labels_decides_differently_within_one_dataset(tmp_path):
    """Two queries of one dataset labelled differently: after a short run the model's own first token follows each
    query's label (the decision is learned per query, not per dataset)."""
    from training.trainer import OptimSettings, Trainer

    model = MSolomon.tiny(seed=0, **SMALL)
    rows = [r for r in _rows(8) if r.dataset == "after"]  # four text queries of one dataset
    aug = {r.id: f"{r.id} is the answer" for r in rows}
    labels = {r.id: ("augment" if i % 2 else "embed") for i, r in enumerate(rows)}
    examples = assign_labels(rows, "query", aug, labels=labels)
    loop = LoopSettings(batch_size=4, max_steps=100, save_every=1000, log_every=1000, gen_weight=2.0,
                        optim=OptimSettings(lr=3e-3, warmup_steps=2))
    Trainer(model, examples, tmp_path / "run", loop).train()
    got = model.encode_queries([r.query for r in rows], augment="auto", max_new_tokens=2)
    assert [g.decision for g in got] == [AUGMENT if labels[r.id] == "augment" else EMBED for r in rows], \
        [round(g.p_augment, 3) for g in got]
