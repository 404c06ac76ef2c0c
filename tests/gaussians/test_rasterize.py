"""The pure-PyTorch rasterizer: exact gradients, agreement with a naive per-pixel reference and with gsplat."""

from __future__ import annotations

import math

import pytest
import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

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


def test_matches_naive_per_pixel_reference():
    width, height = 20, 18
    means, quats, scales, opacities, sh = _random_scene(40, torch.float64, scale=0.08)
    opacities[:5] = 0.999  # opaque splats exercise the early termination
    viewmats, Ks = _camera(width, height, 30.0, dtype=torch.float64)
    background = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64)
    image, _, info = rasterize(means, quats, scales, opacities, sh, viewmats, Ks, width, height, 0, background,
                               tile_size=8, backend="torch")
    colors = torch.clamp_min(sh[:, 0] * 0.28209479177387814 + 0.5, 0.0)
    expected = _naive_composite(info["means2d"][0], info["conics"][0], opacities, colors, info["depths"][0],
                                info["radii"][0], width, height, 8, background)
    torch.testing.assert_close(image[0], expected, atol=1e-9, rtol=1e-7)
    assert (image[0] - background).abs().amax(-1).gt(0.05).float().mean() > 0.3  # the scene covers the image


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
@pytest.mark.parametrize("sh_degree", [0, 3])
def test_parity_with_gsplat_cuda(sh_degree):
    means, quats, scales, opacities, sh = _random_scene(3000, scale=0.03)
    viewmats, Ks = _camera(96, 80, 90.0)
    background = torch.tensor([1.0, 1.0, 1.0])
    outputs = {}
    for backend in ("gsplat", "torch"):
        params = [t.cuda().requires_grad_(True) for t in (means, quats, scales, opacities, sh)]
        image, alpha, info = rasterize(*params, viewmats.cuda(), Ks.cuda(), 96, 80, sh_degree, background.cuda(),
                                       backend=backend)
        (image * torch.linspace(0, 1, 3, device="cuda")).sum().backward()
        outputs[backend] = (image.detach(), alpha.detach(), info["radii"], [p.grad for p in params])
    (img_a, alpha_a, radii_a, grads_a), (img_b, alpha_b, radii_b, grads_b) = outputs["gsplat"], outputs["torch"]
    torch.testing.assert_close(radii_a, radii_b, atol=1, rtol=0)
    torch.testing.assert_close(img_a, img_b, atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(alpha_a, alpha_b, atol=2e-4, rtol=1e-3)
    for name, ga, gb in zip(("means", "quats", "scales", "opacities", "sh"), grads_a, grads_b):
        scale = ga.abs().max().clamp(min=1e-8)
        assert ((ga - gb).abs().max() / scale) < 2e-2, name
