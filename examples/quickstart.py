"""Quick start: decide, augment and embed MiniMMEB queries, then search each query's candidates.

    python examples/quickstart.py [--model PATH] [--datasets ScenesVQA,ChartVQA,DigitsCLS,ScenesT2I] [--n 2]

Uses the shipped default model (assets/model). It generates a tiny MiniMMEB in a temporary folder (about a
second), takes a few test queries of each dataset and shows, per mode, the decision, p_augment, the
augmentation, the latency and whether the positive came first.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint folder (default: assets/model)")
    parser.add_argument("--datasets", default="ScenesVQA,ChartVQA,DigitsCLS,ScenesT2I")
    parser.add_argument("--n", type=int, default=2, help="queries per dataset")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from msolomon import MSolomon, VectorIndex
    from msolomon.data.minimmeb import generate
    from msolomon.data.mmeb import read_eval_dataset
    from msolomon.model import DEFAULT_MODEL_DIR

    model = MSolomon.from_pretrained(args.model or DEFAULT_MODEL_DIR)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "minimmeb"
        generate(data, seed=1, scale="tiny")
        for name in args.datasets.split(","):
            rows = read_eval_dataset(data / "test", name, data)[: args.n]
            print(f"\n### {name}")
            for row in rows:
                index = VectorIndex.build(model.encode_candidates(row.candidates),
                                          [{"text": c.text, "image": str(c.image) if c.image else None}
                                           for c in row.candidates])
                print(f"query: {row.query.text!r}" + (" + image" if row.query.image else ""))
                pos = row.candidates[0]
                print(f"  positive: {Path(str(pos.image)).name if pos.image else pos.text}")
                for mode in ("never", "always", "auto"):
                    r = model.encode_queries(row.query, augment=mode, max_new_tokens=32)
                    top = index.search(r.embedding, k=1)[0]
                    print(f"  {mode:6s} {r.decision:8s} p_augment={r.p_augment:.2f} {r.timings['total']:6.1f} ms "
                          f"{'correct' if top.id == 0 else 'wrong  '} augmentation={r.augmentation!r}")


if __name__ == "__main__":
    main()
