"""Typed configuration read from plain data: a dataclass, nested dataclasses among its fields, built from the
mapping a JSON or YAML file holds, with every key and value checked against the fields' annotations.

A key the dataclass lacks is refused naming the closest known key, so that a typo never silently keeps a
default; a value of the wrong type is refused naming its dotted key. Each error is one line that starts with
`source` (the file, or whatever gave the mapping). Ranges, and values that depend on each other, are each
config's own checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Mapping

from ..errors import FlexIPError

T = typing.TypeVar("T")

# The plain types a field may have, as an error message names what the value must be.
PLAIN = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}

# PyYAML reads YAML 1.1, in which a number in exponent notation without a dot or without the exponent's sign
# (1e-4, 1.0e5) is text: a float field takes such text as the number it spells.
EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def from_mapping(cls: type[T], data, source: str, key: str = "") -> T:
    """`cls` built from `data`; `key` is where `data` sits in the file (dotted; "" at the top level)."""
    if not isinstance(data, Mapping):
        raise FlexIPError(f"{source}: {key or 'the top level'} must be a mapping of keys, got {data!r}")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    for name in data:
        if name not in fields:
            close = difflib.get_close_matches(str(name), fields, n=1)
            hint = f"did you mean {_dotted(key, close[0])}?" if close else f"known keys: {', '.join(fields)}"
            raise FlexIPError(f"{source}: unknown key {_dotted(key, name)} ({hint})")
    missing = [_dotted(key, name) for name, field in fields.items() if name not in data and _required(field)]
    if missing:
        raise FlexIPError(f"{source}: missing key(s) {', '.join(missing)}, which have no default")
    hints = typing.get_type_hints(cls)
    return cls(
        **{name: _value(value, hints[name], source, _dotted(key, name)) for name, value in data.items()}
    )


def _dotted(key: str, name) -> str:
    return f"{key}.{name}" if key else str(name)


def _required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _value(value, kind, source: str, key: str):
    """`value` checked against the annotation `kind` (an int given for a float becomes a float)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # only `X | None` is used
        if value is None:
            return None
        (kind,) = [option for option in typing.get_args(kind) if option is not type(None)]
    if dataclasses.is_dataclass(kind):
        return from_mapping(kind, value, source, key)
    if typing.get_origin(kind) is list:
        if not isinstance(value, list):
            raise FlexIPError(f"{source}: {key} must be a list, got {value!r}")
        (item,) = typing.get_args(kind)
        return [_value(v, item, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if typing.get_origin(kind) is dict:
        if not isinstance(value, Mapping):
            raise FlexIPError(f"{source}: {key} must be a mapping of keys, got {value!r}")
        name_kind, item = typing.get_args(kind)
        return {
            _value(name, name_kind, source, f"a key of {key}"): _value(v, item, source, f"{key}[{name!r}]")
            for name, v in value.items()
        }
    if kind is float:
        return _finite(value, source, key)
    if kind not in PLAIN:
        raise TypeError(f"{key}: a typed config's field cannot be {kind!r}; use one of {list(PLAIN)}")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FlexIPError(f"{source}: {key} must be {PLAIN[kind]}, got {value!r}")
    return value


def _finite(value, source: str, key: str) -> float:
    readable = isinstance(value, (int, float)) and not isinstance(value, bool)
    readable = readable or isinstance(value, str) and EXPONENT.fullmatch(value) is not None
    if not readable or not math.isfinite(float(value)):
        raise FlexIPError(f"{source}: {key} must be {PLAIN[float]}, got {value!r}")
    return float(value)
