"""Atomic file writes and image I/O.

Every output and checkpoint goes through :func:`atomic_write` (temp file in the same folder, fsync,
rename), so an interrupted run never leaves a half-written file where a good one used to be.
"""

from __future__ import annotations

import contextlib
import io as _io
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps

from splat2splat.errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp path beside ``path`` (same suffix, for writers that pick the format from the name); on success
    it is synced, given the usual permissions and renamed over ``path``; on failure it is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
        os.replace(tmp, path)
    except OSError as error:  # a full disk while writing: the message names the file, not its temp copy
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if error.filename is None or error.filename == tmp:
            raise OSError(error.errno, error.strerror or str(error), str(path)) from None
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Open a file to be renamed over ``path`` only once it is completely written (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_json(path: str | Path, obj: Any) -> None:
    """Strict JSON (NaN and infinities, which JSON has no words for, are written as null), atomically."""
    with atomic_write(path, "w") as f:
        json.dump(finite_or_null(obj), f, indent=2, sort_keys=False, default=str, allow_nan=False)
        f.write("\n")


def finite_or_null(value: Any) -> Any:
    """``value`` with every non-finite float inside it replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    return value


T = TypeVar("T")


class IndependentOutputs:
    """Writes the outputs of finished work one by one: one that fails is reported in one line (and kept in
    :attr:`failed` for the run's record), the others still land. Work that is done is never lost to an output."""

    def __init__(self) -> None:
        self.failed: dict[str, str] = {}

    def write(self, name: str, action: Callable[[], T]) -> T | None:
        """``action()``, or None (with a warning line) when it fails."""
        try:
            return action()
        except Exception as error:  # noqa: BLE001 - any output's failure, even a bug, must not lose the others
            self.failed[name] = failure_line(error)
            print(f"warning: {name} not written: {self.failed[name]}", file=sys.stderr)
            return None


def failure_line(error: BaseException) -> str:
    """An exception as one short line; an OSError names its file."""
    if isinstance(error, InputError):
        return str(error)
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


def check_output_folder(folder: str | Path, option: str = "--output") -> None:
    """Fail before any work when ``folder`` cannot hold outputs: it is a file, or cannot be created or written."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(folder, f"{option} names an existing file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise InputError(folder, f"{option} cannot be written: {error.strerror or error}") from None


def save_torch(path: str | Path, obj: Any) -> None:
    buffer = _io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())


def is_file(path: str | Path) -> bool:
    """``Path.is_file``, but False (not OSError) for a name the system refuses, e.g. one over 255 bytes."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def exists(path: str | Path) -> bool:
    """``Path.exists``, but False (not OSError) for a name the system refuses."""
    try:
        return Path(path).exists()
    except (OSError, ValueError):
        return False


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not is_file(path):
        raise InputError(path, "file does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(path, f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError:
        raise InputError(path, "not a text file") from None
    except ValueError as exc:  # an integer literal of more than 4300 digits
        raise InputError(path, f"malformed JSON ({exc})") from None
    except RecursionError:
        raise InputError(path, "malformed JSON (nested too deeply)") from None


# 16-bit greyscale modes. PIL reads 16-bit RGB(A) PNGs as 8-bit RGB(A) itself (keeping the high byte), but
# leaves 16-bit grey as integers that a plain convert("RGB") clips to white.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def load_image(path: str | Path, check_size: Callable[[tuple[int, int]], None] | None = None) -> np.ndarray:
    """Load an image as float32 HxWxC in [0, 1] (C = 3, or 4 with alpha), turned upright by its EXIF orientation.

    8-bit modes are divided by 255, 16-bit ones by 65535; grey, palette and CMYK images become RGB,
    those with transparency RGBA. ``check_size((height, width))`` (upright) may refuse the image from its header,
    before its pixels are decoded (PIL opens lazily): a small file can hold a huge picture.
    """
    path = Path(path)
    if not is_file(path):
        raise InputError(path, "image file is missing")
    try:
        with Image.open(path) as im:
            if check_size is not None:
                width, height = im.size
                sideways = im.getexif().get(EXIF_ORIENTATION_TAG) in SIDEWAYS_ORIENTATIONS
                check_size((width, height) if sideways else (height, width))
            im.load()
            # Cameras always see the upright image (what every viewer shows); phones store it rotated.
            array = image_to_array(ImageOps.exif_transpose(im))
    except InputError:
        raise
    except Exception as exc:  # PIL raises many types for unreadable or unsupported files
        raise InputError(path, f"cannot read image ({type(exc).__name__}: {exc})") from None
    if not np.isfinite(array).all():
        raise InputError(path, "image has NaN or infinite pixel values")
    return array


# EXIF orientations 5-8 store the picture turned by 90 degrees: the upright width is the stored height.
EXIF_ORIENTATION_TAG = 0x0112
SIDEWAYS_ORIENTATIONS = (5, 6, 7, 8)


def turned_sideways_by_exif(path: str | Path) -> bool:
    """Whether the image's EXIF orientation swaps its width and height when :func:`load_image` applies it."""
    try:
        with Image.open(path) as im:
            return im.getexif().get(EXIF_ORIENTATION_TAG) in SIDEWAYS_ORIENTATIONS
    except Exception:  # PIL raises many types for unreadable files; such a file has no usable orientation
        return False


def image_to_array(im: Image.Image) -> np.ndarray:
    """A PIL image as float32 HxWx3 (or x4 with alpha) in [0, 1], scaled by its bit depth."""
    if im.mode in SIXTEEN_BIT_MODES or im.mode == "I":
        # 'I' (32-bit int) is how PIL gives 16-bit greyscale PNGs and TIFFs on some versions: 16-bit values.
        grey = np.clip(np.asarray(im).astype(np.float32) / 65535.0, 0.0, 1.0)
        return np.repeat(grey[..., None], 3, axis=-1)
    if im.mode == "F":  # 32-bit float greyscale (TIFF): taken as values in [0, 1]; NaN is reported by the caller
        grey = np.asarray(im).astype(np.float32)
        return np.repeat(np.where(np.isnan(grey), grey, np.clip(grey, 0.0, 1.0))[..., None], 3, axis=-1)
    if im.mode not in ("RGB", "RGBA"):
        has_alpha = any(band in ("A", "a") for band in im.getbands()) or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
    return np.asarray(im).astype(np.float32) / 255.0


def to_uint8(image: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().numpy()
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_image(path: str | Path, image: np.ndarray | torch.Tensor) -> None:
    """Save an HxWx3 (or x4) float image in [0, 1] atomically; format from the suffix."""
    path = Path(path)
    buffer = _io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buffer, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    write_bytes(path, buffer.getvalue())


def write_point_ply(path: Path, points: torch.Tensor, colors: torch.Tensor) -> None:
    """A coloured point cloud (x y z red green blue) as a binary PLY, written atomically."""
    from plyfile import PlyData, PlyElement

    vertex = np.empty(len(points), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    points, colors = points.detach().float().cpu(), colors.detach().float().cpu()
    for k, axis in enumerate("xyz"):
        vertex[axis] = points[:, k].numpy()
    rgb = (colors.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    vertex["red"], vertex["green"], vertex["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    buffer = _io.BytesIO()
    PlyData([PlyElement.describe(vertex, "vertex")]).write(buffer)
    write_bytes(path, buffer.getvalue())
