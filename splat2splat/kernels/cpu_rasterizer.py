"""The C++ tile compositing of the CPU rasterizer (``cuda/cpu_rasterizer.cpp``), as a differentiable function.

It blends the same (pixel, Gaussian) pairs as the pure-PyTorch compositing of
:mod:`splat2splat.gaussians.rasterize` (gsplat 1.5.3's classic rasterize_to_pixels) and returns the same
gradients, at C++ speed: one pass per tile (OpenMP across tiles) instead of tensors of pixel pairs and autograd.
The extension is built on first use (once per machine) by :mod:`.build`; :func:`cpu_rasterizer_extension` is
``None`` when it cannot be built, and the callers then use the PyTorch compositing.
"""

from __future__ import annotations

from types import ModuleType

import torch

from splat2splat.kernels.build import load_cpu_extension

CPU_RASTERIZER_EXTENSION = "splat2splat_cpu_rasterizer"
CPU_RASTERIZER_SOURCES = ("cpu_rasterizer.cpp",)


def cpu_rasterizer_extension() -> ModuleType | None:
    """The compiled CPU rasterizer, or ``None`` when it does not build here (one warning; cached per process)."""
    return load_cpu_extension(CPU_RASTERIZER_EXTENSION, CPU_RASTERIZER_SOURCES)


def composite(means2d, conics, opacities, colors, depths, radii, width: int, height: int, tile_size: int,
              background=None):
    """Image [H, W, K] (over ``background`` [K] where one is given) and accumulated alpha [H, W, 1] of one camera's
    projected Gaussians ([N, ...] each), differentiable in means2d, conics, opacities, colors and background."""
    image, alpha = _Composite.apply(means2d, conics, opacities, colors, depths, radii, width, height, tile_size,
                                    background)
    return image, alpha[..., None]


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, depths, radii, width, height, tile_size, background):
        extension = cpu_rasterizer_extension()
        inputs = [t.detach().contiguous() for t in (means2d, conics, opacities, colors)]
        radii = radii.detach().int().contiguous()
        # The background is blended in the kernel (image + (1 - alpha) background, one pass instead of a chain of
        # tensor operations and their autograd).
        background = (colors.new_zeros(0) if background is None
                      else background.detach().to(colors.dtype).contiguous())
        image, alpha, offsets, ids, walked = extension.forward(
            *inputs, radii, depths.detach().to(means2d.dtype).contiguous(), width, height, tile_size, background)
        ctx.save_for_backward(*inputs, radii, offsets, ids, walked, background, alpha)
        ctx.size = (width, height, tile_size)
        return image, alpha

    @staticmethod
    def backward(ctx, grad_image, grad_alpha):
        *inputs, radii, offsets, ids, walked, background, alpha = ctx.saved_tensors
        width, height, tile_size = ctx.size
        colors = inputs[3]
        grad_image = (torch.zeros(height, width, colors.shape[-1], dtype=colors.dtype) if grad_image is None
                      else grad_image.to(colors.dtype).contiguous())
        grad_alpha = (torch.zeros(height, width, dtype=colors.dtype) if grad_alpha is None
                      else grad_alpha.to(colors.dtype).contiguous())
        grads = cpu_rasterizer_extension().backward(*inputs, radii, offsets, ids, walked, grad_image, grad_alpha, width,
                                                    height, tile_size, background)
        grad_background = ((grad_image * (1.0 - alpha)[..., None]).sum((0, 1)) if ctx.needs_input_grad[9]
                           else None)
        return (*grads, None, None, None, None, None, grad_background)
