"""``process``: photos or a video -> a posed nerfstudio dataset, with a report of what registered.

Everything is built in a hidden folder beside ``output`` (``.NAME.process``, claimed by the folder lock) and
renamed into place only when the model is good (at least half the views registered), so ``train`` never sees a
half dataset and the input is only ever read. A run stopped by Ctrl-C, SIGTERM or a crash keeps that folder
with its finished stages (:mod:`splat2splat.sfm.resume`) and ``--resume`` continues from the first unfinished
one; a run refused for its input (too few views registered...) removes it. Layout of the result (as
ns-process-data's, plus the report):

    transforms.json  images/  images_2/  images_4/  images_8/  sparse_pc.ply
    colmap/database.db  colmap/images/ (the frames COLMAP saw)  colmap/sparse/0/ (its model, COLMAP's frame)
    colmap/colmap.log.* (COLMAP's log)
    process.json  frames.png  camera_path.png
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Callable

import numpy as np
import tyro
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from splat2splat.configs import config_from_dict, config_to_dict
from splat2splat.errors import InputError
from splat2splat.folder_lock import claim_moved, claim_output_folder, release_output_folder
from splat2splat.io import current_umask, write_json
from splat2splat.runner import SignalledStop
from splat2splat.sfm import inputs, nerfstudio_output, reconstruct, report
from splat2splat.sfm.reconstruct import CameraModel, Mapper, Matching, SfmSettings
from splat2splat.sfm.resume import RECORD_FILE, StageRecord, staging_folder

MIN_REGISTERED_FRACTION = 0.5


@dataclass
class ProcessConfig:
    """Options of ``splat2splat process``."""

    input: Annotated[Path | None, tyro.conf.arg(help_behavior_hint="(required unless --resume)")] = None
    """A folder of photos (jpg, png, tif, bmp, webp; read only) or a video file (anything FFmpeg decodes)."""
    output: Annotated[Path | None, tyro.conf.arg(help_behavior_hint="(required)")] = None
    """Folder for the nerfstudio dataset (must not exist yet, or be empty; not inside the input). It is built
    in .NAME.process beside it and appears when complete."""
    num_frames: int = 300
    """Video only: about this many frames, one per equal stretch of the clip (its sharpest), as ns-process-data."""
    camera_model: CameraModel = "OPENCV"
    """COLMAP camera model fitted to the images; the output is undistorted to pinhole either way."""
    single_camera: bool = True
    """One camera (intrinsics) shared by all images (one phone, fixed zoom); --no-single-camera fits one per
    image (mixed cameras, or images of different sizes)."""
    matching: Matching = "auto"
    """Which image pairs are matched: exhaustive (all pairs, slow for many images), sequential (neighbours in
    name/time order, for video) or auto (sequential for video and for more than 150 photos, else exhaustive)."""
    mapper: Mapper = "incremental"
    """Incremental (COLMAP's mapper, robust) or global (GLOMAP's, faster on large sets)."""
    max_features: int = 8192
    """SIFT features per image at most (fewer match faster)."""
    sequential_overlap: int = 10
    """Sequential matching: each image is matched with this many following ones (and some further ones)."""
    seed: int = 0
    """Random seed of COLMAP's estimators (same input and seed: same model)."""
    threads: int = -1
    """CPU threads for COLMAP (-1: all)."""
    verbose: bool = False
    """Show COLMAP's own log lines."""

    def sfm_settings(self) -> SfmSettings:
        """The SfM settings among these options, by name (the flat options keep `--matching` etc. as flags)."""
        return SfmSettings(**{f.name: getattr(self, f.name) for f in fields(SfmSettings)})


def check_config(config: ProcessConfig) -> None:
    """Every option and the input/output paths, before anything is read or written."""
    for name, minimum in (("num_frames", inputs.MIN_VIEWS), ("max_features", 64), ("sequential_overlap", 1)):
        if getattr(config, name) < minimum:
            raise InputError(None, f"--{name.replace('_', '-')} {getattr(config, name)}: must be at least {minimum}")
    if config.threads == 0 or config.threads < -1:
        raise InputError(None, f"--threads {config.threads}: must be -1 (all) or at least 1")
    if config.output is None:
        raise InputError(None, "--output is required (the folder for the dataset)")
    if config.input is None:
        raise InputError(None, "--input is required (a folder of photos or a video file), unless --resume")
    source, output = config.input.resolve(), config.output.resolve()
    if not source.exists():
        raise InputError(config.input, "does not exist (pass a folder of images or a video file)")
    if output == source or source in output.parents:
        raise InputError(config.output, f"is inside the input {config.input}; the input is never written: "
                                        "choose an --output outside it")
    if source.is_dir() and output in source.parents:
        raise InputError(config.output, f"contains the input {config.input}; choose another --output")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise InputError(config.output, "already exists and is not an empty folder; choose a new --output "
                                        "(nothing is overwritten)")


def progress_display(console: Console | None = None) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)


def process(config: ProcessConfig, console: Console | None = None, resume: bool = False) -> dict:
    """Run the whole pipeline (with ``resume``, the unfinished stages of the interrupted run into
    ``config.output``); returns the report (also written to OUTPUT/process.json)."""
    if config.output is None:
        raise InputError(None, "--output is required (the folder for the dataset)")
    output = config.output.resolve()
    staging = staging_folder(output)
    config, record = _resumed(config, output, staging) if resume else _started(config, output, staging)
    try:
        with _sigterm_stops(), progress_display(console) as progress:
            result = _Pipeline(config, record, progress).run()
        _move_into_place(staging, output)
    except InputError:  # the input (or an option) does not give a dataset: nothing worth resuming
        release_output_folder(staging)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:  # stopped or crashed: the finished stages stay for --resume, the folder is free for it
        release_output_folder(staging)
        release_output_folder(output)
    return result


def _started(config: ProcessConfig, output: Path, staging: Path) -> tuple[ProcessConfig, StageRecord]:
    """A new run: its staging folder, made whole with its record, then renamed into place and claimed."""
    check_config(config)
    if staging.exists():
        raise InputError(staging, f"an unfinished `process` run into {config.output} is here: pass --resume to "
                                  f"continue it (or delete this folder to start over)")
    output.parent.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(prefix=f"{staging.name}-new-", dir=output.parent))
    options = config_to_dict(config)
    del options["output"]
    options["input"] = str(config.input.resolve())
    try:
        StageRecord(new, options).write()
        os.rename(new, staging)
    except BaseException as error:
        shutil.rmtree(new, ignore_errors=True)
        if isinstance(error, OSError) and staging.exists():  # another run created it a moment ago
            raise InputError(staging, "another `process` run into this --output has just started; wait for it "
                                      "or choose another --output") from None
        raise
    claim_output_folder(staging, "--output")
    return config, StageRecord.read(staging)


def _resumed(config: ProcessConfig, output: Path, staging: Path) -> tuple[ProcessConfig, StageRecord]:
    """The interrupted run into ``output``: claimed, with this command line's options where it may change them."""
    if not (staging / RECORD_FILE).is_file():
        finished = (output / "transforms.json").is_file()
        raise InputError(config.output, "holds a finished dataset; nothing to resume" if finished else
                         "no unfinished `process` run into this --output to resume; run without --resume")
    claim_output_folder(staging, "--output")
    try:
        return _with_resume_options(config, StageRecord.read(staging))
    except BaseException:
        release_output_folder(staging)
        raise


def _with_resume_options(config: ProcessConfig, record: StageRecord) -> tuple[ProcessConfig, StageRecord]:
    """The saved run's options with those of this command line that it may change (see StageRecord)."""
    defaults = ProcessConfig()
    given = {f.name: getattr(config, f.name) for f in fields(ProcessConfig)
             if f.name != "output" and getattr(config, f.name) != getattr(defaults, f.name)}
    if config.input is not None:
        given["input"] = str(config.input.resolve())
    from_video = Path(str(record.options.get("input"))).is_file()
    options = record.with_options(given, from_video)
    resumed = config_from_dict(ProcessConfig, {**options, "output": str(config.output)}, record.path)
    check_config(resumed)
    record.options = options
    record.write()
    return resumed, record


@contextlib.contextmanager
def _sigterm_stops():
    """SIGTERM (``docker stop``, job schedulers, ``timeout``) stops the run as Ctrl-C does: the running COLMAP
    call is cancelled and the finished stages stay for --resume (exit status 143)."""
    import pycolmap  # noqa: F401  (its import installs glog's handler, which would kill the process at SIGTERM)

    def handler(signum, frame):
        raise SignalledStop(signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave the signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@contextlib.contextmanager
def _stage(progress: Progress, timer: reconstruct.StageTimer, name: str, description: str, total: int | None = None):
    """A timed stage with its progress bar; yields report(completed, total) and advance(step, total) callbacks.

    The bar is completed when the stage ends (COLMAP's log lags behind its work)."""
    task = progress.add_task(description, total=total)

    def report_progress(completed: int, new_total: int | None) -> None:
        progress.update(task, completed=completed, total=new_total)

    def advance(step: int, new_total: int | None) -> None:
        progress.update(task, advance=step, total=new_total)

    with timer.stage(name):
        yield report_progress, advance
    done = progress.tasks[task].total or progress.tasks[task].completed or 1
    progress.update(task, completed=done, total=done)
    progress.stop_task(task)


class _Pipeline:
    """The stages in order, each run with its progress bar (from its start: what an interrupted attempt of it
    left is removed first) and recorded when done, or shown done when the record has it from an earlier run."""

    def __init__(self, config: ProcessConfig, record: StageRecord, progress: Progress):
        self.config, self.record, self.progress = config, record, progress
        self.settings, self.source, self.staging = config.sfm_settings(), config.input, record.folder
        colmap = self.staging / "colmap"
        self.colmap, self.frames_dir, self.model_root = colmap, colmap / "images", colmap / "sparse"
        self.database, self.undistorted = colmap / "database.db", colmap / "undistorted"
        self.timer = reconstruct.StageTimer()
        self.resumed: list[str] = []  # the stages an earlier run finished
        self.log = reconstruct.ColmapLog(colmap, self.settings.verbose)

    def stage(self, name: str, description: str, total: int | None,
              work: Callable[[reconstruct.Report, reconstruct.Report], dict | None]) -> dict:
        """``work(report, advance)`` builds the stage and returns what later stages need to know (JSON)."""
        if name in self.record.done:
            self.resumed.append(name)
            task = self.progress.add_task(f"{description} (done before)", total=1, completed=1)
            self.progress.stop_task(task)
            return self.record.done[name]
        with _stage(self.progress, self.timer, name, description, total) as (update, advance):
            produced = work(update, advance) or {}
        self.record.finish(name, produced, self.timer.seconds[name])
        return produced

    def run(self) -> dict:
        settings, source = self.settings, self.source
        staged = self.stage("frames", "video frames" if source.is_file() else "photos", None, self.stage_frames)
        frames = inputs.StagedFrames(self.frames_dir, staged["names"], staged["sources"],
                                     [tuple(size) for size in staged["sizes"]], staged["from_video"])
        inputs.check_sizes(frames, source, settings.single_camera)  # again on resume: --single-camera may change
        n = len(frames.names)
        self.stage("features", "SIFT features", n, lambda update, _: self.extract(frames.names, update))
        planned = reconstruct.matching_for(settings, n, frames.from_video)
        method = self.stage("matching", f"{planned} matching", n,
                            lambda update, _: self.match(planned, n, update))["method"]
        self.stage("mapping", f"{settings.mapper} mapping", n, lambda update, _: self.map(method, n, update))
        model = _read_model(self.model_root / "0")
        self.stage("undistortion", "undistortion", None, lambda update, _: self.undistort(update))
        self.stage("dataset", "dataset, images_2/4/8", model.num_reg_images(),
                   lambda _, advance: self.write_dataset(advance))
        self.stage("report", "report", None, lambda *_: self.draw_report(frames, model))
        result = _summary(self.config, settings, frames, model, method, self.record.seconds, self.resumed)
        write_json(self.staging / "process.json", result)
        shutil.rmtree(self.undistorted, ignore_errors=True)
        return result

    def stage_frames(self, _, advance) -> dict:
        shutil.rmtree(self.frames_dir, ignore_errors=True)
        if self.source.is_dir():
            staged = inputs.stage_photos(self.source, self.frames_dir, advance)
        else:
            staged = inputs.stage_video(self.source, self.frames_dir, self.config.num_frames, advance)
        return {"names": staged.names, "sources": staged.sources, "sizes": staged.sizes,
                "from_video": staged.from_video}

    def extract(self, names: list[str], update) -> None:
        for path in self.colmap.glob("database.db*"):  # an interrupted extraction's database is not trusted
            path.unlink()
        reconstruct.extract_features(self.database, self.frames_dir, names, self.settings, self.log, update)

    def match(self, method: str, n: int, update) -> dict:
        reconstruct.clear_matches(self.database)  # an interrupted matching's pairs are matched again
        reconstruct.match_features(self.database, method, n, self.settings, self.log, update)
        return {"method": method}

    def map(self, method: str, n: int, update) -> None:
        shutil.rmtree(self.model_root, ignore_errors=True)
        model = reconstruct.map_images(self.database, self.frames_dir, self.model_root, n, self.settings, update)
        reconstruct.check_registration(0 if model is None else model.num_reg_images(),
                                       0 if model is None else model.num_points3D(), n, method, self.source,
                                       MIN_REGISTERED_FRACTION)
        _keep_only(self.model_root, model)

    def undistort(self, update) -> None:
        for folder in (self.undistorted, self.staging / "images"):
            shutil.rmtree(folder, ignore_errors=True)
        reconstruct.undistort(self.model_root / "0", self.frames_dir, self.undistorted, update)
        (self.undistorted / "images").rename(self.staging / "images")

    def write_dataset(self, advance) -> None:
        pinhole = _read_model(self.undistorted / "sparse")
        names = nerfstudio_output.write_transforms(self.staging, pinhole)
        nerfstudio_output.write_downscales(self.staging, names, lambda: advance(1, len(names)))

    def draw_report(self, frames: inputs.StagedFrames, model) -> None:
        registered = {image.name for image in model.images.values()}
        report.frames_sheet(self.staging / "frames.png", [self.frames_dir / name for name in frames.names],
                            [name in registered for name in frames.names])
        ordered = sorted(model.images.values(), key=lambda image: image.name)
        report.camera_path_plot(self.staging / "camera_path.png",
                                np.stack([nerfstudio_output.camtoworld_opencv(image) for image in ordered]),
                                nerfstudio_output.model_points(model)[0])


def _read_model(folder: Path):
    import pycolmap

    return pycolmap.Reconstruction(folder)


def _summary(config: ProcessConfig, settings: SfmSettings, frames: inputs.StagedFrames, model, method: str,
             seconds: dict[str, float], resumed: list[str]) -> dict:
    """process.json: what registered and what not, the model's quality, the settings and the time per stage."""
    registered = {image.name for image in model.images.values()}
    return {
        "input": str(config.input),
        "views": len(frames.names),
        "registered": len(registered),
        "dropped": [f"{name} ({source})" for name, source in zip(frames.names, frames.sources)
                    if name not in registered],
        "frames": [{"name": name, "source": source, "registered": name in registered}
                   for name, source in zip(frames.names, frames.sources)],
        "points": int(model.num_points3D()),
        "reprojection_error_px": float(model.compute_mean_reprojection_error()),
        "matching": method,
        "mapper": settings.mapper,
        "camera_model": settings.camera_model,
        "single_camera": settings.single_camera,
        "cameras": {int(camera_id): {"model": str(camera.model.name), "width": int(camera.width),
                                     "height": int(camera.height), "params": [float(v) for v in camera.params]}
                    for camera_id, camera in model.cameras.items()},
        "options": config_to_dict(config),
        "seconds": dict(seconds),
        "resumed": resumed,  # the stages an earlier, interrupted run had finished (their seconds are its)
    }


def _keep_only(model_root: Path, model) -> None:
    """colmap/sparse/0 holds the chosen (largest) model; the mapper's other partial models are removed."""
    for child in model_root.iterdir():
        shutil.rmtree(child)
    (model_root / "0").mkdir()
    model.write_binary(str(model_root / "0"))


def _move_into_place(staging: Path, output: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        output.rmdir()  # an empty folder given as --output (check_config refused a non-empty one)
    os.replace(staging, output)
    claim_moved(staging, output)
    (output / RECORD_FILE).unlink()
    os.chmod(output, 0o777 & ~current_umask())  # mkdtemp made it private
