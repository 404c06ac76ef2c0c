"""The C++ projection and SH colours of the CPU rasterizer (``cuda/cpu_projection.cpp``), as differentiable functions.

They compute what :func:`splat2splat.gaussians.rasterize.project` and gsplat's ``_spherical_harmonics`` compute in
PyTorch autograd (gsplat 1.5.3's fully fused projection and SH), with the same values and gradients up to float
rounding, in one pass over the Gaussians (OpenMP) instead of dozens of tensor operations, each with its saved
intermediates: at 10^5 Gaussians and more these are most of a CPU training step. :func:`cpu_projection_extension`
is ``None`` when the extension cannot be built, and the callers then use the PyTorch functions.
"""

from __future__ import annotations

from types import ModuleType

import torch

from splat2splat.kernels.build import load_cpu_extension

CPU_PROJECTION_EXTENSION = "splat2splat_cpu_projection"
CPU_PROJECTION_SOURCES = ("cpu_projection.cpp",)


def cpu_projection_extension() -> ModuleType | None:
    """The compiled projection, or ``None`` when it does not build here (one warning; cached per process)."""
    return load_cpu_extension(CPU_PROJECTION_EXTENSION, CPU_PROJECTION_SOURCES)


def project(means, quats, scales, opacities, viewmats, Ks, width: int, height: int, near_plane: float,
            far_plane: float, eps2d: float):
    """As :func:`splat2splat.gaussians.rasterize.project` (opacities [N] or [1, N]): radii [C, N, 2] int32,
    means2d [C, N, 2], depths [C, N], conics [C, N, 3], differentiable in means, quats and scales (not in the
    cameras: the callers use the PyTorch projection when the cameras need gradients)."""
    means2d, depths, conics, radii = _Project.apply(means, quats, scales, opacities.reshape(-1), viewmats, Ks,
                                                    width, height, near_plane, far_plane, eps2d)
    return radii, means2d, depths, conics


def sh_colors(sh_degree: int, means, campos, sh):
    """Colours [C, N, 3] = max(SH(sh_degree, means - campos[c]) + 0.5, 0) for camera centres campos [C, 3],
    differentiable in means and sh [N, K, 3]."""
    return _Colors.apply(sh_degree, means, campos, sh)


def _inputs(*tensors, dtype):
    return [t.detach().to(dtype).contiguous() for t in tensors]


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane, eps2d):
        inputs = _inputs(means, quats, scales, opacities, viewmats, Ks, dtype=means.dtype)
        radii, means2d, depths, conics = cpu_projection_extension().project_forward(
            *inputs, width, height, near_plane, far_plane, eps2d)
        ctx.mark_non_differentiable(radii)
        ctx.save_for_backward(*inputs[:3], *inputs[4:])
        ctx.settings = (width, height, near_plane, eps2d)
        return means2d, depths, conics, radii

    @staticmethod
    def backward(ctx, grad_means2d, grad_depths, grad_conics, _grad_radii):
        means, quats, scales, viewmats, Ks = ctx.saved_tensors
        width, height, near_plane, eps2d = ctx.settings
        shapes = {"means2d": (grad_means2d, 2), "depths": (grad_depths, None), "conics": (grad_conics, 3)}
        grads = [torch.zeros(len(viewmats), len(means), *([] if k is None else [k]), dtype=means.dtype)
                 if g is None else g.to(means.dtype).contiguous() for g, k in shapes.values()]
        grad_means, grad_quats, grad_scales = cpu_projection_extension().project_backward(
            means, quats, scales, viewmats, Ks, width, height, near_plane, eps2d, *grads)
        return grad_means, grad_quats, grad_scales, None, None, None, None, None, None, None, None


class _Colors(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sh_degree, means, campos, sh):
        inputs = _inputs(means, campos, sh, dtype=means.dtype)
        ctx.save_for_backward(*inputs)
        ctx.sh_degree = sh_degree
        return cpu_projection_extension().sh_forward(sh_degree, *inputs)

    @staticmethod
    def backward(ctx, grad_colors):
        means, campos, sh = ctx.saved_tensors
        grad_means, grad_sh = cpu_projection_extension().sh_backward(
            ctx.sh_degree, means, campos, sh, grad_colors.to(means.dtype).contiguous())
        return None, grad_means, None, grad_sh
