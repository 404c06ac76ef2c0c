"""The Gaussian scene backend: 3DGS parameters, per-parameter Adam, gsplat densification strategies.

Training follows gsplat's simple_trainer: one random training view per step (each view once per epoch,
in a seeded random order), per-parameter learning rates with an exponential decay of the position
learning rate, SH degree raised every ``sh_degree_interval`` steps, and densification / pruning through
gsplat's ``DefaultStrategy`` or ``MCMCStrategy`` with explicit strategy state.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, replace
from pathlib import Path

import torch

from splat2splat.data.cameras import Cameras
from splat2splat.data.dataset import Dataset
from splat2splat.configs import config_from_dict
from splat2splat.devices import resolve_device, to_device
from splat2splat.errors import InputError
# The settings live in gaussians/config.py; GaussianConfig and StrategyConfig are importable from here too.
from splat2splat.gaussians.config import DENSITY_CONTROLS, DensityControl, GaussianConfig, StrategyConfig  # noqa: F401
from splat2splat.gaussians.model import SPLAT_KEYS, activated, init_splats, random_points, sh_degree_of
from splat2splat.gaussians.rasterize import choose_rasterizer, rasterize
from splat2splat.scene import EditHook, ImageLoss

# What from_state_dict reads, and the shapes of the Gaussian parameters after the leading count N
# (None: any size; shN holds K-1 SH bases).
STATE_KEYS = ("config", "splats", "optimizers", "step", "background")
CPU_FUSED_ADAM = torch.torch_version.TorchVersion(torch.__version__) >= "2.4"  # torch's fused Adam runs on CPUs since 2.4
SPLAT_TRAILING_SHAPES = {"means": (3,), "scales": (3,), "quats": (4,), "opacities": (), "sh0": (1, 3), "shN": (None, 3)}


class GaussianBackend:
    """A 3D Gaussian scene with its optimisers; implements :class:`splat2splat.scene.SceneBackend`.

    Every schedule (position learning rate, SH degree, densification window, opacity resets) is a function of
    ``step``, the scene's own step counter: training that continues from a checkpoint (an edit) continues the
    schedules instead of restarting them, as a resumed nerfstudio/gsplat run does.

    ``density_control`` says what happens to the set of Gaussians each step: 'continue' runs the configured
    strategy (and our opacity reset); 'cull' only removes low-opacity and oversized Gaussians every
    ``refine_every`` steps (splatfacto past stop_split_at, what Instruct-GS2GS' edits get); 'off' freezes it.
    """

    name = "gaussian"

    def __init__(self, splats: torch.nn.ParameterDict, config: GaussianConfig, background: tuple[float, float, float]):
        self.config = config
        self.device = resolve_device(config.device)
        self.rasterizer = choose_rasterizer(config.rasterizer, self.device)  # fails early when forced and unusable
        self.splats = splats.to(self.device)
        self.max_sh_degree = sh_degree_of(self.splats)
        self.background = torch.tensor(background, dtype=torch.float32, device=self.device)
        self.step = 0
        self.generator = torch.Generator().manual_seed(config.seed)
        self._view_order: list[int] = []
        self.optimizers = self._make_optimizers()
        self.strategy, self.strategy_state = self._make_strategy()
        self.density_control: DensityControl = "continue"
        self.frozen: torch.Tensor | None = None  # [N] bool: Gaussians a local edit keeps exactly (see freeze)
        self._frozen_values: dict[str, torch.Tensor] = {}

    # ----------------------------------------------------------------------------------------------- set-up
    @classmethod
    def from_dataset(cls, dataset: Dataset, config: GaussianConfig) -> "GaussianBackend":
        generator = torch.Generator().manual_seed(config.seed)
        use_points = config.init == "points" or (config.init == "auto" and dataset.points is not None)
        if use_points:
            if dataset.points is None:
                raise InputError(dataset.source, "--init points needs a sparse point cloud, the dataset has none")
            points, colors = dataset.points, dataset.point_colors
            if colors is None:
                colors = torch.full_like(points, 0.5)
        else:
            points, colors = random_points(config.init_random_count, config.init_random_extent, generator)
        splats = init_splats(points, colors, config.sh_degree, config.init_opacity, config.init_scale)
        return cls(splats, config, dataset.background)

    def _make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        rates = {"means": c.means_lr * c.scene_scale, "scales": c.scales_lr, "quats": c.quats_lr,
                 "opacities": c.opacities_lr, "sh0": c.sh0_lr, "shN": c.shN_lr}
        # eps 1e-15 as in 3DGS: the default 1e-8 swamps the tiny gradients of the position parameters.
        return {name: torch.optim.Adam([{"params": self.splats[name], "lr": rates[name], "name": name}], eps=1e-15,
                                       **self._adam_kernel())
                for name in SPLAT_KEYS}

    def _adam_kernel(self) -> dict:
        """Fused Adam on the CPU (one pass over each parameter instead of a dozen tensor operations: several times
        faster at 10^5 Gaussians, the same update up to float rounding); torch's default elsewhere, as gsplat."""
        return {"fused": True if self.device.type == "cpu" and CPU_FUSED_ADAM else None, "foreach": None}

    def _make_strategy(self):
        s = self.config.strategy
        if s.kind == "none":
            return None, None
        if s.kind == "default":
            from gsplat.strategy import DefaultStrategy

            # gsplat also reads reset_every to prune large Gaussians only after the first reset; "never" (0)
            # must not reach its modulo. Its own reset never fires (see reset_opacity_every): ours is below.
            reset_every = s.reset_opacity_every if s.reset_opacity_every > 0 else 2**31 - 1
            strategy = DefaultStrategy(prune_opa=s.prune_opacity, grow_grad2d=s.grow_grad2d,
                                       refine_start_iter=s.refine_start, refine_stop_iter=s.refine_stop,
                                       reset_every=reset_every, refine_every=s.refine_every)
            return strategy, strategy.initialize_state(scene_scale=self.config.scene_scale)
        from splat2splat.kernels.mcmc import mcmc_strategy

        strategy = mcmc_strategy(cap_max=s.cap_max, refine_start_iter=s.refine_start, refine_stop_iter=s.refine_stop,
                                 refine_every=s.refine_every, min_opacity=s.prune_opacity)
        return strategy, strategy.initialize_state()

    def converged_step(self) -> int:
        """The first step at which every schedule has finished (final learning rate, densification over, full
        SH degree): where a scene trained elsewhere (an imported PLY) is taken to be."""
        c = self.config
        return max(c.lr_decay_steps, c.strategy.refine_stop, c.sh_degree_interval * self.max_sh_degree)

    def mark_converged(self) -> None:
        """Treat the scene as fully trained: its schedules continue from their ends, not from step 0."""
        self.step = max(self.step, self.converged_step())

    def configure_edit(self, density_control: DensityControl, random_background: bool) -> None:
        """The training settings of an edit (preset data, see :class:`splat2splat.edit.idu.IDUConfig`)."""
        if density_control not in DENSITY_CONTROLS:
            raise ValueError(f"unknown density control {density_control!r}: use one of {', '.join(DENSITY_CONTROLS)}")
        self.density_control = density_control
        self.config = replace(self.config, random_background=random_background)

    def freeze(self, frozen: torch.Tensor | None) -> None:
        """Keep the Gaussians where ``frozen`` is True bit for bit as they are now (a local edit; None: none).

        Their gradients are zeroed and, after every optimiser step and density operation, their saved values
        are written back (Adam would still move them by momentum). 'cull' only removes unfrozen Gaussians;
        the gsplat strategies act on every row, so they may not run while Gaussians are frozen (ValueError).
        """
        if frozen is None:
            self.frozen, self._frozen_values = None, {}
            return
        frozen = frozen.to(device=self.device, dtype=torch.bool)
        if tuple(frozen.shape) != (len(self.splats["means"]),):
            raise ValueError(f"the frozen mask has shape {tuple(frozen.shape)}, the scene {len(self.splats['means'])} "
                             f"Gaussians")
        self.frozen = frozen
        self._frozen_values = {key: self.splats[key].detach()[frozen].clone() for key in SPLAT_KEYS}

    def strategy_active(self) -> bool:
        """Whether 'continue' would still densify, prune or reset opacities from the current step on."""
        return self.strategy is not None and self.step < self.strategy_stop()

    def strategy_stop(self) -> int:
        return self.config.strategy.refine_stop

    def gaussians(self) -> "GaussianBackend":
        return self

    @torch.no_grad()
    def _restore_frozen(self) -> None:
        for key, values in self._frozen_values.items():
            self.splats[key].data[self.frozen] = values

    def _means_lr_factor(self) -> float:
        c = self.config
        return c.means_lr_final_ratio ** (min(self.step, c.lr_decay_steps) / max(1, c.lr_decay_steps))

    # -------------------------------------------------------------------------------------------- rendering
    @property
    def active_sh_degree(self) -> int:
        scheduled = self.step // max(1, self.config.sh_degree_interval)
        return min(max(self.config.initial_sh_degree, scheduled), self.max_sh_degree)

    def rasterize(self, cameras: Cameras, background: torch.Tensor | None = None):
        """Differentiable render of cameras of ONE image size: colours [C, H, W, 3], alphas, gsplat info."""
        cameras = cameras.to(self.device)
        height, width = cameras.image_size(0)
        p = activated(self.splats)
        return rasterize(p["means"], p["quats"], p["scales"], p["opacities"], p["sh"], cameras.viewmats(),
                         cameras.Ks(), width, height, self.active_sh_degree,
                         self.background if background is None else background,
                         absgrad=False, backend=self.rasterizer)

    @torch.no_grad()
    def render(self, cameras: Cameras) -> list[torch.Tensor]:
        return [self.rasterize(cameras[i])[0][0].clamp(0, 1).cpu() for i in range(len(cameras))]

    # ------------------------------------------------------------------------------------------- training
    def next_view(self, dataset: Dataset) -> int:
        """Training views in a seeded random order, each once per epoch (as a shuffling data loader)."""
        if not self._view_order:
            order = torch.randperm(len(dataset.train_indices), generator=self.generator).tolist()
            self._view_order = [dataset.train_indices[k] for k in order]
        return self._view_order.pop()

    def train_step(self, dataset: Dataset, loss_fn: ImageLoss, view: int | None = None,
                   edit: EditHook | None = None) -> dict[str, float]:
        """One step on ``view`` (default: the next of the shuffled epoch order, which a given view leaves alone).

        ``edit(view, render)`` is called with this step's render (detached, clamped, on the CPU) before the
        loss, and may replace the view's training image: the step then trains on that fresh image
        (Instruct-GS2GS' dataset update)."""
        if view is None:
            view = self.next_view(dataset)
        image, alpha, info = self.rasterize(dataset.cameras[view], self.training_background(dataset))
        if edit is not None:
            edit(view, image[0].detach().clamp(0, 1).cpu())
        target = dataset.current[view].to(self.device)[None]
        if dataset.masks is not None and dataset.masks[view] is not None:
            # Outside the mask, supervise nothing: copy the prediction into the target there.
            mask = dataset.masks[view].to(self.device)[None, ..., None]
            target = torch.where(mask, target, image.detach())
        refining = self.density_control == "continue" and self.strategy is not None
        if refining and self.frozen is not None and self.strategy_active():
            raise ValueError("Gaussians are frozen (a local edit) but the density strategy is still active: use "
                             "density control 'off' or 'cull'")
        if refining:
            self.strategy.step_pre_backward(self.splats, self.optimizers, self.strategy_state, self.step, info)
        loss, stats = loss_fn(image, target, generator=self.generator)
        loss.backward()
        if self.frozen is not None:
            for key in SPLAT_KEYS:
                if self.splats[key].grad is not None:
                    self.splats[key].grad[self.frozen] = 0
        for group in self.optimizers["means"].param_groups:
            group["lr"] = self.config.means_lr * self.config.scene_scale * self._means_lr_factor()
        for optimizer in self.optimizers.values():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if refining:
            self._strategy_post_backward(info)
        if self.density_control == "continue":
            self._reset_opacity()
        elif self.density_control == "cull":
            self._cull()
        if self.frozen is not None:
            self._restore_frozen()
        self.step += 1
        stats.update(loss=float(loss.detach()), num_gaussians=float(len(self.splats["means"])))
        return stats

    def training_background(self, dataset: Dataset) -> torch.Tensor:
        """A random colour per step when configured and the data allows it, else the dataset's background."""
        if self.config.random_background and not dataset.alpha_composited:
            return torch.rand(3, generator=self.generator).to(self.device)
        return self.background

    def _strategy_post_backward(self, info: dict) -> None:
        if self.config.strategy.kind == "mcmc":
            lr = self.optimizers["means"].param_groups[0]["lr"]
            self.strategy.step_post_backward(self.splats, self.optimizers, self.strategy_state, self.step, info, lr=lr)
        else:
            self.strategy.step_post_backward(self.splats, self.optimizers, self.strategy_state, self.step, info,
                                             packed=False)

    def _reset_opacity(self) -> None:
        """The default strategy's opacity reset (3DGS): every ``reset_opacity_every`` steps while refining,
        opacities are clamped to twice the pruning threshold and their Adam moments zeroed."""
        s = self.config.strategy
        if s.kind != "default" or s.reset_opacity_every <= 0:
            return
        if 0 < self.step < s.refine_stop and self.step % s.reset_opacity_every == 0:
            from gsplat.strategy.ops import reset_opa

            reset_opa(self.splats, self.optimizers, self.strategy_state, value=s.prune_opacity * 2.0)

    @torch.no_grad()
    def _cull(self) -> None:
        """Remove transparent and oversized Gaussians every ``refine_every`` steps (splatfacto's culling, which
        continues after densification stops); never removes the last Gaussian."""
        s = self.config.strategy
        if self.step % max(1, s.refine_every) != 0:
            return
        remove = (torch.sigmoid(self.splats["opacities"]) < s.cull_opacity) | \
                 (torch.exp(self.splats["scales"]).amax(dim=-1) > s.cull_scale)
        if self.frozen is not None:
            remove &= ~self.frozen
        if not remove.any() or remove.all():
            return
        from gsplat.strategy.ops import remove as remove_gaussians

        count = len(remove)
        # Only per-Gaussian strategy state follows the removal (MCMC's binomial table does not).
        per_gaussian = {k: v for k, v in (self.strategy_state or {}).items()
                        if isinstance(v, torch.Tensor) and v.dim() > 0 and len(v) == count}
        remove_gaussians(self.splats, self.optimizers, per_gaussian, remove)
        if self.strategy_state is not None:
            self.strategy_state.update(per_gaussian)
        if self.frozen is not None:  # removal keeps the order of the remaining rows
            self.frozen = self.frozen[~remove]

    # ------------------------------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "splats": {k: v.detach().to("cpu", copy=True) for k, v in self.splats.items()},  # a snapshot, not a view
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "strategy_state": to_device(self.strategy_state, "cpu"),
            "step": self.step,
            "generator": self.generator.get_state(),
            "view_order": list(self._view_order),
            "background": self.background.tolist(),
            "density_control": self.density_control,
            "frozen": None if self.frozen is None else self.frozen.cpu(),
        }

    def load_state_dict(self, state: dict) -> None:
        # Copies: on the CPU `.to` and Adam's load_state_dict keep the state's own tensors, and training would
        # then change the caller's state in place (a state reused for several runs would drift).
        for key in SPLAT_KEYS:
            self.splats[key] = torch.nn.Parameter(state["splats"][key].to(self.device, copy=True))
        self.max_sh_degree = sh_degree_of(self.splats)
        self.optimizers = self._make_optimizers()
        for key, optimizer in self.optimizers.items():
            saved = copy.deepcopy(state["optimizers"][key])
            for group in saved["param_groups"]:  # a state saved on another device: this device's Adam kernel
                group.update(self._adam_kernel())
            optimizer.load_state_dict(saved)
        self.strategy_state = to_device(copy.deepcopy(state["strategy_state"]), self.device)
        self.step = state["step"]
        self.generator.set_state(state["generator"])
        self._view_order = list(state["view_order"])
        self.background = torch.tensor(state["background"], device=self.device)
        self.density_control = state.get("density_control", "continue")
        frozen = state.get("frozen")
        self.freeze(None if frozen is None else torch.as_tensor(frozen))

    @classmethod
    def from_state_dict(cls, state: dict, device: str | None = None) -> "GaussianBackend":
        """Rebuild a backend from :meth:`state_dict` (``device``: where it lives now, default the saved one).

        The rasterizer is a property of the machine, like the device: a scene moved to a device (a checkpoint
        trained with gsplat on a GPU, loaded on a CPU-only machine, or the other way round) renders with that
        device's own rasterizer ("auto").
        """
        moved = {"device": device, "rasterizer": "auto"} if device else {}
        config = config_from_dict(GaussianConfig, {**state["config"], **moved})
        splats = torch.nn.ParameterDict({k: torch.nn.Parameter(v.clone()) for k, v in state["splats"].items()})
        backend = cls(splats, config, tuple(state["background"]))
        backend.load_state_dict(state)
        return backend

    def check_dataset(self, dataset: Dataset) -> None:
        """Gaussians hold nothing per view: any dataset of the same scene fits, but the views left to visit in
        this pass over the dataset must be its training views."""
        strangers = sorted(set(self._view_order) - set(dataset.train_indices))
        if strangers:
            raise ValueError(f"its view_order names views {strangers[:5]} that are not training views of the dataset")

    @staticmethod
    def check_state(state: dict) -> None:
        """Raise ValueError unless ``state`` is a complete :meth:`state_dict`: every parameter, one row per
        Gaussian, the right shapes (checked before anything is built, for a clear message)."""
        missing = [key for key in STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"the state lacks {', '.join(missing)}")
        splats = state["splats"]
        if not isinstance(splats, dict):
            raise ValueError(f"'splats' must be a dict of tensors, found a {type(splats).__name__}")
        missing = [key for key in SPLAT_KEYS if not isinstance(splats.get(key), torch.Tensor)]
        if missing:
            raise ValueError(f"the Gaussians lack the tensors {', '.join(missing)}")
        count = len(splats["means"])
        for key, trailing in SPLAT_TRAILING_SHAPES.items():
            shape = tuple(splats[key].shape)
            if len(shape) != len(trailing) + 1 or any(want is not None and got != want
                                                      for got, want in zip(shape[1:], trailing)):
                expected = ["N", *("K" if t is None else t for t in trailing)]
                raise ValueError(f"Gaussian '{key}' has shape {list(shape)}, expected {expected}")
            if shape[0] != count:
                raise ValueError(f"Gaussian parameters disagree: '{key}' has {shape[0]} rows, 'means' {count}")

    def export(self, output_dir: Path, dataset: Dataset) -> list[Path]:
        from splat2splat.gaussians.formats import save_splats

        output_dir = Path(output_dir)
        ply, splat = output_dir / "scene.ply", output_dir / "scene.splat"
        # In the capture's original frame (undoing the dataset's frame transform), like `export`'s default.
        save_splats(ply, self.splats, dataset.normalization, "ply", frame_transform=dataset.frame_transform)
        save_splats(splat, self.splats, dataset.normalization, "splat", frame_transform=dataset.frame_transform)
        return [ply, splat]
