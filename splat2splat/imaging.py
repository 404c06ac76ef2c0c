"""Image operations shared by the editor, the dataset, the media writers and the test editors."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


def resize_image(image: torch.Tensor, size: tuple[int, int],
                 filter: Literal["bilinear", "area"] = "bilinear") -> torch.Tensor:
    """``image`` [H, W, C] resized to ``size`` = (H', W'); returned unchanged at the same size, so exact sizes
    stay exact. Keeps the dtype.

    ``bilinear`` is antialiased (no aliasing when shrinking, smooth when enlarging); ``area`` averages whole
    blocks when shrinking by an integer factor (what a dataset downscale means, like ``images_N`` folders)
    and falls back to bilinear when enlarging.
    """
    if tuple(image.shape[:2]) == tuple(size):
        return image
    chw = image.permute(2, 0, 1)[None].float()
    if filter == "area" and size[0] <= image.shape[0] and size[1] <= image.shape[1]:
        resized = F.interpolate(chw, size=tuple(size), mode="area")
    else:
        resized = F.interpolate(chw, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return resized[0].permute(1, 2, 0).to(image.dtype)
