"""The photometric loss: L1 and D-SSIM on whole images (through the fused kernel where it builds, else the PyTorch
reference); LPIPS on whole images or on in2n's random patches."""

from __future__ import annotations

import pytest
import torch

from splat2splat.edit.lpips_loss import load_lpips
from splat2splat.kernels import build
from splat2splat.kernels import ssim as ssim_module
from splat2splat.kernels.ssim import reference_ssim_map
from splat2splat.losses import LossWeights, LpipsPatches, PhotometricLoss, crop_patches, random_patches


@pytest.fixture(scope="module")
def lpips():
    torch.manual_seed(0)
    return load_lpips("alex", random_backbone=True)


def images(seed: int, size=(1, 80, 72, 3)) -> torch.Tensor:
    return torch.rand(size, generator=torch.Generator().manual_seed(seed))


def test_patch_lpips_is_lpips_of_the_same_crops_of_prediction_and_target(lpips):
    pred, target = images(1), images(2)
    patches = LpipsPatches(count=5, size=32)
    loss = PhotometricLoss(LossWeights(l1=0.0, dssim=0.0, lpips=1.0), lpips, patches)
    value, terms = loss(pred, target, generator=torch.Generator().manual_seed(7))

    # The same draws, cropped by plain slicing.
    image, top, left = random_patches(pred.shape, patches, torch.Generator().manual_seed(7))
    crops = [(pred[b, t:t + 32, l:l + 32], target[b, t:t + 32, l:l + 32])
             for b, t, l in zip(image.tolist(), top.tolist(), left.tolist())]
    expected = lpips(torch.stack([p for p, _ in crops]), torch.stack([t for _, t in crops]))
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms["lpips"] == pytest.approx(expected.item(), rel=1e-6)
    assert value.item() != pytest.approx(lpips(pred, target).item(), rel=1e-3)  # not the whole-image figure


def test_patch_positions_come_from_the_generator_and_cover_every_fitting_position():
    patches = LpipsPatches(count=4000, size=3)
    generator = torch.Generator().manual_seed(0)
    image, top, left = random_patches((2, 6, 5, 3), patches, generator)
    assert set(image.tolist()) == {0, 1}
    assert set(top.tolist()) == set(range(6 - 3 + 1)) and set(left.tolist()) == set(range(5 - 3 + 1))
    again = random_patches((2, 6, 5, 3), patches, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip((image, top, left), again))
    assert not torch.equal(random_patches((2, 6, 5, 3), patches, generator)[1], top)  # the generator moved on


def test_a_patch_larger_than_the_image_is_refused():
    with pytest.raises(ValueError, match="32x32 LPIPS patches do not fit 20x40 images"):
        random_patches((1, 40, 20, 3), LpipsPatches(16, 32), torch.Generator())


def test_crops_are_differentiable_slices():
    source = images(3, (2, 10, 12, 3)).requires_grad_(True)
    crops = crop_patches(source, torch.tensor([1, 0]), torch.tensor([2, 7]), torch.tensor([9, 0]), 3)
    assert torch.equal(crops[0], source[1, 2:5, 9:12]) and torch.equal(crops[1], source[0, 7:10, 0:3])
    crops.sum().backward()
    assert source.grad.sum().item() == 2 * 3 * 3 * 3 and source.grad[1, 2:5, 9:12].min() == 1


def test_l1_and_dssim_take_the_whole_image_and_lpips_only_the_patches(lpips):
    pred, target = images(4).requires_grad_(True), images(5)
    weights = LossWeights(l1=1.0, dssim=0.0, lpips=1.0)
    _, terms = PhotometricLoss(weights, lpips, LpipsPatches(2, 32))(pred, target, generator=torch.Generator())
    assert terms["l1"] == pytest.approx((pred - target).abs().mean().item(), rel=1e-6)

    lpips_only = PhotometricLoss(LossWeights(l1=0.0, dssim=0.0, lpips=1.0), lpips, LpipsPatches(2, 32))
    lpips_only(pred, target, generator=torch.Generator().manual_seed(3))[0].backward()
    _, top, left = random_patches(pred.shape, LpipsPatches(2, 32), torch.Generator().manual_seed(3))
    inside = torch.zeros(pred.shape[:3], dtype=torch.bool)
    for t, l in zip(top.tolist(), left.tolist()):
        inside[0, t:t + 32, l:l + 32] = True
    gradient = pred.grad.abs().sum(-1)
    assert gradient[inside].max() > 0 and gradient[~inside].max() == 0


def test_whole_image_lpips_is_lpips_of_the_batch_and_draws_nothing(lpips):
    pred, target = images(6), images(7)
    generator = torch.Generator().manual_seed(1)
    state = generator.get_state()
    value, _ = PhotometricLoss(LossWeights(l1=0.0, dssim=0.0, lpips=1.0), lpips)(pred, target, generator=generator)
    assert value.item() == pytest.approx(lpips(pred, target).item(), rel=1e-6)
    assert torch.equal(generator.get_state(), state)


def test_patch_lpips_without_a_generator_is_refused(lpips):
    loss = PhotometricLoss(LossWeights(l1=0.0, dssim=0.0, lpips=1.0), lpips, LpipsPatches(1, 32))
    with pytest.raises(ValueError, match="generator"):
        loss(images(8), images(9))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_patch_lpips_on_cuda_images_draws_on_the_cpu_generator_and_equals_the_cpu_loss(lpips):
    """A CUDA scene passes its CPU generator: the same patches as on the CPU, the crops made on the GPU."""
    pred, target = images(10), images(11)
    loss = PhotometricLoss(LossWeights(l1=1.0, dssim=0.2, lpips=1.0), lpips, LpipsPatches(16, 32))
    on_cpu, _ = loss(pred, target, generator=torch.Generator().manual_seed(4))
    on_gpu, _ = loss(pred.cuda(), target.cuda(), generator=torch.Generator().manual_seed(4))
    assert on_gpu.device.type == "cuda" and on_gpu.item() == pytest.approx(on_cpu.item(), rel=1e-4)


# ------------------------------------------------------------------------------------- L1 + D-SSIM
def reference_terms(pred: torch.Tensor, target: torch.Tensor, weights: LossWeights) -> dict[str, torch.Tensor]:
    """The weighted L1 and D-SSIM terms, by the PyTorch reference."""
    terms = {}
    if weights.l1:
        terms["l1"] = weights.l1 * (pred - target).abs().mean()
    if weights.dssim:
        ssim_value = reference_ssim_map(pred.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2)).mean()
        terms["dssim"] = weights.dssim * (1.0 - ssim_value)
    return terms


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the fused SSIM kernel's forward and backward calls, and records the L1 gradient scale of each backward."""
    calls = {"forward": 0, "backward": 0, "l1_grad_scales": []}
    forward, backward = ssim_module._fused_forward, ssim_module._fused_backward

    def counted_forward(*args, **kwargs):
        calls["forward"] += 1
        return forward(*args, **kwargs)

    def counted_backward(saved, grad_map, l1_grad_scale):
        calls["backward"] += 1
        calls["l1_grad_scales"].append(l1_grad_scale)
        return backward(saved, grad_map, l1_grad_scale)

    monkeypatch.setattr(ssim_module, "_fused_forward", counted_forward)
    monkeypatch.setattr(ssim_module, "_fused_backward", counted_backward)
    return calls


@pytest.mark.skipif(build._missing_cpu_compiler() is not None, reason="no C++ compiler: no fused kernel on the CPU")
@pytest.mark.parametrize("weights", [LossWeights(), LossWeights(l1=0.5, dssim=0.3), LossWeights(l1=0.0, dssim=0.7),
                                     LossWeights(l1=1.3, dssim=0.0)])
def test_l1_and_dssim_go_through_one_fused_kernel_and_equal_the_reference(weights, kernel_calls):
    """Both terms in one kernel call each way, the L1 gradient from the kernel too (no kernel without D-SSIM): value,
    stats and gradient as the PyTorch reference, the L1 stat bit for bit."""
    assert ssim_module.cpu_ssim_extension() is not None, "the C++ SSIM extension failed to build (see the warning)"
    pred, target = images(12, (2, 37, 29, 3)), images(13, (2, 37, 29, 3))
    fused_pred, reference_pred = pred.clone().requires_grad_(True), pred.double().requires_grad_(True)
    value, stats = PhotometricLoss(weights)(fused_pred, target)
    value.backward()
    terms = reference_terms(reference_pred, target.double(), weights)
    sum(terms.values()).backward()

    uses_ssim = int(weights.dssim != 0)
    l1_grad_scales = [weights.l1 / pred.numel()] if uses_ssim else []
    assert kernel_calls == {"forward": uses_ssim, "backward": uses_ssim, "l1_grad_scales": l1_grad_scales}
    assert list(stats) == list(terms)
    for name, term in terms.items():
        assert stats[name] == pytest.approx(term.item(), rel=1e-5, abs=1e-7), name
    if weights.l1:
        assert stats["l1"] == float(weights.l1 * (pred - target).abs().mean())
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(sum(terms.values()).item(), rel=1e-5)
    scale = float(reference_pred.grad.abs().max())
    torch.testing.assert_close(fused_pred.grad.double(), reference_pred.grad, rtol=1e-4, atol=1e-5 * scale)


def test_without_the_kernel_the_loss_is_the_pytorch_reference(monkeypatch, lpips):
    """No kernel (no compiler, or a failed build): the reference computes the same terms, LPIPS added last."""
    monkeypatch.setattr(ssim_module, "cpu_ssim_extension", lambda: None)
    monkeypatch.setattr(ssim_module, "_fused_forward", lambda *a, **k: pytest.fail("the kernel ran"))
    weights = LossWeights(l1=0.5, dssim=0.3, lpips=1.0)
    pred, target = images(14).requires_grad_(True), images(15)
    value, stats = PhotometricLoss(weights, lpips)(pred, target)
    value.backward()
    expected_pred = pred.detach().clone().requires_grad_(True)
    terms = reference_terms(expected_pred, target, weights)
    terms["lpips"] = weights.lpips * lpips(expected_pred, target).mean()
    expected = sum(terms.values())
    expected.backward()
    assert list(stats) == ["l1", "dssim", "lpips"]
    assert stats == {name: float(term.detach()) for name, term in terms.items()}
    assert torch.equal(value, expected)
    torch.testing.assert_close(pred.grad, expected_pred.grad, rtol=1e-5, atol=1e-9)
