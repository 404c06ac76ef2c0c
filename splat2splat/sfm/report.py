"""What ``process`` tells its user: registered and dropped views, errors, timings, and two pictures.

``frames.png`` is a contact sheet of every input frame (green border: registered, red: dropped);
``camera_path.png`` draws the cameras from above (looking down the cameras' mean up direction) over the
sparse points, numbered in capture order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from splat2splat.io import save_image
from splat2splat.media import contact_sheet

REGISTERED_COLOR = (40, 160, 60)
DROPPED_COLOR = (210, 40, 40)
THUMB_HEIGHT = 72
SHEET_COLUMNS = 10


def frames_sheet(path: Path, images: list[Path], registered: list[bool]) -> None:
    """A grid of thumbnails, bordered green (registered) or red (dropped)."""
    thumbs = [_bordered_thumb(image, ok) for image, ok in zip(images, registered)]
    rows = [thumbs[k:k + SHEET_COLUMNS] for k in range(0, len(thumbs), SHEET_COLUMNS)]
    labels = [f"{k + 1}-{min(k + SHEET_COLUMNS, len(thumbs))}" for k in range(0, len(thumbs), SHEET_COLUMNS)]
    dropped = registered.count(False)
    header = f"green: registered ({len(registered) - dropped})  red: dropped ({dropped})"
    sheet = contact_sheet(rows, row_labels=labels)
    save_image(path, _with_header(sheet, header))


def _bordered_thumb(path: Path, registered: bool, border: int = 3) -> torch.Tensor:
    with Image.open(path) as im:
        im = im.convert("RGB")
        width = max(1, round(im.width * THUMB_HEIGHT / im.height))
        thumb = im.resize((width, THUMB_HEIGHT), Image.Resampling.BILINEAR)
    framed = Image.new("RGB", (width + 2 * border, THUMB_HEIGHT + 2 * border),
                       REGISTERED_COLOR if registered else DROPPED_COLOR)
    framed.paste(thumb, (border, border))
    return torch.from_numpy(np.asarray(framed, dtype=np.float32) / 255.0)


def _with_header(sheet: torch.Tensor, text: str) -> torch.Tensor:
    image = Image.fromarray((sheet.numpy() * 255 + 0.5).astype(np.uint8))
    canvas = Image.new("RGB", (image.width, image.height + 16), (245, 245, 245))
    canvas.paste(image, (0, 16))
    ImageDraw.Draw(canvas).text((4, 2), text, fill=(20, 20, 20), font=ImageFont.load_default())
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)


def top_view_axes(camtoworlds: np.ndarray) -> np.ndarray:
    """Two orthonormal axes [2, 3] of the plane seen from above: perpendicular to the cameras' mean up."""
    up = -camtoworlds[:, :3, 1].mean(0)  # OpenCV cameras: -y is up in the image
    up = up / max(np.linalg.norm(up), 1e-12)
    seed = np.eye(3)[np.argmin(np.abs(up))]
    first = np.cross(up, seed)
    first /= np.linalg.norm(first)
    return np.stack([first, np.cross(up, first)])


def camera_path_plot(path: Path, camtoworlds: np.ndarray, points: np.ndarray, size: int = 800) -> None:
    """Top view of the camera centres (in capture order, joined), their viewing directions and the points."""
    axes = top_view_axes(camtoworlds)
    centres = camtoworlds[:, :3, 3] @ axes.T
    looks = camtoworlds[:, :3, 2] @ axes.T
    cloud = points @ axes.T if len(points) else np.zeros((0, 2))
    if len(cloud) > 20000:
        cloud = cloud[np.random.default_rng(0).choice(len(cloud), 20000, replace=False)]
    low, high = centres.min(0), centres.max(0)
    if len(cloud):  # the central 98 % of the points: a few stray far points would shrink the drawing
        lo, hi = np.percentile(cloud, 1, axis=0), np.percentile(cloud, 99, axis=0)
        cloud = cloud[np.all((cloud >= lo) & (cloud <= hi), axis=1)]
        low, high = np.minimum(low, lo), np.maximum(high, hi)
    span = max(float((high - low).max()), 1e-9)
    margin = 40
    scale = (size - 2 * margin) / span

    def pixel(xy: np.ndarray) -> tuple[float, float]:
        return (margin + (xy[0] - low[0]) * scale, size - margin - (xy[1] - low[1]) * scale)

    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for xy in cloud:
        x, y = pixel(xy)
        draw.point((x, y), fill=(170, 170, 170))
    arrow = 0.06 * span
    for centre, look in zip(centres, looks):
        norm = np.linalg.norm(look)
        if norm > 1e-9:
            draw.line([pixel(centre), pixel(centre + look / norm * arrow)], fill=(230, 140, 30), width=1)
    draw.line([pixel(c) for c in centres], fill=(40, 90, 200), width=1)
    for k, centre in enumerate(centres):
        x, y = pixel(centre)
        colour = (0, 150, 0) if k == 0 else (40, 90, 200)
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    font = ImageFont.load_default()
    x, y = pixel(centres[0])
    draw.text((x + 5, y - 12), "start", fill=(0, 120, 0), font=font)
    draw.text((8, 8), f"camera path from above: {len(centres)} cameras (blue, in order), view directions (orange), "
                      f"{len(points)} points (grey)", fill=(20, 20, 20), font=font)
    save_image(path, np.asarray(image, dtype=np.float32) / 255.0)


def summary_lines(report: dict) -> list[str]:
    """The report in a few printed lines."""
    lines = [f"registered {report['registered']} of {report['views']} views"
             + (f"; dropped: {', '.join(report['dropped'][:10])}" + (" ..." if len(report['dropped']) > 10 else "")
                if report["dropped"] else ""),
             f"{report['points']} points, mean reprojection error {report['reprojection_error_px']:.3f} px, "
             f"matching {report['matching']}, camera {report['camera_model']}"
             f"{' (shared)' if report['single_camera'] else ' (one per image)'}"]
    lines.append("time: " + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in report["seconds"].items())
                 + (f" ({', '.join(report['resumed'])}: in the interrupted run)" if report.get("resumed") else ""))
    return lines
