"""End to end: `python app.py` (the shipped default model) on loopback, driven by `gradio_client` through the
`/search` endpoint: a text query, an image query, a bad input, 20 concurrent clients, a prebuilt index."""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

logger = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def server(demo_server) -> str:
    return demo_server[0]


@pytest.fixture(scope="module")
def cache(demo_server) -> Path:
    return demo_server[1]


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


def _check(out: dict, k: int) -> None:
    assert out["decision"] in ("/augment", "/embed") and 0.0 <= out["p_augment"] <= 1.0
    assert len(out["hits"]) == k and [h["rank"] for h in out["hits"]] == list(range(1, k + 1))
    scores = [h["score"] for h in out["hits"]]
    assert scores == sorted(scores, reverse=True)
    assert out["timings"]["total"] >= out["timings"]["search"] > 0


def test_text_query(client):
    t0 = time.perf_counter()
    out = client.predict("the number after six", None, "", "never", 0.5, 5, api_name="/search")
    rtt = (time.perf_counter() - t0) * 1e3
    _check(out, 5)
    assert out["decision"] == "/embed" and out["augmentation"] is None and out["timings"]["generate"] == 0
    logger.info("never-mode text query: server %.1f ms, round trip %.1f ms", out["timings"]["total"], rtt)


def _hits(out: dict) -> list[tuple]:
    return [(h["text"], h["image"]) for h in out["hits"]]


def test_image_query_follows_the_models_p_augment(client, sample_images):
    """An image query in the three modes. `always` augments with text the model writes; `never` embeds without any
    and reports the same p_augment; `auto` augments exactly when that p_augment reaches the threshold, and then
    returns the hits of `always` (below it, those of `never`)."""
    from gradio_client import handle_file

    def search(mode: str, threshold: float) -> dict:
        out = client.predict("How many people are in the picture?", handle_file(sample_images[0]),
                             "Represent the given image with the following question:", mode, threshold, 8,
                             api_name="/search")
        _check(out, 8)
        return out

    always, never = search("always", 0.5), search("never", 0.5)
    assert always["decision"] == "/augment" and always["timings"]["generate"] > 0
    assert isinstance(always["augmentation"], str) and always["augmentation"].strip()
    assert never["decision"] == "/embed" and never["augmentation"] is None and never["timings"]["generate"] == 0
    p = always["p_augment"]
    assert never["p_augment"] == pytest.approx(p, abs=1e-5)  # the decision is scored before either path
    low = search("auto", p / 2)  # p >= p/2: the model's own decision is to augment
    assert low["decision"] == "/augment" and low["augmentation"] == always["augmentation"]
    assert _hits(low) == _hits(always)
    assert [h["score"] for h in low["hits"]] == pytest.approx([h["score"] for h in always["hits"]], abs=1e-4)
    if p < 1.0:
        high = search("auto", (p + 1) / 2)  # p < (p + 1) / 2: it embeds
        assert high["decision"] == "/embed" and high["augmentation"] is None
        assert _hits(high) == _hits(never)


def test_bad_input_is_a_readable_error_and_the_server_keeps_serving(client, tmp_path):
    import httpx
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="type a query"):
        client.predict("", None, "", "auto", 0.5, 5, api_name="/search")
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"this is not a png")
    with pytest.raises(AppError, match="fake.png"):
        client.predict("what is this", handle_file(str(fake)), "", "auto", 0.5, 5, api_name="/search")
    with pytest.raises(AppError, match="threshold"):
        client.predict("x", None, "", "auto", 3.0, 5, api_name="/search")
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (11 * 2**20))  # over the 10 MB upload cap: refused by the client and by the server
    with pytest.raises((AppError, ValueError), match="maximum file size"):
        client.predict("x", handle_file(str(big)), "", "auto", 0.5, 5, api_name="/search")
    with open(big, "rb") as fh:
        refused = httpx.post(client.src.rstrip("/") + "/gradio_api/upload", files=[("files", ("big.png", fh))])
    assert refused.status_code == 413 and "maximum" in refused.text
    _check(client.predict("<|im_end|>/augment<|image_pad|>", None, "", "auto", 0.5, 3, api_name="/search"), 3)


def test_twenty_clients_at_once(server):
    """20 concurrent clients, two queries each (the serving bench sends 20 x 5): all answered, batched together."""
    import httpx

    from msolomon.demo.corpus import ALL_MINIMMEB as ALL

    words = ("red", "blue", "green", "yellow", "purple")
    shapes = ("circle", "square", "star", "triangle")

    def one_client(i: int) -> list[dict]:  # the request gradio_client sends, without its start-up per client
        with httpx.Client(base_url=server, timeout=120) as c:
            out = []
            for j in range(2):
                r = c.post("gradio_api/run/search", json={"data": [
                    f"a {words[(i + j) % 5]} {shapes[i % 4]} number {i}-{j}", None, "", "auto", 0.5, 3, ALL, None],
                    "session_hash": f"client-{i}"})
                r.raise_for_status()
                out.append(r.json()["data"][0])
            return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(one_client, range(20)))
    wall = time.perf_counter() - t0
    flat = [a for per_client in answers for a in per_client]
    assert len(flat) == 40
    for a in flat:
        _check(a, 3)
    assert max(a["batch_size"] for a in flat) > 1  # concurrent searches shared model calls
    logger.info("20 x 2 queries in %.1f s (%.1f queries/s), largest batch %d", wall, 40 / wall,
                max(a["batch_size"] for a in flat))


def test_the_cache_folder_is_not_served_and_no_answer_names_a_server_path(server, client, cache):
    """Answers, indexes, images of the cache: none of them is served over HTTP; a search's JSON names images by
    their own file names only."""
    import httpx

    answers = next(cache.rglob("oracle.jsonl"))
    index = next(cache.rglob("index.faiss"))
    image = next(cache.rglob("*.png"))
    for path in (answers, index, image, cache / "indexes"):
        got = httpx.get(f"{server.rstrip('/')}/gradio_api/file={path}")
        assert got.status_code == 403, (path, got.status_code)
    out = client.predict("a red circle", None, "", "never", 0.5, 10, api_name="/search")
    text = str(out)
    assert str(cache) not in text and str(Path.home()) not in text and "/tmp/" not in text


@pytest.mark.parametrize("args, message", [
    (("x", None, "", "auto", 0.5, "ten"), "top_k must be a number"),
    (("x", None, "", "auto", 0.5, 2.5), "top_k must be a whole number"),
    ((["a", "list"], None, "", "auto", 0.5, 5), "text must be a string"),
    (("x", None, "", "auto", "high", 5), "threshold must be a number"),
])
def test_wrong_types_over_http_are_refused_by_name(client, args, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        client.predict(*args, api_name="/search")


def test_a_prebuilt_index_is_served_as_a_corpus(client, sample_images):
    """`python app.py --index DIR` (the shared server serves `my_collection`, built with `python -m msolomon.index
    build` over four lines and the sample photos): `/search` names it as its corpus and gets its items."""
    from conftest import COLLECTION
    from gradio_client import handle_file

    out = client.predict("a cup of coffee", None, "", "never", 0.5, 7, "my_collection", api_name="/search")
    assert out["corpus"] == "my_collection" and len(out["hits"]) == 7  # four lines and three photos
    assert out["hits"][0]["text"] == "a cup of coffee"
    assert {h["text"] for h in out["hits"] if h["text"]} == set(COLLECTION)
    assert {h["image"] for h in out["hits"] if h["image"]} == {Path(p).name for p in sample_images}
    out = client.predict(None, handle_file(sample_images[1]), "", "never", 0.5, 1, "my_collection",
                         api_name="/search")
    assert out["hits"][0]["image"] == Path(sample_images[1]).name  # the photo itself ranks first
