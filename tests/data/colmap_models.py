"""A small COLMAP sparse-model writer (binary and text) for the reader tests and the fuzz suite."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from splat2splat.data.cameras import Cameras
from splat2splat.io import save_image
from tests.data.scenes import pattern_image, tiny_cameras

_MODEL_IDS = {"SIMPLE_PINHOLE": 0, "PINHOLE": 1, "SIMPLE_RADIAL": 2, "RADIAL": 3, "OPENCV": 4,
              "OPENCV_FISHEYE": 5, "FULL_OPENCV": 6}


@dataclass
class Model:
    cameras: dict[int, tuple[str, int, int, list[float]]]  # id -> (model, width, height, params)
    images: list[tuple[int, list[float], list[float], int, str]]  # (id, qvec, tvec, camera id, name)
    xyz: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    rgb: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.uint8))


def rotation_to_qvec(rotation: np.ndarray) -> np.ndarray:
    """COLMAP's own conversion (scripts/python/read_write_model.py): independent of the reader's inverse."""
    rxx, ryx, rzx, rxy, ryy, rzy, rxz, ryz, rzz = rotation.flat
    k = np.array([[rxx - ryy - rzz, 0, 0, 0], [ryx + rxy, ryy - rxx - rzz, 0, 0],
                  [rzx + rxz, rzy + ryz, rzz - rxx - ryy, 0], [ryz - rzy, rzx - rxz, rxy - ryx, rxx + ryy + rzz]]) / 3.0
    eigenvalues, eigenvectors = np.linalg.eigh(k)
    qvec = eigenvectors[[3, 0, 1, 2], np.argmax(eigenvalues)]
    return -qvec if qvec[0] < 0 else qvec


def model_from_cameras(cameras: Cameras, model: str = "PINHOLE", extra_params: tuple[float, ...] = ()) -> Model:
    """One COLMAP camera per view (ids deliberately not in name order) with world-to-camera poses."""
    colmap_cameras, images = {}, []
    for i in range(len(cameras)):
        fx, fy, cx, cy = (float(getattr(cameras, key)[i]) for key in ("fx", "fy", "cx", "cy"))
        params = [fx, cx, cy] if model.startswith("SIMPLE") or model == "RADIAL" else [fx, fy, cx, cy]
        camera_id = 100 + i
        colmap_cameras[camera_id] = (model, int(cameras.width[i]), int(cameras.height[i]), params + list(extra_params))
        w2c = np.linalg.inv(cameras.camtoworlds[i].double().numpy())
        images.append((len(cameras) - i, list(rotation_to_qvec(w2c[:3, :3])), list(w2c[:3, 3]), camera_id,
                       f"frame_{i:05d}.png"))
    images.reverse()  # file order != name order: the reader must sort
    return Model(colmap_cameras, images)


def write_text_model(model: Model, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    cameras = ["# Camera list with one line of data per camera:"]
    cameras += [f"{cid} {m} {w} {h} " + " ".join(repr(p) for p in params) for cid, (m, w, h, params) in model.cameras.items()]
    images = ["# Image list with two lines of data per image:"]
    for image_id, qvec, tvec, camera_id, name in model.images:
        images.append(" ".join(repr(float(v)) for v in qvec + tvec).join([f"{image_id} ", f" {camera_id} {name}"]))
        images.append("1.5 2.5 -1 3.5 4.5 7" if image_id % 2 else "")  # 2D points, sometimes none (blank line)
    points = [f"{k + 1} {x!r} {y!r} {z!r} {r} {g} {b} 0.5 1 0 2 1"
              for k, ((x, y, z), (r, g, b)) in enumerate(zip(model.xyz.tolist(), model.rgb.tolist()))]
    for name, lines in (("cameras", cameras), ("images", images), ("points3D", points)):
        (folder / f"{name}.txt").write_text("\n".join(lines) + "\n")


def write_binary_model(model: Model, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    cameras = struct.pack("<Q", len(model.cameras))
    for camera_id, (name, width, height, params) in model.cameras.items():
        cameras += struct.pack("<iiQQ", camera_id, _MODEL_IDS[name], width, height) + struct.pack(f"<{len(params)}d", *params)
    images = struct.pack("<Q", len(model.images))
    for image_id, qvec, tvec, camera_id, name in model.images:
        images += struct.pack("<idddddddi", image_id, *qvec, *tvec, camera_id) + name.encode() + b"\0"
        images += struct.pack("<Q", 2) + struct.pack("<ddq", 1.5, 2.5, -1) + struct.pack("<ddq", 3.5, 4.5, 7)
    points = struct.pack("<Q", len(model.xyz))
    for k, (xyz, rgb) in enumerate(zip(model.xyz.tolist(), model.rgb.tolist())):
        points += struct.pack("<QdddBBBd", k + 1, *xyz, *rgb, 0.5) + struct.pack("<Q", 2) + struct.pack("<iiii", 1, 0, 2, 1)
    for name, data in (("cameras", cameras), ("images", images), ("points3D", points)):
        (folder / f"{name}.bin").write_bytes(data)


def write_model(model: Model, folder: Path, binary: bool) -> None:
    (write_binary_model if binary else write_text_model)(model, folder)


def colmap_scene(tmp_path: Path, binary: bool, model: str = "PINHOLE", extra_params: tuple[float, ...] = (),
                 n_views: int = 5) -> tuple[Path, Cameras]:
    """A folder with ``images/`` and ``sparse/0`` for the tiny demo cameras; returns it and the cameras."""
    cameras = tiny_cameras(n_views)
    for i in range(n_views):
        save_image(tmp_path / "images" / f"frame_{i:05d}.png", pattern_image(i))
    write_model(model_from_cameras(cameras, model, extra_params), tmp_path / "sparse" / "0", binary)
    return tmp_path, cameras
