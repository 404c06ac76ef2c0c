"""``splat2splat edit``: instruction-driven 3D editing of a scene (:mod:`splat2splat.edit.job`)."""

from __future__ import annotations

from dataclasses import dataclass

from splat2splat.checkpoint import given_options, job_fields
from splat2splat.edit.distributed import launched_with_several_processes
from splat2splat.edit.job import EditJob, start_edit
from splat2splat.edit.presets import DEFAULT_PRESET, PRESETS, preset
from splat2splat.errors import InputError


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


def parse(args: list[str]) -> EditCommand:
    """tyro parse with the defaults of --preset (read first, so every --idu.* field overrides the preset)."""
    import tyro

    name = preset_argument(args)
    if name is not None and name not in PRESETS:
        raise InputError(None, f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    default = EditCommand(preset=name or DEFAULT_PRESET, idu=preset(name or DEFAULT_PRESET))
    return tyro.cli(EditCommand, args=args, default=default, prog="splat2splat edit")


def preset_argument(args: list[str]) -> str | None:
    """The value of the last --preset (as tyro reads it: a later option wins)."""
    found = None
    for k, arg in enumerate(args):
        if arg == "--preset" and k + 1 < len(args):
            found = args[k + 1]
        elif arg.startswith("--preset="):
            found = arg.split("=", 1)[1]
    return found


def run(cmd: EditCommand, editor=None, lpips=None, on_step=None) -> dict:
    """Run (or resume) the edit; ``editor``/``lpips``/``on_step`` are for tests and benchmarks. Under
    ``torchrun --nproc-per-node N`` rank 0 trains and ranks 1..N-1 edit (:mod:`splat2splat.edit.distributed`)."""
    if cmd.viewer:  # refused before any work (command.json, models) when the optional extra is missing
        from splat2splat.viewer import require_viser

        require_viser()
    if editor is None and launched_with_several_processes():
        from splat2splat.edit.distributed import edit_on_ranks

        return edit_on_ranks(job_fields(cmd, EditJob), cmd.resume, lambda editors: run(cmd, editors, lpips, on_step))
    job = job_fields(cmd, EditJob)
    given = given_options(job, job_fields(EditCommand(), EditJob)) if cmd.resume else None
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
