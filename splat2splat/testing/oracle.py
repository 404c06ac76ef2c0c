"""An editor with a known, 3D-consistent answer, for measuring how faithfully an edit run reaches its target.

InstructPix2Pix has no ground truth: nobody knows what "make it autumn" should look like from a new
camera. The :class:`OracleEditor` does. Its edit target is a fixed affine colour transform
(:class:`ColorTransform`) of the ORIGINAL image, and the same transform applied to the original
Gaussians' colours (:meth:`ColorTransform.apply_to_splats`) gives a target SCENE, so a target render
exists for every camera, training or held out:

    target render = render(transform.apply_to_splats(original splats), background=transform(background))

Like IP2P, a single edit is imperfect and not consistent across views, which is what the Iterative
Dataset Update has to average out:

* a noise level ``t`` is drawn from ``noise_range`` (IP2P's timestep fraction) and the result is
  ``t * target + (1 - t) * render``: little noise keeps the render, much noise gives the target;
* the transform is jittered per call (each matrix entry moves by ``jitter`` times a standard normal);
* a few Gaussian-shaped colour blobs of random position, size and colour are painted in per call
  (per-view hallucinations), with an opacity ``t * blob_strength`` that, like IP2P's invented detail,
  grows with the noise level.

All randomness comes from the caller's generator in a fixed order (level, jitter, blobs) and the number of
draws depends only on ``blobs``, so a seed fixes the edit, and changing ``jitter``, ``blob_strength`` or
``blob_size`` alone keeps the drawn level and the blobs' positions and colours.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from splat2splat.edit.ip2p_steps import check_noise_range
from splat2splat.imaging import resize_image
from splat2splat.gaussians.model import SH_C0

# A warm, sepia-like grade. All entries are >= 0 and every row sum plus its offset is <= 1, so it maps
# the colour cube [0, 1]^3 into itself: targets never need clamping, and the target scene is exactly
# representable (see ColorTransform.apply_to_splats).
WARM_MATRIX = ((0.68, 0.25, 0.05),
               (0.15, 0.68, 0.10),
               (0.08, 0.17, 0.50))
WARM_OFFSET = (0.02, 0.02, 0.0)
BLOB_SIZE_RANGE = (0.5, 1.5)  # a blob's standard deviation is blob_size times a factor drawn from here


@dataclass(frozen=True)
class ColorTransform:
    """The affine colour map ``c -> matrix @ c + offset`` on RGB colours (no clamping)."""

    matrix: tuple[tuple[float, float, float], ...] = WARM_MATRIX
    """3x3 matrix, row i gives output channel i (default: a warm, sepia-like grade)."""
    offset: tuple[float, float, float] = WARM_OFFSET
    """Added to every colour after the matrix."""

    def matrix_tensor(self, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.matrix, dtype=like.dtype, device=like.device)

    def offset_tensor(self, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.offset, dtype=like.dtype, device=like.device)

    def apply_to_image(self, image: torch.Tensor) -> torch.Tensor:
        """Transform colours [..., 3] (an image, a background colour); the result is NOT clamped."""
        return image @ self.matrix_tensor(image).T + self.offset_tensor(image)

    def apply_to_splats(self, splats: dict[str, torch.Tensor]) -> torch.nn.ParameterDict:
        """A copy of the Gaussians whose rendered colours are the transformed colours.

        A Gaussian's colour in direction d is ``max(0, SH(d) . coeffs + 0.5)`` with the DC basis constant
        ``SH_C0``. Writing ``s = SH(d) . coeffs``, the target colour ``M (s + 0.5) + b`` equals
        ``M s + (0.5 M 1 + b - 0.5) + 0.5``: the direction-dependent part maps through ``M`` alone (every
        SH coefficient is multiplied by ``M``), and the constant ``0.5 M 1 + b - 0.5`` goes into the DC
        term divided by ``SH_C0``. So ``sh0' = (M (SH_C0 sh0 + 0.5) + b - 0.5) / SH_C0`` and
        ``shN' = M shN``. This is exact BEFORE the rasterizer's clamp at 0: where an original colour is
        negative (clamped) the two disagree. Compositing is affine in the colours with weights summing to
        one together with the background, so renders match exactly when the background is transformed too.
        Geometry (means, scales, rotations, opacities) is copied unchanged.
        """
        sh0, shN = splats["sh0"].detach(), splats["shN"].detach()
        matrix, offset = self.matrix_tensor(sh0), self.offset_tensor(sh0)
        new_sh0 = (((SH_C0 * sh0 + 0.5) @ matrix.T) + offset - 0.5) / SH_C0
        new_shN = shN @ matrix.T
        copied = {key: value.detach().clone() for key, value in splats.items() if key not in ("sh0", "shN")}
        return torch.nn.ParameterDict({key: torch.nn.Parameter(value) for key, value in
                                       {**copied, "sh0": new_sh0, "shN": new_shN}.items()})

    def jittered(self, noise: torch.Tensor, amount: float) -> ColorTransform:
        """This transform with ``amount * noise`` ([3, 3] standard normals) added to the matrix."""
        matrix = torch.tensor(self.matrix, dtype=torch.float64) + amount * noise.double()
        return ColorTransform(tuple(tuple(float(v) for v in row) for row in matrix), self.offset)


@dataclass
class OracleEditor:
    """Implements :class:`~splat2splat.edit.editor.Editor`: a noisy, view-inconsistent edit towards a
    known target (:meth:`target_image` for the dataset's views, ``transform.apply_to_splats`` for the scene)."""

    transform: ColorTransform = field(default_factory=ColorTransform)
    """The edit: the target image is this transform of the original image."""
    jitter: float = 0.03
    """Standard deviation of the per-edit random change of each matrix entry (0: every view gets the same transform)."""
    blobs: int = 3
    """Number of random colour blobs painted into each edit (per-view, inconsistent local changes)."""
    blob_strength: float = 0.5
    """Peak opacity of a blob at noise level 1 (scaled by the drawn level; 0 disables blobs)."""
    blob_size: float = 0.1
    """Typical blob standard deviation as a fraction of the image's shorter side (each blob draws a factor
    in [0.5, 1.5] of it)."""

    def target_image(self, original: torch.Tensor) -> torch.Tensor:
        """The perfect, view-consistent edit of an original image (clamped to [0, 1])."""
        return self.transform.apply_to_image(original).clamp(0, 1)

    def edit(self, render: torch.Tensor, original: torch.Tensor, prompt: str,
             noise_range: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
        """Blend ``render`` towards the jittered target by a drawn level, then paint blobs; [H, W, 3] in [0, 1].

        ``prompt`` is ignored: the oracle knows its edit.
        """
        lower, upper = check_noise_range(noise_range)
        level = lower + (upper - lower) * torch.rand((), generator=generator).item()
        jitter_noise = torch.randn(3, 3, generator=generator)
        blob_draws = draw_blobs(self.blobs, generator)

        render = render.detach()
        original = resize_image(original.detach(), tuple(render.shape[:2])).to(render.device, render.dtype)
        target = self.transform.jittered(jitter_noise, self.jitter).apply_to_image(original).clamp(0, 1)
        edited = level * target + (1 - level) * render
        edited = paint_blobs(edited, blob_draws, self.blob_size, level * self.blob_strength)
        return edited.clamp(0, 1)


@dataclass
class BlobDraws:
    """Random parameters of the blobs of one edit, in units independent of the image size."""

    centers: torch.Tensor  # [B, 2] (x, y) as fractions of width and height
    size_factors: torch.Tensor  # [B] multiplies the editor's blob_size
    colors: torch.Tensor  # [B, 3] in [0, 1]


def draw_blobs(count: int, generator: torch.Generator) -> BlobDraws:
    low, high = BLOB_SIZE_RANGE
    return BlobDraws(centers=torch.rand(count, 2, generator=generator),
                     size_factors=low + (high - low) * torch.rand(count, generator=generator),
                     colors=torch.rand(count, 3, generator=generator))


def paint_blobs(image: torch.Tensor, draws: BlobDraws, blob_size: float, opacity: float) -> torch.Tensor:
    """Blend each blob's colour over ``image`` [H, W, 3] with a Gaussian opacity profile peaking at ``opacity``.

    Each blob is a convex blend (opacity <= 1), so an image in [0, 1] stays in [0, 1].
    """
    if len(draws.colors) == 0 or opacity == 0.0:
        return image
    height, width = image.shape[:2]
    ys = torch.arange(height, device=image.device, dtype=image.dtype) + 0.5
    xs = torch.arange(width, device=image.device, dtype=image.dtype) + 0.5
    for center, size_factor, color in zip(draws.centers, draws.size_factors, draws.colors):
        sigma = max(float(size_factor) * blob_size * min(height, width), 1e-3)
        dx2 = (xs - float(center[0]) * width) ** 2
        dy2 = (ys - float(center[1]) * height) ** 2
        profile = torch.exp(-(dy2[:, None] + dx2[None, :]) / (2 * sigma * sigma))[..., None]  # [H, W, 1]
        weight = min(opacity, 1.0) * profile
        image = image + weight * (color.to(image) - image)
    return image

