"""SSIM / L1+D-SSIM: the PyTorch reference against direct computations, and the fused kernels (CUDA, and the C++ one
on the CPU) against it."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from tests.conftest import requires_cuda

from splat2splat.kernels import build
from splat2splat.kernels import ssim as ssim_module
from splat2splat.kernels.ssim import (
    C1,
    C2,
    cpu_ssim_extension,
    fused_ssim_extension,
    l1_dssim_loss,
    reference_l1_dssim_loss,
    reference_ssim_map,
    ssim,
    ssim_map,
)


def direct_ssim_map(pred: torch.Tensor, target: torch.Tensor, radius: int = 5, sigma: float = 1.5) -> torch.Tensor:
    """SSIM of [H, W] images by explicit windowed sums per pixel (zero outside the image), in Python floats."""
    offsets = range(-radius, radius + 1)
    weights_1d = [math.exp(-(d * d) / (2 * sigma * sigma)) for d in offsets]
    total = sum(weights_1d)
    weights_1d = [w / total for w in weights_1d]
    height, width = pred.shape
    x, y = pred.tolist(), target.tolist()

    def windowed_mean(values, i: int, j: int) -> float:
        return sum(
            weights_1d[di + radius] * weights_1d[dj + radius] * values(i + di, j + dj)
            for di in offsets
            for dj in offsets
            if 0 <= i + di < height and 0 <= j + dj < width
        )

    out = torch.empty(height, width, dtype=torch.float64)
    for i in range(height):
        for j in range(width):
            mu_x = windowed_mean(lambda a, b: x[a][b], i, j)
            mu_y = windowed_mean(lambda a, b: y[a][b], i, j)
            var_x = windowed_mean(lambda a, b: x[a][b] ** 2, i, j) - mu_x**2
            var_y = windowed_mean(lambda a, b: y[a][b] ** 2, i, j) - mu_y**2
            cov = windowed_mean(lambda a, b: x[a][b] * y[a][b], i, j) - mu_x * mu_y
            out[i, j] = ((2 * mu_x * mu_y + C1) * (2 * cov + C2)) / ((mu_x**2 + mu_y**2 + C1) * (var_x + var_y + C2))
    return out


def random_images(shape, dtype=torch.float64, device="cpu", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    pred = torch.rand(shape, generator=generator, dtype=dtype).to(device)
    target = torch.rand(shape, generator=generator, dtype=dtype).to(device)
    return pred, target


# ------------------------------------------------------------------------------------------- reference
def test_reference_matches_direct_windowed_sums():
    pred, target = random_images((1, 2, 9, 7))
    reference = reference_ssim_map(pred, target)
    for channel in range(2):
        expected = direct_ssim_map(pred[0, channel], target[0, channel])
        torch.testing.assert_close(reference[0, channel], expected, rtol=1e-10, atol=1e-12)


def test_ssim_of_an_image_with_itself_is_one():
    pred, _ = random_images((2, 8, 9, 3))
    torch.testing.assert_close(ssim(pred, pred), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(ssim_map(pred, pred), torch.ones_like(pred))


def test_constant_images_have_the_luminance_term_away_from_the_border():
    a, b = 0.3, 0.7
    pred = torch.full((1, 1, 13, 13), a, dtype=torch.float64)
    target = torch.full((1, 1, 13, 13), b, dtype=torch.float64)
    # Pixels whose whole 11x11 window is inside the image: mean a / b, zero variance.
    interior = reference_ssim_map(pred, target)[0, 0, 5:8, 5:8]
    expected = (2 * a * b + C1) / (a * a + b * b + C1)
    torch.testing.assert_close(interior, torch.full_like(interior, expected))


def test_loss_combines_l1_and_dssim():
    pred, target = random_images((2, 6, 5, 3))
    weight = 0.2
    expected = (1 - weight) * (pred - target).abs().mean() + weight * (1 - ssim(pred, target))
    torch.testing.assert_close(l1_dssim_loss(pred, target, weight), expected)
    torch.testing.assert_close(l1_dssim_loss(pred, target, 0.0), (pred - target).abs().mean())


def test_loss_gradient_matches_finite_differences():
    pred, target = random_images((1, 6, 5, 2))
    pred.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: l1_dssim_loss(p, target, 0.3), (pred,), fast_mode=True)


def test_cpu_float16_and_target_gradients_use_the_reference(monkeypatch):
    """What the CPU kernel does not take (other dtypes, a target that needs a gradient) goes to the reference."""
    from splat2splat.kernels import ssim as ssim_module

    monkeypatch.setattr(ssim_module, "_fused_forward", lambda *a, **k: pytest.fail("the kernel ran"))
    pred, target = random_images((1, 6, 7, 3), dtype=torch.float64)
    target.requires_grad_(True)
    torch.testing.assert_close(l1_dssim_loss(pred, target), reference_l1_dssim_loss(pred, target))
    half_pred, half_target = pred.detach().half(), target.detach().half()
    assert torch.equal(l1_dssim_loss(half_pred, half_target), reference_l1_dssim_loss(half_pred, half_target))


# -------------------------------------------------------------------------------------------- build
def test_sources_are_found():
    source_dir = build.cuda_source_dir()
    assert (source_dir / "fused_ssim.cu").is_file() and (source_dir / "fused_ssim.cpp").is_file()


def test_build_failure_warns_once_and_falls_back(monkeypatch, caplog):
    calls = []

    def failing_compile(name, sources, cuda):
        calls.append(name)
        raise RuntimeError("nvcc exploded")

    monkeypatch.setattr(build.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(build, "_compile", failing_compile)
    build._load_once.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=build.__name__):
            assert build.load_extension("splat2splat_test_broken", ["broken.cu"]) is None
            assert build.load_extension("splat2splat_test_broken", ["broken.cu"]) is None
    finally:
        build._load_once.cache_clear()
    assert calls == ["splat2splat_test_broken"]
    assert [record.levelno for record in caplog.records] == [logging.WARNING]
    assert "nvcc exploded" in caplog.text


# --------------------------------------------------------------------------------------- CUDA parity
def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    """Elementwise closeness relative to the largest magnitude (gradients of a mean are tiny everywhere)."""
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * float(expected.detach().abs().max()))


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the fused kernel's forward and backward launches, and makes the public functions fail where they would
    use the PyTorch reference: a passing comparison must come from the kernel, not the fallback."""
    from splat2splat.kernels import ssim as ssim_module

    calls = {"forward": 0, "backward": 0}
    forward, backward = ssim_module._fused_forward, ssim_module._fused_backward

    def counted_forward(*args, **kwargs):
        calls["forward"] += 1
        return forward(*args, **kwargs)

    def counted_backward(*args, **kwargs):
        calls["backward"] += 1
        return backward(*args, **kwargs)

    use_kernel = ssim_module._use_fused_kernel

    def no_fallback(*args, **kwargs):
        assert use_kernel(*args, **kwargs), "the PyTorch reference would run instead of the fused kernel"
        return True

    monkeypatch.setattr(ssim_module, "_fused_forward", counted_forward)
    monkeypatch.setattr(ssim_module, "_fused_backward", counted_backward)
    monkeypatch.setattr(ssim_module, "_use_fused_kernel", no_fallback)
    return calls


def check_kernel_matches_reference(device: str, dtype: torch.dtype, shape, rtol: float) -> None:
    """The kernel on ``device`` (float32 or float64) against the reference evaluated in float64: the L1 + D-SSIM
    loss at two weights and the SSIM map with an arbitrary upstream gradient, values and gradients."""
    pred, target = random_images(shape, dtype=dtype, device=device, seed=1)
    exact = lambda t: t.detach().double().requires_grad_(True)  # noqa: E731
    for weight in (0.2, 1.0):
        fused_pred, reference_pred = pred.clone().requires_grad_(True), exact(pred)
        fused = l1_dssim_loss(fused_pred, target, weight)
        reference = reference_l1_dssim_loss(reference_pred, target.double(), weight)
        fused.backward()
        reference.backward()
        assert fused.dtype == dtype and fused_pred.grad.dtype == dtype
        assert_close_to_scale(fused.double(), reference, rtol)
        assert_close_to_scale(fused_pred.grad.double(), reference_pred.grad, rtol)

    # The SSIM map with an arbitrary upstream gradient (the path of ssim() and losses.py).
    pred_bchw, target_bchw = pred.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2)
    upstream = torch.randn(pred_bchw.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    upstream = upstream.to(device)
    fused_pred, reference_pred = pred_bchw.clone().requires_grad_(True), exact(pred_bchw)
    fused_map = ssim_map(fused_pred, target_bchw)
    reference_map = reference_ssim_map(reference_pred, target_bchw.double())
    assert_close_to_scale(fused_map.double(), reference_map, rtol)
    (fused_map * upstream.to(dtype)).sum().backward()
    (reference_map * upstream).sum().backward()
    assert_close_to_scale(fused_pred.grad.double(), reference_pred.grad, rtol)


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 5, 7, 3), (2, 37, 50, 3), (1, 64, 48, 1)])
def test_fused_kernel_matches_reference(dtype, shape, fused_calls):
    """TF32 off: cuDNN's default TF32 convolutions would make a float32 reference itself wrong by about 1e-3."""
    assert fused_ssim_extension() is not None, "the fused SSIM extension failed to build (see the warning)"
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        check_kernel_matches_reference("cuda", dtype, shape, rtol=1e-4 if dtype == torch.float32 else 1e-9)
    # Two losses and one map, each forward and backward: all through the kernel.
    assert fused_calls == {"forward": 3, "backward": 3}


needs_cpu_compiler = pytest.mark.skipif(build._missing_cpu_compiler() is not None,
                                        reason="no C++ compiler: the CPU SSIM is the PyTorch reference")


@needs_cpu_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
# Odd sizes, images smaller than the 11 px window (down to one pixel), several planes.
@pytest.mark.parametrize("shape", [(1, 5, 7, 3), (2, 1, 1, 3), (1, 3, 10, 1), (1, 12, 4, 2), (2, 37, 50, 3)])
def test_cpu_kernel_matches_reference(dtype, shape, fused_calls):
    # A machine with a compiler must build it: a broken build is a failure, not a skip.
    assert cpu_ssim_extension() is not None, "the C++ SSIM extension failed to build (see the warning)"
    check_kernel_matches_reference("cpu", dtype, shape, rtol=1e-5 if dtype == torch.float32 else 1e-12)
    assert fused_calls == {"forward": 3, "backward": 3}


@needs_cpu_compiler
def test_cpu_kernel_is_deterministic_for_any_thread_count():
    pred, target = random_images((1, 45, 61, 3), dtype=torch.float32, seed=3)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            leaf = pred.clone().requires_grad_(True)
            loss = l1_dssim_loss(leaf, target)
            loss.backward()
            results.append((loss.detach(), leaf.grad))
    finally:
        torch.set_num_threads(threads)
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])


def as_planes(images: torch.Tensor) -> torch.Tensor:
    """[B, H, W, C] -> contiguous [B * C, H, W]."""
    return images.permute(0, 3, 1, 2).reshape(-1, *images.shape[1:3]).contiguous()


@needs_cpu_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 5, 7, 3), (2, 1, 1, 3), (1, 12, 4, 2), (2, 37, 50, 3), (1, 9, 70, 1)])
def test_cpu_kernel_gives_the_same_bits_on_channel_last_images_and_with_a_broadcast_gradient(dtype, shape):
    """[B, H, W, C] images (no copy into planes) and one broadcast upstream number (the gradient of a mean) are the
    planes' operations in the same order: bit for bit the same map, partials and gradients."""
    extension = cpu_ssim_extension()
    assert extension is not None, "the C++ SSIM extension failed to build (see the warning)"
    pred, target = random_images(shape, dtype=dtype, seed=4)
    window = ssim_module._gaussian_window(dtype=dtype)
    planes = extension.forward(as_planes(pred), as_planes(target), window, True)
    channel_last = extension.forward(pred, target, window, True)
    for plane_values, channel_last_values in zip(planes, channel_last):
        assert torch.equal(as_planes(channel_last_values), plane_values)

    upstream = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(5))
    plane_grad = extension.backward(as_planes(pred), as_planes(target), window, as_planes(upstream), *planes[1:], 0.3)
    channel_last_grad = extension.backward(pred, target, window, upstream, *channel_last[1:], 0.3)
    assert torch.equal(as_planes(channel_last_grad), plane_grad)

    value = -0.7 / pred.numel()
    filled = extension.backward(pred, target, window, torch.full_like(pred, value), *channel_last[1:], 0.3)
    broadcast = torch.full((), value, dtype=dtype).expand_as(pred)
    assert torch.equal(extension.backward(pred, target, window, broadcast, *channel_last[1:], 0.3), filled)
    plane_broadcast = torch.full((), value, dtype=dtype).expand_as(plane_grad)
    plane_broadcast_grad = extension.backward(as_planes(pred), as_planes(target), window, plane_broadcast, *planes[1:],
                                              0.3)
    assert torch.equal(plane_broadcast_grad, as_planes(filled))


@needs_cpu_compiler
def test_cpu_kernel_refuses_a_grad_map_it_cannot_read():
    extension = cpu_ssim_extension()
    pred, target = random_images((1, 6, 5, 3), dtype=torch.float32)
    window = ssim_module._gaussian_window()
    partials = extension.forward(pred, target, window, True)[1:]
    with pytest.raises(RuntimeError, match="broadcast grad_map"):
        extension.backward(pred, target, window, torch.ones(()).expand(1, 6, 4, 3), *partials, 0.0)
    with pytest.raises(RuntimeError, match="grad_map must be contiguous"):
        extension.backward(pred, target, window, torch.ones(1, 3, 6, 5).permute(0, 2, 3, 1), *partials, 0.0)


@needs_cpu_compiler
def test_channel_last_cpu_images_reach_the_kernel_without_a_copy(fused_calls):
    """The training loss's [B, H, W, C] images go to the CPU kernel as they are; planes stay planes."""
    pred, target = random_images((1, 8, 9, 3), dtype=torch.float32)
    pred_values, target_values = ssim_module._kernel_inputs(pred.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2))
    assert pred_values.data_ptr() == pred.data_ptr() and target_values.data_ptr() == target.data_ptr()
    assert pred_values.shape == pred.shape
    bchw = pred.permute(0, 3, 1, 2).contiguous()
    assert ssim_module._kernel_inputs(bchw, bchw)[0].data_ptr() == bchw.data_ptr()
    # A channel-last pred with a planar target: both as planes.
    mixed = ssim_module._kernel_inputs(pred.permute(0, 3, 1, 2), bchw)
    assert [values.dim() for values in mixed] == [3, 3]
    torch.testing.assert_close(mixed[0], mixed[1])
    # ssim() of a channel-last pair: the map's gradient (a broadcast number) through the kernel.
    leaf = pred.clone().requires_grad_(True)
    ssim(leaf, target).backward()
    reference_leaf = pred.double().requires_grad_(True)
    reference_ssim_map(reference_leaf.permute(0, 3, 1, 2), target.double().permute(0, 3, 1, 2)).mean().backward()
    assert_close_to_scale(leaf.grad.double(), reference_leaf.grad, 1e-5)
    assert fused_calls == {"forward": 1, "backward": 1}
