"""`MSolomon`: one Qwen2-VL model that decides, augments and embeds (adaptive query augmentation).

Inference for a batch of queries (docs/architecture.md, "One query, step by step"):
1. one prefill of the prompts gives the decision logits at the last prompt position;
   p_augment = softmax over the logits of `/augment` and `/embed`;
2. the batch splits by decision: `/embed` rows are done, since the prefill already ran over `/embed` + terminal
   after the prompt (unless every row must augment; with right padding in a batch, they feed `/embed` + terminal
   in one cached step instead); `/augment` rows drop those two positions from the cache, feed `/augment`,
   decode greedily with the KV cache and feed the terminal token once;
3. the embedding is the last-layer state of the terminal token, L2-normalised.
The query is never re-encoded: the cached path equals one full pass over the same tokens (tested).
"""
from __future__ import annotations

import logging
import numbers
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence, get_args, overload

import numpy as np

from msolomon import prompts
from msolomon.backbone import (
    FormatSettings,
    TinySettings,
    build_processor,
    check_model_folder,
    ensure_special_tokens,
    is_adapter_dir,
    load_processor,
    load_qwen_tokenizer,
    quantization_config,
    resolve_model_source,
    tiny_model_config,
    train_bpe_tokenizer,
    unwrap,
)
from msolomon.files import replace_dir
from msolomon.inputs import Candidate, InputTypeError, Query, QueryResult, as_candidate, as_query, check_count
from msolomon.processing import Encoder, ImageLimits, ItemEncoding

logger = logging.getLogger(__name__)

QueryGate = Callable[[list[int], np.ndarray], Sequence[bool]]  # encode_queries(gate=...): see there
AugmentMode = Literal["auto", "never", "always"]  # the model decides; force `/embed` (NoAug); force `/augment`
AUGMENT_MODES: tuple[str, ...] = get_args(AugmentMode)
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "model"


@dataclass
class StreamedResult(QueryResult):
    """One step of `MSolomon.stream_query`: a `QueryResult` whose embedding is None until `final` is True."""

    final: bool = False


def _now(device) -> float:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def _is_single(items: Any) -> bool:
    return isinstance(items, (str, Path, Candidate, dict)) or (hasattr(items, "convert") and hasattr(items, "size"))


def _items(items: Any, convert, what: str) -> tuple[bool, list]:
    # `what`: "query" or "candidate"
    """(single, converted items) of an `encode_*` argument; a bad item is named by its position in the batch."""
    single = _is_single(items)
    if single:
        return True, [convert(items)]
    if items is None or isinstance(items, (bytes, int, float)) or not hasattr(items, "__iter__"):
        raise InputTypeError(f"cannot encode a {type(items).__name__}: pass a str, a Path or PIL image, a dict, a "
                             f"{what.capitalize()} or a list of them")
    out = []
    items = list(items)
    for i, item in enumerate(items):
        try:
            out.append(convert(item))
        except ValueError as err:
            raise type(err)(f"{what} {i} of {len(items)}: {err}") from None
    return False, out


@contextmanager
def quiet_loading(verbose: bool | None = None):
    """Hide transformers' "Loading weights" bar and deprecation warnings while a model loads, unless `verbose`
    (default: when the msolomon logger shows debug messages, as the command lines' --verbose sets)."""
    import warnings

    from transformers.utils import logging as hf_logging

    if verbose is None:
        verbose = logging.getLogger("msolomon").isEnabledFor(logging.DEBUG)
    if verbose:
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def files_signature(*folders: str | Path | None) -> str | None:
    """A short fingerprint of the weight and config files in checkpoint folders (name, size, mtime), so results
    cached for one checkpoint are not reused for another one saved to the same path."""
    import hashlib

    h = hashlib.sha256()
    found = False
    for folder in folders:
        if folder is None or not Path(folder).is_dir():
            continue
        for f in sorted(Path(folder).iterdir()):
            if f.suffix in (".safetensors", ".json") and f.is_file():
                st = f.stat()
                h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
                found = True
    return h.hexdigest()[:16] if found else None


@dataclass
class RowOutcome:
    """What one query row of a batch ended with: its terminal state, its segment and its clock readings."""

    embedding: Any  # (H,) float32 torch tensor on the CPU, not yet normalised
    segment: list[int]  # decision token, augmentation tokens, terminal token
    finished: float  # clock time the row's embedding was ready
    generate_s: float  # time spent generating the augmentation (0 for `/embed`)
    embed_s: float  # time from the end of generation (or the decision) to the embedding


def select_cache_rows(cache, rows, length: int | None = None):
    """A new DynamicCache holding only the given batch rows, and only the first `length` positions when given
    (the original is left as it is)."""
    from transformers import DynamicCache

    if length is None:
        return DynamicCache(ddp_cache_data=[(layer.keys[rows], layer.values[rows]) for layer in cache.layers])
    return DynamicCache(ddp_cache_data=[(layer.keys[rows, :, :length], layer.values[rows, :, :length])
                                        for layer in cache.layers])


class MSolomon:
    """Adaptive query augmentation embedder over a stock transformers Qwen2-VL / Qwen2.5-VL model."""

    def __init__(self, model, processor, settings: FormatSettings | None = None,
                 image_limits: ImageLimits | None = None):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.settings = settings or FormatSettings()
        self.encoder = Encoder(processor, max_length=self.settings.max_length, image_limits=image_limits)
        self.augment_id = self.encoder.augment_id
        self.embed_id = self.encoder.embed_id
        self.terminal_id = self.encoder.terminal_id
        self.pad_id = self.encoder.pad_id
        vocab = unwrap(model).get_output_embeddings().weight.shape[0]
        banned = [i for i in self.tokenizer.added_tokens_decoder if i != self.terminal_id and i < vocab]
        self._banned_in_augmentation = sorted(set(banned))
        self.signature: str | None = None  # set by from_pretrained: identifies the checkpoint files

    # ------------------------------------------------------------------ construction
    @property
    def device(self):
        return next(unwrap(self.model).parameters()).device

    @property
    def dtype(self):
        return unwrap(self.model).get_output_embeddings().weight.dtype

    @property
    def padding_side(self) -> str:
        return self.settings.padding_side

    @padding_side.setter
    def padding_side(self, side: str) -> None:
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        self.settings.padding_side = side

    @classmethod
    def tiny(cls, seed: int = 0, config: TinySettings | None = None, corpus: Sequence[str] | None = None,
             **config_overrides) -> "MSolomon":
        """An untrained small Qwen2-VL (or Qwen2.5-VL) with a local tokenizer: same classes and code path as
        Qwen2-VL-2B, fast enough for tests and for training from scratch on a CPU."""
        import torch
        from transformers import AutoModelForImageTextToText

        cfg = replace(config or TinySettings(), **config_overrides)
        if cfg.tokenizer == "bpe":
            tokenizer = train_bpe_tokenizer(corpus, cfg.vocab_size)
        elif cfg.tokenizer == "qwen":
            tokenizer = ensure_special_tokens(load_qwen_tokenizer())
        else:
            raise ValueError(f"TinySettings.tokenizer must be 'bpe' or 'qwen', got {cfg.tokenizer!r}")
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(tiny_model_config(tokenizer, cfg), dtype=torch.float32)
        model.eval()
        processor = build_processor(tokenizer, cfg.min_pixels, cfg.max_pixels, cfg.patch_size)
        settings = FormatSettings(max_length=cfg.max_position_embeddings // 2,
                                  extra={"tiny": vars(cfg) | {"seed": seed}})
        return cls(model, processor, settings)

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path | None = None, adapter: str | Path | None = None,
                        dtype: Any = None, quantization: str | None = None, device: Any = None) -> "MSolomon":
        """Load a Qwen2-VL / Qwen2.5-VL checkpoint (local folder, or hub id: from the local cache, downloaded when
        the hub may be contacted), a merged M-Solomon checkpoint, or a base model plus a LoRA adapter; optionally
        quantised (8bit/4bit). No argument: the shipped default model. A folder that does not exist, is not a
        model, or holds broken files fails at once with a `ValueError` that names it."""
        import json

        import torch
        from transformers import AutoModelForImageTextToText, AutoTokenizer

        folder = resolve_model_source(path_or_id if path_or_id is not None else DEFAULT_MODEL_DIR)
        if adapter is None and folder.is_dir() and is_adapter_dir(folder):
            adapter = folder
            config_file = folder / "adapter_config.json"
            try:
                base = json.loads(config_file.read_text(encoding="utf-8"))["base_model_name_or_path"]
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{config_file}: not a readable adapter config ({type(err).__name__}: {err})") \
                    from None
            folder = resolve_model_source(base)
        elif adapter is not None:
            adapter = resolve_model_source(adapter)
            if not is_adapter_dir(adapter):
                raise ValueError(f"adapter {adapter} is not a LoRA adapter folder: no adapter_config.json")
        check_model_folder(folder)
        source = str(folder)
        settings_dir = Path(adapter) if adapter is not None else folder
        settings = FormatSettings.load(settings_dir)  # a bad msolomon.json fails here, not at the first query
        device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        if isinstance(dtype, str):
            aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32"}
            dtype = getattr(torch, aliases.get(dtype, dtype), None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError("dtype must be a torch dtype or one of float32, bfloat16, float16 (bf16, fp16, fp32)")
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        token_source = str(adapter) if adapter is not None and (Path(adapter) / "tokenizer_config.json").is_file() \
            else source
        qconf = quantization_config(quantization, dtype)
        try:
            with quiet_loading():
                tokenizer = ensure_special_tokens(AutoTokenizer.from_pretrained(token_source, local_files_only=True))
                processor = load_processor(source, tokenizer)
                kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
                if qconf is not None:
                    kwargs.update(quantization_config=qconf, device_map={"": str(device)})
                model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
        except Exception as err:  # noqa: BLE001 - OSError, ValueError, KeyError, SafetensorError, ...: one line
            detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ValueError(f"cannot load a model from {source}: {type(err).__name__}: {detail[:300]}") from None
        if model.get_output_embeddings().weight.shape[0] < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter))
        if qconf is None:
            model.to(device)
        model.eval()
        if not (settings_dir / "msolomon.json").is_file():  # a plain Qwen2-VL checkpoint: use its context length
            max_pos = getattr(unwrap(model).config.get_text_config(), "max_position_embeddings", None) or 8192
            settings.max_length = min(int(max_pos), 8192)
        loaded = cls(model, processor, settings)
        loaded.signature = files_signature(source, adapter)
        return loaded

    def save_pretrained(self, path: str | Path) -> None:
        """Weights (safetensors; the adapter only for a peft model), tokenizer, image processor and the
        format settings, written to a staging folder that then takes `path`'s place (`msolomon.files.replace_dir`):
        a kill at any point leaves the old model or the new one loadable."""
        replace_dir(path, self.write_files)

    def write_files(self, folder: Path) -> None:
        """The files of `save_pretrained`, written straight into the existing folder `folder`."""
        self.model.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))
        self.processor.image_processor.save_pretrained(str(folder))
        self.settings.save(folder)

    # ------------------------------------------------------------------ forward passes
    def rope_positions(self, batch: dict):
        """Qwen2-VL's 3-D M-RoPE positions for a padded batch (padding ignored), from the stock model."""
        core = unwrap(self.model).model
        positions, _ = core.get_rope_index(
            input_ids=batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
            image_grid_thw=batch.get("image_grid_thw"), attention_mask=batch["attention_mask"],
        )
        return positions

    def forward_hidden(self, batch: dict, cache=None, position_ids=None):
        """Last-layer hidden states (B, L, H) of a collated batch; `cache` is filled when given. A batch from
        `Encoder.collate_by_length` with length chunks runs chunk by chunk (less padding to compute) and comes back
        in its rows' order at the full batch's width; padded positions hold zeros there."""
        if batch.get("chunks") and cache is None and position_ids is None:
            return self._forward_chunks(batch)
        core = unwrap(self.model).model
        device = self.device
        if position_ids is None:
            position_ids = self.rope_positions(batch)
        pixel_values = batch.get("pixel_values")
        if pixel_values is not None:
            pixel_values = pixel_values.to(device=device, dtype=self.dtype)
        grid = batch.get("image_grid_thw")
        out = core(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            position_ids=position_ids.to(device),
            pixel_values=pixel_values,
            image_grid_thw=grid.to(device) if grid is not None else None,
            cache=cache,
            use_cache=cache is not None,
        )
        return out.last_hidden_state

    def _forward_chunks(self, batch: dict):
        import torch
        import torch.nn.functional as F

        width = batch["input_ids"].shape[1]
        left = batch.get("padding_side") == "left"
        parts, rows = [], []
        for index, sub in batch["chunks"]:
            h = self.forward_hidden(sub)
            pad = width - h.shape[1]
            parts.append(F.pad(h, (0, 0, pad, 0) if left else (0, 0, 0, pad)))
            rows.append(index)
        order = torch.cat(rows).to(parts[0].device)
        return torch.cat(parts)[torch.argsort(order)]

    def logits(self, hidden):
        """Language-model logits for selected hidden states only (the full-vocab head is costly)."""
        return unwrap(self.model).lm_head(hidden)

    def decision_probability(self, last_hidden):
        """p_augment = softmax over the two decision tokens' logits (the fallback when neither is argmax)."""
        import torch

        head = unwrap(self.model).lm_head
        weight = head.weight[[self.augment_id, self.embed_id]]
        pair = (last_hidden @ weight.T.to(last_hidden.dtype)).float()
        if getattr(head, "bias", None) is not None:
            pair = pair + head.bias[[self.augment_id, self.embed_id]].float()
        return torch.softmax(pair, dim=-1)[:, 0]

    @staticmethod
    def normalize(vectors):
        import torch

        return torch.nn.functional.normalize(vectors.float(), dim=-1)

    def embed_encodings(self, items: Sequence[ItemEncoding], padding_side: str | None = None):
        """Teacher-forced embeddings: one full pass per sequence, state of each row's last real token."""
        import torch

        batch = self.encoder.collate(items, padding_side or self.padding_side)
        hidden = self.forward_hidden(batch)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return self.normalize(hidden[rows, batch["last_index"].to(hidden.device)])

    # ------------------------------------------------------------------ public encoding API
    def encode_candidates(self, candidates, batch_size: int = 32, show_progress_bar: bool | None = None) -> np.ndarray:
        """Embeddings of candidates (prompt + terminal token, no generation): (n, d) float32, L2-normalised."""
        import torch

        batch_size = check_count(batch_size, "batch_size")
        single, items = _items(candidates, as_candidate, "candidate")
        out = []
        with torch.inference_mode():
            for start in self._progress(range(0, len(items), batch_size), show_progress_bar, len(items),
                                        "candidates"):
                encs = [self.encoder.encode_candidate(c) for c in items[start:start + batch_size]]
                out.append(self.embed_encodings(encs).cpu().numpy())
        dim = unwrap(self.model).config.text_config.hidden_size
        vectors = np.concatenate(out, 0).astype(np.float32) if out else np.zeros((0, dim), np.float32)
        return vectors[0] if single else vectors

    @overload
    def encode_queries(self, queries: Query | str, augment: AugmentMode = ..., threshold: float | None = ...,
                       batch_size: int = ..., max_new_tokens: int = ...,
                       show_progress_bar: bool | None = ..., gate: QueryGate | None = ...) -> QueryResult: ...

    @overload
    def encode_queries(self, queries: Sequence[Query | str], augment: AugmentMode = ...,
                       threshold: float | None = ..., batch_size: int = ..., max_new_tokens: int = ...,
                       show_progress_bar: bool | None = ..., gate: QueryGate | None = ...) -> list[QueryResult]: ...

    def encode_queries(self, queries, augment: AugmentMode = "auto", threshold: float | None = None,
                       batch_size: int = 8, max_new_tokens: int = 64, show_progress_bar: bool | None = None,
                       gate: QueryGate | None = None):
        """Decide, augment when needed, embed. Returns one `QueryResult` per query (a single one for a
        single input). `augment`: "auto" (the model decides, p_augment ≥ threshold), "never" (force `/embed`,
        the NoAug path) or "always" (force `/augment`, the AlwaysAug path).

        `gate` makes a cascade: before any query is augmented, it is called once per batch with the positions (in
        `queries`) of the rows about to augment and their `/embed`-path embeddings (L2-normalised float32, one row
        each), and returns one bool per row; a row it answers True for keeps its embedded result and writes
        nothing (`QueryResult.gated`). A search with those embeddings that is already sure is the usual gate
        (`msolomon.gate.MarginGate`). Left padding or a batch of one gets the embeddings from the decision's own
        prefill; otherwise they cost one cached step for the rows about to augment."""
        import torch

        threshold = self._check_query_args(augment, threshold, max_new_tokens, batch_size)
        if gate is not None and not callable(gate):
            raise InputTypeError(f"gate must be callable (positions, embeddings) -> bools, got {type(gate).__name__}")
        batch_size, max_new_tokens = int(batch_size), int(max_new_tokens)
        single, items = _items(queries, as_query, "query")
        results: list[QueryResult] = []
        with torch.inference_mode():
            for start in self._progress(range(0, len(items), batch_size), show_progress_bar, len(items), "queries"):
                results.extend(self._encode_query_batch(items[start:start + batch_size], augment, threshold,
                                                        max_new_tokens, gate, start))
        return results[0] if single else results

    def stream_query(self, query: Query | str, augment: AugmentMode = "auto", threshold: float | None = None,
                     max_new_tokens: int = 64) -> Iterator["StreamedResult"]:
        """One query, step by step, for interactive use (the demo shows the augmentation while it is written).

        Yields a `StreamedResult` with the decision first (no embedding yet), then one per generated token with
        `.augmentation` growing, then the final one (`.final`, with the embedding and timings), which equals
        `encode_queries([query])[0]`: it runs the same cached steps on a batch of one. Torch's inference mode is
        entered per step, never held across a `yield`, so the caller's code between steps runs as usual."""
        for events in self.stream_queries([query], augment=augment, threshold=threshold,
                                          max_new_tokens=max_new_tokens):
            for _, step in events:
                yield step

    def stream_queries(self, queries: Sequence[Query | str], augment: AugmentMode = "auto",
                       threshold: float | None = None, max_new_tokens: int = 64
                       ) -> Iterator[list[tuple[int, "StreamedResult"]]]:
        """Several queries streamed together (one prefill, one decode loop). Yields once per model call (the
        prefill, the `/embed` rows' step, each decode step) the (row, step) events it produced; for each row they
        are what `stream_query` yields for it alone (the decision, each generated token, the final result), so a
        server can stream many visitors' augmentations at the cost of one batch, and hold its model lock one call
        at a time. Rows that embed finish right after the decisions; rows that augment finish as each writes its
        terminal token. Nothing runs until the first `next()`, and nothing between two."""
        import torch
        from transformers import DynamicCache

        threshold = self._check_query_args(augment, threshold, max_new_tokens, 1)
        max_new_tokens = int(max_new_tokens)
        _, items = _items(queries, as_query, "query")
        if not items:
            return
        device = self.device
        with torch.inference_mode():
            t0 = _now(device)
            batch = self.encoder.collate([self.encoder.encode_prompt(q, reserve=max_new_tokens + 1) for q in items],
                                         self.padding_side)
            positions = self.rope_positions(batch)
            t_pre = _now(device)
            cache = DynamicCache()
            hidden = self.forward_hidden(batch, cache=cache, position_ids=positions)
            n = hidden.shape[0]
            last = hidden[torch.arange(n, device=hidden.device), batch["last_index"].to(hidden.device)]
            p_aug = self.decision_probability(last).cpu().tolist()
            wants = [augment == "always" or (augment == "auto" and p >= threshold) for p in p_aug]
            mask = batch["attention_mask"].to(device)
            next_pos = positions.amax(dim=(0, 2)).to(device) + 1
            t_decide = _now(device)
        timings = {"preprocess": (t_pre - t0) * 1e3, "decide": (t_decide - t_pre) * 1e3}
        decisions = [prompts.AUGMENT if w else prompts.EMBED for w in wants]
        yield [(i, StreamedResult(decisions[i], p_aug[i], "" if wants[i] else None, None, dict(timings),
                                  [self.augment_id if wants[i] else self.embed_id])) for i in range(n)]

        def final(row: int, out: RowOutcome) -> tuple[int, StreamedResult]:
            vector = self.normalize(out.embedding[None]).numpy().astype(np.float32)[0]
            result = self._query_result(out, p_aug[row], vector, t0, t_pre, t_decide)
            return row, StreamedResult(**vars(result), final=True)

        embed_rows = [i for i in range(n) if not wants[i]]
        aug_rows = [i for i in range(n) if wants[i]]
        if embed_rows:  # `/embed` + terminal in one cached step: they never wait on generation
            with torch.inference_mode():
                sub = cache if not aug_rows else select_cache_rows(cache, embed_rows)
                done = self._embed_directly(sub, mask[embed_rows], next_pos[embed_rows], t_decide)
            yield [final(row, out) for row, out in zip(embed_rows, done)]
        if aug_rows:  # the batch path's decode loop, one yield per generated token of each row
            sub = cache if not embed_rows else select_cache_rows(cache, aug_rows)
            steps = self._decode_steps(sub, mask[aug_rows], next_pos[aug_rows], max_new_tokens, t_decide)
            finished = [False] * len(aug_rows)
            shown = [1] * len(aug_rows)  # tokens of each segment already shown (the `/augment` token)
            while not all(finished):
                with torch.inference_mode():
                    segments, outcomes = next(steps)
                events = []
                for j, row in enumerate(aug_rows):
                    if finished[j]:
                        continue
                    if outcomes[j] is not None:
                        finished[j] = True
                        events.append(final(row, outcomes[j]))
                    elif len(segments[j]) > shown[j] and segments[j][-1] != self.terminal_id:
                        shown[j] = len(segments[j])  # the terminal token is fed next, not shown
                        text = self.tokenizer.decode(segments[j][1:], skip_special_tokens=True).strip()
                        events.append((row, StreamedResult(decisions[row], p_aug[row], text, None, dict(timings),
                                                           list(segments[j]))))
                yield events

    # ------------------------------------------------------------------ internals
    def _check_query_args(self, augment: str, threshold: float | None, max_new_tokens: int,
                          batch_size: int) -> float:
        """Validate the query-encoding arguments; returns the threshold to use."""
        if not isinstance(augment, str) or augment not in AUGMENT_MODES:
            raise ValueError(f"augment must be one of {AUGMENT_MODES}, got {augment!r}")
        if threshold is None:
            threshold = self.settings.default_threshold
        elif isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
            raise InputTypeError(f"threshold must be a number in [0, 1], got {type(threshold).__name__} {threshold!r}")
        threshold = float(threshold)
        if not 0.0 <= threshold <= 1.0:  # NaN fails too
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        max_new_tokens = check_count(max_new_tokens, "max_new_tokens")
        check_count(batch_size, "batch_size")
        if max_new_tokens + 1 >= self.settings.max_length:
            raise ValueError(f"max_new_tokens={max_new_tokens} does not fit the model's "
                             f"max_length={self.settings.max_length}")
        return threshold

    def _progress(self, iterable, show: bool | None, n: int, what: str):
        if show is None:
            show = n > 256 and logger.getEffectiveLevel() <= logging.INFO
        if not show:
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=f"encoding {what}", unit="batch")

    def _encode_query_batch(self, queries: list[Query], augment: str, threshold: float,
                            max_new_tokens: int, gate: QueryGate | None = None, offset: int = 0) -> list[QueryResult]:
        import torch
        from transformers import DynamicCache

        device = self.device
        t0 = _now(device)
        encs = [self.encoder.encode_prompt(q, reserve=max_new_tokens + 1) for q in queries]
        # The `/embed` path fused into the prefill: unless every row must augment, the prefill runs over
        # prompt + `/embed` + terminal. Causal attention keeps the decision logits at the prompt's last token what
        # they are without the two tokens, and a row that embeds has its embedding from this one pass (the cached
        # step it saves costs about as much as a short prefill at batch size 1). Rows that augment drop the two
        # positions from the cache and decode from the prompt. Needs the tokens at the end of every row: left
        # padding, or a batch of one.
        fused = augment != "always" and (self.padding_side == "left" or len(encs) == 1)
        tail = [self.embed_id, self.terminal_id] if fused else []
        batch = self.encoder.collate([e.extended(tail) for e in encs] if fused else encs, self.padding_side)
        positions = self.rope_positions(batch)
        t_pre = _now(device)

        cache = DynamicCache()
        hidden = self.forward_hidden(batch, cache=cache, position_ids=positions)
        n = hidden.shape[0]
        rows = torch.arange(n, device=hidden.device)
        last_index = batch["last_index"].to(hidden.device)
        last = hidden[rows, last_index - len(tail)]  # the prompt's last token
        p_aug = self.decision_probability(last).cpu()
        if augment == "always":
            wants = torch.ones(n, dtype=torch.bool)
        elif augment == "never":
            wants = torch.zeros(n, dtype=torch.bool)
        else:
            wants = p_aug >= threshold
        prompt_len = batch["input_ids"].shape[1] - len(tail)
        mask = batch["attention_mask"][:, :prompt_len].to(device)
        next_pos = positions[:, :, :prompt_len].amax(dim=(0, 2)).to(device) + 1  # next text position per row
        t_decide = _now(device)

        embed_rows = (~wants).nonzero().flatten().tolist()
        aug_rows = wants.nonzero().flatten().tolist()
        outcomes: dict[int, RowOutcome] = {}
        gated: set[int] = set()
        if gate is not None and aug_rows:  # the cascade: rows whose embedded result the gate accepts write nothing
            if fused:  # the speculative tail already holds their `/embed` states
                states = hidden[aug_rows, last_index[aug_rows]].float().cpu()
                trial = [RowOutcome(states[j], [self.embed_id, self.terminal_id], t_decide, 0.0, 0.0)
                         for j in range(len(aug_rows))]
            else:  # one cached step on a copy of their rows; the prompt cache stays for decoding
                trial = self._embed_directly(select_cache_rows(cache, aug_rows), mask[aug_rows], next_pos[aug_rows],
                                             t_decide)
            vectors = self.normalize(torch.stack([t.embedding for t in trial])).numpy().astype(np.float32)
            verdicts = list(gate([offset + r for r in aug_rows], vectors))
            if len(verdicts) != len(aug_rows):
                raise ValueError(f"the gate returned {len(verdicts)} answers for {len(aug_rows)} rows")
            t_gate = _now(device)  # an accepted row's result is ready once the gate's search has answered
            for r, keep, t in zip(aug_rows, verdicts, trial):
                if keep:
                    outcomes[r] = RowOutcome(t.embedding, t.segment, t_gate, 0.0, t_gate - t_decide)
                    gated.add(r)
            aug_rows = [r for r in aug_rows if r not in gated]
        if embed_rows and fused:  # embedded by the prefill itself
            states = hidden[embed_rows, last_index[embed_rows]].float().cpu()
            outcomes.update((r, RowOutcome(states[j], [self.embed_id, self.terminal_id], t_decide, 0.0, 0.0))
                            for j, r in enumerate(embed_rows))
        elif embed_rows:  # `/embed` + terminal in one cached step: these rows never wait on generation
            sub = cache if len(embed_rows) == n else select_cache_rows(cache, embed_rows)
            outcomes.update(zip(embed_rows, self._embed_directly(sub, mask[embed_rows], next_pos[embed_rows],
                                                                 t_decide)))
        if aug_rows:
            t_gen0 = _now(device)
            if fused:  # without the speculative `/embed` + terminal positions
                sub = select_cache_rows(cache, aug_rows, prompt_len)
            else:
                sub = cache if len(aug_rows) == n else select_cache_rows(cache, aug_rows)
            *_, (_, done) = self._decode_steps(sub, mask[aug_rows], next_pos[aug_rows], max_new_tokens,
                                               t_gen0)  # drained: the last state has every row's outcome
            outcomes.update(zip(aug_rows, done))
        embeddings = torch.stack([outcomes[i].embedding for i in range(n)])
        vectors = self.normalize(embeddings).numpy().astype(np.float32)
        return [self._query_result(outcomes[i], float(p_aug[i]), vectors[i], t0, t_pre, t_decide, i in gated)
                for i in range(n)]

    def _query_result(self, out: RowOutcome, p_aug: float, vector: np.ndarray, t0: float, t_pre: float,
                      t_decide: float, gated: bool = False) -> QueryResult:
        """One query's result from its row's outcome, so the batch and the streaming path report alike."""
        seg = out.segment
        augmented = bool(seg) and seg[0] == self.augment_id
        augmentation = None
        if augmented:
            augmentation = self.tokenizer.decode(seg[1:-1], skip_special_tokens=True).strip() or None
        timings = {
            "preprocess": (t_pre - t0) * 1e3,
            "decide": (t_decide - t_pre) * 1e3,
            "generate": out.generate_s * 1e3,
            "embed": out.embed_s * 1e3,
            "total": (out.finished - t0) * 1e3,
        }
        return QueryResult(decision=prompts.AUGMENT if augmented else prompts.EMBED, p_augment=p_aug,
                           augmentation=augmentation, embedding=vector, timings=timings, token_ids=list(seg),
                           gated=gated)

    def _step(self, ids, mask, positions, cache):
        core = unwrap(self.model).model
        out = core(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
        return out.last_hidden_state

    def _embed_directly(self, cache, mask, next_pos, t_decide: float) -> list[RowOutcome]:
        """`/embed` + terminal for every row of `cache` in one cached step; one outcome per row, in order."""
        import torch

        device = mask.device
        k = mask.shape[0]
        ids = torch.tensor([[self.embed_id, self.terminal_id]] * k, device=device)
        step_mask = torch.cat([mask, torch.ones(k, 2, dtype=mask.dtype, device=device)], 1)
        pos = (next_pos[:, None] + torch.arange(2, device=device))[None].expand(3, -1, -1)
        states = self._step(ids, step_mask, pos, cache)[:, -1].float().cpu()
        t_done = _now(device)
        return [RowOutcome(states[j], [self.embed_id, self.terminal_id], t_done, 0.0, t_done - t_decide)
                for j in range(k)]

    def _decode_steps(self, cache, mask, next_pos, max_new_tokens: int,
                      t_start: float) -> Iterator[tuple[list[list[int]], list[RowOutcome | None]]]:
        """Greedy decoding of `/augment …` with the KV cache for every row of `cache`, the one decode loop of both
        the batch path (which runs it to the end) and `stream_query` (which shows each token as it comes).

        Each row feeds the terminal token once (when the model picks it, or when the segment reaches
        `max_new_tokens`) and its state there is the embedding. Finished rows leave the batch, so the cache only
        holds rows still decoding. Yields after every cached step (segments so far, outcomes of the finished rows;
        one per row, in order, updated in place); in the last one every row has its outcome. It never enters
        inference mode itself, so a caller can hold it for one step at a time."""
        import torch

        device = mask.device
        n = mask.shape[0]
        outcomes: list[RowOutcome | None] = [None] * n
        active = list(range(n))  # rows still decoding
        current = torch.full((n, 1), self.augment_id, device=device)
        seg = [[self.augment_id] for _ in range(n)]
        step = 0
        banned = torch.tensor(self._banned_in_augmentation, device=device, dtype=torch.long)
        while active:
            t_step = _now(device)
            mask = torch.cat([mask, torch.ones(len(active), 1, dtype=mask.dtype, device=device)], 1)
            pos = (next_pos[:, None] + step)[None].expand(3, -1, -1)
            hidden = self._step(current, mask, pos, cache)[:, -1]
            fed_terminal = (current[:, 0] == self.terminal_id).tolist()
            now = _now(device)
            keep = []
            for j, a in enumerate(active):
                if fed_terminal[j]:
                    outcomes[a] = RowOutcome(hidden[j].float().cpu(), seg[a], now, t_step - t_start, now - t_step)
                else:
                    keep.append(j)
            if keep:
                logits = self.logits(hidden[keep]).float()
                if banned.numel():
                    logits[:, banned] = float("-inf")
                for j, token in zip(keep, logits.argmax(-1).tolist()):
                    seg[active[j]].append(token if len(seg[active[j]]) < max_new_tokens else self.terminal_id)
                if len(keep) < len(active):
                    idx = torch.tensor(keep, device=device)
                    cache.batch_select_indices(idx)
                    mask = mask[idx]
                    next_pos = next_pos[idx]
                current = torch.tensor([seg[active[j]][-1] for j in keep], device=device)[:, None]
            active = [active[j] for j in keep]
            step += 1
            yield seg, outcomes  # when `active` is empty, every row fed the terminal token
