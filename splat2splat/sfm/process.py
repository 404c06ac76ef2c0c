"""``process``: photos or a video -> a posed nerfstudio dataset, with a report of what registered.

Everything is built in a hidden folder beside ``output`` and renamed into place only when the model is good
(at least half the views registered), so a failed or interrupted run leaves nothing half-written and the
input is only ever read. Layout of the result (as ns-process-data's, plus the report):

    transforms.json  images/  images_2/  images_4/  images_8/  sparse_pc.ply
    colmap/database.db  colmap/images/ (the frames COLMAP saw)  colmap/sparse/0/ (its model, COLMAP's frame)
    colmap/colmap.log.* (COLMAP's log)
    process.json  frames.png  camera_path.png
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from splat2splat.errors import InputError
from splat2splat.io import current_umask, write_json
from splat2splat.sfm import inputs, nerfstudio_output, reconstruct, report
from splat2splat.sfm.reconstruct import CameraModel, Mapper, Matching, SfmSettings

MIN_REGISTERED_FRACTION = 0.5


@dataclass
class ProcessConfig:
    """Options of ``splat2splat process``."""

    input: Path
    """A folder of photos (jpg, png, tif, bmp, webp; read only) or a video file (anything FFmpeg decodes)."""
    output: Path
    """Folder for the nerfstudio dataset (must not exist yet, or be empty; not inside the input)."""
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


def process(config: ProcessConfig, console: Console | None = None) -> dict:
    """Run the whole pipeline; returns the report (also written to OUTPUT/process.json)."""
    check_config(config)
    settings = config.sfm_settings()
    output = config.output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        with progress_display(console) as progress:
            result = _build(config, settings, staging, progress)
        _move_into_place(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


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


def _build(config: ProcessConfig, settings: SfmSettings, staging: Path, progress: Progress) -> dict:
    timer = reconstruct.StageTimer()
    colmap = staging / "colmap"
    frames_dir, model_root = colmap / "images", colmap / "sparse"
    source = config.input

    with _stage(progress, timer, "frames", "video frames" if source.is_file() else "photos") as (_, advance):
        if source.is_dir():
            frames = inputs.stage_photos(source, frames_dir, advance)
        else:
            frames = inputs.stage_video(source, frames_dir, config.num_frames, advance)
        inputs.check_sizes(frames, source, settings.single_camera)
    method = reconstruct.matching_for(settings, len(frames.names), frames.from_video)
    model = _sparse_model(frames, method, settings, colmap, progress, timer)
    reconstruct.check_registration(0 if model is None else model.num_reg_images(),
                                   0 if model is None else model.num_points3D(), len(frames.names), method, source,
                                   MIN_REGISTERED_FRACTION)
    _keep_only(model_root, model)

    with _stage(progress, timer, "undistortion", "undistortion") as (update, _):
        pinhole = _undistorted(model_root / "0", frames_dir, staging, update)
    with _stage(progress, timer, "dataset", "dataset, images_2/4/8", len(pinhole.images)) as (_, advance):
        names = nerfstudio_output.write_transforms(staging, pinhole)
        nerfstudio_output.write_downscales(staging, names, lambda: advance(1, len(names)))
    registered = {image.name for image in model.images.values()}
    with _stage(progress, timer, "report", "report"):
        report.frames_sheet(staging / "frames.png", [frames_dir / name for name in frames.names],
                            [name in registered for name in frames.names])
        ordered = sorted(model.images.values(), key=lambda image: image.name)
        report.camera_path_plot(staging / "camera_path.png",
                                np.stack([nerfstudio_output.camtoworld_opencv(image) for image in ordered]),
                                nerfstudio_output.model_points(model)[0])
    result = _summary(config, settings, frames, model, method, timer)
    write_json(staging / "process.json", result)
    return result


def _sparse_model(frames: inputs.StagedFrames, method: str, settings: SfmSettings, colmap: Path, progress: Progress,
                  timer: reconstruct.StageTimer):
    """Features, matches and the mapper's largest model (None when nothing could be mapped)."""
    log = reconstruct.ColmapLog(colmap, settings.verbose)
    database, n = colmap / "database.db", len(frames.names)
    with _stage(progress, timer, "features", "SIFT features", n) as (update, _):
        reconstruct.extract_features(database, frames.folder, frames.names, settings, log, update)
    with _stage(progress, timer, "matching", f"{method} matching", n) as (update, _):
        reconstruct.match_features(database, method, n, settings, log, update)
    with _stage(progress, timer, "mapping", f"{settings.mapper} mapping", n) as (update, _):
        return reconstruct.map_images(database, frames.folder, colmap / "sparse", n, settings, update)


def _undistorted(model_dir: Path, frames_dir: Path, staging: Path, update):
    """Undistorted images moved to ``staging/images``; returns their pinhole model."""
    import pycolmap

    undistorted = staging / "colmap" / "undistorted"
    reconstruct.undistort(model_dir, frames_dir, undistorted, update)
    (undistorted / "images").rename(staging / "images")
    pinhole = pycolmap.Reconstruction(undistorted / "sparse")
    shutil.rmtree(undistorted)
    return pinhole


def _summary(config: ProcessConfig, settings: SfmSettings, frames: inputs.StagedFrames, model, method: str,
             timer: reconstruct.StageTimer) -> dict:
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
        "options": {key: str(value) if isinstance(value, Path) else value for key, value in asdict(config).items()},
        "seconds": dict(timer.seconds),
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
    os.chmod(output, 0o777 & ~current_umask())  # mkdtemp made it private
