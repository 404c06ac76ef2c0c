"""Iterative Dataset Update (Instruct-NeRF2NeRF): edit training views with the scene's own renders, keep training.

The loop knows three things only: a :class:`~splat2splat.data.dataset.Dataset` (immutable originals beside
the current training images), a :class:`~splat2splat.scene.SceneBackend` and an
:class:`~splat2splat.edit.editor.Editor`. An edit renders a view from the current scene, lets the editor turn
(render, ORIGINAL image, instruction, noise range) into an edited image, and REPLACES that view's current
training image; training batches are drawn from ALL current images, so supervision mixes edited and
not-yet-edited views and the edits converge to one 3D-consistent scene.

Schedules (``IDUConfig.schedule``), each as its reference's code runs it:

* ``in2n`` (Instruct-NeRF2NeRF): every ``edit_rate`` steps the next ``edit_count`` views of the edit order
  are edited (cycling). Within such a step in2n samples and forwards its batch first, then edits, and the
  loss uses the PRE-edit batch; here the view is rendered and edited before the step (the scene's parameters
  are the same either way: no optimiser step lies between) and the edited image replaces the old one AFTER
  the step's training, so the step trains on the pre-edit images exactly as in2n's does.
* ``igs2gs`` (Instruct-GS2GS): every ``edit_rate`` steps a dataset update starts; it edits the training
  views in the edit order ONE PER TRAINING STEP: the step renders that view (its training render, background
  included), edits it, replaces the image and trains on the fresh edit. In between, the scene trains on
  random views as usual (an update starts at edit steps 0, ``edit_rate``, ...).

The edit order (``IDUConfig.edit_order``) is a random permutation of the training views drawn once from the
run's seed (in2n) or the dataset's order (igs2gs); it is part of the checkpointed state.

How edits are computed (serial, one editor batch, behind training, on editor processes) is the executor's
business (:mod:`splat2splat.edit.executors`); whichever computed it, every edit reaches the dataset through
:meth:`IterativeDatasetUpdate.apply`, the one write-back point (a local edit overrides only that).

All randomness of the edits (the editor's noise level and diffusion noise) comes from one generator that
is part of the checkpointed state, so a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from splat2splat.data.dataset import Dataset
from splat2splat.edit.editor import Editor, EditorPool
from splat2splat.edit.executors import EditQueue, check_throughput_options, make_executor
from splat2splat.scene import ImageLoss, SceneBackend, evaluate_views

if TYPE_CHECKING:  # the settings are plain data (edit/presets.py); the loop only reads them
    from splat2splat.edit.presets import IDUConfig


class IterativeDatasetUpdate:
    """The IDU loop; a :class:`splat2splat.runner.SteppedLoop` (``step`` counts IDU steps, from 0)."""

    def __init__(self, dataset: Dataset, backend: SceneBackend, editor: Editor | EditorPool, prompt: str,
                 config: IDUConfig, loss_fn: ImageLoss):
        if config.edit_rate < 1 or config.edit_count < 1:
            raise ValueError("edit_rate and edit_count must be at least 1")
        if config.schedule not in ("in2n", "igs2gs"):
            raise ValueError(f"unknown schedule {config.schedule!r}: use in2n or igs2gs")
        check_throughput_options(config.schedule, config.edit_batch, config.edit_lag)
        self.dataset, self.backend, self.editor = dataset, backend, editor
        self.prompt, self.config, self.loss_fn = prompt, config, loss_fn
        self.generator = torch.Generator().manual_seed(config.seed)
        self.edit_order = draw_edit_order(dataset.train_indices, config.edit_order, config.seed)
        self.next_in_order = 0  # position in edit_order of the next view to edit
        self.updating = False  # igs2gs: a dataset update is under way (one view per step)
        self.step = 0
        self.edits_done = 0
        self.seconds = {"render": 0.0, "train": 0.0}
        self.executor = make_executor(editor, prompt, config.noise_range, self.generator, config.edit_batch,
                                      config.edit_lag)
        if isinstance(self.executor, EditQueue):
            self.seconds["edit_wait"] = 0.0  # the trainer waiting for late edits
        backend.configure_edit(config.density_control, config.random_background)

    # --------------------------------------------------------------------------------------- schedule
    def views_to_edit(self) -> list[int]:
        """The views edited during the current step, in editing order."""
        if self.config.schedule == "igs2gs":
            starts = self.step % self.config.edit_rate == 0
            return [self.edit_order[self.next_in_order]] if self.updating or starts else []
        if self.step % (self.config.edit_rate * self.config.edit_batch) != 0:
            return []
        count = self.config.edit_count * self.config.edit_batch
        return [self.edit_order[(self.next_in_order + k) % len(self.edit_order)] for k in range(count)]

    # ------------------------------------------------------------------------------------------ steps
    def apply(self, view: int, edited: torch.Tensor) -> None:
        """The one write-back point: ``edited`` (the editor's output for ``view``) becomes its training image."""
        self.dataset.replace_image(view, edited)

    def submit(self, views: list[int], renders: list[torch.Tensor]) -> None:
        self.executor.submit(self.step, views, renders, [self.dataset.original(v) for v in views])
        self.edits_done += len(views)

    def write_back_due(self, everything: bool = False) -> None:
        for view, edited in self.executor.due(self.step, everything):
            self.apply(view, edited)

    def renders(self, views: list[int]) -> list[torch.Tensor]:
        start = time.perf_counter()
        renders = [self.backend.render(self.dataset.cameras[[view]])[0] for view in views]
        self.seconds["render"] += time.perf_counter() - start
        return renders

    def run_step(self) -> dict[str, float]:
        views = self.views_to_edit()
        self.next_in_order = (self.next_in_order + len(views)) % len(self.edit_order)
        if self.config.schedule == "igs2gs" and views:
            self.updating = self.next_in_order != 0  # the update ends with the order's last view

            editing = [0.0]  # seconds of the edit made inside the step, which are not training

            def edit(view: int, render: torch.Tensor) -> None:  # inside the step: it trains on the fresh edit
                start = time.perf_counter()
                self.submit([view], [render])
                self.write_back_due()
                editing[0] += time.perf_counter() - start

            stats = self.timed_training(lambda: editing[0], view=views[0], edit=edit)
        else:
            if views:
                self.submit(views, self.renders(views))
            stats = self.timed_training(lambda: 0.0)  # in2n: this step's loss sees the pre-edit images
            last_step = self.step + 1 >= self.config.steps  # the end applies what is still in flight
            start = time.perf_counter()
            self.write_back_due(everything=last_step)
            if "edit_wait" in self.seconds:
                self.seconds["edit_wait"] += time.perf_counter() - start
        self.step += 1
        return {**stats, "edits": float(self.edits_done)}

    def timed_training(self, edit_seconds: Callable[[], float], **kwargs) -> dict[str, float]:
        """One training step of the scene; its time, less ``edit_seconds()`` spent editing inside it (igs2gs),
        counts as training. (An editor thread's busy time runs beside training and is not subtracted.)"""
        start = time.perf_counter()
        stats = self.backend.train_step(self.dataset, self.loss_fn, **kwargs)
        self.seconds["train"] += time.perf_counter() - start - edit_seconds()
        return stats

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
        pending = self.executor.state_dict()  # first: finishes the edits in flight
        return {"step": self.step, "edits_done": self.edits_done, "next_in_order": self.next_in_order,
                "pending_edits": pending, "seconds": self.timings(),
                "edit_order": list(self.edit_order), "updating": self.updating,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.edits_done = state["step"], state["edits_done"]
        order = [int(view) for view in state["edit_order"]]
        if sorted(order) != sorted(self.dataset.train_indices) or not 0 <= int(state["next_in_order"]) < len(order):
            raise ValueError("its edit order is not an order of this dataset's training views")
        self.next_in_order, self.edit_order = int(state["next_in_order"]), order
        self.updating = bool(state.get("updating", False))
        self.generator.set_state(state["generator"])
        seconds = state["seconds"]
        self.seconds = {key: seconds.get(key, 0.0) for key in self.seconds}
        self.executor.busy_seconds = seconds.get("edit", 0.0)
        pending = state.get("pending_edits", [])
        for entry in pending:  # a checkpoint is a file from outside: check before the run depends on it
            for view, image in zip(entry["views"], entry["images"], strict=True):
                if view not in self.dataset.train_indices or image.shape != self.dataset.original(view).shape:
                    raise ValueError(f"an edit in flight for view {view} does not fit the dataset")
        self.executor.load_state_dict(pending)

    def timings(self) -> dict[str, float]:
        """Seconds spent rendering, editing (behind training: the editor threads' busy time), training, and
        (behind training) waiting for late edits."""
        return {**self.seconds, "edit": self.executor.busy_seconds}


def draw_edit_order(train_indices: list[int], kind: str, seed: int) -> list[int]:
    """The order the views are edited in: a random permutation drawn once from ``seed`` (with its own
    generator: the edits' draws stay as they are), or the dataset's order."""
    if kind == "dataset":
        return list(train_indices)
    if kind != "random-permutation":
        raise ValueError(f"unknown edit order {kind!r}: use random-permutation or dataset")
    permutation = torch.randperm(len(train_indices), generator=torch.Generator().manual_seed(seed))
    return [train_indices[i] for i in permutation.tolist()]
