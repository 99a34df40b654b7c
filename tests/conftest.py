"""Shared fixtures: offline environment and small models built once per session."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model():
    from msolomon import MSolomon

    return MSolomon.tiny(seed=0)


@pytest.fixture(scope="session")
def sample_images(tmp_path_factory):
    """A few real photos that ship in pip packages (scikit-image), saved as small PNGs."""
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("images")
    paths = []
    for name in ("astronaut", "coffee", "chelsea"):
        img = Image.fromarray(getattr(data, name)()).resize((84, 70))
        path = root / f"{name}.png"
        img.save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def service(tiny_model, settings):
    """The demo's service on the tiny model, with the `settings` fixture of the requesting test module."""
    from msolomon.demo.service import SearchService

    svc = SearchService(tiny_model, settings).start()
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def handlers(service):
    from msolomon.demo.handlers import Handlers

    return Handlers(service)


COLLECTION = ["a red circle above a blue square", "a photo of an astronaut", "a cup of coffee", "a cat"]


def prebuilt_index(root, images):
    """`python -m msolomon.index build` with the shipped model over four lines and the sample photos: the folder
    `my_collection` that the shared demo server serves with --index."""
    from msolomon.index.build import BuildSettings, build
    from msolomon.model import DEFAULT_MODEL_DIR

    (root / "items.txt").write_text("\n".join(COLLECTION) + "\n", encoding="utf-8")
    out = root / "my_collection"
    build(BuildSettings(model=str(DEFAULT_MODEL_DIR), corpus=[str(root / "items.txt"), *images], out=str(out)))
    return out


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory, sample_images):
    """`python app.py` (the shipped model, MiniMMEB tiny) on loopback, started once for the end-to-end and browser
    tests: yields (URL, its cache folder). A 30 ms batching window (default 4 ms): with 20 clients on 2 cores,
    searches then reliably meet in one model call."""
    import logging

    from msolomon.demo.process import running_app

    cache = tmp_path_factory.mktemp("e2e") / "cache"
    index = prebuilt_index(tmp_path_factory.mktemp("collection"), sample_images)
    with running_app(cache, "--corpus-scale", "tiny", "--batch-wait-ms", "30", "--index", str(index)) as (url,
                                                                                                       seconds):
        logging.getLogger(__name__).info("page up after %.1f s", seconds)
        yield url, cache
