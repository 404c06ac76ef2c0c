"""Iterative Dataset Update (Instruct-NeRF2NeRF): edit training views with the scene's own renders, keep training.

The loop knows three things only: a :class:`~splat2splat.data.dataset.Dataset` (immutable originals beside
the current training images), a :class:`~splat2splat.scene.SceneBackend` and an
:class:`~splat2splat.edit.editor.Editor`. An edit renders a view from the current scene, lets the editor turn
(render, ORIGINAL image, instruction, noise range) into an edited image, and REPLACES that view's current
training image; training batches are drawn from ALL current images, so supervision mixes edited and
not-yet-edited views and the edits converge to one 3D-consistent scene.

Schedules (``IDUConfig.schedule``), each as its reference's code runs it:

* ``in2n`` (Instruct-NeRF2NeRF, in2n_pipeline.py:92-95,125-179): every ``edit_rate`` steps the next
  ``edit_count`` views of the dataset's own order are edited (cycling). Within such a step in2n samples and
  forwards its batch first, then edits, and the loss uses the PRE-edit batch; here the view is rendered and
  edited before the step (the scene's parameters are the same either way: no optimiser step lies between)
  and the edited image replaces the old one AFTER the step's training, so the step trains on the pre-edit
  images exactly as in2n's does.
* ``igs2gs`` (Instruct-GS2GS, igs2gs_pipeline.py:106-147): every ``edit_rate`` steps a dataset update
  starts; it edits the training views in dataset order ONE PER TRAINING STEP: the step renders that view
  (its training render, background included), edits it, replaces the image and trains on the fresh edit.
  In between, the scene trains on random views as usual. (igs2gs starts an update when
  ``(global_step - 1) % 2500 == 0``; here at edit steps 0, ``edit_rate``, ...: the same spacing.)

Throughput (splat2splat/edit/pipeline.py): ``edit_batch`` k edits k views every ``k * edit_rate`` steps as
one editor batch; ``edit_lag`` L > 0 edits in a thread while training goes on and applies the edit of step s
after step s + L (0: the serial loop above, unchanged).

All randomness of the edits (the editor's noise level and diffusion noise) comes from one generator that
is part of the checkpointed state, so a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from splat2splat.data.dataset import Dataset
from splat2splat.edit.editor import Editor
from splat2splat.edit.pipeline import EditQueue, check_throughput_options, edit_views
from splat2splat.scene import ImageLoss, SceneBackend, evaluate_views

if TYPE_CHECKING:  # the settings are plain data (edit/presets.py); the loop only reads them
    from splat2splat.edit.presets import IDUConfig


class IterativeDatasetUpdate:
    """The IDU loop; a :class:`splat2splat.runner.SteppedLoop` (``step`` counts IDU steps, from 0)."""

    def __init__(self, dataset: Dataset, backend: SceneBackend, editor: Editor, prompt: str, config: IDUConfig,
                 loss_fn: ImageLoss):
        if config.edit_rate < 1 or config.edit_count < 1:
            raise ValueError("edit_rate and edit_count must be at least 1")
        if config.schedule not in ("in2n", "igs2gs"):
            raise ValueError(f"unknown schedule {config.schedule!r}: use in2n or igs2gs")
        check_throughput_options(config.schedule, config.edit_batch, config.edit_lag)
        self.dataset, self.backend, self.editor = dataset, backend, editor
        self.prompt, self.config, self.loss_fn = prompt, config, loss_fn
        self.generator = torch.Generator().manual_seed(config.seed)
        self.edit_order = list(dataset.train_indices)  # both references edit in the dataset's own order
        self.next_in_order = 0  # position in edit_order of the next view to edit
        self.updating = False  # igs2gs: a dataset update is under way (one view per step)
        self.step = 0
        self.edits_done = 0
        self.seconds = {"render": 0.0, "edit": 0.0, "train": 0.0}
        self.queue = None
        if config.edit_lag > 0:
            self.queue = EditQueue(editor, prompt, config.noise_range, self.generator, config.edit_lag)
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
    def edited_image(self, view: int, render: torch.Tensor | None = None) -> torch.Tensor:
        """The editor's edit of ``render`` (default: a fresh render of ``view``), conditioned on the ORIGINAL."""
        if render is None:
            start = time.perf_counter()
            render = self.backend.render(self.dataset.cameras[[view]])[0]
            self.seconds["render"] += time.perf_counter() - start
        start = time.perf_counter()
        edited = self.editor.edit(render, self.dataset.original(view), self.prompt, self.config.noise_range,
                                  self.generator)
        self.seconds["edit"] += time.perf_counter() - start
        self.edits_done += 1
        return edited.to(torch.float32).cpu()

    def renders(self, views: list[int]) -> list[torch.Tensor]:
        start = time.perf_counter()
        renders = [self.backend.render(self.dataset.cameras[[view]])[0] for view in views]
        self.seconds["render"] += time.perf_counter() - start
        return renders

    def edited_images(self, views: list[int]) -> list[tuple[int, torch.Tensor]]:
        """(view, edit) of ``views``: one by one (``edit_batch`` 1), else as one editor batch."""
        if self.config.edit_batch == 1:
            return [(view, self.edited_image(view)) for view in views]
        renders = self.renders(views)
        start = time.perf_counter()
        edits = edit_views(self.editor, renders, [self.dataset.original(v) for v in views], self.prompt,
                           self.config.noise_range, self.generator)
        self.seconds["edit"] += time.perf_counter() - start
        self.edits_done += len(views)
        return [(view, edit.to(torch.float32).cpu()) for view, edit in zip(views, edits)]

    def run_step(self) -> dict[str, float]:
        views = self.views_to_edit()
        self.next_in_order = (self.next_in_order + len(views)) % len(self.edit_order)
        if self.config.schedule == "igs2gs" and views:
            self.updating = self.next_in_order != 0  # the update ends with the dataset's last view

            def edit(view: int, render: torch.Tensor) -> None:
                self.dataset.replace_image(view, self.edited_image(view, render))

            stats = self.timed_training(view=views[0], edit=edit)
        elif self.queue is not None:
            if views:
                self.queue.submit(self.step, views, self.renders(views), [self.dataset.original(v) for v in views])
                self.edits_done += len(views)
            stats = self.timed_training()
            last_step = self.step + 1 >= self.config.steps  # the end applies what is still in flight
            start = time.perf_counter()
            for view, image in self.queue.results_due(self.step, everything=last_step):
                self.dataset.replace_image(view, image)
            self.seconds["edit_wait"] += time.perf_counter() - start
        else:
            edits = self.edited_images(views)
            stats = self.timed_training()
            for view, image in edits:  # in2n: this step's loss saw the pre-edit images
                self.dataset.replace_image(view, image)
        self.step += 1
        return {**stats, "edits": float(self.edits_done)}

    def timed_training(self, **kwargs) -> dict[str, float]:
        """One training step of the scene; its time, less any edit made inside it, counts as training."""
        start, editing_before = time.perf_counter(), self.seconds["edit"]
        stats = self.backend.train_step(self.dataset, self.loss_fn, **kwargs)
        self.seconds["train"] += time.perf_counter() - start - (self.seconds["edit"] - editing_before)
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
        pending = self.queue.state_dict() if self.queue is not None else []  # first: finishes the edits in flight
        return {"step": self.step, "edits_done": self.edits_done, "next_in_order": self.next_in_order,
                "pending_edits": pending, "seconds": self.timings(),
                "edit_order": list(self.edit_order), "updating": self.updating,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.edits_done = state["step"], state["edits_done"]
        self.next_in_order, self.edit_order = state["next_in_order"], list(state["edit_order"])
        self.updating = bool(state.get("updating", False))
        self.generator.set_state(state["generator"])
        self.seconds.update({key: value for key, value in state["seconds"].items() if key in self.seconds})
        pending = state.get("pending_edits", [])
        for entry in pending:  # a checkpoint is a file from outside: check before the run depends on it
            for view, image in zip(entry["views"], entry["images"], strict=True):
                if view not in self.dataset.train_indices or image.shape != self.dataset.original(view).shape:
                    raise ValueError(f"an edit in flight for view {view} does not fit the dataset")
        if self.queue is not None:
            self.queue.load_state_dict(pending)
        elif pending:
            raise ValueError("the checkpoint holds edits in flight, but this run has no --idu.edit-lag")

    def timings(self) -> dict[str, float]:
        """Seconds spent rendering, editing (pipelined: the editor thread's busy time), training, and
        (pipelined) waiting for late edits."""
        if self.queue is None:
            return dict(self.seconds)
        return {**self.seconds, "edit": self.seconds["edit"] + self.queue.busy_seconds}
