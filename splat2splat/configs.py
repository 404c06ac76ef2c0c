"""Command and preset dataclasses to and from plain dicts (for checkpoints, command.json and run.json).

A checkpoint stores the command that started the run as a plain dict, so ``--resume`` rebuilds exactly
that command, and an old checkpoint stays readable when classes move. Those dicts come from files, so
:func:`config_from_dict` checks every value against its field's type and reports a mismatch as ONE
:class:`InputError` naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from splat2splat.errors import InputError

T = TypeVar("T")


def config_to_dict(config: Any) -> dict:
    """Nested dataclasses -> dicts; paths -> strings; tuples -> lists (JSON-friendly)."""
    return _plain(dataclasses.asdict(config))


def config_from_dict(cls: type[T], values: Any, source: str | Path | None = None, where: str | None = None) -> T:
    """Rebuild dataclass ``cls`` from :func:`config_to_dict`'s output.

    Unknown keys, values of the wrong type (``"steps": "ten"``), unknown choices and values a class's own
    checks refuse raise :class:`InputError` on ``source`` (the file the dict was read from) naming the field.
    Missing keys take the field's default. ``where`` names the dict in messages (default: the class name).
    """
    return _dataclass(cls, values, source, where or cls.__name__)


def _dataclass(cls: type[T], values: Any, source: str | Path | None, where: str) -> T:
    if not isinstance(values, dict):
        raise InputError(source, f"{where} must be an object of settings, got {_describe(values)}")
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    unknown = set(values) - {f.name for f in fields}
    if unknown:
        raise InputError(source, f"{where} has no field(s) {', '.join(sorted(map(str, unknown)))}")
    kwargs = {f.name: _convert(hints[f.name], values[f.name], source, f"{where}.{f.name}")
              for f in fields if f.name in values}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # the class's own checks (__post_init__)
        raise InputError(source, f"{where}: {exc}") from None


def _convert(hint: Any, value: Any, source: str | Path | None, where: str) -> Any:
    """``value`` as an instance of the type ``hint`` (JSON lists become tuples, strings Paths)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _dataclass(hint, value, source, where)
    if origin is typing.Union or origin is types.UnionType:
        return _convert_union(args, value, source, where)
    if origin is typing.Literal:
        if not any(type(value) is type(choice) and value == choice for choice in args):
            raise InputError(source, f"{where} must be one of {', '.join(map(repr, args))}, got {_describe(value)}")
        return value
    if origin is tuple:
        return _convert_tuple(args, value, source, where)
    if origin is list:
        if not isinstance(value, list):
            raise InputError(source, f"{where} must be a list, got {_describe(value)}")
        return [_convert(args[0], item, source, f"{where}[{k}]") for k, item in enumerate(value)] if args else value
    return _convert_scalar(hint, value, source, where)


def _convert_union(args: tuple, value: Any, source: str | Path | None, where: str) -> Any:
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _convert(arg, value, source, where)
        except InputError as exc:
            errors.append(exc.problem)
    raise InputError(source, errors[0] if len(errors) == 1 else f"{where} has no allowed type: {'; '.join(errors)}")


def _convert_tuple(args: tuple, value: Any, source: str | Path | None, where: str) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise InputError(source, f"{where} must be a list, got {_describe(value)}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(args[0], item, source, f"{where}[{k}]") for k, item in enumerate(value))
    if args and len(value) != len(args):
        raise InputError(source, f"{where} must have {len(args)} entries, got {len(value)}")
    return tuple(_convert(arg, item, source, f"{where}[{k}]") for k, (arg, item) in enumerate(zip(args, value))) \
        if args else tuple(value)


def _convert_scalar(hint: Any, value: Any, source: str | Path | None, where: str) -> Any:
    """bool, int, float, str and Path fields; other types are passed through unchecked."""
    expected = {bool: "true or false", int: "a whole number (64-bit)", float: "a number", str: "a string",
                Path: "a path string"}
    if hint not in expected:
        return value
    ok = {
        bool: isinstance(value, bool),
        # Whole numbers end up in torch and numpy (seeds, sizes): beyond int64 they would overflow there.
        int: isinstance(value, int) and not isinstance(value, bool) and -(1 << 63) <= value < (1 << 63),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        Path: isinstance(value, (str, Path)) and "\0" not in str(value),
    }[hint]
    if not ok:
        raise InputError(source, f"{where} must be {expected[hint]}, got {_describe(value)}")
    if hint is float:
        try:
            return float(value)
        except OverflowError:  # an integer too large for a float
            raise InputError(source, f"{where} is too large, got an integer of {value.bit_length()} bits") from None
    return Path(value) if hint is Path else value


def _describe(value: Any, limit: int = 60) -> str:
    """A short description of a bad value for a one-line message (a 10^5-digit integer must not flood it)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of about {math.ceil(value.bit_length() * math.log10(2))} digits"
    try:
        text = repr(value)
    except ValueError:  # a container holding an integer of more than 4300 digits
        return f"a {type(value).__name__} holding a huge number"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
