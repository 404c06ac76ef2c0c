"""Command and preset dataclasses to and from plain dicts (for checkpoints and run.json).

A checkpoint stores the command that started the run as a plain dict, so ``--resume`` rebuilds exactly
that command, and an old checkpoint stays readable when classes move.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def config_to_dict(config: Any) -> dict:
    """Nested dataclasses -> dicts; paths -> strings; tuples -> lists (JSON-friendly)."""
    return _plain(dataclasses.asdict(config))


def config_from_dict(cls: type[T], values: dict) -> T:
    """Rebuild dataclass ``cls`` from :func:`config_to_dict`'s output.

    Unknown keys and values of the wrong type are a ``ValueError`` naming the field (saved files are input
    like any other: a hand-edited command.json must not reach the code as a string where a number belongs).
    """
    if not isinstance(values, dict):
        raise ValueError(f"{cls.__name__} must be a JSON object, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}")
    kwargs = {name: _convert(hints[name], values[name], name) for name in names if name in values}
    return cls(**kwargs)


def _convert(hint: Any, value: Any, name: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return config_from_dict(hint, value)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        return _convert(options[0] if len(options) == 1 else Any, value, name)
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"'{name}' must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"'{name}' must be a list, got {value!r}")
        item_types = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if args and len(item_types) != len(value):
            raise ValueError(f"'{name}' must have {len(item_types)} items, got {len(value)}")
        return tuple(_convert(t, v, name) for t, v in zip(item_types, value)) if args else tuple(value)
    expected = {Path: str, bool: bool, int: int, float: (int, float), str: str}.get(hint)
    if expected is not None:
        wrong_bool = isinstance(value, bool) and hint is not bool  # true is no number of steps
        if wrong_bool or not isinstance(value, expected):
            raise ValueError(f"'{name}' must be {hint.__name__ if hint is not Path else 'a path string'}, "
                             f"got {value!r}")
        return Path(value) if hint is Path else float(value) if hint is float else value
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
