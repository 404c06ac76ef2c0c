"""splat2splat.training: what a finished training run records about its scene."""

from __future__ import annotations

import torch

from splat2splat.data.readers import load_dataset
from splat2splat.gaussians.backend import GaussianBackend, GaussianConfig
from splat2splat.gaussians.model import init_splats, random_points
from splat2splat.nerf.backend import NerfBackend, NerfConfig
from splat2splat.testing.cpu_settings import NERF_CPU_DEMO_SETTINGS
from splat2splat.training import backend_size


def test_backend_size_counts_gaussians_through_the_scene_protocol(demo_scene):
    dataset = load_dataset(demo_scene, downscale=4)
    points, colors = random_points(123, 0.5, torch.Generator().manual_seed(0))
    gaussians = GaussianBackend(init_splats(points, colors, 1, 0.1, 1.0), GaussianConfig(), dataset.background)
    assert backend_size(gaussians) == {"num_gaussians": 123}
    assert backend_size(NerfBackend.from_dataset(dataset, NerfConfig(**NERF_CPU_DEMO_SETTINGS))) == {}
