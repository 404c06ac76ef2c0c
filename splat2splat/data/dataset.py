"""Posed images for training and editing.

A :class:`Dataset` keeps two sets of images side by side:

* the ORIGINAL images, read once from disk and never modified (the editor conditions on them), and
* the CURRENT training images, which start as copies of the originals and are replaced one by one by
  the Iterative Dataset Update.

Cameras live in a normalised world frame (centred, scaled to unit radius) that keeps optimisation
hyper-parameters scene independent; :class:`SceneNormalization` maps results back to the original frame.
"""

from __future__ import annotations

import math
import os
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from splat2splat.data.cameras import Cameras
from splat2splat.data.distortion import LensDistortion, undistort_view
from splat2splat.errors import InputError
from splat2splat.imaging import resize_image
from splat2splat.io import load_image, turned_sideways_by_exif

# Smallest image side a --downscale may leave: below it a view holds too little to train on (or to edit).
MAX_SCENE_RADIUS = 1e30  # float32 scenes scaled by its inverse and back stay finite
MIN_IMAGE_SIDE = 8


@dataclass(frozen=True)
class SceneNormalization:
    """``normalised = (original - center) * scale``: translation and uniform scale only.

    No rotation, so spherical-harmonic colours are the same in both frames and exports need no SH rotation.
    """

    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1.0

    def to_normalized(self, points: torch.Tensor) -> torch.Tensor:
        return (points - torch.tensor(self.center).to(points)) * self.scale

    def to_original(self, points: torch.Tensor) -> torch.Tensor:
        return points / self.scale + torch.tensor(self.center).to(points)

    def cameras_to_normalized(self, cameras: Cameras) -> Cameras:
        shift = torch.eye(4)
        shift[:3, 3] = -torch.tensor(self.center)
        return cameras.transformed(shift, self.scale)

    @staticmethod
    def fit(camera_centers: torch.Tensor, points: torch.Tensor | None = None) -> "SceneNormalization":
        """Centre on the cameras and scale so the farthest camera is at distance 1 (nerfstudio's 'poses' scaling)."""
        camera_centers = camera_centers.double()  # float32 squares of ~1e20 and beyond overflow to infinity
        center = camera_centers.mean(0)
        radius = (camera_centers - center).norm(dim=-1).max().item()
        if radius < 1e-8 and points is not None and len(points):
            radius = (points.double() - center).norm(dim=-1).max().item()
        if not math.isfinite(radius) or radius > MAX_SCENE_RADIUS:
            raise ValueError(f"the camera positions lie up to {radius:g} units apart: more than the "
                             f"{MAX_SCENE_RADIUS:g} a float32 scene can hold (damaged poses?)")
        return SceneNormalization(tuple(float(c) for c in center), 1.0 / max(radius, 1e-8))


@dataclass
class RawScene:
    """What a format reader returns: cameras in the ORIGINAL world frame (OpenCV axes) and file paths.

    Readers only parse metadata; :func:`build_dataset` loads and checks the images.
    """

    cameras: Cameras
    image_paths: list[Path]
    mask_paths: list[Path | None] | None = None
    points: torch.Tensor | None = None  # [P, 3] sparse points (COLMAP / nerfstudio ply), original frame
    point_colors: torch.Tensor | None = None  # [P, 3] in [0, 1]
    split: dict[str, list[int]] | None = None  # explicit train / eval indices (Blender); else every Nth
    source: Path = Path(".")
    # Resolution of ``image_paths`` relative to the camera intrinsics (readers that pick `images_N`
    # folders set this to 1/N so intrinsics get scaled to match the files).
    intrinsics_scale: float = 1.0
    # Per-view lens distortion of the image FILES (None = already pinhole); build_dataset resamples
    # those images to the pinhole ``cameras`` right after loading them.
    distortion: list[LensDistortion | None] | None = None
    # [4, 4] map from the capture's original world frame into the frame of ``cameras`` (nerfstudio's
    # ``applied_transform``); None = identity. Kept so results can be exported back to that frame.
    frame_transform: torch.Tensor | None = None


@dataclass
class Dataset:
    cameras: Cameras  # [N] all views, normalised world frame
    image_names: list[str]
    originals: InitVar[Sequence[torch.Tensor]]  # per view [H, W, 3] float32 in [0, 1]; read through original()
    train_indices: list[int]
    eval_indices: list[int]
    normalization: SceneNormalization = field(default_factory=SceneNormalization)
    masks: tuple[torch.Tensor | None, ...] | None = None  # per view [H, W] bool (True = supervise)
    points: torch.Tensor | None = None  # [P, 3] normalised frame
    point_colors: torch.Tensor | None = None
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    source: Path = Path(".")
    frame_transform: torch.Tensor | None = None  # see RawScene.frame_transform (original frame, not normalised)
    # Some image had an alpha channel, composited over ``background`` when loaded: training must then render
    # over that same background (a random one would disagree with the stored pixels).
    alpha_composited: bool = False
    current: list[torch.Tensor] = field(init=False)  # the training images, replaced by edits
    edit_counts: list[int] = field(init=False)  # how often each view has been replaced

    def __post_init__(self, originals: Sequence[torch.Tensor]) -> None:
        # Private copies: the originals are reachable only through original(), which hands out copies, so
        # nothing outside this class can change them (the editor conditions on them for the whole run).
        self._originals = tuple(img.detach().clone() for img in originals)
        self.current = [img.clone() for img in self._originals]
        self.edit_counts = [0] * len(self._originals)

    def __len__(self) -> int:
        return len(self._originals)

    def original(self, index: int) -> torch.Tensor:
        """A copy of the unedited image of view ``index`` ([H, W, 3]); writing to it cannot change the original."""
        return self._originals[index].clone()

    def current_image(self, index: int) -> torch.Tensor:
        """The CURRENT training image of view ``index`` (the original until an edit replaces it)."""
        return self.current[index]

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of view ``index``'s images."""
        return tuple(self._originals[index].shape[:2])

    def replace_image(self, index: int, image: torch.Tensor) -> None:
        """Replace the CURRENT training image of view ``index`` (the originals stay as they are)."""
        expected = self._originals[index].shape
        if tuple(image.shape) != tuple(expected):
            raise ValueError(f"edited image has shape {tuple(image.shape)}, view {index} needs {tuple(expected)}")
        if not bool(torch.isfinite(image).all()):  # would be clamped into a black image and trained on silently
            raise InputError(None, f"the edit of view {self.image_names[index]} has NaN or infinite pixels: the "
                                   f"editor diverged (a guidance scale far too large, e.g. "
                                   f"--idu.editor.guidance-scale, or a broken model); nothing of it was kept")
        self.current[index] = image.detach().to(torch.float32).cpu().clamp(0.0, 1.0).clone()
        self.edit_counts[index] += 1

    def reset_edits(self) -> None:
        self.current = [img.clone() for img in self._originals]
        self.edit_counts = [0] * len(self)

    @property
    def train_cameras(self) -> Cameras:
        return self.cameras[self.train_indices]

    @property
    def eval_cameras(self) -> Cameras:
        return self.cameras[self.eval_indices]

    def edit_state(self) -> dict:
        """The mutable part (current images, edit counts) for checkpoints; originals are re-read from disk."""
        return {"current": [img.clone() for img in self.current], "edit_counts": list(self.edit_counts)}

    def load_edit_state(self, state: dict) -> None:
        """Restore :meth:`edit_state`; ValueError when it belongs to another dataset (count or image sizes)."""
        current, counts = state.get("current"), state.get("edit_counts")
        if not isinstance(current, list) or not isinstance(counts, list) or len(current) != len(counts):
            raise ValueError("the edited images are damaged (need equally long lists of images and edit counts)")
        if len(current) != len(self):
            raise ValueError(f"it holds {len(current)} edited images, the dataset has {len(self)} views")
        for index, image in enumerate(current):
            if not isinstance(image, torch.Tensor) or tuple(image.shape) != tuple(self._originals[index].shape):
                shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
                raise ValueError(f"edited image {index} is {shape}, the dataset's is "
                                 f"{tuple(self._originals[index].shape)} (another downscale or dataset)")
        self.current = [img.clone() for img in current]
        self.edit_counts = list(state["edit_counts"])


def distinct_names(paths: list[Path]) -> list[str]:
    """A name per image whose stems differ (outputs are written as ``<stem>.png``): the file name; where files
    share a stem, their path below the common folder joined by ``_`` (``left/a.png`` -> ``left_a.png``), and the
    suffix too where that is not enough (``a.png``, ``a.jpg`` -> ``a_png.png``, ``a_jpg.jpg``)."""
    paths = [Path(p) for p in paths]
    root = Path(os.path.commonpath([str(p.parent) for p in paths])) if paths else Path()
    relative = [p.relative_to(root) if p.is_relative_to(root) else p for p in paths]
    candidates = [
        lambda p, r: p.name,
        lambda p, r: "_".join(r.with_suffix("").parts) + p.suffix,
        lambda p, r: "_".join(r.with_suffix("").parts) + f"_{p.suffix.lstrip('.')}{p.suffix}",
    ]
    names = [p.name for p in paths]
    for candidate in candidates:
        stems = [Path(name).stem for name in names]
        shared = {stem for stem in stems if stems.count(stem) > 1}
        if not shared:
            break
        names = [candidate(p, r) if stem in shared else name for p, r, name, stem in zip(paths, relative, names, stems)]
    return names


def split_every(n_views: int, eval_every: int) -> tuple[list[int], list[int]]:
    """Every ``eval_every``-th view is held out for evaluation (the 3DGS / Mip-NeRF 360 convention)."""
    if eval_every <= 0 or n_views < 2:
        return list(range(n_views)), []
    eval_indices = [i for i in range(n_views) if i % eval_every == 0]
    return [i for i in range(n_views) if i % eval_every != 0], eval_indices


def build_dataset(
    raw: RawScene,
    downscale: int = 1,
    eval_every: int = 8,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    normalize: bool = True,
) -> Dataset:
    """Load the images a reader found, check them against the cameras and normalise the scene."""
    n = len(raw.cameras)
    if len(raw.image_paths) != n:
        raise InputError(raw.source, f"{len(raw.image_paths)} images for {n} cameras")
    if n == 0:
        raise InputError(raw.source, "no images found")
    # Intrinsics always describe the full-resolution image; the files may already be shrunk (images_N).
    cameras = raw.cameras.scaled(1.0 / downscale) if downscale != 1 else raw.cameras
    if downscale > 1:
        _check_downscaled_size(raw, cameras, downscale)
    bg = torch.tensor(background, dtype=torch.float32)
    images, masks, alpha_composited = [], [], False
    for i, path in enumerate(raw.image_paths):
        height, width = cameras.image_size(i)
        image, had_alpha = _load_view_image(path, height, width, bg, raw.cameras.image_size(i), downscale,
                                            raw.intrinsics_scale)
        alpha_composited = alpha_composited or had_alpha
        mask_path = raw.mask_paths[i] if raw.mask_paths else None
        mask = None if mask_path is None else _load_mask(mask_path, height, width, raw.cameras.image_size(i))
        lens = raw.distortion[i] if raw.distortion else None
        if lens is not None:
            intrinsics = (float(cameras.fx[i]), float(cameras.fy[i]), float(cameras.cx[i]), float(cameras.cy[i]))
            image, mask = undistort_view(image, mask, intrinsics, lens, bg)
        images.append(image)
        masks.append(mask)
    try:
        normalization = SceneNormalization.fit(raw.cameras.centers(), raw.points) if normalize else SceneNormalization()
    except ValueError as problem:
        raise InputError(raw.source, str(problem)) from None
    if raw.split is not None:
        train_indices, eval_indices = list(raw.split["train"]), list(raw.split.get("eval", []))
    else:
        train_indices, eval_indices = split_every(n, eval_every)
    points = None if raw.points is None else normalization.to_normalized(raw.points.float())
    return Dataset(
        cameras=normalization.cameras_to_normalized(cameras),
        image_names=distinct_names(raw.image_paths),
        originals=tuple(images),
        train_indices=train_indices,
        eval_indices=eval_indices,
        normalization=normalization,
        masks=tuple(masks) if any(m is not None for m in masks) else None,
        points=points,
        point_colors=raw.point_colors,
        background=tuple(background),
        source=raw.source,
        frame_transform=raw.frame_transform,
        alpha_composited=alpha_composited,
    )


def _check_downscaled_size(raw: RawScene, cameras: Cameras, downscale: int) -> None:
    """A ``downscale`` that leaves a view smaller than :data:`MIN_IMAGE_SIDE` pixels is a mistake, not a run."""
    sides = torch.minimum(cameras.width, cameras.height)
    i = int(sides.argmin())
    if int(sides[i]) >= MIN_IMAGE_SIDE:
        return
    full_side = min(int(raw.cameras.width[i]), int(raw.cameras.height[i]))
    largest = max(1, int(full_side / (MIN_IMAGE_SIDE - 0.5)))  # round(full_side / N) >= MIN_IMAGE_SIDE
    raise InputError(raw.source, f"downscale {downscale} would shrink view {i} ({raw.image_paths[i].name}, "
                                 f"{int(raw.cameras.width[i])}x{int(raw.cameras.height[i])}) to "
                                 f"{int(cameras.width[i])}x{int(cameras.height[i])} pixels; views need at least "
                                 f"{MIN_IMAGE_SIDE} pixels a side: use a downscale of at most {largest}")


def _load_view_image(path: Path, height: int, width: int, background: torch.Tensor,
                     full_size: tuple[int, int], downscale: int, intrinsics_scale: float) -> tuple[torch.Tensor, bool]:
    """Read one image, composite alpha over ``background`` and bring it to the camera's (height, width);
    also says whether the file had an alpha channel."""
    array = load_image(path, lambda file_hw: _check_file_size(path, file_hw, full_size, intrinsics_scale))
    file_hw = array.shape[:2]
    image = torch.from_numpy(array)
    had_alpha = image.shape[-1] == 4
    if had_alpha:
        image = image[..., :3] * image[..., 3:] + background * (1.0 - image[..., 3:])
    if file_hw != (height, width):
        image = resize_image(image, (height, width), filter="area").clamp(0, 1).contiguous()
    return image.contiguous(), had_alpha


def _check_file_size(path: Path, file_hw: tuple[int, int], full_size: tuple[int, int], intrinsics_scale: float) -> None:
    """The image must be exactly the size its camera says (EXIF orientation applied).

    A pre-shrunk copy (``images_N``, ``intrinsics_scale`` 1/N) may have either rounding of full size / N:
    the tools that make them differ (ffmpeg truncates, ImageMagick rounds).
    """
    # (the 1e-9 keeps float error in 1/N, e.g. 30 * (1/3) = 9.999..., from allowing a second size)
    allowed = [{math.floor(side * intrinsics_scale + 1e-9), math.ceil(side * intrinsics_scale - 1e-9)}
               for side in full_size]
    if file_hw[0] in allowed[0] and file_hw[1] in allowed[1]:
        return
    camera = f"{full_size[1]}x{full_size[0]}"
    if intrinsics_scale != 1.0:
        shrunk = "x".join(f"{min(s)}" if len(s) == 1 else f"{min(s)}-{max(s)}" for s in reversed(allowed))
        camera += f", so this shrunk copy should be {shrunk}"
    hint = ""
    if file_hw[1] in allowed[0] and file_hw[0] in allowed[1] and turned_sideways_by_exif(path):
        hint = "; its EXIF orientation turns it by 90 degrees, the camera seems to describe the stored pixels"
    raise InputError(path, f"image is {file_hw[1]}x{file_hw[0]} but its camera says {camera}{hint}")


def _check_mask_size(path: Path, file_hw: tuple[int, int], full_size: tuple[int, int]) -> None:
    if file_hw[0] > full_size[0] + 1 or file_hw[1] > full_size[1] + 1:  # (+1: either rounding of a shrunk copy)
        raise InputError(path, f"mask is {file_hw[1]}x{file_hw[0]}, larger than its camera's full-resolution "
                               f"{full_size[1]}x{full_size[0]} image")


def _load_mask(path: Path, height: int, width: int, full_size: tuple[int, int]) -> torch.Tensor:
    """A view's mask at (height, width); the file may be at any size up to its camera's full resolution (a
    larger one is refused from its header, before its pixels are decoded)."""
    array = load_image(path, lambda file_hw: _check_mask_size(path, file_hw, full_size))
    mask = torch.from_numpy(array[..., 0] > 0.5)
    if mask.shape != (height, width):
        resized = Image.fromarray(mask.numpy()).resize((width, height), Image.NEAREST)
        mask = torch.from_numpy(np.asarray(resized))
    return mask



