"""Evaluate edited scenes against their originals: renders along a camera path, CLIP metrics, held-out views.

For every target (see :mod:`splat2splat.evaluation.runs`) both scenes are rendered from the same cameras,
a smooth path through the captured views (or an orbit), and compared with CLIP
(:mod:`splat2splat.evaluation.clip_metrics`). Where the dataset holds out views, the edited scene's
renders of them are compared with the photos (CLIP direction, PSNR, SSIM), beside the original scene's.
Runs that share an original scene and dataset share its renders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from rich.progress import track

from splat2splat.data.cameras import Cameras, orbit_path
from splat2splat.data.dataset import Dataset
from splat2splat.evaluation.camera_path import capture_path
from splat2splat.evaluation.clip_metrics import (DEFAULT_CLIP_MODEL, DEFAULT_RESIZE, ClipEncoder, ResizeMode,
                                                 direction_consistency, direction_similarity,
                                                 edit_direction_consistency)
from splat2splat.evaluation.runs import EvalTarget
from splat2splat.gaussians.formats.common import MAX_FILE_GAUSSIANS
from splat2splat.scene import SceneBackend

PathKind = Literal["capture", "orbit"]


@dataclass
class EditEvaluation:
    """CLIP evaluation of the finished edit (the numbers of `splat2splat eval`, added to run.json)."""

    captions: tuple[str, str] | None = None
    """Source and target caption, e.g. "a photo of a bear" "a photo of a grizzly bear": when given, the finished
    edit is evaluated with CLIP along a camera path, run.json gains an "eval" entry and RUN/eval/ holds the report."""
    clip_model: str = DEFAULT_CLIP_MODEL
    """CLIP hub id or local transformers folder (loaded before the edit starts, so a missing model fails early)."""
    frames: int = 60
    """Frames of the camera path through the captured views."""
    resize: ResizeMode = DEFAULT_RESIZE
    """Image preprocessing, as `splat2splat eval --resize`: 'in2n' (in2n's metrics script: bicubic squash to
    224x224, no crop) or 'clip' (CLIPImageProcessor's: bicubic resize of the shortest side, centre crop)."""


@dataclass
class EvaluatedEdit:
    """The numbers of one target and the images of its contact sheets."""

    target: EvalTarget
    numbers: dict
    original_key: tuple
    path_rows: list[list[torch.Tensor]]  # [original render, edited render] of a few path frames
    path_labels: list[str]
    heldout_rows: list[list[torch.Tensor]] = field(default_factory=list)  # [photo, original, edited]
    heldout_labels: list[str] = field(default_factory=list)


@dataclass
class OriginalScene:
    """What every target of one original scene shares: dataset, path, renders and their CLIP embeddings."""

    dataset: Dataset
    cameras: Cameras
    frames: list[torch.Tensor]
    embeddings: torch.Tensor
    heldout_renders: list[torch.Tensor]
    heldout_photo_embeddings: torch.Tensor | None


def path_cameras(dataset: Dataset, n_frames: int, kind: PathKind = "capture") -> Cameras:
    """The evaluation path: through the training views in capture order, or a turntable orbit around them."""
    if kind == "orbit":
        return orbit_path(dataset.train_cameras, n_frames)
    return capture_path(dataset.train_cameras, n_frames)


def path_record(cameras: Cameras) -> dict:
    """The path in eval.json: frame count, image size, and every camera (dataset's normalised frame, OpenCV axes)."""
    height, width = cameras.image_size(0)
    return {"frames": len(cameras), "width": width, "height": height,
            "camtoworlds": cameras.camtoworlds.tolist(), "fx": cameras.fx.tolist(), "fy": cameras.fy.tolist(),
            "cx": cameras.cx.tolist(), "cy": cameras.cy.tolist()}


def render_frames(backend: SceneBackend, cameras: Cameras, description: str) -> list[torch.Tensor]:
    return [backend.render(cameras[i])[0].detach().float().cpu()
            for i in track(range(len(cameras)), description=description)]


def mean(values: torch.Tensor) -> float | None:
    return float(values.mean()) if len(values) else None


CLIP_METRICS = ("direction_similarity", "direction_consistency", "edit_direction_consistency")  # eval.json's names


def clip_scores(encoder: ClipEncoder, original: torch.Tensor, edited: torch.Tensor,
                texts: torch.Tensor) -> dict:
    """The CLIP metrics of unit image embeddings ``original``/``edited`` ([N, D]) and ``texts`` = [source, target]:
    each one's mean, and its values per frame (similarity) or per pair of consecutive frames (consistencies)."""
    values = dict(zip(CLIP_METRICS, (direction_similarity(original, edited, texts[0], texts[1]),
                                     direction_consistency(original, edited),
                                     edit_direction_consistency(original, edited))))
    return {**{name: mean(value) for name, value in values.items()},
            "per_frame": {name: value.tolist() for name, value in values.items()}}


def evaluate_targets(targets: list[EvalTarget], target_captions: list[str], source_caption: str,
                     encoder: ClipEncoder, n_frames: int, path_kind: PathKind, device: str,
                     sheet_rows: int = 4, max_gaussians: int = MAX_FILE_GAUSSIANS) -> list[EvaluatedEdit]:
    """Evaluate every target (with its own target caption) against its original scene (``max_gaussians``: the
    cap of a compressed scene file's claimed count)."""
    originals: dict[tuple, OriginalScene] = {}
    source_text = encoder.encode_texts([source_caption])[0]
    results = []
    for target, caption in zip(targets, target_captions):
        key = (str(Path(target.original).resolve()), str(Path(target.data).resolve()), target.downscale)
        if key not in originals:
            originals[key] = prepare_original(target, encoder, n_frames, path_kind, device, max_gaussians)
        results.append(evaluate_target(target, caption, source_text, originals[key], key, encoder, device, sheet_rows,
                                       max_gaussians))
    return results


def prepare_original(target: EvalTarget, encoder: ClipEncoder, n_frames: int, path_kind: PathKind,
                     device: str, max_gaussians: int = MAX_FILE_GAUSSIANS) -> OriginalScene:
    from splat2splat.data.readers import load_dataset
    from splat2splat.scene_loading import load_scene

    dataset = load_dataset(target.data, downscale=target.downscale)
    cameras = path_cameras(dataset, n_frames, path_kind)
    scene = load_scene(target.original, dataset, device=device, max_gaussians=max_gaussians)
    frames = render_frames(scene, cameras, "original scene")
    heldout = render_frames(scene, dataset.eval_cameras, "original scene, held-out views")
    del scene
    photos = [dataset.original(i) for i in dataset.eval_indices]
    return OriginalScene(dataset, cameras, frames, encoder.encode_images(frames), heldout,
                         encoder.encode_images(photos) if photos else None)


def evaluate_target(target: EvalTarget, caption: str, source_text: torch.Tensor, original: OriginalScene,
                    key: tuple, encoder: ClipEncoder, device: str, sheet_rows: int,
                    max_gaussians: int = MAX_FILE_GAUSSIANS) -> EvaluatedEdit:
    from splat2splat.media import evenly_spread
    from splat2splat.scene_loading import load_scene

    dataset = original.dataset
    scene = load_scene(target.edited, dataset, device=device, max_gaussians=max_gaussians)
    frames = render_frames(scene, original.cameras, f"edited scene {target.name}")
    heldout = render_frames(scene, dataset.eval_cameras, f"edited scene {target.name}, held-out views")
    del scene
    texts = torch.stack([source_text, encoder.encode_texts([caption])[0]])
    numbers = {
        "name": target.name, "run": str(target.run_folder) if target.run_folder else None,
        "edited_scene": str(target.edited), "original_scene": str(target.original), "data": str(target.data),
        "downscale": target.downscale, "prompt": target.prompt, "finished": target.finished,
        "target_caption": caption, "path": path_record(original.cameras),
        "clip": clip_scores(encoder, original.embeddings, encoder.encode_images(frames), texts),
        "heldout": heldout_scores(dataset, original, heldout, texts, encoder),
        "run_metrics": target.run_metrics,
    }
    path_picks = evenly_spread(len(frames), sheet_rows)
    result = EvaluatedEdit(target, numbers, key, [[original.frames[k], frames[k]] for k in path_picks],
                           [f"frame {k}" for k in path_picks])
    if heldout:
        picks = evenly_spread(len(heldout), sheet_rows)
        views = [dataset.eval_indices[k] for k in picks]
        result.heldout_rows = [[dataset.original(v), original.heldout_renders[k], heldout[k]] for k, v in zip(picks, views)]
        result.heldout_labels = [Path(dataset.image_names[v]).stem for v in views]
    return result


def heldout_scores(dataset: Dataset, original: OriginalScene, edited_renders: list[torch.Tensor],
                   texts: torch.Tensor, encoder: ClipEncoder) -> dict | None:
    """Held-out views: CLIP direction photo -> edited render, and PSNR/SSIM of both scenes' renders vs the photos."""
    from splat2splat.losses import image_metrics

    if not dataset.eval_indices:
        return None
    photos = [dataset.original(i) for i in dataset.eval_indices]
    edited_metrics = [image_metrics(render, photo) for render, photo in zip(edited_renders, photos)]
    original_metrics = [image_metrics(render, photo) for render, photo in zip(original.heldout_renders, photos)]
    similarity = direction_similarity(original.heldout_photo_embeddings, encoder.encode_images(edited_renders),
                                      texts[0], texts[1])

    def average(metrics: list[dict], name: str) -> float:
        return sum(m[name] for m in metrics) / len(metrics)

    return {"views": len(photos), "clip_direction_similarity": mean(similarity),
            "edited_psnr": average(edited_metrics, "psnr"), "edited_ssim": average(edited_metrics, "ssim"),
            "original_psnr": average(original_metrics, "psnr"), "original_ssim": average(original_metrics, "ssim")}
