"""Settings of the Gaussian scene and its optimisation (``--gaussians.*``), as plain data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

import tyro


@dataclass
class StrategyConfig:
    """Densification and pruning (gsplat strategies). Steps count from the start of this backend's training."""

    kind: Literal["default", "mcmc", "none"] = "default"
    """gsplat strategy: 'default' (3DGS clone/split/prune), 'mcmc' (3DGS-MCMC relocation) or 'none'."""
    refine_start: int = 500
    """First step at which Gaussians are densified or pruned."""
    refine_stop: int = 15_000
    """Last step of densification (default) / relocation (mcmc)."""
    refine_every: int = 100
    """Steps between densification rounds."""
    reset_opacity_every: int = 3000
    """Steps between opacity resets while refining (default strategy only; 0: never). Done here, not by gsplat:
    gsplat 1.5.3's DefaultStrategy tests `step % reset_every == 0 & step > 0`, which is always False."""
    grow_grad2d: float = 0.0002
    """Image-plane gradient above which a Gaussian is cloned or split (default strategy)."""
    prune_opacity: float = 0.005
    """Opacity under which Gaussians are pruned (default) or relocated (mcmc)."""
    cap_max: int = 1_000_000
    """Maximum number of Gaussians (mcmc)."""
    cull_opacity: float = 0.1
    """Density control 'cull' (edits): Gaussians under this opacity are removed (splatfacto's cull_alpha_thresh)."""
    cull_scale: float = 0.5
    """Density control 'cull' (edits): Gaussians whose largest axis exceeds this (normalised units) are removed
    (splatfacto's cull_scale_thresh)."""


@dataclass
class GaussianConfig:
    """The Gaussian scene and its optimisation."""

    sh_degree: int = 3
    """Maximum spherical-harmonics degree of the colours (0-3)."""
    sh_degree_interval: int = 1000
    """Steps between raising the active SH degree by one."""
    initial_sh_degree: int = 0
    """SH degree active at step 0 (a scene imported from a PLY starts at its file's degree)."""
    init: Literal["auto", "points", "random"] = "auto"
    """Initial Gaussians: at the dataset's sparse points, random in the scene bounds, or points when available."""
    init_random_count: int = 100_000
    """Number of Gaussians for random initialisation."""
    init_random_extent: float = 1.0
    """Half-size of the cube (normalised units; cameras lie within radius 1) for random initialisation."""
    init_opacity: float = 0.1
    """Initial opacity of every Gaussian."""
    init_scale: float = 1.0
    """Initial size as a multiple of the mean distance to the 3 nearest points."""
    means_lr: float = 1.6e-4
    """Position learning rate (times the scene scale), decayed exponentially to --gaussians.means-lr-final-ratio of it."""
    means_lr_final_ratio: float = 0.01
    """Final position learning rate as a fraction of the first, reached at --gaussians.lr-decay-steps."""
    lr_decay_steps: int = 30_000
    """Steps over which the position learning rate decays."""
    scales_lr: float = 5e-3
    """Learning rate of the log-scales."""
    quats_lr: float = 1e-3
    """Learning rate of the rotations."""
    opacities_lr: float = 5e-2
    """Learning rate of the opacity logits."""
    sh0_lr: float = 2.5e-3
    """Learning rate of the base colour."""
    shN_lr: float = 2.5e-3 / 20
    """Learning rate of the higher SH coefficients."""
    scene_scale: float = 1.1
    """Scene extent in normalised units (cameras lie within radius 1), as gsplat's simple_trainer."""
    random_background: bool = False
    """Train against a random background colour (discourages transparent splats and floaters). Ignored on
    data whose images had an alpha channel: those were composited over the fixed background when loaded."""
    rasterizer: Literal["auto", "gsplat", "cpp", "torch"] = "auto"
    """'gsplat' CUDA kernels, 'cpp' (the C++ CPU rasterizer, built on first use), 'torch' (the pure-PyTorch
    reference, any device), or auto: gsplat on CUDA and cpp on the CPU when their kernels build, else torch after one
    warning. A scene loaded onto another device uses auto unless this is given."""
    device: Annotated[str | None, tyro.conf.arg(help_behavior_hint="(default: --device)")] = None
    """Device of the scene, overriding --device for it: cuda, cuda:N, cpu or auto."""
    seed: int = 0
    """Seed of initialisation and of the view order."""
    strategy: StrategyConfig = field(default_factory=StrategyConfig)


DensityControl = Literal["continue", "cull", "off"]
DENSITY_CONTROLS = ("continue", "cull", "off")
