"""msolomon.settings: one declaration per setting, help and defaults in --help, config files, shared defaults."""
from __future__ import annotations

import dataclasses
import json
import shlex

import pytest

from msolomon.settings import add_settings_arguments, command_line, flat_settings, option, parse_settings


def _commands():
    from training.pilot import PilotCommand
    from training.pretrain import PretrainSettings
    from training.reproduce import ReproduceSettings
    from training.synthesize import SynthesisSettings
    from training.train import TrainConfig

    return {"training.train": TrainConfig, "training.reproduce": ReproduceSettings,
            "training.pretrain": PretrainSettings, "training.synthesize": SynthesisSettings,
            "training.pilot": PilotCommand}


@pytest.mark.parametrize("name", ["training.train", "training.reproduce", "training.pretrain", "training.synthesize",
                                  "training.pilot"])
def test_every_option_has_help_and_its_default(name, capsys):
    import argparse

    cls = _commands()[name]
    parser = argparse.ArgumentParser(prog=name)
    leaves = add_settings_arguments(parser, cls)  # raises if a setting is declared twice in the tree
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
    from training.train import TrainConfig
    from training.trainer import LoopSettings

    loop_fields = {f.name for f in dataclasses.fields(LoopSettings)}
    for cls in (TrainConfig, ReproduceSettings, PretrainSettings):
        own = {f.name for f in dataclasses.fields(cls)}
        assert not (own & loop_fields), (cls.__name__, own & loop_fields)  # not copied: nested
    assert ReproduceSettings().loop.epochs == 2.0 and ReproduceSettings().loop.optim.lr == 5e-4
    assert TrainConfig().loop.epochs == 1.0 and TrainConfig().loop.max_steps is None
    assert PretrainSettings().loop.max_steps == 6000 and PretrainSettings().loop.optim.warmup_steps == 200
    assert TrainConfig().loop.collator.max_segment_tokens == 48  # one default, where the collator declares it


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
    assert s.loop.epochs == 2.0  # reproduce's default, not the loop's
    flat = flat_settings(s)
    assert flat["batch_size"] == 8 and flat["lr"] == 0.02 and "loop" not in flat
    # the recorded command line parses back to the same settings
    cmd = command_line(s).split(" ", 3)[3]
    again, _ = parse_settings(ReproduceSettings, ["--out", "o"] + shlex.split(cmd), prog="x")
    assert flat_settings(again) == flat
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
