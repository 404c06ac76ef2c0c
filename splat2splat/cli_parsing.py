"""How commands parse: tyro with help wrapped by the terminal, and the options read before tyro parses the rest.

``--preset`` sets the defaults of every ``--idu.*`` option; ``--backend`` chooses which backend's options
(``--gaussians.*`` or ``--nerf.*``) the command shows and takes.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from splat2splat.backends import BACKENDS
from splat2splat.errors import InputError

BACKEND_HELP = ("Scene backend: --backend gaussian (3D Gaussians rasterized by gsplat; the default) or --backend nerf "
                "(in2n's NeRF). Each shows and takes only its own options: {prog} --backend nerf --help.")


def option_value(args: list[str], flag: str) -> str | None:
    """The value of the last ``flag VALUE`` or ``flag=VALUE`` in ``args`` (None when absent), as tyro reads it."""
    value = None
    for k, arg in enumerate(args):
        if arg == flag and k + 1 < len(args):
            value = args[k + 1]
        elif arg.startswith(f"{flag}="):
            value = arg.split("=", 1)[1]
    return value


def backend_choice(args: list[str]) -> tuple[str, list[str]]:
    """The backend ``--backend`` names (default gaussian) and ``args`` without that option."""
    name = option_value(args, "--backend") or "gaussian"
    if name not in BACKENDS:
        raise InputError(None, f"unknown backend {name!r}: use --backend {' or --backend '.join(BACKENDS)}")
    rest, skip = [], False
    for k, arg in enumerate(args):
        if skip:
            skip = False
        elif arg == "--backend" and k + 1 < len(args):
            skip = True
        elif not arg.startswith("--backend="):
            rest.append(arg)
    return name, rest


def cli(cls: type, args: list[str], **kwargs: Any) -> Any:
    """``tyro.cli`` with option help as flowing paragraphs, wrapped to the terminal.

    Field docstrings span several indented source lines; tyro keeps a line break before every indented line
    (its dedent skips a first line without indentation), which at any terminal width but the source's leaves
    ragged lines. Each paragraph of a docstring is handed to tyro as one line.
    """
    import tyro

    _flow_field_docstrings()
    return tyro.cli(cls, args=args, **kwargs)


@functools.cache
def _flow_field_docstrings() -> None:
    from tyro import _docstrings

    parse = _docstrings.parse_docstring_from_object

    @functools.lru_cache(maxsize=1024)
    def flowing(obj: object) -> dict[str, str]:
        return {name: flow(text) for name, text in parse(obj).items()}

    _docstrings.parse_docstring_from_object = flowing


def flow(text: str) -> str:
    """``text`` with each paragraph (separated by blank lines) on one line."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines() if line.strip()) for p in paragraphs)
