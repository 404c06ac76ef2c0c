"""The scene-backend interface that the training and editing loops drive.

A backend owns a 3D representation and its optimiser. The IDU loop (``splat2splat.edit.idu``) only calls
the methods below, so a Gaussian scene (``gaussian``) and a NeRF (``nerf``) are interchangeable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

import torch

from splat2splat.data.cameras import Cameras
from splat2splat.data.dataset import Dataset
from splat2splat.losses import image_metrics


class ImageLoss(Protocol):
    """A loss on image batches: (prediction [B, H, W, 3], target [B, H, W, 3]) -> (scalar loss, logged terms).

    The Gaussian backend passes whole images, the NeRF backend patches of rays (in2n: 32x32). Both pass their
    own seeded generator, whose state their checkpoint holds: a loss that draws (patch LPIPS) draws from it."""

    def __call__(self, pred: torch.Tensor, target: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]: ...


# Called by ``train_step(..., edit=hook)`` with (view, that step's render [H, W, 3] in [0, 1] on the CPU) before
# the loss; it may replace the view's current image, which the step then trains on (Instruct-GS2GS' update).
EditHook = Callable[[int, torch.Tensor], None]


@runtime_checkable
class GaussianScene(Protocol):
    """A scene made of Gaussians, as a local edit uses it: select Gaussians (``splats``, normalised frame),
    render them with other colours (``device``, ``rasterizer``), freeze those outside the region."""

    splats: torch.nn.ParameterDict
    device: torch.device
    rasterizer: str
    step: int

    def freeze(self, frozen: torch.Tensor | None) -> None:
        """Keep the Gaussians where ``frozen`` [N] is True bit for bit from now on (None: none)."""
        ...

    def strategy_active(self) -> bool:
        """Whether the density strategy (which acts on every Gaussian) would still run from this step on."""
        ...

    def strategy_stop(self) -> int:
        """The step from which the density strategy no longer runs."""
        ...


@runtime_checkable
class SceneBackend(Protocol):
    name: str  # "gaussian" or "nerf"
    step: int  # optimisation steps taken so far (schedules depend on it)

    def render(self, cameras: Cameras) -> list[torch.Tensor]:
        """Render every camera; returns [H, W, 3] images in [0, 1] on the CPU, without gradients."""
        ...

    def train_step(self, dataset: Dataset, loss_fn: ImageLoss, view: int | None = None,
                   edit: EditHook | None = None) -> dict[str, float]:
        """One optimisation step on a batch drawn from ALL training views' CURRENT images, or from ``view``
        only; ``edit`` (see :data:`EditHook`) may replace that view's image before the loss is taken."""
        ...

    def configure_edit(self, density_control: str, random_background: bool) -> None:
        """Training settings during an edit: density control ('continue', 'cull', 'off'; Gaussians only) and a
        random background (where the backend and the data support it)."""
        ...

    def state_dict(self) -> dict:
        """Everything needed to resume exactly: parameters, optimiser and strategy state, step, RNG."""
        ...

    def load_state_dict(self, state: dict) -> None:
        ...

    def check_dataset(self, dataset: Dataset) -> None:
        """Raise ValueError when the scene cannot train on ``dataset`` (e.g. per-view parameters of another one)."""
        ...

    def export(self, output_dir: Path, dataset: Dataset) -> list[Path]:
        """Write the scene's deliverables into ``output_dir`` (PLY for Gaussians; renders for a NeRF)."""
        ...

    def gaussians(self) -> GaussianScene | None:
        """The scene as Gaussians a region selects and freezes; None for a scene of another kind (a NeRF:
        a local edit there only composites through --region.masks)."""
        ...


@torch.no_grad()
def evaluate_views(backend: SceneBackend, dataset: Dataset, indices: Sequence[int],
                   target_of: Callable[[int], torch.Tensor]) -> dict[str, float]:
    """Mean PSNR and SSIM of the renders of views ``indices`` against ``target_of(view)`` (e.g.
    ``dataset.original`` or the current training image)."""
    if not indices:
        return {}
    scores = [image_metrics(render, target_of(view))
              for render, view in zip(backend.render(dataset.cameras[list(indices)]), indices)]
    return {key: sum(score[key] for score in scores) / len(scores) for key in ("psnr", "ssim")}
