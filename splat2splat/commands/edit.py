"""``splat2splat edit``: instruction-driven 3D editing of a scene (:mod:`splat2splat.edit.job`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated

import tyro

from splat2splat.checkpoint import given_options, job_fields
from splat2splat.cli_parsing import BACKEND_HELP, backend_choice, cli, option_value
from splat2splat.edit.distributed import launched_with_several_processes
from splat2splat.edit.job import EditJob, start_edit
from splat2splat.devices import resolve_device
from splat2splat.edit.presets import DEFAULT_PRESET, PRESETS, preset_on
from splat2splat.errors import InputError
from splat2splat.gaussians.config import GaussianConfig
from splat2splat.nerf.backend import NerfConfig


@dataclass
class EditCommand(EditJob):
    """Edit a 3D scene with a text instruction (Instruct-NeRF2NeRF's Iterative Dataset Update)."""

    resume: bool = False
    """Continue the run in --output from its checkpoint(s), with the settings saved there."""
    viewer: bool = False
    """Show the scene and the current training images live in a browser while editing (needs viser)."""
    viewer_port: int = 8080
    """Port of the live viewer on localhost."""
    viewer_every: int = 50
    """Steps between live-viewer updates."""
    command_line: tyro.conf.Suppress[tuple[str, ...]] = ()
    """The options as typed (set by :func:`parse`): a --resume tells an option given with its default value
    from one not given."""


@dataclass
class GaussianEditCommand(EditCommand):
    """Edit a Gaussian scene with a text instruction (Instruct-NeRF2NeRF's Iterative Dataset Update)."""

    scene: Annotated[GaussianConfig, tyro.conf.arg(name="gaussians")] = field(default_factory=GaussianConfig)
    """The Gaussian scene (3DGS rasterized by gsplat): its initial training, or the import of --init."""


@dataclass
class NerfEditCommand(EditCommand):
    """Edit a NeRF with a text instruction (Instruct-NeRF2NeRF's Iterative Dataset Update)."""

    scene: Annotated[NerfConfig, tyro.conf.arg(name="nerf")] = field(default_factory=NerfConfig)
    """The NeRF (in2n's nerfacto-style field): its initial training."""


COMMAND_CLASSES = {"gaussian": GaussianEditCommand, "nerf": NerfEditCommand}  # one per registered backend


def parse(args: list[str]) -> EditCommand:
    """tyro parse of the options of the backend --backend names, with the defaults of --preset (both read
    first: --backend chooses which options exist, and every --idu.* option given overrides the preset). With the
    editor on the CPU a half-precision preset's editor defaults to float32 (see :func:`preset_on`)."""
    backend, rest = backend_choice(args)
    name = option_value(rest, "--preset")
    if name is not None and name not in PRESETS:
        raise InputError(None, f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    command_class = COMMAND_CLASSES[backend]
    editor_device = resolve_device(option_value(rest, "--idu.editor.device") or option_value(rest, "--device"))
    default = command_class(preset=name or DEFAULT_PRESET, idu=preset_on(name or DEFAULT_PRESET, editor_device.type))
    prog = "splat2splat edit" + (f" --backend {backend}" if backend != "gaussian" else "")
    command = cli(command_class, args=rest, default=default, prog=prog,
                  description=f"{command_class.__doc__}\n\n{BACKEND_HELP.format(prog='splat2splat edit')}")
    return dataclasses.replace(command, command_line=tuple(rest))


def default_command(cmd: EditCommand) -> EditCommand:
    """What :func:`parse` starts from for ``cmd``'s backend, preset and device: what differs was given."""
    editor_device = resolve_device(cmd.idu.editor.device or cmd.device)
    return type(cmd)(preset=cmd.preset, idu=preset_on(cmd.preset, editor_device.type))


def run(cmd: EditCommand, editor=None, lpips=None, on_step=None) -> dict:
    """Run (or resume) the edit; ``editor``/``lpips``/``on_step`` are for tests and benchmarks. Under
    ``torchrun --nproc-per-node N`` rank 0 trains and ranks 1..N-1 edit (:mod:`splat2splat.edit.distributed`)."""
    if cmd.viewer:  # refused before any work (command.json, models) when the optional extra is missing
        from splat2splat.viewer import require_viser

        require_viser()
    job = job_fields(cmd, EditJob)
    given = given_options(job, job_fields(default_command(cmd), EditJob), cmd.command_line) if cmd.resume else None
    if editor is None and launched_with_several_processes():
        from splat2splat.edit.distributed import edit_on_ranks

        return edit_on_ranks(job, cmd.resume, given, lambda editors: run(cmd, editors, lpips, on_step))
    edit_run = start_edit(job, cmd.resume, editor, lpips, given)
    viewer = None
    if cmd.viewer:  # this invocation's choice, not the saved job's: a resumed run may or may not want one
        from splat2splat.viewer import LiveViewer

        viewer = LiveViewer(cmd.viewer_port, cmd.viewer_every)
        viewer.update(edit_run.backend, edit_run.dataset)

    def after_step(step: int) -> None:
        if viewer is not None:
            viewer.maybe_update(step, edit_run.backend, edit_run.dataset)
        if on_step is not None:
            on_step(step)

    try:
        report = edit_run.edit(after_step)
    finally:
        if viewer is not None:
            viewer.close()
    return edit_run.finish(report)
