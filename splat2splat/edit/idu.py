"""Iterative Dataset Update (Instruct-NeRF2NeRF): edit training views with the scene's own renders, keep training.

The loop knows three things only: a :class:`~splat2splat.data.dataset.Dataset` (immutable originals beside
the current training images), a :class:`~splat2splat.scene.SceneBackend` and an
:class:`~splat2splat.edit.editor.Editor`. Each step it

1. asks the schedule which views to edit now; for each, renders the view from the current scene, lets the
   editor turn (render, ORIGINAL image, instruction, noise range) into an edited image, and REPLACES that
   view's current training image;
2. takes one training step of the scene on a batch drawn from ALL current images, so supervision mixes
   edited and not-yet-edited views, and the edits converge to one 3D-consistent scene.

Schedules (``IDUConfig.schedule``):

* ``in2n``: the views are shuffled once; every ``edit_rate`` steps the next ``edit_count`` views in that
  order are edited, cycling through the dataset (Instruct-NeRF2NeRF: ``edit_rate=10``, ``edit_count=1``).
* ``igs2gs``: every ``edit_rate`` steps the WHOLE dataset is re-edited in that order, then the scene trains
  on it (Instruct-GS2GS' dataset updates).

All randomness of the edits (the editor's noise level and diffusion noise) comes from one generator that
is part of the checkpointed state, so a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import torch

from splat2splat.data.dataset import Dataset
from splat2splat.edit.editor import Editor
from splat2splat.edit.ip2p import DEFAULT_NOISE_RANGE, IP2PConfig
from splat2splat.losses import LossWeights
from splat2splat.scene import ImageLoss, SceneBackend, evaluate_views

Schedule = Literal["in2n", "igs2gs"]


@dataclass
class IDUConfig:
    """An editing preset: the IDU schedule, the editor's settings and the training loss while editing."""

    description: str = "custom settings"
    """What this preset is for (shown by --help and stored in run.json)."""
    schedule: Schedule = "in2n"
    """'in2n': edit `edit_count` views every `edit_rate` steps, cycling through a once-shuffled order;
    'igs2gs': re-edit every training view every `edit_rate` steps."""
    steps: int = 3000
    """Training steps of the edit (the scene's own step counter continues from its initial training)."""
    edit_rate: int = 10
    """Steps between edit rounds."""
    edit_count: int = 1
    """Views edited per round (in2n schedule)."""
    noise_range: tuple[float, float] = DEFAULT_NOISE_RANGE
    """Range of the editor's noise level, as fractions of the diffusion timesteps (in2n: 0.02-0.98)."""
    loss: LossWeights = field(default_factory=lambda: LossWeights(l1=1.0, dssim=0.0, lpips=1.0))
    """Training loss while editing (in2n: L1 + LPIPS, both weight 1)."""
    lpips_net: Literal["alex", "vgg", "squeeze"] = "alex"
    """LPIPS backbone (in2n uses torchmetrics' default, AlexNet)."""
    editor: IP2PConfig = field(default_factory=IP2PConfig)
    """InstructPix2Pix settings (model, precision, guidance scales, diffusion steps)."""
    seed: int = 0
    """Seed of the edit order and of every edit's noise."""


class IterativeDatasetUpdate:
    """The IDU loop; a :class:`splat2splat.runner.SteppedLoop` (``step`` counts IDU steps, from 0)."""

    def __init__(self, dataset: Dataset, backend: SceneBackend, editor: Editor, prompt: str, config: IDUConfig,
                 loss_fn: ImageLoss):
        if config.edit_rate < 1 or config.edit_count < 1:
            raise ValueError("edit_rate and edit_count must be at least 1")
        self.dataset, self.backend, self.editor = dataset, backend, editor
        self.prompt, self.config, self.loss_fn = prompt, config, loss_fn
        self.generator = torch.Generator().manual_seed(config.seed)
        order = torch.randperm(len(dataset.train_indices), generator=self.generator).tolist()
        self.edit_order = [dataset.train_indices[k] for k in order]
        self.next_in_order = 0  # position in edit_order of the next view to edit (in2n schedule)
        self.step = 0
        self.edits_done = 0
        self.seconds = {"render": 0.0, "edit": 0.0, "train": 0.0}

    # --------------------------------------------------------------------------------------- schedule
    def views_to_edit(self) -> list[int]:
        """The views to edit before the current step's training, in editing order."""
        if self.step % self.config.edit_rate != 0:
            return []
        if self.config.schedule == "igs2gs":
            return list(self.edit_order)
        count = self.config.edit_count
        return [self.edit_order[(self.next_in_order + k) % len(self.edit_order)] for k in range(count)]

    # ------------------------------------------------------------------------------------------ steps
    def edit_view(self, view: int) -> None:
        """Render ``view``, edit the render conditioned on the ORIGINAL image, replace the training image."""
        start = time.perf_counter()
        render = self.backend.render(self.dataset.cameras[[view]])[0]
        self.seconds["render"] += time.perf_counter() - start
        start = time.perf_counter()
        edited = self.editor.edit(render, self.dataset.original(view), self.prompt, self.config.noise_range,
                                  self.generator)
        self.seconds["edit"] += time.perf_counter() - start
        self.dataset.replace_image(view, edited.to(torch.float32).cpu())
        self.edits_done += 1

    def run_step(self) -> dict[str, float]:
        views = self.views_to_edit()
        for view in views:
            self.edit_view(view)
        if self.config.schedule == "in2n":
            self.next_in_order = (self.next_in_order + len(views)) % len(self.edit_order)
        start = time.perf_counter()
        stats = self.backend.train_step(self.dataset, self.loss_fn)
        self.seconds["train"] += time.perf_counter() - start
        self.step += 1
        return {**stats, "edits": float(self.edits_done)}

    # ------------------------------------------------------------------------------------- evaluation
    def evaluate(self) -> dict[str, float]:
        """How the scene fits the edited dataset (training views vs their CURRENT images) and how far it has
        moved from the unedited scene (held-out views vs their ORIGINAL images)."""
        train = evaluate_views(self.backend, self.dataset, self.dataset.train_indices, self.dataset.current_image)
        metrics = {"psnr_to_edited": train["psnr"], "views_edited": float(self.views_edited())}
        if self.dataset.eval_indices:
            held_out = evaluate_views(self.backend, self.dataset, self.dataset.eval_indices, self.dataset.original)
            metrics["heldout_psnr_to_original"] = held_out["psnr"]
        return metrics

    def views_edited(self) -> int:
        return sum(1 for i in self.dataset.train_indices if self.dataset.edit_counts[i] > 0)

    def progress_info(self, stats: dict[str, float]) -> str:
        return (f"loss {stats.get('loss', float('nan')):.4f} edits {self.edits_done} "
                f"({self.views_edited()}/{len(self.dataset.train_indices)} views)")

    # ------------------------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        """The loop's own state; the dataset's current images and the backend are saved beside it."""
        return {"step": self.step, "edits_done": self.edits_done, "next_in_order": self.next_in_order,
                "edit_order": list(self.edit_order), "generator": self.generator.get_state(),
                "seconds": dict(self.seconds)}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.edits_done = state["step"], state["edits_done"]
        self.next_in_order, self.edit_order = state["next_in_order"], list(state["edit_order"])
        self.generator.set_state(state["generator"])
        self.seconds = dict(state["seconds"])
