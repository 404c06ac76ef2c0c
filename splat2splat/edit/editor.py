"""The image-editor interface of the Iterative Dataset Update.

An editor maps (current render, ORIGINAL image, instruction, noise range) to an edited image, exactly the
information InstructPix2Pix gets in Instruct-NeRF2NeRF: the render is noised to a random level inside
``noise_range`` (fractions of the diffusion's training timesteps) and denoised while conditioned on the
original image and the instruction.

Two further contracts let edits run batched, behind training, or in other processes
(:mod:`splat2splat.edit.executors`): a :class:`PlanningEditor` separates an edit's random draws
(:meth:`~PlanningEditor.plan`, taken in call order) from the work (:meth:`~PlanningEditor.run_plans`, any
number of plans as one batch), and an :class:`EditorPool` is a planner whose plans run on several lanes
(editor processes). Plain editors edit one view at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

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


@dataclass
class EditRequest:
    """The arguments of one :meth:`Editor.edit` call."""

    render: torch.Tensor  # [H, W, 3] in [0, 1]
    original: torch.Tensor  # [H, W, 3] in [0, 1]
    prompt: str
    noise_range: tuple[float, float]
    generator: torch.Generator


@dataclass
class EditPlan:
    """One request with everything it drew from its generator (drawn before any batch runs)."""

    request: EditRequest
    size: tuple[int, int]  # the VAE-friendly size the images are resized to
    max_timestep: int  # T: DDIM runs over [0, T]
    sample_noise: torch.Tensor  # N(0, 1) of the VAE posterior sample, float32 on the CPU
    latent_noise: torch.Tensor  # N(0, 1) that noises the latents to T, float32 on the CPU


@runtime_checkable
class PlanRunner(Protocol):
    def run_plans(self, plans: list[EditPlan]) -> list[torch.Tensor]:
        """The edits of ``plans``, in order (as one batch where sizes allow): each equals :meth:`Editor.edit`
        of its request with the draws the plan holds, up to floating-point reassociation."""
        ...


@runtime_checkable
class PlanningEditor(Editor, PlanRunner, Protocol):
    """An editor that batches: ``run_plans([plan(r) for r in requests])`` equals ``edit`` of each request in
    order (the plans draw from the requests' generators exactly as the serial calls would)."""

    def plan(self, request: EditRequest) -> EditPlan:
        """Take every random draw of ``request``'s edit now, in :meth:`Editor.edit`'s order."""
        ...


@runtime_checkable
class EditorPool(Protocol):
    """Editors elsewhere (editor processes): this process plans every edit, lane k % len(lanes) runs the k-th
    submission. It has no ``edit``: its edits always run behind training (``--idu.edit-lag`` >= 1)."""

    lanes: Sequence[PlanRunner]

    def plan(self, request: EditRequest) -> EditPlan:
        ...
