"""`python -m msolomon.index build` on this machine: workers, the driver's memory, the time to a first result.

- throughput: items per second encoding the same images (MiniMMEB's) with one worker of one thread (no Ray),
  two Ray actors of one thread each, and one process of two threads;
- the driver's peak memory (its own RSS, with two Ray actors doing the encoding) for 10k against 40k text items;
- the time from the command to the first finished shard, for a folder of 20k images.

    python bench/index_build.py [--images 10000] [--json FILE] [--model assets/model]

Prints each figure and the ratios against the targets (two workers >= 1.6x one; memory 40k / 10k <= 1.2x).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from msolomon.settings import OFFLINE, option, parse_settings  # noqa: E402

logger = logging.getLogger("bench.index_build")

DRIVER = """
import json, resource, sys, time
from msolomon.index.build import BuildSettings, build
t = time.perf_counter()
report = build(BuildSettings(**json.loads(sys.argv[1])))
print(json.dumps({"seconds": time.perf_counter() - t, "count": report["count"], "times_s": report["times_s"],
                  "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


@dataclass
class IndexBuildBenchSettings:
    images: int = option(10_000, "images encoded by each throughput configuration")
    texts: list[int] = option([10_000, 40_000], "text items for the driver-memory runs")
    folder: int = option(20_000, "images in the folder for the time to a first result")
    model: str = option(str(ROOT / "assets" / "model"), "the model to encode with")
    data: str = option(str(ROOT / "runs" / "q1" / "minimmeb"), "a MiniMMEB folder whose images are the corpus")
    json: str | None = option(None, "also write the figures as JSON to FILE", metavar="FILE")


def _run(settings: dict, threads: int) -> dict:
    env = {**os.environ, **OFFLINE, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(settings)], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _images(data: Path, n: int) -> list[Path]:
    """n image paths from the MiniMMEB folder, in turn: past the folder's count the same files come again (see
    `_populate`)."""
    found = sorted(p for p in (data / "images").rglob("*.png"))
    if not found:
        raise SystemExit(f"{data} has no images (make MiniMMEB first)")
    return [found[i % len(found)] for i in range(n)]


def _populate(folder: Path, images: list[Path]) -> None:
    """Put the images in `folder` as distinct items: a link to each file the first time, a copy after (an item is
    its image's resolved path, so a second link to the same file would be the same item and indexed once)."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    linked: set[Path] = set()
    for i, src in enumerate(images):
        dst, src = folder / f"{i:06d}.png", src.resolve()
        if src in linked:
            shutil.copyfile(src, dst)
        else:
            dst.symlink_to(src)
            linked.add(src)


def steady_rate(shards: Path) -> float:
    """Items per second once the workers are running: the items of every shard after the first one finished,
    over the time from the first shard's result to the last one's (start-up and model loading left out)."""
    done = sorted((p.stat().st_mtime, json.loads(p.read_text())["count"]) for p in shards.glob("s*/meta.json"))
    if len(done) < 2 or done[-1][0] <= done[0][0]:
        return float("nan")
    return sum(c for _, c in done[1:]) / (done[-1][0] - done[0][0])


def first_result_seconds(model: str, folder: Path, out: Path) -> float:
    """Seconds from the command to the first finished shard of a build of `folder` (then the build is stopped)."""
    cmd = [sys.executable, "-m", "msolomon.index", "build", "--model", model, "--corpus", str(folder), "--out",
           str(out), "--threads", "2"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **OFFLINE}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while not list((out / "shards").glob("s*/meta.json")):
            if proc.poll() is not None:
                raise RuntimeError(f"the build ended ({proc.returncode}) before a shard was written")
            time.sleep(0.05)
        return time.perf_counter() - t0
    finally:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    args, _ = parse_settings(IndexBuildBenchSettings, argv, description=__doc__.split("\n")[0], config_file=False)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    images = _images(Path(args.data), args.images)
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "images"
        _populate(corpus, images)
        base = {"model": args.model, "corpus": [str(corpus)], "shard_size": 128}
        for name, extra, threads in (("one worker, one thread", {"workers": 1, "threads": 1}, 1),
                                     ("two Ray actors, one thread each", {"workers": 2, "threads": 1}, 1),
                                     ("one process, two threads", {"workers": 1, "threads": 2}, 2)):
            out = tmp / name.replace(" ", "_")
            res = _run({**base, **extra, "out": str(out)}, threads)
            if res["count"] != len(images):
                raise RuntimeError(f"{name}: {res['count']} items indexed of {len(images)} images")
            rows[name] = {"items_per_s": res["count"] / res["times_s"]["encode_s"],
                          "steady_items_per_s": steady_rate(out / "shards"), **res}
            logger.info("%-34s %7.1f items/s over the whole encode stage (%.1f s of %.1f s), %.1f items/s "
                        "once running", name, rows[name]["items_per_s"], res["times_s"]["encode_s"], res["seconds"],
                        rows[name]["steady_items_per_s"])
        memory = {}
        for n in args.texts:
            lines = tmp / f"texts-{n}.txt"
            lines.write_text("".join(f"item number {i}: a {('red', 'blue', 'green')[i % 3]} shape\n" for i in range(n)))
            res = _run({**base, "corpus": [str(lines)], "workers": 2, "threads": 1, "shard_size": 512,
                        "out": str(tmp / f"mem-{n}")}, 1)
            memory[n] = res
            logger.info("%6d text items: driver peak RSS %.0f MB (%.1f s)", n, res["driver_peak_rss_mb"],
                        res["seconds"])
        folder = tmp / "folder"
        _populate(folder, _images(Path(args.data), args.folder))
        first = first_result_seconds(args.model, folder, tmp / "first")
        logger.info("first finished shard of a %d-image folder after %.1f s", args.folder, first)
    one = rows["one worker, one thread"]["items_per_s"]
    small, large = min(memory), max(memory)
    report = {
        "throughput": rows,
        "ratio_two_workers_vs_one": rows["two Ray actors, one thread each"]["items_per_s"] / one,
        "ratio_two_threads_vs_one": rows["one process, two threads"]["items_per_s"] / one,
        "steady_ratio_two_workers_vs_one": rows["two Ray actors, one thread each"]["steady_items_per_s"]
        / rows["one worker, one thread"]["steady_items_per_s"],
        "steady_ratio_two_threads_vs_one": rows["one process, two threads"]["steady_items_per_s"]
        / rows["one worker, one thread"]["steady_items_per_s"],
        "driver_memory": {str(k): v for k, v in memory.items()},
        "driver_memory_ratio": memory[large]["driver_peak_rss_mb"] / memory[small]["driver_peak_rss_mb"],
        "first_result_s": first, "folder_items": args.folder, "images": args.images, "model": args.model,
        "cores": os.cpu_count(),
    }
    sys.stdout.write(f"two Ray actors / one worker: {report['ratio_two_workers_vs_one']:.2f}x over the encode "
                     f"stage, {report['steady_ratio_two_workers_vs_one']:.2f}x once running (target >= 1.6x); "
                     f"one process of two threads / one worker: {report['ratio_two_threads_vs_one']:.2f}x, "
                     f"{report['steady_ratio_two_threads_vs_one']:.2f}x once running\n"
                     f"driver peak memory {large} / {small} items: {report['driver_memory_ratio']:.2f}x "
                     f"(target <= 1.2x)\nfirst result for {args.folder} images: {first:.1f} s\n")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
