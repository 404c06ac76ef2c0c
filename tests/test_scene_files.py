"""Loading scenes to continue from: checkpoints (Gaussian and NeRF), imported PLYs, and every bad input.

:func:`write_gaussian_checkpoint` / :func:`write_nerf_checkpoint` are shared with the render and export tests.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import torch

from splat2splat.data.dataset import Dataset
from splat2splat.data.readers import load_dataset
from splat2splat.errors import InputError
from splat2splat.gaussians.backend import GaussianBackend, GaussianConfig, StrategyConfig
from splat2splat.gaussians.ply import save_ply
from splat2splat.io import save_torch, write_bytes
from splat2splat.losses import LossWeights, PhotometricLoss
from splat2splat.scene_files import (INITIAL_SH_DEGREE_FIELD, dataset_normalization, load_scene, load_scene_and_dataset,
                                     read_checkpoint)

DOWNSCALE = 2  # 32-px images: fast enough on a busy CPU
TRAIN_STEPS = 30
# A NeRF small enough to build and render in milliseconds (behaviour, not quality).
TINY_NERF = dict(rays_per_batch=64, samples_per_ray=16, unbounded=False, plane_resolutions=(16, 32), plane_features=4,
                 hidden_dim=16, appearance_dim=4, occupancy_resolution=16, render_chunk=1024, device="cpu")


def write_gaussian_checkpoint(data: Path, path: Path, steps: int = TRAIN_STEPS) -> tuple[GaussianBackend, Dataset]:
    """Train a small Gaussian scene on ``data`` and save it in the checkpoint format scene_files reads."""
    dataset = load_dataset(data, downscale=DOWNSCALE)
    backend = GaussianBackend.from_dataset(dataset, GaussianConfig(strategy=StrategyConfig(kind="none"), device="cpu"))
    loss = PhotometricLoss(LossWeights())
    for _ in range(steps):
        backend.train_step(dataset, loss)
    save_torch(path, {"backend": "gaussian", "backend_state": backend.state_dict(), "data": str(data),
                      "downscale": DOWNSCALE})
    return backend, dataset


def write_nerf_checkpoint(data: Path, path: Path, steps: int = 2):
    from splat2splat.nerf.backend import NerfBackend, NerfConfig, mse_loss

    dataset = load_dataset(data, downscale=DOWNSCALE)
    backend = NerfBackend.from_dataset(dataset, NerfConfig(**TINY_NERF))
    backend.fit(dataset, steps, mse_loss)
    save_torch(path, {"backend": "nerf", "backend_state": backend.state_dict(), "data": str(data),
                      "downscale": DOWNSCALE})
    return backend, dataset


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


@pytest.mark.skipif(INITIAL_SH_DEGREE_FIELD not in {f.name for f in fields(GaussianConfig)},
                    reason="needs GaussianConfig.initial_sh_degree (requested of the Gaussian backend)")
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
    save_torch(moved, {"backend": "gaussian", "backend_state": backend.state_dict(), "data": str(tmp_path / "gone")})
    with pytest.raises(InputError, match="pass --data"):
        load_scene_and_dataset(moved)


def corrupt_checkpoints(state: dict) -> dict[str, tuple[object, str]]:
    """Checkpoint contents that must be refused, with a word the message must contain."""
    no_splats = {k: v for k, v in state.items() if k != "splats"}
    wrong_shape = {**state, "splats": {**state["splats"], "quats": state["splats"]["quats"][:, :3]}}
    wrong_count = {**state, "splats": {**state["splats"], "means": torch.zeros(3, 3)}}
    return {
        "list": ([1, 2, 3], "not a dict"),
        "old_layout": ({"backend": state, "data": "x"}, "'backend' must be"),
        "unknown_backend": ({"backend": "mesh", "backend_state": state}, "'backend' must be"),
        "no_state": ({"backend": "gaussian"}, "backend_state"),
        "missing_keys": ({"backend": "gaussian", "backend_state": no_splats}, "splats"),
        "bad_downscale": ({"backend": "gaussian", "backend_state": state, "downscale": 0}, "downscale"),
        "wrong_shape": ({"backend": "gaussian", "backend_state": wrong_shape}, "'quats' has shape"),
        "wrong_count": ({"backend": "gaussian", "backend_state": wrong_count}, "disagree"),
        "no_optimizers": ({"backend": "gaussian", "backend_state": {**state, "optimizers": {}}},
                          "loadable gaussian scene"),
    }


@pytest.mark.parametrize("case", ["list", "old_layout", "unknown_backend", "no_state", "missing_keys", "bad_downscale",
                                  "wrong_shape", "wrong_count", "no_optimizers"])
def test_bad_checkpoints_are_input_errors_naming_the_file(trained, tmp_path, case):
    _, backend, dataset = trained
    content, message = corrupt_checkpoints(backend.state_dict())[case]
    path = tmp_path / f"{case}.pt"
    save_torch(path, content)
    with pytest.raises(InputError, match=message) as error:
        load_scene(path, dataset, device="cpu")
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_corrupt_checkpoint_bytes_are_an_input_error(tmp_path):
    path = tmp_path / "broken.pt"
    write_bytes(path, b"this is not a torch archive")
    with pytest.raises(InputError, match="not a readable") as error:
        read_checkpoint(path)
    assert str(path) in str(error.value)
    assert path.read_bytes() == b"this is not a torch archive"  # inputs are never touched
