"""``splat2splat render``: images, a ground-truth comparison, a turntable video and metrics of a scene.

Writes into ``--output``::

    renders/<split>/<image name>.png   one render per dataset view of the split
    comparison.png                     ground truth | render for up to 8 of those views
    turntable.mp4 (or .gif)            an orbit around the scene
    camera_path.mp4 (or .gif)          the cameras of --camera-path (a nerfstudio camera path)
    metrics.json                       PSNR and SSIM per view and their means, against the ORIGINAL images

Metrics compare with the dataset's original (unedited) images: for an edited scene they measure how far
the edit moved away from the capture, for a reconstruction how well it fits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from rich.progress import track

from splat2splat.data.camera_path import read_camera_path
from splat2splat.data.dataset import Dataset
from splat2splat.errors import InputError
from splat2splat.folder_lock import claim_output_folder, release_output_folder
from splat2splat.gaussians.formats.common import MAX_FILE_GAUSSIANS, MaxFileGaussians
from splat2splat.io import IndependentOutputs, check_output_folder, save_image, write_json
from splat2splat.losses import image_metrics
from splat2splat.media import contact_sheet, evenly_spread, fit_height, render_turntable, write_video
from splat2splat.scene import SceneBackend
from splat2splat.scene_loading import load_scene_and_dataset

RUN_FILES = ("checkpoint.pt", "command.json", "run.json")
COMPARISON_VIEWS = 8
COMPARISON_MAX_HEIGHT = 360  # keeps comparison.png viewable for large captures


@dataclass
class RenderCommand:
    """Render a scene at the dataset's cameras and on a turntable; score the renders against the originals."""

    scene: Path
    """The scene: a splat2splat checkpoint (.pt / .ckpt) or a Gaussian-splatting file (.ply, compressed .ply,
    .splat, .spz) in the dataset's original frame."""
    output: Path = Path("outputs/render")
    """Folder for renders/, comparison.png, the turntable video and metrics.json."""
    data: Path | None = None
    """Dataset folder with the cameras to render (default: the dataset the checkpoint names; required for a .ply)."""
    downscale: int | None = None
    """Image downscale factor (default: the checkpoint's training downscale; 1 for a .ply)."""
    split: Literal["eval", "train", "all"] = "eval"
    """Which dataset views to render and score: held-out (eval), training or all views."""
    turntable_frames: int = 60
    """Frames of the turntable video orbiting the scene; 0 writes no video."""
    video_format: Literal["mp4", "gif"] = "mp4"
    """Turntable file format: H.264 mp4 (small, needs imageio-ffmpeg) or an endlessly looping gif."""
    fps: int = 24
    """Frames per second of the turntable video."""
    device: str = "auto"
    """Device to render on: 'cuda', 'cpu' or 'auto' (cuda when available)."""
    camera_path: Path | None = None
    """A nerfstudio camera path (the JSON its viewer exports: each camera's pose and field of view, the render
    size, fps) to render as a video beside the turntable, in the dataset's frame."""
    dataparser_transforms: Path | None = None
    """The dataparser-transforms JSON that nerfstudio wrote for the run whose viewer drew --camera-path: maps the
    viewer's normalised frame back to the dataset's (without it the path is taken as in the dataset's frame)."""
    max_file_gaussians: MaxFileGaussians = MAX_FILE_GAUSSIANS


def split_indices(dataset: Dataset, split: str) -> list[int]:
    """The dataset views of ``split``; a dataset without held-out views has no 'eval' split."""
    if split == "eval":
        if not dataset.eval_indices:
            raise InputError(dataset.source, "the dataset has no held-out (eval) views: use --split train or all")
        return list(dataset.eval_indices)
    if split == "train":
        return list(dataset.train_indices)
    if split == "all":
        return list(range(len(dataset)))
    raise InputError(None, f"unknown split {split!r}: use eval, train or all")


def render_views(backend: SceneBackend, dataset: Dataset, indices: list[int]) -> list[torch.Tensor]:
    """One render per view in ``indices``, with a progress bar."""
    return [backend.render(dataset.cameras[i])[0] for i in track(indices, description="render views")]


def score_views(renders: list[torch.Tensor], dataset: Dataset, indices: list[int]) -> dict:
    """Per-view and mean PSNR / SSIM against the ORIGINAL images."""
    per_view = {dataset.image_names[i]: image_metrics(render, dataset.original(i))
                for render, i in zip(renders, indices)}
    mean = {key: sum(m[key] for m in per_view.values()) / len(per_view) for key in ("psnr", "ssim")}
    return {"mean": mean, "views": per_view}


def comparison_sheet(renders: list[torch.Tensor], dataset: Dataset, indices: list[int]) -> torch.Tensor:
    """Ground truth | render for up to :data:`COMPARISON_VIEWS` views, labelled with the image names."""
    picks = evenly_spread(len(indices), COMPARISON_VIEWS)
    height = min(COMPARISON_MAX_HEIGHT, dataset.image_size(indices[picks[0]])[0])
    rows = [[fit_height(dataset.original(indices[k]), height), fit_height(renders[k], height)] for k in picks]
    labels = [dataset.image_names[indices[k]] for k in picks]
    return contact_sheet(rows, row_labels=labels, column_labels=["ground truth", "render"])


def render_file_name(image_name: str) -> str:
    """Renders are PNGs named after their view's image (``frame_001.jpg`` -> ``frame_001.png``)."""
    return f"{Path(image_name).stem}.png"


def write_camera_path_video(cmd: RenderCommand, backend: SceneBackend, dataset: Dataset) -> Path:
    """Render the cameras of --camera-path (read before the scene is loaded: see :func:`run`) into a video."""
    cameras, fps = read_camera_path(cmd.camera_path, cmd.dataparser_transforms)
    cameras = dataset.normalization.cameras_to_normalized(cameras)
    frames = [backend.render(cameras[i])[0] for i in track(range(len(cameras)), description="camera path")]
    return write_video(cmd.output / f"camera_path.{cmd.video_format}", frames, round(fps) if fps else cmd.fps)


def run(cmd: RenderCommand) -> dict:
    """RenderCommand, compare and score the scene; returns what metrics.json holds."""
    if cmd.turntable_frames < 0:
        raise InputError(None, f"--turntable-frames must be 0 or more, got {cmd.turntable_frames}")
    if cmd.camera_path is not None:  # a bad path file fails before the scene loads
        read_camera_path(cmd.camera_path, cmd.dataparser_transforms)
    elif cmd.dataparser_transforms is not None:
        raise InputError(None, "--dataparser-transforms maps a --camera-path: pass one")
    started = time.perf_counter()
    backend, dataset = load_scene_and_dataset(cmd.scene, cmd.data, cmd.downscale, cmd.device, cmd.max_file_gaussians)
    indices = split_indices(dataset, cmd.split)
    check_output_folder(cmd.output)  # before rendering: a folder that cannot hold the outputs fails now
    claim_output_folder(cmd.output)
    if any((cmd.output / name).exists() for name in RUN_FILES):  # its metrics.json would be replaced
        raise InputError(cmd.output, f"--output holds a training or edit run (its metrics.json would be replaced): "
                                     f"render into another folder, e.g. --output {cmd.output / 'render'}")
    renders = render_views(backend, dataset, indices)
    outputs = IndependentOutputs()  # one output that fails must not lose the others
    outputs.write("renders", lambda: [save_image(cmd.output / "renders" / cmd.split / render_file_name(
        dataset.image_names[i]), render) for render, i in zip(renders, indices)])
    outputs.write("comparison.png", lambda: save_image(cmd.output / "comparison.png",
                                                       comparison_sheet(renders, dataset, indices)))
    path_video = None
    if cmd.camera_path is not None:
        path_video = outputs.write("camera_path", lambda: write_camera_path_video(cmd, backend, dataset))
    video = None
    if cmd.turntable_frames:
        path = cmd.output / f"turntable.{cmd.video_format}"
        video = outputs.write(path.name, lambda: write_video(
            path, render_turntable(backend, dataset, cmd.turntable_frames), cmd.fps))
    metrics = {
        "scene": str(cmd.scene),
        "backend": backend.name,
        "split": cmd.split,
        **score_views(renders, dataset, indices),
        "turntable": None if video is None else str(video),
        "camera_path": None if path_video is None else str(path_video),
        "seconds": round(time.perf_counter() - started, 3),
        **({"failed_outputs": outputs.failed} if outputs.failed else {}),
    }
    write_json(cmd.output / "metrics.json", metrics)
    print(f"{cmd.split} views: PSNR {metrics['mean']['psnr']:.2f} dB, SSIM {metrics['mean']['ssim']:.4f}; "
          f"wrote {cmd.output}")
    release_output_folder(cmd.output)
    return metrics
