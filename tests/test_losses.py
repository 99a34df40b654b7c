"""The losses against independent reference computations (plain loops over rows and tokens, float64)."""
from __future__ import annotations

import math

import numpy as np
import torch

from training.losses import generation_loss, info_nce


def _reference_info_nce(q, t, n_pos, temperature, keys=None) -> float:
    """Mean over queries of -log softmax(score of its positive) over every target, where a target carrying the same
    key as the query's positive (other than the positive itself) is not a negative."""
    q = q.double().numpy()
    t = t.double().numpy()
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    losses = []
    for i in range(len(q)):
        terms = []
        for j in range(len(t)):
            if keys is not None and j != i and int(keys[j]) == int(keys[i]):
                continue
            terms.append(float(q[i] @ t[j]) / temperature)
        positive = float(q[i] @ t[i]) / temperature
        losses.append(-(positive - math.log(sum(math.exp(x) for x in terms))))
    return sum(losses) / len(losses)


def test_info_nce_equals_a_reference_with_hard_negatives_and_masked_duplicates():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 8, generator=g)
    t = torch.randn(6, 8, generator=g)  # 4 positives, then 2 hard negatives
    t[2] = t[0] * 3  # query 2's positive is another copy of query 0's positive (same key below)
    keys = torch.tensor([10, 11, 10, 12, 13, 10])  # the second negative is a copy of positive 0 as well
    for temperature in (0.02, 0.5):
        plain = info_nce(q, t, 4, temperature)
        assert abs(float(plain.loss) - _reference_info_nce(q, t, 4, temperature)) < 1e-4 * max(1, float(plain.loss))
        masked = info_nce(q, t, 4, temperature, keys)
        assert abs(float(masked.loss) - _reference_info_nce(q, t, 4, temperature, keys)) < 1e-4 * max(
            1, float(masked.loss))
    # the mask matters here: with it, query 0 no longer competes with its own copies
    assert float(info_nce(q, t, 4, 0.5, keys).loss) != float(info_nce(q, t, 4, 0.5).loss)
    # accuracy: how often the positive scores highest among the allowed targets
    qn, tn = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(t, dim=-1)
    scores = qn @ tn.T
    want = np.mean([int(scores[i].argmax()) == i for i in range(4)])
    assert abs(float(info_nce(q, t, 4, 0.5).accuracy) - want) < 1e-6


def test_generation_loss_equals_a_per_token_reference():
    g = torch.Generator().manual_seed(1)
    vocab, hidden_size = 11, 6
    head = torch.nn.Linear(hidden_size, vocab, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, hidden_size, generator=g))
    hidden = torch.randn(3, 7, hidden_size, generator=g)
    labels = torch.full((3, 7), -100)
    labels[0, 3:6] = torch.tensor([2, 5, 9])  # decision token 2 first
    labels[1, 2:4] = torch.tensor([3, 9])  # decision token 3 first
    labels[2, 5:7] = torch.tensor([2, 9])
    out = generation_loss(hidden, labels, head, (2, 3))
    # reference: the state at position p predicts the label at p + 1
    total, count, right, rows = 0.0, 0, 0, 0
    frozen = hidden.detach()
    for b in range(3):
        first = True
        for p in range(6):
            y = int(labels[b, p + 1])
            if y == -100:
                continue
            logits = frozen[b, p].double() @ head.weight.detach().double().T
            total -= float(torch.log_softmax(logits, -1)[y])
            count += 1
            if first:
                chosen = 2 if logits[2] >= logits[3] else 3
                right += int(chosen == y)
                rows += 1
                first = False
    assert int(out.n_tokens) == count == 7
    assert abs(float(out.loss.detach()) - total / count) < 1e-5
    assert abs(float(out.decision_accuracy) - right / rows) < 1e-6
    # gradients reach only the head rows and states that a labelled token depends on
    hidden.requires_grad_(True)
    generation_loss(hidden, labels, head, (2, 3)).loss.backward()
    assert float(hidden.grad[0, 6].abs().sum()) == 0 and float(hidden.grad[0, 2].abs().sum()) > 0
