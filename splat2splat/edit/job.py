"""One instruction-driven 3D edit (Iterative Dataset Update) and the run folder it lives in.

Run folder (``EditJob.output``)::

    command.json            the job, written before any work, so --resume can continue from the start
    initial/checkpoint.pt   the unedited scene, when trained here (no --init)
    checkpoint.pt           the edit: scene, edited images, IDU state, RNG; every checkpoint_every steps
    scene.ply, scene.splat  the edited Gaussian scene in the dataset's original frame (NeRF: renders + points)
    edited/<view>.png       the current (edited) training images
    before_after.png        original | edited training image | final render, for a few views
    turntable.mp4           a turn around the edited scene
    run.json                prompt, preset and every setting, seeds, versions, timings, metrics
    splat2splat.lock        the claim of the process running it (a second run into the folder is refused)

A caller runs :func:`start_edit`, then :meth:`EditRun.edit`, then :meth:`EditRun.finish`. Ctrl-C finishes the
current step, saves, and stops; a resumed run continues to the same result an uninterrupted one gives.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable, Literal

import torch
import tyro

from splat2splat.backends import SceneConfig, backend_kind, backend_name, make_backend, rebuilt_with
from splat2splat.checkpoint import (CHECKPOINT_FILE, COMMAND_FILE, backend_from_checkpoint, check_edit_state,
                                    job_from_dict, job_to_dict, load_rng_state, read_checkpoint, read_command,
                                    require_keys, save_checkpoint, with_invocation_permissions, with_resume_options,
                                    write_command)
from splat2splat.configs import config_to_dict
from splat2splat.data.dataset import Dataset
from splat2splat.devices import resolve_device
from splat2splat.edit.editor import Editor, EditorPool
from splat2splat.edit.idu import IterativeDatasetUpdate
from splat2splat.edit.executors import check_throughput_options
from splat2splat.edit.presets import DEFAULT_PRESET, PRESETS, IDUConfig, departures, preset
from splat2splat.edit.regions import RegionConfig
from splat2splat.errors import InputError
from splat2splat.evaluation.evaluate import EditEvaluation
from splat2splat.evaluation.runs import EvalTarget
from splat2splat.folder_lock import claim_output_folder, release_output_folder
from splat2splat.gaussians.backend import GaussianConfig
from splat2splat.gaussians.formats.common import MAX_FILE_GAUSSIANS, MaxFileGaussians
from splat2splat.io import IndependentOutputs, check_output_folder, is_file, write_json
from splat2splat.losses import PhotometricLoss
from splat2splat.runner import Logger, LoopReport, RunLog, check_logger, run_loop
from splat2splat.scene import SceneBackend
from splat2splat.training import train_scene
from splat2splat.validation import check_options
from splat2splat.versions import software_versions

PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


@dataclass
class EditJob:
    """Edit a 3D scene with a text instruction (Instruct-NeRF2NeRF's Iterative Dataset Update)."""

    data: Annotated[Path | None, tyro.conf.arg(help_behavior_hint="(required unless --resume)")] = None
    """Dataset folder (nerfstudio, COLMAP or Blender)."""
    prompt: Annotated[str, tyro.conf.arg(help_behavior_hint="(required unless --resume)")] = ""
    """The editing instruction, e.g. "make it look like autumn"."""
    preset: PresetName = DEFAULT_PRESET
    """Settings preset, each as its reference's code runs it (README: presets table): in2n (in2n's 'full
    precision' editor + LPIPS, 15000 steps), in2n-small (fp16 + offload + LPIPS, 30000), in2n-tiny (fp16 +
    offload, no LPIPS, 30000) or igs2gs (re-edit the dataset every 2500 steps, 7500). It sets the defaults of
    every --idu.* option; options given explicitly override it."""
    output: Path = Path("outputs/edit")
    """Run folder: command.json, checkpoint.pt, the edited scene, renders and run.json (README: run folder)."""
    init: Path | None = None
    """Scene to start from: a splat2splat checkpoint (.pt) or a scene file of this dataset (.ply, compressed .ply,
    .splat, .spz; in its original frame). Without it the scene is first trained on the unedited images for
    --init-steps steps."""
    max_file_gaussians: MaxFileGaussians = MAX_FILE_GAUSSIANS
    init_steps: int = 30_000
    """Training steps of the initial scene when no --init is given (as `train`; in2n starts from a 30k nerfacto)."""
    model: str | None = None
    """InstructPix2Pix hub id or local pipeline folder (shortcut for --idu.editor.model)."""
    device: str = "auto"
    """Device of the scene and the editor: cuda, cuda:N, cpu or auto (cuda when available). The scene's and the
    editor's own device options override it for one part."""
    downscale: int = 1
    """Image downscale factor."""
    allow_paths_outside_data: bool = False
    """Follow image, mask and point-cloud paths of the dataset that lead outside its folder (refused by default:
    a dataset from elsewhere must not make the program read arbitrary files)."""
    lpips_weights: Path | None = None
    """ImageNet weights of the LPIPS backbone (torchvision checkpoint file) when not in the torch hub cache."""
    checkpoint_every: int = 250
    """Steps between checkpoints (0: only at the end and on Ctrl-C)."""
    checkpoint_minutes: float = 10.0
    """Also checkpoint after this many minutes of wall time since the last checkpoint (0: off)."""
    eval_every: int = 500
    """Steps between evaluations (fit to the edited images; held-out distance from the original)."""
    turntable_frames: int = 60
    """Frames of the turntable video (0: none)."""
    video_format: Literal["mp4", "gif"] = "mp4"
    """Turntable video format."""
    logger: Logger = "none"
    """Where per-step metrics go besides run.log and metrics.jsonl in the run folder: 'tensorboard' also writes
    TensorBoard event files to its tensorboard/ folder (needs the tensorboard extra)."""
    idu: IDUConfig = field(default_factory=lambda: preset(DEFAULT_PRESET))
    """Iterative Dataset Update settings (defaults from --preset)."""
    scene: SceneConfig = field(default_factory=GaussianConfig)
    """The scene backend and its settings: a GaussianConfig (gsplat) or a NerfConfig (in2n's NeRF)."""
    eval: EditEvaluation = field(default_factory=EditEvaluation)
    """CLIP evaluation of the finished edit (--eval.captions SRC TGT turns it on; see `splat2splat eval`)."""
    region: RegionConfig = field(default_factory=RegionConfig)
    """A local edit: only this region changes, the rest of the scene stays exactly as it was (one of
    --region.box, --region.sphere, --region.file, --region.gaussians or --region.masks; README: local edits)."""

    @property
    def backend(self) -> str:
        """The registered backend of ``scene`` ('gaussian' or 'nerf')."""
        return backend_name(self.scene)


def device_name(device: str) -> str:
    """The device name for both the scene and the editor ('auto': cuda when available)."""
    return str(resolve_device(device))


def on_device(job: EditJob) -> EditJob:
    """``job`` with every part's device resolved: its own override, else the job's ``--device``."""
    scene_device = device_name(job.scene.device or job.device)
    editor_device = device_name(job.idu.editor.device or job.device)
    return dataclasses.replace(job, scene=dataclasses.replace(job.scene, device=scene_device),
                               idu=dataclasses.replace(job.idu, editor=dataclasses.replace(
                                   job.idu.editor, device=editor_device, model=job.model or job.idu.editor.model)))


# ------------------------------------------------------------------------------------------ the scene


def init_scene(job: EditJob, dataset: Dataset) -> SceneBackend:
    """The scene of --init, checked against --backend and the dataset (before anything is written)."""
    from splat2splat.scene_loading import load_scene, scene_format

    if job.backend == "nerf" and scene_format(job.init) == "splats":
        raise InputError(job.init, f"a {job.init.suffix} file holds Gaussians; it cannot start --backend nerf "
                                   f"(pass a NeRF checkpoint)")
    gaussians = job.scene if isinstance(job.scene, GaussianConfig) else GaussianConfig(device=job.scene.device)
    backend = load_scene(job.init, dataset, gaussians, job.scene.device, job.max_file_gaussians)
    if backend.name != job.backend:
        raise InputError(job.init, f"holds a {backend.name} scene, but the edit asks for --backend {job.backend}")
    check_fits_dataset(job.init, backend, dataset)
    return backend


def check_fits_dataset(source: Path, backend: SceneBackend, dataset: Dataset) -> None:
    try:
        backend.check_dataset(dataset)
    except ValueError as problem:
        raise InputError(source, f"does not fit the dataset {dataset.source}: {problem}") from None


def initial_checkpoint(output: Path) -> Path:
    """Where an edit keeps the initial scene it trained (the original scene of its evaluation)."""
    return output / "initial" / CHECKPOINT_FILE


def trained_initial_scene(job: EditJob, dataset: Dataset) -> SceneBackend:
    """A scene trained here on the unedited images (resumable from initial/checkpoint.pt)."""
    path = initial_checkpoint(job.output)
    if path.exists():
        state = read_checkpoint(path)
        backend = backend_from_checkpoint(path, state, job.scene.device)
        check_fits_dataset(path, backend, dataset)
        load_rng_state(state["rng"])
    else:
        torch.manual_seed(job.scene.seed)
        backend = make_backend(job.backend, dataset, job.scene)

    def save() -> None:
        save_checkpoint(path, backend, job.data, job.downscale)

    if backend.step < job.init_steps or not path.exists():
        log = RunLog(job.output, job.logger, "initial scene")
        try:
            train_scene(dataset, backend, job.init_steps, save, checkpoint_every=job.checkpoint_every,
                        description="initial scene", checkpoint_minutes=job.checkpoint_minutes, log=log)
        finally:
            log.close()
    return backend


def edit_configured(job: EditJob, backend: SceneBackend) -> SceneBackend:
    """The scene as the edit trains it: a backend that trains on ray patches (the NeRF) is rebuilt with patches
    of --idu.lpips-patch-size (in2n: 32x32) when the edit's loss has LPIPS, which needs image structure;
    whole-image backends are as is (their loss crops the LPIPS patches)."""
    if backend_kind(backend.name).trains_on == "patches" and job.idu.loss.lpips > 0 \
            and backend.config.patch_size != job.idu.lpips_patch_size:
        return rebuilt_with(backend, patch_size=job.idu.lpips_patch_size)
    return backend


# ----------------------------------------------------------------------------------- editor and loss


def make_editor(job: EditJob) -> Editor:
    from splat2splat.edit.ip2p import InstructPix2PixEditor

    return InstructPix2PixEditor.from_config(job.idu.editor)


def make_loss(job: EditJob, lpips: torch.nn.Module | None) -> PhotometricLoss:
    """The preset's loss; LPIPS needs its backbone's ImageNet weights (a clear error when they are missing).

    On a whole-image scene the loss crops --idu.lpips-on patches itself; a backend that trains on ray patches
    hands it patches already (see :func:`edit_configured`)."""
    if job.idu.loss.lpips > 0 and lpips is None:
        from splat2splat.edit.lpips_loss import load_lpips

        lpips = load_lpips(job.idu.lpips_net, job.lpips_weights)
    crops = backend_kind(job.backend).trains_on == "images"
    return PhotometricLoss(job.idu.loss, lpips if job.idu.loss.lpips > 0 else None,
                           job.idu.lpips_patch_sampling() if crops else None)


def check_lpips_options(job: EditJob) -> None:
    """LPIPS settings the backbone or the backend cannot honour are refused before any work."""
    from splat2splat.edit.lpips_loss import SMALLEST_SIDE

    if job.idu.loss.lpips <= 0:
        return
    smallest = SMALLEST_SIDE[job.idu.lpips_net]
    if job.idu.lpips_on == "patches" and job.idu.lpips_patch_size < smallest:
        raise InputError(None, f"--idu.lpips-patch-size {job.idu.lpips_patch_size}: the {job.idu.lpips_net} LPIPS "
                               f"backbone needs patches of at least {smallest} px")
    if backend_kind(job.backend).trains_on != "patches":
        return
    if job.idu.lpips_on != "patches":
        raise InputError(None, f"--idu.lpips-on {job.idu.lpips_on}: --backend {job.backend} trains on ray patches, "
                               f"so its LPIPS sees patches only (pass --idu.lpips-on patches)")
    if job.scene.rays_per_batch < job.idu.lpips_patch_size ** 2:
        raise InputError(None, f"--nerf.rays-per-batch {job.scene.rays_per_batch} holds no "
                               f"{job.idu.lpips_patch_size}x{job.idu.lpips_patch_size} LPIPS patch "
                               f"(--idu.lpips-patch-size): pass at least {job.idu.lpips_patch_size ** 2}")


def check_lpips_fits(job: EditJob, dataset: Dataset) -> None:
    """LPIPS patches must fit in every training view, and whole views be large enough for the backbone."""
    from splat2splat.edit.lpips_loss import SMALLEST_SIDE

    if job.idu.loss.lpips <= 0:
        return
    sizes = {dataset.image_size(view) for view in dataset.train_indices}
    height, width = min(size[0] for size in sizes), min(size[1] for size in sizes)
    if job.idu.lpips_on == "patches" and min(height, width) < job.idu.lpips_patch_size:
        size = job.idu.lpips_patch_size
        raise InputError(dataset.source, f"training views of {width}x{height} px are smaller than the {size}x{size} "
                                         f"LPIPS patches (--idu.lpips-patch-size): pass a smaller size or a smaller "
                                         f"--downscale")
    if job.idu.lpips_on == "image" and min(height, width) < SMALLEST_SIDE[job.idu.lpips_net]:
        raise InputError(dataset.source, f"training views of {width}x{height} px are too small for the "
                                         f"{job.idu.lpips_net} LPIPS backbone (at least "
                                         f"{SMALLEST_SIDE[job.idu.lpips_net]} px a side)")


def load_eval_clip(job: EditJob):
    """The CLIP encoder of --eval.captions (None without them)."""
    if job.eval.captions is None:
        return None
    from splat2splat.evaluation.clip_metrics import load_clip

    if not all(caption.strip() for caption in job.eval.captions):
        raise InputError(None, "--eval.captions needs two non-empty captions: the original scene's and the edited one's")
    if job.eval.frames < 2:
        raise InputError(None, f"--eval.frames must be at least 2 (consistency compares consecutive frames), "
                               f"got {job.eval.frames}")
    return load_clip(job.eval.clip_model, device_name(job.device), job.eval.resize)


# ------------------------------------------------------------------------------------------- the run


@dataclass
class EditRun:
    """One edit: its job, dataset, scene and IDU loop, and the run folder they are saved in."""

    job: EditJob
    dataset: Dataset
    backend: SceneBackend
    idu: IterativeDatasetUpdate
    clip: object = None  # the CLIP encoder of --eval.captions, loaded before the edit starts
    started: float = field(default_factory=time.perf_counter)

    @property
    def checkpoint_path(self) -> Path:
        return self.job.output / CHECKPOINT_FILE

    def save_checkpoint(self) -> None:
        save_checkpoint(self.checkpoint_path, self.backend, self.job.data, self.job.downscale,
                        command=job_to_dict(self.job), idu=self.idu.state_dict(),
                        dataset_edits=self.dataset.edit_state())

    def edit(self, on_step: Callable[[int], None] | None = None) -> LoopReport:
        """Run the IDU to ``job.idu.steps`` (checkpoints, evaluation, Ctrl-C: see :func:`run_loop`)."""
        job = self.job
        log = RunLog(job.output, job.logger, "edit")
        log.line(f"edit {job.output}: {job.prompt!r}, preset {job.preset}, backend {job.backend}, "
                 f"step {self.idu.step} of {job.idu.steps}")
        try:
            return run_loop(self.idu, job.idu.steps, self.save_checkpoint, job.checkpoint_every, job.eval_every,
                            f"edit: {job.prompt}", on_step, job.checkpoint_minutes, log)
        except BaseException:  # stopped (Ctrl-C, SIGTERM, an error): a resume, from any process, may claim it
            release_output_folder(job.output)
            raise
        finally:
            log.close()

    def finish(self, report: LoopReport) -> dict:
        """Write the deliverables and run.json; returns run.json's content."""
        from splat2splat.edit.outputs import write_edit_outputs

        job = self.job
        record = write_edit_outputs(job.output, self.backend, self.dataset, self.record(report), job.turntable_frames,
                                    job.video_format, self.started)
        RunLog(job.output).line(f"edit finished: {record['views_edited']}/{record['views']} views edited "
                                f"({record['edits']} edits); wrote {', '.join(record['files'])}")
        if self.clip is not None:
            from splat2splat.evaluation.report import add_eval_to_run

            outputs = IndependentOutputs()
            evaluated = outputs.write("CLIP evaluation", lambda: add_eval_to_run(
                record, self.eval_target(record), job.eval, self.clip, device_name(job.device), job.max_file_gaussians))
            if evaluated is None:
                record["failed_outputs"] = {**record.get("failed_outputs", {}), **outputs.failed}
                write_json(job.output / "run.json", record)
            record = evaluated or record
        release_output_folder(job.output)
        return record

    def record(self, report: LoopReport) -> dict:
        """run.json's content, but the files the outputs write (see :func:`write_edit_outputs`)."""
        job, idu = self.job, self.idu
        return {
            "prompt": job.prompt, "preset": job.preset, "backend": self.backend.name, "command": job_to_dict(job),
            # the IDU settings this run used (the preset's, with the options given over it), beside its name
            "preset_settings": {"preset": job.preset, **config_to_dict(job.idu)},
            "departures_from_preset": departures(job.preset, job.idu),
            "seeds": {"idu": job.idu.seed, "scene": job.scene.seed},
            "edit_order": list(idu.edit_order),  # the views in the order they are edited (cycling)
            "versions": software_versions(), "steps": idu.step, "scene_steps": self.backend.step,
            "edits": idu.edits_done, "views_edited": idu.views_edited(), "views": len(self.dataset.train_indices),
            "metrics": idu.evaluate(), "last_step": report.last_stats, "history": report.evaluations,
            "seconds": {**idu.timings(), "checkpoint": report.seconds["checkpoint"], "eval": report.seconds["eval"]},
        }

    def eval_target(self, record: dict) -> EvalTarget:
        """This finished run as the evaluation sees it: its scene, the scene it started from, its dataset."""
        job = self.job
        return EvalTarget(name=job.output.resolve().name, edited=self.checkpoint_path,
                          original=job.init if job.init is not None else initial_checkpoint(job.output),
                          data=job.data, downscale=job.downscale, prompt=job.prompt, run_folder=job.output,
                          finished=True, run_metrics=dict(record["metrics"]))


def saved_job(job: EditJob, given: dict | None = None) -> tuple[EditJob, dict | None]:
    """The job of the interrupted run in ``job.output`` and its edit checkpoint (None: stopped before editing);
    ``given``: the options of this command line (see :func:`~splat2splat.checkpoint.with_resume_options`)."""
    output, checkpoint_path = job.output, job.output / CHECKPOINT_FILE
    if (output / "run.json").exists():
        raise InputError(output / "run.json", "this edit has already finished; nothing to resume")
    if checkpoint_path.exists():
        state = read_checkpoint(checkpoint_path)
        require_keys(checkpoint_path, state, ("command", "idu", "dataset_edits"), "`splat2splat edit`")
        saved = job_from_dict(EditJob, state["command"], checkpoint_path)
    elif (output / COMMAND_FILE).exists():  # interrupted while training the initial scene
        state, saved = None, read_command(output, EditJob)
    else:
        raise InputError(output, "no interrupted edit here to resume (no checkpoint.pt or command.json)")
    source = checkpoint_path if state is not None else output / COMMAND_FILE
    if given:
        saved = with_resume_options(saved, given, source)
    check_options(saved, source)
    return dataclasses.replace(with_invocation_permissions(saved, job, source), output=output), state


def check_new_edit(job: EditJob) -> None:
    from splat2splat.edit.ip2p import check_editor_options
    from splat2splat.edit.regions import check_region_config

    check_options(job)
    check_logger(job.logger)
    check_region_config(job.region)
    if job.region.given():
        check_local_density(job)
    if job.data is None:
        raise InputError(None, "--data is required (the dataset folder of the scene to edit)")
    check_throughput_options(job.idu.schedule, job.idu.edit_batch, job.idu.edit_lag)
    check_lpips_options(job)
    check_editor_options(on_device(job).idu.editor)
    if not job.prompt.strip():
        raise InputError(None, "--prompt is required (the editing instruction)")
    if job.lpips_weights is not None and not is_file(job.lpips_weights):
        raise InputError(job.lpips_weights, "--lpips-weights file does not exist")
    check_output_folder(job.output)
    claim_output_folder(job.output)  # before the check below, so two runs started at once cannot both pass it
    if (job.output / CHECKPOINT_FILE).exists() or (job.output / COMMAND_FILE).exists():
        raise InputError(job.output, "an edit already exists here: pass --resume to continue it, or a new --output")


def start_edit(job: EditJob, resume: bool = False, editor: Editor | EditorPool | None = None,
               lpips: torch.nn.Module | None = None, given: dict | None = None) -> EditRun:
    """A new edit, or with ``resume`` the interrupted one in ``job.output`` (its saved job wins).

    ``editor``/``lpips``: injected instead of loading InstructPix2Pix / LPIPS weights (tests, benchmarks);
    ``given``: with ``resume``, the options this command line set (honoured or refused, never dropped silently).
    """
    from splat2splat.data.readers import load_dataset

    state = None
    if resume:
        if job.output.is_dir():
            claim_output_folder(job.output)  # a second process resuming it at once is refused
        job, state = saved_job(job, given)
    else:
        check_new_edit(job)
    job = on_device(job)
    dataset = load_dataset(job.data, downscale=job.downscale, allow_outside_paths=job.allow_paths_outside_data)
    check_lpips_fits(job, dataset)
    if state is None and job.region.given():  # a bad region fails now, not after the initial scene trained
        from splat2splat.edit.regions import check_region_inputs

        check_region_inputs(job.region, dataset, job.downscale, job.backend, job.max_file_gaussians)
    # Models first: a missing model or LPIPS weights must fail before the initial scene trains for minutes.
    editor = editor if editor is not None else make_editor(job)
    loss = make_loss(job, lpips)
    clip = load_eval_clip(job)
    backend = None
    if state is not None:
        backend = resumed_scene(job, state, dataset)
    elif job.init is not None:
        backend = init_scene(job, dataset)
    if not resume:
        write_command(job.output, job)  # from here on the run exists and --resume continues it
    if backend is None:
        backend = trained_initial_scene(job, dataset)
    if state is None:
        backend = edit_configured(job, backend)
    idu = make_idu(job, dataset, backend, editor, loss, fresh=state is None)
    if state is not None:
        try:
            idu.load_state_dict(state["idu"])
        except (ValueError, KeyError, TypeError, RuntimeError) as problem:
            raise InputError(job.output / CHECKPOINT_FILE, f"its edit state does not fit this run: {problem}") from None
        load_rng_state(state["rng"])
    return EditRun(job, dataset, backend, idu, clip)


def local_density_problem(refine_stop: int, step: int) -> str:
    return (f"a local edit keeps the Gaussians outside the region exactly, but the scene's density strategy "
            f"(gsplat's, which acts on every Gaussian) still runs until step {refine_stop} (the scene is at "
            f"{step}): pass --idu.density-control off or cull")


def check_local_density(job: EditJob) -> None:
    """A scene trained here for fewer steps than its densification window cannot 'continue' in a local edit."""
    if not isinstance(job.scene, GaussianConfig):
        return
    strategy = job.scene.strategy
    if job.init is None and job.idu.density_control == "continue" \
            and strategy.kind != "none" and job.init_steps < strategy.refine_stop:
        raise InputError(None, local_density_problem(strategy.refine_stop, job.init_steps))


def make_idu(job: EditJob, dataset: Dataset, backend: SceneBackend, editor: Editor | EditorPool,
             loss: PhotometricLoss, fresh: bool) -> IterativeDatasetUpdate:
    """The IDU loop; with --region.* a local one (a resumed run takes its region from the checkpoint)."""
    if not job.region.given():
        return IterativeDatasetUpdate(dataset, backend, editor, job.prompt, job.idu, loss)
    from splat2splat.edit.local import LocalIterativeDatasetUpdate
    from splat2splat.edit.regions import resolve_region

    if not fresh:  # masks come with the IDU state, the frozen Gaussians with the scene's
        masks = [torch.zeros(dataset.image_size(i)) for i in range(len(dataset))]
        return LocalIterativeDatasetUpdate(dataset, backend, editor, job.prompt, job.idu, loss, masks=masks,
                                           feather=job.region.feather)
    scene = backend.gaussians()
    if scene is not None and job.idu.density_control == "continue" and scene.strategy_active():
        raise InputError(None, local_density_problem(scene.strategy_stop(), backend.step))
    region = resolve_region(job.region, dataset, backend, job.downscale, job.max_file_gaussians)
    if scene is not None and region.inside is not None:
        scene.freeze(~region.inside)
    return LocalIterativeDatasetUpdate(dataset, backend, editor, job.prompt, job.idu, loss, masks=region.masks,
                                       feather=job.region.feather)


def resumed_scene(job: EditJob, state: dict, dataset: Dataset) -> SceneBackend:
    """The scene and edited images of an edit checkpoint, checked against the dataset."""
    path = job.output / CHECKPOINT_FILE
    check_edit_state(path, state, dataset.train_indices)
    backend = backend_from_checkpoint(path, state, job.scene.device)
    check_fits_dataset(path, backend, dataset)
    try:
        dataset.load_edit_state(state["dataset_edits"])
    except (ValueError, TypeError, AttributeError) as problem:
        raise InputError(path, f"its edited images do not fit the dataset {dataset.source}: {problem}") from None
    return backend


def run_edit_job(job: EditJob, resume: bool = False, editor: Editor | EditorPool | None = None,
                 lpips: torch.nn.Module | None = None, on_step: Callable[[int], None] | None = None) -> dict:
    """Start (or resume), edit and finish in one call; returns run.json's content."""
    run = start_edit(job, resume, editor, lpips)
    return run.finish(run.edit(on_step))
