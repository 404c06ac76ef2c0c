"""Tiny synthetic scenes for the reader and dataset tests (no ray tracing: cheap smooth images).

Geometry comes from the demo scene's cameras (:func:`demo_cameras`), cropped to a non-square image so
that a width/height swap anywhere shows up.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from splat2splat.data.cameras import Cameras, opencv_to_opengl
from splat2splat.data.demo import demo_cameras
from splat2splat.io import save_image, write_json

WIDTH, HEIGHT = 32, 24
FOV_X = 0.9  # horizontal field of view of the Blender scenes
LOOK_AT = torch.tensor([0.0, 0.0, 0.2])  # where every demo camera looks


def tiny_cameras(n_views: int = 5) -> Cameras:
    """Demo-scene poses with a 32x24 pinhole camera (principal point off-centre, fx != fy)."""
    poses = demo_cameras(n_views, WIDTH).camtoworlds
    full = lambda value: torch.full((n_views,), float(value))  # noqa: E731
    return Cameras(poses, full(30.0), full(31.0), full(15.5), full(12.5), full(WIDTH), full(HEIGHT))


def pattern_image(index: int, height: int = HEIGHT, width: int = WIDTH) -> torch.Tensor:
    """A smooth colour pattern [H, W, 3] in [0, 1], different for every view index."""
    v, u = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    phase = 0.7 * index
    return torch.stack([
        0.5 + 0.4 * torch.sin(u / 5.0 + phase),
        0.5 + 0.4 * torch.cos(v / 4.0 - phase),
        0.5 + 0.4 * torch.sin((u + v) / 7.0 + 2 * phase),
    ], -1)


def write_nerfstudio_scene(folder: Path, cameras: Cameras, images: list[torch.Tensor] | None = None,
                           **meta_overrides) -> Path:
    """Write ``images/frame_i.png`` and a nerfstudio ``transforms.json`` (shared intrinsics); returns the json path."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(len(cameras)):
        name = f"images/frame_{i:05d}.png"
        height, width = cameras.image_size(i)
        save_image(folder / name, pattern_image(i, height, width) if images is None else images[i])
        frames.append({"file_path": name, "transform_matrix": opencv_to_opengl(cameras.camtoworlds[i]).tolist()})
    meta = {"camera_model": "OPENCV", "fl_x": float(cameras.fx[0]), "fl_y": float(cameras.fy[0]),
            "cx": float(cameras.cx[0]), "cy": float(cameras.cy[0]), "w": int(cameras.width[0]),
            "h": int(cameras.height[0]), "frames": frames}
    meta.update(meta_overrides)
    write_json(folder / "transforms.json", meta)
    return folder / "transforms.json"


def rgba_image(index: int) -> torch.Tensor:
    """The view's pattern, fully transparent in its left quarter (where only the background shows)."""
    alpha = torch.ones(HEIGHT, WIDTH, 1)
    alpha[:, : WIDTH // 4] = 0.0
    return torch.cat([pattern_image(index), alpha], -1)


def write_blender_scene(root: Path, splits: dict[str, list[int]]) -> Path:
    """``transforms_<split>.json`` naming ``./<split>/r_<i>`` without extension, as the NeRF-synthetic files do."""
    cameras = tiny_cameras(sum(len(views) for views in splits.values()))
    for split, views in splits.items():
        frames = []
        for i in views:
            save_image(root / split / f"r_{i}.png", rgba_image(i))
            frames.append({"file_path": f"./{split}/r_{i}", "rotation": 0.0,
                           "transform_matrix": opencv_to_opengl(cameras.camtoworlds[i]).tolist()})
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": FOV_X, "frames": frames}))
    return root


def assert_looks_at_target(cameras: Cameras, target: torch.Tensor = LOOK_AT) -> None:
    """Every camera's +z axis (OpenCV forward) points at ``target``: catches any axis-convention slip."""
    to_target = torch.nn.functional.normalize(target - cameras.centers(), dim=-1)
    cosine = (to_target * cameras.camtoworlds[:, :3, 2]).sum(-1)
    assert torch.all(cosine > math.cos(math.radians(1.0))), cosine


def write_png16(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit PNG of uint16 ``pixels`` ([H, W] grey or [H, W, 3] RGB), written by hand: PIL cannot write 16-bit RGB."""
    height, width = pixels.shape[:2]
    color_type = 0 if pixels.ndim == 2 else 2
    rows = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(height))  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def save_with_exif_orientation(path: Path, stored: torch.Tensor, orientation: int) -> None:
    """Save the [H, W, 3] ``stored`` pixels (JPEG or PNG, by suffix) with an EXIF orientation (1-8) saying how to show them."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((stored.numpy() * 255 + 0.5).astype(np.uint8)).save(path, exif=exif, quality=95)


def nerfstudio_camera_path(dataset, views: list[int], fps: int | None = None) -> dict:
    """A nerfstudio viewer export (camera-path JSON) of ``dataset``'s cameras ``views``, in its dataset frame."""
    import math

    from splat2splat.data.cameras import opencv_to_opengl

    cameras = dataset.cameras[views]
    poses = opencv_to_opengl(cameras.camtoworlds.clone())
    normalization = dataset.normalization
    poses[:, :3, 3] = normalization.to_original(poses[:, :3, 3])
    height, width = int(cameras.height[0]), int(cameras.width[0])
    path = {"camera_type": "perspective", "render_width": width, "render_height": height, "camera_path": [
        {"camera_to_world": pose.flatten().tolist(), "fov": math.degrees(2 * math.atan(height / 2 / float(fy)))}
        for pose, fy in zip(poses, cameras.fy)]}
    if fps is not None:
        path["fps"] = fps
    return path
