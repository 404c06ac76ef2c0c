"""Regions of a local edit: box, sphere, JSON, scene file and masks agree; projection and lifting; bad regions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from splat2splat.data.demo import DemoConfig, write_demo_scene
from splat2splat.data.readers import load_dataset
from splat2splat.edit.presets import preset
from splat2splat.edit.regions import (RegionConfig, composite, feathered, lift_masks, project_gaussians,
                                      read_masks, resolve_region)
from splat2splat.errors import InputError
from splat2splat.gaussians.backend import GaussianBackend, GaussianConfig, StrategyConfig
from splat2splat.io import save_image
from splat2splat.losses import PhotometricLoss

# Around the demo's striped sphere (centre 0.35 0.25 0.3, radius 0.3), in the demo's world frame.
SPHERE_BOX = (0.0, -0.1, -0.05, 0.7, 0.6, 0.65)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return write_demo_scene(tmp_path_factory.mktemp("region-demo"), DemoConfig(n_views=16, image_size=32, n_points=800))


@pytest.fixture(scope="module")
def fitted(scene):
    """The demo dataset and a briefly trained Gaussian scene of it (opaque enough for masks to mean something)."""
    dataset = load_dataset(scene)
    torch.manual_seed(0)
    backend = GaussianBackend.from_dataset(dataset, GaussianConfig(device="cpu", sh_degree=0, init_opacity=0.5,
                                                                   strategy=StrategyConfig(kind="none")))
    loss = PhotometricLoss(preset("in2n-tiny").loss, None)
    for _ in range(20):
        backend.train_step(dataset, loss)
    return dataset, backend


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a >= 0.5, b >= 0.5
    return float((a & b).sum()) / max(1.0, float((a | b).sum()))


def mean_iou(masks_a, masks_b) -> float:
    return sum(iou(a, b) for a, b in zip(masks_a, masks_b)) / len(masks_a)


def write_masks(folder: Path, dataset, masks) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, mask in zip(dataset.image_names, masks):
        save_image(folder / name, (mask >= 0.5).float()[..., None].expand(-1, -1, 3))
    return folder


def test_box_selects_the_gaussians_around_the_sphere_and_projects_to_it(fitted):
    dataset, backend = fitted
    region = resolve_region(RegionConfig(box=SPHERE_BOX), dataset, backend)
    centres = dataset.normalization.to_original(backend.splats["means"].detach())
    expected = ((centres >= torch.tensor(SPHERE_BOX[:3])) & (centres <= torch.tensor(SPHERE_BOX[3:]))).all(-1)
    assert torch.equal(region.inside, expected) and 0 < int(expected.sum()) < len(expected)
    assert len(region.masks) == len(dataset) and region.masks[0].shape == (32, 32)
    coverage = [float((m >= 0.5).float().mean()) for m in region.masks]
    assert all(0.02 < c < 0.6 for c in coverage), coverage  # the sphere: part of each view, not all of it


def test_box_masks_and_scene_file_regions_agree(fitted, tmp_path):
    dataset, backend = fitted
    box = resolve_region(RegionConfig(box=SPHERE_BOX), dataset, backend)

    from_masks = resolve_region(RegionConfig(masks=write_masks(tmp_path / "masks", dataset, box.masks)),
                                dataset, backend)
    assert mean_iou(project_gaussians(backend, dataset, from_masks.inside), box.masks) > 0.8
    assert float((from_masks.inside == box.inside).float().mean()) > 0.95

    from splat2splat.gaussians.formats import save_splats

    crop = {key: value.detach()[box.inside] for key, value in backend.splats.items()}
    save_splats(tmp_path / "crop.ply", crop, dataset.normalization, "ply", frame_transform=dataset.frame_transform)
    from_file = resolve_region(RegionConfig(gaussians=tmp_path / "crop.ply"), dataset, backend)
    assert mean_iou(from_file.masks, box.masks) > 0.8
    assert torch.equal(from_file.inside & box.inside, box.inside)  # its own Gaussians at least

    (tmp_path / "region.json").write_text(json.dumps({"box": list(SPHERE_BOX)}))
    assert torch.equal(resolve_region(RegionConfig(file=tmp_path / "region.json"), dataset, backend).inside,
                       box.inside)
    sphere = resolve_region(RegionConfig(sphere=(0.35, 0.25, 0.3, 0.35)), dataset, backend)
    assert mean_iou(sphere.masks, box.masks) > 0.8


def test_lifting_keeps_only_gaussians_that_render_inside_the_masks(fitted):
    dataset, backend = fitted
    empty = [torch.zeros(dataset.image_size(i)) for i in range(len(dataset))]
    full = [torch.ones(dataset.image_size(i)) for i in range(len(dataset))]
    assert not lift_masks(backend, dataset, empty).any()
    assert lift_masks(backend, dataset, full).float().mean() > 0.9  # all but the Gaussians no view sees


def test_composite_keeps_every_pixel_outside_the_mask_exactly():
    generator = torch.Generator().manual_seed(0)
    edited, original = torch.rand(24, 24, 3, generator=generator), torch.rand(24, 24, 3, generator=generator)
    mask = torch.zeros(24, 24)
    mask[6:18, 4:14] = 1.0
    weight = feathered(mask, 2.0)
    result = composite(edited, original, weight)
    assert torch.equal(result[mask < 0.5], original[mask < 0.5])
    assert torch.equal(result[weight == 1], edited[weight == 1]) and (weight == 1).any()
    assert ((weight > 0) & (weight < 1)).any()  # a soft edge inside the mask
    assert torch.equal(feathered(mask, 0.0), mask)


# ------------------------------------------------------------------------------------------ bad regions


def test_a_box_outside_the_scene_is_one_clear_error(fitted):
    dataset, backend = fitted
    with pytest.raises(InputError, match="--region.box holds none of the scene's"):
        resolve_region(RegionConfig(box=(10, 10, 10, 11, 11, 11)), dataset, backend)


@pytest.mark.parametrize("config, message", [
    (RegionConfig(box=(0, 0, 0, 1, 1, 1), sphere=(0, 0, 0, 1)), "give one region"),
    (RegionConfig(box=(1, 0, 0, 0, 1, 1)), "needs xmin < xmax"),
    (RegionConfig(box=(0, 0, float("nan"), 1, 1, 1)), "6 finite numbers"),
    (RegionConfig(sphere=(0, 0, 0, -1)), "radius must be positive"),
    (RegionConfig(box=SPHERE_BOX, feather=-1.0), "--region.feather"),
])
def test_bad_region_options(fitted, config, message):
    dataset, backend = fitted
    with pytest.raises(InputError, match=message):
        resolve_region(config, dataset, backend)


def test_bad_mask_folders_name_the_file(fitted, tmp_path):
    dataset, backend = fitted
    good = [torch.ones(dataset.image_size(i)) for i in range(len(dataset))]
    folder = write_masks(tmp_path / "masks", dataset, good)
    (folder / dataset.image_names[3]).unlink()
    with pytest.raises(InputError, match=f"no mask for view {dataset.image_names[3]}"):
        read_masks(folder, dataset)
    save_image(folder / dataset.image_names[3], torch.ones(20, 32, 3))
    with pytest.raises(InputError, match="mask is 32x20, its view is 32x32") as error:
        read_masks(folder, dataset)
    assert error.value.path.name == dataset.image_names[3]
    black = write_masks(tmp_path / "black", dataset, [torch.zeros_like(m) for m in good])
    with pytest.raises(InputError, match="every mask is black"):
        read_masks(black, dataset)
    with pytest.raises(InputError, match="must be a folder"):
        read_masks(tmp_path / "missing", dataset)


def test_a_huge_mask_in_a_small_file_is_refused_from_its_header(fitted, tmp_path):
    """A 12000x12000 mask of a few KB for a 32x32 view: refused before its pixels are decoded (0.6 GB as float32
    RGB), under a memory cap far below that."""
    from PIL import Image

    from tests.fuzzing import memory_cap

    dataset, _ = fitted
    folder = write_masks(tmp_path / "masks", dataset, [torch.ones(dataset.image_size(i)) for i in range(len(dataset))])
    bomb = folder / dataset.image_names[2]
    Image.new("1", (12000, 12000)).save(bomb)
    assert bomb.stat().st_size < 100_000
    with memory_cap(300 << 20), pytest.raises(InputError, match="mask is 12000x12000, its view is 32x32") as error:
        read_masks(folder, dataset, downscale=2)
    assert error.value.path == bomb


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a readable JSON"),
    ('{"box": [0, 0, 0, 1, 1]}', "6 finite numbers"),
    ('{"box": [0, 0, 0, 1, 1, 1], "sphere": [0, 0, 0, 1]}', "exactly one of"),
    ('{"sphere": [0, 0, 0, NaN]}', "4 finite numbers"),
    ('{"sphere": ["a", 0, 0, 1]}', "list of numbers"),
])
def test_bad_region_files_name_the_file(fitted, tmp_path, content, message):
    dataset, backend = fitted
    path = tmp_path / "region.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as error:
        resolve_region(RegionConfig(file=path), dataset, backend)
    assert error.value.path == path


def test_a_crop_exported_with_the_same_box_selects_the_same_gaussians(scene, tmp_path):
    """`export --crop-box B` then `--region.gaussians crop.ply` is `--region.box B`: both in the original frame."""
    from splat2splat.checkpoint import backend_from_checkpoint, read_checkpoint
    from splat2splat.cli import entrypoint

    entrypoint(["train", "--data", str(scene), "--output", str(tmp_path / "train"), "--steps", "5",
                "--eval-every", "0", "--gaussians.device", "cpu", "--gaussians.strategy.kind", "none"])
    checkpoint = tmp_path / "train" / "checkpoint.pt"
    entrypoint(["export", "--scene", str(checkpoint), "--output", str(tmp_path / "crop"), "--formats", "ply",
                "--crop-box", *(str(v) for v in SPHERE_BOX)])
    dataset = load_dataset(scene)
    backend = backend_from_checkpoint(checkpoint, read_checkpoint(checkpoint), "cpu")
    by_box = resolve_region(RegionConfig(box=SPHERE_BOX), dataset, backend)
    by_file = resolve_region(RegionConfig(gaussians=tmp_path / "crop" / "scene.ply"), dataset, backend)
    assert torch.equal(by_file.inside & by_box.inside, by_box.inside)
    assert int(by_file.inside.sum()) <= 1.1 * int(by_box.inside.sum())  # its neighbours only where very close


def test_preview_masks_need_no_scene(fitted, tmp_path):
    from splat2splat.edit.regions import preview_masks
    from splat2splat.gaussians.formats import save_splats

    dataset, backend = fitted
    box = resolve_region(RegionConfig(box=SPHERE_BOX), dataset, backend)
    crop = {key: value.detach()[box.inside] for key, value in backend.splats.items()}
    save_splats(tmp_path / "crop.ply", crop, dataset.normalization, "ply", frame_transform=dataset.frame_transform)
    views = [0, 5, 10]
    from_file = preview_masks(RegionConfig(gaussians=tmp_path / "crop.ply"), dataset, views)
    from_rays = preview_masks(RegionConfig(box=SPHERE_BOX), dataset, views)
    for view, file_mask, ray_mask in zip(views, from_file, from_rays):
        sphere = box.masks[view] >= 0.5
        assert float((file_mask >= 0.5)[sphere].float().mean()) > 0.9  # the region alone covers the sphere
        # rays to the sphere cross its box (but for the splats' footprints reaching past the box's outline)
        assert float((ray_mask >= 0.5)[sphere].float().mean()) > 0.95


def test_full_resolution_masks_are_shrunk_with_the_images(scene, tmp_path):
    """Masks made for the full-size images serve a --downscale 2 run (and only sizes that fit are accepted)."""
    dataset = load_dataset(scene, downscale=2)
    folder = tmp_path / "masks"
    folder.mkdir()
    for name in dataset.image_names:
        mask = torch.zeros(32, 32, 3)
        mask[:, 16:] = 1.0
        save_image(folder / (Path(name).stem + ".png"), mask)
    masks = read_masks(folder, dataset, downscale=2)
    assert masks[0].shape == (16, 16) and torch.equal(masks[0][:, 8:], torch.ones(16, 8))
    assert torch.equal(masks[0][:, :8], torch.zeros(16, 8))
    with pytest.raises(InputError, match="mask is 32x32, its view is 16x16"):
        read_masks(folder, dataset, downscale=1)


def test_regions_ask_the_scene_contract_for_gaussians(fitted):
    """A scene that declares no Gaussians (SceneBackend.gaussians() is None, as a NeRF) gets the masks-only
    message for a volume, whatever its class; a Gaussian scene is its own GaussianScene."""
    from splat2splat.scene import GaussianScene

    dataset, backend = fitted
    assert backend.gaussians() is backend and isinstance(backend, GaussianScene)

    class WithoutGaussians:
        name = "field"

        def gaussians(self):
            return None

    with pytest.raises(InputError, match="a field scene needs --region.masks"):
        resolve_region(RegionConfig(box=SPHERE_BOX), dataset, WithoutGaussians())
