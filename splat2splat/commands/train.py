"""``splat2splat train``: fit a Gaussian (or NeRF) scene to posed images (:mod:`splat2splat.training`)."""

from __future__ import annotations

from dataclasses import dataclass

from splat2splat.checkpoint import given_options, job_fields
from splat2splat.training import TrainJob, run_training


@dataclass
class TrainCommand(TrainJob):
    """Train a scene on posed images, evaluate held-out PSNR/SSIM, checkpoint, and export."""

    resume: bool = False
    """Continue the run in --output from its checkpoint.pt, with the data and settings saved there."""


def run(cmd: TrainCommand, on_step=None) -> dict:
    job = job_fields(cmd, TrainJob)
    given = given_options(job, TrainJob()) if cmd.resume else None
    return run_training(job, resume=cmd.resume, on_step=on_step, given=given)
