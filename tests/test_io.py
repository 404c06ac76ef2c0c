"""Atomic writes (all or nothing, usual permissions), image loading of every PIL mode, PLY size checks."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from PIL import Image

from splat2splat.errors import InputError
from splat2splat.io import atomic_write, load_image, write_bytes
from splat2splat.ply_header import check_ply_sizes


def test_written_file_gets_the_usual_permissions_not_mkstemps_0600(tmp_path):
    previous = os.umask(0o022)
    try:
        write_bytes(tmp_path / "scene.ply", b"data")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "scene.ply").stat().st_mode) == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write(b"half")
            raise RuntimeError("crash")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


# ------------------------------------------------------------------------------------------ load_image


def test_16_bit_grey_png_is_scaled_not_clipped_to_white(tmp_path):
    from tests.data.scenes import write_png16

    grey = np.array([[0, 1000, 32768], [50000, 65535, 20000]], np.uint16)
    write_png16(tmp_path / "grey16.png", grey)
    image = load_image(tmp_path / "grey16.png")
    assert image.shape == (2, 3, 3)
    np.testing.assert_allclose(image, np.repeat(grey[..., None] / 65535.0, 3, -1), atol=1e-6)


def test_16_bit_rgb_png_keeps_its_colours(tmp_path):
    from tests.data.scenes import write_png16

    rgb = np.array([[[1000, 30000, 65535], [65535, 0, 40000]]], np.uint16)
    write_png16(tmp_path / "rgb16.png", rgb)
    image = load_image(tmp_path / "rgb16.png")
    assert image.shape == (1, 2, 3)
    np.testing.assert_allclose(image, rgb / 65535.0, atol=1 / 255)  # PIL keeps 8 of the 16 bits


@pytest.mark.parametrize("mode", ["L", "LA", "P", "CMYK", "I", "I;16", "1", "RGBA"])
def test_every_pil_mode_becomes_rgb_or_rgba_in_0_1(tmp_path, mode):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[:, 3:] = (200, 100, 50)
    base = Image.fromarray(rgb)
    if mode in ("I", "I;16"):
        # 16-bit values: a mid grey must come out as a mid grey, not clipped to white.
        image = Image.fromarray(np.full((4, 6), 32768, np.uint16 if mode == "I;16" else np.int32), mode)
    else:
        image = base.convert(mode) if mode != "LA" else base.convert("RGBA").convert(mode)
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I", "I;16") else "x.png")
    image.save(path)
    array = load_image(path)
    assert array.dtype == np.float32 and array.shape[:2] == (4, 6) and array.shape[2] == (4 if "A" in mode else 3)
    assert array.min() >= 0 and array.max() <= 1
    expected_grey = {"I": 0.5, "I;16": 0.5}.get(mode)
    if expected_grey is not None:
        np.testing.assert_allclose(array, expected_grey, atol=1e-4)
    elif mode != "1":
        assert abs(float(array[0, 0, 0])) < 0.02 and float(array[0, 5, 0]) > 0.3  # black left, orange-ish right


def test_palette_transparency_becomes_alpha(tmp_path):
    image = Image.new("P", (4, 2))
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((3, 1), 1)
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png", transparency=0)
    array = load_image(tmp_path / "p.png")
    assert array.shape == (2, 4, 4)
    assert array[0, 0, 3] == 0.0 and array[1, 3, 3] == 1.0 and array[1, 3, 0] == 1.0


@pytest.mark.parametrize("orientation, turn", [(1, 0), (3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(tmp_path, orientation, turn):
    """Orientation 6 means 'turn 90 degrees clockwise to show it' (np.rot90 k=-1), 8 counter-clockwise."""
    from tests.data.scenes import pattern_image, save_with_exif_orientation

    stored = pattern_image(0, 24, 32)
    save_with_exif_orientation(tmp_path / "photo.jpg", stored, orientation)
    image = load_image(tmp_path / "photo.jpg")
    upright = np.rot90(stored.numpy(), k=turn)
    assert image.shape == upright.shape
    assert np.abs(image - upright).max() < 0.08  # JPEG
    if turn != 0:
        assert np.abs(image - np.rot90(upright, 2)).max() > 0.2  # the opposite turn would be visibly wrong


def test_unreadable_image_is_one_input_error(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    with pytest.raises(InputError, match="cannot read image") as info:
        load_image(tmp_path / "bad.png")
    assert str(info.value).startswith(str(tmp_path / "bad.png"))


# ----------------------------------------------------------------------------------------- PLY headers


@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian"])
def test_ply_claiming_more_vertices_than_the_file_holds_is_refused_before_allocating(tmp_path, fmt):
    path = tmp_path / "points.ply"
    path.write_bytes(f"ply\nformat {fmt} 1.0\nelement vertex 1000000000000\nproperty float x\n"
                     "property float y\nproperty float z\nend_header\n".encode() + b"0 0 0\n" * 3)
    with pytest.raises(InputError, match="claims 1000000000000 vertex") as info:
        check_ply_sizes(path)
    assert str(info.value).startswith(str(path))


def test_ply_size_check_accepts_files_that_hold_what_they_claim(tmp_path):
    import plyfile

    vertex = np.zeros(5, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    faces = np.array([([0, 1, 2],), ([],)], dtype=[("vertex_indices", "O")])
    for text in (False, True):
        path = tmp_path / f"mesh_{text}.ply"
        plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex"), plyfile.PlyElement.describe(faces, "face")],
                        text=text).write(str(path))
        check_ply_sizes(path)  # no error
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - (len(data) - data.index(b"end_header") - 11) // 2])
        with pytest.raises(InputError, match="claims 5 vertex, 2 face"):
            check_ply_sizes(path)


def test_a_full_disk_while_writing_names_the_file_not_its_temp_copy(tmp_path):
    import errno

    from splat2splat.io import atomic_write

    target = tmp_path / "scene.ply"
    with pytest.raises(OSError) as error:
        with atomic_write(target) as f:
            f.write(b"part")
            raise OSError(errno.ENOSPC, "No space left on device")  # what a write to a full disk raises
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []
