"""The radiance field of the NeRF backend (nerfacto's ingredients in pure PyTorch).

* :class:`SceneSpace` maps world points into the unit cube the encodings live in: either the mip-NeRF 360
  contraction of unbounded space (L-infinity version, as nerfacto) or a plain bounding box.
* :class:`TriPlaneEncoding` (the default) is K-Planes' multi-scale factorisation: three axis-aligned feature
  planes per scale, sampled bilinearly and multiplied. :class:`HashGridEncoding` is Instant-NGP's
  multi-resolution hash encoding (nerfacto's): per level a table of feature vectors, trilinear interpolation
  of the 8 surrounding grid corners; coarse levels that fit their table are indexed densely.
* :class:`NerfField` puts small MLPs on top: position features -> density + geometry features, then
  geometry features + spherical-harmonic view direction (+ per-image appearance embedding) -> colour.

The tri-plane is the default because it was both faster and better per step than the pure-PyTorch hash
grid on a CPU (figures: docs/BENCHMARKS.md, "NeRF encoding"); on a GPU the balance may differ, and the hash
grid stays available as ``encoding="hash"``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _TruncExp(torch.autograd.Function):
    """``exp`` whose gradient is clamped (Instant-NGP's density activation: exp, but stable to train)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    return _TruncExp.apply(x)


class SceneSpace:
    """World points <-> the unit cube ``[0, 1]^3`` that the encodings and the occupancy grid cover.

    ``unbounded=True``: points are divided by ``radius`` and contracted (mip-NeRF 360, L-infinity norm:
    ``x`` stays inside ``|x| <= 1``, outside it becomes ``(2 - 1/|x|) x/|x|``), so all of space fits in
    ``[-2, 2]^3``, mapped to the unit cube. ``unbounded=False``: the box ``[-radius, radius]^3`` is the unit
    cube and points outside it are empty.
    """

    def __init__(self, radius: float, unbounded: bool) -> None:
        self.radius = float(radius)
        self.unbounded = unbounded

    def to_unit_cube(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[..., 3] world points -> ([..., 3] coordinates in [0, 1], [...] bool inside the modelled space)."""
        x = points / self.radius
        if self.unbounded:
            norm = x.abs().amax(-1, keepdim=True).clamp(min=1e-9)
            x = torch.where(norm <= 1.0, x, (2.0 - 1.0 / norm) * x / norm)
            return (x + 2.0) / 4.0, torch.ones(points.shape[:-1], dtype=torch.bool, device=points.device)
        inside = (x.abs() <= 1.0).all(-1)
        return (x + 1.0) / 2.0, inside

    def from_unit_cube(self, coords: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_unit_cube` (the outer shell of the contraction maps to very far points)."""
        if not self.unbounded:
            return (coords * 2.0 - 1.0) * self.radius
        c = coords * 4.0 - 2.0
        norm = c.abs().amax(-1, keepdim=True).clamp(min=1e-9, max=2.0 - 1e-6)
        distance = 1.0 / (2.0 - norm)  # L-inf norm of the uncontracted point
        return torch.where(norm <= 1.0, c, c * distance / norm) * self.radius


# Instant-NGP's hashing primes (the first is 1 so that one axis stays coherent in memory).
_PRIMES = (1, 2654435761, 805459861)


class HashGridEncoding(nn.Module):
    """Multi-resolution hash encoding of points in the unit cube: [N, 3] -> [N, n_levels * features_per_level]."""

    def __init__(self, n_levels: int, features_per_level: int, log2_table_size: int,
                 base_resolution: int, max_resolution: int) -> None:
        super().__init__()
        growth = math.exp((math.log(max_resolution) - math.log(base_resolution)) / max(n_levels - 1, 1))
        resolutions = [int(math.floor(base_resolution * growth**level)) for level in range(n_levels)]
        max_table = 2**log2_table_size
        # Coarse levels whose (res+1)^3 corners fit in the table get a collision-free dense table; as the
        # resolution grows with the level, they are a prefix of the levels.
        sizes = [min(max_table, (res + 1) ** 3) for res in resolutions]
        offsets = [sum(sizes[:level]) for level in range(n_levels)]
        self.n_levels, self.features_per_level = n_levels, features_per_level
        self.n_dense_levels = sum((res + 1) ** 3 <= max_table for res in resolutions)
        self.hash_mask = max_table - 1  # table sizes are powers of two: "% size" is "& (size - 1)"
        self.register_buffer("resolutions", torch.tensor(resolutions, dtype=torch.int64), persistent=False)
        self.register_buffer("table_offsets", torch.tensor(offsets, dtype=torch.int64), persistent=False)
        self.register_buffer("primes", torch.tensor(_PRIMES, dtype=torch.int64), persistent=False)
        # Instant-NGP initialises the features uniformly in +-1e-4: the field starts out nearly constant.
        self.table = nn.Parameter(torch.empty(sum(sizes), features_per_level).uniform_(-1e-4, 1e-4))

    @property
    def output_dim(self) -> int:
        return self.n_levels * self.features_per_level

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        n = coords.shape[0]
        res = self.resolutions.to(coords.dtype)[None, :, None]
        scaled = coords.clamp(0.0, 1.0)[:, None, :] * res  # [N, L, 3]
        lower = scaled.floor().clamp(max=res - 1)
        frac = scaled - lower
        # Per axis the two neighbouring grid lines (lower, lower + 1) and their interpolation weights; the 8
        # corners are their outer product, formed by broadcasting [..., 2, 1, 1] x [..., 1, 2, 1] x [..., 1, 1, 2]
        # (far cheaper than materialising [N, L, 8, 3] corner coordinates).
        lines = torch.stack([lower, lower + 1], dim=-1).long()  # [N, L, 3, 2]
        weight = torch.stack([1.0 - frac, frac], dim=-1)  # [N, L, 3, 2]
        index = torch.cat([self._dense_index(lines[:, :self.n_dense_levels]),
                           self._hashed_index(lines[:, self.n_dense_levels:])], dim=1).reshape(-1)
        weights = (weight[:, :, 0, :, None, None] * weight[:, :, 1, None, :, None]
                   * weight[:, :, 2, None, None, :]).reshape(n, self.n_levels, 8, 1)
        # index_select (backward: index_add) is ~5x faster on the CPU than nn.functional.embedding's backward.
        features = self.table.index_select(0, index).reshape(n, self.n_levels, 8, self.features_per_level)
        return (features * weights).sum(2).reshape(n, self.output_dim)

    def _dense_index(self, lines: torch.Tensor) -> torch.Tensor:
        """[N, Ld, 3, 2] grid lines of the dense levels -> [N, Ld, 2, 2, 2] indices into the whole table."""
        levels = lines.shape[1]
        stride = (self.resolutions[:levels] + 1)[None, :, None]
        x = lines[:, :, 0] + self.table_offsets[None, :levels, None]
        y, z = lines[:, :, 1] * stride, lines[:, :, 2] * (stride * stride)
        return x[..., :, None, None] + y[..., None, :, None] + z[..., None, None, :]

    def _hashed_index(self, lines: torch.Tensor) -> torch.Tensor:
        """[N, Lh, 3, 2] grid lines of the hashed levels -> [N, Lh, 2, 2, 2] indices into the whole table."""
        offsets = self.table_offsets[None, self.n_dense_levels:, None, None, None]
        x, y, z = (lines[:, :, axis] * self.primes[axis] for axis in range(3))
        return ((x[..., :, None, None] ^ y[..., None, :, None] ^ z[..., None, None, :]) & self.hash_mask) + offsets


class TriPlaneEncoding(nn.Module):
    """K-Planes' factorised encoding (static scenes: three planes) of points in the unit cube.

    At every resolution, three feature planes (xy, xz, yz) are sampled bilinearly and multiplied
    element-wise (the Hadamard product lets the planes carve out 3D structure); the resolutions' features are
    concatenated: [N, 3] -> [N, len(resolutions) * features]. One ``grid_sample`` call per resolution makes
    it much faster than a hash grid in pure PyTorch on the CPU.
    """

    def __init__(self, resolutions: tuple[int, ...], features: int) -> None:
        super().__init__()
        # K-Planes initialises uniformly in [0.1, 0.5], so products start non-zero and all planes get gradients.
        self.planes = nn.ParameterList(
            [nn.Parameter(torch.empty(3, features, r, r).uniform_(0.1, 0.5)) for r in resolutions])
        self.features = features

    @property
    def output_dim(self) -> int:
        return len(self.planes) * self.features

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        x = coords.clamp(0.0, 1.0) * 2.0 - 1.0  # grid_sample's [-1, 1]
        grid = torch.stack([x[:, [0, 1]], x[:, [0, 2]], x[:, [1, 2]]])[:, :, None, :]  # [3, N, 1, 2]
        out = [nn.functional.grid_sample(planes, grid, mode="bilinear", align_corners=True)[..., 0].prod(0)
               for planes in self.planes]  # each [features, N]
        return torch.cat(out, 0).T


def spherical_harmonics(directions: torch.Tensor, degree: int) -> torch.Tensor:
    """Real SH basis of unit directions [N, 3] -> [N, degree^2] (bands 0 .. degree-1; degree 1 to 4).

    ``degree`` counts bands as tiny-cuda-nn does (nerfacto's "SH degree 4" has 16 components).
    """
    if not 1 <= degree <= 4:
        raise ValueError(f"spherical harmonics degree must be 1 to 4, got {degree}")
    x, y, z = directions.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree > 1:
        out += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
    if degree > 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [1.0925484305920792 * x * y, -1.0925484305920792 * y * z, 0.94617469575755997 * zz - 0.31539156525251999,
                -1.0925484305920792 * x * z, 0.54627421529603959 * (xx - yy)]
    if degree > 3:
        out += [0.59004358992664352 * y * (-3.0 * xx + yy), 2.8906114426405538 * x * y * z,
                0.45704579946446572 * y * (1.0 - 5.0 * zz), 0.3731763325901154 * z * (5.0 * zz - 3.0),
                0.45704579946446572 * x * (1.0 - 5.0 * zz), 1.4453057213202769 * z * (xx - yy),
                0.59004358992664352 * x * (-xx + 3.0 * yy)]
    return torch.stack(out, -1)


def _mlp(in_dim: int, hidden_dim: int, n_hidden_layers: int, out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k in range(n_hidden_layers):
        layers += [nn.Linear(in_dim if k == 0 else hidden_dim, hidden_dim), nn.ReLU()]
    layers.append(nn.Linear(hidden_dim if n_hidden_layers else in_dim, out_dim))
    return nn.Sequential(*layers)


class NerfField(nn.Module):
    """Density and view-dependent colour at points given in unit-cube coordinates (see :class:`SceneSpace`)."""

    def __init__(self, encoding: HashGridEncoding | TriPlaneEncoding, hidden_dim: int, geometry_features: int, sh_degree: int,
                 n_appearance: int, appearance_dim: int, initial_density: float) -> None:
        super().__init__()
        self.encoding = encoding
        self.sh_degree = sh_degree
        self.density_shift = math.log(initial_density)
        self.density_mlp = _mlp(encoding.output_dim, hidden_dim, 1, 1 + geometry_features)
        self.appearance = nn.Embedding(n_appearance, appearance_dim) if appearance_dim > 0 else None
        if self.appearance is not None:
            nn.init.normal_(self.appearance.weight, std=0.01)
        self.color_mlp = _mlp(geometry_features + sh_degree**2 + appearance_dim, hidden_dim, 2, 3)

    def density(self, coords: torch.Tensor) -> torch.Tensor:
        """[N, 3] unit-cube points -> [N] volume density (per unit of world distance along a ray)."""
        return self._density_and_features(coords)[0]

    def forward(self, coords: torch.Tensor, directions: torch.Tensor,
                appearance: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Points [N, 3], unit view directions [N, 3], appearance codes [N, D] (or None) -> density [N], rgb [N, 3]."""
        density, geometry = self._density_and_features(coords)
        inputs = [geometry, spherical_harmonics(directions, self.sh_degree)]
        if self.appearance is not None:
            inputs.append(appearance)
        rgb = torch.sigmoid(self.color_mlp(torch.cat(inputs, -1)))
        return density, rgb

    def _density_and_features(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.density_mlp(self.encoding(coords))
        # The initial MLP output is near 0, so the shift sets the density of the (near-constant) initial field.
        return trunc_exp(out[:, 0] + self.density_shift), out[:, 1:]

    def appearance_codes(self, view_ids: torch.Tensor) -> torch.Tensor | None:
        return None if self.appearance is None else self.appearance(view_ids)

    def mean_appearance(self, view_ids: list[int]) -> torch.Tensor | None:
        """The average training embedding: what nerfacto renders unseen views with."""
        if self.appearance is None:
            return None
        return self.appearance.weight[view_ids].mean(0)
