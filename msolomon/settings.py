"""Command-line settings, declared once: dataclasses whose fields carry their help text, parsed by one helper.

    @dataclass
    class LoopSettings:
        lr: float = option(1e-3, "peak learning rate")

    @dataclass
    class TrainConfig:
        data: str = option("", "the training data folder")
        loop: LoopSettings = field(default_factory=LoopSettings)   # nested: its fields are flags too

    config, args = parse_settings(TrainConfig, argv, prog="python -m training.train", description=__doc__)

Every field becomes a `--flag` (underscores as dashes; the fields of nested dataclasses are flattened, so a name is
declared once and may appear once in the whole tree). `bool` fields take `--x/--no-x`, lists are comma-separated,
dicts are JSON objects; the help shows each default. `--config FILE` (YAML or JSON) gives any of the settings by
field name (flat, or nested under the nested field's name); command-line values win over the file, the file over
the defaults. A nested dataclass's defaults are its default instance's, so another command can reuse the same
settings with other defaults: `field(default_factory=lambda: LoopSettings(epochs=2.0))`.

`process_environment()` is the one place that sets the process environment of every entry point: the hub is not
contacted (offline variables, unless already set) and torch/faiss threads go through `msolomon.runtime`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
_MISSING = object()


def option(default: Any = dataclasses.MISSING, help: str = "", *, choices: Sequence[str] | None = None,  # noqa: A002
           flag: str | None = None, metavar: str | None = None, hidden: bool = False, cli: bool = True) -> Any:
    """A dataclass field with its help text (and optional choices, flag name, metavar). No default: required.
    `hidden`: a flag left out of `--help` (for tests); `cli=False`: a setting for code only, not a flag."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "flag": flag, "metavar": metavar,
            "hidden": hidden, "cli": cli}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def process_environment(threads: int | None = None, *, set_threads: bool = True) -> int | None:
    """The process settings of every entry point: offline hub variables (unless the caller set them) and, with
    `set_threads`, torch's and faiss's threads (`msolomon.runtime.set_threads`). Returns the thread count."""
    for name, value in OFFLINE.items():
        os.environ.setdefault(name, value)
    if not set_threads:
        return None
    from msolomon.runtime import set_threads as _set

    return _set(threads)


@dataclasses.dataclass
class _Leaf:
    name: str  # the field name (= the flag and the config key)
    hidden: bool
    path: tuple[str, ...]  # nested field names leading to it
    kind: str  # "bool", "list", "dict", "scalar"
    scalar: Callable[[str], Any]
    default: Any
    help: str
    choices: tuple[str, ...] | None
    flag: str
    metavar: str | None


def _unwrap_optional(tp) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", ())) and len(args) == 1:
        return args[0]
    return tp


def _leaves(cls, default_instance, path: tuple[str, ...] = ()) -> list[_Leaf]:
    hints = typing.get_type_hints(cls)
    out: list[_Leaf] = []
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
        tp = _unwrap_optional(hints[f.name])
        if default_instance is not None:
            default = getattr(default_instance, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = _MISSING
        if dataclasses.is_dataclass(tp):
            out += _leaves(tp, default if default is not _MISSING else tp(), path + (f.name,))
            continue
        origin = typing.get_origin(tp) or tp
        if tp is bool:
            kind, scalar = "bool", bool
        elif origin in (list, tuple):
            kind, scalar = "list", str
        elif origin is dict:
            kind, scalar = "dict", str
        else:
            kind, scalar = "scalar", tp if tp in (int, float, str) else str
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        out.append(_Leaf(f.name, bool(f.metadata.get("hidden")), path + (f.name,), kind, scalar, default,
                         f.metadata.get("help", ""), f.metadata.get("choices"), flag, f.metadata.get("metavar")))
    return out


def _show(value: Any) -> str:
    if value is _MISSING:
        return "required"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, dict):
        return json.dumps(value) if value else "{}"
    return "none" if value is None else str(value)


def add_settings_arguments(parser: argparse.ArgumentParser, cls, defaults=None,
                           unused: Collection[str] = ()) -> list[_Leaf]:
    """Add a flag per field of `cls` (nested dataclasses flattened) to `parser`; returns the leaves. Fields named in
    `unused` (nested settings a command does not read) get no flag and keep their defaults."""
    instance = defaults if defaults is not None else _default_instance(cls)
    leaves = _leaves(cls, instance)
    seen: dict[str, tuple[str, ...]] = {}
    for leaf in leaves:
        if leaf.name in seen:
            raise TypeError(f"{cls.__name__}: setting {leaf.name!r} is declared twice ({seen[leaf.name]} and "
                            f"{leaf.path}); a setting is declared once")
        seen[leaf.name] = leaf.path
    leaves = [leaf for leaf in leaves if leaf.name not in set(unused)]
    for leaf in leaves:
        if "(default" in leaf.help:  # the help says what the default means
            text = leaf.help
        else:
            text = f"{leaf.help} (default: {_show(leaf.default)})".strip()
        text = argparse.SUPPRESS if leaf.hidden else text.replace("%", "%%")
        if leaf.kind == "bool":
            parser.add_argument(leaf.flag, dest=leaf.name, action=argparse.BooleanOptionalAction, default=None,
                                help=text)
        elif leaf.kind == "list":
            parser.add_argument(leaf.flag, dest=leaf.name, default=None, metavar=leaf.metavar or "A,B",
                                help=text if leaf.hidden else text + "; comma-separated")
        elif leaf.kind == "dict":
            parser.add_argument(leaf.flag, dest=leaf.name, default=None, metavar=leaf.metavar or "JSON",
                                help=text if leaf.hidden else text + "; a JSON object")
        else:
            parser.add_argument(leaf.flag, dest=leaf.name, type=leaf.scalar, default=None, choices=leaf.choices,
                                metavar=leaf.metavar, help=text)
    return leaves


def split_list(value: Any) -> list[str] | None:
    """A list setting from a comma-separated string or a list (None stays None)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [x.strip() for x in value.split(",") if x.strip()]
    return [str(x) for x in value]


def load_config_file(path: str | Path) -> dict:
    """The mapping of a YAML or JSON settings file (ValueError when unreadable or not a mapping)."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--config {path}: no such file")
    text = file.read_text(encoding="utf-8")
    try:
        if file.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:  # noqa: BLE001 - yaml and json raise different types
        raise ValueError(f"--config {path}: cannot parse ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: must hold a mapping of settings")
    return data


def _default_instance(cls):
    try:
        return cls()
    except TypeError:  # a required field: defaults of the others only
        return None


def _flatten_config(data: dict, leaves: list[_Leaf], nested: set[str]) -> dict:
    flat: dict = {}
    for key, value in data.items():
        key = str(key).replace("-", "_")
        if key in nested and isinstance(value, dict):
            flat.update(_flatten_config(value, leaves, nested))
        else:
            flat[key] = value
    return flat


def build(cls, values: dict, defaults=None):
    """An instance of `cls` from flat `values` (field name -> value) over `defaults` (default: cls's)."""
    base = defaults if defaults is not None else _default_instance(cls)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        tp = _unwrap_optional(hints[f.name])
        current = getattr(base, f.name) if base is not None else _MISSING
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = build(tp, values, current if current is not _MISSING else None)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
        elif current is not _MISSING:
            kwargs[f.name] = current
        elif f.default is not dataclasses.MISSING:
            kwargs[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kwargs[f.name] = f.default_factory()
    return cls(**kwargs)


def parse_settings(cls, argv: Sequence[str] | None = None, *, prog: str, description: str | None = None,
                   defaults=None, extra: Callable[[argparse.ArgumentParser], None] | None = None,
                   config_file: bool = True, parser: argparse.ArgumentParser | None = None,
                   unused: Collection[str] = ()):
    """Parse `cls` from the command line (and `--config FILE`); returns (settings, the argparse namespace, which
    also holds what `extra(parser)` added). Errors exit with status 2 and the parser's usage."""
    parser = parser or argparse.ArgumentParser(prog=prog, description=description,
                                               formatter_class=argparse.RawDescriptionHelpFormatter)
    if config_file:
        parser.add_argument("--config", metavar="FILE", help="YAML or JSON file with any of the settings below "
                                                             "(command-line values win) (default: none)")
    if extra is not None:
        extra(parser)
    leaves = add_settings_arguments(parser, cls, defaults, unused)
    args = parser.parse_args(argv)
    by_name = {leaf.name: leaf for leaf in leaves}
    nested = {p for leaf in leaves for p in leaf.path[:-1]}
    values: dict = {}
    if config_file and args.config:
        try:
            values.update(_flatten_config(load_config_file(args.config), leaves, nested))
        except ValueError as err:
            parser.error(str(err))
        unknown = sorted(set(values) - set(by_name))
        if unknown:
            parser.error(f"--config {args.config}: unknown settings: {unknown}")
    for name, leaf in by_name.items():
        v = getattr(args, name)
        if v is not None:
            values[name] = v
    for name, v in list(values.items()):
        leaf = by_name[name]
        if leaf.kind == "list":
            values[name] = split_list(v)
        elif leaf.kind == "dict" and isinstance(v, str):
            try:
                values[name] = json.loads(v)
            except json.JSONDecodeError as err:
                parser.error(f"{leaf.flag} must be a JSON object: {err}")
            if not isinstance(values[name], dict):
                parser.error(f"{leaf.flag} must be a JSON object, got {v!r}")
        elif leaf.choices and v not in leaf.choices:
            parser.error(f"{leaf.flag} must be one of {', '.join(leaf.choices)}, got {v!r}")
    missing = [leaf.flag for leaf in leaves if leaf.default is _MISSING and leaf.name not in values]
    if missing:
        parser.error(f"{', '.join(missing)} required (on the command line or in --config)")
    try:
        settings = build(cls, values, defaults)
    except TypeError as err:
        parser.error(str(err))
    return settings, args


def flat_settings(settings) -> dict:
    """Field name -> value over the whole tree of nested settings (the flat view of the command line and of the
    config file; what reports record)."""
    out: dict = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.update(flat_settings(value))
        else:
            out[f.name] = value
    return out


def command_line(prog: str, settings, first: Sequence[str] = ("out",), last: Sequence[str] = ("ship",)) -> str:
    """The command that reproduces `settings` (a dataclass instance): `prog`, the `first` settings, every other
    setting that differs from the class's defaults, then the `last` ones when set. Model cards print it."""
    defaults = flat_settings(type(settings)())
    values = flat_settings(settings)

    def arg(key: str, value: Any) -> str:
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            return flag if value else "--no-" + key.replace("_", "-")
        if isinstance(value, (list, tuple)):
            return f"{flag} {','.join(map(str, value))}"
        if isinstance(value, dict):
            return f"{flag} '{json.dumps(value)}'"
        return f"{flag} {value}"

    parts = [prog] + [arg(k, values[k]) for k in first]
    parts += [arg(k, v) for k, v in values.items() if k not in (*first, *last) and v != defaults.get(k)]
    parts += [arg(k, values[k]) for k in last if values.get(k) not in (None, False, "")]
    return " ".join(parts)
