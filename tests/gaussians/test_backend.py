"""The Gaussian backend on a GPU: a CUDA training step through gsplat with densification, the fused SSIM kernel,
and a checkpoint round trip. (Its CPU behaviour is covered through the train command in tests/test_training.py.)"""

from __future__ import annotations

import pytest
import torch

from splat2splat.data.readers import load_dataset
from splat2splat.gaussians.backend import GaussianBackend, GaussianConfig, StrategyConfig
from splat2splat.gaussians.model import SPLAT_KEYS
from splat2splat.checkpoint import load_checkpoint_file
from splat2splat.io import save_torch
from splat2splat.kernels import ssim as ssim_module
from splat2splat.losses import LossWeights, PhotometricLoss
from tests.conftest import requires_cuda


@requires_cuda
@pytest.mark.gpu
def test_cuda_train_step_densifies_with_fused_ssim_and_round_trips(demo_scene, tmp_path, monkeypatch):
    fused_launches = []
    fused_forward = ssim_module._fused_forward
    monkeypatch.setattr(ssim_module, "_fused_forward",
                        lambda *args, **kwargs: fused_launches.append(1) or fused_forward(*args, **kwargs))
    dataset = load_dataset(demo_scene)
    strategy = StrategyConfig(refine_start=10, refine_every=10, reset_opacity_every=1000, grow_grad2d=1e-5)
    backend = GaussianBackend.from_dataset(dataset, GaussianConfig(device="cuda", strategy=strategy))
    assert backend.rasterizer == "gsplat", "gsplat's CUDA extension did not build (see the warning)"
    loss = PhotometricLoss(LossWeights())  # 0.8 L1 + 0.2 D-SSIM
    initial_count = len(backend.splats["means"])
    losses = [backend.train_step(dataset, loss)["loss"] for _ in range(40)]

    assert all(torch.isfinite(torch.tensor(losses)))
    assert len(backend.splats["means"]) > initial_count  # cloned and split by gsplat's DefaultStrategy
    assert len(fused_launches) == 40  # every step's D-SSIM went through the fused kernel
    for name in SPLAT_KEYS:
        param = backend.splats[name]
        assert param.is_cuda and torch.isfinite(param).all(), name
        assert backend.optimizers[name].state[param]["exp_avg"].shape == param.shape, name

    path = tmp_path / "checkpoint.pt"
    save_torch(path, backend.state_dict())
    restored = GaussianBackend.from_state_dict(load_checkpoint_file(path))
    assert restored.step == backend.step == 40 and restored.device.type == "cuda"
    for name in SPLAT_KEYS:
        assert torch.equal(restored.splats[name], backend.splats[name]), name
    views = dataset.cameras[dataset.eval_indices[:3]]
    for a, b in zip(restored.render(views), backend.render(views)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # gsplat's forward pass is deterministic
    for key, value in backend.strategy_state.items():
        if isinstance(value, torch.Tensor):
            assert restored.strategy_state[key].device.type == "cuda" and torch.equal(restored.strategy_state[key], value)
    stats = restored.train_step(dataset, loss)  # and it trains on
    assert restored.step == 41 and torch.isfinite(torch.tensor(stats["loss"]))
