"""``splat2splat train``: fit a Gaussian (or NeRF) scene to posed images (:mod:`splat2splat.training`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated

import tyro

from splat2splat.checkpoint import given_options, job_fields
from splat2splat.cli_parsing import BACKEND_HELP, backend_choice, cli
from splat2splat.gaussians.config import GaussianConfig
from splat2splat.nerf.backend import NerfConfig
from splat2splat.training import TrainJob, run_training


@dataclass
class TrainCommand(TrainJob):
    """Train a scene on posed images, evaluate held-out PSNR/SSIM, checkpoint, and export."""

    resume: bool = False
    """Continue the run in --output from its checkpoint.pt, with the data and settings saved there."""
    command_line: tyro.conf.Suppress[tuple[str, ...]] = ()
    """The options as typed (set by :func:`parse`): a --resume tells an option given with its default value
    from one not given."""


@dataclass
class GaussianTrainCommand(TrainCommand):
    """Train a Gaussian scene on posed images, evaluate held-out PSNR/SSIM, checkpoint, and export."""

    scene: Annotated[GaussianConfig, tyro.conf.arg(name="gaussians")] = field(default_factory=GaussianConfig)
    """The Gaussian scene (3DGS rasterized by gsplat)."""


@dataclass
class NerfTrainCommand(TrainCommand):
    """Train a NeRF on posed images, evaluate held-out PSNR/SSIM, checkpoint, and export."""

    scene: Annotated[NerfConfig, tyro.conf.arg(name="nerf")] = field(default_factory=NerfConfig)
    """The NeRF (in2n's nerfacto-style field)."""


COMMAND_CLASSES = {"gaussian": GaussianTrainCommand, "nerf": NerfTrainCommand}  # one per registered backend


def parse(args: list[str]) -> TrainCommand:
    """tyro parse of the options of the backend --backend names (only those are shown and taken)."""
    name, rest = backend_choice(args)
    command_class = COMMAND_CLASSES[name]
    prog = "splat2splat train" + (f" --backend {name}" if name != "gaussian" else "")
    command = cli(command_class, args=rest, prog=prog,
                  description=f"{command_class.__doc__}\n\n{BACKEND_HELP.format(prog='splat2splat train')}")
    return dataclasses.replace(command, command_line=tuple(rest))


def run(cmd: TrainCommand, on_step=None) -> dict:
    job = job_fields(cmd, TrainJob)
    given = given_options(job, job_fields(type(cmd)(), TrainJob), cmd.command_line) if cmd.resume else None
    return run_training(job, resume=cmd.resume, on_step=on_step, given=given)
