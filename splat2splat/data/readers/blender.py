"""NeRF-synthetic ("Blender") scenes: ``transforms_{train,val,test}.json`` with RGBA images.

Each file has ``camera_angle_x`` (horizontal field of view) and ``frames`` with an OpenGL camera-to-world
``transform_matrix`` and a ``file_path`` usually written without extension (``./train/r_0`` -> ``.png``).
The principal point is the image centre; the image size is read from the header of each split's first
image. Alpha is composited on the chosen background by :func:`build_dataset`.

Split: the ``train`` views train; the ``test`` views evaluate (the convention of the NeRF papers). The
``val`` views are used for evaluation only when there is no test split: they would otherwise double the
evaluation images held in memory without telling anything the test views do not.

Image paths must lie inside the dataset folder unless ``allow_outside_paths``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from splat2splat.data.cameras import Cameras, opengl_to_opencv
from splat2splat.data.dataset import RawScene
from splat2splat.data.readers.common import finite_number, image_size, inside_dataset, rigid_matrix
from splat2splat.errors import InputError
from splat2splat.io import is_file, read_json


def read_blender(root: Path, allow_outside_paths: bool = False) -> RawScene:
    """Read ``root/transforms_train.json`` and, when present, the val / test files beside it."""
    train = _read_split(root / "transforms_train.json", allow_outside_paths, required=True)
    if train is None:
        raise InputError(root / "transforms_train.json", "'frames' is empty")
    test = _read_split(root / "transforms_test.json", allow_outside_paths)
    held_out = test if test is not None else _read_split(root / "transforms_val.json", allow_outside_paths)
    splits = [train] if held_out is None else [train, held_out]
    cameras = Cameras.cat([cameras for cameras, _ in splits])
    image_paths = [path for _, paths in splits for path in paths]
    n_train = len(train[1])
    return RawScene(
        cameras=cameras,
        image_paths=image_paths,
        split={"train": list(range(n_train)), "eval": list(range(n_train, len(image_paths)))},
        source=root / "transforms_train.json",
    )


def _read_split(json_path: Path, allow_outside_paths: bool, required: bool = False) -> tuple[Cameras, list[Path]] | None:
    """Cameras and image paths of one split file; None when it has no frames or is optional and absent."""
    if not required and not json_path.is_file():
        return None
    meta = read_json(json_path)
    if not isinstance(meta, dict):
        raise InputError(json_path, "must hold a JSON object with 'camera_angle_x' and 'frames'")
    frames = meta.get("frames")
    if not isinstance(frames, list):
        raise InputError(json_path, "has no 'frames' list")
    if not frames:
        return None
    fov_x = finite_number(meta.get("camera_angle_x"), json_path, "'camera_angle_x'", positive=True)
    if fov_x >= math.pi:
        raise InputError(json_path, f"'camera_angle_x' must be below pi radians, got {fov_x}")
    poses, image_paths = [], []
    for k, frame in enumerate(frames):
        if not isinstance(frame, dict) or not isinstance(frame.get("file_path"), str) or "transform_matrix" not in frame:
            raise InputError(json_path, f"frame {k} needs a 'file_path' string and a 'transform_matrix'")
        poses.append(rigid_matrix(frame["transform_matrix"], json_path, f"frame {k}: 'transform_matrix'"))
        image_path = _image_path(json_path.parent, frame["file_path"])
        image_paths.append(inside_dataset(image_path, json_path.parent, json_path, f"frame {k}: image path",
                                          allow_outside_paths))
    width, height = image_size(image_paths[0])
    focal = 0.5 * width / math.tan(0.5 * fov_x)
    n = len(frames)
    c2w = opengl_to_opencv(torch.from_numpy(np.stack(poses)).float())
    full = lambda value: torch.full((n,), float(value))  # noqa: E731
    cameras = Cameras(c2w, full(focal), full(focal), full(width / 2), full(height / 2), full(width).long(), full(height).long())
    return cameras, image_paths


def _image_path(root: Path, file_path: str) -> Path:
    """The file as written, else with ``.png`` appended (the NeRF-synthetic files omit the extension)."""
    path = root / file_path
    return path if is_file(path) or not path.name else path.with_name(path.name + ".png")
