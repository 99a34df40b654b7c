"""The `/embed` path fused into the prefill (left padding, or a batch of one) gives what the separate cached
`/embed` + terminal step gives (right padding in a batch still takes that step), for embedding and augmenting rows."""
from __future__ import annotations

import numpy as np

from msolomon import MSolomon, Query
from msolomon.prompts import AUGMENT, EMBED


def test_fused_and_stepped_embed_paths_agree(sample_images):
    model = MSolomon.tiny(seed=1)
    queries = [Query(text="How many people are in the picture?", image=sample_images[0]),
               Query(text="the number after six"), Query(image=sample_images[1]),
               Query(text="a cat on a sofa with a long tail"), Query(text="what colour?", image=sample_images[2])]
    p = [r.p_augment for r in model.encode_queries(queries, augment="never")]
    ranked = sorted(p)
    # between two rows' p_augment, never on one: on a row (the median) batching's float noise can flip its decision
    threshold = float(ranked[2] + ranked[3]) / 2  # a batch of /embed and /augment rows
    out = {}
    for side in ("left", "right"):
        model.padding_side = side
        for mode in ("never", "auto"):
            out[side, mode] = model.encode_queries(queries, augment=mode, threshold=threshold, max_new_tokens=8,
                                                   batch_size=len(queries))
    model.padding_side = "left"
    singles = [model.encode_queries(q, augment="auto", threshold=threshold, max_new_tokens=8) for q in queries]
    assert {r.decision for r in out["left", "auto"]} == {AUGMENT, EMBED}
    for mode in ("never", "auto"):
        for fused, stepped in zip(out["left", mode], out["right", mode]):
            assert fused.decision == stepped.decision and fused.token_ids == stepped.token_ids
            assert abs(fused.p_augment - stepped.p_augment) < 1e-5
            np.testing.assert_allclose(fused.embedding, stepped.embedding, atol=1e-4)
    for one, batched in zip(singles, out["left", "auto"]):
        assert one.token_ids == batched.token_ids
        np.testing.assert_allclose(one.embedding, batched.embedding, atol=1e-4)
    # an /embed row's work is done by the prefill: nothing is timed after the decision
    assert all(r.timings["embed"] == 0.0 and r.timings["generate"] == 0.0 for r in out["left", "never"])
