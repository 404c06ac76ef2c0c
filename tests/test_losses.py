"""The photometric loss: L1 and D-SSIM on whole images; LPIPS on whole images or on in2n's random patches."""

from __future__ import annotations

import pytest
import torch

from splat2splat.edit.lpips_loss import load_lpips
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
