"""Bad and unusual inputs to a running demo, tried as a stranger would: through `/search` (gradio_client and raw
HTTP), through gradio's file route, and through the page's own handlers (uploads, corpora of two visitors, the error
explorer). Each input is judged by what comes back:

- clear: refused with a message that names the input or the file and says what is wrong (no gradio internals);
- accepted: served normally (for inputs that are unusual but valid), with no server path in the answer;
- unclear: refused with a message that does not say what to fix (gradio's "Could not preprocess", a bare exception
  name, "Something went wrong");
- crash: the server stopped answering afterwards;
- security: a file of the cache served, or a server path, another visitor's corpus or upload shown;
- data loss: one visitor's corpus changed or removed by another.

    python bench/demo_probe.py [--threads 1] [--json FILE]

Starts `python app.py` (the shipped model, MiniMMEB tiny as the default corpus) on a free loopback port.
"""
from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

UNCLEAR = ("Could not preprocess", "Traceback", "Something went wrong", "KeyError", "Invalid JSON string",
           "is not in the list of choices", "UnidentifiedImageError", "validation error for", "codec can't")
VERDICTS = ("clear", "accepted", "unclear", "crash", "security", "data loss")


@dataclass
class ProbeSettings(C.BenchSettings):
    pass


def _images(folder: Path) -> dict[str, Path]:
    """Broken and unusual image files a stranger might upload."""
    from PIL import Image

    out = {}
    out["empty.png"] = folder / "empty.png"
    out["empty.png"].write_bytes(b"")
    out["text-renamed.png"] = folder / "text-renamed.png"
    out["text-renamed.png"].write_text("this is not a picture")
    good = folder / "good.png"
    Image.new("RGB", (64, 48), "teal").save(good)
    out["truncated.png"] = folder / "truncated.png"
    out["truncated.png"].write_bytes(good.read_bytes()[:40])
    out["huge-20000x20000.png"] = folder / "huge-20000x20000.png"
    Image.new("1", (20000, 20000)).save(out["huge-20000x20000.png"])
    out["wide-5000x20.png"] = folder / "wide-5000x20.png"
    Image.new("RGB", (5000, 20)).save(out["wide-5000x20.png"])
    out["rgba.png"] = folder / "rgba.png"
    Image.new("RGBA", (40, 40), (255, 0, 0, 10)).save(out["rgba.png"])
    out["animated.gif"] = folder / "animated.gif"
    frames = [Image.new("P", (30, 30), i) for i in range(3)]
    frames[0].save(out["animated.gif"], save_all=True, append_images=frames[1:])
    out["grey-16bit.png"] = folder / "grey-16bit.png"
    Image.new("I;16", (32, 32), 40000).save(out["grey-16bit.png"])
    out["good.png"] = good
    return out


def judge(outcome: str, text: str, expect_ok: bool, secrets: list[str]) -> str:
    if any(s and s in text for s in secrets):
        return "security"
    if outcome == "ok":
        return "accepted" if expect_ok else "unclear"
    if any(u in text for u in UNCLEAR) or not text.strip():
        return "unclear"
    return "clear"


def main(argv: list[str] | None = None) -> int:
    args = C.parse(ProbeSettings, argv, __doc__, model=False, data=False)
    threads = C.start(args)
    import httpx
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from msolomon.demo.process import running_app

    rows: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="msolomon-probe-"))
    cache = work / "cache"
    images = _images(work)
    with running_app(cache, "--corpus-scale", "tiny", threads=threads) as (url, _):
        secrets = [str(cache), str(Path.home()), str(work), "/tmp/gradio"]
        client = Client(url, verbose=False)

        def alive() -> bool:
            try:
                out = client.predict("still there?", None, None, "never", 0.5, 1, api_name="/search")
                return bool(out["hits"])
            except Exception:  # noqa: BLE001 - any failure means the server stopped serving
                return False

        def search(name: str, call_args: tuple, expect_ok: bool = False) -> None:
            try:
                out = client.predict(*call_args, api_name="/search")
                outcome, text = "ok", json.dumps(out)
            except (AppError, ValueError) as err:
                outcome, text = "error", str(err)
            verdict = judge(outcome, text, expect_ok, secrets)
            if not alive():
                verdict = "crash"
            rows.append({"where": "/search", "input": name, "verdict": verdict, "answer": text[:160]})

        q = ("a red circle", None, None, "auto", 0.5, 5)

        def with_(i: int, v) -> tuple:
            return tuple(v if j == i else x for j, x in enumerate(q))

        cases = [("no query at all", ("", None, None, "auto", 0.5, 5)), ("only spaces", ("   ", None, None, "auto",
                                                                                         0.5, 5)),
                 ("2,001 characters", with_(0, "x" * 2001)),
                 ("text as a list", with_(0, ["a", "b"])), ("text as a number", with_(0, 42)),
                 ("text as an object", with_(0, {"a": 1})), ("instruction as a list", with_(2, ["x"])),
                 ("mode 'sometimes'", with_(3, "sometimes")), ("mode 3", with_(3, 3)),
                 ("threshold -0.1", with_(4, -0.1)), ("threshold 1.5", with_(4, 1.5)),
                 ("threshold 'abc'", with_(4, "abc")), ("threshold true", with_(4, True)),
                 ("top_k 'ten'", with_(5, "ten")), ("top_k 2.5", with_(5, 2.5)), ("top_k 0", with_(5, 0)),
                 ("top_k -3", with_(5, -3)), ("top_k 51", with_(5, 51)), ("top_k true", with_(5, True)),
                 ("top_k a list", with_(5, [5])), ("corpus 'nope'", q + ("nope",)),
                 ("corpus 5", q + (5,)), ("visitor key 'bad key!'", q + (None, "bad key!")),
                 ("visitor key a number", q + (None, 123))]
        for name, call_args in cases:
            search(name, call_args)
        for name, call_args in [("control tokens as text", with_(0, "<|im_end|>/augment<|image_pad|>")),
                                ("HTML as text", with_(0, "<script>alert(1)</script>")),
                                ("top_k 3.0", with_(5, 3.0)), ("threshold 0", with_(4, 0)),
                                ("threshold 1", with_(4, 1)), ("emoji and CJK", with_(0, "🐱 猫 a cat")),
                                ("null mode, threshold, top_k (defaults)", ("a cat", None, None, None, None, None))]:
            search(name, call_args, expect_ok=True)
        for name, path in images.items():
            ok = name in ("good.png", "wide-5000x20.png", "rgba.png", "animated.gif", "grey-16bit.png")
            search(f"image {name}", ("what is it", handle_file(str(path)), None, "never", 0.5, 3), expect_ok=ok)

        # raw HTTP: malformed bodies to the endpoint
        api = url.rstrip("/") + "/gradio_api/run/search"
        for name, body in [("too few arguments", {"data": ["a"]}), ("no data", {}), ("data not a list", {"data": 5}),
                           ("NaN top_k", '{"data": ["a", null, null, "auto", 0.5, NaN, null, null]}'),
                           ("Infinity threshold", '{"data": ["a", null, null, "auto", Infinity, 5, null, null]}'),
                           ("image as an empty string", {"data": ["a", "", None, "auto", 0.5, 5, None, None]}),
                           ("a lone surrogate in the text (JSON escape)",
                            '{"data": ["bad \\ud800 text", null, null, "auto", 0.5, 5, null, null]}'),
                           ("image as a server path", {"data": ["a", {"path": "/etc/passwd", "meta": {
                               "_type": "gradio.FileData"}}, None, "auto", 0.5, 5, None, None]})]:
            raw = body if isinstance(body, str) else json.dumps(body)
            r = httpx.post(api, content=raw, headers={"content-type": "application/json"}, timeout=60)
            text = r.text
            outcome = "ok" if r.status_code == 200 and '"error"' not in text else "error"
            verdict = judge(outcome, text, False, secrets)
            if "root:" in text:
                verdict = "security"
            if not alive():
                verdict = "crash"
            rows.append({"where": "raw HTTP", "input": name, "verdict": verdict, "answer": text[:160]})

        # gradio's file route: nothing of the cache
        files = {"the test answers (oracle.jsonl)": next(cache.rglob("oracle.jsonl")),
                 "an index (index.faiss)": next(cache.rglob("index.faiss")),
                 "index payloads": next(cache.rglob("payloads.jsonl")),
                 "a MiniMMEB image": next(cache.rglob("*.png")), "/etc/passwd": Path("/etc/passwd"),
                 "traversal ../": Path(str(cache) + "/../../../etc/passwd")}
        for name, path in files.items():
            r = httpx.get(f"{url.rstrip('/')}/gradio_api/file={path}", timeout=30)
            rows.append({"where": "file route", "input": name,
                         "verdict": "security" if r.status_code == 200 else "clear",
                         "answer": f"HTTP {r.status_code}"})
    # the page's handlers: two visitors, uploads, the explorer (in process, on the tiny model)
    rows += handler_probe(work, images)
    counts = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    table_rows = [[r["where"], r["input"], r["verdict"], r["answer"][:90].replace("|", "/").replace("\n", " ")]
                  for r in rows]
    result = {"machine": C.machine(threads), "inputs": len(rows), "counts": counts, "rows": rows}
    C.finish(args, "The demo probed with bad and unusual inputs", [
        ("Counts", C.table(["inputs", *VERDICTS], [[len(rows), *counts.values()]])),
        ("Each input", C.table(["where", "input", "verdict", "answer"], table_rows))], result)
    return 0


def handler_probe(work: Path, images: dict[str, Path]) -> list[dict]:
    """Uploads, corpora of two visitors and the error explorer, through the page's handlers."""
    import gradio as gr

    from msolomon import MSolomon
    from msolomon.demo.handlers import Handlers
    from msolomon.demo.service import SearchRequest, SearchService
    from msolomon.demo.settings import DemoSettings
    from msolomon.demo.visitors import new_key

    settings = DemoSettings(cache_dir=work / "hcache", corpus_scale="tiny", baselines_dir=work / "none",
                            max_new_tokens=4, threads=1)
    service = SearchService(MSolomon.tiny(), settings).start()
    h = Handlers(service)
    rows: list[dict] = []
    a, b = new_key(), new_key()
    secrets = [str(work), str(Path.home())]

    def record(name: str, fn, expect_ok: bool = False) -> None:
        try:
            out = fn()
            text = out if isinstance(out, str) else json.dumps(out, default=str)
            outcome = "error" if text.startswith("⚠") else "ok"
        except (gr.Error, ValueError) as err:
            outcome, text = "error", str(err)
        rows.append({"where": "page", "input": name, "verdict": judge(outcome, text, expect_ok, secrets),
                     "answer": text[:160]})

    lines = work / "a.txt"
    lines.write_text("apples\npears\n")
    other = work / "b.txt"
    other.write_text("boats\n")
    binary = work / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00")
    long_line = work / "long.txt"
    long_line.write_text("x" * 600 + "\n")
    record("index a corpus", lambda: h.index_corpus("my corpus", None, str(lines), a)[0], expect_ok=True)
    record("second visitor, same name", lambda: h.index_corpus("my corpus", None, str(other), b)[0], expect_ok=True)
    before = [x.text for x in service.search(SearchRequest("fruit", corpus="custom: my corpus", visitor=a,
                                                           mode="never")).hits]
    rows.append({"where": "page", "input": "first visitor's corpus after the second indexed the same name",
                 "verdict": "accepted" if sorted(before) == ["apples", "pears"] else "data loss",
                 "answer": str(before)})
    record("search another visitor's corpus", lambda: list(h.search("fruit", None, "", "never", 0.5, 3,
                                                                  "custom: my corpus", "", new_key())))
    record("no visitor key", lambda: h.index_corpus("x", None, str(lines), None)[0])
    record("text file not UTF-8", lambda: h.index_corpus("bin", None, str(binary), a)[0])
    record("a 600-character line", lambda: h.index_corpus("long", None, str(long_line), a)[0])
    record("nothing uploaded", lambda: h.index_corpus("none", None, None, a)[0])
    record("corpus name of 61 characters", lambda: h.index_corpus("n" * 61, None, str(lines), a)[0])
    for name in ("empty.png", "text-renamed.png", "truncated.png", "huge-20000x20000.png"):
        record(f"upload {name}", lambda n=name: h.index_corpus("imgs", [str(images[n])], None, a)[0])
        record(f"search with {name} (the page)", lambda n=name: list(h.search("what", str(images[n]), "", "never",
                                                                              0.5, 3, C_ALL, "", a)))
    record("delete a shared corpus", lambda: h.delete_corpus(C_ALL, a)[0])
    record("delete another visitor's corpus name", lambda: h.delete_corpus("custom: nothing", a)[0])
    runs = settings.cache_dir / "evals" / "probe"
    runs.mkdir(parents=True)
    good = {"dataset": "ShapesCLS", "mode": "never", "correct": True, "latency_ms": 3.0, "query": "q"}
    (runs / "no-report.predictions.jsonl").write_text(json.dumps(good) + "\n")
    (runs / "bad-latency.predictions.jsonl").write_text(json.dumps(good | {"latency_ms": "abc"}) + "\n")
    (runs / "cut.predictions.jsonl").write_text(json.dumps(good) + '\n{"dataset": "Sha')
    (runs / "empty.predictions.jsonl").write_text("")
    for name in ("no-report", "bad-latency", "cut", "empty"):
        label = next(k for k in h.explorer_choices() if k.endswith(f"{name}.predictions.jsonl"))
        record(f"explorer: {name}.predictions.jsonl", lambda lb=label: h.explorer_open(lb)[2],
               expect_ok=name in ("no-report", "cut"))
    record("explorer: a path typed in", lambda: h.explorer_open("/etc/passwd"))
    record("explorer: a row past the end", lambda: h.explorer_detail(
        next(k for k in h.explorer_choices() if k.endswith("no-report.predictions.jsonl")), "all", "all", "all",
        "all", 99))
    service.close()
    return rows


C_ALL = "MiniMMEB test (all) + sample photos"

if __name__ == "__main__":
    sys.exit(main())
