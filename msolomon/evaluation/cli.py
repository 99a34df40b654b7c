"""`python -m msolomon.evaluation`: the settings of `EvalCommandSettings` parsed once; every user mistake (a bad
flag, a missing folder, a malformed data file, an image outside `--image-root`) exits 2 with one line."""
from __future__ import annotations

import logging
import sys
from typing import Sequence

from msolomon.data import DataFormatError
from msolomon.evaluation.benchmark import dataset_floors, open_benchmark, parse_meta_tasks, select_datasets
from msolomon.evaluation.run import evaluate_benchmark, load_model, report_path
from msolomon.evaluation.settings import EvalCommandSettings, EvaluationError
from msolomon.report import markdown_report, output_paths
from msolomon.settings import parse_settings, process_environment, settings_parser, usage_error

PROG = "python -m msolomon.evaluation"
DESCRIPTION = ("MMEB-style evaluation of an M-Solomon model (Precision@1, augment rate, latency) in the modes auto, "
               "never and always.")


def parser():
    """The command's argparse parser (for a look at its flags; `main` parses through `parse_settings`)."""
    return settings_parser(EvalCommandSettings, prog=PROG, description=DESCRIPTION)[0]


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; bad arguments and bad data print a one-line error and exit 2."""
    process_environment(set_threads=False)
    command, _ = parse_settings(EvalCommandSettings, argv, prog=PROG, description=DESCRIPTION)
    level = logging.DEBUG if command.verbose else logging.WARNING if command.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = command.evaluation
    if command.quiet:
        settings.show_progress_bar = False
    out = report_path(command.out)
    try:
        process_environment(command.threads)
        bench = open_benchmark(command.data, settings.image_root, settings.split,
                               meta_tasks=parse_meta_tasks(settings.meta_task),
                               allow_outside_root=settings.allow_images_outside_root)
        # an unknown dataset or a bad data file (an image outside the root) fails before the model loads
        floors = dataset_floors(bench, select_datasets(bench, settings.datasets), settings.limit)
        model = load_model(command.model)
        report = evaluate_benchmark(model, bench, settings, out, model_name=str(command.model), floors=floors)
    except (EvaluationError, DataFormatError) as err:  # a bad argument, or a bad data file met during the run
        usage_error(PROG, str(err))
    sys.stdout.write(markdown_report(report) + f"\nwrote {output_paths(out)['json']}\n")
    return 0
