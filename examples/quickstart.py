"""Quick start: decide, augment and embed MiniMMEB queries, then search each query's candidates.

    .venv/bin/python examples/quickstart.py [--model PATH] [--datasets ScenesVQA,ChartVQA,DigitsCLS,ScenesT2I]
                                            [--n 2] [--threads N] [--verbose]

It writes a tiny MiniMMEB (only the datasets asked for) to a temporary folder, which takes under a second
for the four default datasets (about 2 s for all 15, on one CPU core), loads the model (by default the shipped
one, assets/model, in about a second) and, for a few test queries of each dataset, shows in each mode (never:
always /embed; always: always /augment; auto: the model decides) the decision, p_augment, the augmentation it
wrote, the latency and the candidate it retrieved, beside the right answer. The whole run takes 10 to 20 seconds
on a CPU.

The shipped model is a tiny Qwen2-VL (5 million parameters), pretrained and then fine-tuned on a CPU on MiniMMEB's
small world (assets/base, then training.reproduce): a test bed for the method, not a general embedder. It retrieves
the right answer for about half of MiniMMEB's test queries; a real Qwen2-VL checkpoint is another --model.
"""
import argparse
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from msolomon.runtime import set_threads  # noqa: E402
from msolomon.settings import (  # noqa: E402
    option,
    parse_settings,
    settings_parser,
    threads_option,  # noqa: E402
    usage_error,
)

PROG = "examples/quickstart.py"
DEFAULT_DATASETS = "ScenesVQA,ChartVQA,DigitsCLS,ScenesT2I"
MODES = ("never", "always", "auto")


# no `from __future__ import annotations` here: a dataclass with string annotations needs its module in
# sys.modules, and this script is also loaded from its file (tests)
@dataclass
class QuickstartSettings:
    """What the quick start shows."""

    model: str | None = option(None, "model folder (default: the shipped model, assets/model)")
    datasets: str = option(DEFAULT_DATASETS, "comma-separated MiniMMEB test sets")
    n: int = option(2, "queries per dataset")
    threads: int | None = threads_option()
    verbose: bool = option(False, "show loading bars, warnings and debug logging (default: off)")


def _parser() -> argparse.ArgumentParser:
    """The command line's parser (its flags and their help)."""
    return settings_parser(QuickstartSettings, prog=PROG, description=__doc__, config_file=False)[0]


def _describe(candidate) -> str:
    """A candidate as a user would name it: its image's file name, else its text."""
    if candidate.image is not None:
        return f"image {Path(str(candidate.image)).name}"
    if candidate.text:
        text = " ".join(candidate.text.split())
        return repr(text if len(text) <= 60 else text[:57] + "...")
    return "(empty)"


def _query_line(query) -> str:
    text = " ".join((query.text or "").replace("<|image_1|>", " ").split())
    image = f" + image {Path(str(query.image)).name}" if query.image is not None else ""
    return f"{text!r}{image}" if text else image.lstrip(" +")


def main(argv: list[str] | None = None) -> int:
    args, _ = parse_settings(QuickstartSettings, argv, prog=PROG, description=__doc__, config_file=False)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.ERROR, format="%(levelname)s %(message)s")
    if not args.verbose:
        import warnings

        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
    from msolomon.data.minimmeb import DATASETS

    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if not names or unknown:
        usage_error(PROG, f"unknown dataset {', '.join(map(repr, unknown)) or '(none given)'}; "
                          f"choose from {', '.join(DATASETS)}")
    if args.n < 1:
        usage_error(PROG, f"--n must be at least 1, got {args.n}")
    set_threads(args.threads)

    from msolomon import MSolomon, VectorIndex
    from msolomon.backbone import unwrap
    from msolomon.data.minimmeb import generate
    from msolomon.data.mmeb import read_eval_dataset
    from msolomon.model import DEFAULT_MODEL_DIR

    model_dir = args.model or DEFAULT_MODEL_DIR
    try:
        model = MSolomon.from_pretrained(model_dir)
    except ValueError as err:
        usage_error(PROG, f"--model: {err}")
    n_params = sum(p.numel() for p in unwrap(model.model).parameters())
    out = sys.stdout
    out.write(f"model: {model_dir} ({n_params / 1e6:.1f}M parameters)\n")
    if n_params < 100e6:
        out.write("This tiny model was pretrained and fine-tuned on a CPU and knows only MiniMMEB's small world: a "
                  "test bed for the method, not a general embedder; expect wrong answers (about half of MiniMMEB's "
                  "test queries).\n")
    out.write("modes: never = always /embed, always = always /augment, auto = the model decides "
              "(p_augment >= 0.5).\n")
    correct = {m: 0 for m in MODES}
    total = 0
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "minimmeb"
        generate(data, seed=1, scale="tiny", datasets=names, progress=False)
        for name in names:
            rows = read_eval_dataset(data / "test", name, data)[: args.n]
            out.write(f"\n### {name} ({DATASETS[name].meta_task})\n")
            for i, row in enumerate(rows, 1):
                index = VectorIndex.build(model.encode_candidates(row.candidates),
                                          [{"text": c.text, "image": str(c.image) if c.image else None}
                                           for c in row.candidates])
                out.write(f"query {i}: {_query_line(row.query)}\n")
                out.write(f"  right answer: {_describe(row.candidates[0])} (one of {len(row.candidates)} "
                          "candidates)\n")
                total += 1
                for mode in MODES:
                    r = model.encode_queries(row.query, augment=mode, max_new_tokens=32)
                    top = index.search(r.embedding, k=1)[0]
                    ok = top.id == 0
                    correct[mode] += ok
                    if r.decision == "/augment":
                        wrote = f'wrote "{r.augmentation}"' if r.augmentation else "wrote nothing (stopped at once)"
                    else:
                        wrote = "no augmentation"
                    out.write(f"  {mode:6s} {r.decision:8s} p_augment={r.p_augment:.2f} {r.timings['total']:6.1f} ms"
                              f"  retrieved {_describe(row.candidates[top.id])}: {'right' if ok else 'wrong'};"
                              f" {wrote}\n")
    out.write(f"\nright answers retrieved of {total} queries: "
              + ", ".join(f"{m} {correct[m]}" for m in MODES) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
