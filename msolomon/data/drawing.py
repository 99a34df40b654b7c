"""Rendering for MiniMMEB: drawn scenes, object crops, handwritten and re-styled digits, bar charts, small documents,
signs, garments and crops of the sample photos that ship inside pip packages.

Everything is drawn with PIL from explicit parameters (no randomness in here; callers pass what they sampled), at a
4x super-sampled resolution and box-filtered down, so edges are smooth and output is identical run to run. Text uses
PIL's built-in bitmap font, so nothing depends on the system's fonts. Images are small (56-84 px): with patch 14 and
merge 2 the backbone sees 4-9 image tokens each.
"""
from __future__ import annotations

import functools
import importlib.util
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

SS = 4  # super-sampling factor

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 38, 38), "orange": (245, 135, 20), "yellow": (235, 200, 25), "green": (35, 150, 55),
    "blue": (35, 75, 215), "purple": (135, 55, 185), "pink": (240, 115, 175), "brown": (125, 78, 38),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (250, 250, 250), "gray": (196, 196, 196),
                                                "beige": (236, 222, 186)}
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
SIZES = ("small", "large")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@functools.lru_cache(maxsize=1)
def font() -> ImageFont.ImageFont:
    """PIL's built-in bitmap font (6x11 px cells): the same pixels on every machine, no system fonts."""
    loader = getattr(ImageFont, "load_default_imagefont", None)
    return loader() if loader is not None else ImageFont.load_default()


def _finish(canvas: Image.Image, size: tuple[int, int]) -> Image.Image:
    return canvas.resize(size, Image.Resampling.BOX).convert("RGB")


def _shape_polygon(shape: str, box: tuple[float, float, float, float]) -> list[tuple[float, float]] | None:
    x0, y0, x1, y1 = box
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if shape == "star":
        pts = []
        for k in range(10):
            r = (w / 2) if k % 2 == 0 else (w / 2) * 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + r * math.cos(a), cy + r * math.sin(a) * h / w))
        return pts
    if shape == "cross":
        t = w / 3
        return [(cx - t / 2, y0), (cx + t / 2, y0), (cx + t / 2, cy - t / 2), (x1, cy - t / 2), (x1, cy + t / 2),
                (cx + t / 2, cy + t / 2), (cx + t / 2, y1), (cx - t / 2, y1), (cx - t / 2, cy + t / 2),
                (x0, cy + t / 2), (x0, cy - t / 2), (cx - t / 2, cy - t / 2)]
    return None


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float],
               fill: tuple[int, int, int] | int, outline: tuple[int, int, int] | int | None = None,
               width: int = 0) -> None:
    """Draw one of SHAPES filling `box` (x0, y0, x1, y1)."""
    if shape == "circle":
        draw.ellipse(box, fill=fill, outline=outline, width=width)
    elif shape == "square":
        draw.rectangle(box, fill=fill, outline=outline, width=width)
    else:
        poly = _shape_polygon(shape, box)
        if poly is None:
            raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
        draw.polygon(poly, fill=fill, outline=outline, width=width)


# --- scenes ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Obj:
    """One object of a scene: what it is and which cell of the 3x3 grid it occupies (jitter in output pixels)."""

    shape: str
    colour: str
    size: str  # "small" | "large"
    cell: int  # 0..8, row-major; POSITIONS[cell] names it
    dx: int = 0
    dy: int = 0

    @property
    def row(self) -> int:
        return self.cell // 3

    @property
    def col(self) -> int:
        return self.cell % 3

    def describe(self, with_size: bool = True) -> str:
        return f"{self.size} {self.colour} {self.shape}" if with_size else f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: str = "white"


def render_scene(scene: Scene, size: int = 84) -> Image.Image:
    """A scene of shapes on a plain background, one object per grid cell."""
    s = size * SS
    canvas = Image.new("RGB", (s, s), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(canvas)
    cell = s / 3
    for o in scene.objects:
        d = cell * (0.78 if o.size == "large" else 0.42)
        cx = (o.col + 0.5) * cell + o.dx * SS
        cy = (o.row + 0.5) * cell + o.dy * SS
        draw_shape(draw, o.shape, (cx - d / 2, cy - d / 2, cx + d / 2, cy + d / 2), COLOURS[o.colour])
    return _finish(canvas, (size, size))


def render_crop(shape: str, colour: str, background: str, size: int = 56) -> Image.Image:
    """The crop of one object out of a scene: the object centred and filling most of the crop."""
    s = size * SS
    canvas = Image.new("RGB", (s, s), BACKGROUNDS[background])
    m = s * 0.16
    draw_shape(ImageDraw.Draw(canvas), shape, (m, m, s - m, s - m), COLOURS[colour])
    return _finish(canvas, (size, size))


# --- digits ------------------------------------------------------------------------------------------------------


def _digit_sprite(img8: np.ndarray, height: int, angle: float) -> Image.Image:
    """An sklearn 8x8 digit (values 0..16) scaled to `height` px and rotated: an 'L' image, ink bright."""
    arr = np.clip(np.asarray(img8, dtype=np.float64) * (255.0 / 16.0), 0, 255).astype(np.uint8)
    sprite = Image.fromarray(arr, mode="L").resize((height, height), Image.Resampling.BICUBIC)
    return sprite.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=0)


def render_handwritten(img8: np.ndarray, size: tuple[int, int] = (56, 56), height: int = 42, angle: float = 0.0,
                       dx: int = 0, dy: int = 0) -> Image.Image:
    """A real handwritten digit (scikit-learn's digits) as white ink on black, MNIST style."""
    canvas = Image.new("L", size, 0)
    sprite = _digit_sprite(img8, height, angle)
    canvas.paste(sprite, ((size[0] - height) // 2 + dx, (size[1] - height) // 2 + dy))
    return canvas.convert("RGB")


def render_handwritten_pair(a8: np.ndarray, b8: np.ndarray, height: int = 38, angles: tuple[float, float] = (0, 0),
                            offsets: tuple[int, int, int, int] = (0, 0, 0, 0)) -> Image.Image:
    """Two handwritten digits side by side on an 84x56 canvas (6 image tokens)."""
    w, h = 84, 56
    canvas = Image.new("L", (w, h), 0)
    for k, (img8, angle) in enumerate(((a8, angles[0]), (b8, angles[1]))):
        sprite = _digit_sprite(img8, height, angle)
        x = k * (w // 2) + (w // 2 - height) // 2 + offsets[2 * k]
        y = (h - height) // 2 + offsets[2 * k + 1]
        canvas.paste(ImageChops.lighter(canvas.crop((x, y, x + height, y + height)), sprite), (x, y))
    return canvas.convert("RGB")


@functools.lru_cache(maxsize=None)
def glyph_mask(char: str) -> np.ndarray:
    """The bitmap font's glyph for `char`, cropped to its ink: a bool array (rows, cols)."""
    img = Image.new("L", (12, 14), 0)
    ImageDraw.Draw(img).text((2, 1), char, fill=255, font=font())
    arr = np.asarray(img) > 127
    ys, xs = np.nonzero(arr)
    return arr[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


# segments a..g of a seven-segment display, per digit
_SEVEN = {0: "abcdef", 1: "bc", 2: "abdeg", 3: "abcdg", 4: "bcfg", 5: "acdfg", 6: "acdefg", 7: "abc", 8: "abcdefg",
          9: "abcdfg"}
RENDITION_STYLES = ("seven_segment", "dot_matrix", "printed", "outline")


def render_digit_rendition(digit: int, style: str, fg: tuple[int, int, int], bg: tuple[int, int, int],
                           size: int = 56, dx: int = 0, dy: int = 0, thickness: float = 1.0,
                           slant: float = 0.0) -> Image.Image:
    """A digit drawn in a style unlike handwriting (the renditions shift of ImageNet-R): segments, dots, print."""
    s = size * SS
    canvas = Image.new("RGB", (s, s), bg)
    draw = ImageDraw.Draw(canvas)
    gw, gh = 0.46 * s, 0.72 * s  # glyph box
    x0, y0 = (s - gw) / 2 + dx * SS, (s - gh) / 2 + dy * SS
    if style == "seven_segment":
        t = 0.13 * gw * thickness
        mid = y0 + gh / 2
        segs = {"a": (x0, y0, x0 + gw, y0 + t), "d": (x0, y0 + gh - t, x0 + gw, y0 + gh),
                "g": (x0, mid - t / 2, x0 + gw, mid + t / 2), "f": (x0, y0, x0 + t, mid),
                "b": (x0 + gw - t, y0, x0 + gw, mid), "e": (x0, mid, x0 + t, y0 + gh),
                "c": (x0 + gw - t, mid, x0 + gw, y0 + gh)}
        for seg in _SEVEN[digit]:
            a, b, c, d = segs[seg]
            pad = t * 0.15
            draw.rectangle((a + pad, b + pad, c - pad, d - pad), fill=fg)
    else:
        mask = glyph_mask(str(digit))
        rows, cols = mask.shape
        cw, ch = gw / cols, gh / rows
        if style == "dot_matrix":
            r = min(cw, ch) * 0.42 * thickness
            for i in range(rows):
                for j in range(cols):
                    if mask[i, j]:
                        cx, cy = x0 + (j + 0.5) * cw, y0 + (i + 0.5) * ch
                        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg)
        elif style in ("printed", "outline"):
            layer = Image.new("L", (s, s), 0)
            ld = ImageDraw.Draw(layer)
            for i in range(rows):
                for j in range(cols):
                    if mask[i, j]:
                        ld.rectangle((x0 + j * cw, y0 + i * ch, x0 + (j + 1) * cw, y0 + (i + 1) * ch), fill=255)
            if style == "outline":
                k = max(3, int(round(cw * 0.35 * thickness)) | 1)
                grown = layer.filter(ImageFilter.MaxFilter(k))
                arr = (np.asarray(grown) > 0) & ~(np.asarray(layer.filter(ImageFilter.MinFilter(k))) > 0)
                layer = Image.fromarray((arr * 255).astype(np.uint8), mode="L")
            canvas.paste(Image.new("RGB", (s, s), fg), (0, 0), layer)
        else:
            raise ValueError(f"unknown rendition style {style!r}; expected one of {RENDITION_STYLES}")
    if slant:
        canvas = canvas.transform((s, s), Image.Transform.AFFINE, (1, slant, -slant * s / 2, 0, 1, 0),
                                  resample=Image.Resampling.BILINEAR, fillcolor=bg)
    return _finish(canvas, (size, size))


# --- charts, documents, signs --------------------------------------------------------------------------------------


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, fill) -> None:
    draw.text(xy, text, fill=fill, font=font())


def render_bar_chart(values: list[int], labels: list[str], colours: list[str], size: int = 84,
                     vmax: int = 9) -> Image.Image:
    """A bar chart with a letter under each bar and its value above it (drawn at 1x: bitmap text stays crisp)."""
    img = Image.new("RGB", (size, size), (252, 252, 252))
    draw = ImageDraw.Draw(img)
    base, top, left = size - 13, 12, 5
    draw.line((left, top - 2, left, base), fill=(60, 60, 60))
    draw.line((left, base, size - 2, base), fill=(60, 60, 60))
    slot = (size - left - 3) / len(values)
    unit = (base - top) / vmax
    for k, (v, lab, col) in enumerate(zip(values, labels, colours)):
        x0 = left + 2 + k * slot + slot * 0.14
        x1 = left + 2 + (k + 1) * slot - slot * 0.14
        y = base - v * unit
        draw.rectangle((round(x0), round(y), round(x1), base - 1), fill=COLOURS[col])
        cx = (x0 + x1) / 2
        _text(draw, (round(cx - 3), base + 1), lab, (20, 20, 20))
        _text(draw, (round(cx - 3), round(y) - 11), str(v), (20, 20, 20))
    return img


def render_document(title: str, lines: list[str], size: int = 84, paper: tuple[int, int, int] = (250, 248, 240),
                    ink: tuple[int, int, int] = (25, 25, 25)) -> Image.Image:
    """A small form: an underlined title and a few `Key: value` lines in the bitmap font."""
    img = Image.new("RGB", (size, size), (170, 170, 170))
    draw = ImageDraw.Draw(img)
    draw.rectangle((1, 1, size - 2, size - 2), fill=paper, outline=(120, 120, 120))
    _text(draw, (4, 2), title, ink)
    draw.line((4, 13, 4 + 6 * len(title), 13), fill=ink)
    for k, line in enumerate(lines):
        _text(draw, (4, 16 + 12 * k), line, ink)
    return img


SIGN_SLOTS = ((4, 6), (44, 6), (4, 33), (44, 33), (4, 60), (44, 60))


def render_signs(signs: list[tuple[str, str, int]], background: str = "white", size: int = 84) -> Image.Image:
    """Coloured signs (colour, word, slot) each with a short word printed on it, on posts."""
    img = Image.new("RGB", (size, size), BACKGROUNDS[background])
    draw = ImageDraw.Draw(img)
    for colour, word, slot in signs:
        x, y = SIGN_SLOTS[slot]
        w, h = 36, 17
        draw.line((x + w // 2, y + h, x + w // 2, min(size - 1, y + h + 6)), fill=(90, 90, 90), width=2)
        draw.rectangle((x, y, x + w, y + h), fill=COLOURS[colour], outline=(40, 40, 40))
        r, g, b = COLOURS[colour]
        ink = (0, 0, 0) if (0.299 * r + 0.587 * g + 0.114 * b) > 150 else (255, 255, 255)
        _text(draw, (x + (w - 6 * len(word)) // 2 + 1, y + 3), word, ink)
    return img


# --- garments ----------------------------------------------------------------------------------------------------

GARMENTS = ("shirt", "dress")
PATTERNS = ("plain", "striped", "dotted", "checked")
SLEEVES = ("short", "long")


def render_garment(kind: str, colour: str, pattern: str, sleeves: str, size: int = 56,
                   background: str = "white") -> Image.Image:
    """A product-style garment silhouette: kind, colour, pattern and sleeve length are all visible."""
    s = size * SS
    u = s / 16
    mask = Image.new("L", (s, s), 0)
    md = ImageDraw.Draw(mask)
    arm = 7 * u if sleeves == "long" else 3 * u
    if kind == "shirt":
        md.polygon([(5 * u, 2 * u), (11 * u, 2 * u), (11 * u, 14 * u), (5 * u, 14 * u)], fill=255)
    elif kind == "dress":
        md.polygon([(6 * u, 2 * u), (10 * u, 2 * u), (10.5 * u, 7 * u), (13 * u, 14.5 * u), (3 * u, 14.5 * u),
                    (5.5 * u, 7 * u)], fill=255)
    else:
        raise ValueError(f"unknown garment {kind!r}; expected one of {GARMENTS}")
    x_l, x_r = (5 * u, 11 * u) if kind == "shirt" else (6 * u, 10 * u)
    md.polygon([(x_l, 2 * u), (x_l, 4.5 * u), (x_l - 2.2 * u, 2 * u + arm), (x_l - 3.8 * u, 1.3 * u + arm)],
               fill=255)
    md.polygon([(x_r, 2 * u), (x_r, 4.5 * u), (x_r + 2.2 * u, 2 * u + arm), (x_r + 3.8 * u, 1.3 * u + arm)],
               fill=255)
    md.ellipse((7 * u, 1 * u, 9 * u, 3 * u), fill=0)  # neckline
    cloth = Image.new("RGB", (s, s), COLOURS[colour])
    cd = ImageDraw.Draw(cloth)
    if pattern == "striped":
        for y in range(0, s, int(2 * u)):
            cd.rectangle((0, y, s, y + 0.7 * u), fill=(250, 250, 250))
    elif pattern == "dotted":
        r = 0.45 * u
        for i, y in enumerate(np.arange(u, s, 1.6 * u)):
            for x in np.arange(u + (0.8 * u if i % 2 else 0), s, 1.6 * u):
                cd.ellipse((x - r, y - r, x + r, y + r), fill=(250, 250, 250))
    elif pattern == "checked":
        step = int(2 * u)
        for i, y in enumerate(range(0, s, step)):
            for j, x in enumerate(range(0, s, step)):
                if (i + j) % 2:
                    cd.rectangle((x, y, x + step - 1, y + step - 1), fill=(245, 245, 245))
    elif pattern != "plain":
        raise ValueError(f"unknown pattern {pattern!r}; expected one of {PATTERNS}")
    canvas = Image.new("RGB", (s, s), BACKGROUNDS[background])
    canvas.paste(cloth, (0, 0), mask)
    return _finish(canvas, (size, size))


# --- real photos shipped in pip packages -------------------------------------------------------------------------

# label -> (package, path inside the package). All of these are inside the wheels (research/offline-facts.md 2).
PHOTOS: dict[str, tuple[str, str]] = {
    "astronaut": ("skimage", "data/astronaut.png"), "brick wall": ("skimage", "data/brick.png"),
    "cameraman": ("skimage", "data/camera.png"), "cat": ("skimage", "data/chelsea.png"),
    "coffee cup": ("skimage", "data/coffee.png"), "coins": ("skimage", "data/coins.png"),
    "grass": ("skimage", "data/grass.png"), "gravel": ("skimage", "data/gravel.png"),
    "galaxies": ("skimage", "data/hubble_deep_field.jpg"), "tissue stain": ("skimage", "data/ihc.png"),
    "moon surface": ("skimage", "data/moon.png"), "printed page": ("skimage", "data/page.png"),
    "retina": ("skimage", "data/retina.jpg"), "rocket": ("skimage", "data/rocket.jpg"),
    "motorcycle": ("skimage", "data/motorcycle_left.png"), "chessboard": ("skimage", "data/chessboard_RGB.png"),
    "temple": ("sklearn", "datasets/images/china.jpg"), "flower": ("sklearn", "datasets/images/flower.jpg"),
    "portrait": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
}


def package_dir(package: str) -> Path:
    """A package's folder, found without importing it (importing scikit-image alone takes a second)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; MiniMMEB's photo set needs it")
    return Path(list(spec.submodule_search_locations)[0])


@functools.lru_cache(maxsize=None)
def load_photo(label: str, max_side: int = 320) -> Image.Image:
    """One sample photo as RGB, shrunk so crops are cheap."""
    package, rel = PHOTOS[label]
    data = (package_dir(package) / rel).read_bytes()
    img = Image.open(io.BytesIO(data)).convert("RGB")
    scale = max_side / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.BOX)
    return img


def photo_crop(label: str, box: tuple[float, float, float, float], size: int = 56, flip: bool = False) -> Image.Image:
    """A crop of a photo; `box` is (x0, y0, x1, y1) as fractions of the photo's width and height."""
    img = load_photo(label)
    w, h = img.size
    px = (round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h))
    out = img.crop(px).resize((size, size), Image.Resampling.BOX)
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else out


def save_png(img: Image.Image, path: Path) -> None:
    """PNG with fixed settings and no metadata: the same image always gives the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", optimize=False, compress_level=6)
