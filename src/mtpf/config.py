"""YAML configs with ``key=value`` command-line overrides, checked against dataclasses.

A recipe declares its config as a dataclass (fields with ``metadata={"help": ...}``); this module loads
a YAML file into it, applies dotted overrides (``tpl.ner.layers=4``), and refuses unknown keys with the
file, line and key named (or the override that set it), so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def bounded_int(low: int, high: int | None = None):
    """An argparse ``type``: a whole number in [low, high]. The mistake is reported by argparse (one line, exit
    2), before a library's own check fails deep inside a command (torch's thread count, numpy's seed range,
    socket.bind's OverflowError for a port)."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be in [{low}, {'...' if high is None else high}], got {value}")
        return value

    return parse


positive_int = bounded_int(1)  # counts (--threads)
seed_int = bounded_int(0, 2**32 - 1)  # numpy's and torch's seed range


def positive_float(text: str) -> float:
    """An argparse ``type``: a finite number > 0 (epochs, rates)."""
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file and key."""


class Scalar(str):
    """A command-line override's text as typed, with its YAML reading in ``parsed``. A string field takes the text
    (``model=0123``, ``output_dir=runs/a #1`` and ``mixed_precision=no`` stay what was typed, where YAML 1.1
    would read 83, ``runs/a`` and false); any other field takes the YAML value (numbers, booleans, null)."""

    parsed: Any


def parse_overrides(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            parsed = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: invalid value ({getattr(exc, 'problem', None) or exc}); quote "
                              "it or fix the brackets") from None
        if isinstance(parsed, (list, dict)):
            out[key.strip()] = parsed
        else:
            scalar = Scalar(raw)
            scalar.parsed = parsed
            out[key.strip()] = scalar
    return out


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


class Source(str):
    """Where a config came from (its file name, as text), with the line of each key the file sets (``lines``:
    dotted key -> line number, or the override's text for a key set on the command line), so that a message
    names the line to fix."""

    lines: dict[str, int | str]


def _where(source: str, key: str) -> str:
    """``file:line`` of ``key`` (or of the nearest enclosing key the file sets); ``override key=value`` when the
    command line set it; else the file."""
    lines = getattr(source, "lines", {})
    while key:
        if key in lines:
            return lines[key] if isinstance(lines[key], str) else f"{source}:{lines[key]}"
        key = key.rpartition(".")[0]
    return str(source)


def _key_lines(text: str) -> dict[str, int | str]:
    """Line (1-based) of every mapping key in a YAML text, by dotted path. PyYAML's ``compose`` keeps the marks
    that ``safe_load`` drops."""
    lines: dict[str, int | str] = {}
    seen: set[int] = set()  # an alias repeats a node (or refers to itself): walk each once

    def walk(node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode) and id(node) not in seen:
            seen.add(id(node))
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    lines[prefix + str(key.value)] = key.start_mark.line + 1  # a repeated key: the last wins
                    walk(value, f"{prefix}{key.value}.")

    walk(yaml.compose(text, Loader=yaml.SafeLoader), "")
    return lines


def load_yaml(path: str | Path) -> dict:
    return _read_yaml(path)[0]


def _read_yaml(path: str | Path) -> tuple[dict, dict[str, int | str]]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); re-save the config as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values, got {type(data).__name__}")
    return data, _key_lines(text)


def build(cls: type[T], data: dict, source: str = "<config>", prefix: str = "") -> T:
    """Instantiate dataclass ``cls`` from a nested dict, rejecting unknown keys."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"{_where(source, prefix + str(unknown[0]))}: unknown config key '{prefix}{unknown[0]}' "
                          f"(known keys: {known})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, source, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        # a check in __post_init__: its message names the field first ("max_steps must be >= 1", "lora rank must
        # be >= 1"), so point there; a field name further on may be part of a quoted value
        named = next((w for w in re.findall(r"\w+", str(exc))[:2] if w in fields), None)
        where = _where(source, prefix + named if named else prefix.rstrip("."))
        raise ConfigError(f"{where}: {prefix.rstrip('.') or cls.__name__}: {exc}") from None


def _coerce(tp, value, source: str, key: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(value, Scalar):  # an override: its text for a string, its YAML value for anything else
        if tp is str or (origin is typing.Literal and str(value) in args):
            return str(value)
        if origin not in (typing.Union, types.UnionType):
            return _coerce(tp, value.parsed, source, key)
        if value.parsed is None and type(None) in args:
            return None
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{_where(source, key)}: {key} must be a mapping, got {value!r}")
        return build(tp, value, source, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, source, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{_where(source, key)}: {key}: bad value {value!r}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{_where(source, key)}: {key} must be a mapping, got {value!r}")
        vt = args[1] if args else Any
        return {k: _coerce(vt, v, source, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{_where(source, key)}: {key} must be a list, got {value!r}")
        vt = args[0] if args else Any
        return [_coerce(vt, v, source, key) for v in value]
    if origin is typing.Literal:
        if isinstance(value, bool):  # YAML 1.1 reads an unquoted no/off/yes/on as a boolean
            words = {"no", "off", "false"} if not value else {"yes", "on", "true"}
            same = [a for a in args if isinstance(a, str) and a.lower() in words]
            if len(same) == 1:
                return same[0]
        if value not in args:
            raise ConfigError(f"{_where(source, key)}: {key} must be one of {list(args)}, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{_where(source, key)}: {key} must be true or false, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{_where(source, key)}: {key} must be a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{_where(source, key)}: {key} must be an integer, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{_where(source, key)}: {key} must be a string, got {value!r}")
    return value


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    data, lines = _read_yaml(path) if path else ({}, {})
    source = Source(str(path) if path else "<command line>")
    source.lines = lines
    for key, value in parse_overrides(overrides or []).items():
        top = key.split(".")[0]
        typed = f"override {key}={value if isinstance(value, Scalar) else repr(value)}"  # as typed
        if top not in {f.name for f in dataclasses.fields(cls)}:
            raise ConfigError(f"{typed}: unknown config key {top!r}")
        set_dotted(data, key, value)
        for k in [k for k in lines if k.startswith(key + ".")]:  # the file's keys below it are gone
            del lines[k]
        lines[key] = typed
    return build(cls, data, source)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def help_text(cls) -> str:
    """One line per key with its default and help: what ``mtpf pretrain --help-config`` prints."""
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)"
        )
        if dataclasses.is_dataclass(default):
            default = dataclasses.asdict(default)
        lines.append(f"  {f.name} = {default!r}\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)
