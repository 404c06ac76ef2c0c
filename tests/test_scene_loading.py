"""Loading scenes to continue from: checkpoints (Gaussian and NeRF), imported PLYs, and their bad inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from splat2splat.checkpoint import read_checkpoint, save_checkpoint
from splat2splat.errors import InputError
from splat2splat.gaussians.backend import GaussianBackend, GaussianConfig
from splat2splat.gaussians.ply import save_ply
from splat2splat.gaussians.rasterize import choose_rasterizer
from splat2splat.io import save_torch
from splat2splat.losses import LossWeights, PhotometricLoss
from splat2splat.scene_loading import dataset_normalization, load_scene, load_scene_and_dataset
from tests.conftest import requires_cuda
from tests.checkpoints import DOWNSCALE, TRAIN_STEPS, write_gaussian_checkpoint, write_nerf_checkpoint


@pytest.fixture(scope="module")
def trained(demo_scene, tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "checkpoint.pt"
    backend, dataset = write_gaussian_checkpoint(demo_scene, path)
    return path, backend, dataset


# ------------------------------------------------------------------------------------------------ loading


def test_checkpoint_loads_the_same_scene(trained):
    path, backend, dataset = trained
    loaded = load_scene(path, dataset, device="cpu")
    assert isinstance(loaded, GaussianBackend)
    assert loaded.step == backend.step == TRAIN_STEPS
    views = dataset.cameras[dataset.eval_indices[:2]]
    for a, b in zip(loaded.render(views), backend.render(views)):
        assert torch.equal(a, b)


def test_checkpoint_defaults_give_the_dataset_and_its_downscale(trained):
    path, _, dataset = trained
    loaded, loaded_dataset = load_scene_and_dataset(path, device="cpu")
    assert loaded_dataset.cameras.image_size(0) == dataset.cameras.image_size(0) == (32, 32)
    assert loaded_dataset.normalization == dataset.normalization
    assert loaded.name == "gaussian"


def test_nerf_checkpoint_loads_as_a_nerf(demo_scene, tmp_path):
    from splat2splat.nerf.backend import NerfBackend

    path = tmp_path / "nerf.ckpt"
    backend, dataset = write_nerf_checkpoint(demo_scene, path)
    loaded = load_scene(path, dataset, device="cpu")
    assert isinstance(loaded, NerfBackend) and loaded.step == backend.step == 2
    for key, value in backend.field.state_dict().items():
        assert torch.equal(loaded.field.state_dict()[key], value), key


def test_imported_ply_renders_like_the_scene_it_came_from(trained, tmp_path):
    _, backend, dataset = trained
    ply = tmp_path / "scene.ply"
    save_ply(ply, backend.splats, dataset.normalization)
    imported = load_scene(ply, dataset, device="cpu")
    assert isinstance(imported, GaussianBackend)
    # New optimisers, no strategy state, and counted as converged: schedules continue from their ends.
    assert imported.step == imported.converged_step() == 30_000
    assert imported.config.sh_degree == imported.max_sh_degree == 3
    views = dataset.cameras[dataset.eval_indices[:2]]
    for a, b in zip(imported.render(views), backend.render(views)):
        # Means and log-scales pass through float32 in the original frame: tiny rounding only.
        assert (a - b).abs().max() < 1e-3


def test_imported_ply_takes_the_given_training_config(trained, tmp_path):
    _, backend, dataset = trained
    ply = tmp_path / "scene.ply"
    save_ply(ply, backend.splats, dataset.normalization, sh_degree=1)
    imported = load_scene(ply, dataset, GaussianConfig(means_lr=1e-5, sh_degree=3), device="cpu")
    assert imported.config.means_lr == 1e-5
    assert imported.config.sh_degree == imported.max_sh_degree == 1  # the file's degree wins


def test_imported_ply_starts_at_its_file_sh_degree(trained, tmp_path):
    _, backend, dataset = trained
    ply = tmp_path / "scene.ply"
    save_ply(ply, backend.splats, dataset.normalization, sh_degree=2)
    assert load_scene(ply, dataset, device="cpu").active_sh_degree == 2


def test_export_normalisation_matches_the_dataset(demo_scene, trained):
    _, _, dataset = trained
    assert dataset_normalization(demo_scene) == dataset.normalization


# --------------------------------------------------------------------------------------------- bad inputs


def test_missing_scene_files_name_the_file(trained, tmp_path):
    _, _, dataset = trained
    for name in ("missing.pt", "missing.ply"):
        with pytest.raises(InputError, match="missing") as error:
            load_scene(tmp_path / name, dataset)
        assert str(tmp_path / name) in str(error.value)


def test_unknown_scene_suffix_is_an_input_error(trained, tmp_path):
    _, _, dataset = trained
    with pytest.raises(InputError, match="unknown scene format"):
        load_scene(tmp_path / "scene.npz", dataset)


def test_ply_without_dataset_is_an_input_error(trained, tmp_path):
    _, backend, dataset = trained
    ply = tmp_path / "scene.ply"
    save_ply(ply, backend.splats, dataset.normalization)
    with pytest.raises(InputError, match="--data"):
        load_scene_and_dataset(ply)


def test_checkpoint_with_a_vanished_dataset_asks_for_data(trained, tmp_path):
    path, backend, _ = trained
    moved = tmp_path / "moved.pt"
    save_checkpoint(moved, backend, tmp_path / "gone", 1)
    with pytest.raises(InputError, match="pass --data"):
        load_scene_and_dataset(moved)


@pytest.mark.parametrize("fmt, name, mean_error", [("ply_compressed", "scene.compressed.ply", 0.02),
                                                    ("splat", "scene.splat", 0.05), ("spz", "scene.spz", 0.05)])
def test_every_scene_file_format_loads_as_a_scene(demo_scene, trained, tmp_path, fmt, name, mean_error):
    """What `render --scene` and `edit --init` read: compressed PLY, .splat and .spz too (8-bit, so close)."""
    from splat2splat.gaussians.formats import save_splats

    _, backend, dataset = trained
    path = tmp_path / name
    save_splats(path, backend.splats, dataset.normalization, fmt)
    imported, _ = load_scene_and_dataset(path, demo_scene, downscale=DOWNSCALE, device="cpu")
    assert len(imported.splats["means"]) == len(backend.splats["means"])
    views = dataset.cameras[dataset.eval_indices[:2]]
    for a, b in zip(imported.render(views), backend.render(views)):
        assert (a - b).abs().mean() < mean_error


def with_machine_settings(path: Path, tmp_path: Path, device: str, rasterizer: str) -> Path:
    """A copy of the checkpoint at ``path`` as if trained on another machine (saved device and rasterizer)."""
    checkpoint = read_checkpoint(path)
    checkpoint["backend_state"]["config"].update(device=device, rasterizer=rasterizer)
    moved = tmp_path / f"trained-{device}-{rasterizer}.pt"
    save_torch(moved, checkpoint)
    return moved


def test_gsplat_gpu_checkpoint_loads_on_a_cpu_only_machine(trained, tmp_path):
    """A checkpoint whose config says device cuda / rasterizer gsplat renders here with the CPU's rasterizer."""
    path, backend, dataset = trained
    moved = with_machine_settings(path, tmp_path, "cuda", "gsplat")
    loaded = load_scene(moved, dataset, device="cpu")
    cpu_rasterizer = choose_rasterizer("auto", torch.device("cpu"))  # cpp, or torch without a compiler
    assert (loaded.device.type, loaded.rasterizer, loaded.config.rasterizer) == ("cpu", cpu_rasterizer, "auto")
    views = dataset.cameras[dataset.eval_indices[:2]]
    for a, b in zip(loaded.render(views), backend.render(views)):
        assert torch.equal(a, b)
    loaded.train_step(dataset, PhotometricLoss(LossWeights()))  # and it keeps training
    assert loaded.step == TRAIN_STEPS + 1


def test_cpu_checkpoint_moved_to_another_device_takes_that_device_rasterizer(trained, tmp_path):
    """The other way round: a saved 'torch' rasterizer is a machine setting too; not moved, it is kept."""
    path, _, dataset = trained
    moved = with_machine_settings(path, tmp_path, "cpu", "torch")
    state = read_checkpoint(moved)["backend_state"]
    assert GaussianBackend.from_state_dict(state, "cpu").config.rasterizer == "auto"
    assert GaussianBackend.from_state_dict(state).config.rasterizer == "torch"  # not moved: kept


@requires_cuda
@pytest.mark.gpu
def test_cpu_checkpoint_loads_on_the_gpu_with_gsplat(trained):
    path, backend, dataset = trained
    loaded = load_scene(path, dataset, device="cuda")
    assert (loaded.device.type, loaded.rasterizer) == ("cuda", "gsplat")
    views = dataset.cameras[dataset.eval_indices[:2]]
    for a, b in zip(loaded.render(views), backend.render(views)):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-3)  # the two rasterizers' parity tolerance


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_gpu_checkpoint_without_a_device_override_is_a_clear_error(trained, tmp_path):
    path, _, dataset = trained
    with pytest.raises(InputError, match="no CUDA GPU is available"):
        load_scene(with_machine_settings(path, tmp_path, "cuda", "gsplat"), dataset)
