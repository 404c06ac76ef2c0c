"""nerfstudio transforms.json reader: conventions, optional features and every malformed case."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
import torch

from splat2splat.data.distortion import LensDistortion
from splat2splat.data.readers import load_dataset
from splat2splat.data.readers.nerfstudio import read_nerfstudio
from splat2splat.errors import InputError
from splat2splat.io import save_image
from tests.data.scenes import HEIGHT, WIDTH, assert_looks_at_target, tiny_cameras, write_nerfstudio_scene

N_VIEWS = 4


@pytest.fixture
def scene(tmp_path) -> Path:
    """A 4-view nerfstudio scene with shared intrinsics; returns its transforms.json."""
    return write_nerfstudio_scene(tmp_path, tiny_cameras(N_VIEWS))


def edit(json_path: Path, change: Callable[[dict], None]) -> None:
    meta = json.loads(json_path.read_text())
    change(meta)
    json_path.write_text(json.dumps(meta))  # json.dumps writes NaN / Infinity literals, as some tools do


def test_reads_opengl_poses_as_opencv_with_shared_intrinsics(scene):
    raw = read_nerfstudio(scene.parent)
    expected = tiny_cameras(N_VIEWS)
    torch.testing.assert_close(raw.cameras.camtoworlds, expected.camtoworlds)
    assert_looks_at_target(raw.cameras)
    for key in ("fx", "fy", "cx", "cy", "width", "height"):
        torch.testing.assert_close(getattr(raw.cameras, key), getattr(expected, key))
    assert raw.image_paths == [scene.parent / "images" / f"frame_{i:05d}.png" for i in range(N_VIEWS)]
    assert raw.source == scene and raw.mask_paths is None and raw.distortion is None and raw.frame_transform is None
    assert read_nerfstudio(scene).image_paths == raw.image_paths  # the json file itself works too


def test_per_frame_intrinsics_override_shared_ones(scene):
    def per_frame(meta):
        meta["frames"][1].update({"fl_x": 40.0, "cy": 10.0})
        del meta["fl_y"]
        for frame in meta["frames"]:
            frame["fl_y"] = 33.0

    edit(scene, per_frame)
    raw = read_nerfstudio(scene)
    assert raw.cameras.fx.tolist() == [30.0, 40.0, 30.0, 30.0]
    assert raw.cameras.cy.tolist() == [12.5, 10.0, 12.5, 12.5]
    assert raw.cameras.fy.tolist() == [33.0] * N_VIEWS


def test_applied_transform_is_kept_and_poses_stay_in_the_file_frame(scene):
    applied = [[1.0, 0.0, 0.0, 0.5], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 2.0]]  # what ns-process-data writes: 3x4
    edit(scene, lambda meta: meta.update(applied_transform=applied))
    raw = read_nerfstudio(scene)
    torch.testing.assert_close(raw.frame_transform, torch.tensor(applied + [[0.0, 0.0, 0.0, 1.0]]))
    torch.testing.assert_close(raw.cameras.camtoworlds, tiny_cameras(N_VIEWS).camtoworlds)
    dataset = load_dataset(scene.parent)
    torch.testing.assert_close(dataset.frame_transform, raw.frame_transform)


def test_uses_images_n_only_when_every_view_has_one(scene):
    root = scene.parent
    for i in range(N_VIEWS):
        save_image(root / "images_2" / f"frame_{i:05d}.png", torch.zeros(HEIGHT // 2, WIDTH // 2, 3))
    raw = read_nerfstudio(root, downscale=2)
    assert {p.parent.name for p in raw.image_paths} == {"images_2"} and raw.intrinsics_scale == 0.5
    assert {p.parent.name for p in read_nerfstudio(root, downscale=4).image_paths} == {"images"}
    (root / "images_2" / "frame_00003.png").unlink()
    raw = read_nerfstudio(root, downscale=2)
    assert {p.parent.name for p in raw.image_paths} == {"images"} and raw.intrinsics_scale == 1.0


def test_optional_masks_and_their_shrunk_copies(scene):
    root = scene.parent
    mask = torch.ones(HEIGHT, WIDTH, 3)
    mask[:, :8] = 0.0
    save_image(root / "masks" / "m1.png", mask)
    save_image(root / "masks" / "m3.png", mask)
    save_image(root / "masks_2" / "m3.png", mask[::2, ::2])

    def add_masks(meta):
        meta["frames"][1]["mask_path"] = "masks/m1.png"
        meta["frames"][3]["mask_path"] = "masks/m3.png"

    edit(scene, add_masks)
    raw = read_nerfstudio(root, downscale=2)
    assert raw.mask_paths == [None, root / "masks" / "m1.png", None, root / "masks_2" / "m3.png"]
    dataset = load_dataset(root)
    assert dataset.masks[0] is None and dataset.masks[1].shape == (HEIGHT, WIDTH)
    assert not dataset.masks[1][:, :8].any() and dataset.masks[1][:, 8:].all()


def test_opencv_distortion_is_handed_to_the_dataset(scene):
    def distort(meta):
        meta.update(k1=0.1, p2=0.01)
        meta["frames"][0].update(k1=0.0, p2=0.0)  # a per-frame value (even zero) wins

    edit(scene, distort)
    raw = read_nerfstudio(scene)
    lens = LensDistortion("OPENCV", k1=0.1, p2=0.01)
    assert raw.distortion == [None, lens, lens, lens]


def _set(path: list, value) -> Callable[[dict], None]:
    """A change that sets meta[path[0]][path[1]]... = value."""
    def change(meta):
        target = meta
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


def _scale_rotation(frame: int, factor: float) -> Callable[[dict], None]:
    """A change that multiplies the rotation part of a frame's matrix by ``factor``."""
    def change(meta):
        matrix = meta["frames"][frame]["transform_matrix"]
        for row in matrix[:3]:
            row[:3] = [factor * value for value in row[:3]]
    return change


@pytest.mark.parametrize("change, problem", [
    (_set(["frames"], {"a": 1}), "has no 'frames' list"),
    (_set(["frames"], []), "'frames' is empty"),
    (_set(["frames", 2], "images/frame_00002.png"), "frame 2 must be a JSON object"),
    (lambda meta: meta["frames"][1].pop("transform_matrix"), "frame 1 needs 'file_path' and 'transform_matrix'"),
    (_set(["frames", 0, "file_path"], 7), "frame 0: 'file_path' must be a string"),
    (_set(["fl_x"], "abc"), "frame 0: 'fl_x' must be a number"),
    (_set(["fl_x"], True), "frame 0: 'fl_x' must be a number"),
    (_set(["frames", 2, "fl_y"], float("inf")), "frame 2: 'fl_y' must be finite"),
    (_set(["w"], -32), "frame 0: 'w' must be positive"),
    (lambda meta: meta.pop("cx"), "frame 0 has no 'cx'"),
    (_set(["frames", 3, "transform_matrix", 1, 2], float("nan")), "frame 3: 'transform_matrix' contains NaN"),
    (_set(["frames", 3, "transform_matrix"], [[1, 0], [0, 1]]), "must be a 3x4 or 4x4 matrix"),
    (_set(["frames", 3, "transform_matrix"], [[1, 0, 0, 0], [0, 1]]), "must be a 3x4 or 4x4 matrix of numbers"),
    (_set(["frames", 3, "transform_matrix", 3], [0, 0, 1, 1]), "must have last row 0 0 0 1"),
    (_set(["applied_transform"], [[1, 0, 0], [0, 1, 0]]), "'applied_transform' must be a 3x4 or 4x4 matrix"),
    (_set(["applied_transform"], [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, float("nan"), 0]]), "'applied_transform' contains NaN"),
    (_set(["camera_model"], "OPENCV_FISHEYE"), "camera model 'OPENCV_FISHEYE' is not supported"),
    (lambda meta: meta.update(camera_model="PINHOLE", k1=0.1), "PINHOLE cannot have distortion coefficients"),
    (_set(["k4"], 0.01), "'k4' is not supported"),
    (_set(["p1"], "0.1"), "frame 0: 'p1' must be a number"),
    (_set(["ply_file_path"], 3), "'ply_file_path' must be a string"),
    # Untrusted numbers: scaled / sheared / mirrored axes, numbers beyond float (and float32), absurd sizes.
    (_scale_rotation(0, 2.0), "frame 0: 'transform_matrix' has a rotation part that is not orthonormal"),
    (_scale_rotation(1, -1.0), "frame 1: 'transform_matrix' has a rotation part with determinant -1: a reflection"),
    (_set(["frames", 2, "transform_matrix", 0, 3], 10**400), "frame 2: 'transform_matrix' contains a number too large"),
    (_set(["frames", 2, "transform_matrix", 0, 3], 1e300), "frame 2: 'transform_matrix' contains numbers too large for float32"),
    (_set(["applied_transform"], [[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0]]), "'applied_transform' has a rotation part"),
    (_set(["fl_x"], 10**400), "frame 0: 'fl_x' must be finite"),
    (_set(["w"], 2**64 + 1), "frame 0: 'w' must be between 1 and 262144 pixels"),
    (_set(["frames", 0, "file_path"], 10**1000), f"frame 0: 'file_path' must be a string, got {'1' + '0' * 56}..."),
])
def test_malformed_transforms_name_the_file_and_the_problem(scene, change, problem):
    edit(scene, change)
    with pytest.raises(InputError) as info:
        read_nerfstudio(scene)
    message = str(info.value)
    assert message.startswith(f"{scene}: ") and problem in message and "\n" not in message


def test_blender_file_given_as_nerfstudio_gets_a_hint(scene):
    def blender_like(meta):
        del meta["fl_x"]
        meta["camera_angle_x"] = 0.9

    edit(scene, blender_like)
    with pytest.raises(InputError, match="looks like a Blender transforms file"):
        read_nerfstudio(scene)


def test_malformed_json_names_the_file(scene):
    scene.write_text('{"frames": [{"file_path": "images/frame_00000.png",}]}')
    with pytest.raises(InputError, match="malformed JSON at line 1") as info:
        read_nerfstudio(scene)
    assert str(scene) in str(info.value)
    scene.write_text('{"fl_x": ' + "9" * 5000 + "}")  # Python refuses to parse integers of more than 4300 digits
    with pytest.raises(InputError, match="malformed JSON"):
        read_nerfstudio(scene)
    scene.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputError, match="malformed JSON"):
        read_nerfstudio(scene)


def test_missing_point_cloud_names_the_ply(scene):
    edit(scene, _set(["ply_file_path"], "sparse_pc.ply"))
    with pytest.raises(InputError, match="is missing") as info:
        read_nerfstudio(scene)
    assert str(scene.parent / "sparse_pc.ply") in str(info.value)


def test_missing_or_wrongly_sized_image_names_the_image(scene, tmp_path):
    missing = scene.parent / "images" / "frame_00002.png"
    missing.unlink()
    with pytest.raises(InputError, match="image file is missing") as info:
        load_dataset(scene.parent)
    assert str(info.value).startswith(f"{missing}: ")

    other = write_nerfstudio_scene(tmp_path / "other", tiny_cameras(2))
    edit(other, _set(["frames", 1, "w"], 2 * WIDTH))  # the json says 64 wide, the file is 32
    with pytest.raises(InputError, match=f"image is {WIDTH}x{HEIGHT} but its camera says {2 * WIDTH}x{HEIGHT}") as info:
        load_dataset(other.parent)
    assert str(other.parent / "images" / "frame_00001.png") in str(info.value)


def test_huge_vertex_count_in_the_point_cloud_is_refused_before_allocating(scene):
    """An ASCII points3D.ply claiming 10^12 vertices used to end in a MemoryError inside plyfile."""
    ply = scene.parent / "points3D.ply"
    ply.write_text("ply\nformat ascii 1.0\nelement vertex 1000000000000\nproperty float x\nproperty float y\n"
                   "property float z\nend_header\n0 0 0\n1 1 1\n")
    edit(scene, _set(["ply_file_path"], "points3D.ply"))
    with pytest.raises(InputError, match="claims 1000000000000 vertex") as info:
        read_nerfstudio(scene)
    assert str(info.value).startswith(str(ply))


@pytest.mark.parametrize("key, value", [
    ("file_path", "../../../etc/passwd"),
    ("file_path", "/etc/passwd"),
    ("mask_path", "../secret.png"),
    ("ply_file_path", "../points.ply"),
])
def test_paths_leading_out_of_the_dataset_are_refused(scene, key, value):
    edit(scene, _set(["frames", 1, key] if key != "ply_file_path" else [key], value))
    with pytest.raises(InputError, match="lies outside the dataset folder") as info:
        read_nerfstudio(scene)
    assert str(info.value).startswith(str(scene)) and value.lstrip("./") in str(info.value)


def test_outside_paths_are_followed_when_allowed(scene, tmp_path):
    outside = tmp_path.parent / f"{tmp_path.name}_shared" / "frame.png"
    save_image(outside, torch.full((HEIGHT, WIDTH, 3), 0.25))
    edit(scene, _set(["frames", 1, "file_path"], str(outside)))
    dataset = load_dataset(scene.parent, allow_outside_paths=True)
    torch.testing.assert_close(dataset.original(1), torch.full((HEIGHT, WIDTH, 3), 0.25), atol=1 / 255, rtol=0)
