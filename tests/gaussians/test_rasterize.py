"""The pure-PyTorch rasterizer: exact gradients, agreement with a naive per-pixel reference and with gsplat."""

from __future__ import annotations

import math

import pytest
import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

from splat2splat.gaussians import pixel_pairs
from splat2splat.gaussians import rasterize as rasterize_module
from splat2splat.gaussians.rasterize import ALPHA_THRESHOLD, project, rasterize
from tests.conftest import requires_cuda


def _random_scene(n: int, dtype=torch.float32, seed: int = 0, scale: float = 0.05):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([1.0, 1.0, 0.6])
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * scale + scale / 2
    opacities = torch.rand(n, generator=g) * 0.8 + 0.1
    sh = torch.randn(n, 16, 3, generator=g) * 0.3
    return [t.to(dtype) for t in (means, quats, scales, opacities, sh)]


def _camera(width: int, height: int, focal: float, distance: float = 2.5, dtype=torch.float32):
    c2w = torch.eye(4, dtype=dtype)
    c2w[2, 3] = -distance
    K = torch.tensor([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], dtype=dtype)
    return torch.linalg.inv(c2w)[None], K[None]


def _naive_composite(means2d, conics, opacities, colors, depths, radii, width, height, tile_size, background):
    """One pixel at a time, exactly as gsplat's CUDA forward kernel loops."""
    image = torch.zeros(height, width, 3, dtype=colors.dtype)
    for y in range(height):
        for x in range(width):
            tx, ty = x // tile_size, y // tile_size
            ids = []
            for g in range(len(means2d)):
                if (radii[g] <= 0).any():
                    continue
                cx, cy = means2d[g] / tile_size
                rx, ry = radii[g].double() / tile_size
                if math.floor(cx - rx) <= tx < math.ceil(cx + rx) and math.floor(cy - ry) <= ty < math.ceil(cy + ry):
                    ids.append(g)
            ids.sort(key=lambda g: float(depths[g]))
            T, pixel = 1.0, torch.zeros(3, dtype=colors.dtype)
            for g in ids:
                dx, dy = means2d[g, 0] - (x + 0.5), means2d[g, 1] - (y + 0.5)
                a, b, c = conics[g]
                sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                alpha = min(0.999, float(opacities[g] * torch.exp(-sigma)))
                if sigma < 0 or alpha < ALPHA_THRESHOLD:
                    continue
                if T * (1 - alpha) <= 1e-4:
                    break
                pixel += colors[g] * alpha * T
                T *= 1 - alpha
            image[y, x] = pixel + T * background
    return image


def _tile_reference_pairs(means2d, conics, opacities, radii, depths, width, height, tile_size):
    """The previous implementation: every Gaussian listed for a tile tested against all of the tile's pixels.

    Returns the blended (pixel, Gaussian) pairs sorted by pixel, then front to back.
    """
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    ids = torch.nonzero((radii > 0).all(-1)).squeeze(-1)
    center = means2d[ids] / tile_size
    r = radii[ids].float() / tile_size
    tmin_x = torch.floor(center[:, 0] - r[:, 0]).clamp(0, tiles_x).long()
    tmin_y = torch.floor(center[:, 1] - r[:, 1]).clamp(0, tiles_y).long()
    span_x = torch.ceil(center[:, 0] + r[:, 0]).clamp(0, tiles_x).long() - tmin_x
    span_y = torch.ceil(center[:, 1] + r[:, 1]).clamp(0, tiles_y).long() - tmin_y
    counts = span_x * span_y
    gaussian = torch.repeat_interleave(ids, counts)
    owner = torch.repeat_interleave(torch.arange(len(ids)), counts)
    local = torch.arange(len(gaussian)) - (torch.cumsum(counts, 0) - counts)[owner]
    width_in_tiles = span_x[owner].clamp(min=1)
    tile = (tmin_y[owner] + local // width_in_tiles) * tiles_x + tmin_x[owner] + local % width_in_tiles
    order = torch.sort(depths[gaussian], stable=True).indices
    tile, gaussian = tile[order], gaussian[order]
    order = torch.sort(tile, stable=True).indices
    tile, gaussian = tile[order], gaussian[order]
    pixels, gaussians = [], []
    py, px = torch.meshgrid(torch.arange(tile_size), torch.arange(tile_size), indexing="ij")
    for t in range(tiles_x * tiles_y):
        g = gaussian[tile == t]
        pix = torch.stack([px.flatten() + t % tiles_x * tile_size, py.flatten() + t // tiles_x * tile_size], -1)
        alpha = pixel_pairs._alpha(means2d[g][:, None], conics[g][:, None], opacities[g][:, None],
                                        pix.to(means2d.dtype) + 0.5)  # [K, P]
        blended = alpha >= ALPHA_THRESHOLD
        alpha = torch.where(blended, alpha, torch.zeros_like(alpha))
        blended &= torch.cumprod(1.0 - alpha.double(), 0) > 1e-4
        blended &= ((pix[:, 0] < width) & (pix[:, 1] < height))[None]
        k, p = torch.nonzero(blended, as_tuple=True)
        pixels.append(pix[p, 1] * width + pix[p, 0])
        gaussians.append(g[k])
    pixel, gaussian = torch.cat(pixels), torch.cat(gaussians)
    order = torch.sort(pixel, stable=True).indices
    return pixel[order], gaussian[order]


def _projected(width, height, focal, n, dtype=torch.float64, seed=0, scale=0.08, opacity=None, shift=(0.0, 0.0)):
    means, quats, scales, opacities, sh = _random_scene(n, dtype, seed=seed, scale=scale)
    means[:, :2] += torch.tensor(shift, dtype=dtype)
    if opacity is not None:
        opacities[:] = opacity
    viewmats, Ks = _camera(width, height, focal, dtype=dtype)
    radii, means2d, depths, conics = project(means, quats, scales, opacities[None], viewmats, Ks, width, height,
                                             0.01, 1e10, 0.3)
    return means, quats, scales, opacities, sh, viewmats, Ks, (means2d[0], conics[0], opacities, radii[0], depths[0])


# (width, height, focal, n, scale, opacity, shift): sizes not multiple of the tile, off-screen, huge, opaque.
EDGE_CASES = {
    "small": (20, 18, 30.0, 40, 0.08, None, (0.0, 0.0)),
    "non_square_odd": (37, 13, 40.0, 60, 0.05, None, (0.0, 0.0)),
    "partly_off_screen": (24, 20, 30.0, 60, 0.08, None, (0.45, -0.3)),
    "huge": (21, 19, 30.0, 6, 1.5, None, (0.0, 0.0)),
    "opaque_overlapping": (19, 22, 30.0, 120, 0.1, 0.999, (0.0, 0.0)),
    "nearly_opaque": (33, 17, 30.0, 150, 0.06, 0.97, (0.0, 0.0)),
    "saturated": (23, 21, 30.0, 80, 0.1, 1.0, (0.0, 0.0)),  # alpha clamped at 0.999 around the centres
}


@pytest.mark.parametrize("case", ["small", "partly_off_screen", "huge", "opaque_overlapping"])
def test_matches_naive_per_pixel_reference(case):
    width, height, focal, n, scale, opacity, shift = EDGE_CASES[case]
    means, quats, scales, opacities, sh = _random_scene(n, torch.float64, scale=scale)
    means[:, :2] += torch.tensor(shift, dtype=torch.float64)
    if opacity is not None:
        opacities[:] = opacity
    elif case == "small":
        opacities[:5] = 0.999  # opaque splats exercise the early termination
    viewmats, Ks = _camera(width, height, focal, dtype=torch.float64)
    background = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64)
    image, _, info = rasterize(means, quats, scales, opacities, sh, viewmats, Ks, width, height, 0, background,
                               tile_size=8, backend="torch")
    colors = torch.clamp_min(sh[:, 0] * 0.28209479177387814 + 0.5, 0.0)
    expected = _naive_composite(info["means2d"][0], info["conics"][0], opacities, colors, info["depths"][0],
                                info["radii"][0], width, height, 8, background)
    torch.testing.assert_close(image[0], expected, atol=1e-9, rtol=1e-7)
    assert (image[0] - background).abs().amax(-1).gt(0.05).float().mean() > 0.3  # the scene covers the image


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", sorted(EDGE_CASES))
@pytest.mark.parametrize("tile_size", [16, 8])
def test_pairs_match_tile_reference(case, dtype, tile_size):
    """The per-Gaussian candidate search finds exactly the pairs of the per-tile search, in the same order."""
    width, height, focal, n, scale, opacity, shift = EDGE_CASES[case]
    *_, (means2d, conics, opacities, radii, depths) = _projected(width, height, focal, n, dtype, scale=scale,
                                                                 opacity=opacity, shift=shift)
    if case == "small":
        depths = depths.round(decimals=1)  # depth ties: broken by Gaussian index
    expected = _tile_reference_pairs(means2d, conics, opacities, radii, depths, width, height, tile_size)
    for budget in (None, 200, 1):  # one chunk; many chunks of Gaussians (front to back); one Gaussian each
        pixel, gaussian, alpha, _ = pixel_pairs._contributing_pairs(means2d, conics, opacities, radii, depths,
                                                                      width, height, tile_size, budget=budget)
        assert torch.equal(pixel, expected[0]) and torch.equal(gaussian, expected[1])
        centres = torch.stack([pixel % width, pixel // width], -1).to(dtype) + 0.5
        expected_alpha = pixel_pairs._alpha(means2d[gaussian], conics[gaussian], opacities[gaussian], centres)
        torch.testing.assert_close(alpha, expected_alpha, rtol=0, atol=0)
    if case == "opaque_overlapping":  # early termination cut some pixels' lists short
        all_pairs = torch.nonzero(pixel_pairs._alpha(
            means2d[:, None], conics[:, None], opacities[:, None],
            torch.stack(torch.meshgrid(torch.arange(width), torch.arange(height), indexing="xy"), -1).reshape(-1, 2)
            .to(dtype) + 0.5) >= ALPHA_THRESHOLD)
        assert len(pixel) < 0.85 * len(all_pairs)
    if case == "partly_off_screen":
        m = means2d[(radii > 0).all(-1)]
        assert ((m[:, 0] < 0) | (m[:, 0] >= width) | (m[:, 1] < 0) | (m[:, 1] >= height)).any()
    if case == "huge":
        assert ((radii[:, 0] > width) & (radii[:, 1] > height)).any()


def test_pairs_match_tile_reference_random_scenes():
    for seed in range(4):
        *_, projected = _projected(64, 48, 50.0, 400, torch.float32, seed=seed, scale=0.04)
        expected = _tile_reference_pairs(*projected, 64, 48, 16)
        pixel, gaussian, *_ = pixel_pairs._contributing_pairs(*projected, 64, 48, 16, budget=5000)
        assert torch.equal(pixel, expected[0]) and torch.equal(gaussian, expected[1])


def test_ill_conditioned_conics_fall_back_to_the_tile_box():
    """Thin rotated splats whose conic leaves no certain ellipse bound are searched over their whole tile box."""
    means2d = torch.tensor([[10.3, 9.7], [20.0, 12.0], [5.0, 20.0]])
    # Nearly singular, rotated by 45 degrees: rho = |b| / sqrt(ac) within 1e-7 of 1.
    conics = torch.tensor([[1.0, -0.9999999, 1.0], [0.5, 0.2, 0.5], [2.0, 0.0, 0.001]])
    opacities = torch.tensor([0.9, 0.8, 0.7])
    radii = torch.tensor([[30, 30], [5, 5], [3, 40]], dtype=torch.int32)
    depths = torch.tensor([1.0, 2.0, 3.0])
    *_, ok = pixel_pairs._alpha_ellipses(means2d, conics, opacities)
    assert ok.tolist() == [False, True, True]
    expected = _tile_reference_pairs(means2d, conics, opacities, radii, depths, 32, 24, 16)
    pixel, gaussian, *_ = pixel_pairs._contributing_pairs(means2d, conics, opacities, radii, depths, 32, 24, 16)
    assert torch.equal(pixel, expected[0]) and torch.equal(gaussian, expected[1])


def test_no_visible_gaussians():
    means, quats, scales, opacities, sh = _random_scene(10)
    means[:, 2] = -5.0  # all behind the camera
    params = [t.requires_grad_(True) for t in (means, quats, scales, opacities, sh)]
    viewmats, Ks = _camera(20, 12, 20.0)
    background = torch.tensor([0.3, 0.2, 0.1])
    image, alpha, info = rasterize(*params, viewmats, Ks, 20, 12, 3, background, backend="torch")
    assert (info["radii"] == 0).all()
    assert torch.equal(image, background.expand(1, 12, 20, 3)) and torch.equal(alpha, torch.zeros(1, 12, 20, 1))
    image.sum().backward()
    assert all(p.grad is None or (p.grad == 0).all() for p in params)


@pytest.mark.parametrize("depth", [0.0, 0.005, -1e-30])
def test_gaussian_on_the_camera_plane_is_culled_with_finite_gradients(depth):
    """Depth 0 (and anything up to the near plane) is culled: it adds nothing, and the perspective divide by
    its depth must not turn the gradients of the whole scene into nan."""
    means, quats, scales, opacities, sh = _random_scene(10)
    viewmats, Ks = _camera(20, 12, 20.0)  # camera at z = -2.5 looking down +z
    means[0] = torch.tensor([0.3, 0.2, -2.5 + depth])
    params = [t.clone().requires_grad_(True) for t in (means, quats, scales, opacities, sh)]
    background = torch.tensor([0.3, 0.2, 0.1])
    image, alpha, info = rasterize(*params, viewmats, Ks, 20, 12, 3, background, backend="torch")
    assert (info["radii"][0, 0] == 0).all() and torch.isfinite(info["means2d"]).all()
    (image.sum() + alpha.sum()).backward()
    for name, p in zip(("means", "quats", "scales", "opacities", "sh"), params):
        assert torch.isfinite(p.grad).all(), name
        assert (p.grad[0] == 0).all(), name
    others = [t[1:] for t in (means, quats, scales, opacities, sh)]
    without, without_alpha, _ = rasterize(*others, viewmats, Ks, 20, 12, 3, background, backend="torch")
    assert torch.equal(image.detach(), without) and torch.equal(alpha.detach(), without_alpha)
    assert params[0].grad[1:].abs().sum() > 0  # the visible ones still learn


def test_segmented_cumsum_is_exact_per_segment():
    g = torch.Generator().manual_seed(0)
    segment = torch.sort(torch.randint(0, 3000, (100000,), generator=g)).values
    values = -torch.rand(100000, generator=g, dtype=torch.float64) * 7.0
    inclusive, total = pixel_pairs._segmented_cumsum(values, segment, totals=True)
    for s in (0, 1234, 2999):
        v = values[segment == s]
        torch.testing.assert_close(inclusive[segment == s], torch.cumsum(v, 0), rtol=0, atol=1e-12)
        assert torch.allclose(total[segment == s], v.sum(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", ["saturated", "nearly_opaque", "partly_off_screen"])
def test_blend_gradients_match_autograd(case):
    """Forward and analytic backward equal autograd through ``_alpha`` and a per-pixel product of (1 - alpha),
    clamped alphas included."""
    width, height, focal, n, scale, opacity, shift = EDGE_CASES[case]
    *_, (means2d, conics, opacities, radii, depths) = _projected(width, height, focal, n, torch.float64,
                                                                 scale=scale, opacity=opacity, shift=shift)
    colors = torch.rand(len(means2d), 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    if case == "saturated":  # centres on pixel centres: alpha = min(0.999, 1.0) there
        means2d = torch.cat([torch.floor(means2d[:20]) + 0.5, means2d[20:]])
    inputs = [t.detach().clone().requires_grad_(True) for t in (means2d, conics, opacities, colors)]
    weights = torch.rand(height, width, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    image, accumulated = rasterize_module._composite(*inputs, depths, radii, width, height, 16)
    fast_result = torch.cat([image, accumulated], -1)
    (fast_result * weights).sum().backward()
    fast = [t.grad for t in inputs]

    inputs = [t.detach().clone().requires_grad_(True) for t in (means2d, conics, opacities, colors)]
    pixel, gaussian, *_ = pixel_pairs._contributing_pairs(means2d, conics, opacities, radii, depths, width,
                                                              height, 16)
    m, c, o, col = inputs
    alpha = pixel_pairs._alpha(m[gaussian], c[gaussian], o[gaussian],
                                    torch.stack([pixel % width, pixel // width], -1).double() + 0.5)
    assert (alpha == 0.999).any() or case != "saturated"  # clamped alphas are differentiated too
    image = torch.zeros(width * height, 3, dtype=torch.float64)
    accumulated = torch.zeros(width * height, dtype=torch.float64)
    for p in torch.unique(pixel).tolist():
        k = pixel == p
        a = alpha[k]
        w = a * torch.cumprod(torch.cat([a.new_ones(1), 1 - a[:-1]]), 0)
        image = image.index_add(0, pixel[k][:1], (w[:, None] * col[gaussian[k]]).sum(0, keepdim=True))
        accumulated = accumulated.index_add(0, pixel[k][:1], w.sum(0, keepdim=True))
    result = torch.cat([image.reshape(height, width, 3), accumulated.reshape(height, width, 1)], -1)
    torch.testing.assert_close(fast_result, result, rtol=1e-12, atol=1e-14)
    (result * weights).sum().backward()
    for name, a, b in zip(("means2d", "conics", "opacities", "colors"), fast, [t.grad for t in inputs]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=name)


def test_projection_matches_gsplat_torch_reference():
    means, quats, scales, opacities, _ = _random_scene(200)
    viewmats, Ks = _camera(64, 48, 60.0)
    radii, means2d, depths, conics = project(means, quats, scales, opacities[None], viewmats, Ks, 64, 48, 0.01, 1e10, 0.3)
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    ref_radii, ref_means2d, ref_depths, ref_conics, _ = _fully_fused_projection(means, covars, viewmats, Ks, 64, 48)
    torch.testing.assert_close(means2d, ref_means2d)
    torch.testing.assert_close(depths, ref_depths)
    torch.testing.assert_close(conics, ref_conics)
    # Ours is gsplat-CUDA's opacity-aware box: never larger than the plain 3.33-sigma box.
    assert (radii <= ref_radii).all() and (radii > 0).sum() > 100


def test_gradients_match_finite_differences():
    # Large, semi-transparent splats on a tiny image keep every alpha far from the 1/255 cut-off,
    # so the function is smooth and finite differences are meaningful.
    width, height = 8, 8
    means, quats, scales, opacities, sh = _random_scene(4, torch.float64, seed=3, scale=0.4)
    means = means * 0.3
    opacities = torch.tensor([0.5, 0.6, 0.4, 0.7], dtype=torch.float64)
    viewmats, Ks = _camera(width, height, 8.0, dtype=torch.float64)
    background = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    weights = torch.rand(1, height, width, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def loss(means, quats, scales, opacities, sh):
        image, alpha, _ = rasterize(means, quats, scales, opacities, sh, viewmats, Ks, width, height, 1, background,
                                    tile_size=4, backend="torch")
        return (image * weights).sum() + alpha.sum()

    inputs = [t.clone().requires_grad_(True) for t in (means, quats, scales, opacities, sh[:, :4])]
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_info_supports_gsplat_strategies():
    means, quats, scales, opacities, sh = _random_scene(100)
    means.requires_grad_(True)
    viewmats, Ks = _camera(32, 32, 40.0)
    image, alpha, info = rasterize(means, quats, scales, opacities, sh, viewmats, Ks, 32, 32, 3, backend="torch")
    info["means2d"].retain_grad()
    image.sum().backward()
    assert info["means2d"].grad.shape == (1, 100, 2) and info["means2d"].grad.abs().sum() > 0
    assert info["radii"].shape == (1, 100, 2) and (info["width"], info["height"], info["n_cameras"]) == (32, 32, 1)
    assert ((alpha >= 0) & (alpha <= 1)).all()


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("sh_degree", [0, 3])
def test_parity_with_gsplat_cuda(sh_degree):
    """Images, alphas, radii, parameter gradients and the image-plane gradient that drives densification
    (info["means2d"].grad, which DefaultStrategy accumulates) agree with gsplat's CUDA kernels."""
    means, quats, scales, opacities, sh = _random_scene(3000, scale=0.03)
    viewmats, Ks = _camera(96, 80, 90.0)
    background = torch.tensor([1.0, 1.0, 1.0])
    outputs = {}
    for backend in ("gsplat", "torch"):
        params = [t.cuda().requires_grad_(True) for t in (means, quats, scales, opacities, sh)]
        image, alpha, info = rasterize(*params, viewmats.cuda(), Ks.cuda(), 96, 80, sh_degree, background.cuda(),
                                       backend=backend)
        info["means2d"].retain_grad()  # as gsplat's strategies do in step_pre_backward
        (image * torch.linspace(0, 1, 3, device="cuda")).sum().backward()
        grads = [p.grad for p in params] + [info["means2d"].grad]
        outputs[backend] = (image.detach(), alpha.detach(), info["radii"], grads)
    (img_a, alpha_a, radii_a, grads_a), (img_b, alpha_b, radii_b, grads_b) = outputs["gsplat"], outputs["torch"]
    torch.testing.assert_close(radii_a, radii_b, atol=1, rtol=0)
    torch.testing.assert_close(img_a, img_b, atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(alpha_a, alpha_b, atol=2e-4, rtol=1e-3)
    for name, ga, gb in zip(("means", "quats", "scales", "opacities", "sh", "means2d"), grads_a, grads_b):
        assert ga is not None and gb is not None and ga.shape == gb.shape, name
        scale = ga.abs().max().clamp(min=1e-8)
        assert ((ga - gb).abs().max() / scale) < 2e-2, name
    # Densification picks Gaussians by the norm of that gradient: the same ones must pass the threshold.
    norm_a, norm_b = grads_a[-1][0].norm(dim=-1), grads_b[-1][0].norm(dim=-1)
    threshold = norm_a.quantile(0.9)
    picked_a, picked_b = norm_a > threshold, norm_b > threshold
    assert picked_a.sum() > 100
    assert (picked_a != picked_b).float().mean() < 0.02
