"""Fidelity of 3D editing against a known answer: IDU (in2n and igs2gs schedules, Gaussian and NeRF backends)
versus the naive "edit every training image once, then train", with the oracle editor.

The oracle (``splat2splat.testing.oracle``) edits towards a fixed colour transform of the original image, with
IP2P-like imperfections (noise-level blend with the render, per-view jitter and colour blobs). The same
transform applied to the initial Gaussian scene gives the TARGET scene, so every held-out camera has a
target render. Reported per method on the held-out views: PSNR/SSIM to the target renders, PSNR to the
unedited scene's renders, dataset consistency (PSNR of the final scene to its own edited training images:
how well one 3D scene explains them), and wall time.

Every edited scene is rendered over the transformed background colour (the target's), since the oracle
tints the background too and a fixed white background could never match it.

    python scripts/bench_fidelity.py                 # CPU, 64-px demo, a few minutes
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
from splat2splat.edit.idu import IDUConfig, IterativeDatasetUpdate  # noqa: E402
from splat2splat.testing.oracle import OracleEditor  # noqa: E402
from splat2splat.gaussians.backend import GaussianBackend, GaussianConfig, StrategyConfig  # noqa: E402
from splat2splat.io import write_json  # noqa: E402
from splat2splat.kernels.ssim import ssim  # noqa: E402
from splat2splat.losses import LossWeights, PhotometricLoss, psnr  # noqa: E402
from splat2splat.nerf.backend import NerfBackend, NerfConfig  # noqa: E402
from splat2splat.testing.cpu_settings import NERF_CPU_DEMO_SETTINGS  # noqa: E402
from splat2splat.runner import run_loop  # noqa: E402
from splat2splat.scene import SceneBackend  # noqa: E402
from splat2splat.backends import make_backend, reconstruction_loss  # noqa: E402
from splat2splat.scene import evaluate_views  # noqa: E402
from splat2splat.training import TrainLoop  # noqa: E402

Method = Literal["idu-in2n", "idu-igs2gs", "idu-in2n-nerf", "naive"]


@dataclass
class BenchFidelity:
    """Edit fidelity against a known target: IDU schedules and backends versus edit-once-then-train."""

    output: Path = Path("outputs/bench_fidelity.json")
    """JSON file for the results (with machine, versions, date and command)."""
    methods: tuple[Method, ...] = ("idu-in2n", "idu-igs2gs", "idu-in2n-nerf", "naive")
    """Methods to compare (all get the same number of editing steps)."""
    image_size: int = 64
    """Demo image size in pixels."""
    views: int = 40
    """Demo views (every 8th held out)."""
    init_steps: int = 600
    """Training steps of the unedited Gaussian scene (the target scene is its colour transform)."""
    nerf_init_steps: int = 300
    """Training steps of the unedited NeRF (idu-in2n-nerf)."""
    edit_steps: int = 600
    """Training steps while editing, for every method."""
    edit_rate: int = 5
    """in2n schedule: steps between single-view edits."""
    igs2gs_rounds: int = 3
    """igs2gs schedule: whole-dataset edits over the edit steps."""
    sh0_lr: float = 0.025
    """Colour learning rate of the Gaussians while editing (10x 3DGS' default: an edit is mostly colour)."""
    noise_range: tuple[float, float] = (0.02, 0.98)
    """The oracle's noise-level range (in2n's)."""
    seed: int = 0
    """Seed of the demo scene's training and of every edit."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device of the scenes."""
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


def prepare(cfg: BenchFidelity, editor: OracleEditor, scene_folder: Path, device: torch.device) -> Scenes:
    dataset = load_dataset(write_demo_scene(scene_folder, DemoConfig(n_views=cfg.views, image_size=cfg.image_size)))
    torch.manual_seed(cfg.seed)
    gaussians = GaussianConfig(seed=cfg.seed, device=str(device), strategy=StrategyConfig(kind="none"))
    backend = make_backend("gaussian", dataset, gaussians)
    run_loop(TrainLoop(dataset, backend, reconstruction_loss("gaussian")), cfg.init_steps, lambda: None, 0, 0,
          "unedited Gaussian scene")
    target_background = editor.transform.apply_to_image(backend.background.cpu())
    target_scene = GaussianBackend(editor.transform.apply_to_splats(backend.splats), gaussians,
                                   tuple(target_background.tolist()))
    target_scene.step = backend.step  # same active SH degree as the scene it was made from
    eval_cameras = dataset.eval_cameras
    nerf_state = None
    if "idu-in2n-nerf" in cfg.methods:
        nerf = make_backend("nerf", dataset, NerfConfig(**NERF_CPU_DEMO_SETTINGS, seed=cfg.seed, device=str(device)))
        run_loop(TrainLoop(dataset, nerf, reconstruction_loss("nerf")), cfg.nerf_init_steps, lambda: None, 0, 0,
              "unedited NeRF")
        nerf_state = nerf.state_dict()
    return Scenes(dataset, backend.state_dict(), nerf_state, target_scene.render(eval_cameras),
                  backend.render(eval_cameras), target_background)


def edit_with(method: Method, cfg: BenchFidelity, scenes: Scenes, editor: OracleEditor,
              device: torch.device) -> tuple[SceneBackend, float]:
    """Run one method from the unedited scene; returns the edited scene and the seconds it took."""
    dataset = scenes.dataset
    dataset.reset_edits()
    if method == "idu-in2n-nerf":
        backend = NerfBackend.from_state_dict(scenes.nerf_state, str(device))
    else:
        backend = GaussianBackend.from_state_dict(scenes.gaussian_state, str(device))
        for group in backend.optimizers["sh0"].param_groups:  # the checkpoint restored the training rate
            group["lr"] = cfg.sh0_lr
    backend.background = scenes.target_background.to(backend.background)
    loss = PhotometricLoss(LossWeights(l1=1.0, dssim=0.0)) if method != "idu-in2n-nerf" else reconstruction_loss("nerf")
    schedule = IDUConfig(schedule="in2n", edit_rate=cfg.edit_rate, edit_count=1, noise_range=cfg.noise_range,
                         seed=cfg.seed)
    if method == "idu-igs2gs":
        schedule = dataclasses.replace(schedule, schedule="igs2gs", edit_rate=cfg.edit_steps // cfg.igs2gs_rounds)
    start = time.perf_counter()
    if method == "naive":
        # Edit every training view once, from the unedited scene's renders, then only train.
        once = dataclasses.replace(schedule, schedule="igs2gs", edit_rate=cfg.edit_steps + 1)
        loop = IterativeDatasetUpdate(dataset, backend, editor, "oracle", once, loss)
    else:
        loop = IterativeDatasetUpdate(dataset, backend, editor, "oracle", schedule, loss)
    run_loop(loop, cfg.edit_steps, lambda: None, 0, 0, method)
    return backend, time.perf_counter() - start


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


def main(cfg: BenchFidelity, editor: OracleEditor | None = None) -> dict:
    device = resolve_bench_device(cfg.device)
    editor = editor or OracleEditor()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        scenes = prepare(cfg, editor, Path(tmp) / "demo", device)
        baseline = {"psnr_unedited_to_target": sum(psnr(u, t) for u, t in zip(scenes.unedited, scenes.targets))
                    / len(scenes.targets)}
        for method in cfg.methods:
            backend, seconds = edit_with(method, cfg, scenes, editor, device)
            rows.append({"method": method, "seconds": seconds, **score(backend, scenes)})
    result = {"record": run_record(device), "settings": config_to_dict(cfg), "oracle": config_to_dict(editor),
              **baseline, "results": rows}
    write_json(cfg.output, result)
    if cfg.markdown:
        headers = ["method", "PSNR to target", "SSIM to target", "PSNR to unedited", "dataset consistency PSNR", "s"]
        table = [[r["method"], f"{r['psnr_to_target']:.2f}", f"{r['ssim_to_target']:.3f}",
                  f"{r['psnr_to_unedited']:.2f}", f"{r['dataset_consistency_psnr']:.2f}", f"{r['seconds']:.1f}"]
                 for r in rows]
        print(markdown_table(headers, table))
        print(f"unedited scene vs target: {baseline['psnr_unedited_to_target']:.2f} dB")
    return result


if __name__ == "__main__":
    main(tyro.cli(BenchFidelity))
