"""The format module: every string the model reads or writes is defined here and nowhere else.

It owns the chat layout, the MMEB-style instructions, the two decision tokens, the terminal token,
the teacher prompt used for synthesis and the extraction of the teacher's answer. The sequence layout
(docs/architecture.md) is:

    query     = prompt(query) + segment + TERMINAL     segment = "/embed" | "/augment <augmentation>"
    candidate = prompt(candidate) + TERMINAL

The embedding is the last-layer hidden state of the TERMINAL token.
"""
from __future__ import annotations

import re

# --- special tokens (Qwen2-VL's own, plus the two decision tokens) ---------------------------------
PAD = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"

AUGMENT = "/augment"
EMBED = "/embed"
DECISION_TOKENS = (AUGMENT, EMBED)
TERMINAL = IM_END  # the token whose last-layer state is the embedding; also what ends a generated segment
AUGMENTATION_PREFIX = " "  # the augmentation text follows `/augment` after one space

QWEN2VL_SPECIAL_TOKENS = [
    PAD, IM_START, IM_END, "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>", VISION_START, VISION_END, "<|vision_pad|>", IMAGE_PAD, VIDEO_PAD,
]

# MMEB writes its instructions with the Phi-3-V image token; the format module maps it to Qwen's block.
MMEB_IMAGE_PLACEHOLDER = "<|image_1|>"
IMAGE_BLOCK = VISION_START + IMAGE_PAD + VISION_END

# --- MMEB-style instructions (VLM2Vec's wording) ---------------------------------------------------
MMEB_INSTRUCTIONS = {
    "classification": "<|image_1|> Represent the given image for classification",
    "vqa": "<|image_1|> Represent the given image with the following question: {question}",
    "t2i": "Find me an everyday image that matches the given caption: {caption}",
    "i2t": "<|image_1|> Find an image caption describing the given everyday image.",
    "composed": "<|image_1|> Find an image to match the reference image and the modification: {modification}",
    "grounding": "<|image_1|> Select the portion of the image that isolates the object of the given label: {label}",
    "target_image": "<|image_1|> Represent the given image.",
    "target_cropped": "<|image_1|> Represent the given cropped image of the object.",
    # added for MiniMMEB, worded like VLM2Vec's per-dataset instructions (VOC2007, FashionIQ, RefCOCO)
    "cls_object": "<|image_1|> Identify the object shown in the image.",
    "cls_photo": "<|image_1|> Identify what the photo shows.",
    "composed_fashion": "<|image_1|> Find an image to match the fashion image and style note: {modification}",
    "grounding_ref": "<|image_1|> Select the portion of the image that follows the language expression: {expression}",
}

# --- teacher prompt (R1 style, as the paper's Table 1 describes) -----------------------------------
TEACHER_SYSTEM = (
    "A conversation between User and Assistant. The User asks a question (with an image), and the Assistant "
    "solves it. The Assistant first thinks about the reasoning process in the mind and then provides the User "
    "with the answer. The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>."
)
TEACHER_PROMPT = TEACHER_SYSTEM + " User: {question} Assistant:"

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_BOILERPLATE_RE = re.compile(
    r"^\s*(Represent the given (?:image|cropped image of the object)(?: with the following question)?[:.]?"
    r"|Find me an everyday image that matches the given caption:)\s*",
    re.IGNORECASE,
)


_ZERO_WIDTH = "\u200b"

# Control tokens of the Qwen family beyond Qwen2-VL's own (tool calls, fill-in-the-middle, reasoning): the real
# Qwen tokenizer matches them as single tokens, so text from users or a teacher must not carry them as typed.
QWEN_EXTRA_CONTROL_TOKENS = [
    "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]
# What `neutralize` breaks when no tokenizer is at hand (e.g. teacher augmentations read before training).
CONTROL_TOKENS = QWEN2VL_SPECIAL_TOKENS + list(DECISION_TOKENS) + QWEN_EXTRA_CONTROL_TOKENS


def control_tokens(tokenizer) -> list[str]:
    """Every string the tokenizer reads as one added (control) token: its special tokens and added vocabulary
    (Qwen's `<tool_call>`, `<|fim_prefix|>`, `<think>`, ...), plus the format module's own tokens."""
    found = set(QWEN2VL_SPECIAL_TOKENS) | set(DECISION_TOKENS)
    found.update(str(t) for t in getattr(tokenizer, "all_special_tokens", None) or [])
    for added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        found.add(getattr(added, "content", str(added)))
    found.discard(MMEB_IMAGE_PLACEHOLDER)  # the format module maps it to the image block itself
    return sorted((t for t in found if t), key=lambda t: (-len(t), t))


def _token_pattern(tokens: tuple[str, ...]) -> re.Pattern:
    ordered = sorted(set(tokens), key=lambda t: (-len(t), t))  # longest first: no token hides a longer one
    return re.compile("|".join(re.escape(t) for t in ordered))


_PATTERNS: dict[tuple[str, ...], re.Pattern] = {}


def neutralize(text: str | None, tokens=None) -> str | None:
    """Keep user text from injecting control tokens: each control-token string in `text` (`<|im_end|>`,
    `<|image_pad|>`, `/augment`, ... and, with `tokens`, every added token of a tokenizer) gets a zero-width space
    after its first character, so it is read as plain text instead of as the token itself. Idempotent.

    `tokens`: the strings to break (default: Qwen2-VL's special tokens and the two decision tokens)."""
    if not text:
        return text
    key = tuple(tokens) if tokens is not None else tuple(QWEN2VL_SPECIAL_TOKENS + list(DECISION_TOKENS))
    pattern = _PATTERNS.get(key)
    if pattern is None:
        pattern = _PATTERNS[key] = _token_pattern(tuple(t for t in key if len(t) > 1))
    return pattern.sub(lambda m: m[0][0] + _ZERO_WIDTH + m[0][1:], text)


def render_prompt(text: str | None, has_image: bool, instruction: str | None = None, tokens=None) -> str:
    """The chat prompt up to the assistant turn, with one image block if there is an image.

    The image goes where MMEB's `<|image_1|>` placeholder stands, else before the text. The processor
    later expands the single `<|image_pad|>` into as many tokens as the image needs. Control-token strings in the
    text and instruction are neutralised (`tokens`: those of the loaded tokenizer, see `control_tokens`).
    """
    content = " ".join(neutralize(part, tokens).strip() for part in (instruction, text) if part and part.strip())
    if has_image and MMEB_IMAGE_PLACEHOLDER not in content:
        content = MMEB_IMAGE_PLACEHOLDER + content
    first, _, rest = content.partition(MMEB_IMAGE_PLACEHOLDER)
    rest = rest.replace(MMEB_IMAGE_PLACEHOLDER, "")
    content = " ".join((first + " " + rest).split()) if not has_image else (
        " ".join(first.split()) + IMAGE_BLOCK + " ".join(rest.split()))
    return f"{IM_START}user\n{content}{IM_END}\n{IM_START}assistant\n"


def segment_text(decision: str, augmentation: str | None = None) -> str:
    """The generated segment as text (without the terminal token): `/embed` or `/augment <text>`."""
    if decision == EMBED:
        return EMBED
    if decision == AUGMENT:
        return AUGMENT + (AUGMENTATION_PREFIX + augmentation.strip() if augmentation and augmentation.strip() else "")
    raise ValueError(f"decision must be {AUGMENT!r} or {EMBED!r}, got {decision!r}")


def teacher_question(query_text: str | None, instruction: str | None = None) -> str:
    """The `{question}` of the teacher prompt: the query without MMEB's placeholder and embedding boilerplate."""
    text = " ".join(p for p in (instruction, query_text) if p)
    text = text.replace(MMEB_IMAGE_PLACEHOLDER, " ").strip()
    stripped = _BOILERPLATE_RE.sub("", text).strip()
    # "Represent the given image for classification" leaves a fragment: keep the whole instruction then
    if not stripped or stripped.lower().startswith("for "):
        return " ".join(text.split())
    return stripped


def teacher_prompt(question: str) -> str:
    """The full teacher prompt for one question (a single user turn; the image, if any, goes beside it)."""
    return TEACHER_PROMPT.format(question=question)


def extract_answer(reply: str | None) -> str | None:
    """The text inside the last `<answer>…</answer>` of a teacher reply, stripped; None if there is none."""
    if not reply:
        return None
    found = _ANSWER_RE.findall(reply)
    if not found:
        return None
    answer = " ".join(found[-1].split())
    return answer or None
