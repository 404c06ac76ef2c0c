"""SSIM and the 3DGS photometric loss ``(1 - λ) L1 + λ (1 - SSIM)``.

Pure-PyTorch reference (11x11 Gaussian window, sigma 1.5, zero padding, as in 3DGS; computed as two separable
1D convolutions). A fused kernel replaces it automatically when it builds (see :mod:`.build`): on CUDA
``cuda/fused_ssim.cu``, on the CPU ``cuda/cpu_ssim.cpp`` (C++/OpenMP), with one contract: one pass for the SSIM
map and one for the gradient of L1 + SSIM together, on [B * C, H, W] planes. The CPU kernel also reads [B, H, W, C]
images as they are and takes a broadcast upstream gradient (the gradient of a mean) as one number, which saves the
copies and fills around a training step's loss. All give the same values and gradients up to float rounding; the
reference is used for other dtypes or devices, other window sizes, when ``target`` needs a gradient and when the
kernel does not build.
"""

from __future__ import annotations

import functools
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
    """[B, C, H, W] -> contiguous [B * C, H, W], the layout both kernels take."""
    return images.reshape(-1, *images.shape[-2:]).contiguous()


def _channel_last(images: torch.Tensor) -> torch.Tensor | None:
    """[B, C, H, W] CPU images that are a permuted contiguous [B, H, W, C] batch (the training images' layout) as
    that batch, which the CPU kernel takes too (no copy into planes); else ``None``."""
    channel_last = images.permute(0, 2, 3, 1)
    return channel_last if images.device.type == "cpu" and channel_last.is_contiguous() else None


def _kernel_inputs(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """pred and target in one layout the kernel takes: channel-last where both already are, else planes."""
    pred_channel_last, target_channel_last = _channel_last(pred), _channel_last(target)
    if pred_channel_last is not None and target_channel_last is not None and not pred.is_contiguous():
        return pred_channel_last, target_channel_last
    return _as_planes(pred), _as_planes(target)


def _as_images(values: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A kernel's output, in its inputs' layout, as [B, C, H, W] of ``shape``."""
    return values.permute(0, 3, 1, 2) if values.dim() == 4 else values.view(shape)


def _grad_map_like(grad_map: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The [B, C, H, W] upstream gradient in the layout of the saved ``like``. On the CPU a broadcast number (the
    gradient of a mean) stays one, which the CPU kernel takes."""
    broadcast = all(stride == 0 or size == 1 for stride, size in zip(grad_map.stride(), grad_map.shape))
    if like.device.type == "cpu" and broadcast:
        return grad_map.as_strided(like.shape, (0,) * like.dim())
    return grad_map.permute(0, 2, 3, 1).contiguous() if like.dim() == 4 else _as_planes(grad_map)


def _uniform_grad_map(like: torch.Tensor, value: float) -> torch.Tensor:
    """``value`` everywhere, shaped like the saved ``like``: on the CPU one number the kernel broadcasts (no
    tensor to fill and read), on CUDA a filled tensor (the CUDA kernel's contract)."""
    if like.device.type == "cpu":
        return like.new_full((), value).expand_as(like)
    return torch.full_like(like, value)


@functools.lru_cache(maxsize=None)
def _window(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The kernels' 1-D window, made once per device and dtype (a few small ops per call otherwise)."""
    return _gaussian_window(device=device, dtype=dtype)


def _fused_forward(pred: torch.Tensor, target: torch.Tensor, save_partials: bool):
    """SSIM map [B, C, H, W] and the tensors the backward kernel needs."""
    pred_values, target_values = _kernel_inputs(pred, target)
    window = _window(pred.device, pred.dtype)
    ssim_values, *partials = _kernel(pred.device).forward(pred_values, target_values, window, save_partials)
    return _as_images(ssim_values, pred.shape), (pred_values, target_values, window, *partials)


def _fused_backward(saved: tuple[torch.Tensor, ...], grad_map: torch.Tensor, l1_grad_scale: float) -> torch.Tensor:
    """dLoss/dpred, in the saved inputs' layout, for ``sum(grad_map * ssim) + l1_grad_scale * sum(|pred - target|)``
    (``grad_map`` in that layout too)."""
    pred_values, target_values, window, *partials = saved
    return _kernel(pred_values.device).backward(pred_values, target_values, window, grad_map, *partials,
                                                l1_grad_scale)


class _FusedSSIMMap(torch.autograd.Function):
    """SSIM map of [B, C, H, W] images through the fused kernel (gradient for pred only)."""

    @staticmethod
    def forward(ctx, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ssim_map, saved = _fused_forward(pred, target, save_partials=ctx.needs_input_grad[0])
        ctx.save_for_backward(*saved)
        return ssim_map

    @staticmethod
    def backward(ctx, grad_map: torch.Tensor):
        like = ctx.saved_tensors[0]
        grad_values = _fused_backward(ctx.saved_tensors, _grad_map_like(grad_map, like), l1_grad_scale=0.0)
        return _as_images(grad_values, grad_map.shape), None


class _FusedL1DSSIMLoss(torch.autograd.Function):
    """``l1_weight mean|pred - target| + dssim_weight (1 - mean SSIM)`` of [B, C, H, W] images, with the two means
    (no gradient) for reporting.

    One backward kernel computes the gradient of both terms.
    """

    @staticmethod
    def forward(ctx, pred: torch.Tensor, target: torch.Tensor, l1_weight: float, dssim_weight: float):
        ssim_map, saved = _fused_forward(pred, target, save_partials=ctx.needs_input_grad[0])
        ctx.save_for_backward(*saved)
        ctx.weights = l1_weight, dssim_weight
        ctx.pred_shape = pred.shape
        # On the kernel's contiguous inputs, in place: one temporary, summed in memory order.
        pred_values, target_values = saved[:2]
        l1 = torch.sub(pred_values, target_values).abs_().mean()
        ssim_value = ssim_map.mean()
        ctx.mark_non_differentiable(l1, ssim_value)
        return l1_weight * l1 + dssim_weight * (1.0 - ssim_value), l1, ssim_value

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_l1, _grad_ssim):
        pred_values = ctx.saved_tensors[0]
        n_values = math.prod(ctx.pred_shape)
        l1_weight, dssim_weight = ctx.weights
        # d loss / d ssim_map is the same constant everywhere; scale by grad_loss after the kernel
        # rather than reading it on the host (which would synchronise the device).
        grad_map = _uniform_grad_map(pred_values, -dssim_weight / n_values)
        grad_values = _fused_backward(ctx.saved_tensors, grad_map, l1_grad_scale=l1_weight / n_values)
        return _as_images(grad_values.mul_(grad_loss), ctx.pred_shape), None, None, None


# ------------------------------------------------------------------------------------------ public API
def ssim_map(pred: torch.Tensor, target: torch.Tensor, window_size: int = WINDOW_SIZE) -> torch.Tensor:
    """Per-pixel SSIM of [B, C, H, W] images in [0, 1] (zero padding, as the 3DGS reference)."""
    if _use_fused_kernel(pred, target, window_size):
        return _FusedSSIMMap.apply(pred, target)
    return reference_ssim_map(pred, target, window_size)


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of [B, H, W, C] images."""
    return ssim_map(pred.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2)).mean()


def weighted_l1_dssim(pred: torch.Tensor, target: torch.Tensor, l1_weight: float,
                      dssim_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``l1_weight * L1 + dssim_weight * (1 - SSIM)`` of [B, H, W, C] images, and the two means L1 and SSIM
    (without gradient, for reporting): through the fused kernel where it takes the inputs (one backward pass for
    both terms), else the PyTorch reference."""
    pred_bchw, target_bchw = pred.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2)
    if _use_fused_kernel(pred_bchw, target_bchw):
        return _FusedL1DSSIMLoss.apply(pred_bchw, target_bchw, l1_weight, dssim_weight)
    l1 = (pred - target).abs().mean()
    ssim_value = reference_ssim_map(pred_bchw, target_bchw).mean()
    return l1_weight * l1 + dssim_weight * (1.0 - ssim_value), l1.detach(), ssim_value.detach()


def l1_dssim_loss(pred: torch.Tensor, target: torch.Tensor, dssim_weight: float = 0.2) -> torch.Tensor:
    """3DGS loss on [B, H, W, C] images: ``(1 - w) * L1 + w * (1 - SSIM)``."""
    if dssim_weight == 0.0:
        return reference_l1_dssim_loss(pred, target, dssim_weight)
    return weighted_l1_dssim(pred, target, 1.0 - dssim_weight, dssim_weight)[0]
