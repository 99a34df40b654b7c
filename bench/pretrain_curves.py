"""Pretraining curves of several bases on one figure (next-token loss and answer token accuracy against step).

    python bench/pretrain_curves.py --run "LABEL=RUN/train_log.jsonl" [--run ...] --out docs/perf/pretrain_curves.png

Each `--run` is a label and a `train_log.jsonl` written by `python -m training.pretrain` (a continued base's log holds
every step, from 0). No model is loaded.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def labelled(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not label.strip() or not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH to an existing train_log.jsonl, got {text!r}")
    return label.strip(), Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/pretrain_curves.py", description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=labelled, action="append", required=True, metavar="LABEL=PATH")
    parser.add_argument("--out", type=Path, required=True, metavar="PNG")
    args = parser.parse_args(argv)
    from training.pretrain import plot_curves

    (label, first), *others = args.run
    plot_curves(first, args.out, others, label=label)
    sys.stdout.write(f"{args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
