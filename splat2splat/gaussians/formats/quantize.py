"""Fixed-point helpers the 8-bit / packed formats share: rounding quantisers, smallest-three quaternions,
a Morton (Z-order) sort, and checked little-endian array views."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from splat2splat.errors import InputError


def quantize(values: np.ndarray, bits: int) -> np.ndarray:
    """[0, 1] -> the nearest of 0 .. 2^bits - 1 (rounding, not truncating; clamped), as uint32."""
    top = (1 << bits) - 1
    return np.clip(np.floor(np.asarray(values, dtype=np.float64) * top + 0.5), 0, top).astype(np.uint32)


def dequantize(codes: np.ndarray, bits: int) -> np.ndarray:
    return (np.asarray(codes, dtype=np.uint32) & ((1 << bits) - 1)).astype(np.float64) / ((1 << bits) - 1)


def to_byte(values: np.ndarray) -> np.ndarray:
    """Real values in 0..255 -> uint8 by rounding (clamped)."""
    return np.clip(np.floor(np.asarray(values, dtype=np.float64) + 0.5), 0, 255).astype(np.uint8)


def normalized_quaternions(quats: np.ndarray) -> np.ndarray:
    quats = np.asarray(quats, dtype=np.float64)
    return quats / np.linalg.norm(quats, axis=1, keepdims=True)


def smallest_three(quats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit quaternions with their largest-magnitude component made positive (q and -q are one rotation).

    Returns (index of the largest component [N], the other three in order [N, 3]).
    """
    quats = normalized_quaternions(quats)
    largest = np.argmax(np.abs(quats), axis=1)
    rows = np.arange(len(quats))
    quats = quats * np.where(quats[rows, largest] < 0, -1.0, 1.0)[:, None]
    keep = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    return largest, quats[rows[:, None], keep]


def from_smallest_three(largest: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Inverse of :func:`smallest_three`: the largest component is sqrt(1 - |others|^2)."""
    n = len(largest)
    quats = np.zeros((n, 4), dtype=np.float64)
    keep = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    rows = np.arange(n)
    quats[rows[:, None], keep] = others
    quats[rows, largest] = np.sqrt(np.maximum(0.0, 1.0 - (others ** 2).sum(axis=1)))
    return quats


def morton_order(points: np.ndarray) -> np.ndarray:
    """Indices sorting points along a Z-order curve (10 bits per axis over their bounding box), so the
    256-Gaussian chunks of a compressed PLY stay spatially tight."""
    points = np.asarray(points, dtype=np.float64)
    low, high = points.min(axis=0), points.max(axis=0)
    cells = np.floor((points - low) / np.where(high > low, high - low, 1.0) * 1023).clip(0, 1023).astype(np.uint64)
    code = np.zeros(len(points), dtype=np.uint64)
    for bit in range(10):
        for axis in range(3):
            code |= ((cells[:, axis] >> np.uint64(bit)) & np.uint64(1)) << np.uint64(3 * bit + axis)
    return np.argsort(code, kind="stable")


def check_claimed_size(path: Path, kind: str, count: int, bytes_each: int, available: int, what: str = "Gaussians"
                       ) -> None:
    """Refuse a count the file cannot hold before allocating anything for it."""
    if count * bytes_each > available:
        raise InputError(path, f"truncated or corrupt {kind}: it claims {count} {what} ({count * bytes_each} bytes) "
                               f"but holds only {available} bytes of data")


def log_or_nan(values: np.ndarray) -> np.ndarray:
    """Natural log with non-positive values as NaN (so the finiteness check names them)."""
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(values > 0, np.log(np.where(values > 0, values, 1.0)), math.nan)
