"""COLMAP reader: binary and text models (written by tests.data.colmap_models), compared with the nerfstudio reader."""

from __future__ import annotations

import math
import shutil
import struct

import numpy as np
import pytest
import torch

from splat2splat.data.distortion import LensDistortion, pixel_grid, sample_image
from splat2splat.data.readers import load_dataset, read_raw_scene
from splat2splat.data.readers.colmap import read_colmap
from splat2splat.data.readers.nerfstudio import read_nerfstudio
from splat2splat.errors import InputError
from splat2splat.io import load_image, save_image
from tests.data.colmap_models import (Model, colmap_scene, model_from_cameras, write_binary_model, write_model,
                                      write_text_model)
from tests.data.scenes import assert_looks_at_target, pattern_image, tiny_cameras, write_nerfstudio_scene

# ---------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("binary", [True, False], ids=["bin", "txt"])
def test_recovers_the_cameras_the_nerfstudio_reader_reads(tmp_path, binary):
    cameras = tiny_cameras(6)
    nerfstudio = read_nerfstudio(write_nerfstudio_scene(tmp_path / "ns", cameras))
    model = model_from_cameras(nerfstudio.cameras)
    rng = np.random.default_rng(0)
    model.xyz, model.rgb = rng.normal(size=(20, 3)), rng.integers(0, 256, size=(20, 3)).astype(np.uint8)
    write_model(model, tmp_path / "ns" / "sparse" / "0", binary)

    raw = read_colmap(tmp_path / "ns", tmp_path / "ns" / "sparse" / "0")

    assert [p.name for p in raw.image_paths] == [p.name for p in nerfstudio.image_paths]
    assert all(p.is_file() for p in raw.image_paths)
    torch.testing.assert_close(raw.cameras.camtoworlds, nerfstudio.cameras.camtoworlds, atol=1e-5, rtol=0)
    for key in ("fx", "fy", "cx", "cy", "width", "height"):
        torch.testing.assert_close(getattr(raw.cameras, key), getattr(nerfstudio.cameras, key))
    assert_looks_at_target(raw.cameras)
    torch.testing.assert_close(raw.points, torch.from_numpy(model.xyz).float())
    torch.testing.assert_close(raw.point_colors, torch.from_numpy(model.rgb).float() / 255)
    assert raw.distortion is None and raw.intrinsics_scale == 1.0


def test_pose_is_inverted_from_world_to_camera(tmp_path):
    """A hand-computed case: 90 degrees about z, t = (1, 2, 3) -> camera centre -R^T t = (-2, 1, -3)."""
    half = math.sqrt(0.5)
    model = Model({1: ("PINHOLE", 8, 6, [10.0, 11.0, 4.0, 3.0])}, [(1, [half, 0.0, 0.0, half], [1.0, 2.0, 3.0], 1, "a.png")])
    write_text_model(model, tmp_path / "sparse")
    (tmp_path / "sparse" / "points3D.txt").unlink()
    raw = read_colmap(tmp_path, tmp_path / "sparse")
    expected = torch.tensor([[0.0, 1.0, 0.0, -2.0], [-1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, -3.0], [0.0, 0.0, 0.0, 1.0]])
    torch.testing.assert_close(raw.cameras.camtoworlds[0], expected, atol=1e-6, rtol=0)
    assert raw.image_paths == [tmp_path / "images" / "a.png"]
    assert raw.points is None  # no points3D file: no points, no error


@pytest.mark.parametrize("binary", [True, False], ids=["bin", "txt"])
@pytest.mark.parametrize("model, extra, expected", [
    ("SIMPLE_PINHOLE", (), None),
    ("SIMPLE_RADIAL", (0.05,), LensDistortion("SIMPLE_RADIAL", k1=0.05)),
    ("RADIAL", (0.05, -0.01), LensDistortion("RADIAL", k1=0.05, k2=-0.01)),
    ("OPENCV", (0.05, -0.01, 0.001, 0.002), LensDistortion("OPENCV", k1=0.05, k2=-0.01, p1=0.001, p2=0.002)),
    ("OPENCV", (0.0, 0.0, 0.0, 0.0), None),  # all-zero coefficients: nothing to undistort
])
def test_camera_models(tmp_path, binary, model, extra, expected):
    root, cameras = colmap_scene(tmp_path, binary, model, extra, n_views=2)
    raw = read_colmap(root, root / "sparse" / "0")
    single_focal = model.startswith("SIMPLE") or model == "RADIAL"
    torch.testing.assert_close(raw.cameras.fy, cameras.fx if single_focal else cameras.fy)
    torch.testing.assert_close(raw.cameras.cx, cameras.cx)
    assert (raw.distortion is None) if expected is None else (raw.distortion == [expected, expected])


def test_uses_images_n_folder_only_when_every_image_is_there(tmp_path):
    root, _ = colmap_scene(tmp_path, binary=True, n_views=3)
    shutil.copytree(root / "images", root / "images_2")
    raw = read_raw_scene(root, downscale=2)
    assert [p.parent.name for p in raw.image_paths] == ["images_2"] * 3 and raw.intrinsics_scale == 0.5
    (root / "images_2" / "frame_00001.png").unlink()
    raw = read_raw_scene(root, downscale=2)
    assert [p.parent.name for p in raw.image_paths] == ["images"] * 3 and raw.intrinsics_scale == 1.0


def test_distorted_images_are_undistorted_when_loaded(tmp_path):
    """Images photographed through an OPENCV lens come out as the pinhole images (up to resampling)."""
    coefficients = (0.25, 0.02, 0.003, -0.002)
    root, cameras = colmap_scene(tmp_path, binary=True, model="OPENCV", extra_params=coefficients, n_views=3)
    lens = LensDistortion("OPENCV", k1=coefficients[0], k2=coefficients[1], p1=coefficients[2], p2=coefficients[3])
    fx, fy, cx, cy = (float(getattr(cameras, key)[0]) for key in ("fx", "fy", "cx", "cy"))
    u, v = pixel_grid(24, 32)
    x, y = lens.undistort((u - cx) / fx, (v - cy) / fy)  # the ideal ray each photographed pixel saw
    for i in range(3):
        save_image(root / "images" / f"frame_{i:05d}.png", sample_image(pattern_image(i), x * fx + cx, y * fy + cy))

    dataset = load_dataset(root, eval_every=0)

    assert dataset.masks is not None  # undoing pincushion distortion leaves the corners without data
    for i in range(3):
        valid = dataset.masks[i].clone()
        valid[:2], valid[-2:], valid[:, :2], valid[:, -2:] = False, False, False, False
        error = (dataset.original(i) - pattern_image(i)).abs().amax(-1)[valid]
        error_of_file = (torch.from_numpy(load_image(root / "images" / f"frame_{i:05d}.png")) - pattern_image(i)).abs()
        assert error_of_file.amax(-1)[valid].max() > 0.05  # the lens moved the pattern noticeably...
        assert error.max() < 0.015, error.max()  # ...and undistortion moves it back (8-bit PNG, two resamplings)
        assert not dataset.masks[i][0, 0] and dataset.masks[i][12, 16]


# -------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("binary", [True, False], ids=["bin", "txt"])
@pytest.mark.parametrize("model", ["FULL_OPENCV", "OPENCV_FISHEYE"])
def test_unsupported_camera_model_names_the_cameras_file(tmp_path, binary, model):
    n_extra = {"FULL_OPENCV": 8, "OPENCV_FISHEYE": 4}[model]
    root, _ = colmap_scene(tmp_path, binary, model, (0.01,) * n_extra, n_views=2)
    with pytest.raises(InputError) as info:
        read_raw_scene(root)
    cameras_file = root / "sparse" / "0" / ("cameras.bin" if binary else "cameras.txt")
    assert str(cameras_file) in str(info.value) and model in str(info.value)


@pytest.mark.parametrize("stem", ["cameras", "images", "points3D"])
def test_truncated_binary_file_names_the_file(tmp_path, stem):
    root, _ = colmap_scene(tmp_path, binary=True, n_views=2)
    sparse = root / "sparse" / "0"
    model = model_from_cameras(tiny_cameras(2))
    model.xyz, model.rgb = np.ones((3, 3)), np.zeros((3, 3), np.uint8)
    write_binary_model(model, sparse)
    path = sparse / f"{stem}.bin"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(InputError, match="truncated") as info:
        read_colmap(root, sparse)
    assert str(path) in str(info.value)


def test_count_larger_than_content_or_trailing_bytes_names_the_file(tmp_path):
    root, _ = colmap_scene(tmp_path, binary=True, n_views=2)
    images = root / "sparse" / "0" / "images.bin"
    data = images.read_bytes()
    images.write_bytes(struct.pack("<Q", 3) + data[8:])  # header claims one image more than there is
    with pytest.raises(InputError, match="truncated") as info:
        read_colmap(root, root / "sparse" / "0")
    assert str(images) in str(info.value)
    images.write_bytes(data + b"\0\0\0")
    with pytest.raises(InputError, match="unexpected bytes") as info:
        read_colmap(root, root / "sparse" / "0")
    assert str(images) in str(info.value)


def test_nan_in_a_pose_names_the_images_file(tmp_path):
    root, _ = colmap_scene(tmp_path, binary=False, n_views=2)
    images = root / "sparse" / "0" / "images.txt"
    lines = images.read_text().splitlines()
    header = lines[1].split()
    header[6] = "nan"  # TY
    lines[1] = " ".join(header)
    images.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="NaN") as info:
        read_colmap(root, root / "sparse" / "0")
    assert str(images) in str(info.value) and "frame_00001.png" in str(info.value)


def test_image_with_undefined_camera_names_the_images_file(tmp_path):
    model = Model({1: ("PINHOLE", 8, 6, [10.0, 11.0, 4.0, 3.0])}, [(1, [1.0, 0, 0, 0], [0.0, 0, 0], 7, "a.png")])
    write_binary_model(model, tmp_path / "sparse")
    with pytest.raises(InputError, match="camera 7") as info:
        read_colmap(tmp_path, tmp_path / "sparse")
    assert str(tmp_path / "sparse" / "images.bin") in str(info.value)


def test_wrong_parameter_count_and_garbage_in_text_name_the_file_and_line(tmp_path):
    sparse = tmp_path / "sparse"
    write_text_model(Model({1: ("PINHOLE", 8, 6, [10.0, 11.0, 4.0])}, []), sparse)
    with pytest.raises(InputError, match=r"line 2: PINHOLE needs 4 parameters, got 3") as info:
        read_colmap(tmp_path, sparse)
    assert str(sparse / "cameras.txt") in str(info.value)
    (sparse / "cameras.txt").write_text("1 PINHOLE 8 six 10 11 4 3\n")
    with pytest.raises(InputError, match="line 1: expected numbers"):
        read_colmap(tmp_path, sparse)


def test_missing_image_file_names_the_image(tmp_path):
    root, _ = colmap_scene(tmp_path, binary=True, n_views=3)
    missing = root / "images" / "frame_00002.png"
    missing.unlink()
    with pytest.raises(InputError, match="missing") as info:
        load_dataset(root)
    assert str(missing) in str(info.value)


# ------------------------------------------------------------------------------------ untrusted content


def images_text(model: Model, points_lines: str) -> str:
    """images.txt with 2D points lines 'all' (COLMAP's layout, some blank), 'none' (left out) or 'blank' (all blank)."""
    lines = ["# IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME", "#   POINTS2D[] as (X, Y, POINT3D_ID)"]
    for k, (image_id, qvec, tvec, camera_id, name) in enumerate(model.images):
        lines.append(" ".join(map(repr, [image_id, *map(float, qvec), *map(float, tvec), camera_id])) + f" {name}")
        if points_lines == "all":
            lines.append("" if k % 2 else "1.5 2.5 -1 3.5 4.5 7 100 20.25 12")
        elif points_lines == "blank":
            lines.append("")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("points_lines", ["all", "none", "blank"])
def test_images_text_with_or_without_points2d_lines_reads_every_image(tmp_path, points_lines):
    """Without POINTS2D lines, skipping every second line used to lose every other image silently."""
    root, cameras = colmap_scene(tmp_path, binary=False, n_views=5)
    model = model_from_cameras(cameras)
    (root / "sparse" / "0" / "images.txt").write_text(images_text(model, points_lines))
    raw = read_colmap(root, root / "sparse" / "0")
    assert [p.name for p in raw.image_paths] == [f"frame_{i:05d}.png" for i in range(5)]
    torch.testing.assert_close(raw.cameras.camtoworlds, cameras.camtoworlds, atol=1e-5, rtol=0)


def test_points_line_that_is_neither_points_nor_an_image_names_the_line(tmp_path):
    root, cameras = colmap_scene(tmp_path, binary=False, n_views=2)
    text = images_text(model_from_cameras(cameras), "all").replace("1.5 2.5 -1 3.5 4.5 7 100 20.25 12", "1.5 2.5 -1 3.5")
    (root / "sparse" / "0" / "images.txt").write_text(text)
    with pytest.raises(InputError, match="line 4: expected IMAGE_ID"):
        read_colmap(root, root / "sparse" / "0")


def test_points3d_count_of_2_to_the_40_is_refused_before_allocating(tmp_path):
    root, _ = colmap_scene(tmp_path, binary=True, n_views=2)
    points = root / "sparse" / "0" / "points3D.bin"
    points.write_bytes(struct.pack("<Q", 1 << 40) + bytes(200))
    with pytest.raises(InputError, match=f"claims {1 << 40} points") as info:
        read_colmap(root, root / "sparse" / "0")
    assert str(info.value).startswith(str(points))


@pytest.mark.parametrize("binary", [True, False], ids=["bin", "txt"])
def test_camera_width_beyond_2_to_the_63_is_an_input_error(tmp_path, binary):
    model = Model({1: ("PINHOLE", (1 << 63) + 5, 24, [30.0, 31.0, 15.5, 12.5])}, [(1, [1.0, 0, 0, 0], [0.0, 0, 0], 1, "a.png")])
    write_model(model, tmp_path / "sparse", binary)
    with pytest.raises(InputError, match="width must be between 1 and 262144 pixels") as info:
        read_colmap(tmp_path, tmp_path / "sparse")
    assert str(info.value).startswith(str(tmp_path / "sparse" / ("cameras.bin" if binary else "cameras.txt")))


@pytest.mark.parametrize("qvec, match", [
    ([2.0, 0.0, 0.0, 0.0], "rotation quaternion of length 2, not 1"),
    ([0.0, 0.0, 0.0, 0.0], "zero rotation quaternion"),
])
def test_quaternion_must_be_unit(tmp_path, qvec, match):
    model = Model({1: ("PINHOLE", 32, 24, [30.0, 31.0, 15.5, 12.5])}, [(1, qvec, [0.0, 0, 0], 1, "a.png")])
    write_text_model(model, tmp_path / "sparse")
    with pytest.raises(InputError, match=match):
        read_colmap(tmp_path, tmp_path / "sparse")


def test_nearly_unit_quaternion_is_normalised(tmp_path):
    half = math.sqrt(0.5)
    model = Model({1: ("PINHOLE", 32, 24, [30.0, 31.0, 15.5, 12.5])},
                  [(1, [half * 1.0005, 0.0, 0.0, half * 1.0005], [0.0, 0, 0], 1, "a.png")])
    write_text_model(model, tmp_path / "sparse")
    rotation = read_colmap(tmp_path, tmp_path / "sparse").cameras.camtoworlds[0, :3, :3]
    torch.testing.assert_close(rotation.T @ rotation, torch.eye(3), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["../../../etc/passwd", "/etc/passwd", "../../outside.png"])
def test_image_names_leading_out_of_the_dataset_are_refused(tmp_path, name):
    root = tmp_path / "dataset"
    model = Model({1: ("PINHOLE", 32, 24, [30.0, 31.0, 15.5, 12.5])}, [(1, [1.0, 0, 0, 0], [0.0, 0, 0], 1, name)])
    write_binary_model(model, root / "sparse")
    with pytest.raises(InputError, match="lies outside the dataset folder.*--allow-paths-outside-data") as info:
        read_raw_scene(root)
    assert str(info.value).startswith(str(root / "sparse" / "images.bin")) and name in str(info.value)
    raw = read_raw_scene(root, allow_outside_paths=True)
    assert raw.image_paths == [root / "images" / name]


def test_symlink_out_of_the_dataset_is_refused(tmp_path):
    root, _ = colmap_scene(tmp_path / "dataset", binary=True, n_views=2)
    outside = tmp_path / "elsewhere.png"
    save_image(outside, pattern_image(0))
    (root / "images" / "frame_00000.png").unlink()
    (root / "images" / "frame_00000.png").symlink_to(outside)
    with pytest.raises(InputError, match="outside the dataset folder"):
        load_dataset(root)
    assert len(load_dataset(root, allow_outside_paths=True)) == 2
