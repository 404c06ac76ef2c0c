"""Edit throughput of the IDU loop: serial vs batched vs pipelined edits vs editor processes, the same edit in each.

Every mode runs the same in2n-tiny schedule (same steps, same number of edits) from the same unedited demo
scene; only ``edit_batch`` (k views per editor batch, every k * edit_rate steps), ``edit_lag`` (the edit of
step s lands after step s + L, edited in a thread meanwhile) and the number of processes differ. Two runs per
mode:

* timing, with the tiny random-weight InstructPix2Pix (the real editor's code path; its edits are noise):
  wall time, edits per second, the trainer's idle time (serial: every edit; pipelined: waiting for late
  edits) and the editors' idle time (wall time times the number of editors, minus their busy time summed;
  an editor process's busy time includes its messages);
* fidelity, with the oracle editor (splat2splat.testing.oracle): PSNR of the held-out renders to the known
  target scene (as scripts/bench_fidelity.py), to show that batching and lag do not cost fidelity.

The ``procsN-...`` modes run the edit as ``torchrun --nproc-per-node N ... splat2splat edit`` does
(splat2splat.edit.distributed): this process is rank 0 and trains, with RemoteEditors as its editor, and
N - 1 editor processes (spawned here; gloo on localhost; each warmed up by one edit first) serve the edits
with the same InstructPix2Pix. They are timed only, and their final scene is checked equal to the
single-process run of the same batch and lag (``equals_single_process``); the oracle has no remote form, and
an equal scene has that run's fidelity anyway.

On a CPU the trainer and the editor share the same cores, so the overlap of pipelining cannot pay off there;
the GPU numbers (editor and rasterizer on one GPU, or on several) are what this is for.

    python scripts/bench_idu.py                      # CPU, 32-px demo, a few minutes
    python scripts/bench_idu.py --modes lag10 procs2-lag10 procs3-lag10 --no-fidelity   # editor processes
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import tyro

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import markdown_table, resolve_bench_device, run_record  # noqa: E402
from bench_fidelity import BenchFidelity, Scenes, prepare, score  # noqa: E402

from splat2splat.configs import config_to_dict  # noqa: E402
from splat2splat.edit.distributed import (RemoteEditors, editor_rank_device, end_process_group,  # noqa: E402
                                          gpu_count, serve_edits, start_process_group)
from splat2splat.edit.editor import EditorPool, EditRequest  # noqa: E402
from splat2splat.edit.idu import IterativeDatasetUpdate  # noqa: E402
from splat2splat.edit.ip2p import IP2PConfig, InstructPix2PixEditor  # noqa: E402
from splat2splat.edit.presets import IDUConfig, preset  # noqa: E402
from splat2splat.gaussians.backend import GaussianBackend  # noqa: E402
from splat2splat.io import write_json  # noqa: E402
from splat2splat.losses import PhotometricLoss  # noqa: E402
from splat2splat.runner import run_loop  # noqa: E402
from splat2splat.testing.oracle import OracleEditor  # noqa: E402
from splat2splat.testing.tiny_ip2p import build_tiny_ip2p  # noqa: E402


PROMPT = "make it autumn"


@dataclass
class BenchIDU:
    """Serial vs batched vs pipelined editing: wall time, edits/s, idle time of trainer and editor, fidelity."""

    output: Path = Path("outputs/bench_idu.json")
    """JSON file for the results (with machine, versions, date and command)."""
    modes: tuple[str, ...] = ("serial", "batch4", "lag10", "batch4-lag10")
    """Modes: 'serial', 'batchK' (edit_batch K), 'lagL' (edit_lag L), 'batchK-lagL' (both), and 'procsN-lagL',
    'procsN-batchK-lagL': the same edit on N processes (this one trains, N - 1 spawned editor processes edit;
    gloo, as `torchrun ... splat2splat edit`; lag at least 1). A procs mode is timing only (the oracle edits
    in-process): its final scene is checked equal, tensor for tensor, to the single-process run of the same
    batch and lag (run first; added to the modes, before it, when not listed)."""
    image_size: int = 32
    """Demo image size in pixels."""
    views: int = 16
    """Demo views (every 8th held out)."""
    step_scale: int = 250
    """bench_fidelity's scale: the 30000-step initial scene and in2n-tiny's 30000 edit steps divided by this
    (250: 120 steps each, 12 edits)."""
    edit_rate: int = 10
    """Steps between single-view edits (in2n's own value)."""
    diffusion_steps: int = 20
    """DDIM steps of every edit (in2n's 20)."""
    model: str | None = None
    """InstructPix2Pix of the timing pass (hub id or folder, e.g. timbrooks/instruct-pix2pix
    on a GPU); default: the tiny random-weight model, built here."""
    dtype: Literal["float32", "float16", "bfloat16", "autocast"] = "float32"
    """Precision of the timing pass's editor (float16 on a GPU, as in2n-tiny)."""
    timing: bool = True
    """Run the timing pass with the tiny InstructPix2Pix."""
    fidelity: bool = True
    """Run the fidelity pass with the oracle editor."""
    threads: int | None = None
    """torch CPU threads (the CPU runs of docs/BENCHMARKS.md use 1: steadier on a shared machine)."""
    seed: int = 0
    """Seed of the demo scene's training and of every edit."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device of the scene and the editor."""


def mode_parts(mode: str) -> tuple[int, int, int]:
    """(processes, edit batch, edit lag) of a mode name."""
    processes, batch, lag = 1, 1, 0
    for part in mode.split("-"):
        if part.startswith("procs"):
            processes = int(part[len("procs"):])
        elif part.startswith("batch"):
            batch = int(part[len("batch"):])
        elif part.startswith("lag"):
            lag = int(part[len("lag"):])
        elif part != "serial":
            raise SystemExit(f"unknown mode {mode!r}")
    if mode.startswith("procs") and (processes < 2 or lag < 1):
        raise SystemExit(f"mode {mode!r}: procsN needs N >= 2 processes and a lag of at least 1")
    return processes, batch, lag


def single_process_mode(mode: str) -> str:
    """The mode of one process with the same batch and lag ('procs3-lag10': 'lag10')."""
    return "-".join(part for part in mode.split("-") if not part.startswith("procs"))


def with_single_process_modes(modes: tuple[str, ...]) -> tuple[str, ...]:
    """``modes`` with each procs mode's single-process mode before it, where missing (the equality check)."""
    result: list[str] = []
    for mode in modes:
        reference = single_process_mode(mode)
        if reference != mode and reference not in modes and reference not in result:
            result.append(reference)
        result.append(mode)
    return tuple(result)


def mode_settings(mode: str, cfg: BenchIDU) -> IDUConfig:
    """in2n-tiny, scaled as bench_fidelity scales it, with the mode's batch and lag."""
    _, batch, lag = mode_parts(mode)
    settings = preset("in2n-tiny")
    return dataclasses.replace(settings, steps=settings.steps // cfg.step_scale, edit_rate=cfg.edit_rate,
                               edit_batch=batch, edit_lag=lag, seed=cfg.seed)


def run_mode(mode: str, cfg: BenchIDU, scenes: Scenes, editor, device: torch.device) -> tuple[dict, GaussianBackend]:
    scenes.dataset.reset_edits()
    backend = GaussianBackend.from_state_dict(scenes.gaussian_state, str(device))
    for group in backend.optimizers["sh0"].param_groups:  # as bench_fidelity: colours must move within the steps
        group["lr"] = 0.025
    backend.background = scenes.target_background.to(backend.background)
    settings = mode_settings(mode, cfg)
    loop = IterativeDatasetUpdate(scenes.dataset, backend, editor, PROMPT, settings,
                                  PhotometricLoss(settings.loss))
    start = time.perf_counter()
    run_loop(loop, settings.steps, lambda: None, 0, 0, mode)
    wall = time.perf_counter() - start
    seconds = loop.timings()
    trainer_idle = seconds.get("edit_wait", seconds["edit"])  # serial: the trainer waits for every edit
    remote = isinstance(editor, EditorPool)  # RemoteEditors: one lane per editor process
    lanes = len(editor.lanes) if remote else 1
    row = {"mode": mode, "processes": 1 + lanes if remote else 1,
           "edit_batch": settings.edit_batch, "edit_lag": settings.edit_lag, "steps": settings.steps,
           "edits": loop.edits_done, "wall_s": wall, "edits_per_s": loop.edits_done / wall,
           "trainer_idle_s": trainer_idle, "editor_idle_s": lanes * wall - seconds["edit"], "seconds": seconds}
    return row, backend


# ------------------------------------------------------------------------------------- several processes

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rank_environment(rank: int, world_size: int, port: int) -> dict[str, str]:
    # All processes on this machine: LOCAL_RANK is RANK (the editor's GPU is LOCAL_RANK % GPU count).
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size)}


def warmed_up(editor: InstructPix2PixEditor, image_size: int, batches: set[int]) -> InstructPix2PixEditor:
    """``editor`` after one call of each batch size the modes use, on a random image: the first call of a new
    editor (or of a new batch shape) pays one-time set-up (CUDA kernels loading, cuDNN/cuBLAS heuristics) that
    would otherwise land on whichever mode runs first."""
    image = torch.rand(image_size, image_size, 3, generator=torch.Generator().manual_seed(0))
    for batch in sorted(batches):
        editor.edit_batch([EditRequest(image, image, PROMPT, (0.02, 0.98), torch.Generator().manual_seed(k))
                           for k in range(batch)])
    return editor


def editor_process(index: int, world_size: int, port: int, settings: IP2PConfig, threads: int,
                   image_size: int, batches: set[int]) -> None:
    """A spawned editor rank (rank ``index + 1``): serves edits with the timing pass's InstructPix2Pix."""
    rank = index + 1
    os.environ.update(rank_environment(rank, world_size, port))
    torch.set_num_threads(threads)  # the trainer's count: the kernels sum in the same order as in one process
    start_process_group()
    try:
        device = editor_rank_device(settings.device, rank, gpu_count())
        serve_edits(lambda: warmed_up(InstructPix2PixEditor.from_config(dataclasses.replace(settings, device=device)),
                                      image_size, batches))
    finally:
        end_process_group()


@contextlib.contextmanager
def editor_processes(world_size: int, settings: IP2PConfig, image_size: int, batches: set[int]):
    """:class:`RemoteEditors` for ``world_size - 1`` spawned editor processes, this process being rank 0."""
    import torch.multiprocessing as mp

    port = free_port()
    saved = {key: os.environ.get(key) for key in rank_environment(0, world_size, port)}
    os.environ.update(rank_environment(0, world_size, port))
    arguments = (world_size, port, settings, torch.get_num_threads(), image_size, batches)
    context = mp.start_processes(editor_process, args=arguments, nprocs=world_size - 1, join=False,
                                 start_method="spawn")
    watcher = threading.Thread(target=stop_if_an_editor_fails, args=(context,), daemon=True)
    watcher.start()
    try:
        start_process_group()
        editors = RemoteEditors(world_size)
        try:
            yield editors
        finally:
            editors.close()
    finally:
        end_process_group()
        watcher.join(timeout=60)
        for process in context.processes:  # still there after a failure on this side: they ignore SIGTERM
            if process.is_alive():
                process.kill()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def stop_if_an_editor_fails(context) -> None:
    """Waits for the editor processes; when one fails, ends the bench (rank 0 would wait for it forever)."""
    try:
        while not context.join(timeout=1):
            pass
    except Exception as error:  # torch.multiprocessing's ProcessRaisedException / ProcessExitedException
        print(f"bench_idu: an editor process failed, stopping: {error}", file=sys.stderr, flush=True)
        for process in context.processes:  # editor ranks ignore SIGTERM
            if process.is_alive():
                process.kill()
        os._exit(1)


def run_on_processes(mode: str, cfg: BenchIDU, scenes: Scenes, settings: IP2PConfig,
                     device: torch.device) -> tuple[dict, GaussianBackend]:
    processes, batch, _ = mode_parts(mode)
    with editor_processes(processes, settings, cfg.image_size, {batch}) as editors:
        return run_mode(mode, cfg, scenes, editors, device)


def splat_tensors(backend: GaussianBackend) -> dict[str, torch.Tensor]:
    return {key: value.detach().cpu().clone() for key, value in backend.splats.items()}


def splat_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float | None:
    """The largest difference of any splat value (None when the Gaussians differ in number): on a GPU, another
    process may pick other kernels and round differently, which this shows."""
    if a.keys() != b.keys() or any(a[key].shape != b[key].shape for key in a):
        return None
    return max(float((a[key] - b[key]).abs().max()) if a[key].numel() else 0.0 for key in a)


def same_splats(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def main(cfg: BenchIDU) -> dict:
    device = resolve_bench_device(cfg.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    oracle = OracleEditor()
    fidelity_cfg = BenchFidelity(image_size=cfg.image_size, views=cfg.views, step_scale=cfg.step_scale,
                                 methods=("in2n-tiny",), seed=cfg.seed, device=cfg.device)
    modes = with_single_process_modes(cfg.modes)
    rows = {mode: {"mode": mode} for mode in modes}
    with tempfile.TemporaryDirectory() as tmp:
        model = cfg.model or build_tiny_ip2p(Path(tmp) / "tiny-ip2p", seed=0)
        scenes = prepare(fidelity_cfg, oracle, Path(tmp) / "demo", device) if cfg.timing or cfg.fidelity else None
        if cfg.timing:
            ip2p_settings = IP2PConfig(model=str(model), dtype=cfg.dtype, device=str(device),
                                       diffusion_steps=cfg.diffusion_steps)
            ip2p = warmed_up(InstructPix2PixEditor.from_config(ip2p_settings), cfg.image_size,
                             {mode_parts(mode)[1] for mode in modes})
            finals = {}  # final splats of the single-process runs, for the procs modes' equality check
            for mode in sorted(modes, key=lambda m: mode_parts(m)[0] > 1):  # those runs first
                if mode_parts(mode)[0] == 1:
                    row, backend = run_mode(mode, cfg, scenes, ip2p, device)
                    finals[mode] = splat_tensors(backend)
                else:
                    row, backend = run_on_processes(mode, cfg, scenes, ip2p_settings, device)
                    reference = single_process_mode(mode)
                    row.update(single_process_mode=reference,
                               equals_single_process=same_splats(splat_tensors(backend), finals[reference]),
                               max_splat_difference=splat_difference(splat_tensors(backend), finals[reference]))
                rows[mode].update(row)
        if cfg.fidelity:
            for mode in modes:
                if mode_parts(mode)[0] > 1:
                    continue  # timing only: the oracle edits in this process only
                row, backend = run_mode(mode, cfg, scenes, oracle, device)
                rows[mode].update({"oracle_edits": row["edits"], "oracle_wall_s": row["wall_s"], **score(backend, scenes)})
    if not (cfg.timing or cfg.fidelity):
        rows = {}
    result = {"record": run_record(device), "settings": config_to_dict(cfg), "results": list(rows.values())}
    write_json(cfg.output, result)
    headers = ["mode", "processes", "edit batch", "edit lag", "steps", "edits", "wall s", "edits/s",
               "trainer idle s", "editor idle s", "= 1 process", "oracle PSNR to target", "oracle PSNR to unedited"]

    def cell(row, key, fmt):
        return format(row[key], fmt) if key in row else "-"

    def fidelity_cell(row, key):
        if row.get("equals_single_process"):  # the same scene as its single-process mode, so the same fidelity
            return f"= {row['single_process_mode']}"
        return cell(row, key, ".2f")

    def equality_cell(row):
        if row.get("equals_single_process") is False:
            difference = row.get("max_splat_difference")
            return "NO (other Gaussian count)" if difference is None else f"NO (max diff {difference:.1e})"
        return {True: "yes"}.get(row.get("equals_single_process"), "-")

    print(markdown_table(headers, [[r["mode"], cell(r, "processes", "d"), cell(r, "edit_batch", "d"),
                                    cell(r, "edit_lag", "d"), cell(r, "steps", "d"), cell(r, "edits", "d"),
                                    cell(r, "wall_s", ".1f"), cell(r, "edits_per_s", ".3f"),
                                    cell(r, "trainer_idle_s", ".1f"), cell(r, "editor_idle_s", ".1f"),
                                    equality_cell(r), fidelity_cell(r, "psnr_to_target"),
                                    fidelity_cell(r, "psnr_to_unedited")] for r in rows.values()]))
    return result


if __name__ == "__main__":
    main(tyro.cli(BenchIDU))
