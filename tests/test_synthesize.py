"""Synthesis (`python -m training.synthesize`): backends, resumable output, the command line.

The openai backend talks to a stub chat-completions server on 127.0.0.1; the transformers backend runs a tiny
random Qwen2-VL; the oracle backend runs on a small generated MiniMMEB. All offline, CPU only, a few seconds.
"""
from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from msolomon import prompts
from msolomon.data import DataFormatError
from msolomon.data.oracle import OracleTeacher
from training import synthesize as syn
from training.synthesize import SynthesisSettings, load_augmentations, read_results, summary_path, synthesize
from training.teachers import OpenAIBackend, OpenAISettings, TeacherItem, TransformersBackend

REPO = Path(__file__).resolve().parents[1]
GOOD_REPLY = "<think>It shows {q}.</think> <answer>answer to {q}</answer>"


# ------------------------------------------------------------------------------------------------------ fixtures

def write_mmeb_train(root: Path, images: list[str], broken_image: bool = False) -> Path:
    """A two-dataset MMEB-train folder: image+question queries and text-only queries; images under root/img."""
    from PIL import Image

    (root / "img").mkdir(parents=True)
    for i, src in enumerate(images):
        Image.open(src).save(root / "img" / f"{i}.png")
    vqa = [{"qry": f"<|image_1|> Represent the given image with the following question: {q} question",
            "qry_image_path": f"img/{i % len(images)}.png", "pos_text": "x", "pos_image_path": ""}
           for i, q in enumerate(["normal", "flaky", "slow", "silent", "bad", "busy"])]
    if broken_image:
        (root / "img" / "broken.png").write_bytes(b"not a png")
        vqa.append({"qry": "<|image_1|> Represent the given image with the following question: broken question",
                    "qry_image_path": "img/broken.png", "pos_text": "x", "pos_image_path": ""})
    t2i = [{"qry": f"Find me an everyday image that matches the given caption: caption {i}", "qry_image_path": "",
            "pos_text": "", "pos_image_path": f"img/{i % len(images)}.png"} for i in range(3)]
    for name, rows in (("VQA-A", vqa), ("T2I-B", t2i)):
        (root / name).mkdir()
        (root / name / "original.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


class StubHandler(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat-completions stub whose behaviour depends on the words in the question."""

    server: "StubServer"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _send(self, code: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass

    def do_GET(self) -> None:
        if self.path.endswith("/models"):
            self._send(200, {"object": "list", "data": [{"id": "stub-teacher", "object": "model"}]})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = next(p["text"] for p in body["messages"][-1]["content"] if p["type"] == "text")
        question = text.split("User: ", 1)[1].rsplit(" Assistant:", 1)[0]
        key = question.split()[0]
        with self.server.lock:
            self.server.requests.append((key, body, dict(self.headers)))
            n = sum(1 for k, _, _ in self.server.requests if k == key)
        if key == "flaky" and n == 1:
            return self._send(500, {"error": "internal"})
        if key == "busy" and n == 1:
            return self._send(429, {"error": "rate limited"}, {"Retry-After": "0"})
        if key == "slow":
            time.sleep(self.server.slow_s)
        if key == "bad":
            return self._send(400, {"error": {"message": "bad request: image too large"}})
        reply = "I think it is fine." if key == "silent" else GOOD_REPLY.format(q=question)
        self._send(200, {"id": "x", "object": "chat.completion", "model": body["model"],
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                      "finish_reason": "stop"}]})


class StubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, slow_s: float) -> None:
        super().__init__(("127.0.0.1", 0), StubHandler)
        self.lock = threading.Lock()
        self.requests: list[tuple[str, dict, dict]] = []
        self.slow_s = slow_s

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def count(self, key: str) -> int:
        return sum(1 for k, _, _ in self.requests if k == key)


@pytest.fixture
def stub():
    server = StubServer(slow_s=1.0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def mmeb_train(tmp_path, sample_images):
    return write_mmeb_train(tmp_path / "mmeb", sample_images)


@pytest.fixture(scope="module")
def minimmeb(tmp_path_factory):
    from msolomon.data.minimmeb import generate

    out = tmp_path_factory.mktemp("mini") / "minimmeb"
    generate(out, scale="tiny", datasets=["ChartVQA", "DigitsCLS", "ScenesT2I"], n_train=12, n_test=4,
             progress=False)
    return out


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ openai backend

def openai_settings(data: Path, out: Path, url: str, **kw) -> SynthesisSettings:
    base = dict(data=str(data), out=str(out), backend="openai", base_url=url, timeout=0.3, retries=1,
                backoff=0.01, concurrency=4, max_new_tokens=64, progress=False)
    base.update(kw)
    return SynthesisSettings(**base)


def test_openai_backend_against_stub_server(stub, mmeb_train, tmp_path):
    out = tmp_path / "aug.jsonl"
    t0 = time.monotonic()
    summary = synthesize(openai_settings(mmeb_train, out, stub.url))
    assert time.monotonic() - t0 < 10
    rows = {r["id"]: r for r in rows_of(out)}
    assert len(rows) == 9 and len(rows_of(out)) == 9  # one line per query
    by_q = {r["question"].split()[0]: r for r in rows.values()}

    assert by_q["normal"]["status"] == "ok"
    assert by_q["normal"]["augmentation"] == "answer to normal question"
    assert by_q["normal"]["backend"] == "openai" and by_q["normal"]["error"] is None
    # the teacher's {question} drops MMEB's placeholder and embedding boilerplate
    assert by_q["normal"]["question"] == "normal question"
    assert by_q["flaky"]["status"] == "ok" and stub.count("flaky") == 2  # HTTP 500, retried, then success
    assert by_q["busy"]["status"] == "ok" and stub.count("busy") == 2  # HTTP 429 (Retry-After: 0), retried
    assert by_q["slow"]["status"] == "error" and stub.count("slow") == 2  # timed out twice: 1 + 1 retry
    assert "timed out" in by_q["slow"]["error"] and by_q["slow"]["augmentation"] is None
    assert by_q["bad"]["status"] == "error" and stub.count("bad") == 1  # other 4xx: no retry
    assert "HTTP 400" in by_q["bad"]["error"] and "image too large" in by_q["bad"]["error"]
    assert by_q["silent"]["status"] == "no_answer" and by_q["silent"]["augmentation"] is None
    assert by_q["silent"]["reply"] == "I think it is fine."
    assert all(r["status"] == "ok" for r in rows.values() if r["dataset"] == "T2I-B")

    # summary: counted per dataset, logged and written beside the output
    assert summary["datasets"]["VQA-A"] == {"total": 6, "skipped": 0, "done": 6, "ok": 3, "no_answer": 1, "error": 2}
    assert summary["total"]["no_answer"] == 1 and summary["total"]["ok"] == 6
    assert summary["teacher"]["model"] == "stub-teacher"  # discovered through GET /models
    assert json.loads(summary_path(out).read_text())["total"] == summary["total"]
    assert summary_path(out).name == "aug.summary.json"
    assert load_augmentations(out) == {r["id"]: r["augmentation"] for r in rows.values() if r["status"] == "ok"}

    # the request: model, temperature 0, one user turn = the image as a PNG data URL + the whole teacher prompt
    key, body, headers = next(r for r in stub.requests if r[0] == "normal")
    assert body["model"] == "stub-teacher" and body["temperature"] == 0 and body["max_tokens"] == 64
    assert [m["role"] for m in body["messages"]] == ["user"]
    content = body["messages"][0]["content"]
    assert content[0]["type"] == "image_url" and content[1] == {
        "type": "text", "text": prompts.teacher_prompt("normal question")}
    url = content[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    from PIL import Image

    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert img.format == "PNG" and img.size == (84, 70)
    t2i_body = next(b for k, b, _ in stub.requests if k == "caption")
    assert [p["type"] for p in t2i_body["messages"][0]["content"]] == ["text"]  # text-only query: no image
    assert "Authorization" not in headers and "authorization" not in {h.lower() for h in headers}

    # rerun: ok / no_answer rows are skipped, error rows are tried again (and appended, never duplicated as done)
    before = len(stub.requests)
    summary2 = synthesize(openai_settings(mmeb_train, out, stub.url, retries=0))
    retried = [k for k, _, _ in stub.requests[before:]]
    assert sorted(retried) == ["bad", "slow"]
    assert summary2["total"]["skipped"] == 7 and summary2["total"]["done"] == 2
    assert summary2["file"]["total"] == {"ok": 6, "no_answer": 1, "error": 2}


def test_openai_api_key_and_explicit_model(stub, mmeb_train, tmp_path, monkeypatch):
    monkeypatch.setenv("STUB_KEY", "sk-test-123")
    out = tmp_path / "aug.jsonl"
    summary = synthesize(openai_settings(mmeb_train, out, stub.url, api_key_env="STUB_KEY", api_model="my-model",
                                         datasets=["T2I-B"]))
    assert summary["total"]["ok"] == 3
    assert all(h.get("Authorization") == "Bearer sk-test-123" and b["model"] == "my-model"
               for _, b, h in stub.requests)
    assert "sk-test-123" not in summary_path(out).read_text()  # the key is never written down
    assert not any(k == "models" for k, _, _ in stub.requests)


def test_openai_unreachable_server_is_an_error_row(mmeb_train, tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = OpenAIBackend(OpenAISettings(base_url=f"http://127.0.0.1:{port}/v1", model="m", retries=1,
                                           backoff=0.01, timeout=0.5))
    (reply,) = list(backend.replies([TeacherItem("q1", "D", "what?")]))
    assert reply.reply is None and "cannot reach" in reply.error and "2 attempts" in reply.error


# ------------------------------------------------------------------------------------------ transformers backend

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_model):
    path = tmp_path_factory.mktemp("teacher") / "tiny"
    tiny_model.save_pretrained(path)  # MSolomon.tiny(seed=0), shared with the other tests
    return path


# Teacher replies and the augmentation each must give, written by hand: the answer is the text of the last
# <answer>…</answer> (any case), whitespace runs collapsed; no tag, an empty one or an unclosed one gives none.
CANNED_REPLIES = {
    "<think>It shows two cats.</think> <answer>two cats</answer>": "two cats",
    "<think>count</think><answer>  three \n\t circles </answer>": "three circles",
    "<answer>a dog</answer> no, wait: <answer>a wolf</answer>": "a wolf",
    "<ANSWER>A Red Car</ANSWER>": "A Red Car",
    "<think>ok</think>\n<answer>\nthe number\nseven\n</answer>\nDone.": "the number seven",
    "I cannot tell what the picture shows.": None,
    "<answer>   </answer>": None,
    "<think>long</think><answer>cut off by the token limit": None,
    "answer: a cat": None,
}


def test_transformers_backend_on_tiny_model(tiny_checkpoint, tmp_path, sample_images, monkeypatch):
    """The tiny model generates for every row but the broken image's; its decoded replies are then swapped for
    hand-written ones, so each row's augmentation and status are known in advance."""
    data = write_mmeb_train(tmp_path / "mmeb", sample_images, broken_image=True)
    out = tmp_path / "aug.jsonl"
    settings = SynthesisSettings(data=str(data), out=str(out), backend="transformers", model=str(tiny_checkpoint),
                                 batch_size=3, max_new_tokens=6, device="cpu", progress=False)
    canned = iter(CANNED_REPLIES)
    real_init = TransformersBackend.__init__
    generated: list[str] = []

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        real_decode = self.tokenizer.batch_decode

        def batch_decode(tokens, *a, **k):
            texts = real_decode(tokens, *a, **k)  # what the model wrote, decoded as usual
            generated.extend(texts)
            return [next(canned) for _ in texts]

        self.tokenizer.batch_decode = batch_decode

    monkeypatch.setattr(TransformersBackend, "__init__", init)
    summary = synthesize(settings)
    rows = rows_of(out)
    assert len(rows) == 10 and len({r["id"] for r in rows}) == 10
    assert len(generated) == 9 and all(isinstance(t, str) for t in generated)  # the model ran for the 9 others
    broken = next(r for r in rows if r["question"].startswith("broken"))
    assert broken["status"] == "error" and "broken.png" in broken["error"]  # a bad image fails its own row only
    assert broken["reply"] is None and broken["augmentation"] is None
    others = [r for r in rows if r is not broken]
    assert sorted(r["reply"] for r in others) == sorted(CANNED_REPLIES)  # every canned reply reached one row
    for r in others:
        want = CANNED_REPLIES[r["reply"]]
        assert r["augmentation"] == want, r["reply"]
        assert r["status"] == ("no_answer" if want is None else "ok")
    t = summary["total"]
    assert t["done"] == 10 and t["error"] == 1 and (t["ok"], t["no_answer"]) == (5, 4)
    assert summary["teacher"]["chat_template"] is False
    assert load_augmentations(out) == {r["id"]: CANNED_REPLIES[r["reply"]] for r in others
                                       if CANNED_REPLIES[r["reply"]] is not None}


def test_transformers_prompt_layout(tiny_checkpoint, sample_images):
    backend = TransformersBackend(tiny_checkpoint, batch_size=2, max_new_tokens=4, device="cpu")
    with_image = TeacherItem("a", "D", "What is shown?", image=sample_images[0])
    text_only = TeacherItem("b", "D", "a red car")
    # no chat template on the tiny checkpoint: the format module's Qwen layout with one image block
    assert backend.prompt_text(with_image) == prompts.render_prompt(with_image.prompt, has_image=True)
    assert backend.prompt_text(text_only) == prompts.render_prompt(text_only.prompt, has_image=False)
    # a checkpoint chat template (Qwen2-VL's shape) is used when present: image block, then the whole prompt
    backend.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{% for c in m.content %}"
        "{% if c.type == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c.text }}{% endif %}"
        "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    text = backend.prompt_text(with_image)
    assert text == ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>" + with_image.prompt
                    + "<|im_end|>\n<|im_start|>assistant\n")
    replies = list(backend.replies([with_image, text_only]))  # a mixed batch through the chat template
    assert [r.item.id for r in replies] == ["a", "b"] and all(r.error is None for r in replies)


# ------------------------------------------------------------------------------------------------ oracle backend

def test_oracle_backend_on_minimmeb(minimmeb, tmp_path):
    out = tmp_path / "aug.jsonl"
    settings = SynthesisSettings(data=str(minimmeb), out=str(out), backend="oracle", error_rate=0.0,
                                 no_answer_rate=0.25, seed=1, progress=False)
    summary = synthesize(settings)
    rows = rows_of(out)
    assert len(rows) == 36 and {r["dataset"] for r in rows} == {"ChartVQA", "DigitsCLS", "ScenesT2I"}
    assert all(r["id"].startswith(r["dataset"] + ":train:") for r in rows)
    t = summary["total"]
    assert t["done"] == 36 and t["error"] == 0 and t["ok"] + t["no_answer"] == 36
    assert 0 < t["no_answer"] < 36  # some replies lack the answer tag: counted, not kept
    assert t["no_answer"] == sum(r["status"] == "no_answer" for r in rows)
    # exactly the rows the oracle teacher (same seed and rates) answers without tags
    oracle = OracleTeacher(minimmeb, error_rate=0.0, seed=1, no_answer_rate=0.25)
    assert {r["id"] for r in rows if r["status"] == "no_answer"} == {
        r["id"] for r in rows if oracle.outcome(r["id"]) == "no_answer"}
    assert all(r["augmentation"] is None for r in rows if r["status"] == "no_answer")
    augs = load_augmentations(out)
    assert len(augs) == t["ok"] and all(a.strip() for a in augs.values())
    # the oracle answers with MiniMMEB's ground truth: with error_rate 0 the DigitsCLS answer is the label
    labels = {json.loads(line)["id"]: json.loads(line)["pos_text"]
              for line in (minimmeb / "train" / "DigitsCLS" / "original.jsonl").read_text().splitlines()}
    digit_augs = {k: v for k, v in augs.items() if k in labels}
    assert digit_augs and all(labels[k].lower() in v.lower() for k, v in digit_augs.items())
    # a rerun has nothing left but the no_answer rows, which count as done
    again = synthesize(settings)
    assert again["total"]["done"] == 0 and again["total"]["skipped"] == 36
    assert len(rows_of(out)) == 36


def test_oracle_needs_minimmeb(mmeb_train, tmp_path):
    code = syn.main(["--data", str(mmeb_train), "--out", str(tmp_path / "a.jsonl"), "--backend", "oracle"])
    assert code == 2


def test_killed_run_resumes_without_loss_or_duplicates(minimmeb, tmp_path):
    out = tmp_path / "aug.jsonl"
    cmd = [sys.executable, "-m", "training.synthesize", "--data", str(minimmeb), "--out", str(out),
           "--backend", "oracle", "--no-answer-rate", "0.1"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.Popen(cmd + ["--delay", "0.1"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if out.is_file() and out.read_bytes().count(b"\n") >= 8:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    first = out.read_bytes().count(b"\n")
    assert 8 <= first < 36
    with open(out, "ab") as fh:  # what a kill in the middle of a write leaves behind
        fh.write(b'{"id": "ChartVQA:train:99", "status": "o')
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "skipped as already done" in done.stderr
    rows = rows_of(out)  # every line parses: the unfinished one was cut off
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 36  # every query exactly once, none lost
    summary = json.loads(summary_path(out).read_text())
    assert summary["total"]["skipped"] == first and summary["total"]["done"] == 36 - first


# --------------------------------------------------------------------------------------- the file and the command

def test_read_results_repairs_an_unfinished_last_line(tmp_path):
    path = tmp_path / "aug.jsonl"
    ok = {"id": "a", "dataset": "D", "status": "ok", "augmentation": "cat"}
    err = {"id": "b", "dataset": "D", "status": "error", "augmentation": None}
    later = {"id": "b", "dataset": "D", "status": "ok", "augmentation": "dog"}
    na = {"id": "c", "dataset": "D", "status": "no_answer", "augmentation": None}
    text = "".join(json.dumps(r) + "\n" for r in (ok, err, later, na)) + '{"id": "d", "sta'
    path.write_text(text)
    assert load_augmentations(path) == {"a": "cat", "b": "dog"}  # latest row per id, status ok only
    assert path.read_text() == text  # reading for the trainer never modifies the file
    rows = read_results(path, repair=True)
    assert set(rows) == {"a", "b", "c"} and rows["b"]["augmentation"] == "dog"
    assert path.read_text().endswith("\n") and path.read_text().count("\n") == 4
    path.write_text(json.dumps(ok) + "\nnot json\n" + json.dumps(na) + "\n")
    with pytest.raises(DataFormatError, match="line 2"):
        read_results(path)
    with pytest.raises(DataFormatError, match="not found"):
        load_augmentations(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("args, message", [
    (["--data", "{tmp}/nope", "--backend", "openai"], "folder not found"),
    (["--data", "{data}", "--backend", "transformers"], "needs --model"),
    (["--data", "{data}", "--backend", "openai", "--datasets", "VQA-A,Nope"], "Nope not in"),
    (["--data", "{data}", "--backend", "openai", "--limit", "0"], "--limit"),
    (["--data", "{data}", "--backend", "openai", "--api-key-env", "SURELY_UNSET_VAR_42"], "not set"),
    (["--data", "{data}", "--backend", "openai", "--image-root", "{tmp}"], "check --image-root"),
])
def test_bad_arguments_exit_2(args, message, mmeb_train, tmp_path, caplog):
    argv = [a.format(tmp=tmp_path, data=mmeb_train) for a in args] + ["--out", str(tmp_path / "a.jsonl")]
    with caplog.at_level("ERROR"):
        assert syn.main(argv) == 2
    assert message in caplog.text
    assert not (tmp_path / "a.jsonl").exists() or (tmp_path / "a.jsonl").read_text() == ""


def test_limit_and_datasets_select_rows(stub, mmeb_train, tmp_path):
    out = tmp_path / "aug.jsonl"
    code = syn.main(["--data", str(mmeb_train), "--out", str(out), "--backend", "openai", "--base-url", stub.url,
                     "--datasets", "VQA-A", "--limit", "1", "--no-progress"])
    assert code == 0
    assert [r["question"] for r in rows_of(out)] == ["normal question"]


def test_a_second_run_on_the_same_file_is_refused(mmeb_train, tmp_path, caplog):
    out = tmp_path / "aug.jsonl"
    holder = syn.ResultWriter(out)  # another run holds the file
    try:
        with caplog.at_level("ERROR"):
            code = syn.main(["--data", str(mmeb_train), "--out", str(out), "--backend", "openai",
                             "--base-url", "http://127.0.0.1:9/v1", "--api-model", "m"])
        assert code == 2 and "another synthesis run" in caplog.text
    finally:
        holder.close()


def test_a_dead_server_stops_the_run_early(mmeb_train, tmp_path):
    out = tmp_path / "aug.jsonl"
    settings = openai_settings(mmeb_train, out, "http://127.0.0.1:9/v1", api_model="m", retries=0,
                               max_consecutive_errors=3)
    summary = synthesize(settings)
    assert summary["stopped"] and "3 failures in a row" in summary["stopped"]
    assert [r["status"] for r in rows_of(out)] == ["error"] * 3  # the rest stay pending for the next run
    assert syn.main(["--data", str(mmeb_train), "--out", str(out), "--backend", "openai", "--base-url",
                     "http://127.0.0.1:9/v1", "--api-model", "m", "--retries", "0"]) == 1
