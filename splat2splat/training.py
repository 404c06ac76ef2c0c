"""Fit a scene (Gaussian or NeRF) to posed images, with evaluation and resumable checkpoints.

The run folder holds ``checkpoint.pt`` (written atomically every ``checkpoint_every`` steps, on Ctrl-C and
at the end), the backend's exports (``scene.ply`` + ``scene.splat`` for Gaussians) and ``metrics.json``.
A resumed job continues from the folder's checkpoint and ends exactly where an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch
import tyro

from splat2splat.backends import SceneConfig, backend_name, make_backend, reconstruction_loss
from splat2splat.checkpoint import (CHECKPOINT_FILE, backend_from_checkpoint, job_from_dict, job_to_dict,
                                    load_rng_state, read_checkpoint, require_keys, save_checkpoint,
                                    with_invocation_permissions, with_resume_options)
from splat2splat.data.dataset import Dataset
from splat2splat.devices import resolve_device
from splat2splat.errors import InputError
from splat2splat.folder_lock import claim_output_folder, release_output_folder
from splat2splat.io import IndependentOutputs, check_output_folder
from splat2splat.gaussians.backend import GaussianConfig
from splat2splat.runner import Logger, LoopReport, RunLog, check_logger, run_loop
from splat2splat.scene import ImageLoss, SceneBackend, evaluate_views
from splat2splat.validation import check_options



@dataclass
class TrainJob:
    """Train a scene on posed images, evaluate held-out PSNR/SSIM, checkpoint, and export."""

    data: Annotated[Path | None, tyro.conf.arg(help_behavior_hint="(required unless --resume)")] = None
    """Dataset folder (nerfstudio transforms.json, COLMAP sparse model or Blender transforms_*.json)."""
    output: Path = Path("outputs/train")
    """Run folder: checkpoint.pt, scene exports and metrics.json."""
    device: str = "auto"
    """Device to train on: cuda, cuda:N, cpu or auto (cuda when available); the scene's own device option
    overrides it."""
    steps: int = 30_000
    """Total optimisation steps (a resumed run continues up to this number); 30000 as gsplat's simple_trainer
    and splatfacto."""
    downscale: int = 1
    """Image downscale factor (uses images_N folders when the dataset has them)."""
    allow_paths_outside_data: bool = False
    """Follow image, mask and point-cloud paths of the dataset that lead outside its folder (refused by default:
    a dataset from elsewhere must not make the program read arbitrary files)."""
    eval_every: int = 500
    """Steps between evaluations on the held-out views (0: only at the end)."""
    checkpoint_every: int = 500
    """Steps between checkpoints (0: only at the end and on Ctrl-C)."""
    checkpoint_minutes: float = 10.0
    """Also checkpoint after this many minutes of wall time since the last checkpoint (0: off)."""
    logger: Logger = "none"
    """Where per-step metrics go besides run.log and metrics.jsonl in the run folder: 'tensorboard' also writes
    TensorBoard event files to its tensorboard/ folder (needs the tensorboard extra)."""
    scene: SceneConfig = field(default_factory=GaussianConfig)
    """The scene backend and its settings: a GaussianConfig (gsplat) or a NerfConfig (the in2n/nerfacto-style
    field)."""

    @property
    def backend(self) -> str:
        """The registered backend of ``scene`` ('gaussian' or 'nerf')."""
        return backend_name(self.scene)


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
        return evaluate_views(self.backend, self.dataset, indices, self.dataset.original)

    def progress_info(self, stats: dict[str, float]) -> str:
        info = f"loss {stats.get('loss', float('nan')):.4f}"
        if "num_gaussians" in stats:
            info += f" N {int(stats['num_gaussians'])}"
        return info


def train_scene(dataset: Dataset, backend: SceneBackend, steps: int, save, checkpoint_every: int = 0,
                eval_every: int = 0, description: str = "train", on_step=None,
                checkpoint_minutes: float = 0.0, log: RunLog | None = None) -> LoopReport:
    """Train ``backend`` with its reconstruction loss up to ``steps`` total steps."""
    loop = TrainLoop(dataset, backend, reconstruction_loss(backend.name))
    return run_loop(loop, steps, save, checkpoint_every, eval_every, description, on_step, checkpoint_minutes, log)


def start_training(job: TrainJob, resume: bool, given: dict | None = None) -> tuple[TrainJob, Dataset, SceneBackend]:
    """A new training run, or with ``resume`` the one in ``job.output`` (its saved job wins over ``job``)."""
    from splat2splat.data.readers import load_dataset

    checkpoint_path = job.output / CHECKPOINT_FILE
    if resume:
        if job.output.is_dir():
            claim_output_folder(job.output)  # a second process resuming it at once is refused
        state = read_checkpoint(checkpoint_path)
        require_keys(checkpoint_path, state, ("command",), "`splat2splat train`")
        saved = job_from_dict(TrainJob, state["command"], checkpoint_path)
        if given:  # this command line's options: more steps honoured, settings of the run refused
            saved = with_resume_options(saved, given, checkpoint_path)
        check_options(saved, checkpoint_path)
        job = dataclasses.replace(with_invocation_permissions(saved, job, checkpoint_path), output=job.output)
        dataset = load_dataset(job.data, downscale=job.downscale, allow_outside_paths=job.allow_paths_outside_data)
        backend = backend_from_checkpoint(checkpoint_path, state)
        load_rng_state(state["rng"])
        return job, dataset, backend
    check_options(job)
    check_logger(job.logger)
    if job.data is None:
        raise InputError(None, "--data is required (the dataset folder to train on)")
    check_output_folder(job.output)
    claim_output_folder(job.output)  # before the check below, so two runs started at once cannot both pass it
    if checkpoint_path.exists():
        raise InputError(checkpoint_path, "a run already exists here: pass --resume to continue it, or a new --output")
    torch.manual_seed(job.scene.seed)
    dataset = load_dataset(job.data, downscale=job.downscale, allow_outside_paths=job.allow_paths_outside_data)
    scene = dataclasses.replace(job.scene, device=str(resolve_device(job.scene.device or job.device)))
    return job, dataset, make_backend(job.backend, dataset, scene)


def run_training(job: TrainJob, resume: bool = False, on_step=None, given: dict | None = None) -> dict:
    """Train (or resume) and write the run folder; returns the final metrics (also in metrics.json)."""
    from splat2splat.io import write_json

    job, dataset, backend = start_training(job, resume, given)
    checkpoint_path = job.output / CHECKPOINT_FILE

    def save() -> None:
        save_checkpoint(checkpoint_path, backend, job.data, job.downscale, command=job_to_dict(job))

    started = time.perf_counter()
    log = RunLog(job.output, job.logger, "train")
    try:
        report = train_scene(dataset, backend, job.steps, save, job.checkpoint_every, job.eval_every,
                             f"train {backend.name}", on_step, job.checkpoint_minutes, log)
    finally:
        log.close()
    outputs = IndependentOutputs()  # the trained checkpoint is saved; no output step may lose it
    loop = TrainLoop(dataset, backend, reconstruction_loss(backend.name))
    final = outputs.write("final evaluation", loop.evaluate) or {}
    files = outputs.write("scene export", lambda: backend.export(job.output, dataset)) or []
    metrics = {"steps": backend.step, "eval": final, "history": report.evaluations,
               "seconds": {**report.seconds, "total": time.perf_counter() - started},
               "eval_views": len(dataset.eval_indices), **backend_size(backend),
               **({"failed_outputs": outputs.failed} if outputs.failed else {})}
    write_json(job.output / "metrics.json", metrics)
    print(f"held-out PSNR {final.get('psnr', float('nan')):.2f} dB, SSIM {final.get('ssim', float('nan')):.3f}; "
          f"wrote {', '.join(str(f) for f in [checkpoint_path, *files])}")
    release_output_folder(job.output)
    return metrics


def backend_size(backend: SceneBackend) -> dict[str, int]:
    """How big the scene is, where the backend counts primitives (Gaussians)."""
    scene = backend.gaussians()
    return {} if scene is None else {"num_gaussians": len(scene.splats["means"])}
