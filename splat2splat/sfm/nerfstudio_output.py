"""A COLMAP model written as a nerfstudio dataset, the way ns-process-data writes one.

Poses go from COLMAP (world-to-camera, OpenCV axes) to camera-to-world with OpenGL axes, then through
nerfstudio's ``applied_transform`` (swap y and z, negate the new z), which is recorded in transforms.json so
that readers (ours: ``Dataset.frame_transform``) can go back to the COLMAP frame. ``sparse_pc.ply`` holds the
model's points in the transforms.json frame. ``images_2/4/8`` are pre-shrunk copies for ``--downscale``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from splat2splat.io import write_json, write_point_ply

# nerfstudio's colmap_to_json: world (x, y, z) -> (x, z, -y)
APPLIED_TRANSFORM = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0]])
DOWNSCALES = (2, 4, 8)


def camtoworld_opencv(image) -> np.ndarray:
    """A pycolmap image's camera-to-world matrix [4, 4] in COLMAP's frame (OpenCV camera axes)."""
    world_to_cam = np.eye(4)
    world_to_cam[:3] = image.cam_from_world().matrix()
    return np.linalg.inv(world_to_cam)


def nerfstudio_pose(camtoworld: np.ndarray) -> np.ndarray:
    """COLMAP camera-to-world (OpenCV axes) -> transforms.json's (OpenGL axes, applied_transform's frame)."""
    pose = camtoworld.copy()
    pose[:3, 1:3] *= -1
    return np.vstack([APPLIED_TRANSFORM @ pose, [0.0, 0.0, 0.0, 1.0]])


def pinhole_intrinsics(camera) -> dict[str, float | int]:
    fx, fy, cx, cy = (float(v) for v in camera.calibration_matrix()[[0, 1, 0, 1], [0, 1, 2, 2]])
    return {"fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": int(camera.width), "h": int(camera.height)}


def model_points(model) -> tuple[np.ndarray, np.ndarray]:
    """Points [N, 3] (COLMAP frame) and colours [N, 3] in [0, 1] of a pycolmap reconstruction."""
    points = list(model.points3D.values())
    if not points:
        return np.zeros((0, 3)), np.zeros((0, 3))
    return (np.array([p.xyz for p in points], dtype=np.float64),
            np.array([p.color for p in points], dtype=np.float64) / 255.0)


def write_transforms(folder: Path, model) -> list[str]:
    """transforms.json and sparse_pc.ply for the (undistorted, pinhole) ``model``; returns the frame names."""
    images = sorted(model.images.values(), key=lambda image: image.name)
    intrinsics = [pinhole_intrinsics(image.camera) for image in images]
    shared = all(values == intrinsics[0] for values in intrinsics)
    frames = []
    for image, values in zip(images, intrinsics):
        frame = {"file_path": f"images/{image.name}",
                 "transform_matrix": nerfstudio_pose(camtoworld_opencv(image)).tolist(),
                 "colmap_im_id": int(image.image_id)}
        if not shared:
            frame.update(values)
        frames.append(frame)
    meta: dict = {"camera_model": "PINHOLE"}
    if shared:
        meta.update(intrinsics[0])
    xyz, rgb = model_points(model)
    xyz = xyz @ APPLIED_TRANSFORM[:, :3].T + APPLIED_TRANSFORM[:, 3]
    write_point_ply(folder / "sparse_pc.ply", torch.from_numpy(xyz).float(), torch.from_numpy(rgb).float())
    meta.update({"frames": frames, "applied_transform": APPLIED_TRANSFORM.tolist(), "ply_file_path": "sparse_pc.ply"})
    write_json(folder / "transforms.json", meta)
    return [image.name for image in images]


def write_downscales(folder: Path, names: list[str], on_image=None) -> None:
    """images_N/NAME for N in 2, 4, 8 (each side divided by N and rounded), as nerfstudio keeps them."""
    for name in names:
        with Image.open(folder / "images" / name) as im:
            im.load()
            for factor in DOWNSCALES:
                size = (max(1, round(im.width / factor)), max(1, round(im.height / factor)))
                target = folder / f"images_{factor}" / name
                target.parent.mkdir(parents=True, exist_ok=True)
                im.resize(size, Image.Resampling.LANCZOS).save(target)
        if on_image:
            on_image()
