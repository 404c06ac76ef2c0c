"""Lens distortion (the OpenCV / COLMAP radial-tangential model) and undistortion of images to pinhole.

Everything downstream (gsplat, the editor) assumes pinhole cameras, so readers of distorted captures
attach a :class:`LensDistortion` per view and :func:`build_dataset` resamples each image, right after
loading it, to the pinhole camera with the SAME size, focal lengths and principal point.

The model works on normalised image coordinates ``x = (u - cx) / fx``, ``y = (v - cy) / fy``::

    r2 = x^2 + y^2
    radial = 1 + k1 r2 + k2 r2^2 + k3 r2^3
    x_d = x radial + 2 p1 x y + p2 (r2 + 2 x^2)
    y_d = y radial + 2 p2 x y + p1 (r2 + 2 y^2)

COLMAP's SIMPLE_RADIAL (k1), RADIAL (k1, k2) and OPENCV (k1, k2, p1, p2) models are special cases.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_NEWTON_ITERATIONS = 10


@dataclass(frozen=True)
class LensDistortion:
    """Radial (k1, k2, k3) and tangential (p1, p2) coefficients of one camera."""

    model: str  # the camera model the coefficients came from (only for messages)
    k1: float = 0.0
    k2: float = 0.0
    k3: float = 0.0
    p1: float = 0.0
    p2: float = 0.0

    def is_identity(self) -> bool:
        return all(c == 0.0 for c in (self.k1, self.k2, self.k3, self.p1, self.p2))

    def _radial(self, r2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The radial factor and its derivative with respect to r2."""
        factor = 1.0 + r2 * (self.k1 + r2 * (self.k2 + r2 * self.k3))
        derivative = self.k1 + r2 * (2.0 * self.k2 + r2 * 3.0 * self.k3)
        return factor, derivative

    def distort(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map ideal (pinhole) normalised coordinates to where the lens actually images them."""
        r2 = x * x + y * y
        radial, _ = self._radial(r2)
        x_d = x * radial + 2.0 * self.p1 * x * y + self.p2 * (r2 + 2.0 * x * x)
        y_d = y * radial + 2.0 * self.p2 * x * y + self.p1 * (r2 + 2.0 * y * y)
        return x_d, y_d

    def undistort(self, x_d: torch.Tensor, y_d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Invert :meth:`distort` by Newton's method (the model has no closed-form inverse)."""
        x, y = x_d.clone(), y_d.clone()
        for _ in range(_NEWTON_ITERATIONS):
            r2 = x * x + y * y
            radial, d_radial = self._radial(r2)
            fx, fy = self.distort(x, y)
            res_x, res_y = fx - x_d, fy - y_d
            # 2x2 Jacobian of distort() at (x, y).
            j_xx = radial + 2.0 * x * x * d_radial + 2.0 * self.p1 * y + 6.0 * self.p2 * x
            j_yy = radial + 2.0 * y * y * d_radial + 2.0 * self.p2 * x + 6.0 * self.p1 * y
            j_xy = 2.0 * x * y * d_radial + 2.0 * self.p1 * x + 2.0 * self.p2 * y
            det = j_xx * j_yy - j_xy * j_xy  # the Jacobian is symmetric
            det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
            x = x - (j_yy * res_x - j_xy * res_y) / det
            y = y - (j_xx * res_y - j_xy * res_x) / det
        return x, y


def pixel_grid(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates (u, v), each [H, W], with centres at +0.5 as in COLMAP and gsplat."""
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float32) + 0.5,
                          torch.arange(width, dtype=torch.float32) + 0.5, indexing="ij")
    return u, v


def sample_image(image: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample ``image`` [H, W, C] at pixel coordinates ``u, v`` [H', W'] (edges clamp)."""
    height, width = image.shape[:2]
    grid = torch.stack([u / width * 2.0 - 1.0, v / height * 2.0 - 1.0], dim=-1)[None]
    out = torch.nn.functional.grid_sample(image.permute(2, 0, 1)[None].float(), grid, mode="bilinear",
                                          padding_mode="border", align_corners=False)
    return out[0].permute(1, 2, 0)


def undistort_image(image: torch.Tensor, intrinsics: tuple[float, float, float, float],
                    distortion: LensDistortion) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample a distorted image [H, W, C] to the pinhole camera with the same ``(fx, fy, cx, cy)``.

    Returns the image and a [H, W] bool map of the pixels that saw the scene: where pincushion distortion
    (k1 > 0) is removed, the corners of the pinhole image fall outside the photograph and hold no data.
    """
    fx, fy, cx, cy = intrinsics
    height, width = image.shape[:2]
    u, v = pixel_grid(height, width)
    x_d, y_d = distortion.distort((u - cx) / fx, (v - cy) / fy)
    u_d, v_d = x_d * fx + cx, y_d * fy + cy
    valid = (u_d >= 0) & (u_d <= width) & (v_d >= 0) & (v_d <= height)
    return sample_image(image, u_d, v_d), valid


def undistort_view(image: torch.Tensor, mask: torch.Tensor | None, intrinsics: tuple[float, float, float, float],
                   distortion: LensDistortion, background: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Undistort one training view: image [H, W, 3] and optional supervision mask [H, W] bool.

    Pixels without data are painted ``background`` and excluded from supervision via the mask.
    """
    undistorted, valid = undistort_image(image, intrinsics, distortion)
    undistorted = torch.where(valid[..., None], undistorted, background.to(undistorted)).clamp(0.0, 1.0)
    if mask is not None:
        resampled, _ = undistort_image(mask[..., None].float(), intrinsics, distortion)
        valid = valid & (resampled[..., 0] > 0.5)
    return undistorted.contiguous(), (None if bool(valid.all()) else valid)
