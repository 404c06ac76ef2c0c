"""Moving Gaussian scenes between world frames: means, scales, rotations AND spherical harmonics.

Three frames matter for a scene trained by splat2splat (``splat2splat export --frame``):

* ``normalized``: the training frame (:class:`~splat2splat.data.dataset.SceneNormalization`: centred on the
  cameras, scaled to unit radius);
* ``dataset``: the frame of the dataset's camera poses (``transforms.json`` / COLMAP), what
  ``SceneNormalization.to_original`` gives;
* ``original``: the capture's own frame before nerfstudio's ``ns-process-data`` re-oriented it. The
  dataset stores that map as ``Dataset.frame_transform`` (nerfstudio's ``applied_transform``):
  ``pose_in_file = applied_transform @ pose_in_original``; without one, ``original`` = ``dataset``.

A frame change here is a similarity ``x -> s R x + t`` (``R`` orthogonal, a reflection allowed, ``s > 0``).
A Gaussian then moves exactly: its mean maps like a point, its covariance becomes ``s^2 R S R^T`` (log-scales
gain ``log s``, the rotation gains ``R`` -- or ``-R`` when ``R`` reflects, the same covariance) and its
view-dependent colour ``c(d)`` becomes ``c(R^T d)``, which is a linear map of each SH band onto itself. That map
is fitted here by least squares on sampled directions with gsplat's own SH basis (exact to float64 rounding,
since SH bands are closed under orthogonal maps), so it follows whatever sign convention the renderer uses.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from gsplat.cuda._torch_impl import _eval_sh_bases_fast

from splat2splat.data.dataset import SceneNormalization
from splat2splat.errors import InputError
from splat2splat.rotations import matrix_to_quaternion, quaternion_multiply

# Directions the SH rotation is fitted on: many more than the 16 bases of degree 3, spread over the sphere.
SH_FIT_DIRECTIONS = 200
ORTHOGONALITY_TOLERANCE = 1e-5  # applied_transform is stored with ~7 significant digits


@dataclass(frozen=True)
class Similarity:
    """``x -> scale * rotation @ x + translation`` with ``rotation`` orthogonal (det +-1) and ``scale > 0``."""

    rotation: tuple[tuple[float, ...], ...]
    scale: float
    translation: tuple[float, float, float]

    @staticmethod
    def from_matrix(matrix: torch.Tensor | np.ndarray, what: str = "frame transform") -> "Similarity":
        """Split a 4x4 (or 3x4) matrix; InputError when it is not a rotation + uniform scale + translation."""
        m = np.asarray(matrix, dtype=np.float64)
        if m.shape not in ((3, 4), (4, 4)) or not np.isfinite(m).all():
            raise InputError(None, f"{what} must be a finite 3x4 or 4x4 matrix, got shape {m.shape}")
        linear = m[:3, :3]
        scale = abs(np.linalg.det(linear)) ** (1.0 / 3.0)
        rotation = linear / max(scale, 1e-300)
        if scale < 1e-12 or not np.allclose(rotation.T @ rotation, np.eye(3), atol=ORTHOGONALITY_TOLERANCE):
            raise InputError(None, f"{what} {m[:3].tolist()} is not a rotation + uniform scale + translation, so "
                                   f"Gaussians cannot be carried across it exactly; use --frame dataset")
        return Similarity(_tuple(rotation), float(scale), tuple(float(v) for v in m[:3, 3]))

    @property
    def rotation_matrix(self) -> np.ndarray:
        return np.array(self.rotation, dtype=np.float64)

    def inverse(self) -> "Similarity":
        rotation_t = self.rotation_matrix.T
        return Similarity(_tuple(rotation_t), 1.0 / self.scale,
                          tuple(float(v) for v in -(rotation_t @ np.array(self.translation)) / self.scale))

    def then(self, other: "Similarity") -> "Similarity":
        """The map that applies ``self`` first, then ``other``."""
        rotation = other.rotation_matrix @ self.rotation_matrix
        translation = other.scale * other.rotation_matrix @ np.array(self.translation) + np.array(other.translation)
        return Similarity(_tuple(rotation), self.scale * other.scale, tuple(float(v) for v in translation))

    def is_identity(self) -> bool:
        return self == IDENTITY

    def apply_to_points(self, points: torch.Tensor) -> torch.Tensor:
        rotation = torch.tensor(self.rotation, dtype=torch.float64, device=points.device)
        translation = torch.tensor(self.translation, dtype=torch.float64, device=points.device)
        return (self.scale * points.double() @ rotation.T + translation).to(points.dtype)

    def apply(self, splats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The Gaussians moved by this map (new tensors, float64 where they changed)."""
        if self.is_identity():
            return dict(splats)
        moved = dict(splats)
        moved["means"] = self.apply_to_points(splats["means"].double())
        moved["scales"] = splats["scales"].double() + math.log(self.scale)
        rotation = self.rotation_matrix
        proper = rotation if np.linalg.det(rotation) > 0 else -rotation  # same covariance R S R^T
        if not np.array_equal(proper, np.eye(3)):
            moved["quats"] = quaternion_multiply(matrix_to_quaternion(proper).to(splats["quats"].device),
                                                 splats["quats"].double())
        degree = int(round(math.sqrt(splats["shN"].shape[1] + 1))) - 1
        if degree > 0 and not np.array_equal(rotation, np.eye(3)):
            sh = torch.cat([splats["sh0"].double(), splats["shN"].double()], dim=1)
            rotated = torch.einsum("jk,nkc->njc", sh_rotation(self.rotation, degree).to(sh.device), sh)
            moved["sh0"], moved["shN"] = rotated[:, :1], rotated[:, 1:]
        return moved


IDENTITY = Similarity(((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)), 1.0, (0.0, 0.0, 0.0))


def frame_similarity(frame_transform: torch.Tensor | None) -> Similarity:
    """``Dataset.frame_transform`` (original frame -> dataset frame; None = identity) as a :class:`Similarity`."""
    if frame_transform is None:
        return IDENTITY
    return Similarity.from_matrix(frame_transform, "the dataset's frame transform (applied_transform)")


def to_file_frame(splats: dict[str, torch.Tensor], normalization: SceneNormalization,
                  frame_transform: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Float32 copies of normalised-frame Gaussians in a file's frame.

    ``frame_transform`` maps the file's frame into the dataset frame: ``Dataset.frame_transform`` for a file
    in the ORIGINAL frame, None for one in the dataset frame. All maths in float64, so the only rounding is
    the final one to float32 (bit-exact with the identity normalisation and no frame transform).
    """
    moved = {key: value.detach().double() for key, value in splats.items()}
    moved["means"] = normalization.to_original(moved["means"])
    moved["scales"] = moved["scales"] - math.log(normalization.scale)
    moved = frame_similarity(frame_transform).inverse().apply(moved)
    return {key: value.float() for key, value in moved.items()}


def from_file_frame(splats: dict[str, torch.Tensor], normalization: SceneNormalization,
                    frame_transform: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Float32 copies of Gaussians read from a file, moved into the normalised frame (inverse of
    :func:`to_file_frame`)."""
    moved = frame_similarity(frame_transform).apply({key: value.detach().double() for key, value in splats.items()})
    moved["means"] = normalization.to_normalized(moved["means"])
    moved["scales"] = moved["scales"] + math.log(normalization.scale)
    return {key: value.float() for key, value in moved.items()}


# ----------------------------------------------------------------------------------------- rotations


@functools.lru_cache(maxsize=16)
def sh_rotation(rotation: tuple[tuple[float, ...], ...], degree: int) -> torch.Tensor:
    """[K, K] float64 matrix ``M`` with ``sum_k M[j, k] c_k`` the SH coefficients of ``d -> c(R^T d)``.

    ``R`` is any orthogonal matrix (reflections included); ``K = (degree + 1)^2`` in gsplat's basis order.
    Block diagonal by band (entries across bands are fitted as ~1e-16 and set to exactly 0).
    """
    bases = (degree + 1) ** 2
    directions = _sphere_directions(SH_FIT_DIRECTIONS)
    rotation_t = torch.tensor(rotation, dtype=torch.float64).T
    basis = _eval_sh_bases_fast(bases, directions)  # Y_j(d)
    rotated_basis = _eval_sh_bases_fast(bases, directions @ rotation_t.T)  # Y_k(R^T d)
    fit = torch.linalg.lstsq(basis, rotated_basis).solution  # basis @ fit = rotated_basis
    band = torch.tensor([int(math.isqrt(k)) for k in range(bases)])
    return torch.where(band[:, None] == band[None, :], fit, torch.zeros_like(fit))


def _sphere_directions(n: int) -> torch.Tensor:
    """``n`` unit vectors spread evenly over the sphere (Fibonacci lattice), float64."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = math.pi * (3.0 - math.sqrt(5.0)) * i
    radius = torch.sqrt(1.0 - z * z)
    return torch.stack([radius * torch.cos(phi), radius * torch.sin(phi), z], dim=1)


def _tuple(matrix: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in np.asarray(matrix))
