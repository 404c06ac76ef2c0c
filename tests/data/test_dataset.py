"""Dataset: immutable originals, downscaling, normalisation and the train / eval split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from splat2splat.data.cameras import Cameras
from splat2splat.data.dataset import Dataset, SceneNormalization, _check_file_size, build_dataset, split_every
from splat2splat.data.readers import load_dataset
from splat2splat.data.readers.nerfstudio import read_nerfstudio
from splat2splat.errors import InputError
from splat2splat.io import save_image
from tests.data.scenes import (HEIGHT, WIDTH, pattern_image, save_with_exif_orientation, tiny_cameras,
                               write_nerfstudio_scene)


@pytest.fixture
def scene(tmp_path):
    """A 4-view nerfstudio scene; returns its folder."""
    return write_nerfstudio_scene(tmp_path / "scene", tiny_cameras(4)).parent


def test_originals_never_change(scene):
    dataset = load_dataset(scene)
    before = [dataset.original(i) for i in range(len(dataset))]

    dataset.original(0).fill_(0.0)  # a copy: writing to it is harmless
    dataset.replace_image(1, torch.zeros(HEIGHT, WIDTH, 3))
    dataset.current[2].fill_(0.25)  # even in-place writes to the current images
    edited = torch.full((HEIGHT, WIDTH, 3), 0.75)
    dataset.replace_image(3, edited)
    edited.fill_(0.0)  # the dataset keeps its own copy of an edit

    for original, expected in zip(map(dataset.original, range(len(dataset))), before):
        assert torch.equal(original, expected)
    assert torch.equal(dataset.current[1], torch.zeros(HEIGHT, WIDTH, 3))
    assert torch.equal(dataset.current[3], torch.full((HEIGHT, WIDTH, 3), 0.75))
    assert dataset.edit_counts == [0, 1, 0, 1]
    dataset.reset_edits()
    assert all(torch.equal(c, o) for c, o in zip(dataset.current, map(dataset.original, range(len(dataset))))) and dataset.edit_counts == [0] * 4


def test_originals_are_copied_from_the_constructor_arguments():
    image = torch.rand(HEIGHT, WIDTH, 3)
    dataset = Dataset(cameras=tiny_cameras(1), image_names=["a.png"], originals=(image,), train_indices=[0], eval_indices=[])
    image.fill_(0.0)
    assert dataset.original(0).abs().sum() > 0


def test_replacing_with_a_wrong_shape_is_refused(scene):
    dataset = load_dataset(scene)
    with pytest.raises(ValueError, match="needs"):
        dataset.replace_image(0, torch.zeros(HEIGHT // 2, WIDTH, 3))


def test_downscale_in_memory_averages_pixels_and_scales_intrinsics(scene):
    full, half = load_dataset(scene), load_dataset(scene, downscale=2)
    assert half.original(0).shape == (HEIGHT // 2, WIDTH // 2, 3)
    area_mean = full.original(0).reshape(HEIGHT // 2, 2, WIDTH // 2, 2, 3).mean((1, 3))
    torch.testing.assert_close(half.original(0), area_mean, atol=1e-6, rtol=0)
    for key in ("fx", "fy", "cx", "cy"):
        torch.testing.assert_close(getattr(half.cameras, key), getattr(full.cameras, key) / 2)
    assert half.cameras.width.tolist() == [WIDTH // 2] * 4 and half.cameras.height.tolist() == [HEIGHT // 2] * 4


def test_downscale_reads_images_n_folder(scene):
    """Pre-shrunk copies are read as they are (their content differs here, to prove which file was used)."""
    for i in range(4):
        save_image(scene / "images_2" / f"frame_{i:05d}.png", torch.full((HEIGHT // 2, WIDTH // 2, 3), i / 4))
    dataset = load_dataset(scene, downscale=2)
    for i in range(4):
        torch.testing.assert_close(dataset.original(i), torch.full((HEIGHT // 2, WIDTH // 2, 3), i / 4), atol=1 / 255, rtol=0)
    torch.testing.assert_close(dataset.cameras.fx, torch.full((4,), 15.0))
    torch.testing.assert_close(dataset.cameras.cx, torch.full((4,), 7.75))


def test_normalisation_round_trip_and_unit_radius():
    cameras = tiny_cameras(6).transformed(torch.eye(4), 3.0)  # a scene 3x larger than the demo
    points = torch.randn(50, 3, generator=torch.Generator().manual_seed(0)) + 4.0
    normalization = SceneNormalization.fit(cameras.centers(), points)

    torch.testing.assert_close(normalization.to_original(normalization.to_normalized(points)), points, atol=1e-5, rtol=0)
    normalized = normalization.cameras_to_normalized(cameras)
    torch.testing.assert_close(normalized.centers(), normalization.to_normalized(cameras.centers()))
    torch.testing.assert_close(normalized.centers().mean(0), torch.zeros(3), atol=1e-6, rtol=0)
    assert abs(normalized.centers().norm(dim=-1).max().item() - 1.0) < 1e-5
    torch.testing.assert_close(normalized.camtoworlds[:, :3, :3], cameras.camtoworlds[:, :3, :3])  # no rotation


def test_dataset_is_normalised_with_points_in_the_same_frame(scene):
    raw = read_nerfstudio(scene)
    raw.points = torch.tensor([[0.0, 0.0, 0.2], [1.0, 1.0, 1.0]])
    dataset = build_dataset(raw)
    torch.testing.assert_close(dataset.points, dataset.normalization.to_normalized(raw.points))
    torch.testing.assert_close(dataset.normalization.to_original(dataset.cameras.centers()), raw.cameras.centers(),
                               atol=1e-5, rtol=0)
    unnormalized = build_dataset(raw, normalize=False)
    torch.testing.assert_close(unnormalized.cameras.camtoworlds, raw.cameras.camtoworlds)


def test_split_every_nth_view_or_as_the_reader_says(tmp_path):
    assert split_every(10, 8) == ([1, 2, 3, 4, 5, 6, 7, 9], [0, 8])
    assert split_every(10, 0) == (list(range(10)), [])
    assert split_every(1, 8) == ([0], [])  # a single view always trains

    folder = write_nerfstudio_scene(tmp_path / "ten", tiny_cameras(10)).parent
    dataset = load_dataset(folder, eval_every=4)
    assert dataset.train_indices == [1, 2, 3, 5, 6, 7, 9] and dataset.eval_indices == [0, 4, 8]
    assert dataset.eval_cameras.camtoworlds.shape == (3, 4, 4) and len(dataset.train_cameras) == 7

    raw = read_nerfstudio(folder)
    raw.split = {"train": [0, 1, 2], "eval": [9]}
    dataset = build_dataset(raw)
    assert dataset.train_indices == [0, 1, 2] and dataset.eval_indices == [9]


def test_mismatched_image_and_camera_counts_name_the_source(scene):
    raw = read_nerfstudio(scene)
    raw.image_paths = raw.image_paths[:3]
    with pytest.raises(InputError, match="3 images for 4 cameras") as info:
        build_dataset(raw)
    assert str(info.value).startswith(f"{scene / 'transforms.json'}: ")


def test_images_load_in_camera_order(scene):
    dataset = load_dataset(scene)
    assert dataset.image_names == [f"frame_{i:05d}.png" for i in range(4)]
    for i in range(4):
        torch.testing.assert_close(dataset.original(i), pattern_image(i), atol=1 / 255, rtol=0)


# ----------------------------------------------------------------------------------- image size checks


def test_image_one_pixel_larger_than_its_camera_is_refused(tmp_path):
    """A 33x33 file for a 32x32 camera used to pass a one-pixel tolerance and get silently resized."""
    cameras = tiny_cameras(2)
    cameras = Cameras(cameras.camtoworlds, cameras.fx, cameras.fy, cameras.cx, cameras.cy,
                      torch.full((2,), 32), torch.full((2,), 32))
    scene = write_nerfstudio_scene(tmp_path / "s", cameras).parent
    save_image(scene / "images" / "frame_00001.png", pattern_image(1, 33, 33))
    with pytest.raises(InputError, match="image is 33x33 but its camera says 32x32") as info:
        load_dataset(scene)
    assert str(info.value).startswith(str(scene / "images" / "frame_00001.png"))


def test_shrunk_copies_may_round_either_way_but_no_further(scene):
    """images_N made by ffmpeg truncate full / N, ImageMagick rounds: 32x24 / 5 = 6.4x4.8 -> 6 or 7 by 4 or 5."""
    for i in range(4):
        save_image(scene / "images_5" / f"frame_{i:05d}.png", pattern_image(i, 4, 7))
    raw = read_nerfstudio(scene, downscale=5)
    assert raw.intrinsics_scale == 0.2
    # (loading would stop at the 8-pixel minimum: check the size rule on its own)
    _check_file_size(raw.image_paths[0], (4, 7), (HEIGHT, WIDTH), 0.2)
    _check_file_size(raw.image_paths[0], (5, 6), (HEIGHT, WIDTH), 0.2)
    with pytest.raises(InputError, match=r"image is 8x5 but its camera says 32x24, so this shrunk copy should be 6-7x4-5"):
        _check_file_size(raw.image_paths[0], (5, 8), (HEIGHT, WIDTH), 0.2)


def test_downscale_that_leaves_views_smaller_than_8_pixels_is_refused(scene):
    load_dataset(scene, downscale=3)  # 32x24 -> 11x8: still usable
    with pytest.raises(InputError, match=r"downscale 64 would shrink view 0 \(frame_00000.png, 32x24\) to 1x1 pixels.*"
                                         r"at most 3") as info:
        load_dataset(scene, downscale=64)
    assert str(info.value).startswith(str(scene / "transforms.json"))
    with pytest.raises(InputError, match="at most 3"):
        load_dataset(scene, downscale=4)  # 8x6


def test_exif_rotated_photos_load_upright_and_must_match_the_camera_upright(tmp_path):
    """A phone photo stored 32x24 with orientation 6 is a 24x32 picture: its camera must say 24x32."""
    cameras = tiny_cameras(2)
    upright = Cameras(cameras.camtoworlds, cameras.fy, cameras.fx, cameras.cy, cameras.cx,
                      torch.full((2,), HEIGHT), torch.full((2,), WIDTH))
    scene = write_nerfstudio_scene(tmp_path / "s", upright).parent
    for i in range(2):
        save_with_exif_orientation(scene / "images" / f"frame_{i:05d}.png", pattern_image(i), orientation=6)
    dataset = load_dataset(scene)
    assert dataset.original(0).shape == (WIDTH, HEIGHT, 3)
    expected = torch.from_numpy(np.rot90(pattern_image(0).numpy(), k=-1).copy())
    assert (dataset.original(0) - expected).abs().max() < 0.08  # JPEG

    stored_size = write_nerfstudio_scene(tmp_path / "t", tiny_cameras(2)).parent  # camera says 32x24
    save_with_exif_orientation(stored_size / "images" / "frame_00000.png", pattern_image(0), orientation=6)
    with pytest.raises(InputError, match="image is 24x32 but its camera says 32x24; its EXIF orientation turns it"):
        load_dataset(stored_size)


def test_writing_through_the_original_accessor_cannot_change_an_original():
    image = torch.rand(4, 5, 3)
    dataset = Dataset(cameras=tiny_cameras(1), image_names=["a.png"], originals=(image,), train_indices=[0], eval_indices=[])
    handed_out = dataset.original(0)
    handed_out.fill_(0.0)  # a caller scribbling on what it was given
    image.fill_(1.0)  # or on the tensor it built the dataset from
    assert torch.equal(dataset.original(0), dataset.current[0])
    assert 0.0 < float(dataset.original(0).mean()) < 1.0
    assert not hasattr(dataset, "originals")  # no public handle on the stored originals


def test_a_huge_picture_in_a_small_file_is_refused_from_its_header(tmp_path):
    """A 12000x12000 PNG of a few KB for a 32x32 camera: refused before its pixels are decoded (which would take
    1.7 GB as float32), under a memory cap far below that."""
    from PIL import Image

    from tests.fuzzing import memory_cap

    cameras = tiny_cameras(2)
    cameras = Cameras(cameras.camtoworlds, cameras.fx, cameras.fy, cameras.cx, cameras.cy,
                      torch.full((2,), 32), torch.full((2,), 32))
    scene = write_nerfstudio_scene(tmp_path / "s", cameras).parent
    bomb = scene / "images" / "frame_00001.png"
    Image.new("1", (12000, 12000)).save(bomb)  # 1 bit per pixel while written: 18 MB
    assert bomb.stat().st_size < 100_000
    with memory_cap(300 << 20), pytest.raises(InputError, match="image is 12000x12000 but its camera says 32x32"):
        load_dataset(scene)


def test_a_huge_mask_in_a_small_file_is_refused_from_its_header(tmp_path):
    """A nerfstudio mask_path naming a 12000x12000 PNG of a few KB for a 32x32 camera: refused from its header,
    before its pixels are decoded, under a memory cap far below what decoding takes."""
    import json

    from PIL import Image

    from tests.fuzzing import memory_cap

    cameras = tiny_cameras(2)
    cameras = Cameras(cameras.camtoworlds, cameras.fx, cameras.fy, cameras.cx, cameras.cy,
                      torch.full((2,), 32), torch.full((2,), 32))
    transforms = write_nerfstudio_scene(tmp_path / "s", cameras)
    meta = json.loads(transforms.read_text())
    meta["frames"][0]["mask_path"] = "masks/small.png"
    meta["frames"][1]["mask_path"] = "masks/bomb.png"
    transforms.write_text(json.dumps(meta))
    (transforms.parent / "masks").mkdir()
    Image.new("L", (32, 32), 255).save(transforms.parent / "masks" / "small.png")
    bomb = transforms.parent / "masks" / "bomb.png"
    Image.new("1", (12000, 12000)).save(bomb)
    assert bomb.stat().st_size < 100_000
    with memory_cap(300 << 20), pytest.raises(InputError, match="mask is 12000x12000, larger than its camera's "
                                                                "full-resolution 32x32 image") as error:
        load_dataset(transforms.parent)
    assert error.value.path == bomb
    Image.new("L", (32, 32), 255).save(bomb)  # masks up to the camera's size still load
    assert load_dataset(transforms.parent).masks[1].all()


def test_views_sharing_a_file_name_get_distinct_output_names():
    from pathlib import Path

    from splat2splat.data.dataset import distinct_names

    assert distinct_names([Path("/d/left/a.png"), Path("/d/right/a.png"), Path("/d/right/b.png")]) == \
        ["left_a.png", "right_a.png", "b.png"]
    assert distinct_names([Path("/d/x/a.png"), Path("/d/x/a.jpg")]) == ["a_png.png", "a_jpg.jpg"]
    assert distinct_names([Path("/d/a.png"), Path("/d/b.jpg")]) == ["a.png", "b.jpg"]  # unchanged when distinct


def test_a_dataset_with_one_file_name_in_two_folders_names_every_view_apart(tmp_path):
    import json

    transforms = write_nerfstudio_scene(tmp_path / "s", tiny_cameras(3))
    scene = transforms.parent
    (scene / "images" / "b").mkdir()
    (scene / "images" / "frame_00001.png").rename(scene / "images" / "b" / "frame_00000.png")
    meta = json.loads(transforms.read_text())
    meta["frames"][1]["file_path"] = "images/b/frame_00000.png"
    transforms.write_text(json.dumps(meta))
    dataset = load_dataset(scene, eval_every=0)
    assert dataset.image_names == ["frame_00000.png", "b_frame_00000.png", "frame_00002.png"]
