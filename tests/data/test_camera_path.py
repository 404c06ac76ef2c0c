"""nerfstudio camera paths: the cameras a viewer export describes, in the dataset's frame, and bad files."""

from __future__ import annotations

import json
import math

import pytest
import torch

from splat2splat.data.camera_path import read_camera_path
from splat2splat.data.demo import DemoConfig, write_demo_scene
from splat2splat.data.readers import load_dataset
from splat2splat.errors import InputError
from tests.data.scenes import nerfstudio_camera_path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return load_dataset(write_demo_scene(tmp_path_factory.mktemp("demo"), DemoConfig(n_views=8, image_size=24,
                                                                                     n_points=100)))


def assert_same_cameras(read, expected):
    assert torch.allclose(read.camtoworlds, expected.camtoworlds, atol=1e-4)
    for name in ("fx", "fy", "cx", "cy"):
        assert torch.allclose(getattr(read, name), getattr(expected, name), atol=1e-3), name
    assert torch.equal(read.width, expected.width) and torch.equal(read.height, expected.height)


def test_a_path_of_dataset_views_reads_back_as_those_cameras(dataset, tmp_path):
    views = [0, 3, 5]
    (tmp_path / "path.json").write_text(json.dumps(nerfstudio_camera_path(dataset, views, fps=12)))
    cameras, fps = read_camera_path(tmp_path / "path.json")
    assert fps == 12
    assert_same_cameras(dataset.normalization.cameras_to_normalized(cameras), dataset.cameras[views])


def test_the_dataparser_transform_of_nerfstudios_viewer_frame_is_undone(dataset, tmp_path):
    """A path drawn in nerfstudio's normalised frame (scale * (R x + t)) with its dataparser_transforms.json."""
    path = nerfstudio_camera_path(dataset, [1, 2])
    angle, scale, shift = 0.7, 0.35, torch.tensor([0.2, -1.0, 0.5], dtype=torch.float64)
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]],
                            dtype=torch.float64)
    for camera in path["camera_path"]:
        pose = torch.tensor(camera["camera_to_world"], dtype=torch.float64).view(4, 4)
        pose[:3, :3] = rotation @ pose[:3, :3]
        pose[:3, 3] = scale * (rotation @ pose[:3, 3] + shift)
        camera["camera_to_world"] = pose.flatten().tolist()
    (tmp_path / "path.json").write_text(json.dumps(path))
    transform = torch.cat([rotation, shift[:, None]], dim=1).tolist()
    (tmp_path / "dataparser_transforms.json").write_text(json.dumps({"transform": transform, "scale": scale}))
    cameras, _ = read_camera_path(tmp_path / "path.json", tmp_path / "dataparser_transforms.json")
    assert_same_cameras(dataset.normalization.cameras_to_normalized(cameras), dataset.cameras[[1, 2]])


@pytest.mark.parametrize("change, problem", [
    (lambda p: p.pop("camera_path"), "needs a non-empty 'camera_path' list"),
    (lambda p: p.update(camera_path=[]), "needs a non-empty 'camera_path' list"),
    (lambda p: p.update(camera_type="fisheye"), "only perspective camera paths"),
    (lambda p: p.update(render_width=10 ** 9), "'render_width' must be a whole number of pixels"),
    (lambda p: p.update(render_height=0), "'render_height' must be a whole number of pixels"),
    (lambda p: p["camera_path"][0].update(fov=0), "camera_path[0].fov must be between 0 and 180"),
    (lambda p: p["camera_path"][1].update(fov="wide"), "camera_path[1].fov must be 1 finite number"),
    (lambda p: p["camera_path"][0].update(camera_to_world=[1.0] * 12), "camera_to_world must be 16 finite numbers"),
    (lambda p: p["camera_path"][0]["camera_to_world"].__setitem__(3, float("nan")), "16 finite numbers"),
])
def test_bad_camera_paths_are_one_line_naming_the_file(dataset, tmp_path, change, problem):
    path = nerfstudio_camera_path(dataset, [0, 1])
    change(path)
    (tmp_path / "path.json").write_text(json.dumps(path))
    with pytest.raises(InputError) as error:
        read_camera_path(tmp_path / "path.json")
    assert str(error.value).startswith(str(tmp_path / "path.json")) and problem in str(error.value)
    assert "\n" not in str(error.value)
