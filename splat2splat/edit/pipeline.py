"""Edit throughput for the IDU loop: batched edits and edits pipelined behind training with a fixed lag.

On a GPU the loop spends most of its time in InstructPix2Pix; a Gaussian training step costs a small fraction
of one edit. Two ways to keep both busy without changing what a seed produces:

* **Batching** (``IDUConfig.edit_batch = k``): the in2n schedule edits k views every ``k * edit_rate`` steps
  instead of one every ``edit_rate`` (the same number of edits per training step), and the k edits run as one
  UNet batch (:meth:`~splat2splat.edit.ip2p.InstructPix2PixEditor.edit_batch`), each edit equal to the one the
  serial editor makes with the same generator draws. Editors without ``edit_batch`` edit one by one.
* **Pipelining** (``IDUConfig.edit_lag = L``): the edit requested at step s (the render of the scene at step
  s) runs in an editor thread while training continues, and replaces its image after step s + L's training,
  exactly then: the trainer waits if the edit is late, so a run does not depend on timing. ``L = 0`` is the
  serial loop (it does not use this queue). The editor thread takes its edits in submission order and is
  the only user of the loop's edit generator while edits are in flight, so the draws are those of a serial
  run; a checkpoint first finishes the edits in flight and stores their results with their due steps, so a
  resumed run applies them at the same steps as an uninterrupted one. The run's last step applies every
  edit still in flight (the number of edits equals the serial loop's).

igs2gs trains each step on that step's fresh edit, so neither applies to it (rejected with a clear error).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from dataclasses import dataclass, field

import torch

from splat2splat.edit.editor import Editor
from splat2splat.errors import InputError


def check_throughput_options(schedule: str, edit_batch: int, edit_lag: int) -> None:
    """One-line errors for settings the schedule cannot honour."""
    if edit_batch < 1:
        raise InputError(None, f"--idu.edit-batch {edit_batch}: must be at least 1")
    if edit_lag < 0:
        raise InputError(None, f"--idu.edit-lag {edit_lag}: must be at least 0")
    if schedule == "igs2gs" and (edit_batch > 1 or edit_lag > 0):
        raise InputError(None, "the igs2gs schedule trains every step on that step's fresh edit: it takes neither "
                               "--idu.edit-batch > 1 nor --idu.edit-lag > 0")


def edit_views(editor: Editor, renders: list[torch.Tensor], originals: list[torch.Tensor], prompt: str,
               noise_range: tuple[float, float], generator: torch.Generator) -> list[torch.Tensor]:
    """Edit several views in order, as one batch where the editor can (same results as one by one)."""
    if len(renders) > 1 and hasattr(editor, "edit_batch"):
        from splat2splat.edit.ip2p import EditRequest

        requests = [EditRequest(render, original, prompt, noise_range, generator)
                    for render, original in zip(renders, originals)]
        return list(editor.edit_batch(requests))
    return [editor.edit(render, original, prompt, noise_range, generator) for render, original in zip(renders, originals)]


@dataclass
class PendingEdit:
    """Edits requested together at one step, due after step ``due``'s training."""

    due: int
    views: list[int]
    result: concurrent.futures.Future  # list of [H, W, 3] float32 CPU images, in ``views``' order


@dataclass
class EditQueue:
    """Edits running beside training (in an editor thread, or on editor processes: ``editor.lanes``), each
    replacing its image at a fixed step (see the module doc)."""

    editor: Editor
    prompt: str
    noise_range: tuple[float, float]
    generator: torch.Generator
    lag: int
    pending: list[PendingEdit] = field(default_factory=list)
    busy_seconds: float = 0.0  # time the editor thread spent editing

    def __post_init__(self):
        # Where edits run: the editor itself in one thread, or (multi-process) one thread per editor process,
        # the k-th submission going to lane k % lanes (a fixed assignment: the results never depend on timing).
        self.lanes = list(getattr(self.editor, "lanes", [self.editor]))
        self.workers = [concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"editor{k}")
                        for k in range(len(self.lanes))]
        self.submitted = 0
        self.busy_lock = threading.Lock()  # lanes add their busy time from their own threads
        device = getattr(self.editor, "device", torch.device("cpu"))
        # The editor's kernels go to their own CUDA stream, so they overlap the trainer's.
        self.stream = torch.cuda.Stream(device) if torch.device(device).type == "cuda" else None

    def submit(self, step: int, views: list[int], renders: list[torch.Tensor], originals: list[torch.Tensor]) -> None:
        """Start editing ``views`` (their renders at ``step``); the results are due after step ``step + lag``.

        Editors that can (InstructPix2Pix) take their random draws here, in submission order; the others
        draw in the editor thread, which also takes the submissions in order."""
        renders = [render.detach().clone() for render in renders]  # training may change the scene meanwhile
        ready = None
        if any(render.is_cuda for render in renders):
            ready = torch.cuda.Event()
            ready.record()  # the renders are finished on the trainer's stream before the editor reads them
        plans = None
        if hasattr(self.editor, "plan"):
            from splat2splat.edit.ip2p import EditRequest

            plans = [self.editor.plan(EditRequest(render, original, self.prompt, self.noise_range, self.generator))
                     for render, original in zip(renders, originals)]
        lane = self.submitted % len(self.lanes)
        result = self.workers[lane].submit(self.run, self.lanes[lane], renders, originals, plans, ready)
        self.submitted += 1
        self.pending.append(PendingEdit(step + self.lag, list(views), result))

    def run(self, editor, renders, originals, plans, ready) -> list[torch.Tensor]:
        start = time.perf_counter()
        context = torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
        with context:
            if ready is not None:
                torch.cuda.current_stream().wait_event(ready)
            if plans is not None:
                edits = editor.run_plans(plans)
            else:
                edits = edit_views(editor, renders, originals, self.prompt, self.noise_range, self.generator)
            edits = [edit.to(torch.float32).cpu() for edit in edits]  # waits for the editor's stream
        with self.busy_lock:
            self.busy_seconds += time.perf_counter() - start
        return edits

    def results_due(self, step: int, everything: bool = False) -> list[tuple[int, torch.Tensor]]:
        """(view, edited image) of every edit due at or before ``step`` (all with ``everything``), in request
        order; waits for those still running."""
        due = [p for p in self.pending if everything or p.due <= step]
        self.pending = [p for p in self.pending if not (everything or p.due <= step)]
        return [(view, image) for p in due for view, image in zip(p.views, p.result.result())]

    def in_flight(self) -> int:
        return sum(len(p.views) for p in self.pending)

    def state_dict(self) -> list[dict]:
        """Finishes every edit in flight and returns them with their due steps (checkpoint data: ints and
        tensors only). Afterwards the generator holds the state after the last submitted edit."""
        return [{"due": p.due, "views": list(p.views), "images": list(p.result.result())} for p in self.pending]

    def load_state_dict(self, state: list[dict]) -> None:
        self.pending = []
        for entry in state:
            done: concurrent.futures.Future = concurrent.futures.Future()
            done.set_result([image.to(torch.float32) for image in entry["images"]])
            self.pending.append(PendingEdit(int(entry["due"]), [int(v) for v in entry["views"]], done))

    def close(self) -> None:
        for worker in self.workers:
            worker.shutdown(wait=True)
