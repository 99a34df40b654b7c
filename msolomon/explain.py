"""One query, step by step, for teaching: what the model reads, how it decides, what it writes and how each written
token moves the query's embedding.

`explain_query` runs the AlwaysAug path once (greedy, as `encode_queries` does), then replays it teacher-forced in
one pass to read each step's probabilities, and embeds every prefix of the augmentation (`/augment`, then the
first i written tokens, then the terminal token): the last prefix is the `always` path's embedding, and the
`/embed` path's embedding comes from the same prompt with `/embed` + terminal. A caller ranks a corpus with these
vectors to see the moment augmenting changes the ranking. The cached decoding path equals one full pass over the
same tokens (tested), so the replay shows what the model did, not an approximation of it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from msolomon.inputs import Query, as_query


@dataclass
class PromptPiece:
    """A run of prompt tokens as the page shows it: one text token, or every image token of an image at once."""

    text: str
    count: int = 1
    image: bool = False
    special: bool = False


@dataclass
class WrittenToken:
    """One generated token: its text, its probability, the runner-ups, and whether a cap forced it."""

    text: str
    probability: float
    alternatives: list[tuple[str, float]] = field(default_factory=list)
    forced: bool = False
    terminal: bool = False


@dataclass
class Explanation:
    prompt: list[PromptPiece]
    n_prompt_tokens: int
    p_augment: float
    augmentation: str | None
    written: list[WrittenToken]  # the generated segment after `/augment`, ending with the terminal token
    embed_vector: np.ndarray  # (d,) the `/embed` path's query embedding
    prefix_vectors: np.ndarray  # (len(written), d): after `/augment` + the first i written tokens + terminal


def _prompt_pieces(tokenizer: Any, ids: list[int], image_mask: list[int], special: set[int]) -> list[PromptPiece]:
    pieces: list[PromptPiece] = []
    for tid, is_image in zip(ids, image_mask):
        if is_image and pieces and pieces[-1].image:
            pieces[-1].count += 1
            continue
        text = tokenizer.decode([tid], skip_special_tokens=False)
        pieces.append(PromptPiece(text, 1, bool(is_image), tid in special))
    return pieces


def explain_query(model: Any, query: Query | str, max_new_tokens: int = 64, alternatives: int = 2,
                  batch_size: int = 16) -> Explanation:
    """The step-by-step view of one query (see the module docstring). `alternatives`: runner-up tokens per step."""
    import torch

    item = as_query(query)
    result = model.encode_queries(item, augment="always", max_new_tokens=max_new_tokens, show_progress_bar=False)
    segment = list(result.token_ids)  # [/augment, t1, ..., tn, terminal]
    tok = model.tokenizer
    enc = model.encoder.encode_prompt(item, reserve=max_new_tokens + 1)
    n_prompt = len(enc.input_ids)
    special = set(getattr(tok, "added_tokens_decoder", {}) or {})
    with torch.inference_mode():
        batch = model.encoder.collate([enc.extended(segment)], model.padding_side)
        hidden = model.forward_hidden(batch)[0]
        offset = int(batch["last_index"][0]) - len(segment) - n_prompt + 1  # left padding shifts every position
        # the state at position p predicts token p + 1: the /augment position predicts t1, ..., tn predicts terminal
        states = hidden[offset + n_prompt: offset + n_prompt + len(segment) - 1]
        logits = model.logits(states).float()
        banned = list(model._banned_in_augmentation)
        if banned:
            logits[:, banned] = float("-inf")
        probs = torch.softmax(logits, dim=-1)
        written = []
        for j, tid in enumerate(segment[1:]):
            row = probs[j]
            top = torch.topk(row, alternatives + 1)
            alts = [(tok.decode([int(i)], skip_special_tokens=False), float(p))
                    for p, i in zip(top.values.tolist(), top.indices.tolist()) if int(i) != tid][:alternatives]
            terminal = tid == model.terminal_id
            forced = terminal and j == max_new_tokens - 1 and int(top.indices[0]) != tid
            written.append(WrittenToken(tok.decode([tid], skip_special_tokens=False), float(row[tid]), alts,
                                        forced, terminal))
        prefixes = [enc.extended(segment[: i + 1] + [model.terminal_id]) for i in range(len(segment) - 1)]
        vectors = [model.embed_encodings(prefixes[s: s + batch_size]).float().cpu().numpy()
                   for s in range(0, len(prefixes), batch_size)]
        embed = model.embed_encodings([enc.extended([model.embed_id, model.terminal_id])]).float().cpu().numpy()[0]
    return Explanation(_prompt_pieces(tok, enc.input_ids, enc.mm_token_type_ids, special), n_prompt,
                       float(result.p_augment), result.augmentation, written, embed.astype(np.float32),
                       np.concatenate(vectors).astype(np.float32))
