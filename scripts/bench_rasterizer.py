"""Forward + backward time of the pure-PyTorch rasterizer, against the previous per-tile implementation.

    .venv/bin/python scripts/bench_rasterizer.py --sizes 64 128 --counts 4000 20000 50000

The previous implementation (every Gaussian listed for a 16 px tile evaluated at all 256 pixels of the tile,
padded to the longest tile list, autograd through the compositing) is kept below for comparison; both run on
the same random scene, and their outputs and gradients are compared.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import tyro

from splat2splat.gaussians import rasterize as R


# ----------------------------------------------------------------------------- previous implementation
@torch.no_grad()
def _old_tile_intersections(means2d, radii, depths, width, height, tile_size):
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
    order = torch.sort(depths[gaussian], stable=True).indices
    tile, gaussian = tile[order], gaussian[order]
    order = torch.sort(tile, stable=True).indices
    return tile[order], gaussian[order], tiles_x, tiles_y


@torch.no_grad()
def _old_contributing_pairs(means2d, conics, opacities, tile, gaussian, tiles_x, tiles_y, width, height, tile_size,
                            budget: int = 1 << 24):
    n_tiles = tiles_x * tiles_y
    per_tile = torch.bincount(tile, minlength=n_tiles)
    start = torch.cumsum(per_tile, 0) - per_tile
    max_count = int(per_tile.max()) if len(tile) else 0
    if max_count == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    py, px = torch.meshgrid(torch.arange(tile_size), torch.arange(tile_size), indexing="ij")
    offsets = torch.stack([px.flatten(), py.flatten()], -1)
    pixels_all, gaussians_all = [], []
    tiles_per_chunk = max(1, budget // (max_count * tile_size * tile_size))
    slot = torch.arange(max_count)
    for t0 in range(0, n_tiles, tiles_per_chunk):
        tiles = torch.arange(t0, min(n_tiles, t0 + tiles_per_chunk))
        index = start[tiles, None] + slot
        in_list = slot < per_tile[tiles, None]
        g = torch.where(in_list, gaussian[index.clamp(max=len(gaussian) - 1)], torch.zeros_like(index))
        pix = torch.stack([tiles % tiles_x, tiles // tiles_x], -1)[:, None, :] * tile_size + offsets
        alpha = R._alpha(means2d[g][:, :, None, :], conics[g][:, :, None, :], opacities[g][:, :, None],
                         pix[:, None, :, :].float() + 0.5)
        blended = in_list[:, :, None] & (alpha >= R.ALPHA_THRESHOLD)
        alpha = torch.where(blended, alpha, torch.zeros_like(alpha))
        transmittance_after = torch.cumprod(1.0 - alpha, dim=1)
        blended &= transmittance_after > R.TRANSMITTANCE_MIN
        on_image = (pix[..., 0] < width) & (pix[..., 1] < height)
        blended &= on_image[:, None, :]
        t_idx, p_idx, k_idx = torch.nonzero(blended.permute(0, 2, 1), as_tuple=True)
        pixel_xy = pix[t_idx, p_idx]
        pixels_all.append(pixel_xy[:, 1] * width + pixel_xy[:, 0])
        gaussians_all.append(g[t_idx, k_idx])
    return torch.cat(pixels_all), torch.cat(gaussians_all)


def _old_composite(means2d, conics, opacities, colors, depths, radii, width, height, tile_size):
    tile, gaussian, tiles_x, tiles_y = _old_tile_intersections(means2d.detach(), radii, depths.detach(), width,
                                                               height, tile_size)
    pixel, gaussian = _old_contributing_pairs(means2d.detach(), conics.detach(), opacities.detach(), tile, gaussian,
                                              tiles_x, tiles_y, width, height, tile_size)
    n_pixels = width * height
    pixel_xy = torch.stack([pixel % width, pixel // width], -1).to(means2d.dtype) + 0.5
    alpha = R._alpha(means2d[gaussian], conics[gaussian], opacities[gaussian], pixel_xy)
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


# ----------------------------------------------------------------------------------------------- bench
def random_scene(n: int, size: int, seed: int = 0, scale: float = 0.015):
    """n Gaussians spread over the view of a camera 2.5 units away (focal 1.2 * size)."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([1.8, 1.8, 1.0])
    quats = torch.randn(n, 4, generator=g)
    scales = torch.exp(torch.randn(n, 3, generator=g) * 0.5) * scale
    opacities = torch.rand(n, generator=g) * 0.9 + 0.05
    sh = torch.randn(n, 16, 3, generator=g) * 0.3
    c2w = torch.eye(4)
    c2w[2, 3] = -2.5
    K = torch.tensor([[1.2 * size, 0, size / 2], [0, 1.2 * size, size / 2], [0, 0, 1.0]])
    return (means, quats, scales, opacities, sh), torch.linalg.inv(c2w)[None], K[None]


def step(params, viewmats, Ks, size, composite):
    original = R._composite
    R._composite = composite
    try:
        params = [p.detach().clone().requires_grad_(True) for p in params]
        t = time.perf_counter()
        image, alpha, _ = R.rasterize(*params, viewmats, Ks, size, size, 3, torch.ones(3), backend="torch")
        (image * torch.tensor([0.3, 0.5, 0.7])).sum().backward()
        return time.perf_counter() - t, image.detach(), [p.grad for p in params]
    finally:
        R._composite = original


@dataclass
class BenchRasterizer:
    """Forward + backward seconds of the CPU rasterizer against the previous implementation, in one run."""

    sizes: tuple[int, ...] = (64, 128)
    """Square image sizes in pixels."""
    counts: tuple[int, ...] = (4000, 20000, 50000)
    """Numbers of random Gaussians in view."""
    repeats: int = 3
    """Timed runs of the current implementation (the best is kept)."""
    old_repeats: int = 1
    """Timed runs of the previous implementation (0: skip it)."""
    threads: int = 2
    """torch CPU threads."""


def main(args: BenchRasterizer) -> None:
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads; forward + backward, one camera, SH degree 3")
    print(f"{'size':>5} {'gaussians':>9} {'pairs':>9} {'old s':>8} {'new s':>8} {'speed-up':>8}  max |diff| image, grads")
    for size in args.sizes:
        for n in args.counts:
            params, viewmats, Ks = random_scene(n, size)
            step(params, viewmats, Ks, size, R._composite)  # warm-up
            new_time, image, grads = min((step(params, viewmats, Ks, size, R._composite)
                                          for _ in range(args.repeats)), key=lambda r: r[0])
            with torch.no_grad():
                radii, means2d, depths, conics = R.project(params[0], params[1], params[2], params[3][None],
                                                           viewmats, Ks, size, size, 0.01, 1e10, 0.3)
                n_pairs = len(R._contributing_pairs(means2d[0], conics[0], params[3], radii[0], depths[0], size,
                                                    size, 16)[0])
            line = f"{size:>5} {n:>9} {n_pairs:>9} "
            if args.old_repeats:
                old_time, old_image, old_grads = min((step(params, viewmats, Ks, size, _old_composite)
                                                      for _ in range(args.old_repeats)), key=lambda r: r[0])
                diff_image = (image - old_image).abs().max().item()
                diff_grads = max(((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()
                                 for a, b in zip(grads, old_grads))
                line += f"{old_time:>8.3f} {new_time:>8.3f} {old_time / new_time:>7.1f}x  "
                line += f"{diff_image:.1e}, {diff_grads:.1e} (rel)"
            else:
                line += f"{'-':>8} {new_time:>8.3f}"
            print(line, flush=True)


if __name__ == "__main__":
    main(tyro.cli(BenchRasterizer))
