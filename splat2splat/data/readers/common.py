"""Validation helpers shared by the readers: every malformed value becomes ONE InputError naming the file."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from splat2splat.errors import InputError


def finite_number(value: Any, source: Path, what: str, positive: bool = False) -> float:
    """``value`` as a float; an InputError on ``source`` when it is not a finite (positive) number."""
    # bool is an int subclass, but `true` where a focal length belongs is a mistake, not 1.0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(source, f"{what} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        number = math.inf
    if not math.isfinite(number):
        raise InputError(source, f"{what} must be finite, got {value!r}")
    if positive and number <= 0:
        raise InputError(source, f"{what} must be positive, got {value!r}")
    return number


def rigid_matrix(value: Any, source: Path, what: str) -> np.ndarray:
    """A finite 3x4 or 4x4 (last row 0 0 0 1) matrix as float64 [4, 4]; InputError otherwise."""
    try:
        matrix = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(source, f"{what} must be a 3x4 or 4x4 matrix of numbers") from None
    if matrix.shape == (3, 4):
        matrix = np.vstack([matrix, [0.0, 0.0, 0.0, 1.0]])
    if matrix.shape != (4, 4):
        raise InputError(source, f"{what} must be a 3x4 or 4x4 matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise InputError(source, f"{what} contains NaN or infinite values")
    if not np.allclose(matrix[3], [0.0, 0.0, 0.0, 1.0]):
        raise InputError(source, f"{what} must have last row 0 0 0 1, got {matrix[3].tolist()}")
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise InputError(source, f"{what} has a singular rotation part")
    return matrix


def all_or_none(full_size: list[Path], shrunk: list[Path]) -> tuple[list[Path], bool]:
    """Use pre-shrunk copies (``images_N``) only when EVERY view has one, so all views share one resolution.

    Returns the chosen paths and whether they are the shrunk ones.
    """
    if shrunk and all(path.is_file() for path in shrunk):
        return shrunk, True
    return full_size, False


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, reading only its header."""
    if not path.is_file():
        raise InputError(path, "image file is missing")
    try:
        with Image.open(path) as image:
            return image.size
    except Exception as exc:  # PIL raises several types for unreadable files
        raise InputError(path, f"cannot read image ({exc})") from None
