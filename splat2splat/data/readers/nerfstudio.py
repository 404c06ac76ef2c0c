"""nerfstudio ``transforms.json`` (OpenGL camera axes, shared or per-frame intrinsics)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from splat2splat.data.cameras import Cameras, opengl_to_opencv
from splat2splat.data.dataset import RawScene
from splat2splat.errors import InputError
from splat2splat.io import read_json

_INTRINSICS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
_UNSUPPORTED_DISTORTION = ("k1", "k2", "k3", "k4", "p1", "p2")


def read_nerfstudio(path: Path, downscale: int = 1) -> RawScene:
    """Read ``path`` (a folder with transforms.json, or the json file itself)."""
    json_path = path / "transforms.json" if path.is_dir() else path
    root = json_path.parent
    meta = read_json(json_path)
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise InputError(json_path, "has no 'frames' list")
    frames = meta["frames"]
    if not frames:
        raise InputError(json_path, "'frames' is empty")
    poses, intrinsics, image_paths, mask_paths = [], [], [], []
    for k, frame in enumerate(frames):
        if "file_path" not in frame or "transform_matrix" not in frame:
            raise InputError(json_path, f"frame {k} needs 'file_path' and 'transform_matrix'")
        values = {}
        for key in _INTRINSICS:
            value = frame.get(key, meta.get(key))
            if value is None:
                raise InputError(json_path, f"frame {k} has no '{key}' (neither per frame nor shared)")
            values[key] = float(value)
        if any(abs(float(frame.get(d, meta.get(d, 0.0)) or 0.0)) > 1e-8 for d in _UNSUPPORTED_DISTORTION):
            raise InputError(json_path, f"frame {k} has lens distortion; undistort the images first "
                                        "(e.g. ns-process-data) or convert to PINHOLE")
        model = frame.get("camera_model", meta.get("camera_model", "OPENCV"))
        if model not in ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE"):
            raise InputError(json_path, f"frame {k}: camera model '{model}' is not supported (use a pinhole model)")
        matrix = np.asarray(frame["transform_matrix"], dtype=np.float64)
        if matrix.shape == (3, 4):
            matrix = np.vstack([matrix, [0, 0, 0, 1]])
        if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
            raise InputError(json_path, f"frame {k}: 'transform_matrix' must be a finite 4x4 matrix")
        poses.append(matrix)
        intrinsics.append(values)
        image_paths.append(_downscaled(root, frame["file_path"], downscale))
        mask_paths.append(_downscaled(root, frame["mask_path"], downscale) if "mask_path" in frame else None)
    c2w = torch.tensor(np.stack(poses), dtype=torch.float32)
    c2w = opengl_to_opencv(c2w)
    column = lambda key: torch.tensor([v[key] for v in intrinsics])  # noqa: E731
    cameras = Cameras(c2w, column("fl_x"), column("fl_y"), column("cx"), column("cy"),
                      column("w").round().long(), column("h").round().long())
    points, colors = _read_points(root, meta)
    uses_downscaled_folder = downscale > 1 and image_paths[0].parent.name == f"images_{downscale}"
    return RawScene(
        cameras=cameras,
        image_paths=image_paths,
        mask_paths=mask_paths if any(m is not None for m in mask_paths) else None,
        points=points,
        point_colors=colors,
        source=json_path,
        intrinsics_scale=1.0 / downscale if uses_downscaled_folder else 1.0,
    )


def _downscaled(root: Path, file_path: str, downscale: int) -> Path:
    """nerfstudio keeps pre-shrunk copies in ``images_2/4/8`` beside ``images``; use them when present."""
    path = root / file_path
    if downscale > 1 and path.parent.name in ("images", "masks"):
        candidate = path.parent.parent / f"{path.parent.name}_{downscale}" / path.name
        if candidate.exists():
            return candidate
    return path


def _read_points(root: Path, meta: dict) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The sparse point cloud nerfstudio records as ``ply_file_path`` (in the same frame as the poses)."""
    if "ply_file_path" not in meta:
        return None, None
    ply_path = root / meta["ply_file_path"]
    from plyfile import PlyData

    try:
        vertex = PlyData.read(str(ply_path))["vertex"]
        xyz = np.stack([vertex["x"], vertex["y"], vertex["z"]], -1).astype(np.float32)
        names = vertex.data.dtype.names
        rgb = (np.stack([vertex["red"], vertex["green"], vertex["blue"]], -1).astype(np.float32) / 255.0
               if "red" in names else np.full_like(xyz, 0.5))
    except FileNotFoundError:
        raise InputError(ply_path, "point cloud named by 'ply_file_path' is missing") from None
    except Exception as exc:
        raise InputError(ply_path, f"cannot read point cloud ({exc})") from None
    return torch.from_numpy(xyz), torch.from_numpy(rgb)
