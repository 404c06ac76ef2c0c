"""Gaussian scene parameters, laid out as in 3DGS / gsplat's simple_trainer.

``splats`` is a ``torch.nn.ParameterDict`` with (N Gaussians, K = (sh_degree + 1)^2 SH coefficients):

=============  ===========  ==============================================
key            shape        meaning (activation)
=============  ===========  ==============================================
``means``      [N, 3]       centres, normalised world frame
``scales``     [N, 3]       log of the standard deviations (``exp``)
``quats``      [N, 4]       rotation quaternion w, x, y, z (normalised)
``opacities``  [N]          logit of opacity (``sigmoid``)
``sh0``        [N, 1, 3]    degree-0 SH coefficient (DC)
``shN``        [N, K-1, 3]  higher SH coefficients (K-1 = 0 for degree 0)
=============  ===========  ==============================================
"""

from __future__ import annotations

import math

import torch

SPLAT_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")
SH_C0 = 0.28209479177387814  # Y_0^0; colour = SH_C0 * sh0 + 0.5


def rgb_to_sh(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh: torch.Tensor) -> torch.Tensor:
    return sh * SH_C0 + 0.5


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


def sh_degree_of(splats: dict[str, torch.Tensor]) -> int:
    return int(round(math.sqrt(splats["shN"].shape[1] + 1))) - 1


def knn_mean_distance(points: torch.Tensor, k: int = 3, chunk: int = 2048) -> torch.Tensor:
    """Mean distance of each point to its ``k`` nearest neighbours (chunked brute force, fine for <1M points)."""
    k = min(k, len(points) - 1)
    if k <= 0:
        return torch.ones(len(points))
    out = []
    for start in range(0, len(points), chunk):
        d = torch.cdist(points[start:start + chunk], points)
        out.append(d.topk(k + 1, largest=False).values[:, 1:].mean(-1))
    return torch.cat(out)


def init_splats(
    points: torch.Tensor,
    colors: torch.Tensor,
    sh_degree: int = 3,
    init_opacity: float = 0.1,
    init_scale: float = 1.0,
) -> torch.nn.ParameterDict:
    """Isotropic Gaussians at ``points`` with the given colours; size from the 3 nearest neighbours (as 3DGS)."""
    n = len(points)
    distances = knn_mean_distance(points.float()).clamp(min=1e-7)
    return torch.nn.ParameterDict({
        "means": torch.nn.Parameter(points.float().clone()),
        "scales": torch.nn.Parameter(torch.log(distances * init_scale)[:, None].repeat(1, 3)),
        "quats": torch.nn.Parameter(torch.cat([torch.ones(n, 1), torch.zeros(n, 3)], -1)),
        "opacities": torch.nn.Parameter(torch.logit(torch.full((n,), init_opacity))),
        "sh0": torch.nn.Parameter(rgb_to_sh(colors.float().clamp(0, 1))[:, None, :].clone()),
        "shN": torch.nn.Parameter(torch.zeros(n, num_sh_bases(sh_degree) - 1, 3)),
    })


def random_points(n: int, extent: float, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform random points in a cube of half-size ``extent`` with random colours (init without SfM points)."""
    points = (torch.rand(n, 3, generator=generator) * 2 - 1) * extent
    return points, torch.rand(n, 3, generator=generator)


def activated(splats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rasterizer inputs: means, unit-free quats, positive scales, opacities in (0, 1), SH [N, K, 3]."""
    return {
        "means": splats["means"],
        "quats": splats["quats"],
        "scales": torch.exp(splats["scales"]),
        "opacities": torch.sigmoid(splats["opacities"]),
        "sh": torch.cat([splats["sh0"], splats["shN"]], 1),
    }
