"""Decision quality: was augmenting this query the right call?

One model evaluated in `never` and `always` holds, for every query, the outcome of either decision, so the per-query
oracle (the better path of each query) and the quality of the `auto` decisions follow without encoding anything
again. Everything here reads report mode entries (`report["modes"][mode]`), whose datasets carry `correct_bits`
and, for the decisions taken, `augmented_bits`: the same functions serve an evaluation report (one model, three
modes) and `training.reproduce` (the two-model oracle of NoAug and AlwaysAug).

The rules (docs/architecture.md, "The evaluation report"):
- the oracle takes `always` only where `always` is right and `never` wrong (`never` when both are right or both
  wrong: the cheaper path);
- an augmented query *helped* when `always` is right and `never` wrong, *hurt* when the reverse, else *same*;
  an embedded query was *missed* when `always` is right and `never` wrong, *saved* when the reverse, else *same*;
- decision accuracy is the share of the queries whose two paths disagree where the decision took the right path.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from msolomon.metrics import decode_correct, macro, round_or_none

ORACLE_LATENCY_NOTE = ("per dataset, the oracle's share of `always` queries times the `always` run's mean latency "
                       "plus the rest times the `never` run's, averaged over all queries")


def _bits(entry: Mapping[str, Any], key: str, name: str) -> list[bool]:
    bits = entry.get(key)
    if not isinstance(bits, str):
        raise ValueError(f"dataset {name!r}: the report has no {key} (evaluate again with this version)")
    return decode_correct(bits)


def oracle_choice(never: Sequence[bool], always: Sequence[bool]) -> list[bool]:
    """Per query, whether the oracle takes `always`: only where it is right and `never` is wrong."""
    if len(never) != len(always):
        raise ValueError(f"never and always cover different queries ({len(never)} against {len(always)})")
    return [a and not e for e, a in zip(never, always)]


def _group(scores: Mapping[str, float], ood: Mapping[str, bool]) -> dict[str, float | None]:
    return {"overall": round_or_none(macro(scores.values())),
            "ind": round_or_none(macro(s for n, s in scores.items() if not ood[n])),
            "ood": round_or_none(macro(s for n, s in scores.items() if ood[n]))}


def _mixed_latency(share_always: float, never: Mapping[str, Any], always: Mapping[str, Any]) -> float | None:
    a, e = always.get("latency_ms_mean"), never.get("latency_ms_mean")
    if a is None or e is None:
        return None
    return share_always * a + (1 - share_always) * e


def oracle(never: Mapping[str, Any], always: Mapping[str, Any]) -> dict[str, Any]:
    """The per-query oracle of two report mode entries (`never` and `always`, one model's or two models'): its
    Precision@1 per dataset and macro, how often it augments, and the latency its choices would cost."""
    names = [n for n in never["datasets"] if n in always["datasets"]]
    scores, ood, lat, n_all, n_aug = {}, {}, [], 0, 0
    for name in names:
        e_ds, a_ds = never["datasets"][name], always["datasets"][name]
        e, a = _bits(e_ds, "correct_bits", name), _bits(a_ds, "correct_bits", name)
        take = oracle_choice(e, a)
        right = [x or y for x, y in zip(e, a)]
        scores[name] = 100.0 * sum(right) / len(right) if right else 0.0
        ood[name] = bool(e_ds.get("ood"))
        share = sum(take) / len(take) if take else 0.0
        n_all += len(take)
        n_aug += sum(take)
        mixed = _mixed_latency(share, e_ds, a_ds)
        lat.append(None if mixed is None else (mixed, len(take)))
    out: dict[str, Any] = _group(scores, ood)
    timed = [x for x in lat if x is not None]
    out.update({
        "augment_rate": round_or_none(n_aug / n_all if n_all else 0.0),
        "latency_ms_mean": round_or_none(sum(v * k for v, k in timed) / sum(k for _, k in timed), 3)
        if timed and len(timed) == len(lat) and sum(k for _, k in timed) else None,
        "datasets": {n: round_or_none(s) for n, s in scores.items()},
        "latency_note": ORACLE_LATENCY_NOTE,
    })
    return out


def _ratio(num: int, den: int) -> float | None:
    return round_or_none(num / den) if den else None


def dataset_decisions(augmented: Sequence[bool], never: Sequence[bool], always: Sequence[bool]) -> dict[str, Any]:
    """The decision counts of one dataset: which path each query took (`augmented`) against each path's outcome."""
    if not len(augmented) == len(never) == len(always):
        raise ValueError(f"auto, never and always cover different queries ({len(augmented)}, {len(never)}, "
                         f"{len(always)})")
    aug = {"helped": 0, "hurt": 0, "same": 0}
    emb = {"missed": 0, "saved": 0, "same": 0}
    for took, e, a in zip(augmented, never, always):
        gain = a and not e
        loss = e and not a
        if took:
            aug["helped" if gain else "hurt" if loss else "same"] += 1
        else:
            emb["missed" if gain else "saved" if loss else "same"] += 1
    right = aug["helped"] + emb["saved"]
    disagree = right + aug["hurt"] + emb["missed"]
    return {"augmented": aug, "embedded": emb, "disagreements": disagree,
            "decision_accuracy": _ratio(right, disagree)}


def gap_closed(model: float | None, always: float | None, best: float | None) -> float | None:
    """The share of the gap between `always` and the oracle that a model closes (negative: it falls below
    `always`); None when there is no gap."""
    if model is None or always is None or best is None or best - always <= 0:
        return None
    return round_or_none((model - always) / (best - always))


def decisions(auto: Mapping[str, Any], never: Mapping[str, Any], always: Mapping[str, Any]) -> dict[str, Any]:
    """The report's `decisions` block for one model evaluated in `auto`, `never` and `always` (report mode entries):
    the per-query oracle, and per dataset the helped / hurt / same counts of augmented queries, the missed / saved /
    same counts of embedded ones and the decision accuracy where the two paths disagree; macro and pooled."""
    names = [n for n in auto["datasets"] if n in never["datasets"] and n in always["datasets"]]
    per: dict[str, Any] = {}
    orc = oracle(never, always)
    for name in names:
        d = dataset_decisions(_bits(auto["datasets"][name], "augmented_bits", name),
                              _bits(never["datasets"][name], "correct_bits", name),
                              _bits(always["datasets"][name], "correct_bits", name))
        d["oracle_p_at_1"] = orc["datasets"].get(name)
        d["p_at_1"] = auto["datasets"][name].get("p_at_1")
        per[name] = d
    right = sum(d["augmented"]["helped"] + d["embedded"]["saved"] for d in per.values())
    disagree = sum(d["disagreements"] for d in per.values())
    return {
        "oracle": orc,
        "gap_closed": {k: gap_closed(auto.get(k), always.get(k), orc.get(k)) for k in ("overall", "ind")},
        "decision_accuracy": _ratio(right, disagree),
        "decision_accuracy_macro": round_or_none(macro(d["decision_accuracy"] for d in per.values()
                                                if d["decision_accuracy"] is not None)),
        "disagreements": disagree,
        "n": sum(sum(d["augmented"].values()) + sum(d["embedded"].values()) for d in per.values()),
        "datasets": per,
    }
