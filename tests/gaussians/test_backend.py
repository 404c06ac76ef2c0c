"""The Gaussian backend: our opacity reset (gsplat 1.5.3's never fires), culling during edits, schedules that
continue from the scene's step, random background where allowed; and on a GPU a CUDA training step through
gsplat with densification, the fused SSIM kernel and a checkpoint round trip."""

from __future__ import annotations

import copy

import pytest
import torch

from splat2splat.data.readers import load_dataset
from splat2splat.gaussians.backend import GaussianBackend, GaussianConfig, StrategyConfig
from splat2splat.checkpoint import load_checkpoint_file, read_checkpoint, save_checkpoint
from splat2splat.gaussians.model import SPLAT_KEYS
from splat2splat.io import save_torch
from splat2splat.kernels import ssim as ssim_module
from splat2splat.losses import LossWeights, PhotometricLoss
from tests.conftest import requires_cuda

LOSS = PhotometricLoss(LossWeights())


@pytest.fixture(scope="module")
def dataset(demo_scene):
    return load_dataset(demo_scene, downscale=4)  # 16 px: a step takes milliseconds


def backend_for(dataset, **strategy) -> GaussianBackend:
    config = GaussianConfig(device="cpu", strategy=StrategyConfig(**strategy))  # auto: the C++ rasterizer
    return GaussianBackend.from_dataset(dataset, config)


def train(backend, dataset, steps: int) -> None:
    for _ in range(steps):
        backend.train_step(dataset, LOSS)


def test_gsplat_1_5_3_never_resets_opacity_by_itself():
    """The reason for our own reset: DefaultStrategy's `step % reset_every == 0 & step > 0` parses as
    `step % reset_every == (0 & step) > 0`, a chained comparison whose second half (0 > 0) is False."""
    for step in (0, 3000, 6000):
        assert not (step % 3000 == 0 & step > 0)


def test_opacity_is_reset_every_reset_opacity_every_steps_while_refining(dataset):
    backend = backend_for(dataset, refine_start=1000, reset_opacity_every=5, refine_stop=100)
    backend.splats["opacities"].data.fill_(3.0)  # sigmoid 0.95: far above the reset value
    train(backend, dataset, 5)  # steps 0-4: no reset yet
    assert torch.sigmoid(backend.splats["opacities"]).max() > 0.5
    train(backend, dataset, 1)  # step 5
    reset_value = backend.config.strategy.prune_opacity * 2
    assert torch.sigmoid(backend.splats["opacities"]).max() <= reset_value + 1e-6
    moments = backend.optimizers["opacities"].state[backend.splats["opacities"]]
    assert moments["exp_avg"].abs().max() == 0 and moments["exp_avg_sq"].abs().max() == 0


@pytest.mark.parametrize("strategy", [dict(reset_opacity_every=0), dict(reset_opacity_every=5, refine_stop=5),
                                      dict(reset_opacity_every=5, kind="none")])
def test_no_reset_when_disabled_past_refine_stop_or_without_the_default_strategy(dataset, strategy):
    backend = backend_for(dataset, refine_start=1000, **strategy)
    backend.splats["opacities"].data.fill_(3.0)
    train(backend, dataset, 6)
    assert torch.sigmoid(backend.splats["opacities"]).max() > 0.5


def test_cull_removes_transparent_and_oversized_gaussians_every_refine_every_steps(dataset):
    backend = backend_for(dataset, refine_every=4)
    backend.configure_edit("cull", random_background=False)
    count = len(backend.splats["means"])
    backend.splats["opacities"].data.fill_(2.0)  # 0.88: far from the threshold (the init 0.1 sits on it)
    backend.splats["opacities"].data[:10] = -5.0  # opacity 0.007 < 0.1
    backend.splats["scales"].data[10:15] = 0.0  # extent 1.0 > 0.5
    train(backend, dataset, 1)  # step 0 culls (a multiple of refine_every)
    assert len(backend.splats["means"]) == count - 15
    assert all(len(p) == count - 15 for p in backend.splats.values())
    backend.splats["opacities"].data[:3] = -5.0
    train(backend, dataset, 3)  # steps 1-3: nothing
    assert len(backend.splats["means"]) == count - 15
    train(backend, dataset, 1)  # step 4
    assert len(backend.splats["means"]) == count - 18


def test_density_control_off_and_past_refine_stop_change_nothing(dataset):
    for mode, strategy in (("off", dict(refine_start=0, refine_every=2, grow_grad2d=1e-9)),
                           ("continue", dict(refine_start=0, refine_every=2, grow_grad2d=1e-9, refine_stop=0))):
        backend = backend_for(dataset, **strategy)
        backend.configure_edit(mode, random_background=False)
        count = len(backend.splats["means"])
        backend.splats["opacities"].data[:10] = -5.0
        train(backend, dataset, 6)
        assert len(backend.splats["means"]) == count, mode
    with pytest.raises(ValueError, match="density control"):
        backend.configure_edit("sometimes", random_background=False)


def test_density_control_continue_densifies_before_refine_stop(dataset):
    backend = backend_for(dataset, refine_start=0, refine_every=2, grow_grad2d=1e-9, reset_opacity_every=0)
    count = len(backend.splats["means"])
    train(backend, dataset, 6)
    assert len(backend.splats["means"]) != count


def test_position_learning_rate_follows_the_scenes_step_so_an_edit_continues_it(dataset):
    backend = backend_for(dataset, kind="none")
    backend.step = 20_000  # e.g. loaded from a 20k checkpoint
    train(backend, dataset, 1)
    c = backend.config
    expected = c.means_lr * c.scene_scale * c.means_lr_final_ratio ** (20_000 / c.lr_decay_steps)
    assert backend.optimizers["means"].param_groups[0]["lr"] == pytest.approx(expected)


def test_a_converged_scene_trains_at_the_final_rates_without_densifying(dataset):
    backend = backend_for(dataset, refine_start=0, refine_every=2, grow_grad2d=1e-9)
    backend.mark_converged()
    assert backend.step == backend.converged_step() == 30_000
    count = len(backend.splats["means"])
    train(backend, dataset, 4)
    c = backend.config
    assert backend.optimizers["means"].param_groups[0]["lr"] == pytest.approx(
        c.means_lr * c.scene_scale * c.means_lr_final_ratio)
    assert len(backend.splats["means"]) == count and backend.active_sh_degree == 3


def test_random_background_only_where_the_data_allows_it(dataset):
    backend = backend_for(dataset, kind="none")
    backend.configure_edit("off", random_background=True)
    assert not torch.equal(backend.training_background(dataset), backend.background)
    composited = copy.copy(dataset)
    composited.alpha_composited = True
    assert torch.equal(backend.training_background(composited), backend.background)
    backend.configure_edit("off", random_background=False)
    assert torch.equal(backend.training_background(dataset), backend.background)


def test_density_control_survives_a_checkpoint(dataset):
    backend = backend_for(dataset, kind="none")
    backend.configure_edit("cull", random_background=True)
    restored = GaussianBackend.from_state_dict(backend.state_dict())
    assert restored.density_control == "cull" and restored.config.random_background


def test_a_backend_built_from_a_state_does_not_change_that_state_by_training(dataset):
    """On the CPU `.to(device)` returns the same tensor: parameters and Adam moments must be copied, or two
    backends restored from one state (a benchmark's methods) would train the same tensors."""
    backend = backend_for(dataset, kind="none")
    train(backend, dataset, 2)
    state = backend.state_dict()
    snapshot = copy.deepcopy(state)
    train(GaussianBackend.from_state_dict(state), dataset, 3)
    for key in SPLAT_KEYS:
        assert torch.equal(state["splats"][key], snapshot["splats"][key]), key
        assert torch.equal(state["optimizers"][key]["state"][0]["exp_avg"],
                           snapshot["optimizers"][key]["state"][0]["exp_avg"]), key


def test_frozen_gaussians_keep_their_values_and_follow_culling(dataset):
    backend = backend_for(dataset, kind="none", refine_every=1, cull_opacity=0.2)
    train(backend, dataset, 2)
    frozen = torch.arange(len(backend.splats["means"])) % 2 == 0
    with torch.no_grad():  # make some unfrozen AND frozen Gaussians cull candidates
        backend.splats["opacities"][:40] = -5.0
    kept = {key: value.detach()[frozen].clone() for key, value in backend.splats.items()}
    backend.freeze(frozen)
    backend.configure_edit("cull", random_background=False)
    count = len(frozen)
    train(backend, dataset, 3)
    assert len(backend.splats["means"]) < count and int(backend.frozen.sum()) == int(frozen.sum())
    for key, value in kept.items():
        assert torch.equal(backend.splats[key].detach()[backend.frozen], value), key
    restored = GaussianBackend.from_state_dict(backend.state_dict())
    assert torch.equal(restored.frozen, backend.frozen)
    backend.configure_edit("continue", random_background=False)
    backend.strategy, backend.step = object(), 0  # a strategy that would still densify
    with pytest.raises(ValueError, match="density strategy is still active"):
        train(backend, dataset, 1)


def test_training_on_a_given_view_with_an_edit_hook(dataset):
    backend = backend_for(dataset, kind="none")
    view = dataset.train_indices[3]
    seen = []

    def edit(v, render):
        seen.append((v, render.shape))
        dataset.replace_image(v, torch.zeros_like(render))

    order_before = list(backend._view_order)
    try:
        backend.train_step(dataset, LOSS, view=view, edit=edit)
        assert seen == [(view, dataset.original(view).shape)]
        assert backend._view_order == order_before  # the epoch order is left alone
    finally:
        dataset.reset_edits()


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


def test_a_state_loaded_twice_trains_the_same_twice(dataset):
    """Loading copies the state: training one backend must not change the state another one starts from."""
    source = backend_for(dataset, kind="none")
    train(source, dataset, 2)
    state = source.state_dict()
    results = []
    for _ in range(2):
        backend = GaussianBackend.from_state_dict(state, "cpu")
        train(backend, dataset, 3)
        results.append({k: v.detach().clone() for k, v in backend.splats.items()})
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_cpu_adam_is_fused_and_resumes_a_state_saved_without_it(dataset, tmp_path):
    """Fused Adam on the CPU: the update of torch's per-tensor Adam up to float rounding, its checkpoint loads, and
    a state saved by a non-fused optimiser (another device, an older checkpoint) resumes with the fused one."""
    backend = backend_for(dataset, kind="none")
    assert all(optimizer.param_groups[0]["fused"] for optimizer in backend.optimizers.values())
    train(backend, dataset, 3)
    save_checkpoint(tmp_path / "checkpoint.pt", backend, None, 1)
    state = read_checkpoint(tmp_path / "checkpoint.pt")["backend_state"]  # the format admits fused groups
    for saved in state["optimizers"].values():
        for group in saved["param_groups"]:
            group["fused"] = None
    fused, loop = GaussianBackend.from_state_dict(state), GaussianBackend.from_state_dict(state)
    assert all(optimizer.param_groups[0]["fused"] for optimizer in fused.optimizers.values())
    for optimizer in loop.optimizers.values():
        optimizer.param_groups[0]["fused"] = None
    # One step from the same state: the two updates then differ by float rounding only (after a second step the
    # gradients differ too, and Adam's normalisation can amplify a last-bit difference of an almost-still entry).
    train(fused, dataset, 1)
    train(loop, dataset, 1)
    for key in SPLAT_KEYS:  # (shN does not move yet: the SH degree schedule starts at 0)
        moved = float((loop.splats[key] - backend.splats[key]).detach().abs().max())
        assert moved > 0 or key == "shN", key
        torch.testing.assert_close(fused.splats[key].detach(), loop.splats[key].detach(), rtol=0, atol=1e-3 * moved,
                                   msg=key)
