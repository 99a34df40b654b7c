"""Input processing: safe image loading, per-item encoding and batch collation.

Why by item: a query's prompt and its generated segment are concatenated before padding, so every item is
encoded alone (the processor expands the image placeholder to the right number of tokens) and batches are
padded afterwards, on the left or on the right. Images are checked here so that a bad file gives a clear
`ValueError` instead of a traceback from PIL or transformers.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from msolomon import prompts
from msolomon.inputs import Candidate

logger = logging.getLogger(__name__)


class ImageError(ValueError):
    """An image could not be used: the message names the image and the problem."""


@dataclass
class ImageLimits:
    """Caps applied to every image before it reaches the processor."""

    max_file_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 40_000_000  # decoded width*height; beyond this it is treated as a decompression bomb
    max_aspect_ratio: float = 50.0


def _describe(image: Any) -> str:
    return str(image) if isinstance(image, (str, Path)) else f"<{type(image).__name__} {getattr(image, 'size', '')}>"


def load_image(image: Any, limits: ImageLimits | None = None):
    """Open, check and convert an image (path or PIL image) to an RGB PIL image.

    RGBA/LA/P (transparency composited on white), L, CMYK, I;16/I/F and animated images (first frame) are
    converted; unreadable, truncated, non-image, oversized and extreme-aspect images raise `ImageError`.
    """
    from PIL import Image, UnidentifiedImageError

    limits = limits or ImageLimits()
    name = _describe(image)
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise ImageError(f"image {name}: no such file")
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            raise ImageError(f"image {name}: file is {size} bytes, over the {limits.max_file_bytes}-byte limit")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(path)
        except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageError(f"image {name}: not a readable image ({err})") from None
        except (ValueError, SyntaxError) as err:  # e.g. a PNG text chunk that decompresses beyond PIL's cap
            raise ImageError(f"image {name}: malformed image file ({err})") from None
        except OSError as err:
            raise ImageError(f"image {name}: cannot open ({err})") from None
    elif hasattr(image, "size") and hasattr(image, "convert"):
        img = image
    else:
        raise ImageError(f"image must be a file path or a PIL image, got {type(image).__name__}")

    width, height = img.size
    if width < 1 or height < 1:
        raise ImageError(f"image {name}: empty ({width}x{height})")
    if width * height > limits.max_pixels:
        raise ImageError(f"image {name}: {width}x{height} = {width * height} pixels, over the cap of "
                         f"{limits.max_pixels} (possible decompression bomb)")
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_aspect_ratio:
        raise ImageError(f"image {name}: aspect ratio {ratio:.1f}:1 ({width}x{height}) is beyond the "
                         f"{limits.max_aspect_ratio:.0f}:1 limit")
    try:
        if getattr(img, "is_animated", False):
            img.seek(0)
        img.load()
        return to_rgb(apply_exif_orientation(img))
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"image {name}: cannot decode ({err})") from None


EXIF_ORIENTATION = 0x0112


def apply_exif_orientation(img):
    """The image turned upright as its EXIF orientation tag says (what photo viewers show); unchanged without one."""
    from PIL import ImageOps

    try:
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF is ignored, as viewers do
        return img
    if orientation in (None, 1):
        return img
    return ImageOps.exif_transpose(img)


def to_rgb(img):
    """Convert any PIL mode to RGB; transparency goes on white, 16-bit and float images are rescaled."""
    from PIL import Image

    mode = img.mode
    if mode == "RGB":
        return img.copy() if getattr(img, "is_animated", False) else img
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        finite = np.isfinite(arr)
        if not finite.any():
            return Image.new("RGB", img.size, (0, 0, 0))
        lo, hi = float(arr[finite].min()), float(arr[finite].max())
        # NaN and -inf pixels count as the darkest value, +inf as the brightest: they never spoil the others
        arr = np.nan_to_num(arr, nan=lo, posinf=hi, neginf=lo)
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


@dataclass
class ItemEncoding:
    """One sequence before padding: token ids, which tokens are image tokens, and its image tensors."""

    input_ids: list[int]
    mm_token_type_ids: list[int]
    pixel_values: Any = None  # torch tensor (patches, dim) or None
    image_grid_thw: Any = None  # torch tensor (1, 3) or None
    labels: list[int] | None = None  # for training: -100 on prompt, ids on the generated segment
    extra: dict = field(default_factory=dict)

    def extended(self, ids: Sequence[int], labels: Sequence[int] | None = None) -> "ItemEncoding":
        """A copy with `ids` appended (text tokens), and their labels if given."""
        new_labels = None
        if labels is not None or self.labels is not None:
            base = self.labels if self.labels is not None else [-100] * len(self.input_ids)
            new_labels = base + (list(labels) if labels is not None else [-100] * len(ids))
        return ItemEncoding(self.input_ids + list(ids), self.mm_token_type_ids + [0] * len(ids),
                            self.pixel_values, self.image_grid_thw, new_labels, dict(self.extra))


class Encoder:
    """Turns queries/candidates into `ItemEncoding`s and pads them into batches.

    It is the one place that tokenises model input, so training and inference read identical sequences.
    """

    def __init__(self, processor, max_length: int = 1024, image_limits: ImageLimits | None = None):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.max_length = max_length
        self.image_limits = image_limits or ImageLimits()
        tok = self.tokenizer
        self.pad_id = tok.pad_token_id
        self.terminal_id = tok.convert_tokens_to_ids(prompts.TERMINAL)
        self.augment_id = tok.convert_tokens_to_ids(prompts.AUGMENT)
        self.embed_id = tok.convert_tokens_to_ids(prompts.EMBED)
        self.image_token_id = tok.convert_tokens_to_ids(prompts.IMAGE_PAD)
        self.control_tokens = tuple(prompts.control_tokens(tok))  # every added token of this tokenizer

    # -- single items ---------------------------------------------------------------------------
    def neutralize(self, text: str | None) -> str | None:
        """`text` with every control-token string of this tokenizer broken (read as plain text)."""
        return prompts.neutralize(text, self.control_tokens)

    def _count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def _truncate_text(self, text: str | None, budget: int) -> str | None:
        if not text:
            return text
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) <= budget:
            return text
        logger.warning("text of %d tokens truncated to %d tokens to fit max_length=%d",
                       len(ids), max(budget, 0), self.max_length)
        return self.tokenizer.decode(ids[: max(budget, 0)], skip_special_tokens=False)

    def encode_prompt(self, item: Candidate, reserve: int = 0) -> ItemEncoding:
        """The prompt of a query or candidate (chat layout, image expanded); `reserve` tokens kept free for
        the generated segment and the terminal token. Over-long text is truncated with a warning.

        Control-token strings are neutralised *before* the text is measured, so the length cap holds for any
        text (a neutralised `<|im_end|>` is several plain tokens, not one)."""
        image = load_image(item.image, self.image_limits) if item.image is not None else None
        instruction = self.neutralize(item.instruction)
        text = self.neutralize(item.text)
        if image is None and any(prompts.MMEB_IMAGE_PLACEHOLDER in (part or "") for part in (text, instruction)):
            raise ValueError(f"the text holds MMEB's image placeholder {prompts.MMEB_IMAGE_PLACEHOLDER} but no image "
                             "was given: pass image=... or remove the placeholder")
        n_image_tokens = 0
        if image is not None:
            grid = self._grid(image)
            n_image_tokens = int(np.prod(grid)) // (self.processor.image_processor.merge_size ** 2)
        overhead = self._count(self._render(None, image is not None, instruction)) + n_image_tokens
        limit = self.max_length - reserve
        budget = limit - overhead
        if budget < 1:
            raise ValueError(f"no room for the query: its prompt takes {overhead} tokens (image included) and "
                             f"{reserve} are kept for the generated segment and terminal token (max_new_tokens + 1), "
                             f"over max_length={self.max_length}; lower max_new_tokens or the image resolution")
        if image is None and not (text and text.strip()) and not instruction:
            raise ValueError("a query or candidate needs a text, an image or both; got neither")
        for _ in range(4):  # joining text and template can merge or split a token or two: trim until it fits
            kept = self._truncate_text(text, budget)
            rendered = self._render(kept, image is not None, instruction)
            out = self.processor(text=[rendered], images=[image] if image is not None else None, return_tensors="pt")
            ids = out["input_ids"][0].tolist()
            if len(ids) <= limit or not kept:
                break
            budget -= len(ids) - limit
        if len(ids) > limit:
            raise ValueError(f"the prompt takes {len(ids)} tokens, over max_length={self.max_length} minus "
                             f"{reserve} kept for the segment; shorten the instruction or lower max_new_tokens")
        mm = out.get("mm_token_type_ids")
        mm = mm[0].tolist() if mm is not None else [int(t == self.image_token_id) for t in ids]
        return ItemEncoding(ids, mm, out.get("pixel_values"), out.get("image_grid_thw"))

    def _render(self, text: str | None, has_image: bool, instruction: str | None) -> str:
        return prompts.render_prompt(text, has_image, instruction, self.control_tokens)

    def _grid(self, image) -> tuple[int, int, int]:
        ip = self.processor.image_processor
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        factor = ip.patch_size * ip.merge_size
        h, w = smart_resize(image.height, image.width, factor=factor,
                            min_pixels=ip.size["shortest_edge"], max_pixels=ip.size["longest_edge"])
        return (1, h // ip.patch_size, w // ip.patch_size)

    def segment_ids(self, decision: str, augmentation: str | None = None) -> list[int]:
        """Token ids of a generated segment (without the terminal token)."""
        if decision == prompts.EMBED:
            return [self.embed_id]
        if decision != prompts.AUGMENT:
            raise ValueError(f"decision must be {prompts.AUGMENT!r} or {prompts.EMBED!r}, got {decision!r}")
        text = prompts.segment_text(decision, augmentation)[len(prompts.AUGMENT):]
        return [self.augment_id] + (self.tokenizer.encode(text, add_special_tokens=False) if text else [])

    def encode_candidate(self, item: Candidate) -> ItemEncoding:
        return self.encode_prompt(item, reserve=1).extended([self.terminal_id])

    def encode_query_with_segment(self, item: Candidate, decision: str, augmentation: str | None = None,
                                  max_segment_tokens: int | None = None) -> ItemEncoding:
        """prompt + segment + terminal, labels on the segment and terminal (the teacher-forced training form)."""
        seg = self.segment_ids(decision, augmentation)
        if max_segment_tokens is not None:
            seg = seg[:max_segment_tokens]
        prompt = self.encode_prompt(item, reserve=len(seg) + 1)
        tail = seg + [self.terminal_id]
        return prompt.extended(tail, labels=tail)

    # -- batches --------------------------------------------------------------------------------
    def collate(self, items: Sequence[ItemEncoding], padding_side: str = "left") -> dict:
        """Pad items into one batch. Returns input_ids, attention_mask, mm_token_type_ids, pixel_values,
        image_grid_thw, labels (if any) and `last_index` (the position of each row's last real token)."""
        import torch

        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        width = max(len(it.input_ids) for it in items)
        n = len(items)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        mm = torch.zeros((n, width), dtype=torch.int)
        has_labels = any(it.labels is not None for it in items)
        labels = torch.full((n, width), -100, dtype=torch.long) if has_labels else None
        last_index = torch.zeros(n, dtype=torch.long)
        for row, it in enumerate(items):
            length = len(it.input_ids)
            sl = slice(width - length, width) if padding_side == "left" else slice(0, length)
            input_ids[row, sl] = torch.tensor(it.input_ids)
            mask[row, sl] = 1
            mm[row, sl] = torch.tensor(it.mm_token_type_ids, dtype=torch.int)
            if has_labels and it.labels is not None:
                labels[row, sl] = torch.tensor(it.labels)
            last_index[row] = width - 1 if padding_side == "left" else length - 1
        pixel = [it.pixel_values for it in items if it.pixel_values is not None]
        grids = [it.image_grid_thw for it in items if it.image_grid_thw is not None]
        batch = {
            "input_ids": input_ids, "attention_mask": mask, "mm_token_type_ids": mm,
            "pixel_values": torch.cat(pixel, 0) if pixel else None,
            "image_grid_thw": torch.cat(grids, 0) if grids else None,
            "last_index": last_index,
        }
        if has_labels:
            batch["labels"] = labels
        return batch

    def collate_by_length(self, items: Sequence[ItemEncoding], padding_side: str = "left", chunks: int = 1) -> dict:
        """`collate(items)`, plus, when `chunks` > 1, the same rows sorted by length in that many sub-batches
        (`batch["chunks"]`: (row indices, sub-batch) pairs), each padded only to its own longest row. A training
        batch mixes short and long sequences, so part of it is padding; `forward_hidden` runs the sub-batches and
        returns the full batch's hidden states, with the same values at every real position. The full batch then
        keeps no image tensors (each chunk holds its own rows'), so the images are not held twice."""
        import torch

        if chunks < 1:
            raise ValueError(f"length chunks must be 1 or more, got {chunks}")
        batch = self.collate(items, padding_side)
        if chunks > 1 and len(items) >= 2 * chunks:
            order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
            size = -(-len(items) // chunks)
            groups = [order[i:i + size] for i in range(0, len(order), size)]
            batch["chunks"] = [(torch.tensor(rows), self.collate([items[i] for i in rows], padding_side))
                               for rows in groups]
            batch["padding_side"] = padding_side
            batch["pixel_values"] = batch["image_grid_thw"] = None
        return batch
