"""NeRF-synthetic (Blender) reader on a 3-view synthetic set with RGBA pngs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from splat2splat.data.readers import load_dataset, read_raw_scene
from splat2splat.errors import InputError
from tests.data.scenes import FOV_X, HEIGHT, WIDTH, assert_looks_at_target, pattern_image, tiny_cameras, write_blender_scene


def test_reads_cameras_images_and_split(tmp_path):
    root = write_blender_scene(tmp_path, {"train": [0, 1], "val": [2], "test": [3]})
    raw = read_raw_scene(root)  # detected by transforms_train.json

    assert [p.relative_to(root).as_posix() for p in raw.image_paths] == ["train/r_0.png", "train/r_1.png", "test/r_3.png"]
    assert raw.split == {"train": [0, 1], "eval": [2]}  # eval = the test split; val is left out
    expected = tiny_cameras(4)
    torch.testing.assert_close(raw.cameras.camtoworlds, expected.camtoworlds[[0, 1, 3]])
    assert_looks_at_target(raw.cameras)
    focal = 0.5 * WIDTH / math.tan(0.5 * FOV_X)
    torch.testing.assert_close(raw.cameras.fx, torch.full((3,), focal))
    torch.testing.assert_close(raw.cameras.fy, torch.full((3,), focal))
    torch.testing.assert_close(raw.cameras.cx, torch.full((3,), WIDTH / 2))
    torch.testing.assert_close(raw.cameras.cy, torch.full((3,), HEIGHT / 2))
    assert raw.cameras.width.tolist() == [WIDTH] * 3 and raw.cameras.height.tolist() == [HEIGHT] * 3


def test_val_split_evaluates_when_there_is_no_test_split(tmp_path):
    raw = read_raw_scene(write_blender_scene(tmp_path, {"train": [0, 1], "val": [2]}))
    assert raw.split == {"train": [0, 1], "eval": [2]} and raw.image_paths[2].name == "r_2.png"
    raw = read_raw_scene(write_blender_scene(tmp_path / "only_train", {"train": [0, 1, 2]}))
    assert raw.split == {"train": [0, 1, 2], "eval": []}


def test_alpha_is_composited_on_the_background(tmp_path):
    root = write_blender_scene(tmp_path, {"train": [0, 1], "test": [2]})
    dataset = load_dataset(root, background=(0.0, 0.0, 1.0))
    assert dataset.train_indices == [0, 1] and dataset.eval_indices == [2]
    image = dataset.original(2)
    assert image.shape == (HEIGHT, WIDTH, 3)
    torch.testing.assert_close(image[:, : WIDTH // 4], torch.tensor([0.0, 0.0, 1.0]).expand(HEIGHT, WIDTH // 4, 3))
    torch.testing.assert_close(image[:, WIDTH // 4:], pattern_image(2)[:, WIDTH // 4:], atol=1 / 255, rtol=0)


def test_malformed_json_names_the_file(tmp_path):
    root = write_blender_scene(tmp_path, {"train": [0, 1], "test": [2]})
    (root / "transforms_test.json").write_text('{"camera_angle_x": 0.9, "frames": [')
    with pytest.raises(InputError, match="malformed JSON") as info:
        read_raw_scene(root)
    assert str(root / "transforms_test.json") in str(info.value)


def test_nan_in_a_pose_names_the_file(tmp_path):
    root = write_blender_scene(tmp_path, {"train": [0, 1]})
    meta = json.loads((root / "transforms_train.json").read_text())
    meta["frames"][1]["transform_matrix"][0][3] = float("nan")
    (root / "transforms_train.json").write_text(json.dumps(meta))  # Python writes the non-standard NaN literal
    with pytest.raises(InputError, match="frame 1: 'transform_matrix' contains NaN") as info:
        read_raw_scene(root)
    assert str(root / "transforms_train.json") in str(info.value)


@pytest.mark.parametrize("field, value, problem", [
    ("camera_angle_x", None, "'camera_angle_x' must be a number"),
    ("camera_angle_x", "wide", "'camera_angle_x' must be a number"),
    ("camera_angle_x", 4.0, "below pi"),
    ("frames", {"r_0": {}}, "no 'frames' list"),
])
def test_bad_fields_name_the_file(tmp_path, field, value, problem):
    root = write_blender_scene(tmp_path, {"train": [0, 1]})
    meta = json.loads((root / "transforms_train.json").read_text())
    meta[field] = value
    (root / "transforms_train.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=problem) as info:
        read_raw_scene(root)
    assert str(root / "transforms_train.json") in str(info.value)


def test_missing_images_name_the_image(tmp_path):
    root = write_blender_scene(tmp_path, {"train": [0, 1], "test": [2]})
    (root / "train" / "r_0.png").unlink()  # the first image also gives the split's size
    with pytest.raises(InputError, match="missing") as info:
        read_raw_scene(root)
    assert str(root / "train" / "r_0.png") in str(info.value)
    root = write_blender_scene(tmp_path / "second", {"train": [0, 1], "test": [2]})
    (root / "train" / "r_1.png").unlink()
    with pytest.raises(InputError, match="missing") as info:
        load_dataset(root)
    assert str(root / "train" / "r_1.png") in str(info.value)


def test_image_path_leading_out_of_the_dataset_is_refused(tmp_path):
    root = write_blender_scene(tmp_path / "lego", {"train": [0, 1]})
    meta = json.loads((root / "transforms_train.json").read_text())
    meta["frames"][1]["file_path"] = "../../../etc/passwd"
    (root / "transforms_train.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="frame 1: image path '.*etc/passwd.png' lies outside the dataset folder") as info:
        read_raw_scene(root)
    assert str(info.value).startswith(str(root / "transforms_train.json"))


def test_non_orthonormal_rotation_is_refused(tmp_path):
    root = write_blender_scene(tmp_path, {"train": [0, 1]})
    meta = json.loads((root / "transforms_train.json").read_text())
    meta["frames"][0]["transform_matrix"][0][:3] = [0.5 * v for v in meta["frames"][0]["transform_matrix"][0][:3]]
    (root / "transforms_train.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"frame 0: 'transform_matrix' has a rotation part that is not orthonormal"):
        read_raw_scene(root)
