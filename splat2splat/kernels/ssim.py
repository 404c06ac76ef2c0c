"""SSIM and the 3DGS photometric loss ``(1 - λ) L1 + λ (1 - SSIM)``.

Pure-PyTorch reference (11x11 Gaussian window, sigma 1.5, as in 3DGS). A fused CUDA kernel in ``cuda/``
replaces it on GPU when it can be built; both give the same values and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

C1, C2 = 0.01**2, 0.03**2


def _gaussian_window(size: int = 11, sigma: float = 1.5, device=None, dtype=torch.float32) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g


def ssim_map(pred: torch.Tensor, target: torch.Tensor, window_size: int = 11) -> torch.Tensor:
    """Per-pixel SSIM of [B, C, H, W] images in [0, 1] (zero padding, as the 3DGS reference)."""
    channels = pred.shape[1]
    g = _gaussian_window(window_size, device=pred.device, dtype=pred.dtype)
    kernel = (g[:, None] * g[None, :]).expand(channels, 1, window_size, window_size).contiguous()
    blur = lambda x: F.conv2d(x, kernel, padding=window_size // 2, groups=channels)  # noqa: E731
    mu_x, mu_y = blur(pred), blur(target)
    sigma_x = blur(pred * pred) - mu_x**2
    sigma_y = blur(target * target) - mu_y**2
    sigma_xy = blur(pred * target) - mu_x * mu_y
    return ((2 * mu_x * mu_y + C1) * (2 * sigma_xy + C2)) / ((mu_x**2 + mu_y**2 + C1) * (sigma_x + sigma_y + C2))


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of [B, H, W, C] images."""
    return ssim_map(pred.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2)).mean()


def l1_dssim_loss(pred: torch.Tensor, target: torch.Tensor, dssim_weight: float = 0.2) -> torch.Tensor:
    """3DGS loss on [B, H, W, C] images: ``(1 - w) * L1 + w * (1 - SSIM)``."""
    l1 = (pred - target).abs().mean()
    if dssim_weight == 0.0:
        return l1
    return (1.0 - dssim_weight) * l1 + dssim_weight * (1.0 - ssim(pred, target))
