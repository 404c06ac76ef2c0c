"""The frames structure from motion sees: a photo folder's images turned upright, or frames picked from a video.

Photos are copied byte for byte when they are already upright JPEG/PNG files, otherwise re-encoded upright as
PNG (EXIF orientation applied), so COLMAP and every later reader see the picture a viewer shows. A video is
decoded once with PyAV; its frames are cut into ``num_frames`` equal stretches and the sharpest frame of each
(variance of the Laplacian) is kept, turned by the stream's display rotation (how phones store portrait video).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

from splat2splat.errors import InputError
from splat2splat.io import EXIF_ORIENTATION_TAG, image_to_array, to_uint8

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
_COPYABLE = (".jpg", ".jpeg", ".png")
MIN_VIEWS = 3
SHARPNESS_WIDTH = 480
# FFmpeg opens any text file as "tty" (ANSI art rendered as frames): not a video anyone meant
_NOT_VIDEO_FORMATS = ("tty",)
_TEXT_CODECS = ("ansi", "bintext", "xbin", "idf")  # frames are compared for sharpness at this width (a full-size Laplacian is slow)

# progress(advance, total): called as frames are staged; total is None until known
Progress = Callable[[int, "int | None"], None]


@dataclass
class StagedFrames:
    """Frames written to ``folder`` as frame_00001.ext, ... (names in order) with where each came from."""

    folder: Path
    names: list[str]
    sources: list[str]  # the photo's file name, or "frame N at T s" of the video
    sizes: list[tuple[int, int]]  # (width, height), upright
    from_video: bool


def staged_name(k: int, suffix: str) -> str:
    """nerfstudio's frame names: frame_00001.png for the first."""
    return f"frame_{k + 1:05d}{suffix}"


def image_files(folder: Path) -> list[Path]:
    """The images directly in ``folder`` (hidden files skipped), sorted by name."""
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as error:
        raise InputError(folder, f"cannot list the folder ({error.strerror or error})") from None
    return [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()]


def stage_photos(folder: Path, target: Path, progress: Progress | None = None) -> StagedFrames:
    files = image_files(folder)
    if not files:
        raise InputError(folder, f"no images ({' '.join(IMAGE_SUFFIXES)}) in this folder")
    if len(files) < MIN_VIEWS:
        raise InputError(folder, f"only {len(files)} image{'s' if len(files) > 1 else ''}; structure from motion "
                                 f"needs at least {MIN_VIEWS} overlapping views (20 or more work best)")
    target.mkdir(parents=True, exist_ok=True)
    names, sizes = [], []
    for k, path in enumerate(files):
        names.append(_stage_photo(path, target, k, sizes))
        if progress:
            progress(1, len(files))
    return StagedFrames(target, names, [p.name for p in files], sizes, from_video=False)


def _stage_photo(path: Path, target: Path, k: int, sizes: list[tuple[int, int]]) -> str:
    """Copy ``path`` (an upright 8-bit JPEG/PNG) or write it upright as PNG; returns the staged name."""
    try:
        with Image.open(path) as im:
            im.load()  # decoded once here, so a damaged file is named now and not skipped by COLMAP later
            orientation = im.getexif().get(EXIF_ORIENTATION_TAG, 1)
            copy = orientation in (None, 1) and path.suffix.lower() in _COPYABLE and im.mode in ("RGB", "L")
            # through image_to_array: 16-bit and float images scaled to 8 bits, not clipped by convert("RGB")
            upright = None if copy else Image.fromarray(to_uint8(image_to_array(ImageOps.exif_transpose(im))[..., :3]))
            size = im.size
    except Exception as error:  # PIL raises many types for damaged files
        detail = error.strerror if isinstance(error, OSError) and error.strerror else f"{type(error).__name__}: {error}"
        raise InputError(path, f"cannot read image ({detail})") from None
    if upright is None:
        name = staged_name(k, path.suffix.lower())
        shutil.copyfile(path, target / name)
    else:
        name, size = staged_name(k, ".png"), upright.size
        upright.save(target / name)
    sizes.append(size)
    return name


def check_sizes(frames: StagedFrames, source: Path, single_camera: bool) -> None:
    """One shared camera needs one image size."""
    counts: dict[tuple[int, int], int] = {}
    for size in frames.sizes:
        counts[size] = counts.get(size, 0) + 1
    if single_camera and len(counts) > 1:
        listed = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sorted(counts.items(), key=lambda item: -item[1]))
        raise InputError(source, f"images have different sizes: {listed}; pass --no-single-camera to give each "
                                 f"image its own camera, or give them one size")


def laplacian_variance(gray: np.ndarray) -> float:
    """Sharpness: the variance of the 4-neighbour Laplacian of a greyscale image (higher = sharper)."""
    g = gray.astype(np.float32)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]
    return float(lap.var())


def upright(array: np.ndarray, rotation: int) -> np.ndarray:
    """A decoded frame turned as the display matrix says (``rotation``: degrees counter-clockwise, PyAV's)."""
    return np.ascontiguousarray(np.rot90(array, k=(round(rotation / 90)) % 4))


def stage_video(video: Path, target: Path, num_frames: int, progress: Progress | None = None) -> StagedFrames:
    """Decode ``video`` and write the sharpest frame of each of ``num_frames`` equal stretches."""
    import av

    if num_frames < MIN_VIEWS:
        raise InputError(None, f"--num-frames {num_frames}: must be at least {MIN_VIEWS}")
    container = _open_video(video)
    target.mkdir(parents=True, exist_ok=True)
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        total = _frame_count(video, stream)
        if progress:
            progress(0, total)
        picker = _SharpestPerStretch(target, min(num_frames, total), total)
        decoded = 0
        try:
            for frame in container.decode(stream):
                picker.offer(decoded, frame)
                decoded += 1
                if progress:
                    progress(1, total)
        except av.error.FFmpegError as error:
            raise InputError(video, f"is damaged: decoding failed after {decoded} of about {total} frames "
                                    f"({error}); re-encode or trim the video and try again") from None
        picker.flush()
    if decoded == 0:
        raise InputError(video, "has no decodable video frames")
    if len(picker.names) < MIN_VIEWS:
        raise InputError(video, f"gave only {len(picker.names)} frames; structure from motion needs at least "
                                f"{MIN_VIEWS} (a longer video)")
    return StagedFrames(target, picker.names, picker.sources, picker.sizes, from_video=True)


def _open_video(video: Path):
    import av

    if not video.is_file():
        raise InputError(video, "does not exist (pass a folder of images or a video file)")
    try:
        container = av.open(str(video))
    except av.error.FFmpegError as error:
        raise InputError(video, f"cannot be read as a video or image folder ({error.strerror or error})") from None
    if not container.streams.video:
        container.close()
        raise InputError(video, "has no video stream")
    if container.format.name in _NOT_VIDEO_FORMATS or container.streams.video[0].codec_context.name in _TEXT_CODECS:
        container.close()
        raise InputError(video, "cannot be read as a video or image folder (FFmpeg sees text, not a video)")
    return container


def _frame_count(video: Path, stream) -> int:
    """The stream's frame count: from the header, else from its duration and rate, else by counting packets."""
    if stream.frames:
        return int(stream.frames)
    if stream.duration and stream.time_base and stream.average_rate:
        return max(1, round(float(stream.duration * stream.time_base * stream.average_rate)))
    import av

    count = 0
    try:
        with av.open(str(video)) as container:
            for packet in container.demux(container.streams.video[0]):
                count += packet.size > 0
    except av.error.FFmpegError as error:
        raise InputError(video, f"is damaged ({error})") from None
    if count == 0:
        raise InputError(video, "has no video frames")
    return count


class _SharpestPerStretch:
    """Keeps, for each stretch of frames, the sharpest one seen so far and writes it when the stretch ends."""

    def __init__(self, target: Path, count: int, total: int):
        self.target, self.count, self.total = target, max(1, count), max(1, total)
        self.names: list[str] = []
        self.sources: list[str] = []
        self.sizes: list[tuple[int, int]] = []
        self.stretch = -1
        self.best: tuple[float, int, object] | None = None

    def offer(self, index: int, frame) -> None:
        stretch = min(index * self.count // self.total, self.count - 1)
        if stretch != self.stretch:
            self.flush()
            self.stretch = stretch
        scale = min(1.0, SHARPNESS_WIDTH / frame.width)
        small = frame.reformat(width=max(8, round(frame.width * scale)), height=max(8, round(frame.height * scale)),
                               format="gray")
        score = laplacian_variance(small.to_ndarray())
        if self.best is None or score > self.best[0]:
            self.best = (score, index, frame)

    def flush(self) -> None:
        if self.best is None:
            return
        _, index, frame = self.best
        rgb = upright(frame.to_ndarray(format="rgb24"), int(frame.rotation or 0))
        name = staged_name(len(self.names), ".png")
        Image.fromarray(rgb).save(self.target / name, compress_level=1)
        time = f" at {float(frame.time):.2f} s" if frame.time is not None else ""
        self.names.append(name)
        self.sources.append(f"video frame {index}{time}")
        self.sizes.append((rgb.shape[1], rgb.shape[0]))
        self.best = None
