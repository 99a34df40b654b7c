"""Quick start: decide, augment and embed a few queries, then search a small corpus.

    python examples/quickstart.py [--model PATH]

Uses the shipped default model in assets/model when present, else an untrained tiny model (the decisions
and results of an untrained model are random; the point is the pipeline and its timings).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint folder (default: assets/model, else a tiny model)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from msolomon import MSolomon, Query, VectorIndex
    from msolomon.model import DEFAULT_MODEL_DIR

    path = args.model or (DEFAULT_MODEL_DIR if (DEFAULT_MODEL_DIR / "config.json").is_file() else None)
    model = MSolomon.from_pretrained(path) if path else MSolomon.tiny(seed=0)
    print(f"model: {path or 'MSolomon.tiny(seed=0) (untrained)'}")

    corpus = ["a handwritten digit seven", "a handwritten digit three", "a red circle above a blue square",
              "a bar chart whose tallest bar is green", "three yellow stars"]
    index = VectorIndex.build(model.encode_candidates(corpus), [{"text": t} for t in corpus])
    queries = [Query(text="the number after six"), Query(text="a red circle above a blue square"),
               Query(text="How many stars are there? Three yellow ones.")]
    for mode in ("never", "always", "auto"):
        print(f"\n== augment={mode}")
        for query, result in zip(queries, model.encode_queries(queries, augment=mode, max_new_tokens=16)):
            top = index.search(result.embedding, k=1)[0]
            print(f"{query.text!r}: {result.decision} p_augment={result.p_augment:.2f} "
                  f"augmentation={result.augmentation!r} total={result.timings['total']:.1f} ms "
                  f"-> {top.payload['text']!r} ({top.score:.3f})")


if __name__ == "__main__":
    main()
