"""Images and videos a person looks at: turntable videos, GIFs and labelled contact sheets.

Images are ``[H, W, 3]`` float tensors in [0, 1], as every backend renders them. Every file is written
atomically (see :mod:`splat2splat.io`), so an interrupted run never leaves a half-written video behind.
"""

from __future__ import annotations

import io as _io
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from rich.progress import track

from splat2splat.data.cameras import Cameras, orbit_path
from splat2splat.data.dataset import Dataset
from splat2splat.errors import InputError
from splat2splat.imaging import resize_image
from splat2splat.io import atomic_path, to_uint8, write_bytes
from splat2splat.scene import SceneBackend

VIDEO_SUFFIXES = (".mp4", ".gif")
SHEET_BACKGROUND = (0.94, 0.94, 0.94)  # light grey: white renders stay visible against it
LABEL_COLOR = (30, 30, 30)

# ------------------------------------------------------------------------------------------------ videos


def write_video(path: Path, frames: Sequence[torch.Tensor], fps: int = 24) -> Path:
    """Write ``frames`` ([H, W, 3] in [0, 1], all one size) as ``.mp4`` (H.264) or ``.gif``, atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise InputError(path, f"unknown video format '{path.suffix}': use .mp4 or .gif")
    if not frames:
        raise ValueError("a video needs at least one frame")
    if fps < 1:
        raise InputError(path, f"frames per second must be at least 1, got {fps}")
    arrays = [to_uint8(frame) for frame in frames]
    if len({array.shape for array in arrays}) != 1:
        raise ValueError(f"all frames of a video must have one size, got {sorted({a.shape for a in arrays})}")
    if suffix == ".gif":
        _write_gif(path, arrays, fps)
    else:
        _write_mp4(path, arrays, fps)
    return path


def _write_gif(path: Path, arrays: list[np.ndarray], fps: int) -> None:
    images = [Image.fromarray(array) for array in arrays]
    buffer = _io.BytesIO()
    # loop=0: repeat forever, as a turntable should.
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    write_bytes(path, buffer.getvalue())


def _write_mp4(path: Path, arrays: list[np.ndarray], fps: int) -> None:
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (imageio finds ffmpeg through it)
    except ImportError:
        raise InputError(path, "writing .mp4 needs the imageio-ffmpeg package (pip install imageio-ffmpeg); "
                               "or write a .gif") from None
    # yuv420p (what every player decodes) needs even sides; pad by repeating the edge instead of letting
    # imageio rescale the frames. ffmpeg picks the container from the name: the temp path keeps the suffix.
    with atomic_path(path) as tmp, imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                                      pixelformat="yuv420p", macro_block_size=1, quality=8,
                                                      ffmpeg_log_level="error") as writer:
        for array in arrays:
            writer.append_data(pad_to_even(array))


def pad_to_even(array: np.ndarray) -> np.ndarray:
    """Pad an [H, W, C] array by one edge row / column where a side is odd."""
    height, width = array.shape[:2]
    return np.pad(array, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")


# --------------------------------------------------------------------------------------------- turntables


def turntable_cameras(dataset: Dataset, n_frames: int) -> Cameras:
    """``n_frames`` cameras on a circle around what the training cameras look at (normalised frame)."""
    if n_frames < 1:
        raise ValueError(f"a turntable needs at least one frame, got {n_frames}")
    return orbit_path(dataset.train_cameras, n_frames)


def render_turntable(backend: SceneBackend, dataset: Dataset, n_frames: int = 60) -> list[torch.Tensor]:
    """Render a turntable of ``n_frames`` frames ([H, W, 3] each) with a progress bar."""
    cameras = turntable_cameras(dataset, n_frames)
    return [backend.render(cameras[i])[0] for i in track(range(n_frames), description="turntable")]


# ------------------------------------------------------------------------------------------ contact sheets


def evenly_spread(count: int, limit: int) -> list[int]:
    """Up to ``limit`` positions spread evenly over ``count`` items (first and last included): the rows of a sheet."""
    if count <= limit:
        return list(range(count))
    return [round(k * (count - 1) / (limit - 1)) for k in range(limit)]


def contact_sheet(
    rows: Sequence[Sequence[torch.Tensor]],
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    pad: int = 4,
) -> torch.Tensor:
    """A labelled grid of images as one [H, W, 3] image on a light background.

    Every image is resized to the height of the first one (keeping its aspect ratio); a column is as wide
    as its widest image or its label, narrower images are centred. Rows may have fewer images than others. Labels
    (PIL's default font) go left of the rows and above the columns.
    """
    if not rows or not rows[0]:
        raise ValueError("a contact sheet needs at least one image")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"{len(row_labels)} row labels for {len(rows)} rows")
    n_columns = max(len(row) for row in rows)
    if column_labels is not None and len(column_labels) != n_columns:
        raise ValueError(f"{len(column_labels)} column labels for {n_columns} columns")
    cell_height = int(rows[0][0].shape[0])
    cells = [[to_uint8(fit_height(image, cell_height)) for image in row] for row in rows]
    font = ImageFont.load_default()
    # A column is wide enough for its widest image and for its label, so labels never overlap.
    column_widths = [max([row[c].shape[1] for row in cells if c < len(row)]
                         + ([_text_size(font, column_labels[c])[0]] if column_labels else []))
                     for c in range(n_columns)]
    label_width = pad + max((_text_size(font, label)[0] for label in row_labels), default=0) if row_labels else 0
    label_height = pad + max((_text_size(font, label)[1] for label in column_labels), default=0) if column_labels else 0
    width = label_width + sum(column_widths) + pad * (n_columns + 1)
    height = label_height + len(rows) * cell_height + pad * (len(rows) + 1)
    sheet = Image.new("RGB", (width, height), tuple(round(c * 255) for c in SHEET_BACKGROUND))
    draw = ImageDraw.Draw(sheet)
    column_x = [label_width + pad + sum(column_widths[:c]) + pad * c for c in range(n_columns)]
    for r, row in enumerate(cells):
        y = label_height + pad + r * (cell_height + pad)
        for c, cell in enumerate(row):
            sheet.paste(Image.fromarray(cell), (column_x[c] + (column_widths[c] - cell.shape[1]) // 2, y))
        if row_labels:
            text_height = _text_size(font, row_labels[r])[1]
            draw.text((pad, y + (cell_height - text_height) // 2), row_labels[r], fill=LABEL_COLOR, font=font)
    for c, label in enumerate(column_labels or ()):
        text_width = _text_size(font, label)[0]
        draw.text((column_x[c] + (column_widths[c] - text_width) // 2, pad // 2), label, fill=LABEL_COLOR, font=font)
    return torch.from_numpy(np.asarray(sheet, dtype=np.float32) / 255.0)


def fit_height(image: torch.Tensor, height: int) -> torch.Tensor:
    """``image`` [H, W, 3] resized (antialiased bilinear) to ``height`` rows, keeping its aspect ratio."""
    image = image.detach().float().cpu()
    if image.shape[0] == height:
        return image
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    return resize_image(image, (height, width)).clamp(0, 1)


def _text_size(font: ImageFont.ImageFont, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return int(right), int(bottom)  # from the drawing origin, so text drawn at (x, y) fits in the box
