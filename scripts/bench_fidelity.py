"""Fidelity of 3D editing against a known answer: the faithful presets' schedules (in2n-tiny and igs2gs, Gaussian
and NeRF backends) versus the naive "edit every training image once, then train", with the oracle editor.

Every step count of the references (the 30000-step initial scene and its schedules, in2n-tiny's 30000 edit
steps, igs2gs' 7500 steps with an update every 2500) is divided by ``step_scale`` together, so the CPU run
keeps their proportions; in2n's edit rate (10) is a per-step property and stays. in2n-tiny is the in2n
preset that needs no LPIPS weights (offline); "in2n-tiny-cull" is the same with igs2gs' culling, the
measurement behind the in2n presets' density control on Gaussians. "in2n-small" (L1 + LPIPS on in2n's 16
random 32x32 patches, the preset) and "in2n-small-image" (the same with LPIPS on the whole view) compare the
two LPIPS inputs side by side; they need the AlexNet ImageNet weights (``--lpips-weights`` or the torch hub
cache), or ``--random-lpips`` for a random backbone (the loss then only has LPIPS' shape, not its meaning).

The oracle (``splat2splat.testing.oracle``) edits towards a fixed colour transform of the original image, with
IP2P-like imperfections (noise-level blend with the render, per-view jitter and colour blobs). The same
transform applied to the initial Gaussian scene gives the TARGET scene, so every held-out camera has a
target render. Reported per method on the held-out views: PSNR/SSIM to the target renders, PSNR to the
unedited scene's renders, dataset consistency (PSNR of the final scene to its own edited training images:
how well one 3D scene explains them), and wall time.

Every edited scene is rendered over the transformed background colour (the target's), since the oracle
tints the background too and a fixed white background could never match it.

    python scripts/bench_fidelity.py                 # CPU, 64-px demo, about 10 minutes
    python scripts/bench_fidelity.py --methods in2n-tiny in2n-small in2n-small-image naive   # LPIPS inputs
    python scripts/bench_fidelity.py --step-scale 10 --densify --methods in2n-tiny in2n-tiny-cull igs2gs naive
        # reference steps / 10 with densification: ~40 min on 2 shared cores with the C++ rasterizer
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import tyro

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import markdown_table, resolve_bench_device, run_record  # noqa: E402

from splat2splat.configs import config_to_dict  # noqa: E402
from splat2splat.data.dataset import Dataset  # noqa: E402
from splat2splat.data.demo import DemoConfig, write_demo_scene  # noqa: E402
from splat2splat.data.readers import load_dataset  # noqa: E402
from splat2splat.edit.idu import IterativeDatasetUpdate  # noqa: E402
from splat2splat.edit.lpips_loss import load_lpips  # noqa: E402
from splat2splat.edit.presets import IDUConfig  # noqa: E402
from splat2splat.testing.oracle import OracleEditor  # noqa: E402
from splat2splat.edit.presets import preset  # noqa: E402
from splat2splat.gaussians.backend import GaussianBackend, GaussianConfig, StrategyConfig  # noqa: E402
from splat2splat.io import write_json  # noqa: E402
from splat2splat.kernels.ssim import ssim  # noqa: E402
from splat2splat.losses import PhotometricLoss, psnr  # noqa: E402
from splat2splat.nerf.backend import NerfBackend, NerfConfig  # noqa: E402
from splat2splat.testing.cpu_settings import NERF_CPU_DEMO_SETTINGS  # noqa: E402
from splat2splat.runner import run_loop  # noqa: E402
from splat2splat.scene import SceneBackend  # noqa: E402
from splat2splat.backends import make_backend, reconstruction_loss  # noqa: E402
from splat2splat.scene import evaluate_views  # noqa: E402
from splat2splat.training import TrainLoop  # noqa: E402

Method = Literal["in2n-tiny", "in2n-tiny-cull", "igs2gs", "in2n-tiny-nerf", "naive", "in2n-small",
                 "in2n-small-image"]
# The preset each method runs (naive: in2n-tiny's steps and loss, every view edited once at the start).
METHOD_PRESET = {"in2n-tiny": "in2n-tiny", "in2n-tiny-cull": "in2n-tiny", "igs2gs": "igs2gs",
                 "in2n-tiny-nerf": "in2n-tiny", "naive": "in2n-tiny", "in2n-small": "in2n-small",
                 "in2n-small-image": "in2n-small"}


@dataclass
class BenchFidelity:
    """Edit fidelity against a known target: IDU schedules and backends versus edit-once-then-train."""

    output: Path = Path("outputs/bench_fidelity.json")
    """JSON file for the results (with machine, versions, date and command)."""
    methods: tuple[Method, ...] = ("in2n-tiny", "in2n-tiny-cull", "igs2gs", "in2n-tiny-nerf", "naive")
    """Methods to compare, each with its preset's schedule, loss, noise range and density control."""
    image_size: int = 64
    """Demo image size in pixels."""
    views: int = 24
    """Demo views (every 8th held out)."""
    step_scale: int = 25
    """Every reference step count is divided by this (30000-step scene -> 1200, in2n-tiny 30000 -> 1200,
    igs2gs 7500 -> 300 with an update every 100)."""
    densify: bool = False
    """Densify the unedited scene as gsplat's default strategy does, its schedule divided by --step-scale too
    (at 10: a refinement every 10 steps from 50 to 1500, an opacity reset every 300: the reference's 145
    refinements and 5 resets). Off by default: at 50 the 64-px demo's 4,000 Gaussians grow tenfold within 60
    steps."""
    in2n_edit_rate: int = 10
    """in2n's steps between single-view edits (its own value; tests shrink it)."""
    nerf_init_steps: int = 300
    """Training steps of the unedited NeRF (in2n-tiny-nerf; the CPU NeRF is slow, so not scaled from 30000)."""
    sh0_lr: float = 0.025
    """Colour learning rate of the Gaussians while editing, for every method (10x 3DGS' default: with the step
    counts divided by step_scale, colours must move faster to reach the edit at all)."""
    seed: int = 0
    """Seed of the demo scene's training and of every edit."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device of the scenes."""
    lpips_weights: Path | None = None
    """AlexNet ImageNet checkpoint for the LPIPS methods (default: the torch hub cache)."""
    random_lpips: bool = False
    """LPIPS methods with a random AlexNet backbone (where the ImageNet weights cannot be had; say so in results)."""
    markdown: bool = True
    """Print a markdown table for docs/BENCHMARKS.md."""


@dataclass
class Scenes:
    """The unedited starting scenes and the target renders of the held-out views."""

    dataset: Dataset
    gaussian_state: dict
    nerf_state: dict | None
    targets: list[torch.Tensor]  # target renders of the eval views
    unedited: list[torch.Tensor]  # the unedited Gaussian scene's renders of the eval views
    target_background: torch.Tensor


def scaled_scene_config(cfg: BenchFidelity, device: torch.device) -> GaussianConfig:
    """gsplat simple_trainer's schedules (30000 steps, SH every 1000, position learning rate decayed over
    30000, densification from 500 to 15000 every 100 with an opacity reset every 3000) divided by
    ``step_scale``; densification only with ``densify``. The edit starts past refine_stop either way (as from a
    full 30k training), where `continue` changes nothing."""
    k = cfg.step_scale
    strategy = StrategyConfig(kind="default" if cfg.densify else "none", refine_start=500 // k, refine_stop=15000 // k,
                              refine_every=max(1, 100 // k), reset_opacity_every=3000 // k)
    return GaussianConfig(seed=cfg.seed, device=str(device), lr_decay_steps=30000 // k,
                          sh_degree_interval=max(1, 1000 // k), strategy=strategy)


def prepare(cfg: BenchFidelity, editor: OracleEditor, scene_folder: Path, device: torch.device) -> Scenes:
    dataset = load_dataset(write_demo_scene(scene_folder, DemoConfig(n_views=cfg.views, image_size=cfg.image_size)))
    torch.manual_seed(cfg.seed)
    gaussians = scaled_scene_config(cfg, device)
    backend = make_backend("gaussian", dataset, gaussians)
    run_loop(TrainLoop(dataset, backend, reconstruction_loss("gaussian")), 30000 // cfg.step_scale, lambda: None, 0, 0,
          "unedited Gaussian scene")
    target_background = editor.transform.apply_to_image(backend.background.cpu())
    target_scene = GaussianBackend(editor.transform.apply_to_splats(backend.splats), gaussians,
                                   tuple(target_background.tolist()))
    target_scene.step = backend.step  # same active SH degree as the scene it was made from
    eval_cameras = dataset.eval_cameras
    nerf_state = None
    if "in2n-tiny-nerf" in cfg.methods:
        nerf = make_backend("nerf", dataset, NerfConfig(**NERF_CPU_DEMO_SETTINGS, seed=cfg.seed, device=str(device)))
        run_loop(TrainLoop(dataset, nerf, reconstruction_loss("nerf")), cfg.nerf_init_steps, lambda: None, 0, 0,
              "unedited NeRF")
        nerf_state = nerf.state_dict()
    return Scenes(dataset, backend.state_dict(), nerf_state, target_scene.render(eval_cameras),
                  backend.render(eval_cameras), target_background)


def method_settings(method: Method, cfg: BenchFidelity) -> IDUConfig:
    """The method's preset with its step counts divided by ``step_scale``."""
    settings = preset(METHOD_PRESET[method])
    settings = dataclasses.replace(settings, steps=settings.steps // cfg.step_scale, seed=cfg.seed)
    if settings.schedule == "igs2gs":
        settings.edit_rate = max(1, settings.edit_rate // cfg.step_scale)
    else:
        settings.edit_rate = cfg.in2n_edit_rate
    if method == "in2n-tiny-cull":
        settings.density_control = "cull"
    if method == "in2n-small-image":
        settings.lpips_on = "image"
    if method == "naive":  # every training view edited once, at the start, from the unedited scene's renders
        settings = dataclasses.replace(settings, schedule="igs2gs", edit_rate=settings.steps + 1)
    return settings


def lpips_input(settings: IDUConfig) -> str:
    """What the method's LPIPS sees, for the results table."""
    patches = settings.lpips_patch_sampling()
    if settings.loss.lpips <= 0:
        return "-"
    return "whole view" if patches is None else f"{patches.count} patches {patches.size}x{patches.size}"


def edit_with(method: Method, cfg: BenchFidelity, scenes: Scenes, editor: OracleEditor,
              device: torch.device, lpips: torch.nn.Module | None) -> tuple[SceneBackend, float, IDUConfig]:
    """Run one method from the unedited scene; returns the edited scene, the seconds it took, its settings."""
    dataset = scenes.dataset
    dataset.reset_edits()
    if method == "in2n-tiny-nerf":
        backend = NerfBackend.from_state_dict(scenes.nerf_state, str(device))
    else:
        backend = GaussianBackend.from_state_dict(scenes.gaussian_state, str(device))
        for group in backend.optimizers["sh0"].param_groups:  # the checkpoint restored the training rate
            group["lr"] = cfg.sh0_lr
    backend.background = scenes.target_background.to(backend.background)
    settings = method_settings(method, cfg)
    loss = reconstruction_loss("nerf") if method == "in2n-tiny-nerf" else \
        PhotometricLoss(settings.loss, lpips if settings.loss.lpips > 0 else None, settings.lpips_patch_sampling())
    start = time.perf_counter()
    loop = IterativeDatasetUpdate(dataset, backend, editor, "oracle", settings, loss)
    run_loop(loop, settings.steps, lambda: None, 0, 0, method)
    return backend, time.perf_counter() - start, settings


def score(backend: SceneBackend, scenes: Scenes) -> dict[str, float]:
    dataset = scenes.dataset
    renders = backend.render(dataset.eval_cameras)

    def mean(values):
        return sum(values) / len(values)

    return {
        "psnr_to_target": mean([psnr(r, t) for r, t in zip(renders, scenes.targets)]),
        "ssim_to_target": mean([float(ssim(r[None], t[None])) for r, t in zip(renders, scenes.targets)]),
        "psnr_to_unedited": mean([psnr(r, u) for r, u in zip(renders, scenes.unedited)]),
        "dataset_consistency_psnr": evaluate_views(backend, dataset, dataset.train_indices, dataset.current_image)["psnr"],
    }


def loop_edits(dataset: Dataset) -> int:
    """Edits made to the training views (each replacement counts)."""
    return sum(dataset.edit_counts[i] for i in dataset.train_indices)


def main(cfg: BenchFidelity, editor: OracleEditor | None = None) -> dict:
    device = resolve_bench_device(cfg.device)
    editor = editor or OracleEditor()
    lpips = None
    if any(method_settings(method, cfg).loss.lpips > 0 for method in cfg.methods):  # fails before any training
        torch.manual_seed(cfg.seed)  # a random backbone is the same in every run
        lpips = load_lpips("alex", cfg.lpips_weights, random_backbone=cfg.random_lpips).to(device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        scenes = prepare(cfg, editor, Path(tmp) / "demo", device)
        baseline = {"psnr_unedited_to_target": sum(psnr(u, t) for u, t in zip(scenes.unedited, scenes.targets))
                    / len(scenes.targets)}
        for method in cfg.methods:
            backend, seconds, settings = edit_with(method, cfg, scenes, editor, device, lpips)
            gaussians = len(backend.splats["means"]) if isinstance(backend, GaussianBackend) else None
            rows.append({"method": method, "steps": settings.steps, "edit_rate": settings.edit_rate,
                         "edits": loop_edits(dataset=scenes.dataset), "density_control": settings.density_control,
                         "lpips": lpips_input(settings),
                         "gaussians": gaussians, "seconds": seconds, **score(backend, scenes)})
    result = {"record": run_record(device), "settings": config_to_dict(cfg), "oracle": config_to_dict(editor),
              **baseline, "results": rows}
    write_json(cfg.output, result)
    if cfg.markdown:
        headers = ["method", "steps", "edit every", "edits", "density control", "LPIPS on", "Gaussians",
                   "PSNR to target", "SSIM to target", "PSNR to unedited", "dataset consistency PSNR", "s"]
        table = [[r["method"], r["steps"], r["edit_rate"], r["edits"], r["density_control"], r["lpips"],
                  r["gaussians"] if r["gaussians"] is not None else "-", f"{r['psnr_to_target']:.2f}",
                  f"{r['ssim_to_target']:.3f}", f"{r['psnr_to_unedited']:.2f}",
                  f"{r['dataset_consistency_psnr']:.2f}", f"{r['seconds']:.1f}"] for r in rows]
        print(markdown_table(headers, table))
        print(f"unedited scene vs target: {baseline['psnr_unedited_to_target']:.2f} dB")
    return result


if __name__ == "__main__":
    main(tyro.cli(BenchFidelity))
