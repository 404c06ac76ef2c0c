"""Image losses shared by every backend: L1, D-SSIM (3DGS) and LPIPS (in2n), as one weighted sum."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from splat2splat.kernels.ssim import ssim


@dataclass
class LossWeights:
    """Weights of the photometric loss terms."""

    l1: float = 0.8
    """Weight of the mean absolute error."""
    dssim: float = 0.2
    """Weight of (1 - SSIM); 3DGS uses 0.2 with L1 at 0.8."""
    lpips: float = 0.0
    """Weight of LPIPS (in2n uses 1.0 with L1 at 1.0); needs the LPIPS backbone weights."""


class PhotometricLoss:
    """``loss(pred, target)`` on [B, H, W, 3] batches; implements :data:`splat2splat.scene.ImageLoss`."""

    def __init__(self, weights: LossWeights, lpips: torch.nn.Module | None = None):
        if weights.lpips > 0 and lpips is None:
            raise ValueError("an LPIPS weight > 0 needs an LPIPS module")
        self.weights = weights
        self.lpips = lpips

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        w = self.weights
        terms: dict[str, torch.Tensor] = {}
        if w.l1:
            terms["l1"] = w.l1 * (pred - target).abs().mean()
        if w.dssim:
            terms["dssim"] = w.dssim * (1.0 - ssim(pred, target))
        if w.lpips:
            if self.lpips is not None and next(self.lpips.parameters(), torch.empty(0)).device != pred.device:
                self.lpips.to(pred.device)
            terms["lpips"] = w.lpips * self.lpips(pred, target).mean()
        loss = sum(terms.values())
        return loss, {name: float(value.detach()) for name, value in terms.items()}


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of images in [0, 1] with mean squared error ``mse`` (floored so identical images stay finite)."""
    return -10.0 * math.log10(max(mse, 1e-10))


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    return psnr_from_mse(float(torch.mean((pred.float() - target.float()) ** 2)))


def image_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """PSNR (dB) and SSIM of one [H, W, 3] image against its target."""
    return {"psnr": psnr(pred, target), "ssim": float(ssim(pred[None].float(), target[None].float()))}
