"""Photos: crops of the real sample photographs that ship inside pip packages (scikit-image, scikit-learn,
matplotlib), the only natural images available offline.
"""
from __future__ import annotations

import functools
import io

from PIL import Image

from msolomon.worlds.canvas import package_dir
from msolomon.worlds.common import INSTR, Ctx, Item, label_candidates, pick_wrong

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


PHOTO_PHRASES = {"astronaut": "an astronaut", "brick wall": "a brick wall", "cameraman": "a cameraman",
                 "cat": "a cat", "coffee cup": "a coffee cup", "coins": "coins", "grass": "grass", "gravel": "gravel",
                 "galaxies": "galaxies in deep space", "tissue stain": "a stained tissue sample",
                 "moon surface": "the moon's surface", "printed page": "a printed page", "retina": "a retina",
                 "rocket": "a rocket", "motorcycle": "a motorcycle", "chessboard": "a chessboard",
                 "temple": "a temple", "flower": "a flower", "portrait": "a portrait of a woman"}
PHOTO_CONFUSABLE = {"grass": ["gravel", "brick wall"], "gravel": ["grass", "moon surface"],
                    "brick wall": ["gravel", "chessboard"], "cameraman": ["portrait", "astronaut"],
                    "portrait": ["cameraman", "astronaut"], "astronaut": ["portrait", "rocket"],
                    "printed page": ["chessboard", "coins"], "moon surface": ["coins", "gravel"],
                    "retina": ["tissue stain", "coffee cup"], "tissue stain": ["retina", "flower"]}


def build_photo_cls(ctx: Ctx, n: int) -> list[Item]:
    """SUN397 / ImageNet analogue on real photos (scikit-image, scikit-learn, matplotlib samples): name the photo a
    random crop comes from; candidates are the 19 photo labels."""
    rng = ctx.rng
    labels = list(PHOTOS)
    items = []
    for i in range(n):
        label = labels[rng.randrange(len(labels))]
        w, h = load_photo(label).size
        side = rng.uniform(0.35, 0.8) * min(w, h)
        x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
        box = (x0 / w, y0 / h, (x0 + side) / w, (y0 + side) / h)
        flip = rng.random() < 0.5
        path = ctx.store.put(f"{ctx.split}/{i:05d}", lambda: photo_crop(label, box, flip=flip))
        near = PHOTO_CONFUSABLE.get(label, []) + pick_wrong(rng, labels, label, 2)
        near = [x for x in dict.fromkeys(near) if x != label][:3]
        items.append(Item(INSTR["cls_photo"], path, (label, ""), (near[0], ""), label_candidates(label, labels, rng),
                          answer=f"This is a close-up of {PHOTO_PHRASES[label]}.",
                          wrong=[f"This is a close-up of {PHOTO_PHRASES[x]}." for x in near],
                          facts=["The picture is a crop of a larger photograph.",
                                 f"Its content matches {PHOTO_PHRASES[label]}."]))
    return items
