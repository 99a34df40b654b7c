"""Image–text data for pretraining the tiny base MLLM, made by MiniMMEB's world builders with seeds of its own.

The base must learn to *see and answer* before any embedding training, as Qwen2-VL-2B-Instruct did before
M-Solomon fine-tuned it. So every world family (digits, scenes and shapes, charts, forms and signs, garments,
photos) is asked for fresh items from random streams that no benchmark split uses, and each item becomes one
generative example: image + question → a short reasoned answer (the same kind of answer the teacher writes).
Text-only retrieval queries (a caption) become captioning examples of their positive image.

Disjointness from the benchmark is checked, not assumed:
- handwritten digits come only from the *train* half of scikit-learn's digits under the benchmark seed, so no
  test digit is ever drawn, in any jitter;
- every image is hashed by its decoded pixels, and an example whose image equals any MiniMMEB image (train, val
  or test, at the benchmark's seed and scale) is dropped;
- an example whose image is a *near* duplicate of a validation or test image is dropped too: its 8×8 colour
  signature lies within `near_duplicate_rms` levels (root mean square over the 8×8×3 values) of one
  (`NearDuplicates`). A changed pixel moves a signature by under one level, and a one-pixel shift of a shape picture
  stays within the tolerance (tests/test_pretrain.py); thin strokes (digits, forms) move further when shifted.
  Colour, not grey: a red and a green shape of equal luminance are different pictures, and MiniMMEB's answers name
  colours. Training images may be near: fine-tuning trains on them anyway.
`check_disjoint` proves both on the written files.

Layout of OUT:
    OUT/pretrain.json                 meta: settings, counts per family, the dropped collisions
    OUT/train.jsonl, OUT/heldout.jsonl   {"id", "dataset", "image", "prompt", "response"}; image relative to OUT
    OUT/images/NAME/{train,heldout}/...png
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:
    import numpy as np

from msolomon import prompts
from msolomon.files import atomic_write_jsonl, atomic_write_text, install_dir

logger = logging.getLogger(__name__)

META_FILE = "pretrain.json"
DESCRIBE = "Describe the image."
PRETRAIN_SEED_OFFSET = 1_000_003  # pretraining streams are keyed by (seed + offset, name, part): never a benchmark's
SIGNATURE_SIDE = 8  # the colour thumbnail's side: a cell spans 7-10 pixels of MiniMMEB's 56-84 pixel images
SIGNATURE_SIZE = SIGNATURE_SIDE * SIGNATURE_SIDE * 3
NEAR_DUPLICATE_RMS = 4.0  # levels (0-255): a changed pixel moves a signature < 1; a 1-pixel shift of a shape, less


@dataclass(frozen=True)
class PretrainDataSettings:
    """How much pretraining data to make and which benchmark it must stay apart from."""

    n_per_dataset: int = 3000  # items asked of each world builder for training
    n_heldout_per_dataset: int = 60  # fresh items per builder for the generative evaluation
    seed: int = 0  # pretraining's own streams (offset so they never equal a benchmark stream)
    benchmark_seed: int = 0  # the MiniMMEB seed whose digit split is respected and whose images are excluded
    benchmark_scale: str = "small"
    datasets: tuple[str, ...] | None = None  # a subset of the world builders (default: all)
    near_duplicate_rms: float = NEAR_DUPLICATE_RMS  # drop images this near a val/test image's signature (0: exact only)


def image_signature(path: str | Path) -> "np.ndarray":
    """The image's perceptual signature: its RGB values averaged over a SIGNATURE_SIDE² grid (float32)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        small = img.convert("RGB").resize((SIGNATURE_SIDE, SIGNATURE_SIDE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32).reshape(-1)


class NearDuplicates:
    """The signatures of a set of images (a benchmark's validation and test images) in an exact faiss index: which
    other image lies within `rms` levels (root mean square over the signature) of one of them."""

    def __init__(self, paths: Iterable[str | Path], rms: float = NEAR_DUPLICATE_RMS):
        import faiss
        import numpy as np

        self.paths = [str(p) for p in paths]
        self.rms = rms
        self.index = faiss.IndexFlatL2(SIGNATURE_SIZE)
        if self.paths:
            self.index.add(np.stack([image_signature(p) for p in self.paths]))

    def search(self, signatures: "np.ndarray") -> tuple["np.ndarray", "np.ndarray"]:
        """For each row of `signatures`: the RMS distance (levels) to the nearest indexed image and its index
        in `paths` (inf and -1 when nothing is indexed)."""
        import numpy as np

        if not self.paths:
            return np.full(len(signatures), np.inf), np.full(len(signatures), -1)
        dist, ids = self.index.search(np.ascontiguousarray(signatures, dtype=np.float32), 1)
        return np.sqrt(np.maximum(dist[:, 0], 0) / SIGNATURE_SIZE), ids[:, 0]

    def nearest(self, path: str | Path) -> tuple[float, str | None]:
        """(RMS distance in levels, path) of the indexed image nearest to `path`'s."""
        dist, ids = self.search(image_signature(path)[None, :])
        return float(dist[0]), (self.paths[int(ids[0])] if ids[0] >= 0 else None)

    def is_near(self, path: str | Path) -> bool:
        return self.rms > 0 and self.nearest(path)[0] <= self.rms

    def near_many(self, paths: Sequence[str | Path]) -> list[bool]:
        """`is_near` for many images in one search (a search per image costs more in faiss's setup than in work)."""
        import numpy as np

        if self.rms <= 0 or not paths:
            return [False] * len(paths)
        dist, _ = self.search(np.stack([image_signature(p) for p in paths]))
        return [bool(d <= self.rms) for d in dist]


def held_out_images(benchmark: str | Path) -> list[Path]:
    """Every image a MiniMMEB folder's validation and test rows show (queries and candidates, wherever stored)."""
    root = Path(benchmark)
    paths: set[Path] = set()
    for rows in sorted(root.glob("val/*/val.jsonl")) + sorted(root.glob("test/*/test.jsonl")):
        with open(rows, encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                for key in ("qry_img_path", "tgt_img_path"):
                    value = row.get(key)
                    paths |= {root / v for v in (value if isinstance(value, list) else [value]) if v}
    return sorted(paths)


def pixel_hash(path: str | Path) -> str:
    """SHA-256 of an image's decoded RGB pixels and size: two files showing the same picture hash alike."""
    from PIL import Image

    with Image.open(path) as img:
        rgb = img.convert("RGB")
        return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


def image_hashes(root: str | Path) -> set[str]:
    """Pixel hashes of every PNG under `root` (e.g. a MiniMMEB folder: train, val and test images)."""
    return {pixel_hash(p) for p in sorted(Path(root).rglob("*.png"))}


# Pretraining asks plain questions, as an instruction-tuned MLLM's data does, not MMEB's embedding instructions:
# (prefix of the teacher question, the plain question; {} is the rest of the text)
PLAIN_QUESTIONS = (
    ("Represent the given image for classification", "What does the image show?"),
    ("Find an image caption describing the given everyday image.", DESCRIBE),
    ("Find an image to match the reference image and the modification:", "Describe the image after this change: {}"),
    ("Find an image to match the fashion image and style note:", "Describe the garment after this change: {}"),
    ("Select the portion of the image that isolates the object of the given label:", "Describe the {} in the image."),
    ("Select the portion of the image that follows the language expression:", "Which object is {}?"),
)


def plain_question(query_text: str | None) -> str:
    """The question a pretraining example asks for a world item's query."""
    question = prompts.teacher_question(query_text)
    for prefix, plain in PLAIN_QUESTIONS:
        if question.startswith(prefix):
            return plain.format(question[len(prefix):].strip())
    return question


def item_examples(item) -> list[tuple[str, str, str]]:
    """(image, prompt, response) pairs of one world item: its question with its answer, or, for a text-only
    query (a caption), the caption of its positive image."""
    if item.qry_img:
        return [(item.qry_img, plain_question(item.qry_text), item.answer)]
    if item.pos and item.pos[1]:
        caption = prompts.teacher_question(item.qry_text)
        return [(item.pos[1], DESCRIBE, caption if caption.endswith(".") else caption + ".")]
    return []


def build_garments(ctx, n: int) -> list[dict]:
    """Garment descriptions and style changes, photographed on coloured backdrops.

    FashionCIR's gallery already holds every garment appearance on white, so the world builder's own images would
    all be benchmark images; product photos on other backdrops carry the same knowledge in other pixels."""
    from msolomon.worlds.canvas import COLOURS
    from msolomon.worlds.garments import GARMENTS, PATTERNS, SLEEVES, fashion_describe, render_garment

    values = {"colour": list(COLOURS), "pattern": list(PATTERNS), "sleeves": list(SLEEVES)}
    notes = {"colour": "make it {}", "pattern": "make it {}", "sleeves": "give it {} sleeves"}
    rng, rows = ctx.rng, []
    for i in range(n):
        g = {"kind": rng.choice(GARMENTS), **{a: rng.choice(v) for a, v in values.items()}}
        backdrop = rng.choice(("gray", "beige"))
        path = ctx.store.put(f"{i:05d}", lambda: render_garment(g["kind"], g["colour"], g["pattern"], g["sleeves"],
                                                                background=backdrop))
        if rng.random() < 0.5:
            rows.append((path, "Describe the garment.", fashion_describe(g)))
        else:
            attr = rng.choice(list(values))
            value = rng.choice([x for x in values[attr] if x != g[attr]])
            rows.append((path, f"Describe the garment after this change: {notes[attr].format(value)}",
                         fashion_describe({**g, attr: value})))
    return rows


READING_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no I/1 or O/0: the bitmap font draws them nearly alike


def random_word(rng, low: int = 3, high: int = 5) -> str:
    """A string of capitals and digits no dictionary holds: read glyph by glyph, never guessed from a template."""
    return "".join(rng.choice(READING_CHARS) for _ in range(rng.randint(low, high)))


def build_reading(ctx, n: int) -> list[tuple[str, str, str]]:
    """Reading practice, the OCR part of an MLLM's pretraining: transcribe a whole form, one line of it, or every
    sign in a street scene.

    The benchmark's reading questions ask for one value of a form (3 bits an answer), which a small base does not
    learn from; a transcription supervises every character in the image. Half the values are the worlds' own words,
    half random strings of capitals and digits, so the base must read glyphs rather than recall a word list."""
    from msolomon.worlds.canvas import COLOURS
    from msolomon.worlds.common import random_background
    from msolomon.worlds.documents import DOC_FIELDS, DOC_TITLES, SIGN_SLOTS, SIGN_WORDS, render_document, render_signs

    rng, rows = ctx.rng, []
    for i in range(n):
        kind = rng.random()
        if kind < 0.7:
            title = rng.choice(DOC_TITLES)
            keys = rng.sample(list(DOC_FIELDS), 4)
            vals = [rng.choice(DOC_FIELDS[k]) if rng.random() < 0.5 else random_word(rng) for k in keys]
            lines = [f"{k}: {v}" for k, v in zip(keys, vals)]
            path = ctx.store.put(f"{i:05d}", lambda: render_document(title, lines))
            if kind < 0.4:
                rows.append((path, "Read the form.", f"{title}. " + ". ".join(lines) + "."))
            else:
                k = rng.randrange(4)
                rows.append((path, f"What does line {k + 1} of the {title.lower()} say?", lines[k] + "."))
        else:
            count = rng.randint(2, 3)
            words = [rng.choice(SIGN_WORDS) if rng.random() < 0.5 else random_word(rng, 3, 5) for _ in range(count)]
            colours = rng.sample(list(COLOURS), count)
            slots = sorted(rng.sample(range(len(SIGN_SLOTS)), count))  # in reading order
            signs = list(zip(colours, words, slots))
            bg = random_background(rng)
            path = ctx.store.put(f"{i:05d}", lambda: render_signs(signs, bg))
            rows.append((path, "Read the signs.", " ".join(f"The {c} sign says {w}." for c, w, _ in signs)))
    return rows


# world builders whose every image is a benchmark image, replaced by a task of their own
OWN_TASKS = {"FashionCIR": ("Garments", build_garments)}
# tasks of pretraining alone (no benchmark dataset of that name): asked for by name in `datasets`
PRETRAIN_TASKS = {"Reading": build_reading}


def _build_part(name: str, part: str, n: int, settings: PretrainDataSettings, root: Path) -> list[dict]:
    from msolomon.data.minimmeb import DATASETS, Ctx, MiniMMEBSettings, Store, rng_for

    if name in OWN_TASKS or name in PRETRAIN_TASKS:
        task, build = OWN_TASKS[name] if name in OWN_TASKS else (name, PRETRAIN_TASKS[name])
        ctx = Ctx(MiniMMEBSettings.make(seed=settings.benchmark_seed), task, "train", Store(root, f"{task}/{part}"),
                  rng_for(settings.seed + PRETRAIN_SEED_OFFSET, task, part))
        return [{"id": f"{task}:{part}:{i}", "dataset": task, "image": image, "prompt": prompt, "response": response}
                for i, (image, prompt, response) in enumerate(build(ctx, n))]
    spec = DATASETS[name]
    bench = MiniMMEBSettings.make(seed=settings.benchmark_seed, scale=settings.benchmark_scale)
    # split "train": builders draw from train-side pools only (digits) and build train-style rows; the random
    # stream and the image folder are pretraining's own
    store = Store(root, f"{name}/{part}")
    ctx = Ctx(bench, name, "train", store, rng_for(settings.seed + PRETRAIN_SEED_OFFSET, name, part))
    rows = []
    for i, item in enumerate(spec.build(ctx, n)):
        for j, (image, prompt, response) in enumerate(item_examples(item)):
            rows.append({"id": f"{name}:{part}:{i}:{j}", "dataset": name, "image": image, "prompt": prompt,
                         "response": response})
    return rows


def generate(out: str | Path, settings: PretrainDataSettings, benchmark: str | Path,
             progress: bool = True) -> dict:
    """Write the pretraining data to `out` (atomically: a temporary sibling renamed into place) and return its
    meta. `benchmark` is a MiniMMEB folder at the benchmark's seed and scale; its images are excluded."""
    from tqdm.auto import tqdm

    from msolomon.data.minimmeb import DATASETS

    out = Path(out)
    names = list(settings.datasets or DATASETS)
    unknown = sorted(set(names) - set(DATASETS) - set(PRETRAIN_TASKS))
    if unknown:
        raise ValueError(f"unknown world builder(s) {', '.join(unknown)}: choose from "
                         f"{', '.join([*DATASETS, *PRETRAIN_TASKS])}")
    t0 = time.perf_counter()
    banned = image_hashes(benchmark)
    near = NearDuplicates(held_out_images(benchmark), settings.near_duplicate_rms)
    logger.info("%d benchmark images hashed, %d validation and test signatures indexed in %.1fs", len(banned),
                len(near.paths), time.perf_counter() - t0)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    counts: dict[str, dict[str, int]] = {}
    try:
        splits: dict[str, list[dict]] = {"train": [], "heldout": []}
        seen_train: set[str] = set()
        for name in tqdm(names, desc="pretraining data", unit="world", disable=not progress):
            world = OWN_TASKS[name][0] if name in OWN_TASKS else name
            counts[world] = {}
            for part, n in (("train", settings.n_per_dataset), ("heldout", settings.n_heldout_per_dataset)):
                rows = _build_part(name, part, n, settings, tmp)
                is_near = near.near_many([tmp / row["image"] for row in rows])  # one search for the whole part
                kept, dropped, dropped_near = [], 0, 0
                for row, row_is_near in zip(rows, is_near):
                    h = pixel_hash(tmp / row["image"])
                    if h in banned or (part == "heldout" and h in seen_train):
                        dropped += 1
                        continue
                    if row_is_near:
                        dropped_near += 1
                        continue
                    if part == "train":
                        seen_train.add(h)
                    kept.append(row)
                splits[part] += kept
                counts[world][part] = len(kept)
                counts[world][f"{part}_dropped_collisions"] = dropped
                counts[world][f"{part}_dropped_near_duplicates"] = dropped_near
        used = {row["image"] for rows in splits.values() for row in rows}
        for path in list((tmp / "images").rglob("*.png")):  # galleries a builder drew but no example shows
            if str(path.relative_to(tmp)) not in used:
                path.unlink()
        for part, rows in splits.items():
            atomic_write_jsonl(tmp / f"{part}.jsonl", rows)
        meta = {"name": "M-Solomon pretraining data", "settings": asdict(settings), "counts": counts,
                "n_train": len(splits["train"]), "n_heldout": len(splits["heldout"]),
                "benchmark": str(benchmark), "benchmark_images": len(banned),
                "held_out_signatures": len(near.paths), "signature": {"side": SIGNATURE_SIDE,
                                                                      "near_duplicate_rms": near.rms}}
        atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        install_dir(tmp, out, mode=0o755)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("pretraining data: %d train, %d held-out examples in %.1fs", meta["n_train"], meta["n_heldout"],
                time.perf_counter() - t0)
    return meta


def load_rows(root: str | Path, part: str) -> list[dict]:
    """The rows of one part (train or heldout), with image paths made absolute."""
    root = Path(root)
    path = root / f"{part}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: is {root} a pretraining data folder?")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            try:
                row = json.loads(line)
                row["image"] = str(root / row["image"])
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}: line {line_no}: not a pretraining row ({err})") from None
            rows.append(row)
    return rows


def is_pretrain_data(root: str | Path) -> bool:
    return (Path(root) / META_FILE).is_file() and (Path(root) / "train.jsonl").is_file()


def check_disjoint(pretrain_root: str | Path, benchmark_roots: Iterable[str | Path],
                   near_duplicate_rms: float = NEAR_DUPLICATE_RMS) -> list[str]:
    """Images of pretraining examples (train and held-out) whose pixels equal a benchmark image, or whose signature
    lies within `near_duplicate_rms` of a validation or test image's (0: exact only); an empty list proves
    disjointness."""
    banned: set[str] = set()
    held_out: list[Path] = []
    for root in benchmark_roots:
        banned |= image_hashes(root)
        held_out += held_out_images(root)
    near = NearDuplicates(held_out, near_duplicate_rms)
    images = sorted({row["image"] for part in ("train", "heldout") for row in load_rows(pretrain_root, part)})
    is_near = near.near_many(images)
    return [p for p, close in zip(images, is_near) if close or pixel_hash(p) in banned]


def normalise_answer(text: str | None) -> str:
    """Exact match ignores case, surrounding space and a final full stop, nothing else."""
    return " ".join((text or "").strip().lower().rstrip(".").split())


def word_accuracy(predictions: Sequence[str | None], references: Sequence[str]) -> float:
    """Partial credit beside exact match: the share of reference words the prediction has at the same position
    (a caption that gets two of three objects right scores about two thirds)."""
    if not references:
        return float("nan")
    scores = []
    for p, r in zip(predictions, references):
        pw, rw = normalise_answer(p).replace(",", " ").split(), normalise_answer(r).replace(",", " ").split()
        scores.append(sum(a == b for a, b in zip(pw, rw)) / max(len(rw), len(pw), 1))
    return 100.0 * sum(scores) / len(scores)


def exact_match(predictions: Sequence[str | None], references: Sequence[str]) -> float:
    if not references:
        return float("nan")
    return 100.0 * sum(normalise_answer(p) == normalise_answer(r) for p, r in zip(predictions, references)) / len(
        references)
