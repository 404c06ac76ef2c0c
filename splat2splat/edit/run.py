"""`splat2splat edit`: instruction-driven 3D editing of a scene by Iterative Dataset Update.

Run folder (``--output``)::

    initial/checkpoint.pt   the unedited scene, when trained here (no --init)
    checkpoint.pt           the edit: scene, edited images, IDU state, RNG; every --checkpoint-every steps
    scene.ply, scene.splat  the edited Gaussian scene in the dataset's original frame (NeRF: renders + points)
    edited/<view>.png       the current (edited) training images
    before_after.png        original | edited training image | final render, for a few views
    turntable.mp4           a turn around the edited scene
    run.json                prompt, preset and every setting, seeds, versions, timings, metrics

Ctrl-C finishes the current step, saves, and stops; ``--resume`` continues to the same result an
uninterrupted run with the same seed gives.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from splat2splat.configs import config_from_dict, config_to_dict
from splat2splat.data.dataset import Dataset
from splat2splat.edit.editor import Editor
from splat2splat.edit.idu import IDUConfig, IterativeDatasetUpdate
from splat2splat.edit.presets import DEFAULT_PRESET, PRESETS, preset
from splat2splat.devices import resolve_device
from splat2splat.errors import InputError
from splat2splat.gaussians.backend import GaussianConfig
from splat2splat.losses import PhotometricLoss
from splat2splat.nerf.backend import NerfBackend, NerfConfig
from splat2splat.runner import drive, load_rng_state
from splat2splat.scene import SceneBackend
from splat2splat.scene_files import backend_from_checkpoint, read_checkpoint
from splat2splat.training import BackendName, checkpoint_payload, make_backend, train_scene

PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]
IN2N_LPIPS_PATCH = 32  # in2n trains its NeRF on 32x32 patches when LPIPS is on


@dataclass
class Edit:
    """Edit a 3D scene with a text instruction (Instruct-NeRF2NeRF's Iterative Dataset Update)."""

    data: Path | None = None
    """Dataset folder (nerfstudio, COLMAP or Blender); required unless --resume."""
    prompt: str = ""
    """The editing instruction, e.g. "make it look like autumn"; required unless --resume."""
    preset: PresetName = DEFAULT_PRESET
    """Settings preset: in2n (fp32 editor + LPIPS), in2n-small (fp16 + LPIPS), in2n-tiny (fp16, no LPIPS) or
    igs2gs (re-edit the whole dataset periodically). It sets the defaults of every --idu.* option; options
    given explicitly override it."""
    output: Path = Path("outputs/edit")
    """Run folder (see `splat2splat.edit.run`)."""
    init: Path | None = None
    """Scene to start from: a splat2splat checkpoint (.pt) or an INRIA 3DGS PLY of this dataset. Without it
    the scene is first trained on the unedited images for --init-steps steps."""
    init_steps: int = 2000
    """Training steps of the initial scene when no --init is given."""
    backend: BackendName = "gaussian"
    """Scene representation: 'gaussian' (gsplat) or 'nerf' (original in2n's NeRF)."""
    model: str | None = None
    """InstructPix2Pix hub id or local pipeline folder (shortcut for --idu.editor.model)."""
    device: str = "auto"
    """'cuda', 'cpu' or 'auto' for both the scene and the editor."""
    downscale: int = 1
    """Image downscale factor."""
    lpips_weights: Path | None = None
    """ImageNet weights of the LPIPS backbone (torchvision checkpoint file) when not in the torch hub cache."""
    checkpoint_every: int = 250
    """Steps between checkpoints (0: only at the end and on Ctrl-C)."""
    eval_every: int = 500
    """Steps between evaluations (fit to the edited images; held-out distance from the original)."""
    turntable_frames: int = 60
    """Frames of the turntable video (0: none)."""
    video_format: Literal["mp4", "gif"] = "mp4"
    """Turntable video format."""
    resume: bool = False
    """Continue the run in --output from its checkpoint(s), with the settings saved there."""
    viewer: bool = False
    """Show the scene and the current training images live in a browser while editing (needs viser)."""
    viewer_port: int = 8080
    """Port of the live viewer on localhost."""
    viewer_every: int = 50
    """Steps between live-viewer updates."""
    idu: IDUConfig = field(default_factory=lambda: preset(DEFAULT_PRESET))
    """Iterative Dataset Update settings (defaults from --preset)."""
    gaussians: GaussianConfig = field(default_factory=GaussianConfig)
    """The Gaussian scene (initial training, or import of --init PLY)."""
    nerf: NerfConfig = field(default_factory=NerfConfig)
    """The NeRF scene (--backend nerf)."""


def device_name(device: str) -> str:
    """The device name for both the scene and the editor ('auto': cuda when available)."""
    return str(resolve_device(device))


# ------------------------------------------------------------------------------------------ the scene

def initial_scene(cmd: Edit, dataset: Dataset) -> SceneBackend:
    """The scene to edit: --init, or a scene trained here (resumable from initial/checkpoint.pt)."""
    from splat2splat.io import save_torch

    device = device_name(cmd.device)
    if cmd.init is not None:
        from splat2splat.scene_files import load_scene, scene_format

        if cmd.backend == "nerf" and scene_format(cmd.init) == "ply":
            raise InputError(cmd.init, "a PLY holds Gaussians; it cannot start --backend nerf (pass a NeRF checkpoint)")
        return load_scene(cmd.init, dataset, dataclasses.replace(cmd.gaussians, device=device), device)
    path = cmd.output / "initial" / "checkpoint.pt"
    if path.exists():
        state = read_checkpoint(path)
        backend = backend_from_checkpoint(path, state, device)
        load_rng_state(state["rng"])
    else:
        torch.manual_seed(cmd.gaussians.seed)
        backend = make_backend(cmd.backend, dataset, dataclasses.replace(cmd.gaussians, device=device),
                               dataclasses.replace(cmd.nerf, device=device))

    def save() -> None:
        save_torch(path, checkpoint_payload(backend, cmd.data, cmd.downscale))

    if backend.step < cmd.init_steps or not path.exists():
        train_scene(dataset, backend, cmd.init_steps, save, checkpoint_every=cmd.checkpoint_every,
                    description="initial scene")
    return backend


# ----------------------------------------------------------------------------------- editor and loss

def make_editor(cmd: Edit) -> Editor:
    from splat2splat.edit.ip2p import InstructPix2PixEditor

    config = dataclasses.replace(cmd.idu.editor, device=device_name(cmd.device),
                                 model=cmd.model or cmd.idu.editor.model)
    return InstructPix2PixEditor.from_config(config)


def make_loss(cmd: Edit, lpips: torch.nn.Module | None) -> PhotometricLoss:
    """The preset's loss; LPIPS needs its backbone's ImageNet weights (a clear error when they are missing)."""
    if cmd.idu.loss.lpips > 0 and lpips is None:
        from splat2splat.edit.lpips_loss import load_lpips

        lpips = load_lpips(cmd.idu.lpips_net, cmd.lpips_weights)
    return PhotometricLoss(cmd.idu.loss, lpips if cmd.idu.loss.lpips > 0 else None)


# ------------------------------------------------------------------------------------------- the run

class EditRun:
    """One edit: dataset, scene, IDU loop, and the run folder they are saved in."""

    def __init__(self, cmd: Edit, dataset: Dataset, backend: SceneBackend, idu: IterativeDatasetUpdate):
        self.cmd, self.dataset, self.backend, self.idu = cmd, dataset, backend, idu
        self.checkpoint_path = cmd.output / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        from splat2splat.io import save_torch

        save_torch(self.checkpoint_path, checkpoint_payload(
            self.backend, self.cmd.data, self.cmd.downscale, command=config_to_dict(self.cmd),
            idu=self.idu.state_dict(), dataset_edits=self.dataset.edit_state()))


def start_run(cmd: Edit, editor: Editor | None = None, lpips: torch.nn.Module | None = None) -> EditRun:
    """A new run, or with --resume the interrupted one in --output (its saved command wins over the CLI)."""
    from splat2splat.data.readers import load_dataset
    from splat2splat.io import read_json, write_json

    checkpoint_path, command_path = cmd.output / "checkpoint.pt", cmd.output / "command.json"
    state = None
    if cmd.resume:
        if (cmd.output / "run.json").exists():
            raise InputError(cmd.output / "run.json", "this edit has already finished; nothing to resume")
        if checkpoint_path.exists():
            state = read_checkpoint(checkpoint_path)
            if "idu" not in state:
                raise InputError(checkpoint_path, "not an edit checkpoint (written by another command); nothing to resume")
            saved = state["command"]
        elif command_path.exists():  # interrupted while training the initial scene
            saved = read_json(command_path)
        else:
            raise InputError(cmd.output, "no interrupted edit here to resume (no checkpoint.pt or command.json)")
        cmd = dataclasses.replace(config_from_dict(Edit, saved, checkpoint_path if state is not None else command_path),
                                  output=cmd.output, resume=True)
    else:
        if checkpoint_path.exists() or command_path.exists():
            raise InputError(cmd.output, "an edit already exists here: pass --resume to continue it, or a new --output")
        check_new_run(cmd)
    dataset = load_dataset(cmd.data, downscale=cmd.downscale)
    # Models first: a missing model or LPIPS weights must fail before the initial scene trains for minutes.
    editor = editor if editor is not None else make_editor(cmd)
    loss = make_loss(cmd, lpips)
    if not cmd.resume:
        write_json(command_path, config_to_dict(cmd))  # from here on the run exists and --resume continues it
    if state is not None:
        backend = backend_from_checkpoint(checkpoint_path, state, device_name(cmd.device))
        dataset.load_edit_state(state["dataset_edits"])
    else:
        backend = initial_scene(cmd, dataset)
    if isinstance(backend, NerfBackend) and cmd.idu.loss.lpips > 0:
        backend.config.patch_size = IN2N_LPIPS_PATCH
    idu = IterativeDatasetUpdate(dataset, backend, editor, cmd.prompt, cmd.idu, loss)
    if state is not None:
        idu.load_state_dict(state["idu"])
        load_rng_state(state["rng"])
    return EditRun(cmd, dataset, backend, idu)


def run_edit(cmd: Edit, editor: Editor | None = None, lpips: torch.nn.Module | None = None,
             on_step=None) -> dict:
    """Run (or resume) an edit and write the run folder; returns run.json's content.

    ``editor``/``lpips``: injected instead of loading InstructPix2Pix / LPIPS weights (tests, benchmarks).
    """
    started = time.perf_counter()
    run = start_run(cmd, editor, lpips)
    viewer = None
    if cmd.viewer:  # the CLI's choice, not the saved command's: a resumed run may or may not want one
        from splat2splat.viewer import LiveViewer

        viewer = LiveViewer(cmd.viewer_port, cmd.viewer_every)
        viewer.update(run.backend, run.dataset)

    def after_step(step: int) -> None:
        if viewer is not None:
            viewer.maybe_update(step, run.backend, run.dataset)
        if on_step is not None:
            on_step(step)

    try:
        report = drive(run.idu, run.cmd.idu.steps, run.save_checkpoint, run.cmd.checkpoint_every,
                       run.cmd.eval_every, f"edit: {run.cmd.prompt[:40]}", after_step)
    finally:
        if viewer is not None:
            viewer.close()
    return write_outputs(run, report, time.perf_counter() - started)


def write_outputs(run: EditRun, report, seconds: float) -> dict:
    """Scene export, edited images, before/after sheet, turntable and run.json."""
    from splat2splat.io import save_image, write_json

    cmd, dataset, backend = run.cmd, run.dataset, run.backend
    start = time.perf_counter()
    files = backend.export(cmd.output, dataset)
    for index in dataset.train_indices:
        save_image(cmd.output / "edited" / f"{Path(dataset.image_names[index]).stem}.png", dataset.current[index])
    files.append(write_before_after(cmd.output / "before_after.png", backend, dataset))
    if cmd.turntable_frames > 0:
        from splat2splat.media import render_turntable, write_video

        frames = render_turntable(backend, dataset, cmd.turntable_frames)
        files.append(write_video(cmd.output / f"turntable.{cmd.video_format}", frames))
    final = run.idu.evaluate()
    io_seconds = time.perf_counter() - start
    record = {
        "prompt": cmd.prompt, "preset": cmd.preset, "backend": backend.name, "command": config_to_dict(cmd),
        "seeds": {"idu": cmd.idu.seed, "scene": cmd.gaussians.seed if backend.name == "gaussian" else cmd.nerf.seed},
        "versions": software_versions(), "steps": run.idu.step, "scene_steps": backend.step,
        "edits": run.idu.edits_done, "views_edited": run.idu.views_edited(),
        "views": len(dataset.train_indices), "metrics": final, "last_step": report.last_stats, "history": report.evaluations,
        "seconds": {**run.idu.seconds, "checkpoint": report.seconds["checkpoint"], "eval": report.seconds["eval"],
                    "outputs": io_seconds, "this_session": seconds + io_seconds},
        "files": [str(f) for f in files],
    }
    write_json(cmd.output / "run.json", record)
    print(f"edited {record['views_edited']}/{record['views']} views ({record['edits']} edits); "
          f"wrote {cmd.output}")
    return record


def write_before_after(path: Path, backend: SceneBackend, dataset: Dataset, n_views: int = 4) -> Path:
    """Rows of original | edited training image | render of the edited scene, for views spread over the dataset."""
    from splat2splat.io import save_image
    from splat2splat.media import contact_sheet, evenly_spread

    views = [dataset.train_indices[k] for k in evenly_spread(len(dataset.train_indices), n_views)]
    renders = backend.render(dataset.cameras[views])
    rows = [[dataset.originals[v], dataset.current[v], r] for v, r in zip(views, renders)]
    sheet = contact_sheet(rows, row_labels=[Path(dataset.image_names[v]).stem for v in views],
                          column_labels=["original", "edited image", "edited scene"])
    save_image(path, sheet)
    return path


def software_versions() -> dict[str, str]:
    import diffusers
    import gsplat

    import splat2splat

    return {"python": platform.python_version(), "torch": torch.__version__, "gsplat": gsplat.__version__,
            "diffusers": diffusers.__version__, "splat2splat": splat2splat.__version__,
            "cuda": torch.version.cuda or "none", "platform": platform.platform()}


def check_new_run(cmd: Edit) -> None:
    if cmd.data is None:
        raise InputError(None, "--data is required (the dataset folder of the scene to edit)")
    if not cmd.prompt.strip():
        raise InputError(None, "--prompt is required (the editing instruction)")


def parse_edit_args(args: list[str]) -> Edit:
    """tyro parse with the defaults of --preset (read first, so every --idu.* field overrides the preset)."""
    import tyro

    name = _preset_argument(args)
    if name is not None and name not in PRESETS:
        raise InputError(None, f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    default = Edit(preset=name or DEFAULT_PRESET, idu=preset(name or DEFAULT_PRESET))
    return tyro.cli(Edit, args=args, default=default, prog="splat2splat edit")


def _preset_argument(args: list[str]) -> str | None:
    for k, arg in enumerate(args):
        if arg == "--preset" and k + 1 < len(args):
            return args[k + 1]
        if arg.startswith("--preset="):
            return arg.split("=", 1)[1]
    return None
