"""`python -m msolomon.index build | add | search`: index your own collection, add to it, search it.

    python -m msolomon.index build --corpus SPEC [--corpus SPEC ...] --out DIR [--model PATH] [--workers N]
                                   [--ray-address ADDR] [--threads T] [--gpus-per-worker G] [--factory auto]
    python -m msolomon.index add --index DIR --corpus SPEC [--corpus SPEC ...] [--workers N] [--threads T]
    python -m msolomon.index search --index DIR --text "..." [--image FILE] [--k 10] [--mode auto] [--threads T]

A corpus SPEC is a folder (images and .txt files), a .txt, .jsonl or .parquet file, or an MMEB dataset folder
(`mmeb:DIR`, or a MiniMMEB folder); several add up. `--workers 1` encodes in this process; more start a local Ray
with that many actors (or join `--ray-address`). A rerun after a kill finishes the build without encoding a
finished shard again. Every mistake is one line naming it (exit 2).
"""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from msolomon.settings import option, parse_settings, process_environment, threads_option, usage_error

PROG = "python -m msolomon.index"
COMMANDS = ("build", "add", "search")


def _workers(text: str) -> int:
    n = int(text)
    if n < 1:
        raise ValueError("--workers must be at least 1")
    return n


@dataclass
class BuildArgs:
    corpus: list[str] = option(help="a corpus spec: folder, .txt, .jsonl, .parquet or mmeb:DIR (repeatable)",
                               repeat=True)
    out: str = option(help="the index folder to write (resumed when it holds an unfinished build)")
    model: str | None = option(None, "the model to encode with (default: assets/model)")
    workers: int = option(1, "encoding workers: 1 = this process, no Ray; N = N Ray actors", parse=_workers)
    ray_address: str | None = option(None, "join this Ray cluster (ray start --head ...) instead of a local Ray")
    threads: int | None = threads_option("each worker's torch", default=1)
    gpus_per_worker: float = option(0.0, "GPUs per Ray actor (0: CPU)")
    shard_size: int = option(256, "items per shard (the unit of work and of resume)")
    factory: str = option("auto", "faiss index: auto (Flat, HNSW or IVF-PQ by size) or a faiss factory string")


@dataclass
class AddArgs:
    index: str = option(help="the index folder to add to")
    corpus: list[str] = option(help="a corpus spec (repeatable)", repeat=True)
    workers: int = option(1, "encoding workers: 1 = this process, no Ray; N = N Ray actors", parse=_workers)
    ray_address: str | None = option(None, "join this Ray cluster instead of a local Ray")
    threads: int | None = threads_option("each worker's torch", default=1)
    gpus_per_worker: float = option(0.0, "GPUs per Ray actor (0: CPU)")


@dataclass
class SearchArgs:
    index: str = option(help="the index folder to search")
    text: str | None = option(None, "the query text")
    image: str | None = option(None, "the query image")
    k: int = option(10, "how many hits")
    mode: str = option("auto", "auto (the model decides), never (/embed), always (/augment)",
                       choices=["auto", "never", "always"])
    threads: int | None = threads_option(default=None)


def _build(argv: Sequence[str], add: bool) -> int:
    from msolomon.index.build import BuildSettings, IndexBuildError, build, read_build
    from msolomon.index.sources import SourceError
    from msolomon.model import DEFAULT_MODEL_DIR

    cls = AddArgs if add else BuildArgs
    args, _ = parse_settings(cls, argv, prog=f"{PROG} {'add' if add else 'build'}", config_file=False)
    threads = process_environment(args.threads)
    if add:
        built = read_build(Path(args.index))
        if built is None:
            usage_error(f"{PROG} add", f"{args.index} holds no index (no build.json): build one first")
        model, out, factory = built["model"], args.index, built["settings"].get("factory", "auto")
        shard_size = int(built["settings"].get("shard_size", 256))
    else:
        model, out, factory, shard_size = args.model or str(DEFAULT_MODEL_DIR), args.out, args.factory, args.shard_size
    settings = BuildSettings(model=model, corpus=list(args.corpus), out=out, workers=args.workers,
                             ray_address=args.ray_address, threads=threads or 1,
                             gpus_per_worker=args.gpus_per_worker, shard_size=shard_size, factory=factory)
    try:
        report = build(settings, add=add)
    except (IndexBuildError, SourceError) as err:
        usage_error(f"{PROG} {'add' if add else 'build'}", str(err))
    t = report["times_s"]
    sys.stdout.write(f"{out}: {report['count']} items ({report['new_items']} new), {report['factory']} index, "
                     f"{report['n_skipped']} skipped (listed in {Path(out) / 'build.json'}); plan {t['plan_s']:.1f} s, "
                     f"encode {t['encode_s']:.1f} s, assemble {t['assemble_s']:.1f} s\n")
    return 0


def _search(argv: Sequence[str]) -> int:
    from msolomon.index.build import INDEX_DIR, model_signature, read_build
    from msolomon.index.vector import VectorIndex
    from msolomon.inputs import Query
    from msolomon.model import MSolomon

    args, _ = parse_settings(SearchArgs, argv, prog=f"{PROG} search", config_file=False)
    prog = f"{PROG} search"
    if not args.text and not args.image:
        usage_error(prog, "give --text and/or --image")
    built = read_build(Path(args.index))
    if built is None:
        usage_error(prog, f"{args.index} holds no index (no build.json)")
    if model_signature(built["model"]) != built["signature"]:
        usage_error(prog, f"the model that built {args.index} ({built['model']}) has changed on disk since: its "
                          "vectors no longer match; build the index again")
    process_environment(args.threads)
    index = VectorIndex.load(Path(args.index) / INDEX_DIR)
    model = MSolomon.from_pretrained(built["model"])
    try:
        result = model.encode_queries(Query(text=args.text, image=args.image), augment=args.mode)
    except ValueError as err:
        usage_error(prog, str(err))
    hits = index.search(result.embedding, k=args.k)
    sys.stdout.write(f"{result.decision} (p(/augment) {result.p_augment:.3f})"
                     + (f": {result.augmentation}" if result.augmentation else "") + "\n")
    for h in hits:
        p = h.payload
        sys.stdout.write(f"{h.rank + 1:3d}  {h.score:.4f}  " + json.dumps({k: p.get(k) for k in ("text", "image")
                                                                         if p.get(k)}, ensure_ascii=False) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        usage_error(PROG, f"choose a command: {', '.join(COMMANDS)} (then --help)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command, rest = argv[0], argv[1:]
    if command == "search":
        return _search(rest)
    return _build(rest, add=command == "add")
