"""Editing on several processes (``torchrun``): rank 0 trains the scene, ranks 1..N-1 each hold an editor.

    torchrun --nproc-per-node N --no-python splat2splat edit ... --idu.edit-lag L

Rank 0 runs the whole edit as one process would, with :class:`RemoteEditors` as its editor: the pipelined
:class:`~splat2splat.edit.executors.EditQueue` draws every edit's noise on rank 0, in submission order (the
draws need only the model's :class:`~splat2splat.edit.ip2p.NoiseGeometry`, which each editor rank reports
when it starts), and sends the k-th submission to editor rank 1 + k % (N - 1); the result comes back before
its due step. So a run gives the same result as the single-process run with the same lag and seed, whatever
the number of processes, and its checkpoints and --resume are the single process's. The lag must be at least
1 (with lag 0 there is nothing to overlap); to keep N - 1 editors busy, make it at least (N - 1) x edit_rate
x edit_batch steps.

Devices: every process uses GPU ``LOCAL_RANK % (GPUs on its machine)`` (:func:`local_gpu_index`), so a
machine may run more processes than it has GPUs. On one GPU, the trainer and one editor process share cuda:0:
the editor's Python-bound sampling loop then runs outside the trainer's GIL (an editor thread shares it).
When the job's device is a GPU, an editor rank's editor runs on that GPU (``cuda:<index>``), whatever index
--device named; the trainer stays on --device.

Transport: gloo point-to-point messages, on GPUs too. NCCL refuses two ranks on one GPU, which would rule out
the trainer and an editor process sharing one; and an edit's payload (render, original image, noise and
result: a few MB at 512 px) is small beside a 20-step diffusion. CPU messages can also be sent from the
queue's threads (one per editor rank) without sharing a CUDA communicator between threads. The processes
share the run folder (one machine, or a shared file system): on --resume every rank reads the saved job and
takes the resume's own options over it (--device, --model...), as the trainer does.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import signal
import threading
from dataclasses import dataclass

import torch

from splat2splat.edit.editor import EditPlan, EditRequest
from splat2splat.edit.ip2p import NoiseGeometry, draw_plan
from splat2splat.errors import InputError

TRAINER = 0
STOP = -1  # the count of a message that ends an editor rank's loop
LOAD_FAILED = -1  # the geometry an editor rank reports when it could not load its model
# An editor rank waits in recv while rank 0 trains an initial scene or sits between edits: no timeout that a
# long run could reach.
PATIENCE = datetime.timedelta(days=30)


def launched_with_several_processes() -> bool:
    """True under torchrun (or any env:// launch) with a world of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_rank() -> int:
    """This process's rank on its own machine (torchrun's LOCAL_RANK; 0 without one)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def gpu_count() -> int:
    """GPUs on this machine (1 where there is none: every process then shares the one CPU device)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def local_gpu_index(rank_on_machine: int, device_count: int) -> int:
    """The GPU of the process with this LOCAL_RANK: round robin over the machine's GPUs, so processes beyond
    the GPU count share them (one GPU: trainer and editor processes all on cuda:0)."""
    return rank_on_machine % device_count


def editor_rank_device(device: str, rank_on_machine: int, device_count: int) -> str:
    """The device of an editor rank's editor, for the job's resolved device: its own GPU when that is a GPU."""
    if torch.device(device).type != "cuda":
        return device
    return f"cuda:{local_gpu_index(rank_on_machine, device_count)}"


def on_editor_rank_device(job, rank_on_machine: int, device_count: int):
    """``job`` (an :class:`~splat2splat.edit.job.EditJob` with resolved devices) with its editor on this editor
    rank's device (:func:`editor_rank_device`)."""
    editor = job.idu.editor
    device = editor_rank_device(editor.device, rank_on_machine, device_count)
    return dataclasses.replace(job, idu=dataclasses.replace(job.idu, editor=dataclasses.replace(editor, device=device)))


def start_process_group() -> tuple[int, int]:
    """Join the launch's process group (gloo) and select this process's GPU; returns (rank, world size)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=PATIENCE)
    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(local_gpu_index(local_rank(), torch.cuda.device_count()))
    return dist.get_rank(), dist.get_world_size()


def end_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------ messages

def send_plans(plans: list[EditPlan], prompt: str, rank: int) -> None:
    """One edit batch: a count, then per plan (render size, VAE size, T), the prompt, then the tensors."""
    import torch.distributed as dist

    header = [len(plans)]
    for plan in plans:
        header += [*plan.request.render.shape[:2], *plan.size, plan.max_timestep]
    encoded = torch.tensor(list(prompt.encode()), dtype=torch.uint8)
    dist.send(torch.tensor([len(plans), len(encoded)], dtype=torch.int64), rank)
    dist.send(torch.tensor(header[1:], dtype=torch.int64), rank)
    dist.send(encoded, rank)
    for plan in plans:
        for tensor in (plan.request.render, plan.request.original, plan.sample_noise, plan.latent_noise):
            dist.send(tensor.detach().to("cpu", torch.float32).contiguous(), rank)


def receive_plans(geometry: NoiseGeometry) -> list[EditPlan] | None:
    """The next batch from rank 0 (None: stop)."""
    import torch.distributed as dist

    counts = torch.empty(2, dtype=torch.int64)
    dist.recv(counts, TRAINER)
    count, prompt_length = int(counts[0]), int(counts[1])
    if count == STOP:
        return None
    header = torch.empty(5 * count, dtype=torch.int64)
    dist.recv(header, TRAINER)
    encoded = torch.empty(prompt_length, dtype=torch.uint8)
    dist.recv(encoded, TRAINER)
    prompt = bytes(encoded.tolist()).decode()
    plans = []
    for height, width, size_h, size_w, max_timestep in header.view(count, 5).tolist():
        render, original = torch.empty(height, width, 3), torch.empty(height, width, 3)
        latent_shape = (1, geometry.latent_channels, size_h // geometry.vae_scale_factor,
                        size_w // geometry.vae_scale_factor)
        sample_noise, latent_noise = torch.empty(latent_shape), torch.empty(latent_shape)
        for tensor in (render, original, sample_noise, latent_noise):
            dist.recv(tensor, TRAINER)
        # The noise range and generator were used on rank 0; the plan carries what they drew.
        request = EditRequest(render, original, prompt, (0.0, 1.0), None)  # type: ignore[arg-type]
        plans.append(EditPlan(request, (size_h, size_w), max_timestep, sample_noise, latent_noise))
    return plans


# ---------------------------------------------------------------------------------------- rank 0

@dataclass
class RemoteLane:
    """One editor rank, as a lane of the edit queue (the queue calls it from that lane's own thread)."""

    rank: int
    send_lock: threading.Lock

    def run_plans(self, plans: list[EditPlan]) -> list[torch.Tensor]:
        import torch.distributed as dist

        with self.send_lock:  # one message sequence at a time leaves rank 0
            send_plans(plans, plans[0].request.prompt, self.rank)
        edits = []
        for plan in plans:
            edited = torch.empty(*plan.request.render.shape[:2], 3)
            dist.recv(edited, self.rank)
            edits.append(edited)
        return edits


class RemoteEditors:
    """Rank 0's :class:`~splat2splat.edit.editor.EditorPool`: draws each edit's noise like the editor would and
    hands the edit to an editor rank (a lane)."""

    def __init__(self, world_size: int):
        import torch.distributed as dist

        if world_size < 2:
            raise ValueError("remote editors need at least one editor rank")
        geometries = []
        for rank in range(1, world_size):
            values = torch.empty(3, dtype=torch.int64)
            dist.recv(values, rank)
            if int(values[0]) == LOAD_FAILED:
                raise InputError(None, f"editor rank {rank} could not load the InstructPix2Pix model (its error "
                                       f"is in its own output)")
            geometries.append(NoiseGeometry(*(int(v) for v in values)))
        if len(set(geometries)) != 1:
            raise InputError(None, f"the editor ranks loaded different models: {geometries}")
        self.geometry = geometries[0]
        lock = threading.Lock()
        self.lanes = [RemoteLane(rank, lock) for rank in range(1, world_size)]
        self.device = torch.device("cpu")  # rank 0 computes nothing of the edits

    def plan(self, request: EditRequest) -> EditPlan:
        return draw_plan(request, self.geometry)

    def close(self) -> None:
        """Ends every editor rank's loop."""
        import torch.distributed as dist

        for lane in self.lanes:
            dist.send(torch.tensor([STOP, 0], dtype=torch.int64), lane.rank)


# ---------------------------------------------------------------------------------------- ranks > 0

def serve_edits(load_editor) -> None:
    """An editor rank: load the editor (``load_editor()``), report its noise geometry, then edit what rank 0
    sends until it says stop. Ctrl-C is left to rank 0, which finishes the edits in flight first."""
    import torch.distributed as dist

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    try:
        editor = load_editor()
    except Exception:
        dist.send(torch.tensor([LOAD_FAILED, 0, 0], dtype=torch.int64), TRAINER)
        raise
    geometry = editor.noise_geometry()
    dist.send(torch.tensor([geometry.num_train_timesteps, geometry.vae_scale_factor, geometry.latent_channels],
                           dtype=torch.int64), TRAINER)
    while (plans := receive_plans(geometry)) is not None:
        for edited in editor.run_plans(plans):
            dist.send(edited.detach().to("cpu", torch.float32).contiguous(), TRAINER)


# ---------------------------------------------------------------------------------------- the launch

def settled_job(job, resume: bool, given: dict | None):
    """The job every rank runs: ``job``, or on --resume the saved one with this command line's ``given``
    options (--device, --model...) over it, as the trainer's (refused the same way on every rank)."""
    from splat2splat.edit.job import saved_job

    return saved_job(job, given)[0] if resume else job


def edit_on_ranks(job, resume: bool, given: dict | None, run_as_trainer) -> dict:
    """The edit of ``job`` (an :class:`~splat2splat.edit.job.EditJob`; on --resume with the command line's
    ``given`` options) on this process's rank: rank 0 calls ``run_as_trainer(editors)`` with the
    :class:`RemoteEditors` and returns its run.json content; the other ranks serve edits and return an empty
    dict."""
    from splat2splat.edit.executors import check_throughput_options
    from splat2splat.edit.job import make_editor, on_device

    # Every rank reads the same job and refuses it the same way, before any process waits for another.
    settled = settled_job(job, resume, given)
    check_throughput_options(settled.idu.schedule, settled.idu.edit_batch, settled.idu.edit_lag)
    if settled.idu.edit_lag < 1:
        raise InputError(None, f"--idu.edit-lag {settled.idu.edit_lag}: editing on other processes (torchrun with "
                               f"{os.environ.get('WORLD_SIZE')} processes) needs a lag of at least 1 step")
    rank, world_size = start_process_group()
    try:
        if rank != TRAINER:
            serve_edits(lambda: make_editor(on_editor_rank_device(on_device(settled), local_rank(), gpu_count())))
            return {}
        editors = RemoteEditors(world_size)
        try:
            return run_as_trainer(editors)
        finally:
            editors.close()
    finally:
        end_process_group()
