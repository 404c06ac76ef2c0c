"""Scenes to continue from: splat2splat checkpoints and Gaussian-splatting PLY files.

A checkpoint (``.pt`` / ``.ckpt``, written with :func:`splat2splat.io.save_torch` by the training and edit
loops) is a dict with at least::

    {"backend": "gaussian" | "nerf",      # which SceneBackend wrote it
     "backend_state": backend.state_dict(),
     "data": "path/to/dataset",           # the dataset it was trained on (default for --data)
     "downscale": 2}                      # the image downscale it was trained at (default for --downscale)

A ``.ply`` is an INRIA 3DGS file (the original code, nerfstudio's splatfacto, our own export). It holds no
cameras and lives in the ORIGINAL world frame, so it needs the dataset whose normalisation maps it into
the frame the cameras of the dataset live in.
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Literal

import torch

from splat2splat.data.dataset import Dataset, SceneNormalization
from splat2splat.errors import InputError
from splat2splat.gaussians.backend import GaussianBackend, GaussianConfig
from splat2splat.gaussians.model import SPLAT_KEYS, sh_degree_of
from splat2splat.io import load_torch
from splat2splat.scene import SceneBackend

CHECKPOINT_SUFFIXES = (".pt", ".ckpt")
PLY_SUFFIX = ".ply"
BACKEND_KINDS = ("gaussian", "nerf")
# What each backend's from_state_dict reads first; checked up front for a clear message.
REQUIRED_STATE_KEYS = {
    "gaussian": ("config", "splats", "optimizers", "step", "background"),
    "nerf": ("config", "field", "optimizer", "occupancy", "train_indices", "step", "background"),
}
# The config field that lets an imported scene start at its file's SH degree (see imported_scene_config).
INITIAL_SH_DEGREE_FIELD = "initial_sh_degree"

# Shapes of the Gaussian parameters after the leading count N (None: any size; shN holds K-1 SH bases).
SPLAT_TRAILING_SHAPES = {"means": (3,), "scales": (3,), "quats": (4,), "opacities": (), "sh0": (1, 3), "shN": (None, 3)}

SceneFormat = Literal["checkpoint", "ply"]


def scene_format(path: Path) -> SceneFormat:
    """Whether ``path`` names a checkpoint or a PLY (by suffix); anything else is an input error."""
    path = Path(path)
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    if path.suffix.lower() == PLY_SUFFIX:
        return "ply"
    raise InputError(path, f"unknown scene format '{path.suffix}': use a splat2splat checkpoint "
                           f"({', '.join(CHECKPOINT_SUFFIXES)}) or a Gaussian-splatting {PLY_SUFFIX}")


# ------------------------------------------------------------------------------------------- checkpoints


def read_checkpoint(path: Path) -> dict:
    """Load a checkpoint and check its top-level layout; every problem is an InputError naming ``path``."""
    path = Path(path)
    checkpoint = load_torch(path)  # raises InputError for a missing or unreadable file
    if not isinstance(checkpoint, dict):
        raise InputError(path, f"not a splat2splat checkpoint (holds a {type(checkpoint).__name__}, not a dict)")
    kind = checkpoint.get("backend")
    if kind not in BACKEND_KINDS:
        raise InputError(path, f"not a splat2splat checkpoint: 'backend' must be one of {', '.join(BACKEND_KINDS)}, "
                               f"found {_describe(kind)}")
    state = checkpoint.get("backend_state")
    if not isinstance(state, dict):
        raise InputError(path, f"checkpoint has no 'backend_state' dict (found {_describe(state)})")
    missing = [key for key in REQUIRED_STATE_KEYS[kind] if key not in state]
    if missing:
        raise InputError(path, f"the {kind} backend state lacks {', '.join(missing)}; the checkpoint is damaged "
                               f"or from another program")
    if kind == "gaussian":
        check_gaussian_splats(path, state["splats"])
    if "data" in checkpoint and not isinstance(checkpoint["data"], (str, Path)):
        raise InputError(path, f"checkpoint 'data' must be a dataset path, found {_describe(checkpoint['data'])}")
    downscale = checkpoint.get("downscale", 1)
    if isinstance(downscale, bool) or not isinstance(downscale, int) or downscale < 1:
        raise InputError(path, f"checkpoint 'downscale' must be a whole number >= 1, found {_describe(downscale)}")
    return checkpoint


def check_gaussian_splats(path: Path, splats: object) -> None:
    """The Gaussians of a checkpoint must be complete: every parameter, one row per Gaussian, right shapes."""
    if not isinstance(splats, dict):
        raise InputError(path, f"checkpoint 'splats' must be a dict of tensors, found {_describe(splats)}")
    missing = [key for key in SPLAT_KEYS if not isinstance(splats.get(key), torch.Tensor)]
    if missing:
        raise InputError(path, f"checkpoint's Gaussians lack the tensors {', '.join(missing)}")
    count = len(splats["means"])
    for key, trailing in SPLAT_TRAILING_SHAPES.items():
        shape = tuple(splats[key].shape)
        if len(shape) != len(trailing) + 1 or any(want is not None and got != want
                                                  for got, want in zip(shape[1:], trailing)):
            expected = ["N", *("K" if t is None else t for t in trailing)]
            raise InputError(path, f"checkpoint's Gaussian '{key}' has shape {list(shape)}, expected {expected}")
        if shape[0] != count:
            raise InputError(path, f"checkpoint's Gaussian parameters disagree: '{key}' has {shape[0]} rows, "
                                   f"'means' {count}")


def backend_from_checkpoint(path: Path, checkpoint: dict, device: str | None = None) -> SceneBackend:
    """The backend a :func:`read_checkpoint` result describes (``device``: override the saved device)."""
    kind, state = checkpoint["backend"], checkpoint["backend_state"]
    try:
        if kind == "gaussian":
            return GaussianBackend.from_state_dict(state, {"device": device} if device else None)
        from splat2splat.nerf.backend import NerfBackend

        return NerfBackend.from_state_dict(state, device)
    except InputError:
        raise  # e.g. a CUDA device asked for on a machine without one
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as error:
        cause = " ".join(str(error).split())[:300]
        raise InputError(path, f"checkpoint does not hold a loadable {kind} scene "
                               f"({type(error).__name__}: {cause})") from None


# ---------------------------------------------------------------------------------------------- PLY files


def imported_scene_config(config: GaussianConfig, file_sh_degree: int) -> GaussianConfig:
    """The config of a scene imported from a PLY of ``file_sh_degree``.

    An imported scene is already trained, so its SH schedule must not restart at degree 0 (it would render
    view-dependent colour as flat DC colour until ``sh_degree_interval * degree`` steps later). The backend
    computes ``active_sh_degree`` from ``step`` alone; when ``GaussianConfig`` has an ``initial_sh_degree``
    field (the degree active at step 0), it is set to the file's degree here.
    """
    config = replace(config, sh_degree=file_sh_degree)
    if INITIAL_SH_DEGREE_FIELD in {f.name for f in fields(config)}:
        config = replace(config, **{INITIAL_SH_DEGREE_FIELD: file_sh_degree})
    return config


def import_ply(path: Path, dataset: Dataset, gaussian_config: GaussianConfig | None = None,
               device: str | None = None) -> GaussianBackend:
    """A Gaussian backend (new optimisers) holding the Gaussians of an INRIA PLY, taken to be converged: its
    step is where every schedule has ended (final learning rates, no densification), as for a scene trained
    here to the end; a PLY keeps no step of its own."""
    from splat2splat.gaussians.ply import load_ply

    splats = load_ply(path, dataset.normalization)  # raises InputError naming the file
    config = imported_scene_config(gaussian_config or GaussianConfig(), sh_degree_of(splats))
    if device:
        config = replace(config, device=device)
    backend = GaussianBackend(splats, config, dataset.background)
    backend.mark_converged()
    return backend


# ------------------------------------------------------------------------------------------------ scenes


def load_scene(path: Path, dataset: Dataset, gaussian_config: GaussianConfig | None = None,
               device: str | None = None) -> SceneBackend:
    """A backend from a checkpoint (``.pt`` / ``.ckpt``) or a Gaussian-splatting ``.ply``.

    ``dataset`` maps a PLY into the normalised frame; ``gaussian_config`` configures the training of an
    imported PLY (a checkpoint keeps its own); ``device`` overrides where the scene lives.
    """
    path = Path(path)
    if scene_format(path) == "ply":
        return import_ply(path, dataset, gaussian_config, device)
    return backend_from_checkpoint(path, read_checkpoint(path), device)


def dataset_path_for(scene: Path, data: Path | None, checkpoint: dict | None) -> Path:
    """``data`` when given, else the dataset a checkpoint names; a PLY has no default."""
    if data is not None:
        return Path(data)
    if checkpoint is None:
        raise InputError(scene, "a .ply scene holds no cameras: pass --data with the dataset it belongs to")
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


def load_scene_and_dataset(scene: Path, data: Path | None = None, downscale: int | None = None,
                           device: str | None = None) -> tuple[SceneBackend, Dataset]:
    """The scene and its dataset, reading a checkpoint only once (data and downscale default to its own)."""
    from splat2splat.data.readers import load_dataset

    scene = Path(scene)
    checkpoint = read_checkpoint(scene) if scene_format(scene) == "checkpoint" else None
    if checkpoint is None and not scene.is_file():
        raise InputError(scene, "scene file does not exist")
    dataset = load_dataset(dataset_path_for(scene, data, checkpoint), downscale=downscale_for(checkpoint, downscale))
    if checkpoint is None:
        return import_ply(scene, dataset, device=device), dataset
    return backend_from_checkpoint(scene, checkpoint, device), dataset


def dataset_normalization(data: Path) -> SceneNormalization:
    """The normalisation :func:`~splat2splat.data.readers.load_dataset` gives ``data``, without reading images.

    It depends on the camera centres (and sparse points) only, so exports need no image loading.
    """
    from splat2splat.data.readers import read_raw_scene

    raw = read_raw_scene(data)
    return SceneNormalization.fit(raw.cameras.centers(), raw.points)


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"a {type(value).__name__}"
