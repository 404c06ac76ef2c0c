"""MCMC densification on CPU: the relocation reference against the formula, and gsplat's strategy end to end."""

from __future__ import annotations

import math

import gsplat.relocation
import gsplat.strategy.ops
import pytest
import torch
from tests.conftest import requires_cuda

from splat2splat.kernels.mcmc import CPUCompatibleMCMCStrategy, mcmc_strategy, relocation_reference

MIN_OPACITY = 0.005


def binomial_table() -> torch.Tensor:
    return CPUCompatibleMCMCStrategy().initialize_state()["binoms"]


def scalar_relocation(opacity: float, scale: list[float], n: int) -> tuple[float, list[float]]:
    """gsplat's relocation_kernel for one Gaussian, loop for loop, with math.comb for the table."""
    new_opacity = 1.0 - (1.0 - opacity) ** (1.0 / n)
    denominator = 0.0
    for i in range(1, n + 1):
        for k in range(i):
            denominator += math.comb(i - 1, k) * (-1.0) ** k / math.sqrt(k + 1) * new_opacity ** (k + 1)
    return new_opacity, [opacity / denominator * s for s in scale]


def test_relocation_matches_the_scalar_formula():
    generator = torch.Generator().manual_seed(0)
    n_gaussians = 24
    opacities = torch.rand(n_gaussians, generator=generator, dtype=torch.float64) * 0.98 + 0.01
    scales = torch.rand(n_gaussians, 3, generator=generator, dtype=torch.float64) + 0.05
    ratios = torch.arange(n_gaussians) % 8 + 1

    new_opacities, new_scales = relocation_reference(opacities, scales, ratios, binomial_table().double())

    for index in range(n_gaussians):
        opacity, scale = scalar_relocation(float(opacities[index]), scales[index].tolist(), int(ratios[index]))
        assert new_opacities[index].item() == pytest.approx(opacity, rel=1e-12)
        assert new_scales[index].tolist() == pytest.approx(scale, rel=1e-9)


def test_relocation_keeps_single_copies_and_clamps_ratios_like_gsplat():
    opacities = torch.tensor([0.3, 0.6, 0.9])
    scales = torch.tensor([[0.1, 0.2, 0.3]] * 3)
    binoms = binomial_table()
    n_max = binoms.shape[0]

    # One copy of a Gaussian is the Gaussian itself.
    new_opacities, new_scales = relocation_reference(opacities, scales, torch.ones(3, dtype=torch.int64), binoms)
    torch.testing.assert_close(new_opacities, opacities)
    torch.testing.assert_close(new_scales, scales)
    assert new_opacities.dtype == opacities.dtype and new_scales.dtype == scales.dtype

    # gsplat clamps the ratio to [1, n_max] before evaluating the series.
    below = relocation_reference(opacities, scales, torch.tensor([0, -3, 0]), binoms)
    above = relocation_reference(opacities, scales, torch.full((3,), n_max + 20), binoms)
    torch.testing.assert_close(below, relocation_reference(opacities, scales, torch.ones(3, dtype=torch.int64), binoms))
    torch.testing.assert_close(above, relocation_reference(opacities, scales, torch.full((3,), n_max), binoms))


def make_splats(n_gaussians: int, n_dead: int, generator: torch.Generator) -> torch.nn.ParameterDict:
    """Parameters laid out as in gsplat's simple_trainer; the first n_dead Gaussians are transparent."""
    opacities = torch.full((n_gaussians,), 0.5)
    opacities[:n_dead] = -10.0  # sigmoid ~ 4.5e-5 < MIN_OPACITY
    return torch.nn.ParameterDict(
        {
            "means": torch.nn.Parameter(torch.randn(n_gaussians, 3, generator=generator)),
            "scales": torch.nn.Parameter(torch.full((n_gaussians, 3), math.log(0.05))),
            "quats": torch.nn.Parameter(torch.randn(n_gaussians, 4, generator=generator)),
            "opacities": torch.nn.Parameter(opacities),
            "sh0": torch.nn.Parameter(torch.rand(n_gaussians, 1, 3, generator=generator)),
            "shN": torch.nn.Parameter(torch.zeros(n_gaussians, 15, 3)),
        }
    )


def fake_render(splats: torch.nn.ParameterDict, width: int = 8, height: int = 6) -> tuple[torch.Tensor, dict]:
    """A differentiable stand-in for rasterization(): a scalar touching every parameter, and its info dict."""
    n_gaussians = splats["means"].shape[0]
    means2d = splats["means"][None, :, :2] * 4.0 + torch.tensor([width / 2, height / 2])
    loss = (
        means2d.square().mean()
        + splats["scales"].exp().mean()
        + splats["quats"].square().mean()
        + torch.sigmoid(splats["opacities"]).mean()
        + splats["sh0"].square().mean()
        + splats["shN"].square().mean()
    )
    info = {
        "means2d": means2d,
        "radii": torch.full((1, n_gaussians, 2), 3, dtype=torch.int32),
        "width": width,
        "height": height,
        "n_cameras": 1,
    }
    return loss, info


def test_mcmc_strategy_relocates_and_grows_on_cpu():
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # gsplat samples with the global generator
    splats = make_splats(n_gaussians=40, n_dead=10, generator=generator)
    optimizers = {name: torch.optim.Adam([param], lr=1e-3, eps=1e-15) for name, param in splats.items()}
    cap_max = 45
    strategy = mcmc_strategy(cap_max=cap_max, refine_start_iter=1, refine_stop_iter=100, refine_every=2,
                             min_opacity=MIN_OPACITY)
    assert isinstance(strategy, CPUCompatibleMCMCStrategy)
    strategy.check_sanity(splats, optimizers)
    state = strategy.initialize_state()

    sizes = []
    for step in range(7):
        loss, info = fake_render(splats)
        loss.backward()
        for optimizer in optimizers.values():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        strategy.step_post_backward(splats, optimizers, state, step, info, lr=1e-3)
        sizes.append(splats["means"].shape[0])

    # Refinement at steps 2, 4 and 6 adds 5 % each time (40 -> 42 -> 44), then stops at cap_max.
    assert sizes == [40, 40, 42, 42, 44, 44, cap_max]
    opacities = torch.sigmoid(splats["opacities"])
    assert bool((opacities > MIN_OPACITY).all()), "dead Gaussians were not relocated"
    for name, param in splats.items():
        assert param.shape[0] == cap_max and torch.isfinite(param).all(), name
        assert optimizers[name].param_groups[0]["params"][0] is param
        assert optimizers[name].state[param]["exp_avg"].shape == param.shape
    # The swap of gsplat's CUDA ops is scoped to the strategy step.
    assert gsplat.strategy.ops.compute_relocation is gsplat.relocation.compute_relocation


@requires_cuda
@pytest.mark.gpu
def test_relocation_reference_matches_gsplat_cuda_op():
    generator = torch.Generator().manual_seed(0)
    n_gaussians = 4096
    opacities = (torch.rand(n_gaussians, generator=generator) * 0.98 + 0.01).cuda()
    scales = (torch.rand(n_gaussians, 3, generator=generator) + 0.05).cuda()
    ratios = (torch.arange(n_gaussians) % 10 + 1).cuda()
    binoms = binomial_table().cuda()

    expected = gsplat.relocation.compute_relocation(opacities, scales, ratios.clone(), binoms)
    actual = relocation_reference(opacities, scales, ratios, binoms)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
