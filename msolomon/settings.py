"""Command-line settings, declared once: dataclasses whose fields carry their help text, parsed by one helper.

    @dataclass
    class LoopSettings:
        lr: float = option(1e-3, "peak learning rate")

    @dataclass
    class TrainSettings:
        data: str = option("", "the training data folder")
        threads: int | None = threads_option()                      # msolomon.runtime's --threads N, validated
        loop: LoopSettings = field(default_factory=LoopSettings)   # nested: its fields are flags too

    settings, args = parse_settings(TrainSettings, argv, prog="python -m training.train", description=__doc__)

Every field becomes a `--flag` (underscores as dashes; the fields of nested dataclasses are flattened, so a name is
declared once and may appear once in the whole tree). `bool` fields take `--x/--no-x`, lists are comma-separated,
dicts are JSON objects; the help shows each default. `option(..., positional=True)` makes a positional argument
instead (a list field takes one or more values: `entries: list[str] = option(help=..., positional=True)`),
`option(..., repeat=True)` a list flag given once per value (`--run A --run B`), and `option(..., parse=fn)` converts
and checks each value (of the command line and of the config file; a ValueError or argparse.ArgumentTypeError is
the user's mistake). `--config FILE` (YAML or JSON) gives any of the settings by field name (flat, or nested under
the nested field's name); command-line values win over the file, the file over the defaults. A nested dataclass's
defaults are its default instance's, so another command can reuse the same settings with other defaults:
`field(default_factory=lambda: LoopSettings(epochs=2.0))`.

A mistake (a bad flag or value, a missing setting, a ValueError of the dataclass's own checks) exits with status 2
and one line, `PROG: error: MESSAGE`; `usage_error(prog, message)` says a later mistake the same way.

`process_environment()` is the one place that sets the process environment of every entry point: the hub is not
contacted (offline variables, unless already set) and torch/faiss threads go through `msolomon.runtime`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Collection, NoReturn, Sequence

from msolomon import runtime
from msolomon.runtime import parse_threads_flag, threads_help

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
_MISSING = object()


def option(default: Any = dataclasses.MISSING, help: str = "", *, choices: Sequence[str] | None = None,  # noqa: A002
           flag: str | Sequence[str] | None = None, metavar: str | None = None, hidden: bool = False,
           cli: bool = True, positional: bool = False, repeat: bool = False,
           parse: Callable[[Any], Any] | None = None) -> Any:
    """A dataclass field with its help text (and optional choices, flag name or names, metavar). No default:
    required. `hidden`: a flag left out of `--help` (for tests); `cli=False`: a setting for code only, not a flag;
    `positional`: a positional argument (a list takes one or more values, or any number with a default);
    `repeat`: a list flag given once per value; `parse`: converts and checks a value (each item of a list), from
    the command line's text or the config file, raising ValueError or argparse.ArgumentTypeError."""
    if positional and (flag or repeat):
        raise TypeError("a positional setting has no flag and is not repeated")
    meta = {"help": help, "choices": tuple(choices) if choices else None, "flag": flag, "metavar": metavar,
            "hidden": hidden, "cli": cli, "positional": positional, "repeat": repeat, "parse": parse}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def usage_error(prog: str, message: str) -> NoReturn:
    """A user's mistake, said in one line on stderr (`PROG: error: MESSAGE`); exits with status 2. The SystemExit
    carries the line, so `pytest.raises(SystemExit, match=...)` sees it."""
    line = f"{prog}: error: {message}"
    sys.stderr.write(line + "\n")
    exit_ = SystemExit(line)
    exit_.code = 2
    raise exit_


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in one line (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        usage_error(self.prog, message)


def threads_option(what: str = "torch", default: int | None = None) -> Any:
    """The `threads` field of a command's settings dataclass, declared here once: `--threads N`, an integer of at
    least 1 (anything else exits 2 with one line), None meaning `msolomon.runtime.default_threads()`; `what` names
    what the threads run in the help. The command passes the value to `process_environment`."""
    return option(default, threads_help(what, default), metavar="N", parse=parse_threads_flag)


def process_environment(threads: int | None = None, *, set_threads: bool = True) -> int | None:
    """The process settings of every entry point: offline hub variables (unless the caller set them) and, with
    `set_threads`, torch's and faiss's threads (`msolomon.runtime.set_threads`). Returns the thread count."""
    for name, value in OFFLINE.items():
        os.environ.setdefault(name, value)
    if not set_threads:
        return None
    return runtime.set_threads(threads)


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
    flag: str  # the name in messages: the long flag, or a positional's metavar
    metavar: str | None
    flags: tuple[str, ...] = ()  # every option string (e.g. -v, --verbose); none for a positional
    positional: bool = False
    repeat: bool = False
    parse: Callable[[Any], Any] | None = None


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
        if dataclasses.is_dataclass(tp):  # nested (a required one: its fields' own defaults)
            out += _leaves(tp, default if default is not _MISSING else _default_instance(tp), path + (f.name,))
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
        meta = f.metadata
        if meta.get("repeat") and kind != "list":
            raise TypeError(f"{cls.__name__}.{f.name}: only a list setting is repeated")
        given = meta.get("flag")
        flags = (given,) if isinstance(given, str) else tuple(given or ()) or ("--" + f.name.replace("_", "-"),)
        if meta.get("positional"):
            flags, flag = (), meta.get("metavar") or f.name.upper()
        else:
            flag = next((x for x in flags if x.startswith("--")), flags[0])
        out.append(_Leaf(f.name, bool(meta.get("hidden")), path + (f.name,), kind, scalar, default,
                         meta.get("help", ""), meta.get("choices"), flag, meta.get("metavar"), flags,
                         bool(meta.get("positional")), bool(meta.get("repeat")), meta.get("parse")))
    return out


def _show(value: Any) -> str:
    if value is _MISSING:
        return "required"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, dict):
        return json.dumps(value) if value else "{}"
    return "none" if value is None else str(value)


def _help(leaf: _Leaf) -> str:
    if leaf.hidden:
        return argparse.SUPPRESS
    if "(default" in leaf.help or (leaf.positional and leaf.default is _MISSING):  # the help says it
        text = leaf.help
    else:
        text = f"{leaf.help} (default: {_show(leaf.default)})".strip()
    if leaf.kind == "list" and leaf.repeat:
        text += "; repeat the flag for each"
    elif leaf.kind == "list" and not leaf.positional:
        text += "; comma-separated"
    elif leaf.kind == "dict":
        text += "; a JSON object"
    return text.replace("%", "%%")


def add_settings_arguments(parser: argparse.ArgumentParser, cls, defaults=None,
                           unused: Collection[str] = (), require: bool = False) -> list[_Leaf]:
    """Add a flag per field of `cls` (nested dataclasses flattened) to `parser`; returns the leaves. Fields named in
    `unused` (nested settings a command does not read) get no flag and keep their defaults. `require`: a setting
    without a default is a required flag (where no config file can give it)."""
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
        text = _help(leaf)
        # a value to parse arrives as text and is converted once, in parse_settings (the config's values too)
        typed = leaf.scalar if leaf.kind == "scalar" and leaf.parse is None else None
        if leaf.positional:
            required = leaf.default is _MISSING
            nargs = ("+" if required else "*") if leaf.kind == "list" else (None if required else "?")
            parser.add_argument(leaf.name, nargs=nargs, type=typed, default=None, choices=leaf.choices,
                                metavar=leaf.flag, help=text)
        elif leaf.kind == "bool":
            parser.add_argument(*leaf.flags, dest=leaf.name, action=argparse.BooleanOptionalAction, default=None,
                                help=text)
        elif leaf.kind in ("list", "dict"):
            metavar = leaf.metavar or ("JSON" if leaf.kind == "dict" else "VALUE" if leaf.repeat else "A,B")
            parser.add_argument(*leaf.flags, dest=leaf.name, default=None, metavar=metavar, help=text,
                                action="append" if leaf.repeat else "store",
                                required=require and leaf.default is _MISSING)
        else:
            metavar = leaf.metavar or (None if leaf.choices else leaf.flag.lstrip("-").replace("-", "_").upper())
            parser.add_argument(*leaf.flags, dest=leaf.name, type=typed, default=None, choices=leaf.choices,
                                metavar=metavar, help=text, required=require and leaf.default is _MISSING)
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
        if current is _MISSING and dataclasses.is_dataclass(tp) and f.default_factory is not dataclasses.MISSING:
            current = f.default_factory()  # a class with required fields still gives its nested defaults
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


def _value(leaf: _Leaf, value: Any) -> Any:
    """A setting's value from the command line's text or the config file (ValueError: the message to show)."""
    try:
        if leaf.kind == "list":
            if leaf.parse is None:
                return split_list(value)
            items = split_list(value) if isinstance(value, str) else list(value)
            return [leaf.parse(item) for item in items]
        if leaf.kind == "dict" and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as err:
                raise ValueError(f"{leaf.flag} must be a JSON object: {err}") from None
            if not isinstance(value, dict):
                raise ValueError(f"{leaf.flag} must be a JSON object, got {value!r}")
            return value
        if leaf.parse is not None:
            value = leaf.parse(value)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as err:
        message = str(err)
        raise ValueError(message if message.startswith(leaf.flag) else f"{leaf.flag}: {message}") from None
    if leaf.choices and value not in leaf.choices:
        raise ValueError(f"{leaf.flag} must be one of {', '.join(leaf.choices)}, got {value!r}")
    return value


def settings_parser(cls, *, prog: str | None = None, description: str | None = None, defaults=None,
                    config_file: bool = True,
                    unused: Collection[str] = ()) -> tuple[argparse.ArgumentParser, list[_Leaf]]:
    """The parser `parse_settings` reads (for a look at its flags) and the leaves behind its flags. `prog`:
    argparse's default (the script's name) when None."""
    parser = _Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if config_file:
        parser.add_argument("--config", metavar="FILE", help="YAML or JSON file with any of the settings below "
                                                             "(command-line values win) (default: none)")
    return parser, add_settings_arguments(parser, cls, defaults, unused, require=not config_file)


def parse_settings(cls, argv: Sequence[str] | None = None, *, prog: str | None = None,
                   description: str | None = None, defaults=None, config_file: bool = True,
                   unused: Collection[str] = ()):
    """Parse `cls` from the command line (and `--config FILE`); returns (settings, the argparse namespace). Every
    mistake (a ValueError of the dataclass's own checks too) exits
    with status 2 and one line."""
    parser, leaves = settings_parser(cls, prog=prog, description=description, defaults=defaults,
                                     config_file=config_file, unused=unused)
    args = parser.parse_args(argv)
    by_name = {leaf.name: leaf for leaf in leaves}
    nested = {p for leaf in leaves for p in leaf.path[:-1]}
    values: dict = {}
    try:
        if config_file and args.config:
            from_file = _flatten_config(load_config_file(args.config), leaves, nested)
            unknown = sorted(set(from_file) - set(by_name))
            if unknown:
                raise ValueError(f"--config {args.config}: unknown settings: {unknown}")
            for name, v in from_file.items():
                try:
                    values[name] = _value(by_name[name], v)
                except ValueError as err:
                    raise ValueError(f"--config {args.config}: {err}") from None
        for name, leaf in by_name.items():
            v = getattr(args, name)
            if v is not None and not (leaf.positional and v == []):
                try:
                    values[name] = _value(leaf, v)
                except ValueError as err:
                    raise ValueError(f"argument {err}" if leaf.parse is not None else str(err)) from None
    except ValueError as err:
        parser.error(str(err))
    missing = [leaf.flag for leaf in leaves if leaf.default is _MISSING and leaf.name not in values]
    if missing:
        parser.error(f"{', '.join(missing)} required (on the command line or in --config)" if config_file
                     else f"the following arguments are required: {', '.join(missing)}")
    try:
        settings = build(cls, values, defaults)
    except (TypeError, ValueError) as err:
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
        return f"{flag} {'none' if value is None else value}"  # a setting that takes none (e.g. --latency-budget)

    parts = [prog] + [arg(k, values[k]) for k in first]
    parts += [arg(k, v) for k, v in values.items() if k not in (*first, *last) and v != defaults.get(k)]
    parts += [arg(k, values[k]) for k in last if values.get(k) not in (None, False, "")]
    return " ".join(parts)
