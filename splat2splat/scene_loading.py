"""Scenes to continue from: a splat2splat checkpoint or a Gaussian-splatting PLY, with the dataset they belong to.

A scene FILE is an INRIA 3DGS ``.ply`` (the original code, nerfstudio's splatfacto, our own export), a
compressed ``.ply``, a ``.splat``, a ``.spz`` or a SOG (:mod:`splat2splat.gaussians.formats`). It holds no cameras
and lives in the capture's ORIGINAL world frame (what ``splat2splat export`` writes by default; for a
nerfstudio dataset with an ``applied_transform``, the COLMAP frame before it), so it needs the dataset whose
frame transform and normalisation map it into the frame the cameras of the dataset live in. Checkpoints are
read by :mod:`splat2splat.checkpoint`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal

import torch

from splat2splat.checkpoint import CHECKPOINT_SUFFIXES, backend_from_checkpoint, read_checkpoint
from splat2splat.data.dataset import Dataset, SceneNormalization
from splat2splat.errors import InputError
from splat2splat.gaussians.backend import GaussianBackend, GaussianConfig
from splat2splat.gaussians.formats import SCENE_FILE_SUFFIXES, load_splats
from splat2splat.gaussians.formats.common import MAX_FILE_GAUSSIANS
from splat2splat.gaussians.model import sh_degree_of
from splat2splat.scene import SceneBackend

SceneFormat = Literal["checkpoint", "splats"]


def scene_format(path: Path) -> SceneFormat:
    """Whether ``path`` names a checkpoint or a Gaussian-scene file (by suffix); anything else is an input error."""
    path = Path(path)
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    if path.suffix.lower() in SCENE_FILE_SUFFIXES:
        return "splats"
    raise InputError(path, f"unknown scene format '{path.suffix}': use a splat2splat checkpoint "
                           f"({', '.join(CHECKPOINT_SUFFIXES)}) or a Gaussian-splatting file "
                           f"({', '.join(SCENE_FILE_SUFFIXES)})")


def imported_scene_config(config: GaussianConfig, file_sh_degree: int) -> GaussianConfig:
    """The config of a scene imported from a PLY of ``file_sh_degree``.

    An imported scene is already trained, so its SH schedule must not restart at degree 0 (it would render
    view-dependent colour as flat DC colour until ``sh_degree_interval * degree`` steps later).
    """
    return replace(config, sh_degree=file_sh_degree, initial_sh_degree=file_sh_degree)


def import_ply(path: Path, dataset: Dataset, gaussian_config: GaussianConfig | None = None,
               device: str | None = None, max_gaussians: int = MAX_FILE_GAUSSIANS) -> GaussianBackend:
    """A Gaussian backend (new optimisers) holding the Gaussians of a scene file (any format of
    :mod:`splat2splat.gaussians.formats`, in the original frame), taken to be converged: its step is where every
    schedule has ended (final learning rates, no densification), as for a scene trained here to the end; a
    scene file keeps no step of its own. ``max_gaussians``: the cap of a compressed file's claimed count."""
    splats = load_splats(path, dataset.normalization, dataset.frame_transform,  # InputError naming the file
                         max_gaussians=max_gaussians)
    config = imported_scene_config(gaussian_config or GaussianConfig(), sh_degree_of(splats))
    if device:
        config = replace(config, device=device)
    backend = GaussianBackend(splats, config, dataset.background)
    backend.mark_converged()
    return backend


def load_scene(path: Path, dataset: Dataset, gaussian_config: GaussianConfig | None = None,
               device: str | None = None, max_gaussians: int = MAX_FILE_GAUSSIANS) -> SceneBackend:
    """A backend from a checkpoint (``.pt`` / ``.ckpt``) or a Gaussian-splatting ``.ply``.

    ``dataset`` maps a PLY into the normalised frame; ``gaussian_config`` configures the training of an
    imported PLY (a checkpoint keeps its own); ``device`` overrides where the scene lives; ``max_gaussians``
    caps a compressed scene file's claimed count.
    """
    path = Path(path)
    if scene_format(path) == "splats":
        return import_ply(path, dataset, gaussian_config, device, max_gaussians)
    return backend_from_checkpoint(path, read_checkpoint(path), device)


def dataset_path_for(scene: Path, data: Path | None, checkpoint: dict | None) -> Path:
    """``data`` when given, else the dataset a checkpoint names; a PLY has no default."""
    if data is not None:
        return Path(data)
    if checkpoint is None:
        raise InputError(scene, f"a {scene.suffix} scene holds no cameras: pass --data with the dataset it belongs to")
    if "data" not in checkpoint:
        raise InputError(scene, "checkpoint does not name its dataset: pass --data")
    recorded = Path(checkpoint["data"])
    if not recorded.exists():
        raise InputError(scene, f"the checkpoint's dataset {recorded} does not exist (it was recorded relative to "
                                f"where training ran, or moved): pass --data")
    return recorded


def downscale_for(checkpoint: dict | None, downscale: int | None) -> int:
    """``downscale`` when given, else the checkpoint's training downscale (1 for a PLY)."""
    if downscale is not None:
        return downscale
    return int(checkpoint.get("downscale", 1)) if checkpoint is not None else 1


def read_scene_checkpoint(scene: Path) -> dict | None:
    """The checkpoint ``scene`` names (read and checked), or None for a PLY (which must exist)."""
    scene = Path(scene)
    if scene_format(scene) == "checkpoint":
        return read_checkpoint(scene)
    if not scene.is_file():
        raise InputError(scene, "scene file does not exist")
    return None


def load_scene_and_dataset(scene: Path, data: Path | None = None, downscale: int | None = None,
                           device: str | None = None,
                           max_gaussians: int = MAX_FILE_GAUSSIANS) -> tuple[SceneBackend, Dataset]:
    """The scene and its dataset, reading a checkpoint only once (data and downscale default to its own)."""
    from splat2splat.data.readers import load_dataset

    checkpoint = read_scene_checkpoint(scene)
    dataset = load_dataset(dataset_path_for(scene, data, checkpoint), downscale=downscale_for(checkpoint, downscale))
    if checkpoint is None:
        return import_ply(scene, dataset, device=device, max_gaussians=max_gaussians), dataset
    return backend_from_checkpoint(scene, checkpoint, device), dataset


def dataset_normalization(data: Path) -> SceneNormalization:
    """The normalisation :func:`~splat2splat.data.readers.load_dataset` gives ``data``, without reading images.

    It depends on the camera centres (and sparse points) only, so exports need no image loading.
    """
    return dataset_frames(data)[0]


def dataset_frames(data: Path) -> tuple[SceneNormalization, torch.Tensor | None]:
    """The normalisation and the frame transform (``Dataset.frame_transform``) of ``data``, without images."""
    from splat2splat.data.readers import read_raw_scene

    raw = read_raw_scene(data)
    return SceneNormalization.fit(raw.cameras.centers(), raw.points), raw.frame_transform
