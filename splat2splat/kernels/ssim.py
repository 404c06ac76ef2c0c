"""SSIM and the 3DGS photometric loss ``(1 - λ) L1 + λ (1 - SSIM)``.

Pure-PyTorch reference (11x11 Gaussian window, sigma 1.5, zero padding, as in 3DGS; computed as two separable
1D convolutions). A fused kernel replaces it automatically when it builds (see :mod:`.build`): on CUDA
``cuda/fused_ssim.cu``, on the CPU ``cuda/cpu_ssim.cpp`` (C++/OpenMP), with one contract: one pass for the SSIM
map and one for the gradient of L1 + SSIM together. All give the same values and gradients up to float rounding;
the reference is used for other dtypes or devices, other window sizes, when ``target`` needs a gradient and when
the kernel does not build.
"""

from __future__ import annotations

import math
from types import ModuleType

import torch
import torch.nn.functional as F

from splat2splat.kernels.build import load_cpu_extension, load_extension

C1, C2 = 0.01**2, 0.03**2
WINDOW_SIZE = 11
FUSED_SSIM_EXTENSION = "splat2splat_fused_ssim"
FUSED_SSIM_SOURCES = ("fused_ssim.cpp", "fused_ssim.cu")
CPU_SSIM_EXTENSION = "splat2splat_cpu_ssim"
CPU_SSIM_SOURCES = ("cpu_ssim.cpp",)
_FUSED_DTYPES = (torch.float32, torch.float64)


def _gaussian_window(size: int = WINDOW_SIZE, sigma: float = 1.5, device=None, dtype=torch.float32) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g


# ------------------------------------------------------------------------------------------- reference
def reference_ssim_map(pred: torch.Tensor, target: torch.Tensor, window_size: int = WINDOW_SIZE) -> torch.Tensor:
    """Pure-PyTorch per-pixel SSIM of [B, C, H, W] images in [0, 1] (zero padding, as the 3DGS reference).

    The 2D Gaussian window is the outer product of a 1D one, so the five windowed means are one stacked
    depthwise convolution down the columns then one along the rows: 2 x 11 taps per value instead of 11 x 11,
    the same sums up to float rounding (zero padding is zero in either order)."""
    channels = pred.shape[1]
    g = _gaussian_window(window_size, device=pred.device, dtype=pred.dtype)
    stacked = torch.cat([pred, target, pred * pred, target * target, pred * target], 1)
    planes, pad = stacked.shape[1], window_size // 2
    columns = g.view(1, 1, window_size, 1).expand(planes, 1, window_size, 1)
    rows = g.view(1, 1, 1, window_size).expand(planes, 1, 1, window_size)
    blurred = F.conv2d(F.conv2d(stacked, columns, padding=(pad, 0), groups=planes), rows, padding=(0, pad),
                       groups=planes)
    mu_x, mu_y, xx, yy, xy = blurred.split(channels, 1)
    sigma_x = xx - mu_x**2
    sigma_y = yy - mu_y**2
    sigma_xy = xy - mu_x * mu_y
    return ((2 * mu_x * mu_y + C1) * (2 * sigma_xy + C2)) / ((mu_x**2 + mu_y**2 + C1) * (sigma_x + sigma_y + C2))


def reference_l1_dssim_loss(pred: torch.Tensor, target: torch.Tensor, dssim_weight: float = 0.2) -> torch.Tensor:
    """Pure-PyTorch :func:`l1_dssim_loss` (always; for parity tests and benchmarks)."""
    l1 = (pred - target).abs().mean()
    if dssim_weight == 0.0:
        return l1
    ssim_value = reference_ssim_map(pred.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2)).mean()
    return (1.0 - dssim_weight) * l1 + dssim_weight * (1.0 - ssim_value)


# ---------------------------------------------------------------------------------------- fused kernel
def fused_ssim_extension() -> ModuleType | None:
    """The compiled fused-SSIM extension, or ``None`` without CUDA or when it does not build (cached)."""
    return load_extension(FUSED_SSIM_EXTENSION, FUSED_SSIM_SOURCES)


def cpu_ssim_extension() -> ModuleType | None:
    """The compiled CPU SSIM extension, or ``None`` when it does not build here (one warning; cached)."""
    return load_cpu_extension(CPU_SSIM_EXTENSION, CPU_SSIM_SOURCES)


def _kernel(device: torch.device) -> ModuleType | None:
    """The fused kernel for tensors on ``device`` (same calls on CUDA and CPU), or ``None``."""
    if device.type == "cuda":
        return fused_ssim_extension()
    return cpu_ssim_extension() if device.type == "cpu" else None


def _use_fused_kernel(pred: torch.Tensor, target: torch.Tensor, window_size: int = WINDOW_SIZE) -> bool:
    # Cheap checks first: the extension is looked up (built) only for inputs it takes.
    return (
        target.device == pred.device
        and pred.dim() == 4
        and pred.shape == target.shape
        and pred.dtype in _FUSED_DTYPES
        and target.dtype == pred.dtype
        and window_size == WINDOW_SIZE
        # The kernel differentiates with respect to pred only.
        and not target.requires_grad
        and _kernel(pred.device) is not None
    )


def _as_planes(images: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> contiguous [B * C, H, W], the kernel's layout."""
    return images.reshape(-1, *images.shape[-2:]).contiguous()


def _fused_forward(pred: torch.Tensor, target: torch.Tensor, save_partials: bool):
    """SSIM planes [B * C, H, W] and the tensors the backward kernel needs."""
    pred_planes, target_planes = _as_planes(pred), _as_planes(target)
    window = _gaussian_window(device=pred.device, dtype=pred.dtype)
    ssim_planes, *partials = _kernel(pred.device).forward(pred_planes, target_planes, window, save_partials)
    return ssim_planes, (pred_planes, target_planes, window, *partials)


def _fused_backward(saved: tuple[torch.Tensor, ...], grad_map: torch.Tensor, l1_grad_scale: float) -> torch.Tensor:
    """dLoss/dpred planes for ``sum(grad_map * ssim) + l1_grad_scale * sum(|pred - target|)``."""
    pred_planes, target_planes, window, *partials = saved
    return _kernel(pred_planes.device).backward(pred_planes, target_planes, window, grad_map, *partials,
                                                l1_grad_scale)


class _FusedSSIMMap(torch.autograd.Function):
    """SSIM map of [B, C, H, W] images through the fused kernel (gradient for pred only)."""

    @staticmethod
    def forward(ctx, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ssim_planes, saved = _fused_forward(pred, target, save_partials=ctx.needs_input_grad[0])
        ctx.save_for_backward(*saved)
        return ssim_planes.view(pred.shape)

    @staticmethod
    def backward(ctx, grad_map: torch.Tensor):
        grad_planes = _fused_backward(ctx.saved_tensors, _as_planes(grad_map), l1_grad_scale=0.0)
        return grad_planes.view(grad_map.shape), None


class _FusedL1DSSIMLoss(torch.autograd.Function):
    """``(1 - w) mean|pred - target| + w (1 - mean SSIM)`` of [B, C, H, W] images.

    One backward kernel computes the gradient of both terms.
    """

    @staticmethod
    def forward(ctx, pred: torch.Tensor, target: torch.Tensor, dssim_weight: float) -> torch.Tensor:
        ssim_planes, saved = _fused_forward(pred, target, save_partials=ctx.needs_input_grad[0])
        ctx.save_for_backward(*saved)
        ctx.dssim_weight = dssim_weight
        ctx.pred_shape = pred.shape
        l1 = (pred - target).abs().mean()
        return (1.0 - dssim_weight) * l1 + dssim_weight * (1.0 - ssim_planes.mean())

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        pred_planes = ctx.saved_tensors[0]
        n_values = math.prod(ctx.pred_shape)
        weight = ctx.dssim_weight
        # d loss / d ssim_map is the same constant everywhere; scale by grad_loss after the kernel
        # rather than reading it on the host (which would synchronise the device).
        grad_map = torch.full_like(pred_planes, -weight / n_values)
        grad_planes = _fused_backward(ctx.saved_tensors, grad_map, l1_grad_scale=(1.0 - weight) / n_values)
        return (grad_planes * grad_loss).view(ctx.pred_shape), None, None


# ------------------------------------------------------------------------------------------ public API
def ssim_map(pred: torch.Tensor, target: torch.Tensor, window_size: int = WINDOW_SIZE) -> torch.Tensor:
    """Per-pixel SSIM of [B, C, H, W] images in [0, 1] (zero padding, as the 3DGS reference)."""
    if _use_fused_kernel(pred, target, window_size):
        return _FusedSSIMMap.apply(pred, target)
    return reference_ssim_map(pred, target, window_size)


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of [B, H, W, C] images."""
    return ssim_map(pred.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2)).mean()


def l1_dssim_loss(pred: torch.Tensor, target: torch.Tensor, dssim_weight: float = 0.2) -> torch.Tensor:
    """3DGS loss on [B, H, W, C] images: ``(1 - w) * L1 + w * (1 - SSIM)``."""
    pred_bchw, target_bchw = pred.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2)
    if dssim_weight != 0.0 and _use_fused_kernel(pred_bchw, target_bchw):
        return _FusedL1DSSIMLoss.apply(pred_bchw, target_bchw, dssim_weight)
    return reference_l1_dssim_loss(pred, target, dssim_weight)
