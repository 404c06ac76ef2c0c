"""LPIPS that works offline.

The ``lpips`` package ships its calibrated linear layers, but its backbone (VGG-16 / AlexNet / SqueezeNet
ImageNet weights) is downloaded by torchvision on first use, which fails without internet. Here the
backbone is built empty and its weights are read from an explicit file or from the torch hub cache
(where torchvision would have put them; downloaded there first unless ``HF_HUB_OFFLINE=1``), and a missing
file is a one-line :class:`InputError` that says where to put it. ``random_backbone=True`` skips the weights (tests only: the values are then meaningless).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal

import torch

from splat2splat.errors import InputError

LpipsNet = Literal["vgg", "alex", "squeeze"]
# The smallest image side each backbone's strides and poolings leave a pixel of (smaller inputs fail inside it).
SMALLEST_SIDE: dict[str, int] = {"alex": 31, "vgg": 16, "squeeze": 17}


def torchvision_weights(net: LpipsNet):
    """The torchvision weights enum entry of the LPIPS backbone (its URL names the checkpoint file)."""
    from torchvision import models

    return {"vgg": models.VGG16_Weights.IMAGENET1K_V1, "alex": models.AlexNet_Weights.IMAGENET1K_V1,
            "squeeze": models.SqueezeNet1_1_Weights.IMAGENET1K_V1}[net]


def torchvision_backbone(net: LpipsNet) -> torch.nn.Module:
    from torchvision import models

    return {"vgg": models.vgg16, "alex": models.alexnet, "squeeze": models.squeezenet1_1}[net](weights=None)


def cached_backbone_path(net: LpipsNet) -> Path:
    """Where torchvision caches the backbone checkpoint: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(torchvision_weights(net).url).name


def resolve_backbone_weights(net: LpipsNet, backbone_weights: Path | None) -> Path:
    if backbone_weights is not None:
        path = Path(backbone_weights).expanduser()
        if not path.is_file():
            raise InputError(path, f"no such LPIPS {net} backbone checkpoint")
        return path
    cached = cached_backbone_path(net)
    if not cached.is_file():
        url = torchvision_weights(net).url
        if not downloads_allowed() or not try_download(url, cached):
            raise InputError(cached, f"LPIPS needs the ImageNet {net} backbone weights and they cannot be "
                                     f"downloaded here: copy {url} to this path (or set TORCH_HOME), or pass the "
                                     "checkpoint file explicitly")
    return cached


def downloads_allowed() -> bool:
    """HF_HUB_OFFLINE=1 means no network for any model file, the LPIPS backbone included."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("1", "true", "yes")


def try_download(url: str, path: Path) -> bool:
    """Fetch ``url`` to ``path`` as torchvision would (atomically: it writes a temp file, then renames)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), progress=True)
        return True
    except Exception:  # noqa: BLE001 - no network, proxy, disk: the caller reports how to supply the file
        return False


def load_torchvision_backbone(net: LpipsNet, path: Path) -> torch.nn.Module:
    """The torchvision network with the checkpoint's weights; an unreadable or mismatched file is an InputError."""
    backbone = torchvision_backbone(net)
    try:
        backbone.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as error:  # noqa: BLE001 - whatever is wrong with the file, the user must replace it
        raise InputError(path, f"not a torchvision {net} checkpoint ({str(error).splitlines()[0][:200]})") from error
    return backbone


def copy_backbone_weights(lpips_backbone: torch.nn.Module, source: torch.nn.Module) -> None:
    """Fill the lpips backbone: its ``sliceK.<i>`` layers are ``features[i]`` of the torchvision network."""
    for slice_module in lpips_backbone.children():
        for index, layer in slice_module.named_children():
            layer.load_state_dict(source.features[int(index)].state_dict())


class LPIPSLoss(torch.nn.Module):
    """LPIPS distance between [B, H, W, 3] images in [0, 1]; frozen, differentiable w.r.t. the images."""

    def __init__(self, lpips_model: torch.nn.Module):
        super().__init__()
        self.lpips = lpips_model.eval().requires_grad_(False)

    def per_image(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """LPIPS of each image pair: [B].

        Inputs are mapped to [-1, 1] and CLAMPED there, as in2n does before torchmetrics' LPIPS
        (in2n/in2n.py:67-68): values a renderer puts outside [0, 1] get no LPIPS gradient."""
        to_nchw = lambda images: (images.permute(0, 3, 1, 2) * 2 - 1).clamp(-1, 1)  # noqa: E731
        return self.lpips(to_nchw(x), to_nchw(y), normalize=False).flatten()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS over the batch (a scalar loss)."""
        return self.per_image(x, y).mean()

    def train(self, mode: bool = True) -> LPIPSLoss:
        # Always eval: lpips' linear layers have dropout, which a parent's .train() must not switch on.
        return super().train(False)


def load_lpips(net: LpipsNet = "vgg", backbone_weights: Path | None = None,
               random_backbone: bool = False) -> LPIPSLoss:
    """LPIPS with the package's calibrated linear layers and the ImageNet backbone loaded offline.

    ``backbone_weights``: the torchvision checkpoint file (e.g. ``vgg16-397923af.pth``); by default the torch
    hub cache. ``random_backbone``: leave the backbone random (tests only).
    """
    import lpips

    if net not in ("vgg", "alex", "squeeze"):
        raise InputError(None, f"unknown LPIPS network {net!r}: use vgg, alex or squeeze")
    source = None if random_backbone else load_torchvision_backbone(net, resolve_backbone_weights(net, backbone_weights))
    with warnings.catch_warnings():
        # lpips calls torchvision with the deprecated pretrained=False; pnet_rand=True means no download.
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    if source is not None:
        copy_backbone_weights(model.net, source)
    return LPIPSLoss(model)
