"""Rotations as (w, x, y, z) unit quaternions (gsplat's and COLMAP's order) and 3x3 matrices: one
implementation for cameras, Gaussians, file formats and camera paths."""

from __future__ import annotations

import math

import numpy as np
import torch


def quaternion_to_matrix(quats: torch.Tensor) -> torch.Tensor:
    """[..., 4] unit quaternions (w, x, y, z: gsplat's and COLMAP's order) -> [..., 3, 3] rotation matrices."""
    w, x, y, z = quats.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(*quats.shape[:-1], 3, 3)


def matrix_to_quaternion(rotation: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A proper [3, 3] rotation matrix as a unit (w, x, y, z) quaternion, float64 (Shepperd's method: stable for
    every rotation, 180-degree turns included)."""
    m = np.asarray(torch.as_tensor(rotation).detach().double().cpu())
    trace = np.trace(m)
    candidates = np.array([trace, m[0, 0], m[1, 1], m[2, 2]])
    i = int(np.argmax(candidates))
    if i == 0:
        w = math.sqrt(1.0 + trace) / 2
        q = [w, (m[2, 1] - m[1, 2]) / (4 * w), (m[0, 2] - m[2, 0]) / (4 * w), (m[1, 0] - m[0, 1]) / (4 * w)]
    elif i == 1:
        x = math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) / 2
        q = [(m[2, 1] - m[1, 2]) / (4 * x), x, (m[0, 1] + m[1, 0]) / (4 * x), (m[0, 2] + m[2, 0]) / (4 * x)]
    elif i == 2:
        y = math.sqrt(1.0 - m[0, 0] + m[1, 1] - m[2, 2]) / 2
        q = [(m[0, 2] - m[2, 0]) / (4 * y), (m[0, 1] + m[1, 0]) / (4 * y), y, (m[1, 2] + m[2, 1]) / (4 * y)]
    else:
        z = math.sqrt(1.0 - m[0, 0] - m[1, 1] + m[2, 2]) / 2
        q = [(m[1, 0] - m[0, 1]) / (4 * z), (m[0, 2] + m[2, 0]) / (4 * z), (m[1, 2] + m[2, 1]) / (4 * z), z]
    quaternion = torch.tensor(q, dtype=torch.float64)
    return quaternion / quaternion.norm()


def quaternion_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``a * b`` of (w, x, y, z) quaternions (broadcasting): rotate by ``b``, then by ``a``."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz,
                        aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx,
                        aw * bz + ax * by - ay * bx + az * bw], dim=-1)


def slerp(q0: torch.Tensor, q1: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation of unit quaternions along the shorter arc."""
    dot = float(q0 @ q1)
    if dot < 0:  # q and -q are one rotation: take the shorter way round
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly equal: linear is exact enough and avoids dividing by sin(~0)
        q = q0 + t * (q1 - q0)
        return q / q.norm()
    angle = torch.arccos(torch.tensor(min(dot, 1.0), dtype=torch.float64))
    w0, w1 = torch.sin((1 - t) * angle) / torch.sin(angle), torch.sin(t * angle) / torch.sin(angle)
    return (w0.to(q0.dtype) * q0 + w1.to(q1.dtype) * q1)
