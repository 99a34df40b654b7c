"""Bad input gets a clear ValueError naming the problem; odd image modes are converted, not rejected."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from msolomon import Candidate, Query
from msolomon.processing import ImageError, ImageLimits, load_image


def test_query_with_neither_text_nor_image():
    with pytest.raises(ValueError, match="neither"):
        Query()
    with pytest.raises(ValueError, match="neither"):
        Query(text="   ")
    with pytest.raises(ValueError, match="neither"):
        Candidate(text=None, image=None)


def test_unknown_mode_and_threshold(tiny_model):
    with pytest.raises(ValueError, match="augment must be one of"):
        tiny_model.encode_queries("x", augment="sometimes")
    with pytest.raises(ValueError, match="threshold"):
        tiny_model.encode_queries("x", threshold=1.5)
    with pytest.raises(ValueError, match="Query"):
        tiny_model.encode_queries([3.14])


def test_missing_unreadable_truncated_and_non_image_files(tmp_path, tiny_model):
    with pytest.raises(ImageError, match="no such file"):
        tiny_model.encode_queries(Query(image=str(tmp_path / "missing.png")))
    text_file = tmp_path / "notes.png"
    text_file.write_text("this is not an image")
    with pytest.raises(ValueError, match="notes.png.*not a readable image"):
        tiny_model.encode_queries(Query(image=str(text_file)))
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(good)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:400])
    with pytest.raises(ValueError, match="cut.jpg"):
        tiny_model.encode_candidates(Candidate(image=str(cut)))
    with pytest.raises(ValueError, match="file path or a PIL image"):
        load_image(12345)


def test_pixel_cap_and_aspect_ratio(tmp_path):
    big = tmp_path / "bomb.png"
    Image.new("L", (3000, 3000)).save(big)  # tiny on disk, 9 Mpx decoded
    with pytest.raises(ImageError, match="over the cap"):
        load_image(str(big), ImageLimits(max_pixels=4_000_000))
    with pytest.raises(ImageError, match="aspect ratio"):
        load_image(Image.new("RGB", (1000, 10)))
    with pytest.raises(ImageError, match="over the .*-byte limit"):
        load_image(str(big), ImageLimits(max_file_bytes=10))


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "LA", "CMYK", "I;16", "I", "F", "1"])
def test_image_modes_are_converted(mode, tmp_path, tiny_model):
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    if mode == "I;16":
        img = Image.fromarray((np.arange(40 * 50, dtype=np.uint16).reshape(40, 50) * 20).astype(np.uint16))
    else:
        img = img.convert(mode)
    out = load_image(img)
    assert out.mode == "RGB" and out.size == (50, 40)
    if mode == "I;16":
        arr = np.asarray(out)
        assert arr.min() == 0 and arr.max() == 255  # rescaled, not clipped to white
    r = tiny_model.encode_queries(Query(text="what is it", image=img), augment="never")
    assert np.isfinite(r.embedding).all()


def test_transparency_goes_on_white_and_animation_uses_first_frame(tmp_path):
    clear = Image.new("RGBA", (30, 30), (255, 0, 0, 0))
    assert load_image(clear).getpixel((5, 5)) == (255, 255, 255)
    frames = [Image.new("RGB", (30, 30), c) for c in [(255, 0, 0), (0, 255, 0)]]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=50)
    first = load_image(str(gif))
    assert first.mode == "RGB" and first.getpixel((5, 5))[0] > 200


def test_long_text_is_truncated_with_a_warning(tiny_model, caplog):
    long_text = " ".join(["seven red circles"] * 2000)
    with caplog.at_level(logging.WARNING):
        r = tiny_model.encode_queries(long_text, augment="always", max_new_tokens=4)
    assert "truncated" in caplog.text
    assert np.isfinite(r.embedding).all()
    enc = tiny_model.encoder.encode_prompt(Query(text=long_text), reserve=5)
    assert len(enc.input_ids) + 5 <= tiny_model.settings.max_length
