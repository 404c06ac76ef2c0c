"""The image-editor interface of the Iterative Dataset Update.

An editor maps (current render, ORIGINAL image, instruction, noise range) to an edited image, exactly the
information InstructPix2Pix gets in Instruct-NeRF2NeRF: the render is noised to a random level inside
``noise_range`` (fractions of the diffusion's training timesteps) and denoised while conditioned on the
original image and the instruction.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Editor(Protocol):
    def edit(
        self,
        render: torch.Tensor,  # [H, W, 3] in [0, 1]: the scene's current render of the view
        original: torch.Tensor,  # [H, W, 3] in [0, 1]: the unedited dataset image of the view
        prompt: str,
        noise_range: tuple[float, float],  # (lower, upper) fraction of the diffusion timesteps
        generator: torch.Generator,  # CPU generator: the only source of randomness, so edits are reproducible
    ) -> torch.Tensor:  # [H, W, 3] in [0, 1], same size as ``render``
        ...
