"""The NeRF scene backend: original Instruct-NeRF2NeRF's representation behind :class:`SceneBackend`.

Training follows in2n (which continues nerfacto's training while editing): every step draws a batch of
rays uniformly over ALL training views' CURRENT images, so edited and not-yet-edited views are mixed.
A batch is ``B`` square patches of ``P x P`` pixels, handed to the loss as ``[B, P, P, 3]``; in2n uses
``P = 32`` for its LPIPS term. Plain random rays are the special case ``P = 1``: ``[R, 1, 1, 3]``, i.e. R
one-pixel images, which every per-pixel loss (L1, MSE) handles unchanged.

All randomness (ray batches, stratified jitter, occupancy-grid updates) comes from one CPU generator
seeded from the config and saved in :meth:`NerfBackend.state_dict`, so a resumed run continues exactly as
an uninterrupted one (bit for bit on the CPU; on CUDA, ``grid_sample``'s backward adds atomically, so runs
agree only up to float rounding).

The defaults aim at real, unbounded captures; small CPU settings for the bounded demo scene are in
:mod:`splat2splat.testing.cpu_settings` (measured figures: docs/BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch
import tyro

from splat2splat.data.cameras import Cameras
from splat2splat.data.dataset import Dataset
from splat2splat.devices import resolve_device, to_device
from splat2splat.io import save_image, write_point_ply
from splat2splat.losses import psnr_from_mse
from splat2splat.nerf.field import HashGridEncoding, NerfField, SceneSpace, TriPlaneEncoding
from splat2splat.nerf.sampling import (OccupancyGrid, RayBundle, RenderOutput, SamplingSettings,
                                       render_rays)
from splat2splat.scene import EditHook, ImageLoss

STATE_KEYS = ("config", "field", "optimizer", "occupancy", "train_indices", "step", "background")


@dataclass
class NerfConfig:
    """Options of the NeRF backend (nerfacto-style field in pure PyTorch, occupancy-grid sampling)."""

    seed: int = 0
    """Seed of the field initialisation and of every random choice during training."""
    device: Annotated[str | None, tyro.conf.arg(help_behavior_hint="(default: --device)")] = None
    """Device of the scene, overriding --device for it: cuda, cuda:N, cpu or auto."""
    rays_per_batch: int = 4096
    """Rays per training step (rounded down to whole patches)."""
    patch_size: int = 1
    """Side of the square pixel patches a batch is made of; 1 = independent random rays, 32 = in2n's LPIPS patches."""
    lr: float = 0.05
    """Adam learning rate of the encoding at step 0. Higher than nerfacto's 0.01, which trained "planes" far more
    slowly (docs/BENCHMARKS.md, "NeRF encoding"); use about 0.01-0.03 for "hash"."""
    mlp_lr: float = 0.005
    """Adam learning rate of the MLPs and appearance codes at step 0. Lower than the encoding's: plain PyTorch
    MLPs (with biases, unlike tiny-cuda-nn's) at 0.01 and above can saturate the colour sigmoid for good."""
    lr_final_factor: float = 0.1
    """Both learning rates are multiplied by this after --nerf.lr-decay-steps (exponential decay), then kept."""
    lr_decay_steps: int = 20000
    """Steps over which the learning rates decay by --nerf.lr-final-factor."""
    encoding: Literal["planes", "hash"] = "planes"
    """Position encoding: "planes" (K-Planes' multi-scale tri-plane; faster and better per step than
    the pure-PyTorch hash grid on a CPU) or "hash" (Instant-NGP's hash grid, as nerfacto)."""
    plane_resolutions: tuple[int, ...] = (64, 128, 256, 512)
    """Plane resolutions of the "planes" encoding (over the unit cube the scene is mapped into)."""
    plane_features: int = 16
    """Feature channels per plane and resolution of the "planes" encoding."""
    hash_levels: int = 16
    """Resolution levels of the "hash" encoding."""
    hash_features_per_level: int = 2
    """Feature channels stored per hash-table entry."""
    hash_log2_table_size: int = 19
    """log2 of the entries per level's hash table (coarse levels that need fewer use a dense table)."""
    hash_base_resolution: int = 16
    """Grid resolution of the coarsest level over the unit cube."""
    hash_max_resolution: int = 2048
    """Grid resolution of the finest level (levels grow geometrically in between)."""
    hidden_dim: int = 64
    """Width of the density and colour MLPs."""
    geometry_features: int = 15
    """Features the density MLP passes to the colour MLP besides the density."""
    sh_degree: int = 4
    """Spherical-harmonic bands encoding the view direction (4 = 16 components, as nerfacto)."""
    appearance_dim: int = 32
    """Per-image appearance embedding size (absorbs per-view exposure or edit inconsistencies); 0 disables.
    Renders use the mean embedding of the training views."""
    initial_density: float = 0.05
    """Density of the untrained field (per unit length of the normalised frame); low, so that space starts
    nearly empty and the occupancy grid can skip it soon (a white background cannot tell white fog from nothing)."""
    unbounded: bool = True
    """Model all of space with the mip-NeRF 360 contraction; False models only the box of half-side --nerf.scene-radius."""
    scene_radius: float = 1.0
    """Radius (in the normalised frame, where the farthest camera is at distance 1) of the uncontracted core or box."""
    near: float = 0.05
    """Distance from the camera where rays start."""
    far: float = 1000.0
    """Distance where rays end (unbounded scenes only; a box ends them at its wall)."""
    samples_per_ray: int = 128
    """Intervals per ray before empty and occluded ones are skipped (64 suffice for a box at the demo's 64 px)."""
    min_transmittance: float = 1e-4
    """Intervals that receive less light than this are skipped (early ray termination)."""
    occupancy_resolution: int = 128
    """Cells per side of the occupancy grid over the (contracted) unit cube."""
    occupancy_warmup_steps: int = 64
    """Steps before the first occupancy-grid update (until then every cell counts as occupied)."""
    occupancy_update_every: int = 16
    """Steps between occupancy-grid updates."""
    occupancy_threshold: float = 0.01
    """Opacity across one cell below which the cell counts as empty."""
    occupancy_decay: float = 0.95
    """Per-update decay of the remembered cell density (lets cells that became empty turn off)."""
    occupancy_dilation: int = 1
    """Cells added around occupied ones, so geometry can still grow where an edit needs it."""
    render_chunk: int = 8192
    """Rays rendered at once when the NeRF renders a view (memory versus speed)."""
    export_points: int = 200_000
    """Most points in the exported point cloud."""

    def __post_init__(self) -> None:
        if self.encoding not in ("planes", "hash"):
            raise ValueError(f"unknown encoding {self.encoding!r} (choose 'planes' or 'hash')")
        if self.patch_size < 1 or self.rays_per_batch < self.patch_size**2:
            raise ValueError(f"rays_per_batch ({self.rays_per_batch}) must hold at least one "
                             f"{self.patch_size}x{self.patch_size} patch")


def mse_loss(pred: torch.Tensor, target: torch.Tensor,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """nerfacto's photometric loss (an :class:`ImageLoss`): mean squared error, logged with its PSNR."""
    mse = torch.mean((pred - target) ** 2)
    return mse, {"mse": mse.item(), "psnr": psnr_from_mse(mse.item())}


class NerfBackend:
    """A :class:`~splat2splat.scene.SceneBackend` holding a radiance field and its Adam optimiser."""

    name = "nerf"

    def __init__(self, config: NerfConfig, n_views: int, train_indices: list[int],
                 background: tuple[float, float, float]) -> None:
        if not train_indices:
            raise ValueError("the NeRF backend needs at least one training view")
        self.config = config
        self.device = resolve_device(config.device)
        self.train_indices = list(train_indices)
        self.background = torch.tensor(background, dtype=torch.float32, device=self.device)
        self.space = SceneSpace(config.scene_radius, config.unbounded)
        with torch.random.fork_rng(devices=[]):  # initialise from the seed without touching the global RNG
            torch.manual_seed(config.seed)
            self.field = _build_field(config, n_views).to(self.device)
        self.grid = OccupancyGrid(config.occupancy_resolution, self.space, self.device)
        self.optimizer = _build_optimizer(self.field, config)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.sampling = SamplingSettings(config.samples_per_ray, config.near, config.far, config.min_transmittance)
        self.step = 0

    @classmethod
    def from_dataset(cls, dataset: Dataset, config: NerfConfig | None = None) -> "NerfBackend":
        """An untrained field for ``dataset`` (one appearance code per view)."""
        return cls(config or NerfConfig(), len(dataset), dataset.train_indices, dataset.background)

    # ---------------------------------------------------------------- training

    def gaussians(self) -> None:
        return None  # a field, not Gaussians: regions come as masks and nothing is frozen

    def configure_edit(self, density_control: str, random_background: bool) -> None:
        """A field has no Gaussians to densify and renders over its fixed background: nothing to change."""

    def train_step(self, dataset: Dataset, loss_fn: ImageLoss, view: int | None = None,
                   edit: EditHook | None = None) -> dict[str, float]:
        """One Adam step on ``B`` patches from random training views' CURRENT images (see module doc), or from
        ``view`` only; ``edit(view, render)`` gets a full render of ``view`` before the targets are read."""
        config = self.config
        if self.step >= config.occupancy_warmup_steps and self.step % config.occupancy_update_every == 0:
            self.grid.update(self.field, self.generator, config.occupancy_threshold, config.occupancy_decay,
                             config.occupancy_dilation, config.render_chunk * 8)
        views, ys, xs = sample_patches(dataset, dataset.train_indices if view is None else [view],
                                       config.rays_per_batch // config.patch_size**2, config.patch_size, self.generator)
        if edit is not None and view is not None:
            edit(view, self.render(dataset.cameras[[view]])[0])
        rays, target, supervised = self._gather_batch(dataset, views, ys, xs)
        jitter = torch.rand(rays.origins.shape[0], generator=self.generator).to(self.device)
        rendered = render_rays(self.field, self.space, self.grid, rays, self.sampling, self.background, jitter)
        patch_shape = (*views.shape, config.patch_size, config.patch_size, 3)
        pred = rendered.color.reshape(patch_shape)
        target = target.reshape(patch_shape)
        if supervised is not None:
            # Unsupervised (masked-out) pixels get the prediction itself as target: zero error, no gradient,
            # while the loss still sees whole patches.
            target = torch.where(supervised.reshape(patch_shape[:-1])[..., None], target, pred.detach())
        loss, loss_stats = loss_fn(pred, target, generator=self.generator)
        self._set_learning_rate()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return {"loss": loss.item(), **loss_stats, **rendered.stats, "lr": self.optimizer.param_groups[0]["lr"],
                "occupancy": self.grid.occupancy_fraction()}

    def _gather_batch(self, dataset: Dataset, views: torch.Tensor, ys: torch.Tensor,
                      xs: torch.Tensor) -> tuple[RayBundle, torch.Tensor, torch.Tensor | None]:
        """Rays, CURRENT target colours and supervision mask of the sampled pixels, flattened in batch order."""
        n_pixels = ys[0].numel()
        origins, directions = torch.empty(len(views), n_pixels, 3), torch.empty(len(views), n_pixels, 3)
        target = torch.empty(len(views), n_pixels, 3)
        supervised = torch.ones(len(views), n_pixels, dtype=torch.bool) if dataset.masks is not None else None
        for view in views.unique().tolist():
            rows = (views == view).nonzero()[:, 0]
            y, x = ys[rows].reshape(-1), xs[rows].reshape(-1)
            o, d = dataset.cameras.pixel_rays(view, x, y)
            origins[rows], directions[rows] = o.reshape(len(rows), n_pixels, 3), d.reshape(len(rows), n_pixels, 3)
            target[rows] = dataset.current[view][y, x].reshape(len(rows), n_pixels, 3).float()
            mask = dataset.masks[view] if dataset.masks is not None else None
            if mask is not None:
                supervised[rows] = mask[y, x].reshape(len(rows), n_pixels)
        view_ids = views[:, None].expand(-1, n_pixels).reshape(-1).to(self.device)
        rays = RayBundle(origins.reshape(-1, 3).to(self.device), directions.reshape(-1, 3).to(self.device),
                         self.field.appearance_codes(view_ids))
        target = target.reshape(-1, 3).to(self.device)
        return rays, target, None if supervised is None else supervised.reshape(-1).to(self.device)

    def _set_learning_rate(self) -> None:
        """Exponential decay by ``lr_final_factor`` over ``lr_decay_steps`` (a function of ``step`` only)."""
        config = self.config
        decay = config.lr_final_factor ** min(self.step / max(config.lr_decay_steps, 1), 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * decay

    # --------------------------------------------------------------- rendering

    @torch.no_grad()
    def render(self, cameras: Cameras) -> list[torch.Tensor]:
        """[H, W, 3] images in [0, 1] on the CPU, rendered with the mean training appearance code."""
        return [self._render_view(cameras, i).color for i in range(len(cameras))]

    @torch.no_grad()
    def _render_view(self, cameras: Cameras, index: int) -> RenderOutput:
        """Colour [H, W, 3], depth [H, W] and opacity [H, W] of one camera, on the CPU."""
        height, width = cameras.image_size(index)
        ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        origins, directions = cameras.pixel_rays(index, xs.reshape(-1), ys.reshape(-1))
        appearance = self.field.mean_appearance(self.train_indices)
        chunks = []
        for start in range(0, len(origins), self.config.render_chunk):
            o = origins[start:start + self.config.render_chunk].to(self.device)
            d = directions[start:start + self.config.render_chunk].to(self.device)
            codes = None if appearance is None else appearance.expand(len(o), -1)
            chunks.append(render_rays(self.field, self.space, self.grid, RayBundle(o, d, codes), self.sampling,
                                      self.background, jitter=None))
        return RenderOutput(
            torch.cat([c.color for c in chunks]).clamp(0, 1).reshape(height, width, 3).cpu(),
            torch.cat([c.depth for c in chunks]).reshape(height, width).cpu(),
            torch.cat([c.opacity for c in chunks]).reshape(height, width).cpu(),
            {},
        )

    # ------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict:
        return {
            "backend": self.name,
            "config": asdict(self.config),
            "step": self.step,
            "train_indices": list(self.train_indices),
            "background": self.background.cpu().tolist(),
            "field": {k: v.detach().cpu().clone() for k, v in self.field.state_dict().items()},
            "optimizer": to_device(self.optimizer.state_dict(), "cpu"),
            "occupancy": self.grid.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("backend") != self.name:
            raise ValueError(f"not a NeRF checkpoint (backend {state.get('backend')!r})")
        self.field.load_state_dict(state["field"])  # raises on any shape mismatch (other config or dataset)
        check_optimizer_state(self.optimizer, state["optimizer"])
        self.optimizer.load_state_dict(state["optimizer"])  # moves the moments to the parameters' device
        self.grid.load_state_dict(state["occupancy"])
        self.generator.set_state(state["generator"])
        self.train_indices = list(state["train_indices"])
        self.background = torch.tensor(state["background"], dtype=torch.float32, device=self.device)
        self.step = int(state["step"])

    def check_dataset(self, dataset: Dataset) -> None:
        """Raise ValueError unless this field was trained on ``dataset``'s views (one appearance code per view)."""
        codes = None if self.field.appearance is None else self.field.appearance.num_embeddings
        if (codes is not None and codes != len(dataset)) or max(self.train_indices) >= len(dataset):
            raise ValueError(f"the NeRF was trained on {codes or max(self.train_indices) + 1} views, the dataset "
                             f"has {len(dataset)}: it belongs to another dataset or split")

    @staticmethod
    def check_state(state: dict) -> None:
        """Raise ValueError unless ``state`` has what :meth:`from_state_dict` reads."""
        missing = [key for key in STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"the state lacks {', '.join(missing)}")
        if not isinstance(state["field"], dict) or not isinstance(state["config"], dict):
            raise ValueError("'field' and 'config' must be dicts")

    @classmethod
    def from_state_dict(cls, state: dict, device: str | None = None) -> "NerfBackend":
        """Rebuild a backend from a checkpoint alone (its saved config; optionally on another device)."""
        config = NerfConfig(**{**state["config"], **({"device": device} if device else {})})
        n_views = state["field"]["appearance.weight"].shape[0] if "appearance.weight" in state["field"] else 1
        backend = cls(config, n_views, state["train_indices"], tuple(state["background"]))
        backend.load_state_dict(state)
        return backend

    # ------------------------------------------------------------------ export

    def export(self, output_dir: Path, dataset: Dataset) -> list[Path]:
        """Renders of the eval views (all views if none are held out) as PNGs and a coloured point cloud PLY.

        The points are the rendered surface (expected depth) of training-view pixels that are nearly opaque,
        in the dataset's ORIGINAL world frame, coloured with the rendered colour.
        """
        output_dir = Path(output_dir)
        written = []
        views = dataset.eval_indices or list(range(len(dataset)))
        for view in views:
            path = output_dir / "renders" / f"{Path(dataset.image_names[view]).stem}.png"
            save_image(path, self.render(dataset.cameras[view])[0])
            written.append(path)
        points, colors = self._surface_points(dataset)
        path = output_dir / "point_cloud.ply"
        write_point_ply(path, dataset.normalization.to_original(points), colors)
        written.append(path)
        return written

    def _surface_points(self, dataset: Dataset, min_opacity: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
        points, colors = [], []
        for view in self.train_indices:
            out = self._render_view(dataset.cameras, view)
            height, width = dataset.cameras.image_size(view)
            ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
            origins, directions = dataset.cameras.pixel_rays(view, xs.reshape(-1), ys.reshape(-1))
            opaque = out.opacity.reshape(-1) >= min_opacity
            depth = out.depth.reshape(-1, 1)
            points.append((origins + directions * depth)[opaque])
            colors.append(out.color.reshape(-1, 3)[opaque])
        points, colors = torch.cat(points), torch.cat(colors)
        if len(points) > self.config.export_points:
            keep = torch.randperm(len(points), generator=torch.Generator().manual_seed(self.config.seed))
            points, colors = points[keep[:self.config.export_points]], colors[keep[:self.config.export_points]]
        return points, colors


def sample_patches(dataset: Dataset, views: list[int], n_patches: int, patch_size: int,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n_patches`` random ``P x P`` patches, uniform over all patch positions in the given views.

    A view is drawn with probability proportional to its number of patch positions (for P = 1: its pixel
    count), then a position in it uniformly, so every pixel of every training image is equally likely.
    Returns view ids [B] and pixel rows / columns [B, P, P].
    """
    heights = torch.tensor([dataset.current[v].shape[0] for v in views])
    widths = torch.tensor([dataset.current[v].shape[1] for v in views])
    positions = ((heights - patch_size + 1).clamp(min=0) * (widths - patch_size + 1).clamp(min=0)).double()
    if positions.sum() == 0:
        raise ValueError(f"no training image is large enough for {patch_size}x{patch_size} patches")
    choice = torch.multinomial(positions, n_patches, replacement=True, generator=generator)
    top = (torch.rand(n_patches, generator=generator) * (heights[choice] - patch_size + 1)).long()
    left = (torch.rand(n_patches, generator=generator) * (widths[choice] - patch_size + 1)).long()
    offsets = torch.arange(patch_size)
    ys = (top[:, None, None] + offsets[None, :, None]).expand(-1, patch_size, patch_size)
    xs = (left[:, None, None] + offsets[None, None, :]).expand(-1, patch_size, patch_size)
    return torch.tensor(views)[choice], ys, xs


def _build_field(config: NerfConfig, n_views: int) -> NerfField:
    if config.encoding == "planes":
        encoding = TriPlaneEncoding(tuple(config.plane_resolutions), config.plane_features)
    else:
        encoding = HashGridEncoding(config.hash_levels, config.hash_features_per_level, config.hash_log2_table_size,
                                    config.hash_base_resolution, config.hash_max_resolution)
    return NerfField(encoding, config.hidden_dim, config.geometry_features, config.sh_degree, n_views,
                     config.appearance_dim, config.initial_density)


def check_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Raise ValueError, naming the field, unless ``saved`` (an optimizer state dict whose layout the checkpoint
    schema has checked) fits ``optimizer``: its groups, their learning-rate schedule and each moment's shape
    (torch checks none of the shapes: a wrong one would fail at the next step)."""
    where = "backend_state.optimizer"
    parameters = {}
    for k, (group, saved_group) in enumerate(zip(optimizer.param_groups, saved["param_groups"])):
        if len(saved_group["params"]) != len(group["params"]):
            raise ValueError(f"'{where}.param_groups[{k}].params' names {len(saved_group['params'])} parameters, "
                             f"this NeRF has {len(group['params'])}")
        if "initial_lr" not in saved_group:
            raise ValueError(f"'{where}.param_groups[{k}].initial_lr' is missing")
        parameters.update(zip(saved_group["params"], group["params"]))
    for index, slot in saved["state"].items():
        if index not in parameters:
            raise ValueError(f"'{where}.state.{index}' belongs to no parameter of its groups")
        for moment in ("exp_avg", "exp_avg_sq"):
            if slot[moment].shape != parameters[index].shape:
                raise ValueError(f"'{where}.state.{index}.{moment}' has shape {list(slot[moment].shape)}, its "
                                 f"parameter {list(parameters[index].shape)}")


def _build_optimizer(field: NerfField, config: NerfConfig) -> torch.optim.Adam:
    """Adam with the encoding in one group and the MLPs (and appearance codes) in another."""
    encoding = list(field.encoding.parameters())
    encoding_ids = {id(p) for p in encoding}
    rest = [p for p in field.parameters() if id(p) not in encoding_ids]
    # eps 1e-15 (Instant-NGP) keeps rarely-touched encoding entries from being scaled down; MLPs use Adam's default.
    return torch.optim.Adam([{"params": encoding, "lr": config.lr, "initial_lr": config.lr, "eps": 1e-15},
                             {"params": rest, "lr": config.mlp_lr, "initial_lr": config.mlp_lr, "eps": 1e-8}])
