"""Pretraining curves of several bases on one figure (next-token loss and answer token accuracy against step).

    python bench/pretrain_curves.py --run "LABEL=RUN/train_log.jsonl" [--run ...] --out docs/perf/pretrain_curves.png

Each `--run` is a label and a `train_log.jsonl` written by `python -m training.pretrain` (a continued base's log holds
every step, from 0). No model is loaded.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from msolomon.settings import option, parse_settings  # noqa: E402


def labelled(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not label.strip() or not Path(path).is_file():
        raise ValueError(f"expected LABEL=PATH to an existing train_log.jsonl, got {text!r}")
    return label.strip(), Path(path)


@dataclass
class CurvesSettings:
    run: list[tuple] = option(help="a label and the train_log.jsonl of a pretraining run", repeat=True,
                              metavar="LABEL=PATH", parse=labelled)
    out: str = option(help="the figure to write", metavar="PNG")


def main(argv: list[str] | None = None) -> int:
    args, _ = parse_settings(CurvesSettings, argv, prog="python bench/pretrain_curves.py",
                             description=__doc__.split("\n")[0], config_file=False)
    from training.pretrain import plot_curves

    (label, first), *others = args.run
    plot_curves(first, Path(args.out), others, label=label)
    sys.stdout.write(f"{args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
