"""`splat2splat train`: fit a scene (Gaussian or NeRF) to posed images, with evaluation and resumable checkpoints.

The run folder holds ``checkpoint.pt`` (written atomically every ``checkpoint_every`` steps, on Ctrl-C and
at the end), the backend's exports (``scene.ply`` + ``scene.splat`` for Gaussians) and ``metrics.json``.
``--resume`` continues from the folder's checkpoint and ends exactly where an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from splat2splat.configs import config_from_dict, config_to_dict
from splat2splat.data.dataset import Dataset
from splat2splat.errors import InputError
from splat2splat.gaussians.backend import GaussianBackend, GaussianConfig
from splat2splat.losses import LossWeights, PhotometricLoss, image_metrics
from splat2splat.nerf.backend import NerfBackend, NerfConfig, mse_loss
from splat2splat.runner import drive, load_rng_state, rng_state
from splat2splat.scene import ImageLoss, SceneBackend
from splat2splat.scene_files import backend_from_checkpoint, read_checkpoint

CHECKPOINT_FORMAT_VERSION = 1  # bumped whenever the checkpoint layout changes
BackendName = Literal["gaussian", "nerf"]


@dataclass
class Train:
    """Train a scene on posed images, evaluate held-out PSNR/SSIM, checkpoint, and export."""

    data: Path | None = None
    """Dataset folder (nerfstudio transforms.json, COLMAP sparse model or Blender transforms_*.json);
    required unless --resume."""
    output: Path = Path("outputs/train")
    """Run folder: checkpoint.pt, scene exports and metrics.json."""
    backend: BackendName = "gaussian"
    """Scene representation: 'gaussian' (3DGS via gsplat) or 'nerf' (the in2n/nerfacto-style field)."""
    steps: int = 2000
    """Total optimisation steps (a resumed run continues up to this number)."""
    downscale: int = 1
    """Image downscale factor (uses images_N folders when the dataset has them)."""
    eval_every: int = 500
    """Steps between evaluations on the held-out views (0: only at the end)."""
    checkpoint_every: int = 500
    """Steps between checkpoints (0: only at the end and on Ctrl-C)."""
    resume: bool = False
    """Continue the run in --output from its checkpoint.pt, with the data and settings saved there."""
    gaussians: GaussianConfig = field(default_factory=GaussianConfig)
    nerf: NerfConfig = field(default_factory=NerfConfig)


# ------------------------------------------------------------------------------------------------ backends

def make_backend(kind: BackendName, dataset: Dataset, gaussians: GaussianConfig, nerf: NerfConfig) -> SceneBackend:
    """An untrained scene of ``kind`` for ``dataset``."""
    if kind == "gaussian":
        return GaussianBackend.from_dataset(dataset, gaussians)
    if kind == "nerf":
        return NerfBackend.from_dataset(dataset, nerf)
    raise InputError(None, f"unknown backend {kind!r}: use gaussian or nerf")


def reconstruction_loss(kind: BackendName) -> ImageLoss:
    """The scene-fitting loss of each backend's reference method: 3DGS' L1 + D-SSIM, nerfacto's MSE."""
    return PhotometricLoss(LossWeights()) if kind == "gaussian" else mse_loss


@torch.no_grad()
def evaluate_views(backend: SceneBackend, dataset: Dataset, indices: list[int],
                   targets: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> dict[str, float]:
    """Mean PSNR and SSIM of the renders of ``indices`` against ``targets`` (indexed by view)."""
    if not indices:
        return {}
    scores = [image_metrics(r, targets[i]) for r, i in zip(backend.render(dataset.cameras[indices]), indices)]
    return {key: sum(s[key] for s in scores) / len(scores) for key in ("psnr", "ssim")}


# ---------------------------------------------------------------------------------------------- the loop

class TrainLoop:
    """Fits ``backend`` to the dataset's current images (a :class:`splat2splat.runner.SteppedLoop`)."""

    def __init__(self, dataset: Dataset, backend: SceneBackend, loss_fn: ImageLoss):
        self.dataset, self.backend, self.loss_fn = dataset, backend, loss_fn

    @property
    def step(self) -> int:
        return self.backend.step

    def run_step(self) -> dict[str, float]:
        return self.backend.train_step(self.dataset, self.loss_fn)

    def evaluate(self) -> dict[str, float]:
        """Held-out PSNR/SSIM against the ORIGINAL images (training views when nothing is held out)."""
        indices = self.dataset.eval_indices or self.dataset.train_indices
        return evaluate_views(self.backend, self.dataset, indices, self.dataset.originals)

    def progress_info(self, stats: dict[str, float]) -> str:
        info = f"loss {stats.get('loss', float('nan')):.4f}"
        if "num_gaussians" in stats:
            info += f" N {int(stats['num_gaussians'])}"
        return info


def train_scene(dataset: Dataset, backend: SceneBackend, steps: int, save_checkpoint, checkpoint_every: int = 0,
                eval_every: int = 0, description: str = "train", on_step=None):
    """Train ``backend`` up to ``steps`` total steps; returns :class:`splat2splat.runner.LoopReport`."""
    loop = TrainLoop(dataset, backend, reconstruction_loss(backend.name))
    return drive(loop, steps, save_checkpoint, checkpoint_every, eval_every, description, on_step)


def checkpoint_payload(backend: SceneBackend, data: Path, downscale: int, **extra) -> dict:
    """The checkpoint dict every command writes (layout: :mod:`splat2splat.scene_files`): the scene, its dataset,
    the global RNG state, and what the writing loop needs to resume (``extra``)."""
    return {"format": CHECKPOINT_FORMAT_VERSION, "backend": backend.name, "backend_state": backend.state_dict(),
            "data": str(data), "downscale": downscale, "rng": rng_state(), **extra}


# -------------------------------------------------------------------------------------------- the command

def run_train(cmd: Train, on_step=None) -> dict:
    """Run the ``train`` command; returns the final metrics (also written to metrics.json)."""
    from splat2splat.data.readers import load_dataset
    from splat2splat.io import save_torch, write_json

    checkpoint_path = cmd.output / "checkpoint.pt"
    if cmd.resume:
        state = read_checkpoint(checkpoint_path)
        if "command" not in state:
            raise InputError(checkpoint_path, "this checkpoint was not written by `splat2splat train`; nothing to resume")
        saved = state["command"]
        dataset = load_dataset(saved["data"], downscale=saved["downscale"])
        backend = backend_from_checkpoint(checkpoint_path, state)
        load_rng_state(state["rng"])
        cmd = dataclasses.replace(config_from_dict(Train, saved, checkpoint_path), output=cmd.output)
    else:
        if cmd.data is None:
            raise InputError(None, "--data is required (the dataset folder to train on)")
        if checkpoint_path.exists():
            raise InputError(checkpoint_path, "a run already exists here: pass --resume to continue it, or a new --output")
        torch.manual_seed(cmd.gaussians.seed)
        dataset = load_dataset(cmd.data, downscale=cmd.downscale)
        backend = make_backend(cmd.backend, dataset, cmd.gaussians, cmd.nerf)

    def save_checkpoint() -> None:
        save_torch(checkpoint_path, checkpoint_payload(backend, cmd.data, cmd.downscale, command=config_to_dict(cmd)))

    started = time.perf_counter()
    report = train_scene(dataset, backend, cmd.steps, save_checkpoint, cmd.checkpoint_every, cmd.eval_every,
                         f"train {backend.name}", on_step)
    final = TrainLoop(dataset, backend, reconstruction_loss(backend.name)).evaluate()
    files = backend.export(cmd.output, dataset)
    metrics = {"steps": backend.step, "eval": final, "history": report.evaluations,
               "seconds": {**report.seconds, "total": time.perf_counter() - started},
               "eval_views": len(dataset.eval_indices)}
    if isinstance(backend, GaussianBackend):
        metrics["num_gaussians"] = len(backend.splats["means"])
    write_json(cmd.output / "metrics.json", metrics)
    print(f"held-out PSNR {final.get('psnr', float('nan')):.2f} dB, SSIM {final.get('ssim', float('nan')):.3f}; "
          f"wrote {', '.join(str(f) for f in [checkpoint_path, *files])}")
    return metrics
