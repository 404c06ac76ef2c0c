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
    """Rebuild dataclass ``cls`` from :func:`config_to_dict`'s output (unknown keys are an error)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        kwargs[f.name] = _convert(hints[f.name], values[f.name])
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}")
    return cls(**kwargs)


def _convert(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return config_from_dict(hint, value)
    if origin is typing.Union or origin is types.UnionType:
        for arg in args:
            if arg is not type(None):
                return _convert(arg, value)
    if hint is Path:
        return Path(value)
    if origin is tuple:
        return tuple(value)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
