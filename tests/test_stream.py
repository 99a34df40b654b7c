"""`MSolomon.stream_query`: the decision first, the augmentation growing token by token, and a last result
that equals `encode_queries([query])[0]` (same decision, p_augment, tokens, augmentation and embedding)."""
from __future__ import annotations

import numpy as np
import pytest

from msolomon import Query
from msolomon.prompts import AUGMENT, EMBED


def _queries(images):
    return [
        Query(text="How many circles are in the picture?", image=images[0]),
        Query(text="the number after six"),
        Query(text="<|image_1|> Represent the given image with the following question: what colour?",
              image=images[1]),
    ]


def _assert_same(final, expected):
    assert final.final and final.embedding is not None
    assert final.decision == expected.decision
    assert final.p_augment == pytest.approx(expected.p_augment, abs=1e-6)
    assert final.token_ids == expected.token_ids
    assert final.augmentation == expected.augmentation
    np.testing.assert_allclose(final.embedding, expected.embedding, atol=1e-5)
    assert set(final.timings) == set(expected.timings)
    assert final.timings["total"] >= final.timings["decide"] > 0


@pytest.mark.parametrize("mode", ["always", "never", "auto"])
def test_last_streamed_result_equals_encode_queries(tiny_model, sample_images, mode):
    for query in _queries(sample_images):
        steps = list(tiny_model.stream_query(query, augment=mode, max_new_tokens=12))
        expected = tiny_model.encode_queries([query], augment=mode, max_new_tokens=12)[0]
        _assert_same(steps[-1], expected)
        assert all(not s.final and s.embedding is None for s in steps[:-1])
        assert steps[0].decision == expected.decision and steps[0].p_augment == steps[-1].p_augment


def test_augmentation_grows_token_by_token(tiny_model):
    steps = list(tiny_model.stream_query("a red circle above a blue square", augment="always", max_new_tokens=10))
    final = steps[-1]
    assert final.decision == AUGMENT and final.token_ids[0] == tiny_model.augment_id
    generated = len(final.token_ids) - 2  # between /augment and the terminal token
    assert generated >= 1
    partial = steps[1:-1]
    assert len(partial) == generated  # one partial result per generated token
    for a, b in zip(partial, partial[1:]):
        assert len(b.token_ids) == len(a.token_ids) + 1
        assert b.token_ids[: len(a.token_ids)] == a.token_ids
    assert partial[-1].augmentation.strip() == (final.augmentation or "")


def test_threshold_decides_in_auto_mode(tiny_model):
    p = next(iter(tiny_model.stream_query("the number after six", augment="never"))).p_augment
    first = next(iter(tiny_model.stream_query("the number after six", threshold=max(p - 1e-3, 0.0))))
    assert first.decision == AUGMENT and first.embedding is None
    steps = list(tiny_model.stream_query("the number after six", threshold=min(p + 1e-3, 1.0)))
    assert [s.decision for s in steps] == [EMBED, EMBED] and steps[-1].augmentation is None


def test_right_padding_and_bad_arguments(tiny_model, sample_images):
    query = _queries(sample_images)[0]
    tiny_model.padding_side = "right"
    try:
        final = list(tiny_model.stream_query(query, augment="always", max_new_tokens=8))[-1]
        _assert_same(final, tiny_model.encode_queries([query], augment="always", max_new_tokens=8)[0])
    finally:
        tiny_model.padding_side = "left"
    with pytest.raises(ValueError, match="augment must be one of"):
        next(iter(tiny_model.stream_query("x", augment="sometimes")))
    with pytest.raises(ValueError, match="threshold"):
        next(iter(tiny_model.stream_query("x", threshold=1.5)))


@pytest.mark.parametrize("padding", ["left", "right"])
def test_streaming_several_queries_together_gives_each_what_it_gets_alone(tiny_model, sample_images, padding):
    """`stream_queries`: one prefill and one decode loop for several visitors; each row's steps are those of
    `stream_query` on that query alone (decision, one step per token, final), with rows that embed and rows that
    augment in the same batch."""
    queries = _queries(sample_images) + [Query(text="a red circle above a blue square")]
    p = [r.p_augment for r in tiny_model.encode_queries(queries, augment="never")]
    threshold = float(np.median(p))  # some rows augment, some embed
    tiny_model.padding_side = padding
    try:
        rows: dict[int, list] = {}
        calls = 0
        for events in tiny_model.stream_queries(queries, threshold=threshold, max_new_tokens=10):
            calls += 1
            for row, step in events:
                rows.setdefault(row, []).append(step)
    finally:
        tiny_model.padding_side = "left"
    assert sorted(rows) == list(range(len(queries)))
    longest = max(len(steps) for steps in rows.values())
    assert calls <= longest + 2  # one yield per model call: the rows share them
    decisions = {rows[i][-1].decision for i in rows}
    assert decisions == {AUGMENT, EMBED}
    for i, query in enumerate(queries):
        alone = list(tiny_model.stream_query(query, threshold=threshold, max_new_tokens=10))
        got = rows[i]
        assert [s.token_ids for s in got] == [s.token_ids for s in alone]
        assert [s.augmentation for s in got] == [s.augmentation for s in alone]
        assert [s.final for s in got] == [False] * (len(alone) - 1) + [True]
        np.testing.assert_allclose(got[-1].embedding, alone[-1].embedding, atol=1e-4)
    with pytest.raises(ValueError, match="augment must be one of"):
        next(iter(tiny_model.stream_queries(queries, augment="sometimes")))
