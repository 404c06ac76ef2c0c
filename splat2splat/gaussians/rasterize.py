"""Gaussian rasterization: gsplat's CUDA kernels on GPU; on CPU a C++ tile compositor, or its pure-PyTorch reference.

All follow gsplat 1.5's "classic" 3DGS rasterizer step for step, so a scene trained on one device renders
the same on the other:

1. projection (EWA splatting, +0.3 px blur on the 2D covariance, near/far culling, opacity-aware
   3.33-sigma bounding box, off-screen culling),
2. tile intersection (16 px tiles, Gaussians sorted front to back by depth inside each tile),
3. front-to-back alpha compositing per pixel: ``alpha = min(0.999, o * exp(-sigma))``, skipped when
   ``sigma < 0`` or ``alpha < 1/255``, and a pixel stops before the Gaussian that would bring its
   transmittance to ``<= 1e-4``.

The pure-PyTorch path finds the contributing (pixel, Gaussian) pairs without gradients: candidates come from
each Gaussian's own pixels (its tile box cut down to an ellipse that provably holds every pixel where its alpha
can reach 1/255), front to back in chunks, and pixels whose transmittance ran out are skipped by later chunks
(:mod:`.pixel_pairs`). The pairs are then composited with segmented cumulative sums and differentiated by
an analytic backward pass (``_Blend``), so gradients are exact for the same function gsplat differentiates.
It returns gsplat's ``info`` dict (means2d, radii, width, height, n_cameras, ...) so gsplat's densification
strategies work unchanged.

The "cpp" rasterizer runs the same three stages in C++: projection and SH colours by
:mod:`splat2splat.kernels.cpu_projection` (one pass over the Gaussians) and the compositing, the cost that grows with
pixels, by :mod:`splat2splat.kernels.cpu_rasterizer` (same pairs, same gradients, one pass per tile).
"""

from __future__ import annotations

import torch
from gsplat.cuda._torch_impl import _quat_to_rotmat, _spherical_harmonics

from splat2splat.errors import InputError
from splat2splat.gaussians.pixel_pairs import ALPHA_THRESHOLD, MAX_ALPHA, _contributing_pairs, _segmented_cumsum
from splat2splat.kernels import cpu_projection, cpu_rasterizer
from splat2splat.kernels.build import gsplat_cuda_available

RASTERIZERS = ("auto", "gsplat", "cpp", "torch")



def rasterize(
    means: torch.Tensor,  # [N, 3]
    quats: torch.Tensor,  # [N, 4]
    scales: torch.Tensor,  # [N, 3] (activated)
    opacities: torch.Tensor,  # [N] in (0, 1)
    sh: torch.Tensor,  # [N, K, 3]
    viewmats: torch.Tensor,  # [C, 4, 4]
    Ks: torch.Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    sh_degree: int,
    background: torch.Tensor | None = None,  # [3]
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    tile_size: int = 16,
    absgrad: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Render C images. Returns colours [C, H, W, 3], alphas [C, H, W, 1] and gsplat's info dict.

    ``backend``: "gsplat" (CUDA kernels), "cpp" (C++ compositing, CPU), "torch" (pure PyTorch, any device) or
    "auto" (see :func:`choose_rasterizer`).
    """
    backend = choose_rasterizer(backend, means.device)
    backgrounds = None if background is None else background.to(means).expand(len(viewmats), 3)
    if backend == "gsplat":
        from gsplat import rasterization

        return rasterization(
            means, quats, scales, opacities, sh, viewmats, Ks, width, height, near_plane=near_plane,
            far_plane=far_plane, eps2d=eps2d, sh_degree=sh_degree, packed=False, tile_size=tile_size,
            backgrounds=backgrounds, absgrad=absgrad, rasterize_mode="classic",
        )
    if backend == "torch":
        return rasterize_torch(means, quats, scales, opacities, sh, viewmats, Ks, width, height, sh_degree,
                               backgrounds, near_plane, far_plane, eps2d, tile_size)
    # The C++ projection has no gradient for the cameras: the PyTorch one serves a pose optimisation.
    native = (cpu_projection.cpu_projection_extension() is not None
              and not (viewmats.requires_grad or Ks.requires_grad))
    return rasterize_torch(means, quats, scales, opacities, sh, viewmats, Ks, width, height, sh_degree,
                           backgrounds, near_plane, far_plane, eps2d, tile_size, composite=cpu_rasterizer.composite,
                           projection=cpu_projection.project if native else project,
                           colors=cpu_projection.sh_colors if native else sh_colors)


def choose_rasterizer(requested: str, device: torch.device) -> str:
    """The rasterizer that runs for ``requested`` ("auto", "gsplat", "cpp" or "torch") on ``device``.

    "auto" is gsplat on CUDA when its extension builds, the C++ compositor on the CPU when it builds, else the
    PyTorch rasterizer (after one warning from :mod:`splat2splat.kernels.build`). An explicit "gsplat" or "cpp"
    that cannot run is an InputError rather than a silent switch: the user asked for those kernels.
    """
    if requested == "torch":
        return "torch"
    if requested not in RASTERIZERS:
        raise InputError(None, f"unknown rasterizer {requested!r}: use {', '.join(RASTERIZERS)}")
    device = torch.device(device)
    if requested in ("auto", "gsplat") and device.type == "cuda" and gsplat_cuda_available():
        return "gsplat"
    if requested in ("auto", "cpp") and device.type == "cpu" and cpu_rasterizer.cpu_rasterizer_extension():
        return "cpp"
    if requested == "auto":
        return "torch"
    needs, kind = ("a CUDA device", "CUDA") if requested == "gsplat" else ("the CPU", "C++")
    why = (f"it needs {needs} and the scene is on {device}" if (device.type == "cuda") != (requested == "gsplat")
           else f"its {kind} extension could not be built here (see the warning above)")
    raise InputError(None, f"rasterizer {requested!r} cannot run: {why}; use --gaussians.rasterizer auto or torch")


def project(means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane, eps2d):
    """gsplat's fully fused projection (pinhole, classic mode). Returns radii [C, N, 2] int, means2d, depths, conics."""
    rotations = _quat_to_rotmat(quats) * scales[..., None, :]
    covars = _matmul(rotations, rotations.transpose(-1, -2))
    means_c, covars_c = _world_to_cam(means, covars, viewmats)
    depths = means_c[..., 2]
    # Gaussians at or behind the near plane are culled below, but the perspective divide would still give
    # them inf/nan (depth 0: x / 0), and autograd turns the zero gradient of a culled entry into 0 * inf = nan
    # for every parameter. Project them from a harmless stand-in point instead: finite values, zero gradient.
    in_front = (depths > near_plane)[..., None]
    stand_in = torch.tensor([0.0, 0.0, 1.0], device=means.device, dtype=means_c.dtype)
    means2d, covars2d = _persp_proj(torch.where(in_front, means_c, stand_in), covars_c, Ks, width, height)
    covars2d = covars2d + torch.eye(2, device=means.device, dtype=means.dtype) * eps2d
    det = covars2d[..., 0, 0] * covars2d[..., 1, 1] - covars2d[..., 0, 1] * covars2d[..., 1, 0]
    det_safe = det.clamp(min=1e-10)
    conics = torch.stack([covars2d[..., 1, 1] / det_safe, -covars2d[..., 0, 1] / det_safe,
                          covars2d[..., 0, 0] / det_safe], dim=-1)
    with torch.no_grad():
        # Opacity-aware extent (gsplat: "tight" bounding box, arXiv 2402.00525): beyond it alpha < 1/255.
        opacity = opacities.detach().expand_as(depths)
        extend = torch.sqrt(2.0 * torch.log(opacity.clamp(min=ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp(max=3.33)
        radius = torch.stack([torch.ceil(extend * covars2d[..., 0, 0].detach().sqrt()),
                              torch.ceil(extend * covars2d[..., 1, 1].detach().sqrt())], dim=-1)
        valid = (det > 0) & (depths > near_plane) & (depths < far_plane) & (opacity >= ALPHA_THRESHOLD)
        m = means2d.detach()
        inside = ((m[..., 0] + radius[..., 0] > 0) & (m[..., 0] - radius[..., 0] < width)
                  & (m[..., 1] + radius[..., 1] > 0) & (m[..., 1] - radius[..., 1] < height))
        radius = torch.where((valid & inside)[..., None], radius, torch.zeros_like(radius))
    return radius.int(), means2d, depths, conics


# gsplat's _torch_impl projection with its einsums written as broadcast multiply-adds: the same formulas, but 3x3
# products of N Gaussians cost far less this way than as N tiny matrix products (bmm) on the CPU.
def _matmul(a, b):
    """Batched product of small matrices [..., i, j] x [..., j, k]."""
    return (a[..., :, :, None] * b[..., None, :, :]).sum(-2)


def _world_to_cam(means, covars, viewmats):
    """Means [C, N, 3] and covariances [C, N, 3, 3] in each camera's frame."""
    rotation, translation = viewmats[:, None, :3, :3], viewmats[:, None, :3, 3]
    means_c = (rotation * means[None, :, None, :]).sum(-1) + translation
    return means_c, _matmul(_matmul(rotation, covars[None]), rotation.transpose(-1, -2))


def _persp_proj(means, covars, Ks, width, height):
    """Pinhole projection with the EWA Jacobian (its tangent clamped 30 % beyond the image, as gsplat):
    means2d [C, N, 2] and 2D covariances [C, N, 2, 2]."""
    tx, ty, tz = means.unbind(-1)
    fx, fy, cx, cy = Ks[:, 0, 0, None], Ks[:, 1, 1, None], Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    tx = tz * torch.clamp(tx / tz, min=-lim_x_neg, max=lim_x_pos)
    ty = tz * torch.clamp(ty / tz, min=-lim_y_neg, max=lim_y_pos)
    zero, tz2 = torch.zeros_like(tz), tz**2
    jacobian = torch.stack([fx / tz, zero, -fx * tx / tz2, zero, fy / tz, -fy * ty / tz2], -1).unflatten(-1, (2, 3))
    covars2d = _matmul(_matmul(jacobian, covars), jacobian.transpose(-1, -2))
    means2d = (Ks[:, None, :2, :] * means[..., None, :]).sum(-1) / tz[..., None]
    return means2d, covars2d


def rasterize_torch(means, quats, scales, opacities, sh, viewmats, Ks, width, height, sh_degree,
                    backgrounds=None, near_plane=0.01, far_plane=1e10, eps2d=0.3, tile_size=16, composite=None,
                    projection=None, colors=None):
    """Pure-PyTorch equivalent of ``gsplat.rasterization(..., packed=False, rasterize_mode="classic")``.

    ``composite``, ``projection``, ``colors``: the per-camera compositing, the projection and the SH colours, the
    PyTorch ones by default (the C++ ones of :mod:`splat2splat.kernels` have the same signatures)."""
    composite, projection, colors = composite or _composite, projection or project, colors or sh_colors
    radii, means2d, depths, conics = projection(means, quats, scales, opacities[None], viewmats, Ks, width, height,
                                                near_plane, far_plane, eps2d)
    campos = torch.linalg.inv(viewmats)[:, :3, 3]
    colors = colors(sh_degree, means, campos, sh)
    images, alphas = [], []
    for c in range(len(viewmats)):
        image, alpha = composite(means2d[c], conics[c], opacities, colors[c], depths[c], radii[c], width, height,
                                 tile_size, None if backgrounds is None else backgrounds[c])
        images.append(image)
        alphas.append(alpha)
    info = {
        "radii": radii, "means2d": means2d, "depths": depths, "conics": conics,
        "opacities": opacities[None].expand_as(depths), "width": width, "height": height,
        "n_cameras": len(viewmats), "tile_size": tile_size, "gaussian_ids": None, "camera_ids": None,
        "batch_ids": None,
    }
    return torch.stack(images), torch.stack(alphas), info


def sh_colors(sh_degree, means, campos, sh):
    """Colours [C, N, 3] of the Gaussians seen from the camera centres campos [C, 3] (gsplat: SH + 0.5, >= 0)."""
    return torch.stack([torch.clamp_min(_spherical_harmonics(sh_degree, means - centre, sh) + 0.5, 0.0)
                        for centre in campos])


def _composite(means2d, conics, opacities, colors, depths, radii, width, height, tile_size, background=None):
    pixel, gaussian, alpha, transmittance = _contributing_pairs(
        means2d.detach(), conics.detach(), opacities.detach(), radii, depths.detach(), width, height, tile_size)
    image, accumulated = _Blend.apply(means2d, conics, opacities, colors, pixel, gaussian, alpha, transmittance,
                                      width, height)
    image, accumulated = image.reshape(height, width, -1), accumulated.reshape(height, width, 1)
    if background is not None:
        image = image + (1.0 - accumulated) * background
    return image, accumulated


class _Blend(torch.autograd.Function):
    """Front-to-back blending of the given (pixel, Gaussian) pairs (sorted by pixel, then depth) with the analytic
    gradient (gsplat's rasterize_to_pixels backward, vectorised): the function and derivative autograd would give
    for ``_alpha`` followed by the compositing sums.

    Per pixel: C = sum_i c_i w_i, A = sum_i w_i with w_i = alpha_i T_i, T_i = prod_{j<i} (1 - alpha_j) and
    alpha_i = where(sigma_i >= 0, min(0.999, o_i exp(-sigma_i)), 0) as in ``_alpha``. Per-pair data is laid out
    channel-major ([channels, pairs]) for fast gathers and scatters.
    """

    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, pixel, gaussian, alpha, transmittance, width, height):
        # ``alpha``, ``transmittance``: as ``_alpha`` and the segmented product compute them (the pair search did).
        n_pixels = width * height
        weight = alpha * transmittance
        n_channels = colors.shape[-1]
        color = colors.T.contiguous().index_select(1, gaussian)  # [K, M]
        image = torch.zeros(n_channels, n_pixels, dtype=colors.dtype, device=colors.device)
        image.index_add_(1, pixel, weight * color)
        accumulated = torch.zeros(n_pixels, dtype=weight.dtype, device=weight.device).index_add_(0, pixel, weight)
        ctx.save_for_backward(means2d, conics, opacities, colors, pixel, gaussian, alpha, transmittance)
        ctx.width = width
        return image.T.contiguous(), accumulated

    @staticmethod
    def backward(ctx, grad_image, grad_accumulated):
        means2d, conics, opacities, colors, pixel, gaussian, alpha, transmittance = ctx.saved_tensors
        n_channels = colors.shape[-1]
        table = torch.cat([means2d, conics, opacities[:, None], colors], -1).T.contiguous()
        mx, my, a, b, c, opacity, *color = table.index_select(1, gaussian)
        grads = torch.cat([grad_image, grad_accumulated[:, None]], -1).T.contiguous().index_select(1, pixel)
        grad_color, grad_weight = grads[:n_channels], grads[n_channels]
        weight = alpha * transmittance
        value = grad_weight + sum(col * gc for col, gc in zip(color, grad_color))  # dL/dw_i
        # dL/dalpha_i = T_i v_i - sum_{j > i} w_j v_j / (1 - alpha_i), the sum over later pairs of the same pixel.
        inclusive, total = _segmented_cumsum((weight * value).double(), pixel, totals=True)
        grad_alpha = transmittance * value - ((total - inclusive) / (1.0 - alpha.double())).to(alpha.dtype)
        # Back through alpha = where(sigma >= 0, clamp_max(o exp(-sigma), 0.999), 0) as autograd does it.
        flat = pixel.double()  # pixel coordinates, exactly
        py = torch.floor(flat / ctx.width)
        px = (flat - py * ctx.width).to(mx.dtype) + 0.5
        py = py.to(mx.dtype) + 0.5
        dx, dy = mx - px, my - py
        sigma = 0.5 * (a * dx**2 + c * dy**2) + b * dx * dy
        falloff = torch.exp(-sigma)
        passes = (sigma >= 0) & (opacity * falloff <= MAX_ALPHA)
        grad_raw = torch.where(passes, grad_alpha, torch.zeros_like(grad_alpha))
        grad_sigma = -(grad_raw * opacity) * falloff
        per_pair = torch.empty(6 + n_channels, len(pixel), dtype=grad_raw.dtype, device=grad_raw.device)
        torch.mul(grad_sigma, a * dx + b * dy, out=per_pair[0])  # means2d x
        torch.mul(grad_sigma, c * dy + b * dx, out=per_pair[1])  # means2d y
        torch.mul(grad_sigma * 0.5, dx**2, out=per_pair[2])  # conic a
        torch.mul(grad_sigma * dx, dy, out=per_pair[3])  # conic b
        torch.mul(grad_sigma * 0.5, dy**2, out=per_pair[4])  # conic c
        torch.mul(grad_raw, falloff, out=per_pair[5])  # opacity
        torch.mul(weight, grad_color, out=per_pair[6:])  # colours
        summed = torch.zeros(len(per_pair), len(means2d), dtype=per_pair.dtype, device=per_pair.device)
        summed.index_add_(1, gaussian, per_pair)
        grad_means2d, grad_conics, grad_opacities, grad_colors = summed.T.split([2, 3, 1, n_channels], -1)
        return grad_means2d, grad_conics, grad_opacities.squeeze(-1), grad_colors, None, None, None, None, None, None
