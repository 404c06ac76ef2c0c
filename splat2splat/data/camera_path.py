"""nerfstudio camera paths (what its viewer exports) as :class:`Cameras`, so a scene renders along a drawn path.

The file is a JSON object with ``render_width``, ``render_height``, an optional ``camera_type`` (perspective
only here) and ``camera_path``: a list of cameras, each with ``camera_to_world`` (16 numbers, a row-major 4x4
pose in nerfstudio's OpenGL convention) and ``fov`` (vertical field of view in degrees, as three.js). Poses are
in the dataset's frame (its transforms.json); nerfstudio's viewer shows its own normalised frame, which its
``dataparser_transforms.json`` (``transform`` 3x4, ``scale``) maps back.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from splat2splat.data.cameras import Cameras, opengl_to_opencv
from splat2splat.errors import InputError
from splat2splat.io import read_json

MAX_SIDE = 16384  # render sizes beyond this are refused before anything is allocated


def read_camera_path(path: Path, dataparser_transforms: Path | None = None) -> tuple[Cameras, float | None]:
    """The cameras of a nerfstudio camera-path file in the dataset's frame (OpenCV convention), and its fps."""
    path = Path(path)
    meta = read_json(path)
    if not isinstance(meta, dict) or not isinstance(meta.get("camera_path"), list) or not meta["camera_path"]:
        raise InputError(path, "not a nerfstudio camera path: needs a non-empty 'camera_path' list")
    if meta.get("camera_type", "perspective") != "perspective":
        raise InputError(path, f"camera_type {meta['camera_type']!r}: only perspective camera paths are rendered")
    width, height = (_side(path, meta, key) for key in ("render_width", "render_height"))
    poses, focals = [], []
    for k, camera in enumerate(meta["camera_path"]):
        where = f"camera_path[{k}]"
        if not isinstance(camera, dict):
            raise InputError(path, f"{where} must be an object with camera_to_world and fov")
        matrix = _numbers(path, camera.get("camera_to_world"), 16, f"{where}.camera_to_world")
        fov = _numbers(path, [camera.get("fov")], 1, f"{where}.fov")[0]
        if not 0 < fov < 180:
            raise InputError(path, f"{where}.fov must be between 0 and 180 degrees, got {fov}")
        pose = torch.tensor(matrix, dtype=torch.float64).view(4, 4)
        pose[3] = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
        poses.append(pose)
        focals.append(height / 2 / math.tan(math.radians(fov) / 2))
    poses = torch.stack(poses)
    if dataparser_transforms is not None:
        poses = _undo_dataparser(poses, dataparser_transforms)
    fps = meta.get("fps")
    fps = float(fps) if isinstance(fps, (int, float)) and not isinstance(fps, bool) and 0 < fps <= 240 else None
    cameras = Cameras(opengl_to_opencv(poses.float()), torch.tensor(focals), torch.tensor(focals),
                      torch.tensor(width / 2), torch.tensor(height / 2), torch.tensor(width), torch.tensor(height))
    return cameras, fps


def _side(path: Path, meta: dict, key: str) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIDE:
        raise InputError(path, f"'{key}' must be a whole number of pixels from 1 to {MAX_SIDE}, got {value!r}")
    return value


def _numbers(path: Path, values: Any, count: int, where: str) -> list[float]:
    ok = isinstance(values, list) and len(values) == count and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    if not ok:
        raise InputError(path, f"{where} must be {count} finite number{'s' if count > 1 else ''}")
    return [float(v) for v in values]


def _undo_dataparser(poses: torch.Tensor, transforms_path: Path) -> torch.Tensor:
    """Poses of nerfstudio's normalised frame (``scale * (T x)``) back in the dataset's frame."""
    meta = read_json(transforms_path)
    if not isinstance(meta, dict):
        raise InputError(transforms_path, "not a nerfstudio dataparser_transforms.json (needs transform and scale)")
    rows = meta.get("transform")
    flat = [v for row in rows for v in row] if isinstance(rows, list) and all(isinstance(r, list) for r in rows) else None
    transform = torch.tensor(_numbers(transforms_path, flat, 12, "transform"), dtype=torch.float64).view(3, 4)
    scale = _numbers(transforms_path, [meta.get("scale")], 1, "scale")[0]
    if scale <= 0:
        raise InputError(transforms_path, f"scale must be positive, got {scale}")
    rotation, shift = transform[:, :3], transform[:, 3]
    inverse = rotation.T  # nerfstudio's dataparser transform is rigid: its inverse is the transpose
    restored = poses.clone()
    restored[:, :3, :3] = inverse @ poses[:, :3, :3]
    restored[:, :3, 3] = (inverse @ (poses[:, :3, 3] / scale - shift).T).T
    return restored
