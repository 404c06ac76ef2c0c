"""The C++ CPU rasterizer against its PyTorch reference: images, alphas, radii and every gradient on random scenes
with the hard cases (Gaussians on and behind the camera plane, huge, tiny, fully transparent, opaque), densification
statistics during training, a short training run's held-out PSNR, and the fallback to PyTorch without a compiler."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from splat2splat.data.readers import load_dataset
from splat2splat.errors import InputError
from splat2splat.gaussians.backend import GaussianBackend, GaussianConfig, StrategyConfig
from splat2splat.gaussians.rasterize import choose_rasterizer, rasterize
from splat2splat.kernels.cpu_rasterizer import cpu_rasterizer_extension
from splat2splat.losses import LossWeights, PhotometricLoss
from splat2splat.training import TrainLoop

HAS_COMPILER = shutil.which(os.environ.get("CXX") or "c++") is not None
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler: the PyTorch rasterizer is used")
PARAMETERS = ("means", "quats", "scales", "opacities", "sh")


@pytest.fixture(scope="module", autouse=True)
def extension():
    if HAS_COMPILER:  # a machine with a compiler must build it: a broken build is a failure, not a skip
        assert cpu_rasterizer_extension() is not None, "the C++ rasterizer did not build (see the warning)"


def hard_scene(n: int, dtype, seed: int = 0):
    """Random Gaussians in front of two cameras, and in the first few slots the hard cases."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([1.6, 1.4, 1.0])
    quats = torch.randn(n, 4, generator=g)
    scales = torch.exp(torch.randn(n, 3, generator=g) * 0.4) * 0.03
    opacities = torch.rand(n, generator=g) * 0.9 + 0.05
    sh = torch.randn(n, 16, 3, generator=g) * 0.4
    means[0] = torch.tensor([0.1, 0.1, -2.5])  # on the first camera's plane (depth 0)
    means[1] = torch.tensor([0.0, 0.2, -3.5])  # behind it
    means[2] = torch.tensor([0.1, -0.1, -2.5 + 0.0100001])  # just beyond the near plane
    scales[3] = 2.0  # huge: covers every tile
    opacities[3] = 0.3
    scales[4:8] = 1e-5  # tiny: sub-pixel, only the 0.3 px blur is left
    opacities[8:12] = 0.0  # fully transparent
    opacities[12:20] = 1.0  # opaque: clamped alphas and early stops
    scales[12:20] = 0.08
    viewmats = torch.eye(4).repeat(2, 1, 1)
    viewmats[:, 2, 3] = 2.5
    viewmats[1, 0, 3] = 0.2  # the second camera slightly to the side
    Ks = torch.tensor([[50.0, 0, 27.0], [0, 48.0, 18.5], [0, 0, 1]]).repeat(2, 1, 1)
    return [t.to(dtype) for t in (means, quats, scales, opacities, sh)], viewmats.to(dtype), Ks.to(dtype)


def render_with(backend: str, params, viewmats, Ks, width, height, sh_degree, tile_size=16):
    params = [p.clone().requires_grad_(True) for p in params]
    background = torch.tensor([0.2, 0.5, 0.9], dtype=params[0].dtype)
    image, alpha, info = rasterize(*params, viewmats, Ks, width, height, sh_degree, background, tile_size=tile_size,
                                   backend=backend)
    info["means2d"].retain_grad()  # as gsplat's strategies do
    weights = torch.rand(image.shape, generator=torch.Generator().manual_seed(1), dtype=image.dtype)
    ((image * weights).sum() + (alpha * weights[..., :1]).sum()).backward()
    grads = {name: p.grad for name, p in zip(PARAMETERS, params)}
    grads["means2d"] = info["means2d"].grad
    return image.detach(), alpha.detach(), info, grads


def assert_gradients_close(actual: dict, expected: dict) -> None:
    for name, reference in expected.items():
        assert actual[name] is not None and torch.isfinite(actual[name]).all(), name
        scale = float(reference.abs().max())
        assert scale > 0, name
        torch.testing.assert_close(actual[name], reference, rtol=1e-4, atol=1e-4 * scale, msg=name)


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sh_degree,tile_size", [(3, 16), (0, 8), (1, 16), (2, 16), (3, 32)])  # 32: 2 lane groups
def test_images_and_gradients_match_the_pytorch_rasterizer(dtype, sh_degree, tile_size):
    params, viewmats, Ks = hard_scene(600, dtype)
    width, height = 53, 37  # not a multiple of the tile size
    image, alpha, info, grads = render_with("cpp", params, viewmats, Ks, width, height, sh_degree, tile_size)
    ref_image, ref_alpha, ref_info, ref_grads = render_with("torch", params, viewmats, Ks, width, height, sh_degree,
                                                            tile_size)
    torch.testing.assert_close(image, ref_image, rtol=0, atol=1e-5)
    torch.testing.assert_close(alpha, ref_alpha, rtol=0, atol=1e-5)
    assert torch.equal(info["radii"], ref_info["radii"])
    assert_gradients_close(grads, ref_grads)
    radii = info["radii"]
    assert (radii[0, :2] == 0).all() and (radii[:, 8:12] == 0).all()  # on and behind the plane; transparent
    assert (radii[:, 3] > max(width, height)).all() and (radii[:, 4:8] > 0).all()  # huge and tiny are drawn
    assert (alpha > 0.99).any()
    for name in PARAMETERS:  # culled Gaussians get exactly zero gradient
        assert (grads[name][8:12] == 0).all() and (grads[name][1] == 0).all(), name


@needs_compiler
@pytest.mark.parametrize("tile_size", [16, 32])
def test_images_and_gradients_do_not_depend_on_the_thread_count(tile_size):
    """Tiles run in parallel in any order; each tile's gradient sums are added in a fixed order afterwards."""
    params, viewmats, Ks = hard_scene(600, torch.float32)
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(render_with("cpp", params, viewmats, Ks, 53, 37, 3, tile_size))
    finally:
        torch.set_num_threads(threads)
    image, alpha, _, grads = results[0]
    for other_image, other_alpha, _, other_grads in results[1:]:
        assert torch.equal(other_image, image) and torch.equal(other_alpha, alpha)
        for name, grad in grads.items():
            assert torch.equal(other_grads[name], grad), name


@needs_compiler
def test_every_pixel_stops_where_the_reference_stops():
    """Many opaque layers: the transmittance stop decides most pixels' pair lists."""
    params, viewmats, Ks = hard_scene(1500, torch.float32, seed=3)
    params[3][:] = 0.98
    params[2][:] *= 2.0
    image, alpha, _, grads = render_with("cpp", params, viewmats[:1], Ks[:1], 48, 40, 3)
    ref_image, ref_alpha, _, ref_grads = render_with("torch", params, viewmats[:1], Ks[:1], 48, 40, 3)
    assert (ref_alpha > 0.999).float().mean() > 0.5
    torch.testing.assert_close(image, ref_image, rtol=0, atol=1e-5)
    torch.testing.assert_close(alpha, ref_alpha, rtol=0, atol=1e-5)
    assert_gradients_close(grads, ref_grads)


@needs_compiler
def test_needles_at_every_angle_match_the_pytorch_rasterizer():
    """Long thin Gaussians: the rows of a tile that their ellipse misses inside the tile are skipped (a float64
    parabola test), which must never drop a pair the reference blends."""
    params, viewmats, Ks = hard_scene(400, torch.float32, seed=5)
    scales = params[2]
    scales[:, 0] *= 30.0  # needles, a few pixels wide and tens long, at random angles
    scales[:, 1] *= 0.3
    image, alpha, _, grads = render_with("cpp", params, viewmats, Ks, 53, 37, 3)
    ref_image, ref_alpha, _, ref_grads = render_with("torch", params, viewmats, Ks, 53, 37, 3)
    torch.testing.assert_close(image, ref_image, rtol=0, atol=1e-5)
    torch.testing.assert_close(alpha, ref_alpha, rtol=0, atol=1e-5)
    assert_gradients_close(grads, ref_grads)


@needs_compiler
@pytest.mark.parametrize("channels", [1, 3, 4, 7])
def test_any_channel_count_matches_the_pytorch_compositing(channels):
    """RGB runs a kernel with the channel count fixed at compile time, other counts (depth, features) one that reads
    it at run time: both against the PyTorch compositing, image, alpha and every input's gradient."""
    from splat2splat.gaussians import rasterize as rasterize_module
    from splat2splat.kernels.cpu_rasterizer import composite

    params, viewmats, Ks = hard_scene(500, torch.float32, seed=7)
    means, quats, scales, opacities, _ = params
    radii, means2d, depths, conics = rasterize_module.project(means, quats, scales, opacities[None], viewmats[:1],
                                                              Ks[:1], 53, 37, 0.01, 1e10, 0.3)
    colors = torch.rand(len(means), channels, generator=torch.Generator().manual_seed(2))
    results = []
    for function in (composite, rasterize_module._composite):
        inputs = [t.detach().clone().requires_grad_(True) for t in (means2d[0], conics[0], opacities, colors)]
        image, alpha = function(*inputs, depths[0], radii[0], 53, 37, 16)
        weights = torch.rand(37, 53, channels + 1, generator=torch.Generator().manual_seed(3))
        (torch.cat([image, alpha], -1) * weights).sum().backward()
        results.append((image.detach(), alpha.detach(), [t.grad for t in inputs]))
    (image, alpha, grads), (ref_image, ref_alpha, ref_grads) = results
    assert image.shape == (37, 53, channels) and (alpha > 0.5).any()
    torch.testing.assert_close(image, ref_image, rtol=0, atol=1e-5)
    torch.testing.assert_close(alpha, ref_alpha, rtol=0, atol=1e-5)
    assert_gradients_close(dict(zip(("means2d", "conics", "opacities", "colors"), grads)),
                           dict(zip(("means2d", "conics", "opacities", "colors"), ref_grads)))


@needs_compiler
@pytest.mark.parametrize("channels", [1, 3])
def test_the_background_blended_in_the_kernel_matches_the_pytorch_compositing(channels):
    """The kernel blends the background (image + (1 - alpha) background) and the autograd function gives its
    gradient and alpha's: against the PyTorch compositing's tensor operations, a background that needs a gradient."""
    from splat2splat.gaussians import rasterize as rasterize_module
    from splat2splat.kernels.cpu_rasterizer import composite

    params, viewmats, Ks = hard_scene(500, torch.float32, seed=7)
    means, quats, scales, opacities, _ = params
    radii, means2d, depths, conics = rasterize_module.project(means, quats, scales, opacities[None], viewmats[:1],
                                                              Ks[:1], 53, 37, 0.01, 1e10, 0.3)
    colors = torch.rand(len(means), channels, generator=torch.Generator().manual_seed(2))
    background = torch.linspace(0.2, 0.9, channels)
    results = []
    for function in (composite, rasterize_module._composite):
        inputs = [t.detach().clone().requires_grad_(True)
                  for t in (means2d[0], conics[0], opacities, colors, background)]
        image, alpha = function(*inputs[:4], depths[0], radii[0], 53, 37, 16, inputs[4])
        weights = torch.rand(37, 53, channels + 1, generator=torch.Generator().manual_seed(3))
        (torch.cat([image, alpha], -1) * weights).sum().backward()
        results.append((image.detach(), [t.grad for t in inputs]))
    (image, grads), (ref_image, ref_grads) = results
    assert (image > background).any() and (image < background).any()  # Gaussians over part of the background
    torch.testing.assert_close(image, ref_image, rtol=0, atol=1e-5)
    names = ("means2d", "conics", "opacities", "colors", "background")
    assert_gradients_close(dict(zip(names, grads)), dict(zip(names, ref_grads)))


@needs_compiler
def test_no_visible_gaussian_gives_the_background_and_zero_gradients():
    params, viewmats, Ks = hard_scene(30, torch.float32)
    params[0][:, 2] = -10.0  # all behind the cameras
    image, alpha, info, grads = render_with("cpp", params, viewmats, Ks, 20, 12, 3)
    assert (info["radii"] == 0).all() and (alpha == 0).all()
    assert torch.equal(image, torch.tensor([0.2, 0.5, 0.9]).expand_as(image))
    assert all(g is None or (g == 0).all() for g in grads.values())


@needs_compiler
def test_auto_picks_the_cpp_rasterizer_on_the_cpu_only():
    assert choose_rasterizer("auto", torch.device("cpu")) == "cpp"
    assert choose_rasterizer("cpp", torch.device("cpu")) == "cpp"
    assert choose_rasterizer("torch", torch.device("cpu")) == "torch"
    with pytest.raises(InputError, match="rasterizer 'cpp' cannot run: it needs the CPU and the scene is on cuda"):
        choose_rasterizer("cpp", torch.device("cuda"))
    assert GaussianConfig().rasterizer == "auto"


# ------------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def dataset(demo_scene):
    return load_dataset(demo_scene, downscale=2)  # 32 px


def trained(dataset, rasterizer: str, steps: int, **strategy) -> tuple[GaussianBackend, list[dict]]:
    config = GaussianConfig(device="cpu", rasterizer=rasterizer, strategy=StrategyConfig(**strategy))
    backend = GaussianBackend.from_dataset(dataset, config)
    assert backend.rasterizer == rasterizer
    loss = PhotometricLoss(LossWeights())
    states = []
    for _ in range(steps):
        backend.train_step(dataset, loss)
        states.append({key: (value.clone() if torch.is_tensor(value) else value)
                       for key, value in backend.strategy_state.items()})
    return backend, states


def densification_run(state: dict, rasterizer: str, dataset, views: list[int]):
    """gsplat's DefaultStrategy fed by ``rasterizer`` on the SAME parameters for every view (no optimiser step:
    trained parameters would drift apart by rounding, amplified by Adam), refining after the last view.
    Returns the strategy's state after each view and the Gaussians after the refinement."""
    config = {**state["config"], "rasterizer": rasterizer}
    backend = GaussianBackend.from_state_dict({**state, "config": config})
    assert backend.rasterizer == rasterizer
    loss = PhotometricLoss(LossWeights())
    torch.manual_seed(0)  # splitting samples new positions
    states = []
    for i, view in enumerate(views):
        backend.step = i + 1  # refine_every = len(views): the last view refines
        image, _, info = backend.rasterize(dataset.cameras[view])
        backend.strategy.step_pre_backward(backend.splats, backend.optimizers, backend.strategy_state, backend.step,
                                           info)
        loss(image, dataset.current[view][None])[0].backward()
        if i + 1 < len(views):
            states.append({k: v.clone() for k, v in backend.strategy_state.items() if torch.is_tensor(v)})
        backend._strategy_post_backward(info)
        for optimizer in backend.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
    return states, {k: v.detach() for k, v in backend.splats.items()}


@needs_compiler
def test_densification_statistics_and_decisions_are_the_reference_ones(dataset):
    views = dataset.train_indices[:6]
    strategy = dict(refine_start=0, refine_every=len(views), refine_stop=1000, grow_grad2d=1e-5)
    config = GaussianConfig(device="cpu", rasterizer="torch", strategy=StrategyConfig(**strategy))
    source = GaussianBackend.from_dataset(dataset, config)
    for _ in range(30):  # away from the initial state: varied sizes and opacities
        source.train_step(dataset, PhotometricLoss(LossWeights()))
    state = source.state_dict()
    fast_states, fast_splats = densification_run(state, "cpp", dataset, views)
    slow_states, slow_splats = densification_run(state, "torch", dataset, views)
    for step, (ours, reference) in enumerate(zip(fast_states, slow_states)):
        assert ours.keys() == reference.keys() and {"count", "grad2d"} <= set(reference), step
        assert torch.equal(ours["count"], reference["count"]), step
        torch.testing.assert_close(ours["grad2d"], reference["grad2d"], rtol=1e-4,
                                   atol=1e-4 * float(reference["grad2d"].abs().max()), msg=f"grad2d, view {step}")
    assert len(slow_splats["means"]) > len(state["splats"]["means"])  # the refinement grew Gaussians
    for key, reference in slow_splats.items():  # the same ones, cloned and split the same way
        assert fast_splats[key].shape == reference.shape, key
        torch.testing.assert_close(fast_splats[key], reference, rtol=1e-5, atol=1e-6, msg=key)


@needs_compiler
def test_a_short_training_run_reaches_the_reference_psnr(dataset):
    scores = {}
    for rasterizer in ("cpp", "torch"):
        torch.manual_seed(0)  # the same draws for the splits of both runs
        backend, _ = trained(dataset, rasterizer, 100, refine_start=50, refine_every=25)
        scores[rasterizer] = TrainLoop(dataset, backend, PhotometricLoss(LossWeights())).evaluate()["psnr"]
    assert scores["cpp"] > 15.0  # it learned something
    assert abs(scores["cpp"] - scores["torch"]) < 0.05, scores


# ------------------------------------------------------------------------------------------------ fallback
FALLBACK_SCRIPT = textwrap.dedent("""
    import logging, sys, torch
    logging.basicConfig(format="%(levelname)s %(message)s")
    sys.path.insert(0, sys.argv[1])
    from tests.kernels.test_cpu_rasterizer import hard_scene
    from splat2splat.gaussians.rasterize import choose_rasterizer, rasterize
    params, viewmats, Ks = hard_scene(200, torch.float32)
    chosen = choose_rasterizer("auto", torch.device("cpu"))
    image = rasterize(*params, viewmats, Ks, 40, 30, 3, torch.ones(3), backend="auto")[0]
    reference = rasterize(*params, viewmats, Ks, 40, 30, 3, torch.ones(3), backend="torch")[0]
    from splat2splat.kernels.cpu_projection import cpu_projection_extension
    from splat2splat.kernels.cpu_rasterizer import cpu_rasterizer_extension
    from splat2splat.kernels.ssim import l1_dssim_loss, reference_l1_dssim_loss
    assert cpu_projection_extension() is None and cpu_rasterizer_extension() is None
    loss_equal = torch.equal(l1_dssim_loss(image, reference.flip(1)), reference_l1_dssim_loss(image, reference.flip(1)))
    print(chosen, bool(torch.equal(image, reference)) and loss_equal, float(image.std()))
""")


@pytest.mark.parametrize("hide", ["CXX", "PATH"])
def test_without_a_compiler_one_warning_and_the_pytorch_rasterizer(tmp_path, hide):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path / "extensions"), PYTHONPATH=root)
    if hide == "CXX":
        env["CXX"] = "/nonexistent/c++"
    else:  # no compiler on PATH: only the Python interpreter's folder
        env.pop("CXX", None)
        env["PATH"] = os.path.dirname(sys.executable)
    result = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT, root], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    chosen, identical, spread = result.stdout.split()
    assert (chosen, identical) == ("torch", "True") and float(spread) > 0.01
    lines = result.stderr.strip().splitlines()
    # One line for all the C++ extensions (projection, rasterizer and SSIM).
    assert len(lines) == 1 and lines[0].startswith("WARNING could not build the C++ extensions"), result.stderr
    assert "no C++ compiler found" in lines[0]
