"""msolomon.settings: one declaration per setting, help and defaults in --help, config files, shared defaults."""
from __future__ import annotations

import dataclasses
import json
import shlex

import pytest

from msolomon.settings import (
    command_line,
    flat_settings,
    option,
    parse_settings,
    settings_parser,
    threads_option,
    usage_error,
)


def _commands():
    from msolomon.data.minimmeb import MiniMMEBCommandSettings
    from msolomon.demo.settings import DemoSettings
    from training.pilot import PilotCommandSettings
    from training.pretrain import PretrainSettings
    from training.query_labels import QueryLabelSettings
    from training.reproduce import ReproduceSettings
    from training.synthesize import SynthesisCommandSettings
    from training.train import TrainCommandSettings

    return {"training.train": TrainCommandSettings, "training.reproduce": ReproduceSettings,
            "training.pretrain": PretrainSettings, "training.synthesize": SynthesisCommandSettings,
            "training.pilot": PilotCommandSettings, "training.query_labels": QueryLabelSettings, "app.py": DemoSettings,
            "msolomon.data.minimmeb": MiniMMEBCommandSettings}


@pytest.mark.parametrize("name", ["training.train", "training.reproduce", "training.pretrain", "training.synthesize",
                                  "training.pilot", "training.query_labels", "app.py", "msolomon.data.minimmeb"])
def test_every_option_has_help_and_its_default(name, capsys):
    cls = _commands()[name]
    parser, leaves = settings_parser(cls, prog=name)  # raises if a setting is declared twice in the tree
    assert len({leaf.name for leaf in leaves}) == len(leaves)
    for leaf in leaves:
        assert leaf.help or leaf.hidden, f"{name} {leaf.flag}: no help text"
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    for leaf in leaves:
        if not leaf.hidden:
            assert leaf.flag in text
    assert text.count("default") >= len([leaf for leaf in leaves if not leaf.hidden])


def test_the_loop_settings_are_declared_once_and_shared_with_other_defaults():
    from training.pretrain import PretrainSettings
    from training.reproduce import ReproduceSettings
    from training.train import TrainSettings
    from training.trainer import LoopSettings

    loop_fields = {f.name for f in dataclasses.fields(LoopSettings)}
    for cls in (TrainSettings, ReproduceSettings, PretrainSettings):
        own = {f.name for f in dataclasses.fields(cls)}
        assert not (own & loop_fields), (cls.__name__, own & loop_fields)  # not copied: nested
    assert ReproduceSettings().loop.epochs == 6.0 and ReproduceSettings().loop.optim.lr == 5e-4
    assert TrainSettings().loop.epochs == 1.0 and TrainSettings().loop.max_steps is None
    assert PretrainSettings().loop.max_steps == 6000 and PretrainSettings().loop.optim.warmup_steps == 200
    assert TrainSettings().loop.collator.max_segment_tokens == 48  # one default, where the collator declares it


@dataclasses.dataclass
class Inner:
    seed: int = option(0, "a seed")


@dataclasses.dataclass
class Outer:
    seed: int = option(1, "another seed")
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_a_setting_declared_twice_is_refused():
    with pytest.raises(TypeError, match="declared twice"):
        parse_settings(Outer, [], prog="x")


def test_config_file_flat_or_nested_and_the_command_line_wins(tmp_path):
    from training.reproduce import ReproduceSettings, command_line

    cfg = tmp_path / "r.json"
    cfg.write_text(json.dumps({"out": "o", "loop": {"batch_size": 8, "optim": {"lr": 0.01}}, "scale": "tiny",
                               "all_modes": True}))
    s, _ = parse_settings(ReproduceSettings, ["--config", str(cfg), "--lr", "0.02", "--datasets", "A, B",
                                              "--tiny", '{"num_layers": 1}'], prog="x")
    assert s.loop.batch_size == 8 and s.loop.optim.lr == 0.02 and s.scale == "tiny" and s.all_modes
    assert s.datasets == ["A", "B"] and s.model.tiny == {"num_layers": 1}
    assert s.loop.epochs == 6.0  # reproduce's default (the shipped recipe's), not the loop's
    flat = flat_settings(s)
    assert flat["batch_size"] == 8 and flat["lr"] == 0.02 and "loop" not in flat
    # the recorded command line parses back to the same settings
    cmd = command_line(s).split(" ", 3)[3]
    again, _ = parse_settings(ReproduceSettings, ["--out", "o"] + shlex.split(cmd), prog="x")
    assert flat_settings(again) == flat
    # the paper's plain recipe, away from the defaults: none turns the budget and the rehearsal off, and the
    # recorded command says so in words that parse back
    plain, _ = parse_settings(ReproduceSettings, ["--out", "o", "--latency-budget", "none", "--replay", "none",
                                                  "--augmented-twins", "0", "--epochs", "2"], prog="x")
    assert plain.latency_budget is None and plain.loop.epochs == 2.0
    cmd = command_line(plain)
    assert "--latency-budget none" in cmd and "--replay none" in cmd
    back, _ = parse_settings(ReproduceSettings, shlex.split(cmd)[3:], prog="x")
    assert flat_settings(back) == flat_settings(plain)
    with pytest.raises(SystemExit):
        parse_settings(ReproduceSettings, ["--tiny", "[1]"], prog="x")
    with pytest.raises(SystemExit):
        parse_settings(ReproduceSettings, ["--scale", "huge"], prog="x")


def test_the_recorded_command_names_what_differs_from_the_defaults():
    from training.pretrain import PretrainSettings, parse_args

    s = parse_args(["--out", "runs/p", "--seed", "1", "--lr", "0.001", "--ship", "assets/base", "--threads", "2"])
    cmd = command_line("python -m training.pretrain", s)
    assert cmd.startswith("python -m training.pretrain --out runs/p ") and cmd.endswith(" --ship assets/base")
    assert "--seed 1" in cmd and "--lr 0.001" in cmd and "--threads 2" in cmd
    assert "--epochs" not in cmd and "--backbone" not in cmd  # defaults are left out
    assert parse_args(shlex.split(cmd)[3:]) == s
    assert command_line("p", PretrainSettings(out="o")) == "p --out o"
    # pretraining's default is a step budget (6000); --epochs alone trains by epochs instead of being ignored
    assert parse_args(["--out", "o"]).loop.max_steps == 6000
    assert parse_args(["--out", "o", "--epochs", "2"]).loop.max_steps is None
    assert parse_args(["--out", "o", "--epochs=2", "--max-steps", "5"]).loop.max_steps == 5


# --- what a command declares beyond flags: positionals, repeated flags, converters, threads, one-line errors -------

def _entry(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep:
        raise ValueError(f"{text!r}: expected NAME=PATH")
    return name, path


@dataclasses.dataclass
class Command:
    entries: list[tuple] = option(help="NAME=PATH entries", positional=True, metavar="NAME=PATH", parse=_entry)
    runs: list[str] | None = option(None, "runs", flag="--run", repeat=True)
    sizes: list[int] | None = option(None, "sizes", parse=int)
    verbose: bool = option(False, "debug logging", flag=("-v", "--verbose"))
    threads: int | None = threads_option("torch and faiss")  # msolomon.runtime's, declared once there

    def __post_init__(self) -> None:
        if self.sizes is not None and any(n < 1 for n in self.sizes):
            raise ValueError(f"--sizes must be positive, got {self.sizes}")


def test_positional_repeated_and_parsed_settings(tmp_path, capsys):
    cls = Command
    s, _ = parse_settings(cls, ["a=1", "b=2", "--run", "x,y", "--run", "z", "-v", "--sizes", "3, 4", "--threads", "2"],
                          prog="cmd")
    assert s.entries == [("a", "1"), ("b", "2")] and s.runs == ["x,y", "z"]  # a repeated flag is not split
    assert s.verbose and s.sizes == [3, 4] and s.threads == 2
    assert parse_settings(cls, ["a=1", "--verbose"], prog="cmd")[0].verbose
    defaults, _ = parse_settings(cls, ["a=1"], prog="cmd")
    assert defaults.runs is None and defaults.sizes is None and defaults.threads is None  # None: default_threads()
    # the config file goes through the same converters and checks
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sizes: [5, '6']\nthreads: 3\n")
    s, _ = parse_settings(cls, ["--config", str(cfg), "a=1"], prog="cmd")
    assert s.sizes == [5, 6] and s.threads == 3
    parser, _ = settings_parser(cls, prog="cmd")
    text = parser.format_help()
    assert "NAME=PATH" in text and "-v, --verbose" in text and "--run RUN" not in text and "--threads N" in text


@pytest.mark.parametrize("argv, fragment", [
    ([], "the following arguments are required: NAME=PATH"),
    (["a"], "argument NAME=PATH: 'a': expected NAME=PATH"),
    (["a=1", "--threads", "0"], "argument --threads must be an integer of at least 1, got '0'"),
    (["a=1", "--threads", "two"], "--threads must be an integer of at least 1"),
    (["a=1", "--sizes", "1,x"], "argument --sizes: invalid literal for int()"),
    (["a=1", "--sizes", "0"], "--sizes must be positive, got [0]"),  # the dataclass's own check
    (["a=1", "--nope"], "unrecognized arguments: --nope"),
])
def test_every_mistake_exits_2_with_one_line(argv, fragment, capsys):
    with pytest.raises(SystemExit, match="^cmd: error: ") as e:
        parse_settings(Command, argv, prog="cmd", config_file=False)
    err = capsys.readouterr().err
    assert e.value.code == 2 and fragment in err and err.startswith("cmd: error: ")
    assert len(err.strip().splitlines()) == 1  # no usage block: one line


def test_a_bad_value_in_the_config_file_names_the_file(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"threads": 0}))
    with pytest.raises(SystemExit) as e:
        parse_settings(Command, ["--config", str(cfg), "a=1"], prog="cmd")
    assert e.value.code == 2
    assert f"--config {cfg}: --threads must be an integer of at least 1" in capsys.readouterr().err


def test_usage_error_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit, match="no such file") as e:
        usage_error("cmd", "--data x: no such file")
    assert e.value.code == 2 and capsys.readouterr().err == "cmd: error: --data x: no such file\n"


@dataclasses.dataclass
class Needed:
    data: str = option(help="a folder")
    limit: int = option(3, "a limit")


@dataclasses.dataclass
class WithNeeded:
    needed: Needed
    names: list[str] = option(["x"], "names", positional=True)


def test_an_optional_positional_and_a_required_nested_dataclass():
    s, _ = parse_settings(WithNeeded, ["--data", "d"], prog="x", config_file=False)
    assert s.needed == Needed("d", 3) and s.names == ["x"]  # no positional given: the default
    assert parse_settings(WithNeeded, ["--data", "d", "a", "b"], prog="x")[0].names == ["a", "b"]
    with pytest.raises(SystemExit, match="--data required"):
        parse_settings(WithNeeded, [], prog="x")


def test_every_command_parses_through_the_settings():
    """No command builds its own argparse parser: msolomon.settings is the one place (issue 24)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    own = [root / "app.py"] + [p for d in ("msolomon", "training", "bench", "examples")
                               for p in (root / d).rglob("*.py")]
    builders = sorted(str(p.relative_to(root)) for p in own
                      if re.search(r"ArgumentParser\(", p.read_text(encoding="utf-8"))
                      and p.name != "settings.py" and "evaluation" not in (p.stem, *p.parts))
    assert builders == []


def test_a_tuple_default_reads_as_the_flag_takes_it():
    """`--modes` shows `auto,never,always`, the form the flag accepts, not a Python tuple."""
    from msolomon.evaluation import cli

    text = cli.parser().format_help()
    assert "(default: auto,never,always)" in " ".join(text.split())
    assert "('auto'" not in text
