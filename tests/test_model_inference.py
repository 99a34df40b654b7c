"""Adaptive inference: cached decoding equals a full pass, padding invariance, modes and thresholds."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from msolomon import MSolomon, Query
from msolomon.prompts import AUGMENT, EMBED

FAMILIES = ["qwen2_vl", "qwen2_5_vl"]


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return MSolomon.tiny(seed=1, family=request.param)


def _queries(images):
    return [
        Query(text="How many people are in the picture?", image=images[0]),
        Query(text="the number after six"),
        Query(image=images[1]),
        Query(text="Find me an everyday image that matches the given caption: a cat on a sofa with a long tail"),
        Query(text="<|image_1|> Represent the given image with the following question: what colour?", image=images[2]),
    ]


def _full_pass(model, query, token_ids, side="right"):
    enc = model.encoder.encode_prompt(query, reserve=len(token_ids)).extended(token_ids)
    with torch.inference_mode():
        return model.embed_encodings([enc], padding_side=side)[0].numpy()


@pytest.mark.parametrize("mode", ["always", "never", "mixed"])
def test_cached_embedding_equals_full_pass(model, sample_images, mode):
    queries = _queries(sample_images)
    kwargs = {"augment": mode}
    if mode == "mixed":  # a batch that splits between /embed and /augment rows (cache rows selected per group)
        p = [r.p_augment for r in model.encode_queries(queries, augment="never")]
        kwargs = {"augment": "auto", "threshold": float(np.median(p))}
    results = model.encode_queries(queries, max_new_tokens=12, batch_size=len(queries), **kwargs)
    if mode == "mixed":
        assert {r.decision for r in results} == {AUGMENT, EMBED}
    for q, r in zip(queries, results):
        assert r.token_ids[-1] == model.terminal_id
        expected = _full_pass(model, q, r.token_ids)
        np.testing.assert_allclose(r.embedding, expected, atol=1e-4)
        if mode == "always":
            assert r.decision == AUGMENT and r.token_ids[0] == model.augment_id
            assert len(r.token_ids) > 2  # something was generated between /augment and the terminal token


def test_left_right_and_single_items_agree(model, sample_images):
    queries = _queries(sample_images)
    out = {}
    for side in ("left", "right"):
        model.padding_side = side
        out[side] = model.encode_queries(queries, augment="always", max_new_tokens=10, batch_size=len(queries))
    model.padding_side = "left"
    singles = [model.encode_queries(q, augment="always", max_new_tokens=10) for q in queries]
    for left, right, single in zip(out["left"], out["right"], singles):
        assert left.token_ids == right.token_ids == single.token_ids
        np.testing.assert_allclose(left.embedding, right.embedding, atol=1e-4)
        np.testing.assert_allclose(left.embedding, single.embedding, atol=1e-4)
        assert abs(left.p_augment - single.p_augment) < 1e-4
    cands = [q for q in queries]
    model.padding_side = "right"
    right_c = model.encode_candidates(cands)
    model.padding_side = "left"
    left_c = model.encode_candidates(cands)
    single_c = np.stack([model.encode_candidates(c) for c in cands])
    np.testing.assert_allclose(left_c, right_c, atol=1e-4)
    np.testing.assert_allclose(left_c, single_c, atol=1e-4)


def test_modes_thresholds_and_probabilities(model, sample_images):
    queries = _queries(sample_images)
    auto = model.encode_queries(queries, augment="auto", max_new_tokens=4)
    p = np.array([r.p_augment for r in auto])
    assert ((p >= 0) & (p <= 1)).all()
    assert all(r.decision == (AUGMENT if r.p_augment >= 0.5 else EMBED) for r in auto)
    assert all(r.decision == AUGMENT for r in model.encode_queries(queries, augment="always", max_new_tokens=4))
    assert all(r.decision == EMBED and r.augmentation is None
               for r in model.encode_queries(queries, augment="never"))
    assert all(r.decision == AUGMENT for r in model.encode_queries(queries, threshold=0.0, max_new_tokens=4))
    assert all(r.decision == EMBED for r in model.encode_queries(queries, threshold=1.0))
    # a threshold between the extremes splits the batch exactly as p_augment says
    mid = float(np.median(p))
    split = model.encode_queries(queries, threshold=mid, max_new_tokens=4)
    assert [r.decision for r in split] == [AUGMENT if x >= mid else EMBED for x in p]


def test_forced_paths_override_a_confident_model(sample_images):
    model = MSolomon.tiny(seed=2)
    head = model.model.lm_head.weight
    with torch.no_grad():  # make /augment overwhelmingly likely
        head[model.augment_id] = 0
        head[model.augment_id, :] = 0
    with torch.no_grad():
        states = [model.forward_hidden(model.encoder.collate([model.encoder.encode_prompt(q)]))[0, -1]
                  for q in _queries(sample_images)]
        direction = torch.stack(states).mean(0)
        head[model.augment_id] = 50 * direction / direction.norm()
    queries = _queries(sample_images)
    assert all(r.p_augment > 0.99 for r in model.encode_queries(queries, augment="auto", max_new_tokens=2))
    never = model.encode_queries(queries, augment="never")
    assert all(r.decision == EMBED for r in never)
    assert all(r.timings["generate"] == 0 for r in never)


def test_single_input_returns_single_result(tiny_model):
    r = tiny_model.encode_queries("a red square", augment="never")
    batch = tiny_model.encode_queries(["a red square", "two blue circles"], augment="never")
    assert r.decision == EMBED and r.embedding.shape == (128,)
    np.testing.assert_allclose(r.embedding, batch[0].embedding, atol=1e-5)  # the same query, alone or in a batch
    assert abs(np.linalg.norm(r.embedding) - 1) < 1e-5
    v = tiny_model.encode_candidates("a red square")
    assert v.shape == (128,) and v.dtype == np.float32
    np.testing.assert_allclose(v, tiny_model.encode_candidates(["a red square", "x"])[0], atol=1e-5)
    assert float(v @ tiny_model.encode_candidates("two blue circles")) < 0.9999  # not a constant vector
    assert set(r.timings) == {"preprocess", "decide", "generate", "embed", "total"}


def _steer_terminal(monkeypatch, model, at_step: int | None = None) -> list[int]:
    """Patch `model.logits` (the decode loop's next-token scores): the terminal token never wins, except at decode
    step `at_step` (1-based) where it always does. Returns the list the steps are counted in."""
    real = model.logits
    steps: list[int] = []

    def logits(hidden):
        out = real(hidden).clone()
        steps.append(len(steps) + 1)
        out[:, model.terminal_id] = float("inf") if steps[-1] == at_step else float("-inf")
        return out

    monkeypatch.setattr(model, "logits", logits)
    return steps


def test_decoding_stops_at_max_new_tokens(tiny_model, monkeypatch):
    """With the terminal token never chosen, the cap ends the segment at exactly max_new_tokens tokens after
    `/augment`'s place (the last one the terminal the cap forces); the embedding is the state there."""
    steps = _steer_terminal(monkeypatch, tiny_model)
    q = Query(text="count the circles")
    r = tiny_model.encode_queries(q, augment="always", max_new_tokens=5)
    assert len(r.token_ids) == 5 + 1 and r.token_ids[0] == tiny_model.augment_id
    assert r.token_ids[-1] == tiny_model.terminal_id and tiny_model.terminal_id not in r.token_ids[:-1]
    assert steps == [1, 2, 3, 4, 5]  # one scored step per token after /augment
    monkeypatch.undo()
    np.testing.assert_allclose(r.embedding, _full_pass(tiny_model, q, r.token_ids), atol=1e-4)


@pytest.mark.parametrize("k", [1, 3])
def test_decoding_stops_where_the_model_picks_the_terminal_token(tiny_model, monkeypatch, k):
    """The terminal token chosen at decode step k ends the segment there: k tokens after `/augment`, under the cap;
    the augmentation is the text of the tokens before it (none for k = 1)."""
    steps = _steer_terminal(monkeypatch, tiny_model, at_step=k)
    q = Query(text="count the circles")
    r = tiny_model.encode_queries(q, augment="always", max_new_tokens=8)
    assert len(r.token_ids) == k + 1 and r.token_ids[0] == tiny_model.augment_id
    assert r.token_ids[-1] == tiny_model.terminal_id and tiny_model.terminal_id not in r.token_ids[:-1]
    assert steps == list(range(1, k + 1))  # no step is scored after the terminal token
    text = tiny_model.tokenizer.decode(r.token_ids[1:-1], skip_special_tokens=True).strip()
    assert r.augmentation == (text or None) and (k > 1 or r.augmentation is None)
    monkeypatch.undo()
    np.testing.assert_allclose(r.embedding, _full_pass(tiny_model, q, r.token_ids), atol=1e-4)


def test_fallback_to_larger_decision_logit():
    """When another token is the argmax of the full vocabulary, the decision still follows the two decision logits,
    and p_augment is the softmax over those two logits of the stock head's full output."""
    model = MSolomon.tiny(seed=4)
    queries = ["alpha", "beta gamma", "delta epsilon zeta", "eta"]
    with torch.no_grad():
        states = torch.stack([model.forward_hidden(model.encoder.collate([model.encoder.encode_prompt(Query(text=q))]))
                              [0, -1] for q in queries])
        centred = states - states.mean(0)
        head = model.model.lm_head.weight
        head[model.augment_id] = 20 * centred[0] / centred[0].norm()  # query 0 leans to /augment
        head[model.embed_id] = 20 * centred[1] / centred[1].norm()  # query 1 leans to /embed
        other = 7
        head[other] = 200 * states.mean(0) / states.mean(0).norm()  # a third token wins the full argmax everywhere
        logits = model.logits(states).float()
    assert all(int(i) == other for i in logits.argmax(-1))
    pair = logits[:, [model.augment_id, model.embed_id]].double()
    want_p = torch.softmax(pair, -1)[:, 0]
    want = [AUGMENT if a >= e else EMBED for a, e in pair.tolist()]
    assert want[0] == AUGMENT and want[1] == EMBED  # both decisions occur
    results = model.encode_queries(queries, augment="auto", max_new_tokens=3)
    assert [r.decision for r in results] == want
    assert np.allclose([r.p_augment for r in results], want_p.numpy(), atol=1e-5)


def test_real_qwen_tokenizer_runs_the_same_path(sample_images):
    model = MSolomon.tiny(seed=0, tokenizer="qwen", hidden_size=64, intermediate_size=128, vision_dim=32,
                          vision_depth=1)
    assert len(model.tokenizer) > 150_000
    assert model.tokenizer.convert_tokens_to_ids("<|image_pad|>") == 151655
    q = Query(text="What is shown?", image=sample_images[0])
    r = model.encode_queries(q, augment="always", max_new_tokens=6)
    np.testing.assert_allclose(r.embedding, _full_pass(model, q, r.token_ids), atol=1e-4)
    assert len(model.tokenizer.encode("/augment", add_special_tokens=False)) == 1
