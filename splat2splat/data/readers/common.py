"""Validation helpers shared by the readers: every malformed value becomes ONE InputError naming the file."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from splat2splat.errors import InputError
from splat2splat.io import EXIF_ORIENTATION_TAG, SIDEWAYS_ORIENTATIONS, is_file

# Largest image side a camera may claim. Far beyond any photograph (PIL refuses decoding ~180 Mpixel
# images anyway), and small enough that sizes and intrinsics never overflow an int64 or a float32.
MAX_IMAGE_SIDE = 1 << 18
# Tolerance on R^T R - I (and on |det R| - 1) for the rotation part of a pose: far above float32 rounding
# of a real rotation (~1e-7), far below any scale or shear a tool could have meant.
ROTATION_TOLERANCE = 1e-3
# Every number ends up in a float32 tensor: a larger finite float64 would silently become infinite there.
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # smallest normal positive float32
OUTSIDE_PATHS_HINT = "pass --allow-paths-outside-data if this is intended"


def finite_number(value: Any, source: Path, what: str, positive: bool = False) -> float:
    """``value`` as a float; an InputError on ``source`` when it is not a finite (positive) number."""
    # bool is an int subclass, but `true` where a focal length belongs is a mistake, not 1.0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(source, f"{what} must be a number, got {short_repr(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        number = math.inf
    if not abs(number) <= FLOAT32_MAX:  # also false for NaN
        raise InputError(source, f"{what} must be finite (within float32 range), got {short_repr(value)}")
    if positive and not number >= FLOAT32_TINY:  # a positive float64 can still be 0 in float32
        raise InputError(source, f"{what} must be positive, got {short_repr(value)}")
    return number


def image_side(value: float | int, source: Path, what: str) -> int:
    """A camera's width or height: a whole number of pixels from 1 to :data:`MAX_IMAGE_SIDE`."""
    if not 1 <= value <= MAX_IMAGE_SIDE:
        raise InputError(source, f"{what} must be between 1 and {MAX_IMAGE_SIDE} pixels, got {short_repr(value)}")
    return int(round(value))


def rigid_matrix(value: Any, source: Path, what: str) -> np.ndarray:
    """A finite 3x4 or 4x4 (last row 0 0 0 1) rigid matrix (a rotation and a translation) as float64 [4, 4].

    A scale, shear or reflection in the rotation part is refused: every camera model here assumes
    orthonormal camera axes, and such a pose would silently distort the scene.
    """
    try:
        matrix = np.asarray(value, dtype=np.float64)
    except OverflowError:  # an integer too large for a float
        raise InputError(source, f"{what} contains a number too large for a float") from None
    except (TypeError, ValueError):
        raise InputError(source, f"{what} must be a 3x4 or 4x4 matrix of numbers") from None
    if matrix.shape == (3, 4):
        matrix = np.vstack([matrix, [0.0, 0.0, 0.0, 1.0]])
    if matrix.shape != (4, 4):
        raise InputError(source, f"{what} must be a 3x4 or 4x4 matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise InputError(source, f"{what} contains NaN or infinite values")
    if not (np.abs(matrix) <= FLOAT32_MAX).all():
        raise InputError(source, f"{what} contains numbers too large for float32")
    if not np.allclose(matrix[3], [0.0, 0.0, 0.0, 1.0]):
        raise InputError(source, f"{what} must have last row 0 0 0 1, got {matrix[3].tolist()}")
    check_rotation(matrix[:3, :3], source, what)
    return matrix


def check_rotation(rotation: np.ndarray, source: Path, what: str) -> None:
    """InputError unless ``rotation`` [3, 3] is orthonormal with determinant +1 (within :data:`ROTATION_TOLERANCE`)."""
    with np.errstate(over="ignore", invalid="ignore"):  # huge finite entries overflow to inf: not orthonormal either
        error = float(np.abs(rotation.T @ rotation - np.eye(3)).max())
        determinant = float(np.linalg.det(rotation))
    if not error <= ROTATION_TOLERANCE:  # `not <=` so that NaN fails too
        raise InputError(source, f"{what} has a rotation part that is not orthonormal (max |R^T R - I| = {error:.3g}, "
                                 f"tolerance {ROTATION_TOLERANCE:g}): scaled or sheared camera axes are not supported")
    if determinant < 0:
        raise InputError(source, f"{what} has a rotation part with determinant {determinant:.3g}: "
                                 "a reflection, not a rotation (mixed-up axis conventions?)")


def all_or_none(full_size: list[Path], shrunk: list[Path]) -> tuple[list[Path], bool]:
    """Use pre-shrunk copies (``images_N``) only when EVERY view has one, so all views share one resolution.

    Returns the chosen paths and whether they are the shrunk ones.
    """
    if shrunk and all(is_file(path) for path in shrunk):
        return shrunk, True
    return full_size, False


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file as :func:`splat2splat.io.load_image` returns it (EXIF orientation
    applied), reading only its header."""
    if not is_file(path):
        raise InputError(path, "image file is missing")
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(EXIF_ORIENTATION_TAG)
    except Exception as exc:  # PIL raises several types for unreadable files
        raise InputError(path, f"cannot read image ({exc})") from None
    return (height, width) if orientation in SIDEWAYS_ORIENTATIONS else (width, height)


def inside_dataset(path: Path, root: Path, source: Path, what: str, allow_outside: bool = False) -> Path:
    """``path`` unchanged, after checking that it lies inside the dataset folder ``root``.

    A dataset is untrusted input: ``../../secret.png`` or an absolute path in it must not make us read
    files elsewhere. Symlinks are followed (resolved) before the check, so a link out of the folder
    counts as outside; ``allow_outside`` lifts the check for datasets that deliberately point elsewhere.
    """
    if allow_outside:
        return path
    try:
        inside = path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError, ValueError) as exc:  # symlink loops, NUL bytes
        raise InputError(source, f"{what} {str(path)!r} cannot be resolved ({exc})") from None
    if not inside:
        raise InputError(source, f"{what} {str(path)!r} lies outside the dataset folder {str(root)!r}; "
                                 f"{OUTSIDE_PATHS_HINT}")
    return path


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, so a 10^5-digit number still gives a one-line message."""
    try:
        text = repr(value)
    except ValueError:  # int.__repr__ refuses integers with more than 4300 digits
        text = f"<an integer of about {value.bit_length() * 0.30103:.0f} digits>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
