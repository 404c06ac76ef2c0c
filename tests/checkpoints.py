"""Small trained scenes saved as checkpoints, shared by the checkpoint, scene-loading, render and export tests."""

from __future__ import annotations

from pathlib import Path

from splat2splat.checkpoint import save_checkpoint
from splat2splat.data.dataset import Dataset
from splat2splat.data.readers import load_dataset
from splat2splat.gaussians.backend import GaussianBackend, GaussianConfig, StrategyConfig
from splat2splat.losses import LossWeights, PhotometricLoss

DOWNSCALE = 2  # 32-px images: fast enough on a busy CPU
TRAIN_STEPS = 30
# A NeRF small enough to build and render in milliseconds (behaviour, not quality).
TINY_NERF = dict(rays_per_batch=64, samples_per_ray=16, unbounded=False, plane_resolutions=(16, 32), plane_features=4,
                 hidden_dim=16, appearance_dim=4, occupancy_resolution=16, render_chunk=1024, device="cpu")


def train_steps(backend, dataset: Dataset, steps: int, loss_fn) -> dict[str, float]:
    """``steps`` training steps of any backend; returns the last step's stats."""
    stats: dict[str, float] = {}
    for _ in range(steps):
        stats = backend.train_step(dataset, loss_fn)
    return stats


def write_gaussian_checkpoint(data: Path, path: Path, steps: int = TRAIN_STEPS) -> tuple[GaussianBackend, Dataset]:
    """Train a small Gaussian scene on ``data`` and save it as a checkpoint."""
    dataset = load_dataset(data, downscale=DOWNSCALE)
    backend = GaussianBackend.from_dataset(dataset, GaussianConfig(strategy=StrategyConfig(kind="none"), device="cpu"))
    train_steps(backend, dataset, steps, PhotometricLoss(LossWeights()))
    save_checkpoint(path, backend, data, DOWNSCALE)
    return backend, dataset


def write_nerf_checkpoint(data: Path, path: Path, steps: int = 2):
    from splat2splat.nerf.backend import NerfBackend, NerfConfig, mse_loss

    dataset = load_dataset(data, downscale=DOWNSCALE)
    backend = NerfBackend.from_dataset(dataset, NerfConfig(**TINY_NERF))
    train_steps(backend, dataset, steps, mse_loss)
    save_checkpoint(path, backend, data, DOWNSCALE)
    return backend, dataset
