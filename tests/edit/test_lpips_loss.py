"""Offline LPIPS: backbone weights from a file or the torch hub cache, clear errors otherwise."""

from __future__ import annotations

import pytest
import torch
from torchvision import models

from splat2splat.edit.lpips_loss import cached_backbone_path, load_lpips
from splat2splat.errors import InputError


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    """A torch hub cache with nothing in it (torch.hub reads TORCH_HOME on every call)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return tmp_path / "torch-home"


def test_missing_backbone_is_an_input_error_naming_the_cache_file(empty_torch_home):
    with pytest.raises(InputError, match="vgg16-397923af.pth") as raised:
        load_lpips("vgg")
    assert raised.value.path == cached_backbone_path("vgg")
    assert str(raised.value.path).startswith(str(empty_torch_home))


def test_missing_explicit_backbone_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such LPIPS alex backbone checkpoint"):
        load_lpips("alex", backbone_weights=tmp_path / "alexnet.pth")


def test_a_file_that_is_no_checkpoint_is_an_input_error(tmp_path):
    bad = tmp_path / "squeezenet.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a torchvision squeeze checkpoint"):
        load_lpips("squeeze", backbone_weights=bad)


def test_random_vgg_backbone_distance_is_zero_for_equal_images_and_positive_otherwise():
    lpips = load_lpips("vgg", random_backbone=True)
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 32, 32, 3, generator=generator), torch.rand(2, 32, 32, 3, generator=generator)
    x.requires_grad_(True)
    same, different = lpips(x, x), lpips(x, y)
    assert same.shape == () and lpips.per_image(x, y).shape == (2,)
    assert same.item() == pytest.approx(0.0, abs=1e-7) and different.item() > 0
    different.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in lpips.parameters())


def test_inputs_outside_0_1_are_clamped_as_in2n_does():
    """in2n maps renders to [-1, 1] and clamps before torchmetrics' LPIPS: values beyond [0, 1] count as 0 or
    1 and get no gradient."""
    lpips = load_lpips("alex", random_backbone=True)
    generator = torch.Generator().manual_seed(1)
    target = torch.rand(1, 32, 32, 3, generator=generator)
    inside = torch.rand(1, 32, 32, 3, generator=generator)
    outside = inside.clone()
    outside[..., 0] += 1.5  # the red channel far above 1
    outside[..., 1] -= 1.5  # the green channel far below 0
    clamped = inside.clone()
    clamped[..., 0], clamped[..., 1] = 1.0, 0.0
    outside.requires_grad_(True)
    distance = lpips(outside, target)
    assert distance.item() == pytest.approx(lpips(clamped, target).item(), abs=1e-6)
    distance.backward()
    assert outside.grad[..., :2].abs().max() == 0 and outside.grad[..., 2].abs().max() > 0


def test_backbone_weights_load_from_the_hub_cache(empty_torch_home):
    # SqueezeNet keeps the checkpoint small; VGG and AlexNet take the same path.
    weights = models.squeezenet1_1(weights=None).state_dict()
    cached = cached_backbone_path("squeeze")
    cached.parent.mkdir(parents=True)
    torch.save(weights, cached)
    lpips = load_lpips("squeeze")
    loaded = dict(lpips.lpips.net.named_parameters())
    assert torch.equal(loaded["slice1.0.weight"], weights["features.0.weight"])
    assert torch.equal(loaded["slice7.12.expand3x3.weight"], weights["features.12.expand3x3.weight"])
    lpips.train()
    assert not lpips.training  # dropout in the linear layers stays off


def test_missing_backbone_is_downloaded_to_the_torch_cache_unless_offline(tmp_path, monkeypatch):
    import torchvision

    from splat2splat.edit import lpips_loss

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    fetched = []

    def fake_download(url, destination, progress=True):  # stands in for the network
        fetched.append(url)
        torch.save(torchvision.models.alexnet(weights=None).state_dict(), destination)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="cannot be downloaded"):
        lpips_loss.load_lpips("alex")
    assert fetched == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    model = lpips_loss.load_lpips("alex")
    assert len(fetched) == 1 and lpips_loss.cached_backbone_path("alex").is_file()
    assert float(model(torch.rand(1, 32, 32, 3), torch.rand(1, 32, 32, 3)).mean()) >= 0


@pytest.mark.parametrize("net", ["alex", "vgg", "squeeze"])
def test_smallest_side_is_the_smallest_image_each_backbone_takes(net):
    """The edit refuses LPIPS patches (or views) below SMALLEST_SIDE up front, instead of failing inside the net."""
    from splat2splat.edit.lpips_loss import SMALLEST_SIDE

    lpips = load_lpips(net, random_backbone=True)
    side = SMALLEST_SIDE[net]
    assert lpips(torch.rand(1, side, side, 3), torch.rand(1, side, side, 3)).isfinite()
    with pytest.raises(RuntimeError):
        lpips(torch.rand(1, side - 1, side - 1, 3), torch.rand(1, side - 1, side - 1, 3))
