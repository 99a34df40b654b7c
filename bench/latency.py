"""Per-query latency at batch size 1 of the three modes (auto, never, always) on MiniMMEB test, and where the time
of an augmented query goes.

    python bench/latency.py [--threads 1] [--model PATH] [--data DIR] [--limit 20] [--passes 3]
                            [--n-augmented 30] [--max-new-tokens 64] [--json FILE] [--tiny]

1. The three modes on the same model and queries (the first --limit test queries of every dataset, datasets taken
   in turn), interleaved: query i runs auto, never and always in a rotated order, --passes times. Per pass, the
   ratio of mean latencies (auto / always, auto / never: what a user waits on average); the figure is the median
   over passes, overall and per dataset. Precision@1 of each mode from the same runs (ties count as wrong).
2. The `/embed` path of auto against never, on the queries auto embeds at once: the decision comes from the
   prefill that never runs too, so it should cost nothing.
3. Augmented queries (the first --n-augmented the model augments in auto, filled up with others; run with
   augment="always", the same path), each in four ways, interleaved:
   - `encode_queries` as shipped;
   - its parts measured alone: preprocessing + prefill (the decision), each decode step (one cached token, the
     head, argmax) and the terminal step, each timed on its own; the figure is shipped / sum of parts;
   - a naive re-encode, written only here: the same greedy generation with the KV cache, then the query plus its
     augmentation encoded again from scratch for the embedding (what a generate-then-embed pipeline does);
   - no KV cache at all: every decode step and the embedding re-encode the query and the tokens so far.
   Each variant must give the shipped embedding (checked to 1e-4) and the same tokens.

Latency is wall time around the call, raw input to normalised embedding; search is excluded. JSON keys:
`ratios` (auto_over_always, auto_over_never, embed_path_over_never, augment_over_prefill_plus_decode,
kv_reuse_speedup, no_kv_cache_speedup), `p_at_1` per mode, `per_dataset`, `augmented` (part times), `targets`.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import numpy as np  # noqa: E402

MODES = ("auto", "never", "always")
VARIANTS = ("shipped", "parts", "naive_reencode", "no_kv_cache")


# --- the augmented path, piece by piece (bench only) -----------------------------------------------------------

def _prefill(model, query, max_new_tokens: int):
    """Preprocessing + prefill + decision, as `_encode_query_batch` runs them for one query."""
    import torch
    from transformers import DynamicCache

    batch = model.encoder.collate([model.encoder.encode_prompt(query, reserve=max_new_tokens + 1)],
                                  model.padding_side)
    positions = model.rope_positions(batch)
    cache = DynamicCache()
    hidden = model.forward_hidden(batch, cache=cache, position_ids=positions)
    last = hidden[torch.arange(1), batch["last_index"]]
    model.decision_probability(last)
    mask = batch["attention_mask"].to(model.device)
    next_pos = positions.amax(dim=(0, 2)).to(model.device) + 1
    return cache, mask, next_pos


def _cached_step(model, token: int, cache, mask, pos_value, banned):
    """Feed one token with the cache; returns the new mask, the state and the next greedy token."""
    import torch

    device = model.device
    mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype, device=device)], 1)
    pos = pos_value[:, None][None].expand(3, -1, -1)
    state = model._step(torch.tensor([[token]], device=device), mask, pos, cache)[:, -1]
    logits = model.logits(state).float()
    if banned.numel():
        logits[:, banned] = float("-inf")
    return mask, state, int(logits.argmax(-1)[0])


def _banned(model):
    import torch

    return torch.tensor(model._banned_in_augmentation, device=model.device, dtype=torch.long)


def parts(model, query, segment: list[int], max_new_tokens: int) -> dict:
    """The shipped path's parts, each timed alone: prefill, each decode step, the terminal step."""
    import torch

    banned = _banned(model)
    with torch.inference_mode():
        t0 = time.perf_counter()
        cache, mask, next_pos = _prefill(model, query, max_new_tokens)
        prefill = (time.perf_counter() - t0) * 1e3
        steps, tokens = [], []
        for j, token in enumerate(segment[:-1]):  # feeds /augment, then each generated token
            t0 = time.perf_counter()
            mask, _, nxt = _cached_step(model, token, cache, mask, next_pos + j, banned)
            steps.append((time.perf_counter() - t0) * 1e3)
            tokens.append(nxt)
        t0 = time.perf_counter()
        mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype, device=mask.device)], 1)
        pos = (next_pos + len(segment) - 1)[:, None][None].expand(3, -1, -1)
        state = model._step(torch.tensor([[model.terminal_id]], device=model.device), mask, pos, cache)[:, -1]
        vector = model.normalize(state.float().cpu()).numpy()[0]
        terminal = (time.perf_counter() - t0) * 1e3
    return {"prefill_ms": prefill, "decode_ms": steps, "terminal_ms": terminal, "tokens": tokens, "vector": vector}


def naive_reencode(model, query, max_new_tokens: int) -> dict:
    """Generate with the KV cache, then encode query + augmentation again from scratch for the embedding."""
    import torch

    banned = _banned(model)
    with torch.inference_mode():
        cache, mask, next_pos = _prefill(model, query, max_new_tokens)
        segment = [model.augment_id]
        while True:
            mask, _, nxt = _cached_step(model, segment[-1], cache, mask, next_pos + len(segment) - 1, banned)
            if nxt == model.terminal_id or len(segment) >= max_new_tokens:
                break
            segment.append(nxt)
        enc = model.encoder.encode_prompt(query, reserve=len(segment) + 1).extended(segment + [model.terminal_id])
        vector = model.embed_encodings([enc]).float().cpu().numpy()[0]
    return {"segment": segment + [model.terminal_id], "vector": vector}


def no_kv_cache(model, query, max_new_tokens: int) -> dict:
    """Greedy generation without a cache: every step runs the whole query and the tokens so far."""
    import torch

    banned = _banned(model)
    with torch.inference_mode():
        prompt = model.encoder.encode_prompt(query, reserve=max_new_tokens + 1)
        segment = [model.augment_id]
        while True:
            enc = prompt.extended(segment)
            batch = model.encoder.collate([enc], model.padding_side)
            hidden = model.forward_hidden(batch)
            logits = model.logits(hidden[:, -1]).float()
            if banned.numel():
                logits[:, banned] = float("-inf")
            nxt = int(logits.argmax(-1)[0])
            if nxt == model.terminal_id or len(segment) >= max_new_tokens:
                break
            segment.append(nxt)
        vector = model.embed_encodings([prompt.extended(segment + [model.terminal_id])]).float().cpu().numpy()[0]
    return {"segment": segment + [model.terminal_id], "vector": vector}


# --- the run ---------------------------------------------------------------------------------------------------

def candidate_vectors(model, rows) -> tuple[dict, np.ndarray]:
    keys, cands = C.unique_candidates(rows)
    return keys, model.encode_candidates(cands, batch_size=32)


@dataclass
class LatencySettings(C.BenchSettings):
    limit: int | None = C.option(None, "test queries per dataset (default: 20; --tiny: 4)")
    passes: int | None = C.option(None, "interleaved passes over the queries (default: 3)")
    n_augmented: int | None = C.option(None, "augmented queries taken apart (default: 30; --tiny: 3; 0: none)")
    max_new_tokens: int | None = C.option(None, "augmentation cap (default: 64, as the evaluation's; --tiny: 8)")
    gate_margin: float | None = C.option(None, "auto mode as a cascade (msolomon.gate.MarginGate over each query's "
                                               "own candidates, its search timed with it; default: no gate)")


def main(argv=None) -> int:
    from msolomon.metrics import is_correct

    args = C.parse(LatencySettings, argv, __doc__)
    limit = args.limit or (4 if args.tiny else 20)
    passes = args.passes or (1 if args.tiny else 3)
    n_aug = args.n_augmented if args.n_augmented is not None else (3 if args.tiny else 30)  # 0: skip part 3
    mnt = args.max_new_tokens or (8 if args.tiny else 64)
    threads = C.start(args)
    model, model_name = C.load_model(args)
    bench, names, folder = C.minimmeb(args)
    rows = {n: bench.read(n, limit=limit) for n in names}
    order = [(n, rows[n][j]) for j in range(limit) for n in names if j < len(rows[n])]  # datasets in turn
    cand_keys, cand_vecs = {}, {}
    for n in names:
        cand_keys[n], cand_vecs[n] = candidate_vectors(model, rows[n])

    def pool(n, row):
        return cand_vecs[n][[cand_keys[n][C.candidate_key(c)] for c in row.candidates]]

    def encode(n, row, mode):
        gate = None
        if mode == "auto" and args.gate_margin is not None:
            from msolomon.gate import MarginGate

            gate = MarginGate(args.gate_margin, lambda _: pool(n, row))  # the search is timed with the query
        return model.encode_queries(row.query, augment=mode, batch_size=1, max_new_tokens=mnt, gate=gate)

    for n, row in order[:2]:  # warm up every path
        for mode in MODES:
            encode(n, row, mode)
    lat = {m: np.zeros((passes, len(order))) for m in MODES}
    first = {m: [None] * len(order) for m in MODES}
    for r in range(passes):
        for i, (n, row) in enumerate(order):
            for mode in C.rotations(MODES, i + r):
                ms, res = C.timed(lambda: encode(n, row, mode))
                lat[mode][r, i] = ms
                if first[mode][i] is None:
                    first[mode][i] = res
                elif first[mode][i].decision != res.decision:
                    raise SystemExit(f"query {i}: decision changed between passes ({mode})")

    def correct(mode, i) -> bool:
        return is_correct(pool(*order[i]) @ first[mode][i].embedding)

    ok = {m: np.array([correct(m, i) for i in range(len(order))]) for m in MODES}
    ds_of = np.array([n for n, _ in order])
    augmented = np.array([first["auto"][i].decision == "/augment" for i in range(len(order))])

    def ratio(a: str, b: str, sel=None) -> float:
        sel = np.ones(len(order), bool) if sel is None else sel
        if not sel.any():
            return float("nan")
        return C.median(lat[a][r, sel].mean() / lat[b][r, sel].mean() for r in range(passes))

    def p_at_1(mode: str, sel=None) -> float:
        sel = np.ones(len(order), bool) if sel is None else sel
        return 100.0 * float(ok[mode][sel].mean())

    per_dataset = {}
    for n in names:
        sel = ds_of == n
        per_dataset[n] = {"n": int(sel.sum()), "augment_rate": float(augmented[sel].mean()),
                          "mean_ms": {m: float(np.median(lat[m][:, sel].mean(1))) for m in MODES},
                          "auto_over_always": ratio("auto", "always", sel),
                          "auto_over_never": ratio("auto", "never", sel),
                          "p_at_1": {m: p_at_1(m, sel) for m in MODES}}
    macro = {m: float(np.mean([per_dataset[n]["p_at_1"][m] for n in names])) for m in MODES}

    # --- augmented queries, taken apart -------------------------------------------------------------------
    pick = [i for i in range(len(order)) if augmented[i]][:n_aug]
    pick += [i for i in range(len(order)) if not augmented[i]][:n_aug - len(pick)]
    sample = [order[i][1].query for i in pick]
    refs = [model.encode_queries(q, augment="always", max_new_tokens=mnt) for q in sample]
    times = {v: np.zeros((passes, len(sample))) for v in VARIANTS}
    part_ms = {"prefill": [], "decode_per_token": [], "terminal": [], "tokens": []}
    mismatches = []
    for r in range(passes):
        for i, q in enumerate(sample):
            ref = refs[i]
            for v in C.rotations(VARIANTS, i + r):
                if v == "shipped":
                    ms, got = C.timed(lambda: model.encode_queries(q, augment="always", batch_size=1,
                                                                   max_new_tokens=mnt))
                    same = got.token_ids == ref.token_ids and np.allclose(got.embedding, ref.embedding, atol=1e-4)
                elif v == "parts":
                    got = parts(model, q, ref.token_ids, mnt)
                    ms = got["prefill_ms"] + sum(got["decode_ms"]) + got["terminal_ms"]
                    if r == 0:
                        part_ms["prefill"].append(got["prefill_ms"])
                        part_ms["decode_per_token"] += got["decode_ms"]
                        part_ms["terminal"].append(got["terminal_ms"])
                        part_ms["tokens"].append(len(ref.token_ids) - 2)
                    expected = ref.token_ids[1:]
                    if len(ref.token_ids) - 1 >= mnt:  # the cap forced the terminal token: the argmax was another
                        got["tokens"], expected = got["tokens"][:-1], expected[:-1]
                    same = got["tokens"] == expected and np.allclose(got["vector"], ref.embedding, atol=1e-4)
                else:
                    fn = naive_reencode if v == "naive_reencode" else no_kv_cache
                    ms, got = C.timed(lambda: fn(model, q, mnt))
                    same = got["segment"] == ref.token_ids and np.allclose(got["vector"], ref.embedding, atol=1e-4)
                if not same:
                    mismatches.append(f"{v}: query {pick[i]} ({order[pick[i]][0]}), pass {r}")
                times[v][r, i] = ms

    def vratio(a: str, b: str) -> float:
        return C.median(times[a][r].sum() / times[b][r].sum() for r in range(passes)) if sample else float("nan")

    ratios = {
        "auto_over_always": ratio("auto", "always"),
        "auto_over_never": ratio("auto", "never"),
        "embed_path_over_never": ratio("auto", "never", ~augmented),
        "augment_over_prefill_plus_decode": vratio("shipped", "parts"),
        "kv_reuse_speedup": vratio("naive_reencode", "shipped"),
        "no_kv_cache_speedup": vratio("no_kv_cache", "shipped"),
    }
    checks = [("auto / always (mean latency)", ratios["auto_over_always"], "<=", 0.5),
              ("auto P@1 − always P@1 (points, macro)", macro["auto"] - macro["always"], ">=", 0.0),
              ("/embed path in auto / never", ratios["embed_path_over_never"], "<=", 1.05),
              ("augmented query / (prefill + decode steps + terminal), alone",
               ratios["augment_over_prefill_plus_decode"], "<=", 1.1),
              ("naive re-encode / KV-cache reuse", ratios["kv_reuse_speedup"], ">=", 1.5)]
    augmented_info = {"n": len(sample), "auto_augmented": int(sum(augmented[i] for i in pick)),
                      "prefill_ms_median": C.median(part_ms["prefill"]),
                      "decode_ms_per_token_median": C.median(part_ms["decode_per_token"]),
                      "terminal_ms_median": C.median(part_ms["terminal"]),
                      "tokens_mean": C.mean(part_ms["tokens"]),
                      "mean_ms": {v: float(np.median(times[v].mean(1))) if sample else None for v in VARIANTS},
                      "mismatches": mismatches}
    result = {"machine": C.machine(threads), "model": model_name, "model_size": C.model_summary(model),
              "data": str(folder), "queries": len(order), "limit_per_dataset": limit, "passes": passes,
              "max_new_tokens": mnt, "augment_rate_auto": float(augmented.mean()), "gate_margin": args.gate_margin,
              "gated_auto": float(np.mean([bool(first["auto"][i].gated) for i in range(len(order))])),
              "ratios": ratios, "p_at_1": macro, "p_at_1_micro": {m: p_at_1(m) for m in MODES},
              "mean_ms": {m: float(np.median(lat[m].mean(1))) for m in MODES},
              "p50_ms": {m: float(np.median(lat[m])) for m in MODES},
              "per_dataset": per_dataset, "augmented": augmented_info,
              "targets": {c[0]: {"value": c[1], "goal": f"{c[2]} {c[3]}"} for c in checks}}
    ds_rows = [[n, d["n"], d["augment_rate"], d["mean_ms"]["never"], d["mean_ms"]["auto"], d["mean_ms"]["always"],
                d["auto_over_always"], d["auto_over_never"], d["p_at_1"]["never"], d["p_at_1"]["auto"],
                d["p_at_1"]["always"]] for n, d in per_dataset.items()]
    ds_rows.append(["all (macro P@1)", len(order), float(augmented.mean()), result["mean_ms"]["never"],
                    result["mean_ms"]["auto"], result["mean_ms"]["always"], ratios["auto_over_always"],
                    ratios["auto_over_never"], macro["never"], macro["auto"], macro["always"]])
    aug_rows = [["shipped encode_queries (always)", augmented_info["mean_ms"]["shipped"], 1.0],
                ["sum of parts measured alone", augmented_info["mean_ms"]["parts"],
                 1 / ratios["augment_over_prefill_plus_decode"]],
                ["naive: generate, then re-encode query + augmentation", augmented_info["mean_ms"]["naive_reencode"],
                 ratios["kv_reuse_speedup"]],
                ["no KV cache at all", augmented_info["mean_ms"]["no_kv_cache"], ratios["no_kv_cache_speedup"]]]
    part_rows = [["prefill + decision (preprocessing included)", augmented_info["prefill_ms_median"]],
                 ["one decode step (median)", augmented_info["decode_ms_per_token_median"]],
                 ["terminal step", augmented_info["terminal_ms_median"]],
                 ["generated tokens per query (mean)", augmented_info["tokens_mean"]]]
    C.finish(args, f"latency at batch size 1: {model_name}, {len(order)} MiniMMEB test queries ({limit} per dataset), "
                   f"{passes} interleaved passes",
             [("modes (mean ms per query; ratios: median over passes)",
               C.table(["dataset", "n", "auto augments", "never ms", "auto ms", "always ms", "auto/always",
                        "auto/never", "P@1 never", "P@1 auto", "P@1 always"], ds_rows)),
              (f"augmented queries ({len(sample)}, {augmented_info['auto_augmented']} augmented by auto)",
               C.table(["variant", "mean ms", "÷ shipped"], aug_rows)),
              ("parts of an augmented query (ms)", C.table(["part", "ms"], part_rows)),
              ("targets", C.table(["what", "measured", "goal", ""], C.target_rows(checks)))]
             + ([("mismatches", "\n".join(mismatches))] if mismatches else []), result)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
