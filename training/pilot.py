"""`python -m training.pilot`: the per-dataset split D^A / D^E from the NoAug and AlwaysAug reports.

    python -m training.pilot --noaug NOAUG.json --alwaysaug ALWAYSAUG.json --out SPLIT.json [--margin 1.0]

A dataset goes to D^A ("augment") when AlwaysAug's Precision@1 beats NoAug's by more than `--margin` points,
else to D^E ("embed"): NoAug better or comparable, as in the paper. Each model is read in its own mode
(NoAug: `never`, AlwaysAug: `always`). Only in-distribution datasets (the ones with training data) are split.
The output, `{"augment": [...], "embed": [...], "margin": ..., "datasets": {NAME: figures}}`, keeps the
per-dataset figures behind each assignment.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from msolomon.files import atomic_write_json
from msolomon.model import AUGMENT_MODES
from msolomon.settings import option, parse_settings

logger = logging.getLogger("training.pilot")


@dataclass
class PilotSettings:
    """How the split is made from the two reports."""

    margin: float = option(1.0, "P@1 points AlwaysAug must win by to put a dataset in D^A")
    noaug_mode: str = option("never", "the NoAug report's mode to read", choices=AUGMENT_MODES)
    alwaysaug_mode: str = option("always", "the AlwaysAug report's mode to read", choices=AUGMENT_MODES)
    datasets: list[str] | None = option(None, "datasets to split (default: the in-distribution datasets of both "
                                        "reports)")


@dataclass
class PilotCommand:
    """`python -m training.pilot`: the two reports in, the split file out."""

    noaug: str = option(help="evaluation report of the NoAug model (JSON)", metavar="FILE")
    alwaysaug: str = option(help="evaluation report of the AlwaysAug model (JSON)", metavar="FILE")
    out: str = option(help="split file to write (JSON)", metavar="FILE")
    pilot: PilotSettings = field(default_factory=PilotSettings)


def pilot_split(noaug: dict, alwaysaug: dict, settings: PilotSettings | None = None) -> dict:
    """The split and its evidence, from two evaluation reports (docs/architecture.md, "The evaluation report")."""
    s = settings or PilotSettings()
    try:
        a = noaug["modes"][s.noaug_mode]["datasets"]
        b = alwaysaug["modes"][s.alwaysaug_mode]["datasets"]
    except KeyError as err:
        raise ValueError(f"a report lacks mode or datasets {err}: evaluate NoAug with '{s.noaug_mode}' and "
                         f"AlwaysAug with '{s.alwaysaug_mode}'") from None
    names = list(s.datasets) if s.datasets else sorted(n for n in a if n in b and not a[n].get("ood", False))
    missing = [n for n in names if n not in a or n not in b]
    if missing:
        raise ValueError(f"datasets missing from a report: {missing}")
    if not names:
        raise ValueError("no in-distribution dataset is in both reports")
    evidence, augment, embed = {}, [], []
    for name in names:
        delta = b[name]["p_at_1"] - a[name]["p_at_1"]
        side = "augment" if delta > s.margin else "embed"
        (augment if side == "augment" else embed).append(name)
        evidence[name] = {"meta_task": a[name].get("meta_task"), "noaug_p_at_1": a[name]["p_at_1"],
                          "alwaysaug_p_at_1": b[name]["p_at_1"], "delta": round(delta, 3), "n": a[name].get("n"),
                          "assignment": side}
    return {"augment": augment, "embed": embed, "margin": s.margin,
            "modes": {"noaug": s.noaug_mode, "alwaysaug": s.alwaysaug_mode}, "datasets": evidence}


def write_json_atomic(path: Path, data: dict) -> None:
    atomic_write_json(path, data, sort_keys=True)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m training.pilot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    args, _ = parse_settings(PilotCommand, argv, prog=parser.prog, parser=parser)
    reports = []
    for flag in ("noaug", "alwaysaug"):
        path = Path(getattr(args, flag))
        if not path.is_file():
            parser.error(f"--{flag} {path}: no such file")
        try:
            reports.append(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            parser.error(f"--{flag} {path}: not JSON ({err})")
    try:
        result = pilot_split(reports[0], reports[1], args.pilot)
    except ValueError as err:
        parser.error(str(err))
    result["sources"] = {"noaug": str(args.noaug), "alwaysaug": str(args.alwaysaug)}
    write_json_atomic(Path(args.out), result)
    for name, ev in result["datasets"].items():
        logger.info("%-24s NoAug %5.1f  AlwaysAug %5.1f  delta %+5.1f -> %s", name, ev["noaug_p_at_1"],
                    ev["alwaysaug_p_at_1"], ev["delta"], ev["assignment"])
    logger.info("D^A (augment): %s", result["augment"])
    logger.info("D^E (embed):   %s", result["embed"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
