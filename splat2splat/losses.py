"""Image losses shared by every backend: L1, D-SSIM (3DGS) and LPIPS (in2n), as one weighted sum.

LPIPS compares either the whole images or, as in2n's perceptual term sees its ray batch, random square
patches of them (:class:`LpipsPatches`); the L1 and D-SSIM terms always take the whole images. Patch positions
come from the generator the caller passes (a backend passes its own, which its checkpoint holds, so a resumed
run draws the same patches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from splat2splat.kernels.ssim import ssim, weighted_l1_dssim


@dataclass
class LossWeights:
    """Weights of the photometric loss terms."""

    l1: float = 0.8
    """Weight of the mean absolute error."""
    dssim: float = 0.2
    """Weight of (1 - SSIM); 3DGS uses 0.2 with L1 at 0.8."""
    lpips: float = 0.0
    """Weight of LPIPS (in2n uses 1.0 with L1 at 1.0); needs the LPIPS backbone weights."""


@dataclass(frozen=True)
class LpipsPatches:
    """LPIPS over ``count`` random ``size`` x ``size`` patches of a batch (in2n: 16 of 32 x 32)."""

    count: int
    size: int


def random_patches(shape: torch.Size | tuple[int, ...], patches: LpipsPatches,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image index, top row, left column) of ``patches.count`` patches of a [B, H, W, C] batch, each drawn
    uniformly over every position where the patch fits (as nerfstudio's patch sampler; patches may overlap)."""
    batch, height, width = shape[0], shape[1], shape[2]
    if height < patches.size or width < patches.size:
        raise ValueError(f"{patches.size}x{patches.size} LPIPS patches do not fit {width}x{height} images")
    image = torch.randint(0, batch, (patches.count,), generator=generator)
    top = torch.randint(0, height - patches.size + 1, (patches.count,), generator=generator)
    left = torch.randint(0, width - patches.size + 1, (patches.count,), generator=generator)
    return image, top, left


def crop_patches(images: torch.Tensor, image: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                 size: int) -> torch.Tensor:
    """The [N, size, size, C] patches of [B, H, W, C] ``images`` at the given positions (differentiable)."""
    offsets = torch.arange(size)
    rows = (top[:, None] + offsets)[:, :, None]  # [N, size, 1]
    columns = (left[:, None] + offsets)[:, None, :]  # [N, 1, size]
    index = (image[:, None, None], rows, columns)
    return images[tuple(i.to(images.device) for i in index)]


class PhotometricLoss:
    """``loss(pred, target, generator)`` on [B, H, W, 3] batches; implements :class:`splat2splat.scene.ImageLoss`.

    ``lpips_patches``: LPIPS over random patches of the batch, drawn from ``generator``; None: over the batch
    as it is (whole images, or the NeRF's ray patches)."""

    def __init__(self, weights: LossWeights, lpips: torch.nn.Module | None = None,
                 lpips_patches: LpipsPatches | None = None):
        if weights.lpips > 0 and lpips is None:
            raise ValueError("an LPIPS weight > 0 needs an LPIPS module")
        self.weights = weights
        self.lpips = lpips
        self.lpips_patches = lpips_patches

    def __call__(self, pred: torch.Tensor, target: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        w = self.weights
        terms: dict[str, torch.Tensor] = {}  # each weighted term, for the stats
        losses: list[torch.Tensor] = []
        if w.dssim:
            # L1 and D-SSIM together: one fused kernel pass each way where it builds.
            loss, l1, ssim_value = weighted_l1_dssim(pred, target, w.l1, w.dssim)
            losses.append(loss)
            if w.l1:
                terms["l1"] = w.l1 * l1
            terms["dssim"] = w.dssim * (1.0 - ssim_value)
        elif w.l1:
            terms["l1"] = w.l1 * (pred - target).abs().mean()
            losses.append(terms["l1"])
        if w.lpips:
            if self.lpips is not None and next(self.lpips.parameters(), torch.empty(0)).device != pred.device:
                self.lpips.to(pred.device)
            terms["lpips"] = w.lpips * self.lpips(*self.lpips_inputs(pred, target, generator)).mean()
            losses.append(terms["lpips"])
        return sum(losses), {name: float(value.detach()) for name, value in terms.items()}

    def lpips_inputs(self, pred: torch.Tensor, target: torch.Tensor,
                     generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """What LPIPS compares: the batch itself, or the same random patches of prediction and target."""
        if self.lpips_patches is None:
            return pred, target
        if generator is None:
            raise ValueError("patch LPIPS draws its patch positions from the caller's generator; none was passed")
        positions = random_patches(pred.shape, self.lpips_patches, generator)
        size = self.lpips_patches.size
        return crop_patches(pred, *positions, size), crop_patches(target, *positions, size)


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of images in [0, 1] with mean squared error ``mse`` (floored so identical images stay finite)."""
    return -10.0 * math.log10(max(mse, 1e-10))


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    return psnr_from_mse(float(torch.mean((pred.float() - target.float()) ** 2)))


def image_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """PSNR (dB) and SSIM of one [H, W, 3] image against its target."""
    return {"psnr": psnr(pred, target), "ssim": float(ssim(pred[None].float(), target[None].float()))}
