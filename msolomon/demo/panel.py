"""The model panel: which model is loaded and how, the figures from its model card, and a short plain
explanation of `/augment` and `/embed` next to the live figures that show why deciding per query pays."""
from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path
from typing import Any

from msolomon import prompts
from msolomon.backbone import unwrap

TEACHING = """
**How M-Solomon answers a query.** One model both writes and embeds. It first reads the query (text, image or
both) and generates a single token:

* **`/embed`**: the query is clear enough as it is. The model embeds it at once; this costs one pass over the
  prompt and one more step, the same as a plain embedder (the *NoAug* path).
* **`/augment`**: the query needs help (a question about an image, say). The model first writes a short
  augmentation (for instance a likely answer), then embeds the query with it. Writing costs one step per token.

Always augmenting (*AlwaysAug*) pays the writing cost on every query, even where it does not help retrieval,
and can hurt it; never augmenting misses the queries where it helps. Deciding per query pays the cost only
where it buys accuracy, which is the paper's point: NoAug's cost on the queries that do not gain, AlwaysAug's
benefit on those that do. How many augment depends on how many kinds of query gain: in the paper about half did,
hence half AlwaysAug's latency; the figures below show this model's own rate. The threshold sets how sure the
model must be (p(`/augment`) ≥ threshold) before it augments.
"""


def model_facts(model: Any, path: str, threads: int, signature: str | None,
                folder: str | None = None) -> list[tuple[str, str]]:
    core = unwrap(model.model)
    n_params = sum(p.numel() for p in core.parameters())
    size_mb = sum(p.numel() * p.element_size() for p in core.parameters()) / 2**20
    where = Path(folder or path)
    disk = sum(f.stat().st_size for f in where.glob("*.safetensors")) / 2**20 if where.is_dir() else float("nan")
    tok = model.tokenizer
    return [
        ("model", path),
        ("class", type(core).__name__),
        ("parameters", f"{n_params / 1e6:.2f} M ({size_mb:.1f} MB in memory"
                       + (f", {disk:.1f} MB on disk)" if math.isfinite(disk) else ")")),
        ("dtype", str(model.dtype).replace("torch.", "")),
        ("device", str(model.device)),
        ("torch threads", str(threads)),
        ("decision tokens", f"{prompts.AUGMENT} (id {tok.convert_tokens_to_ids(prompts.AUGMENT)}), "
                            f"{prompts.EMBED} (id {tok.convert_tokens_to_ids(prompts.EMBED)})"),
        ("terminal token", f"{prompts.TERMINAL} (its last-layer state is the embedding)"),
        ("default threshold", f"{model.settings.default_threshold:g}"),
        ("max length", str(model.settings.max_length)),
        ("signature", signature or "(in memory: none)"),
    ]


def card_figures(path: str) -> list[list[Any]]:
    """Overall Precision@1, /augment rate and latency per model and mode from the model card's report.json
    (the reproduce report {"models": {...}} or a single evaluation report)."""
    file = Path(path) / "report.json"
    if not file.is_file():
        return []
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except ValueError:
        return []
    models = data.get("models") if isinstance(data.get("models"), dict) else {"this model": data}
    rows = []
    for name, rep in models.items():
        for mode, r in (rep or {}).get("modes", {}).items():
            if not isinstance(r, dict) or "overall" not in r:
                continue
            lat = (r.get("latency_ms") or {}).get("mean")
            rows.append([name, mode, *(_rounded_cell(r.get(k)) for k in ("overall", "ind", "ood")),
                         _rounded_cell(r.get("augment_rate"), 2), _rounded_cell(lat)])
    return rows


def _rounded_cell(x: Any, nd: int = 1) -> Any:
    return round(float(x), nd) if isinstance(x, (int, float)) else x


CARD_HEADERS = ["model", "mode", "overall P@1", "IND", "OOD", "/augment rate", "latency ms"]


def facts_markdown(facts: list[tuple[str, str]]) -> str:
    def cell(v: str) -> str:  # a code span; pipes escaped so `<|im_end|>` does not split the table
        return "`" + v.replace("`", "'").replace("|", "\\|") + "`"

    return "| fact | value |\n|---|---|\n" + "\n".join(f"| {escape(k)} | {cell(v)} |" for k, v in facts)


def live_markdown(live: dict[str, dict[str, float]]) -> str:
    """This server's own searches so far: how many got each decision and their mean model time."""
    lines = ["| decision | searches served | mean model time (ms) |", "|---|---:|---:|"]
    for decision, v in live.items():
        mean = "–" if not math.isfinite(v["mean_ms"]) else f"{v['mean_ms']:.1f}"
        lines.append(f"| `{decision}` | {int(v['count'])} | {mean} |")
    return "\n".join(lines)
