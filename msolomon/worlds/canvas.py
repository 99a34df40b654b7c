"""Drawing primitives shared by every world: palette, bitmap font, super-sampling and PNG writing.

Everything is drawn with PIL from explicit parameters (no randomness in the renderers; callers pass what they
sampled), at a 4x super-sampled resolution and box-filtered down, so edges are smooth and output is identical run to
run. Text uses PIL's built-in bitmap font, so nothing depends on the system's fonts. Images are small (56-84 px): with
patch 14 and merge 2 the backbone sees 4-9 image tokens each.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SS = 4  # super-sampling factor

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 38, 38), "orange": (245, 135, 20), "yellow": (235, 200, 25), "green": (35, 150, 55),
    "blue": (35, 75, 215), "purple": (135, 55, 185), "pink": (240, 115, 175), "brown": (125, 78, 38),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (250, 250, 250), "gray": (196, 196, 196),
                                                "beige": (236, 222, 186)}
SIZES = ("small", "large")


@functools.lru_cache(maxsize=1)
def font() -> ImageFont.ImageFont:
    """PIL's built-in bitmap font (6x11 px cells): the same pixels on every machine, no system fonts."""
    loader = getattr(ImageFont, "load_default_imagefont", None)
    return loader() if loader is not None else ImageFont.load_default()


def finish(canvas: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Box-filter a super-sampled canvas down to `size`."""
    return canvas.resize(size, Image.Resampling.BOX).convert("RGB")


@functools.lru_cache(maxsize=None)
def glyph_mask(char: str) -> np.ndarray:
    """The bitmap font's glyph for `char`, cropped to its ink: a bool array (rows, cols)."""
    img = Image.new("L", (12, 14), 0)
    ImageDraw.Draw(img).text((2, 1), char, fill=255, font=font())
    arr = np.asarray(img) > 127
    ys, xs = np.nonzero(arr)
    return arr[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def draw_text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, fill) -> None:
    draw.text(xy, text, fill=fill, font=font())


def package_dir(package: str) -> Path:
    """A package's folder, found without importing it (importing scikit-image alone takes a second)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; MiniMMEB's photo set needs it")
    return Path(list(spec.submodule_search_locations)[0])


def save_png(img: Image.Image, path: Path) -> None:
    """PNG with fixed settings and no metadata: the same image always gives the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", optimize=False, compress_level=6)
