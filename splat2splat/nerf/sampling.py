"""Rays, samples along them, an occupancy grid that skips empty space, and volume rendering.

Samples live in a dense ``[R, S]`` layout (R rays, S intervals per ray), but the field is evaluated only
where it matters, in the spirit of Instant-NGP / nerfacc without their CUDA kernels:

1. stratified intervals along every ray (uniform inside a bounding box, or linear-then-disparity spacing for
   unbounded scenes, as nerfacto's initial sampler),
2. intervals in cells the :class:`OccupancyGrid` marks empty are dropped,
3. a gradient-free density pass finds intervals hidden behind opaque surfaces (transmittance below
   ``min_transmittance``) and drops those too,
4. the field (density + colour, with gradients) runs on what is left, and the ``[R, S]`` arrays are
   alpha-composited over the dataset's background colour.

Dropped intervals contribute zero density, so step 3 changes the rendered colour by less than
``min_transmittance``; on CPU it is what makes training fast enough.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from splat2splat.nerf.field import NerfField, SceneSpace


def _box_entry_exit(origins: torch.Tensor, dirs: torch.Tensor, half_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances where rays enter and leave the cube [-half_size, half_size]^3 (exit < entry: missed)."""
    safe = torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0, t1 = (-half_size - origins) / safe, (half_size - origins) / safe
    return torch.minimum(t0, t1).amax(-1), torch.maximum(t0, t1).amin(-1)


def _lindisp(t: torch.Tensor) -> torch.Tensor:
    """nerfacto's piecewise spacing: linear up to distance 1, linear in disparity beyond (maps [0, inf) to [0, 1))."""
    return torch.where(t < 1.0, t / 2.0, 1.0 - 1.0 / (2.0 * t.clamp(min=1.0)))


def _lindisp_inverse(s: torch.Tensor) -> torch.Tensor:
    return torch.where(s < 0.5, 2.0 * s, 1.0 / (2.0 - 2.0 * s.clamp(max=1.0 - 1e-7)))


def interval_edges(origins: torch.Tensor, dirs: torch.Tensor, space: SceneSpace, n_intervals: int,
                   near: float, far: float, jitter: torch.Tensor | None) -> torch.Tensor:
    """[R, S+1] distances along each ray bounding S intervals.

    ``jitter`` ([R] in [0, 1), or None for the centred deterministic layout used when rendering) shifts all
    edges of a ray by up to one interval: stratified sampling that keeps the intervals contiguous.
    """
    steps = torch.arange(n_intervals + 1, dtype=origins.dtype, device=origins.device) / n_intervals
    if jitter is None:
        jitter = torch.full(origins.shape[:1], 0.5, dtype=origins.dtype, device=origins.device)
    steps = (steps[None, :] + (jitter[:, None] - 0.5) / n_intervals).clamp(0.0, 1.0)
    if space.unbounded:
        lo = _lindisp(torch.tensor(near / space.radius))
        hi = _lindisp(torch.tensor(far / space.radius))
        return _lindisp_inverse(lo + (hi - lo) * steps) * space.radius
    entry, exit_ = _box_entry_exit(origins, dirs, space.radius)
    entry = entry.clamp(min=near)
    exit_ = torch.maximum(exit_, entry)  # rays that miss get zero-length intervals: pure background
    return entry[:, None] + (exit_ - entry)[:, None] * steps


class OccupancyGrid:
    """A ``resolution^3`` grid over the unit cube: which cells may hold density (Instant-NGP / nerfacc).

    Each update evaluates the density at one random point per cell, keeps a decaying maximum of it per cell
    and marks cells whose opacity across one cell exceeds ``threshold`` (or the mean, if that is lower, so the
    grid never empties); marked cells are dilated by ``dilation`` cells so that surfaces can still move and
    grow (an edit that adds geometry starts next to existing geometry).
    """

    def __init__(self, resolution: int, space: SceneSpace, device: torch.device) -> None:
        self.resolution = resolution
        self.space = space
        self.density = torch.zeros((resolution,) * 3, device=device)
        self.occupied = torch.ones((resolution,) * 3, dtype=torch.bool, device=device)  # until the first update

    def cell_size(self) -> float:
        """World size of one cell in the uncontracted region."""
        extent = 4.0 if self.space.unbounded else 2.0
        return extent * self.space.radius / self.resolution

    def is_occupied(self, coords: torch.Tensor) -> torch.Tensor:
        """[..., 3] unit-cube points -> [...] bool."""
        cell = (coords * self.resolution).long().clamp(0, self.resolution - 1)
        return self.occupied[cell[..., 0], cell[..., 1], cell[..., 2]]

    @torch.no_grad()
    def update(self, field: NerfField, generator: torch.Generator, threshold: float, decay: float,
               dilation: int, chunk: int) -> None:
        g = self.resolution
        device = self.density.device
        cells = torch.stack(torch.meshgrid(*(torch.arange(g),) * 3, indexing="ij"), -1).reshape(-1, 3)
        coords = ((cells + torch.rand(cells.shape, generator=generator)) / g).to(device)
        density = torch.cat([field.density(coords[i:i + chunk]) for i in range(0, len(coords), chunk)])
        self.density = torch.maximum(self.density * decay, density.reshape(g, g, g))
        density_threshold = -math.log(1.0 - threshold) / self.cell_size()
        occupied = self.density > min(density_threshold, self.density.mean().item())
        if dilation > 0:
            size = 2 * dilation + 1
            occupied = torch.nn.functional.max_pool3d(occupied[None, None].float(), size, stride=1, padding=dilation)[0, 0] > 0
        self.occupied = occupied

    def occupancy_fraction(self) -> float:
        return self.occupied.float().mean().item()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"density": self.density.cpu().clone(), "occupied": self.occupied.cpu().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key in ("density", "occupied"):
            if state[key].shape != self.density.shape:
                raise ValueError(f"occupancy grid '{key}' is {tuple(state[key].shape)}, expected "
                                 f"{tuple(self.density.shape)}")
        self.density = state["density"].to(self.density.device).clone()
        self.occupied = state["occupied"].to(self.occupied.device).clone()


def exclusive_transmittance(alpha: torch.Tensor) -> torch.Tensor:
    """[R, S] opacities -> light reaching the start of each interval (1 at the first)."""
    survive = torch.cumprod(1.0 - alpha + 1e-10, dim=-1)
    return torch.cat([torch.ones_like(survive[:, :1]), survive[:, :-1]], dim=-1)


@dataclass
class RayBundle:
    """Rays to render: origins, unit directions [R, 3] and per-ray appearance codes [R, D] (or None)."""

    origins: torch.Tensor
    directions: torch.Tensor
    appearance: torch.Tensor | None


@dataclass
class RenderOutput:
    """Per ray: composited colour [R, 3], expected depth [R] and opacity [R]; and sample statistics."""

    color: torch.Tensor
    depth: torch.Tensor
    opacity: torch.Tensor
    stats: dict[str, float]


@dataclass
class SamplingSettings:
    n_intervals: int
    near: float
    far: float
    min_transmittance: float


def render_rays(field: NerfField, space: SceneSpace, grid: OccupancyGrid, rays: RayBundle, settings: SamplingSettings,
                background: torch.Tensor, jitter: torch.Tensor | None) -> RenderOutput:
    """Volume-render a bundle (differentiable with respect to the field)."""
    n_rays = rays.origins.shape[0]
    edges = interval_edges(rays.origins, rays.directions, space, settings.n_intervals, settings.near, settings.far, jitter)
    deltas = edges[:, 1:] - edges[:, :-1]
    midpoints = (edges[:, 1:] + edges[:, :-1]) / 2
    points = rays.origins[:, None, :] + rays.directions[:, None, :] * midpoints[..., None]
    coords, inside = space.to_unit_cube(points)
    candidates = inside & grid.is_occupied(coords) & (deltas > 0)
    visible = _drop_occluded(field, coords, deltas, candidates, settings.min_transmittance)

    density = torch.zeros(n_rays, settings.n_intervals, device=coords.device)
    rgb = torch.zeros(n_rays, settings.n_intervals, 3, device=coords.device)
    if visible.any():
        ray_of_sample = torch.arange(n_rays, device=coords.device)[:, None].expand_as(visible)[visible]
        appearance = None if rays.appearance is None else rays.appearance[ray_of_sample]
        sample_density, sample_rgb = field(coords[visible], rays.directions[ray_of_sample], appearance)
        density = density.masked_scatter(visible, sample_density)
        rgb = rgb.masked_scatter(visible[..., None], sample_rgb)
    alpha = 1.0 - torch.exp(-density * deltas)
    weights = alpha * exclusive_transmittance(alpha)
    opacity = weights.sum(1)
    color = (weights[..., None] * rgb).sum(1) + (1.0 - opacity[:, None]) * background
    depth = (weights * midpoints).sum(1) / opacity.clamp(min=1e-6)
    stats = {"samples_per_ray": visible.sum().item() / max(n_rays, 1),
             "candidates_per_ray": candidates.sum().item() / max(n_rays, 1)}
    return RenderOutput(color, depth, opacity, stats)


@torch.no_grad()
def _drop_occluded(field: NerfField, coords: torch.Tensor, deltas: torch.Tensor, candidates: torch.Tensor,
                   min_transmittance: float) -> torch.Tensor:
    """The candidate intervals that light still reaches (transmittance >= ``min_transmittance``)."""
    if min_transmittance <= 0.0 or not candidates.any():
        return candidates
    density = torch.zeros(candidates.shape, device=coords.device)
    density[candidates] = field.density(coords[candidates])
    transmittance = exclusive_transmittance(1.0 - torch.exp(-density * deltas))
    return candidates & (transmittance >= min_transmittance)
