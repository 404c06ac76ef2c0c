"""COLMAP sparse models (``cameras``, ``images``, ``points3D`` in the binary ``.bin`` or text ``.txt`` format).

Parsed from scratch with struct/numpy, following COLMAP's ``src/colmap/scene/reconstruction_io.cc``.
COLMAP stores world-to-camera poses (unit quaternion ``qw qx qy qz`` and translation) in OpenCV camera
axes, which we invert to the camera-to-world matrices of :class:`Cameras`. Pinhole models are read as
they are; SIMPLE_RADIAL, RADIAL and OPENCV carry a :class:`LensDistortion` that :func:`build_dataset`
removes from the images. Other models (fisheye, FULL_OPENCV, ...) are rejected with a clear error.

Files are untrusted: a count in a binary file is checked against the bytes left before anything is read
or allocated, quaternions must be unit length (within :data:`QUATERNION_TOLERANCE`), and image names must
not lead out of the dataset folder unless ``allow_outside_paths``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from splat2splat.data.cameras import Cameras
from splat2splat.data.dataset import RawScene
from splat2splat.data.distortion import LensDistortion
from splat2splat.data.readers.common import FLOAT32_MAX, FLOAT32_TINY, all_or_none, image_side, inside_dataset, short_repr
from splat2splat.errors import InputError
from splat2splat.rotations import quaternion_to_matrix

# COLMAP model id -> (name, number of parameters); every model must be known to step over its parameters.
_MODELS: dict[int, tuple[str, int]] = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5), 4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5), 8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12), 11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
}
_PARAM_COUNT = {name: count for name, count in _MODELS.values()}
_SUPPORTED = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
# COLMAP writes unit quaternions to 17 digits; a norm further from 1 than this is not a rotation we should guess at.
QUATERNION_TOLERANCE = 1e-3
# Smallest size in bytes of one record of each binary file (no parameters / name / 2D points / track beyond
# the fixed fields), to check a count against the file before looping over or allocating for it.
_MIN_CAMERA_BYTES = struct.calcsize("<iiQQ") + 3 * 8  # SIMPLE_PINHOLE has the fewest parameters
_MIN_IMAGE_BYTES = struct.calcsize("<idddddddi") + 1 + 8  # empty name (its NUL) and no 2D points
_MIN_POINT_BYTES = struct.calcsize("<QdddBBBdQ")  # empty track


@dataclass
class ColmapCamera:
    model: str
    width: int
    height: int
    params: tuple[float, ...]


@dataclass
class ColmapImage:
    name: str
    camera_id: int
    qvec: tuple[float, float, float, float]  # w, x, y, z (world-to-camera rotation)
    tvec: tuple[float, float, float]  # world-to-camera translation


def read_colmap(root: Path, sparse_dir: Path, downscale: int = 1, allow_outside_paths: bool = False) -> RawScene:
    """Read the model in ``sparse_dir``; images are ``root/images/<name>`` (or ``root/images_<downscale>``).

    ``allow_outside_paths``: follow image names that lead out of ``root`` (``../x.png``, absolute paths).
    """
    binary = (sparse_dir / "cameras.bin").is_file()
    ext = ".bin" if binary else ".txt"
    cameras_path, images_path, points_path = (sparse_dir / f"{stem}{ext}" for stem in ("cameras", "images", "points3D"))
    for required in (cameras_path, images_path):
        if not required.is_file():
            raise InputError(required, "COLMAP model file is missing")
    if binary:
        colmap_cameras, colmap_images = read_cameras_binary(cameras_path), read_images_binary(images_path)
    else:
        colmap_cameras, colmap_images = read_cameras_text(cameras_path), read_images_text(images_path)
    if not colmap_images:
        raise InputError(images_path, "the model has no registered images")
    images = sorted(colmap_images, key=lambda image: image.name)  # deterministic view order

    camtoworlds, intrinsics, distortion = [], [], []
    for image in images:
        if image.camera_id not in colmap_cameras:
            raise InputError(images_path, f"image '{image.name}' uses camera {image.camera_id}, "
                                          f"which {cameras_path.name} does not define")
        camera = colmap_cameras[image.camera_id]
        camtoworlds.append(_camtoworld(image, images_path))
        pinhole, lens = _pinhole_and_distortion(camera, cameras_path)
        intrinsics.append(pinhole)
        distortion.append(lens)
    fx, fy, cx, cy, width, height = (torch.tensor(column) for column in zip(*intrinsics))
    cameras = Cameras(torch.from_numpy(np.stack(camtoworlds)).float(), fx, fy, cx, cy, width, height)

    full_size = [root / "images" / image.name for image in images]
    shrunk = [root / f"images_{downscale}" / image.name for image in images] if downscale > 1 else []
    image_paths, uses_shrunk = all_or_none(full_size, shrunk)
    for path in image_paths:
        inside_dataset(path, root, images_path, "image path", allow_outside_paths)

    points, colors = None, None
    if points_path.is_file():
        points, colors = read_points_binary(points_path) if binary else read_points_text(points_path)
    return RawScene(
        cameras=cameras,
        image_paths=image_paths,
        points=points,
        point_colors=colors,
        source=sparse_dir,
        intrinsics_scale=1.0 / downscale if uses_shrunk else 1.0,
        distortion=distortion if any(lens is not None for lens in distortion) else None,
    )


def _camtoworld(image: ColmapImage, source: Path) -> np.ndarray:
    """Invert COLMAP's world-to-camera pose into a [4, 4] camera-to-world matrix (OpenCV axes either way)."""
    values = np.array(image.qvec + image.tvec, dtype=np.float64)
    if not np.isfinite(values).all():
        raise InputError(source, f"image '{image.name}' has a NaN or infinite pose")
    qvec, tvec = values[:4], values[4:]
    with np.errstate(over="ignore"):
        norm = np.linalg.norm(qvec)
    if norm < 1e-12:
        raise InputError(source, f"image '{image.name}' has a zero rotation quaternion")
    if not abs(norm - 1.0) <= QUATERNION_TOLERANCE:
        raise InputError(source, f"image '{image.name}' has a rotation quaternion of length {norm:.6g}, not 1 "
                                 f"(tolerance {QUATERNION_TOLERANCE:g}): not a rotation")
    rotation = quaternion_to_matrix(torch.from_numpy(qvec / norm)).numpy()  # exactly unit: rounding in the file must not scale the axes
    c2w = np.eye(4)
    c2w[:3, :3] = rotation.T
    c2w[:3, 3] = -rotation.T @ tvec
    if not (np.abs(c2w) <= FLOAT32_MAX).all():
        raise InputError(source, f"image '{image.name}' has a translation too large for float32")
    return c2w


def _pinhole_and_distortion(camera: ColmapCamera, source: Path) -> tuple[tuple[float, float, float, float, int, int],
                                                                          LensDistortion | None]:
    """((fx, fy, cx, cy, width, height), distortion or None) of a supported camera model."""
    if camera.model not in _SUPPORTED:
        raise InputError(source, f"camera model {camera.model} is not supported (supported: {', '.join(_SUPPORTED)}); "
                                 "run colmap image_undistorter to get PINHOLE cameras")
    p = camera.params
    if not all(math.isfinite(value) for value in p):
        raise InputError(source, f"{camera.model} camera has NaN or infinite parameters {list(p)}")
    if camera.model == "PINHOLE":
        (fx, fy, cx, cy), lens = p, None
    elif camera.model == "OPENCV":
        fx, fy, cx, cy = p[:4]
        lens = LensDistortion(camera.model, k1=p[4], k2=p[5], p1=p[6], p2=p[7])
    else:  # the SIMPLE_* and RADIAL models share one focal length: f, cx, cy, [k1, [k2]]
        fx = fy = p[0]
        cx, cy = p[1], p[2]
        radial = list(p[3:]) + [0.0, 0.0]
        lens = LensDistortion(camera.model, k1=radial[0], k2=radial[1])
    if not (FLOAT32_TINY <= fx <= FLOAT32_MAX and FLOAT32_TINY <= fy <= FLOAT32_MAX):
        raise InputError(source, f"{camera.model} camera has focal length {fx:g}, {fy:g}: must be positive")
    if not all(abs(value) <= FLOAT32_MAX for value in p):
        raise InputError(source, f"{camera.model} camera has parameters too large for float32 {list(p)}")
    width = image_side(camera.width, source, f"{camera.model} camera width")
    height = image_side(camera.height, source, f"{camera.model} camera height")
    if lens is not None and lens.is_identity():
        lens = None  # nothing to undo: skip resampling the images
    return (fx, fy, cx, cy, width, height), lens


# ----------------------------------------------------------------------------------------- binary format


class _BinaryReader:
    """Sequential little-endian reads from a whole file; a short read is an InputError naming the file."""

    def __init__(self, path: Path):
        self.path = path
        self.data = path.read_bytes()
        self.offset = 0

    def read(self, fmt: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if self.offset + size > len(self.data):
            raise InputError(self.path, f"file is truncated: needs {self.offset + size} bytes, has {len(self.data)}")
        values = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += size
        return values

    def skip(self, size: int) -> None:
        if self.offset + size > len(self.data):
            raise InputError(self.path, f"file is truncated: needs {self.offset + size} bytes, has {len(self.data)}")
        self.offset += size

    def read_name(self) -> str:
        end = self.data.find(b"\0", self.offset)
        if end < 0:
            raise InputError(self.path, "file is truncated: an image name has no terminating NUL byte")
        name = self.data[self.offset:end].decode("utf-8", errors="replace")
        self.offset = end + 1
        return name

    def expect_records(self, count: int, min_bytes: int, what: str) -> None:
        """A count claimed by the file must fit in the bytes left (checked before looping or allocating)."""
        left = len(self.data) - self.offset
        if count * min_bytes > left:
            raise InputError(self.path, f"file is truncated or corrupt: it claims {count} {what}, which need at "
                                        f"least {count * min_bytes} bytes, but {left} are left")

    def expect_end(self) -> None:
        """Bytes left over mean the counts in the file do not match its content."""
        if self.offset != len(self.data):
            raise InputError(self.path, f"has {len(self.data) - self.offset} unexpected bytes after the last record")


def read_cameras_binary(path: Path) -> dict[int, ColmapCamera]:
    reader = _BinaryReader(path)
    (count,) = reader.read("Q")
    reader.expect_records(count, _MIN_CAMERA_BYTES, "cameras")
    cameras = {}
    for _ in range(count):
        camera_id, model_id, width, height = reader.read("iiQQ")
        if model_id not in _MODELS:
            raise InputError(path, f"camera {camera_id} has unknown camera model id {model_id}")
        model, n_params = _MODELS[model_id]
        cameras[camera_id] = ColmapCamera(model, width, height, reader.read("d" * n_params))
    reader.expect_end()
    return cameras


def read_images_binary(path: Path) -> list[ColmapImage]:
    reader = _BinaryReader(path)
    (count,) = reader.read("Q")
    reader.expect_records(count, _MIN_IMAGE_BYTES, "images")
    images = []
    for _ in range(count):
        _image_id, qw, qx, qy, qz, tx, ty, tz, camera_id = reader.read("idddddddi")
        name = reader.read_name()
        (n_points2d,) = reader.read("Q")
        reader.skip(n_points2d * struct.calcsize("<ddq"))  # 2D keypoints (x, y, point3D id): not needed
        images.append(ColmapImage(name, camera_id, (qw, qx, qy, qz), (tx, ty, tz)))
    reader.expect_end()
    return images


def read_points_binary(path: Path) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    reader = _BinaryReader(path)
    (count,) = reader.read("Q")
    reader.expect_records(count, _MIN_POINT_BYTES, "points")
    xyz, rgb = np.empty((count, 3), np.float64), np.empty((count, 3), np.float64)
    for k in range(count):
        _point_id, x, y, z, r, g, b, _error, track_length = reader.read("QdddBBBdQ")
        xyz[k], rgb[k] = (x, y, z), (r, g, b)
        reader.skip(track_length * struct.calcsize("<ii"))  # (image id, keypoint index) pairs: not needed
    reader.expect_end()
    return _points_tensors(xyz, rgb, path)


# ------------------------------------------------------------------------------------------- text format


def _data_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, line) of every line but comments; blank lines are kept (images.txt needs them)."""
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise InputError(path, "not a text file") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if not line.lstrip().startswith("#")]


def _numbers(path: Path, line_number: int, tokens: list[str], kind: type = float) -> list:
    try:
        return [kind(token) for token in tokens]
    except ValueError:
        raise InputError(path, f"line {line_number}: expected numbers, got {' '.join(tokens)!r}") from None


def read_cameras_text(path: Path) -> dict[int, ColmapCamera]:
    """``CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]`` per line."""
    cameras = {}
    for n, line in _data_lines(path):
        if not line:
            continue
        tokens = line.split()
        if len(tokens) < 4:
            raise InputError(path, f"line {n}: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS[], got {line!r}")
        camera_id, width, height = _numbers(path, n, [tokens[0], tokens[2], tokens[3]], int)
        model = tokens[1]
        if model not in _PARAM_COUNT:
            raise InputError(path, f"line {n}: unknown camera model {model}")
        params = _numbers(path, n, tokens[4:])
        if len(params) != _PARAM_COUNT[model]:
            raise InputError(path, f"line {n}: {model} needs {_PARAM_COUNT[model]} parameters, got {len(params)}")
        cameras[camera_id] = ColmapCamera(model, width, height, tuple(params))
    return cameras


def read_images_text(path: Path) -> list[ColmapImage]:
    """``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` per image, each followed by its 2D points line.

    COLMAP always writes the points line (blank when the image has none), but some tools leave these lines
    out altogether; skipping every second line blindly would then drop every other image. So the line after
    a record is skipped only when it IS a points line: blank, or ``X Y POINT3D_ID`` triples.
    """
    lines = _data_lines(path)
    images, k = [], 0
    while k < len(lines):
        n, line = lines[k]
        k += 1
        if not line:  # blank lines between records
            continue
        images.append(_image_record(path, n, line))
        if k < len(lines) and _is_points_line(lines[k][1]):
            k += 1  # the image's 2D points, which we do not need
    return images


def _image_record(path: Path, n: int, line: str) -> ColmapImage:
    tokens = line.split()
    if len(tokens) < 10:
        raise InputError(path, f"line {n}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, "
                               f"got {short_repr(line)}")
    qw, qx, qy, qz, tx, ty, tz = _numbers(path, n, tokens[1:8])
    (camera_id,) = _numbers(path, n, tokens[8:9], int)
    return ColmapImage(" ".join(tokens[9:]), camera_id, (qw, qx, qy, qz), (tx, ty, tz))


def _is_points_line(line: str) -> bool:
    """Blank, or ``X Y POINT3D_ID`` triples (an image record has a name where a POINT3D_ID would be)."""
    tokens = line.split()
    if len(tokens) % 3:
        return False
    if not all(token.lstrip("+-").isdigit() for token in tokens[2::3]):
        return False
    try:
        np.array([token for k, token in enumerate(tokens) if k % 3 != 2], dtype=np.float64)
    except ValueError:
        return False
    return True


def read_points_text(path: Path) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``POINT3D_ID X Y Z R G B ERROR TRACK[]`` per line."""
    xyz, rgb = [], []
    for n, line in _data_lines(path):
        if not line:
            continue
        tokens = line.split()
        if len(tokens) < 8:
            raise InputError(path, f"line {n}: expected POINT3D_ID X Y Z R G B ERROR TRACK[], got {line!r}")
        values = _numbers(path, n, tokens[1:7])
        if not all(0 <= value <= 255 for value in values[3:]):
            raise InputError(path, f"line {n}: colour {values[3:]} is not in 0-255")
        xyz.append(values[:3])
        rgb.append(values[3:])
    return _points_tensors(np.array(xyz, np.float64).reshape(-1, 3), np.array(rgb, np.float64).reshape(-1, 3), path)


def _points_tensors(xyz: np.ndarray, rgb: np.ndarray, path: Path) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Positions [P, 3] and colours in [0, 1] (None for an empty model: as if there were no points)."""
    if len(xyz) == 0:
        return None, None
    if not (np.abs(xyz) <= FLOAT32_MAX).all():  # also false for NaN
        raise InputError(path, "contains points with NaN, infinite or (for float32) too large coordinates")
    colors = np.clip(rgb / 255.0, 0.0, 1.0)
    return torch.from_numpy(xyz).float(), torch.from_numpy(colors).float()
