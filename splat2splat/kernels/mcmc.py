"""gsplat's MCMC densification ("3D Gaussian Splatting as Markov Chain Monte Carlo") on any device.

``gsplat.strategy.MCMCStrategy`` itself is plain PyTorch except for two CUDA-only calls inside
``gsplat.strategy.ops``:

* ``compute_relocation`` (used by ``relocate`` and ``sample_add``): gsplat's ``relocation`` kernel;
* ``quat_scale_to_covar_preci`` (used by ``inject_noise_to_position``): gsplat's covariance kernel.

:class:`CPUCompatibleMCMCStrategy` runs gsplat's own strategy code unchanged and, only while it steps
Gaussians that are *not* on CUDA, points those two names of ``gsplat.strategy.ops`` at PyTorch
references (:func:`relocation_reference` below and gsplat's own ``_quat_scale_to_covar_preci``); the same
on a GPU whose gsplat extension does not build. On CUDA with gsplat's kernels nothing is replaced, so GPU
training is exactly gsplat's. A subclass with a scoped swap was chosen over
re-implementing ``relocate`` / ``sample_add`` (which would copy gsplat's optimizer-state bookkeeping)
and over a permanent monkey-patch (which would change gsplat for every other user in the process).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci  # gsplat's own reference (pinned gsplat 1.5)
from gsplat.strategy import MCMCStrategy
from gsplat.strategy import ops as gsplat_strategy_ops

from splat2splat.kernels.build import gsplat_cuda_available


def relocation_reference(
    opacities: torch.Tensor, scales: torch.Tensor, ratios: torch.Tensor, binoms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch twin of ``gsplat.relocation.compute_relocation`` (its ``relocation_kernel``), any device.

    Splitting a Gaussian of opacity ``o`` and scale ``s`` into ``n`` copies (Eq. 9 of 3DGS-MCMC):
    ``o' = 1 - (1 - o)^(1/n)`` and
    ``s' = s * o / sum_{i=1..n} sum_{k=0..i-1} binoms[i-1, k] (-1)^k o'^(k+1) / sqrt(k+1)``.
    As in gsplat, ``ratios`` (= n) is clamped to ``[1, n_max]`` and truncated to an integer, and the
    table is read only on and below its diagonal. Evaluated in float64 and returned in the inputs'
    dtypes: the alternating series cancels heavily for large n, where float64 is the more faithful value.

    Args:
        opacities: [N] opacities in (0, 1). scales: [N, 3]. ratios: [N] copy counts. binoms: [n_max, n_max].
    Returns:
        (new_opacities [N], new_scales [N, 3]).
    """
    n_max = binoms.shape[0]
    work = torch.float64
    copies = ratios.clamp(min=1, max=n_max).to(torch.int64)
    opacity = opacities.to(work)
    new_opacity = 1.0 - (1.0 - opacity) ** (1.0 / copies.to(work))

    # The coefficient of o'^(k+1) summed over the table rows i-1 = 0..n-1 is a column prefix sum of the
    # lower-triangular table, so the double loop becomes one gather and one reduction per Gaussian.
    row_prefix_sums = torch.tril(binoms.to(device=opacities.device, dtype=work)).cumsum(dim=0)
    coefficients = row_prefix_sums[copies - 1]  # [N, n_max]
    k = torch.arange(n_max, device=opacities.device, dtype=work)
    signed_weights = (-1.0) ** k / torch.sqrt(k + 1.0)
    denominator = (coefficients * signed_weights * new_opacity[:, None] ** (k + 1.0)).sum(dim=-1)

    new_scales = (opacity / denominator)[:, None] * scales.to(work)
    return new_opacity.to(opacities.dtype), new_scales.to(scales.dtype)


# Names that gsplat.strategy.ops looks up at call time, and their device-agnostic replacements.
_NON_CUDA_REPLACEMENTS = {
    "compute_relocation": relocation_reference,
    "quat_scale_to_covar_preci": _quat_scale_to_covar_preci,
}


@contextlib.contextmanager
def gsplat_strategy_ops_in_pytorch() -> Iterator[None]:
    """Within the block, ``gsplat.strategy.ops`` uses the PyTorch references instead of gsplat's CUDA ops.

    The previous bindings are restored on exit (also on error), so gsplat is only changed while a
    non-CUDA strategy step runs. The references are correct on every device, so code that runs
    concurrently on CUDA stays correct, just slower.
    """
    previous = {name: getattr(gsplat_strategy_ops, name) for name in _NON_CUDA_REPLACEMENTS}
    try:
        for name, replacement in _NON_CUDA_REPLACEMENTS.items():
            setattr(gsplat_strategy_ops, name, replacement)
        yield
    finally:
        for name, original in previous.items():
            setattr(gsplat_strategy_ops, name, original)


class CPUCompatibleMCMCStrategy(MCMCStrategy):
    """``gsplat.strategy.MCMCStrategy`` that also runs on CPU, or on CUDA without gsplat's kernels (same options,
    state and results)."""

    def step_post_backward(
        self,
        params: dict[str, torch.nn.Parameter] | torch.nn.ParameterDict,
        optimizers: dict[str, torch.optim.Optimizer],
        state: dict[str, Any],
        step: int,
        info: dict[str, Any],
        lr: float,
    ) -> None:
        if params["means"].is_cuda and gsplat_cuda_available():
            super().step_post_backward(params, optimizers, state, step, info, lr)
            return
        with gsplat_strategy_ops_in_pytorch():
            super().step_post_backward(params, optimizers, state, step, info, lr)


def mcmc_strategy(**options: Any) -> MCMCStrategy:
    """The MCMC strategy the trainer uses: ``MCMCStrategy`` options (cap_max, refine_every, ...), any device."""
    return CPUCompatibleMCMCStrategy(**options)
