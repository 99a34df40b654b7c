"""The cascade of `encode_queries(gate=...)`: rows the gate accepts keep exactly their embedded result and write
nothing; the others augment exactly as without a gate; and `MarginGate` reads a search's top-1 margin."""
from __future__ import annotations

import math

import numpy as np
import pytest

from msolomon import MSolomon, Query
from msolomon.gate import MarginGate, top1_margin
from msolomon.prompts import AUGMENT, EMBED


@pytest.fixture(scope="module")
def model():
    return MSolomon.tiny(seed=1)


def _queries(images):
    return [Query(text="How many people are in the picture?", image=images[0]), Query(text="the number after six"),
            Query(image=images[1]), Query(text="a cat on a sofa with a long tail"),
            Query(text="what colour is the mug?", image=images[2])]


@pytest.mark.parametrize("side, batch_size", [("right", 2), ("left", 1)])  # left at 5: the three-way test
def test_a_gate_keeps_the_embedded_result_of_the_rows_it_accepts(model, sample_images, side, batch_size):
    queries = _queries(sample_images)
    model.padding_side = side
    try:
        never = model.encode_queries(queries, augment="never", batch_size=batch_size)
        always = model.encode_queries(queries, augment="always", max_new_tokens=8, batch_size=batch_size)
        seen: list[tuple[int, np.ndarray]] = []

        def odd_positions(positions, vectors):  # accepts the rows at odd positions of the whole call
            seen.extend(zip(positions, vectors))
            return [p % 2 == 1 for p in positions]

        gated = model.encode_queries(queries, augment="always", max_new_tokens=8, batch_size=batch_size,
                                     gate=odd_positions)
    finally:
        model.padding_side = "left"
    # asked once about every row that was about to augment, by its position in the call, with its /embed vector
    assert sorted(p for p, _ in seen) == list(range(len(queries)))
    for p, vector in seen:
        np.testing.assert_allclose(vector, never[p].embedding, atol=1e-4)
    for i, (g, n, a) in enumerate(zip(gated, never, always)):
        expected = n if i % 2 else a
        assert (g.decision, g.gated) == ((EMBED, True) if i % 2 else (AUGMENT, False))
        assert g.token_ids == expected.token_ids and g.augmentation == expected.augmentation
        np.testing.assert_allclose(g.embedding, expected.embedding, atol=1e-4)
        assert abs(g.p_augment - a.p_augment) < 1e-4  # the model's own wish is still reported


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_batch_of_embedded_augmented_and_gated_rows(model, sample_images, side):
    """auto mode splitting one batch three ways (embedded by the decision, gated, augmenting): each row's result is
    what its path gives alone, whatever the padding."""
    queries = _queries(sample_images)
    p = sorted(r.p_augment for r in model.encode_queries(queries, augment="never"))
    threshold = (p[2] + p[3]) / 2  # between two rows' p_augment: some rows embed, the others want to augment
    if p[3] - p[2] < 1e-3:
        pytest.skip("two rows too close in p_augment to split the batch by a threshold")
    wants = [r.p_augment >= threshold for r in model.encode_queries(queries, augment="never")]
    assert any(wants) and not all(wants)
    model.padding_side = side
    try:
        never = model.encode_queries(queries, augment="never", batch_size=5)
        always = model.encode_queries(queries, augment="always", max_new_tokens=6, batch_size=5)
        first_only = model.encode_queries(queries, threshold=threshold, max_new_tokens=6, batch_size=5,
                                          gate=lambda pos, v: [i == 0 for i in range(len(pos))])
        all_gated = model.encode_queries(queries, threshold=threshold, max_new_tokens=6, batch_size=5,
                                         gate=lambda pos, v: [True] * len(pos))
    finally:
        model.padding_side = "left"
    first_wanting = wants.index(True)
    for i in range(len(queries)):
        takes_never = not wants[i] or i == first_wanting
        expected = never[i] if takes_never else always[i]
        assert first_only[i].token_ids == expected.token_ids, i
        np.testing.assert_allclose(first_only[i].embedding, expected.embedding, atol=1e-4)
        assert first_only[i].gated == (i == first_wanting)
        np.testing.assert_allclose(all_gated[i].embedding, never[i].embedding, atol=1e-4)
        assert all_gated[i].gated == wants[i] and all_gated[i].decision == EMBED


def test_the_gate_is_not_asked_about_rows_that_embed(model, sample_images):
    queries = _queries(sample_images)
    asked = []
    out = model.encode_queries(queries, augment="never", gate=lambda p, v: asked.extend(p) or [True] * len(p))
    assert asked == [] and not any(r.gated for r in out)
    with pytest.raises(ValueError, match="returned 1 answers for 5 rows"):
        model.encode_queries(queries, augment="always", max_new_tokens=4, batch_size=5, gate=lambda p, v: [True])
    with pytest.raises(TypeError, match="gate must be callable"):
        model.encode_queries(queries, gate=0.1)


def test_top1_margin_and_the_margin_gate():
    assert top1_margin([0.2, 0.9, 0.5]) == pytest.approx(0.4)
    assert top1_margin([0.7, 0.7]) == 0.0  # a tie is as unsure as it gets
    assert top1_margin([0.3]) == math.inf
    with pytest.raises(ValueError, match="no candidates"):
        top1_margin([])
    pool = np.eye(3, dtype=np.float32)  # three orthonormal candidates
    sure = np.array([1.0, 0.0, 0.0], dtype=np.float32)  # scores 1, 0, 0: margin 1
    torn = np.array([0.7, 0.7, 0.0], dtype=np.float32) / np.float32(np.sqrt(0.98))  # scores equal: margin 0
    assert MarginGate(0.5, pool)([0, 1], np.stack([sure, torn])) == [True, False]
    # per-query candidate pools, looked up by position
    pools = {7: pool[:2], 8: pool[1:]}
    assert MarginGate(0.5, lambda p: pools[p])([7, 8], np.stack([torn, torn])) == [False, True]
    for bad in (-0.1, "0.1", True, float("nan")):
        with pytest.raises(ValueError, match="margin must be a number >= 0"):
            MarginGate(bad, pool)
