"""Staging photos and video frames: EXIF orientation, sizes, the sharpest frame per stretch, display rotation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from splat2splat.errors import InputError
from splat2splat.io import EXIF_ORIENTATION_TAG
from splat2splat.sfm import inputs
from splat2splat.testing.sfm_scene import write_video_av


def pattern(height: int, width: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)


def test_photos_are_turned_upright_by_exif_and_upright_files_are_copied_unchanged(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    stored = pattern(20, 30)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = 6  # stored turned: a viewer rotates it 90 degrees clockwise
    Image.fromarray(stored).save(source / "b_turned.jpg", exif=exif, quality=100)
    for name in ("a.png", "c.png"):
        Image.fromarray(pattern(30, 20, seed=1)).save(source / name)
    (source / "notes.txt").write_text("not an image")
    frames = inputs.stage_photos(source, tmp_path / "staged")
    assert frames.names == ["frame_00001.png", "frame_00002.png", "frame_00003.png"]
    assert frames.sources == ["a.png", "b_turned.jpg", "c.png"]
    assert frames.sizes == [(20, 30)] * 3  # (width, height), upright
    assert (tmp_path / "staged" / "frame_00001.png").read_bytes() == (source / "a.png").read_bytes()
    upright = np.asarray(Image.open(tmp_path / "staged" / "frame_00002.png")).astype(float)
    expected = np.asarray(Image.open(source / "b_turned.jpg")).astype(float)
    assert np.abs(upright - np.rot90(expected, k=-1)).mean() < 1.0  # rotated clockwise, as viewers show it


def test_mixed_sizes_are_refused_with_one_camera_and_accepted_with_one_per_image(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    for k, size in enumerate([(30, 20), (30, 20), (40, 20)]):
        Image.fromarray(pattern(size[1], size[0], k)).save(source / f"{k}.png")
    frames = inputs.stage_photos(source, tmp_path / "staged")
    with pytest.raises(InputError, match=r"different sizes: 30x20 \(2\), 40x20 \(1\); pass --no-single-camera"):
        inputs.check_sizes(frames, source, single_camera=True)
    inputs.check_sizes(frames, source, single_camera=False)


def test_the_sharpest_frame_of_each_stretch_is_kept(tmp_path):
    sharp = [torch.from_numpy(pattern(64, 64, seed=k)).float() / 255 for k in range(12)]
    blurred = [torch.nn.functional.avg_pool2d(f.permute(2, 0, 1)[None], 5, 1, 2)[0].permute(1, 2, 0) for f in sharp]
    # stretches of two frames (12 frames -> 6): the sharp one is first in some, second in others
    order = [blurred[k] if (k % 2 == 0) == (k % 4 < 2) else sharp[k] for k in range(12)]
    video = write_video_av(tmp_path / "clip.mp4", order, fps=12)
    frames = inputs.stage_video(video, tmp_path / "staged", num_frames=6)
    picked = [int(source.split()[2]) for source in frames.sources]
    assert picked == [k for k in range(12) if order[k] is sharp[k]]


def test_display_rotation_is_applied_like_players_do(tmp_path):
    image = torch.zeros(32, 64, 3)
    image[:, :32] = 1.0  # left half white
    video = write_video_av(tmp_path / "portrait.mp4", [image] * 3, fps=3, rotation=90)
    frames = inputs.stage_video(video, tmp_path / "staged", num_frames=3)
    staged = np.asarray(Image.open(tmp_path / "staged" / frames.names[0]).convert("L")).astype(float)
    assert staged.shape == (64, 32) and frames.sizes[0] == (32, 64)
    assert staged[-16:].mean() > 200 and staged[:16].mean() < 50  # ffmpeg's autorotate: white at the bottom


def test_laplacian_variance_prefers_detail():
    flat = np.full((32, 32), 128.0)
    assert inputs.laplacian_variance(flat) == 0.0
    assert inputs.laplacian_variance(pattern(32, 32)[..., 0]) > 100


def test_sixteen_bit_photos_are_scaled_not_clipped(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    for k in range(3):
        grey = (np.random.default_rng(k).random((16, 16)) * 65535).astype(np.uint16)
        Image.fromarray(grey).save(source / f"{k}.png")
    frames = inputs.stage_photos(source, tmp_path / "staged")
    staged = np.asarray(Image.open(tmp_path / "staged" / frames.names[0]))
    expected = np.asarray(Image.open(source / "0.png")).astype(float) / 65535 * 255
    assert staged.shape == (16, 16, 3) and np.abs(staged[..., 0] - expected).max() <= 1.0


def test_a_damaged_photo_is_named_in_one_line(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    for k in range(3):
        Image.fromarray(pattern(32, 32, k)).save(source / f"{k}.jpg", quality=90)
    whole = (source / "1.jpg").read_bytes()
    (source / "1.jpg").write_bytes(whole[: len(whole) // 3])
    with pytest.raises(InputError, match=r"1\.jpg: cannot read image"):
        inputs.stage_photos(source, tmp_path / "staged")
