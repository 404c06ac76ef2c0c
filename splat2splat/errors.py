"""User-facing errors.

Anything a user can cause (a bad file, a bad option) raises :class:`InputError` with ONE line that names
the file and the problem. The CLI prints that line and exits with status 2, never a traceback.
"""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """A problem with the user's input, reported as ``<path>: <problem>``."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = " ".join(str(problem).split())  # always one line
        super().__init__(f"{_printable(self.path)}: {self.problem}" if self.path is not None else self.problem)


def _printable(path: Path) -> str:
    """The path as written, or quoted with escapes when it holds a newline or other control character (a file
    name taken from a corrupt file), so the message stays one line."""
    text = str(path)
    return text if text.isprintable() else repr(text)
