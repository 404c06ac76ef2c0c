"""nerfstudio ``transforms.json`` (OpenGL camera axes, shared or per-frame intrinsics).

* Intrinsics (``fl_x fl_y cx cy w h``) and distortion (``k1 k2 k3 p1 p2``) may be given once at the top
  level or per frame; a per-frame value wins. Distorted OPENCV cameras get a :class:`LensDistortion`
  that :func:`build_dataset` removes from the images (ns-process-data leaves the images distorted).
* ``applied_transform`` (the 3x4 transform ns-process-data applied to the original COLMAP world) is
  validated and kept as :attr:`RawScene.frame_transform`; the poses stay in the file's frame, which is
  also the frame of ``ply_file_path``.
* ``images_N`` / ``masks_N`` (pre-shrunk copies beside ``images`` / ``masks``) are used for
  ``downscale = N`` when every view has one.
* Every file it names (images, masks, ``ply_file_path``) must lie inside the folder of transforms.json
  unless ``allow_outside_paths``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from splat2splat.data.cameras import Cameras, opengl_to_opencv
from splat2splat.data.dataset import RawScene
from splat2splat.data.distortion import LensDistortion
from splat2splat.data.readers.common import (all_or_none, finite_number, image_side, inside_dataset, rigid_matrix,
                                             short_repr)
from splat2splat.errors import InputError
from splat2splat.io import is_file, read_json
from splat2splat.ply_header import check_ply_sizes

_INTRINSICS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
_POSITIVE = ("fl_x", "fl_y", "w", "h")
_DISTORTION = ("k1", "k2", "k3", "k4", "p1", "p2")
_PINHOLE_MODELS = ("PINHOLE", "SIMPLE_PINHOLE")
_SUPPORTED_MODELS = ("OPENCV", *_PINHOLE_MODELS)


@dataclass
class _Frame:
    camtoworld: np.ndarray  # [4, 4] OpenGL axes, as in the file
    intrinsics: dict[str, float]
    distortion: LensDistortion | None
    image_path: Path
    mask_path: Path | None


def read_nerfstudio(path: Path, downscale: int = 1, allow_outside_paths: bool = False) -> RawScene:
    """Read ``path`` (a folder with transforms.json, or the json file itself).

    ``allow_outside_paths``: follow file paths that lead out of the json file's folder.
    """
    json_path = path / "transforms.json" if path.is_dir() else path
    root = json_path.parent
    meta = read_json(json_path)
    frames = [_read_frame(frame, meta, k, root, json_path) for k, frame in enumerate(_frame_list(meta, json_path))]

    c2w = opengl_to_opencv(torch.from_numpy(np.stack([f.camtoworld for f in frames])).float())
    column = lambda key: torch.tensor([f.intrinsics[key] for f in frames])  # noqa: E731
    cameras = Cameras(c2w, column("fl_x"), column("fl_y"), column("cx"), column("cy"),
                      column("w").round().long(), column("h").round().long())
    shrunk = [_shrunk_copy(f.image_path, downscale) for f in frames] if downscale > 1 else []
    image_paths, uses_shrunk = all_or_none([f.image_path for f in frames], shrunk)
    mask_paths = _mask_paths(frames, downscale)
    for what, paths in (("image", image_paths), ("mask", mask_paths or [])):
        for path in paths:
            if path is not None:
                inside_dataset(path, root, json_path, f"{what} path", allow_outside_paths)
    distortion = [f.distortion for f in frames]
    points, colors = _read_points(root, meta, json_path, allow_outside_paths)
    return RawScene(
        cameras=cameras,
        image_paths=image_paths,
        mask_paths=mask_paths,
        points=points,
        point_colors=colors,
        source=json_path,
        intrinsics_scale=1.0 / downscale if uses_shrunk else 1.0,
        distortion=distortion if any(lens is not None for lens in distortion) else None,
        frame_transform=_applied_transform(meta, json_path),
    )


def _frame_list(meta: Any, json_path: Path) -> list:
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise InputError(json_path, "has no 'frames' list")
    if not meta["frames"]:
        raise InputError(json_path, "'frames' is empty")
    return meta["frames"]


def _read_frame(frame: Any, meta: dict, k: int, root: Path, json_path: Path) -> _Frame:
    if not isinstance(frame, dict):
        raise InputError(json_path, f"frame {k} must be a JSON object, got {type(frame).__name__}")
    for key in ("file_path", "mask_path"):
        if key in frame and not isinstance(frame[key], str):
            raise InputError(json_path, f"frame {k}: '{key}' must be a string, got {short_repr(frame[key])}")
    if "file_path" not in frame or "transform_matrix" not in frame:
        raise InputError(json_path, f"frame {k} needs 'file_path' and 'transform_matrix'")
    return _Frame(
        camtoworld=rigid_matrix(frame["transform_matrix"], json_path, f"frame {k}: 'transform_matrix'"),
        intrinsics=_intrinsics(frame, meta, k, json_path),
        distortion=_distortion(frame, meta, k, json_path),
        image_path=root / frame["file_path"],
        mask_path=root / frame["mask_path"] if "mask_path" in frame else None,
    )


def _shared_or_own(frame: dict, meta: dict, key: str) -> Any:
    """A per-frame value overrides the shared top-level one."""
    value = frame.get(key)
    return meta.get(key) if value is None else value


def _intrinsics(frame: dict, meta: dict, k: int, json_path: Path) -> dict[str, float]:
    values = {}
    for key in _INTRINSICS:
        value = _shared_or_own(frame, meta, key)
        if value is None:
            hint = " (this looks like a Blender transforms file: pass its folder)" if "camera_angle_x" in meta else ""
            raise InputError(json_path, f"frame {k} has no '{key}' (neither per frame nor shared){hint}")
        values[key] = finite_number(value, json_path, f"frame {k}: '{key}'", positive=key in _POSITIVE)
    for key in ("w", "h"):
        values[key] = image_side(values[key], json_path, f"frame {k}: '{key}'")
    return values


def _distortion(frame: dict, meta: dict, k: int, json_path: Path) -> LensDistortion | None:
    """The frame's lens distortion, or None for a pinhole camera."""
    model = _shared_or_own(frame, meta, "camera_model") or "OPENCV"
    if model not in _SUPPORTED_MODELS:
        raise InputError(json_path, f"frame {k}: camera model {short_repr(model)} is not supported "
                                    f"(supported: {', '.join(_SUPPORTED_MODELS)})")
    coefficients = {}
    for key in _DISTORTION:
        value = _shared_or_own(frame, meta, key)
        coefficients[key] = 0.0 if value is None else finite_number(value, json_path, f"frame {k}: '{key}'")
    if coefficients.pop("k4") != 0.0:
        # OPENCV's k4 is ambiguous (a fisheye term, or the rational model's denominator); neither is modelled.
        raise InputError(json_path, f"frame {k}: distortion coefficient 'k4' is not supported; undistort the images first")
    lens = LensDistortion(model, **coefficients)
    if lens.is_identity():
        return None
    if model in _PINHOLE_MODELS:
        raise InputError(json_path, f"frame {k}: camera model {model} cannot have distortion coefficients "
                                    f"({', '.join(key for key, v in coefficients.items() if v)}); use OPENCV")
    return lens


def _applied_transform(meta: dict, json_path: Path) -> torch.Tensor | None:
    if meta.get("applied_transform") is None:
        return None
    matrix = rigid_matrix(meta["applied_transform"], json_path, "'applied_transform'")
    return torch.from_numpy(matrix).float()


def _shrunk_copy(path: Path, downscale: int) -> Path:
    """Where nerfstudio keeps the pre-shrunk copy: ``images/x.png`` -> ``images_N/x.png`` (likewise masks)."""
    if downscale > 1 and path.parent.name in ("images", "masks"):
        return path.parent.parent / f"{path.parent.name}_{downscale}" / path.name
    return path


def _mask_paths(frames: list[_Frame], downscale: int) -> list[Path | None] | None:
    """Per-view mask paths (None = that view has no mask), or None when no view has one.

    Masks are resized to their view when loaded, so unlike images each may come from either folder.
    """
    if all(f.mask_path is None for f in frames):
        return None
    shrunk = [None if f.mask_path is None else _shrunk_copy(f.mask_path, downscale) for f in frames]
    return [small if small is not None and is_file(small) else f.mask_path for f, small in zip(frames, shrunk)]


def _read_points(root: Path, meta: dict, json_path: Path,
                 allow_outside_paths: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The sparse point cloud nerfstudio records as ``ply_file_path`` (in the same frame as the poses)."""
    if meta.get("ply_file_path") is None:
        return None, None
    if not isinstance(meta["ply_file_path"], str):
        raise InputError(json_path, f"'ply_file_path' must be a string, got {short_repr(meta['ply_file_path'])}")
    ply_path = inside_dataset(root / meta["ply_file_path"], root, json_path, "'ply_file_path'", allow_outside_paths)
    from plyfile import PlyData

    try:
        check_ply_sizes(ply_path)
        ply = PlyData.read(str(ply_path))
        if "vertex" not in ply or not all(axis in ply["vertex"] for axis in "xyz"):
            raise InputError(ply_path, "point cloud has no 'vertex' element with x, y and z")
        vertex = ply["vertex"]
        xyz = np.stack([vertex["x"], vertex["y"], vertex["z"]], -1).astype(np.float32)
        names = vertex.data.dtype.names
        rgb = (np.stack([vertex["red"], vertex["green"], vertex["blue"]], -1).astype(np.float32) / 255.0
               if "red" in names else np.full_like(xyz, 0.5))
    except FileNotFoundError:
        raise InputError(ply_path, "point cloud named by 'ply_file_path' is missing") from None
    except InputError:
        raise
    except Exception as exc:
        raise InputError(ply_path, f"cannot read point cloud ({exc})") from None
    if not np.isfinite(xyz).all():
        raise InputError(ply_path, "contains points with NaN or infinite coordinates")
    if not np.isfinite(rgb).all():
        raise InputError(ply_path, "contains points with NaN or infinite colours")
    if len(xyz) == 0:
        return None, None  # an empty cloud: as if there were none (like an empty COLMAP points3D)
    return torch.from_numpy(xyz), torch.from_numpy(np.clip(rgb, 0.0, 1.0))
