"""Gaussian rasterization: gsplat's CUDA kernels on GPU, an equivalent pure-PyTorch path on CPU.

Both follow gsplat 1.5's "classic" 3DGS rasterizer step for step, so a scene trained on one device renders
the same on the other:

1. projection (EWA splatting, +0.3 px blur on the 2D covariance, near/far culling, opacity-aware
   3.33-sigma bounding box, off-screen culling),
2. tile intersection (16 px tiles, Gaussians sorted front to back by depth inside each tile),
3. front-to-back alpha compositing per pixel: ``alpha = min(0.999, o * exp(-sigma))``, skipped when
   ``sigma < 0`` or ``alpha < 1/255``, and a pixel stops before the Gaussian that would bring its
   transmittance to ``<= 1e-4``.

The CPU path finds the contributing (pixel, Gaussian) pairs without gradients, then recomputes their alphas
with autograd and composites them with segmented cumulative sums, so gradients are exact for the same
function gsplat differentiates. It returns gsplat's ``info`` dict (means2d, radii, width, height,
n_cameras, ...) so gsplat's densification strategies work unchanged.
"""

from __future__ import annotations

import math

import torch
from gsplat.cuda._torch_impl import _persp_proj, _quat_scale_to_covar_preci, _spherical_harmonics, _world_to_cam

ALPHA_THRESHOLD = 1.0 / 255.0
TRANSMITTANCE_MIN = 1e-4
MAX_ALPHA = 0.999


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

    ``backend``: "gsplat" (CUDA kernels), "torch" (pure PyTorch, any device) or "auto" (gsplat on CUDA).
    """
    if backend == "auto":
        backend = "gsplat" if means.is_cuda else "torch"
    backgrounds = None if background is None else background.to(means).expand(len(viewmats), 3)
    if backend == "gsplat":
        from gsplat import rasterization

        return rasterization(
            means, quats, scales, opacities, sh, viewmats, Ks, width, height, near_plane=near_plane,
            far_plane=far_plane, eps2d=eps2d, sh_degree=sh_degree, packed=False, tile_size=tile_size,
            backgrounds=backgrounds, absgrad=absgrad, rasterize_mode="classic",
        )
    if backend != "torch":
        raise ValueError(f"unknown rasterizer backend {backend!r}")
    return rasterize_torch(means, quats, scales, opacities, sh, viewmats, Ks, width, height, sh_degree,
                           backgrounds, near_plane, far_plane, eps2d, tile_size)


def project(means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane, eps2d):
    """gsplat's fully fused projection (pinhole, classic mode). Returns radii [C, N, 2] int, means2d, depths, conics."""
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False, triu=False)
    means_c, covars_c = _world_to_cam(means, covars, viewmats)
    means2d, covars2d = _persp_proj(means_c, covars_c, Ks, width, height)
    covars2d = covars2d + torch.eye(2, device=means.device, dtype=means.dtype) * eps2d
    det = covars2d[..., 0, 0] * covars2d[..., 1, 1] - covars2d[..., 0, 1] * covars2d[..., 1, 0]
    det_safe = det.clamp(min=1e-10)
    conics = torch.stack([covars2d[..., 1, 1] / det_safe, -covars2d[..., 0, 1] / det_safe,
                          covars2d[..., 0, 0] / det_safe], dim=-1)
    depths = means_c[..., 2]
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


def rasterize_torch(means, quats, scales, opacities, sh, viewmats, Ks, width, height, sh_degree,
                    backgrounds=None, near_plane=0.01, far_plane=1e10, eps2d=0.3, tile_size=16):
    """Pure-PyTorch equivalent of ``gsplat.rasterization(..., packed=False, rasterize_mode="classic")``."""
    radii, means2d, depths, conics = project(means, quats, scales, opacities[None], viewmats, Ks, width, height,
                                             near_plane, far_plane, eps2d)
    campos = torch.linalg.inv(viewmats)[:, :3, 3]
    colors = []
    for c in range(len(viewmats)):
        dirs = means - campos[c]
        colors.append(torch.clamp_min(_spherical_harmonics(sh_degree, dirs, sh) + 0.5, 0.0))
    images, alphas = [], []
    for c in range(len(viewmats)):
        image, alpha = _composite(means2d[c], conics[c], opacities, colors[c], depths[c], radii[c], width, height, tile_size)
        if backgrounds is not None:
            image = image + (1.0 - alpha) * backgrounds[c]
        images.append(image)
        alphas.append(alpha)
    info = {
        "radii": radii, "means2d": means2d, "depths": depths, "conics": conics,
        "opacities": opacities[None].expand_as(depths), "width": width, "height": height,
        "n_cameras": len(viewmats), "tile_size": tile_size, "gaussian_ids": None, "camera_ids": None,
        "batch_ids": None,
    }
    return torch.stack(images), torch.stack(alphas), info


@torch.no_grad()
def _tile_intersections(means2d, radii, depths, width, height, tile_size):
    """(tile id, Gaussian id) pairs sorted by tile, then depth (front to back), as gsplat's isect_tiles."""
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    visible = (radii > 0).all(-1)
    ids = torch.nonzero(visible).squeeze(-1)
    center = means2d[ids] / tile_size
    r = radii[ids].float() / tile_size
    tmin_x = torch.floor(center[:, 0] - r[:, 0]).clamp(0, tiles_x).long()
    tmin_y = torch.floor(center[:, 1] - r[:, 1]).clamp(0, tiles_y).long()
    tmax_x = torch.ceil(center[:, 0] + r[:, 0]).clamp(0, tiles_x).long()
    tmax_y = torch.ceil(center[:, 1] + r[:, 1]).clamp(0, tiles_y).long()
    span_x, span_y = tmax_x - tmin_x, tmax_y - tmin_y
    counts = span_x * span_y
    gaussian = torch.repeat_interleave(ids, counts)
    owner = torch.repeat_interleave(torch.arange(len(ids)), counts)
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(len(gaussian)) - first[owner]
    tile_x = tmin_x[owner] + local % span_x[owner].clamp(min=1)
    tile_y = tmin_y[owner] + local // span_x[owner].clamp(min=1)
    tile = tile_y * tiles_x + tile_x
    # Stable sorts: depth first, then tile, so each tile's list is front to back (ties by Gaussian index).
    order = torch.sort(depths[gaussian], stable=True).indices
    tile, gaussian = tile[order], gaussian[order]
    order = torch.sort(tile, stable=True).indices
    return tile[order], gaussian[order], tiles_x, tiles_y


@torch.no_grad()
def _contributing_pairs(means2d, conics, opacities, tile, gaussian, tiles_x, tiles_y, width, height, tile_size,
                        budget: int = 1 << 24):
    """All (pixel, Gaussian) pairs that gsplat's forward pass would blend, front to back per pixel."""
    n_tiles = tiles_x * tiles_y
    per_tile = torch.bincount(tile, minlength=n_tiles)
    start = torch.cumsum(per_tile, 0) - per_tile
    max_count = int(per_tile.max()) if len(tile) else 0
    if max_count == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    # Pixel offsets inside a tile.
    py, px = torch.meshgrid(torch.arange(tile_size), torch.arange(tile_size), indexing="ij")
    offsets = torch.stack([px.flatten(), py.flatten()], -1)  # [P, 2]
    pixels_all, gaussians_all = [], []
    tiles_per_chunk = max(1, budget // (max_count * tile_size * tile_size))
    slot = torch.arange(max_count)
    for t0 in range(0, n_tiles, tiles_per_chunk):
        tiles = torch.arange(t0, min(n_tiles, t0 + tiles_per_chunk))
        index = start[tiles, None] + slot  # [T, K]
        in_list = slot < per_tile[tiles, None]
        g = torch.where(in_list, gaussian[index.clamp(max=len(gaussian) - 1)], torch.zeros_like(index))
        pix = torch.stack([tiles % tiles_x, tiles // tiles_x], -1)[:, None, :] * tile_size + offsets  # [T, P, 2]
        alpha = _alpha(means2d[g][:, :, None, :], conics[g][:, :, None, :], opacities[g][:, :, None],
                       pix[:, None, :, :].float() + 0.5)  # [T, K, P]
        blended = in_list[:, :, None] & (alpha >= ALPHA_THRESHOLD)
        alpha = torch.where(blended, alpha, torch.zeros_like(alpha))
        transmittance_after = torch.cumprod(1.0 - alpha, dim=1)
        blended &= transmittance_after > TRANSMITTANCE_MIN  # stops before the Gaussian that ends the pixel
        on_image = (pix[..., 0] < width) & (pix[..., 1] < height)  # [T, P]
        blended &= on_image[:, None, :]
        t_idx, p_idx, k_idx = torch.nonzero(blended.permute(0, 2, 1), as_tuple=True)  # ordered by tile, pixel, depth
        pixel_xy = pix[t_idx, p_idx]
        pixels_all.append(pixel_xy[:, 1] * width + pixel_xy[:, 0])
        gaussians_all.append(g[t_idx, k_idx])
    return torch.cat(pixels_all), torch.cat(gaussians_all)


def _alpha(mean2d, conic, opacity, pixel):
    """gsplat's per-pixel alpha; sigma < 0 (numerically non-PSD conic) counts as no contribution."""
    d = mean2d - pixel
    sigma = 0.5 * (conic[..., 0] * d[..., 0] ** 2 + conic[..., 2] * d[..., 1] ** 2) + conic[..., 1] * d[..., 0] * d[..., 1]
    alpha = torch.clamp_max(opacity * torch.exp(-sigma), MAX_ALPHA)
    return torch.where(sigma >= 0, alpha, torch.zeros_like(alpha))


def _composite(means2d, conics, opacities, colors, depths, radii, width, height, tile_size):
    tile, gaussian, tiles_x, tiles_y = _tile_intersections(means2d.detach(), radii, depths.detach(), width, height, tile_size)
    pixel, gaussian = _contributing_pairs(means2d.detach(), conics.detach(), opacities.detach(), tile, gaussian,
                                          tiles_x, tiles_y, width, height, tile_size)
    n_pixels = width * height
    pixel_xy = torch.stack([pixel % width, pixel // width], -1).to(means2d.dtype) + 0.5
    alpha = _alpha(means2d[gaussian], conics[gaussian], opacities[gaussian], pixel_xy)
    # Transmittance before each pair: exp of the exclusive cumulative sum of log(1 - alpha) within its pixel.
    log_keep = torch.log1p(-alpha).double()
    inclusive = torch.cumsum(log_keep, 0)
    segment_start = torch.ones_like(pixel, dtype=torch.bool)
    segment_start[1:] = pixel[1:] != pixel[:-1]
    start_index = torch.cummax(torch.where(segment_start, torch.arange(len(pixel)), torch.zeros_like(pixel)), 0).values
    before_segment = (inclusive - log_keep)[start_index]
    transmittance = torch.exp(inclusive - log_keep - before_segment).to(alpha.dtype)
    weight = alpha * transmittance
    image = torch.zeros(n_pixels, colors.shape[-1], dtype=colors.dtype, device=colors.device)
    image = image.index_add(0, pixel, weight[:, None] * colors[gaussian])
    accumulated = torch.zeros(n_pixels, dtype=alpha.dtype, device=alpha.device).index_add(0, pixel, weight)
    return image.reshape(height, width, -1), accumulated.reshape(height, width, 1)
