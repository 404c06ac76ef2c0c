"""How the IDU loop's edits are computed: at once (one by one, or as one editor batch), or behind training.

The loop hands every edit it wants to an executor (``submit(step, views, renders, originals)``) and, after
each step's training, writes back what the executor says is ``due`` through its one write-back method
(:meth:`~splat2splat.edit.idu.IterativeDatasetUpdate.apply`). The executors differ only in where and when
the edits run, never in what a seed produces:

* :class:`ImmediateEdits` (``edit_lag`` 0): the edits run inside ``submit``, one by one, or with
  ``edit_batch`` k > 1 as one batch of a :class:`~splat2splat.edit.editor.PlanningEditor` (each edit equal
  to the serial one); they are due after the same step's training (in2n trains that step on the pre-edit
  images). The in2n schedule then edits k views every ``k * edit_rate`` steps (the same edits per step).
* :class:`EditQueue` (``edit_lag`` L > 0): the edit requested at step s (the render of the scene at step s)
  runs in an editor thread, or on an editor process of an :class:`~splat2splat.edit.editor.EditorPool`
  (:mod:`splat2splat.edit.distributed`), while training continues, and is due after step s + L's training,
  exactly then: the trainer waits for a late edit, so a run does not depend on timing. Planning editors take
  their random draws at submission; the others draw in the single editor thread, which takes submissions in
  order; either way the draws are those of a serial run. A checkpoint first finishes the edits in flight and
  stores their results with their due steps, so a resumed run applies them at the same steps as an
  uninterrupted one. The run's last step applies every edit still in flight.

igs2gs trains each step on that step's fresh edit, so it takes neither a batch nor a lag (refused up front).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import torch

from splat2splat.edit.editor import Editor, EditorPool, EditRequest, PlanningEditor, PlanRunner
from splat2splat.errors import InputError

Edits = list[tuple[int, torch.Tensor]]  # (view, edited [H, W, 3] float32 CPU image), in request order


class EditExecutor(Protocol):
    busy_seconds: float  # time spent editing (summed over editor threads)

    def submit(self, step: int, views: list[int], renders: list[torch.Tensor],
               originals: list[torch.Tensor]) -> None:
        """Start editing ``views`` from their renders at ``step``, conditioned on their originals."""
        ...

    def due(self, step: int, everything: bool = False) -> Edits:
        """The edits due after step ``step``'s training (all still pending with ``everything``)."""
        ...

    def state_dict(self) -> list[dict]:
        """The edits not yet due, finished (checkpoint data: ints and tensors only)."""
        ...

    def load_state_dict(self, state: list[dict]) -> None:
        ...


def check_throughput_options(schedule: str, edit_batch: int, edit_lag: int) -> None:
    """One-line errors for settings the schedule cannot honour."""
    if edit_batch < 1:
        raise InputError(None, f"--idu.edit-batch {edit_batch}: must be at least 1")
    if edit_lag < 0:
        raise InputError(None, f"--idu.edit-lag {edit_lag}: must be at least 0")
    if schedule == "igs2gs" and (edit_batch > 1 or edit_lag > 0):
        raise InputError(None, "the igs2gs schedule trains every step on that step's fresh edit: it takes neither "
                               "--idu.edit-batch > 1 nor --idu.edit-lag > 0")


def make_executor(editor: Editor | EditorPool, prompt: str, noise_range: tuple[float, float],
                  generator: torch.Generator, edit_batch: int, edit_lag: int) -> EditExecutor:
    if edit_lag > 0:
        return EditQueue(editor, prompt, noise_range, generator, edit_lag)
    if isinstance(editor, EditorPool):
        raise InputError(None, "editing on other processes needs --idu.edit-lag of at least 1")
    return ImmediateEdits(editor, prompt, noise_range, generator, batched=edit_batch > 1)


def as_results(edits: list[torch.Tensor]) -> list[torch.Tensor]:
    return [edit.to(torch.float32).cpu() for edit in edits]


@dataclass
class ImmediateEdits:
    """Edits made inside ``submit`` and due after that step (see the module doc)."""

    editor: Editor
    prompt: str
    noise_range: tuple[float, float]
    generator: torch.Generator
    batched: bool = False  # one editor batch per submission (a planning editor), else one edit at a time
    busy_seconds: float = 0.0

    def __post_init__(self):
        self.ready: Edits = []

    def submit(self, step, views, renders, originals) -> None:
        start = time.perf_counter()
        if self.batched and len(views) > 1 and isinstance(self.editor, PlanningEditor):
            plans = [self.editor.plan(EditRequest(r, o, self.prompt, self.noise_range, self.generator))
                     for r, o in zip(renders, originals)]
            edits = self.editor.run_plans(plans)
        else:
            edits = [self.editor.edit(r, o, self.prompt, self.noise_range, self.generator)
                     for r, o in zip(renders, originals)]
        self.ready += zip(views, as_results(edits))
        self.busy_seconds += time.perf_counter() - start

    def due(self, step, everything=False) -> Edits:
        ready, self.ready = self.ready, []
        return ready

    def state_dict(self) -> list[dict]:
        return []  # everything submitted is due after the same step, before any checkpoint

    def load_state_dict(self, state: list[dict]) -> None:
        if state:
            raise ValueError("the checkpoint holds edits in flight, but this run has no --idu.edit-lag")


@dataclass
class PendingEdit:
    """Edits requested together at one step, due after step ``due``'s training."""

    due: int
    views: list[int]
    result: concurrent.futures.Future  # list of [H, W, 3] float32 CPU images, in ``views``' order


class EditQueue:
    """Edits running beside training, each due at a fixed step (see the module doc)."""

    def __init__(self, editor: Editor | EditorPool, prompt: str, noise_range: tuple[float, float],
                 generator: torch.Generator, lag: int):
        self.prompt, self.noise_range, self.generator, self.lag = prompt, noise_range, generator, lag
        self.pending: list[PendingEdit] = []
        self.busy_seconds = 0.0
        # Where edits run: the editor itself in one thread, or one thread per editor process of a pool, the
        # k-th submission going to lane k % lanes (a fixed assignment: results never depend on timing).
        self.lanes = list(editor.lanes) if isinstance(editor, EditorPool) else [editor]
        self.planner = editor if isinstance(editor, (PlanningEditor, EditorPool)) else None
        self.workers = [concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"editor{k}")
                        for k in range(len(self.lanes))]
        self.submitted = 0
        self.busy_lock = threading.Lock()  # lanes add their busy time from their own threads
        self.stream = None  # the editor's own CUDA stream (created with the first render on a GPU)

    def submit(self, step, views, renders, originals) -> None:
        """Start editing ``views``; the results are due after step ``step + lag``."""
        renders = [render.detach().clone() for render in renders]  # training may change the scene meanwhile
        ready = None
        if renders and renders[0].is_cuda:
            if self.stream is None:  # the editor's kernels overlap the trainer's
                self.stream = torch.cuda.Stream(renders[0].device)
            ready = torch.cuda.Event()
            ready.record()  # the renders are finished on the trainer's stream before the editor reads them
        plans = None
        if self.planner is not None:
            plans = [self.planner.plan(EditRequest(r, o, self.prompt, self.noise_range, self.generator))
                     for r, o in zip(renders, originals)]
        lane = self.lanes[self.submitted % len(self.lanes)]
        worker = self.workers[self.submitted % len(self.lanes)]
        self.submitted += 1
        result = worker.submit(self.run, lane, renders, originals, plans, ready)
        self.pending.append(PendingEdit(step + self.lag, list(views), result))

    def run(self, lane: Editor | PlanRunner, renders, originals, plans, ready) -> list[torch.Tensor]:
        start = time.perf_counter()
        context = torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
        with context:
            if ready is not None:
                torch.cuda.current_stream().wait_event(ready)
            if plans is not None:
                edits = lane.run_plans(plans)
            else:
                edits = [lane.edit(r, o, self.prompt, self.noise_range, self.generator)
                         for r, o in zip(renders, originals)]
            edits = as_results(edits)  # waits for the editor's stream
        with self.busy_lock:
            self.busy_seconds += time.perf_counter() - start
        return edits

    def due(self, step, everything=False) -> Edits:
        """Every edit due at or before ``step`` (all with ``everything``), in request order; waits for those
        still running."""
        due = [p for p in self.pending if everything or p.due <= step]
        self.pending = [p for p in self.pending if not (everything or p.due <= step)]
        return [(view, image) for p in due for view, image in zip(p.views, p.result.result())]

    def state_dict(self) -> list[dict]:
        """Finishes every edit in flight and returns them with their due steps. Afterwards the generator holds
        the state after the last submitted edit."""
        return [{"due": p.due, "views": list(p.views), "images": list(p.result.result())} for p in self.pending]

    def load_state_dict(self, state: list[dict]) -> None:
        self.pending = []
        for entry in state:
            done: concurrent.futures.Future = concurrent.futures.Future()
            done.set_result([image.to(torch.float32) for image in entry["images"]])
            self.pending.append(PendingEdit(int(entry["due"]), [int(v) for v in entry["views"]], done))
