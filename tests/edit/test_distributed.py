"""Editing on other processes: `torchrun -m splat2splat edit` (gloo, CPU) gives the single process's result
at the same lag and seed, with 2 processes on one machine and with 3 processes on two "machines" (two torchrun
launches on localhost); and the choice of each editor rank's GPU."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from splat2splat.checkpoint import load_checkpoint_file
from splat2splat.data.demo import DemoConfig, write_demo_scene
from splat2splat.edit.distributed import editor_rank_device, local_gpu_index, on_editor_rank_device
from splat2splat.edit.job import EditJob

TORCHRUN = Path(sys.executable).with_name("torchrun")
LAUNCH_SECONDS = 240  # the longest a launch may take before the test stops it
needs_torchrun = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")


def edit_command(data: Path, output: Path, model: Path, lag: int) -> list[str]:
    return ["-m", "splat2splat", "edit", "--preset", "in2n-tiny", "--data", str(data), "--prompt", "autumn",
            "--output", str(output), "--model", str(model), "--device", "cpu", "--init-steps", "10",
            "--idu.steps", "12", "--idu.edit-rate", "1", "--idu.edit-batch", "2", "--idu.edit-lag", str(lag),
            "--idu.editor.dtype", "float32", "--idu.editor.diffusion-steps", "2", "--gaussians.strategy.kind", "none",
            "--checkpoint-every", "0", "--eval-every", "0", "--turntable-frames", "0"]


def launch_environment() -> dict[str, str]:
    # Same thread count in every process (torchrun would set 1), so the CPU kernels sum in the same order.
    return {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(processes: int, port: int, nodes: int = 1, node: int = 0) -> list[str]:
    return [str(TORCHRUN), "--nnodes", str(nodes), "--node-rank", str(node), "--master-addr", "127.0.0.1",
            "--master-port", str(port), "--nproc-per-node", str(processes)]


def launch(command: list[str], processes: int | None) -> subprocess.CompletedProcess:
    prefix = torchrun(processes, free_port()) if processes else [sys.executable]
    return subprocess.run(prefix + command, env=launch_environment(), capture_output=True, text=True,
                          timeout=LAUNCH_SECONDS)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc; elsewhere only ``pid``). torchrun starts each worker in a
    session of its own, so killing the launcher's process group would leave the workers."""
    tree = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            tree += process_tree(int(child))
    return tree


def kill_tree(pid: int) -> None:
    for member in reversed(process_tree(pid)):  # the workers first: editor ranks ignore SIGTERM
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def launch_together(commands: list[list[str]], logs: Path) -> list[tuple[int, str]]:
    """Run the launches at the same time; (exit status, stderr) of each. When one fails or time runs out, the
    others are killed (a node left alone would wait for its peers)."""
    logs.mkdir(exist_ok=True)
    streams = [open(logs / f"launch{k}.err", "w") for k in range(len(commands))]
    running = [subprocess.Popen(command, env=launch_environment(), stdout=subprocess.DEVNULL, stderr=stream)
               for command, stream in zip(commands, streams)]
    deadline = time.monotonic() + LAUNCH_SECONDS
    try:
        while any(process.poll() is None for process in running):
            if time.monotonic() > deadline or any(process.poll() not in (None, 0) for process in running):
                break
            time.sleep(0.2)
    finally:
        for process in running:
            if process.poll() is None:
                kill_tree(process.pid)
            process.wait()
        for stream in streams:
            stream.close()
    return [(process.returncode, (logs / f"launch{k}.err").read_text()) for k, process in enumerate(running)]


@pytest.fixture(scope="module")
def scene_and_single_run(tmp_path_factory, tiny_ip2p_folder) -> tuple[Path, Path]:
    """The demo scene and the single-process edit of it at lag 2 (the reference of every launch here)."""
    folder = tmp_path_factory.mktemp("distributed")
    data = write_demo_scene(folder / "data", DemoConfig(n_views=8, image_size=32, n_points=300))
    single = launch(edit_command(data, folder / "single", tiny_ip2p_folder, lag=2), None)
    assert single.returncode == 0, single.stderr[-2000:]
    return data, folder / "single"


def assert_same_edit(single: Path, other: Path) -> None:
    a = load_checkpoint_file(single / "checkpoint.pt")
    b = load_checkpoint_file(other / "checkpoint.pt")
    assert a["idu"]["edits_done"] == b["idu"]["edits_done"] == 12
    for x, y in zip(a["dataset_edits"]["current"], b["dataset_edits"]["current"], strict=True):
        assert torch.equal(x, y)
    for key, value in a["backend_state"]["splats"].items():
        assert torch.equal(value, b["backend_state"]["splats"][key]), key
    assert (single / "scene.ply").read_bytes() == (other / "scene.ply").read_bytes()


@needs_torchrun
def test_two_processes_give_the_single_process_result(tmp_path, scene_and_single_run, tiny_ip2p_folder):
    data, single = scene_and_single_run
    pair = launch(edit_command(data, tmp_path / "pair", tiny_ip2p_folder, lag=2), 2)
    assert pair.returncode == 0, pair.stderr[-2000:]
    assert_same_edit(single, tmp_path / "pair")


@needs_torchrun
def test_three_processes_on_two_nodes_give_the_single_process_result(tmp_path, scene_and_single_run,
                                                                     tiny_ip2p_folder):
    # Node 0: trainer (rank 0) and an editor (rank 1); node 1: an editor whose RANK 2 is not its LOCAL_RANK 0.
    data, single = scene_and_single_run
    command = [sys.executable, *edit_command(data, tmp_path / "three", tiny_ip2p_folder, lag=2)][1:]
    port = free_port()
    results = launch_together([torchrun(2, port, nodes=2, node=0) + command,
                               torchrun(1, port, nodes=2, node=1) + command], tmp_path / "logs")
    for status, stderr in results:
        assert status == 0, stderr[-2000:]
    assert_same_edit(single, tmp_path / "three")


@needs_torchrun
def test_a_failed_node_stops_the_other_launch(tmp_path):
    # Node 1 dies at once (an unknown option); node 0 alone would wait for it: it is stopped, not awaited.
    port = free_port()
    start = time.monotonic()
    results = launch_together([torchrun(1, port, nodes=2, node=0) + ["-c", "pass"],
                               torchrun(1, port, nodes=2, node=1) + ["--no-such-option"]], tmp_path / "logs")
    assert results[1][0] != 0 and results[0][0] != 0
    assert time.monotonic() - start < 60


@needs_torchrun
def test_several_processes_without_a_lag_is_one_clear_line(tmp_path, scene_and_single_run, tiny_ip2p_folder):
    data, _ = scene_and_single_run
    result = launch(edit_command(data, tmp_path / "run", tiny_ip2p_folder, lag=0), 2)
    assert result.returncode != 0
    assert "error: --idu.edit-lag 0: editing on other processes" in result.stderr


def interrupted_run_with_a_missing_model(data: Path, output: Path) -> None:
    """An edit (in this process, a stand-in editor) stopped after step 2 whose saved --model does not exist."""
    from splat2splat.commands.edit import parse, run
    from splat2splat.runner import Interrupted
    from splat2splat.testing.editors import TintEditor

    def stop(step: int) -> None:
        if step == 2:
            raise Interrupted(step)

    args = edit_command(data, output, output.parent / "moved-model", lag=2)[3:]  # without "-m splat2splat edit"
    with pytest.raises(Interrupted):
        run(parse(args), editor=TintEditor(), on_step=stop)


def test_editor_ranks_take_the_resume_s_model_and_device_over_the_saved_ones(tmp_path, demo_scene):
    from splat2splat.edit.distributed import settled_job
    from splat2splat.checkpoint import given_options

    output = tmp_path / "run"
    interrupted_run_with_a_missing_model(demo_scene, output)
    invocation = dataclasses.replace(EditJob(output=output), model="new-model", device="cpu:0")
    given = given_options(invocation, EditJob(), ["--model", "new-model", "--device", "cpu:0"])
    settled = settled_job(invocation, True, given)
    assert (settled.model, settled.device) == ("new-model", "cpu:0")
    assert settled.prompt == "autumn" and settled.idu.steps == 12  # the rest is the saved run's


@needs_torchrun
def test_a_resume_under_torchrun_loads_the_model_its_command_line_names(tmp_path, scene_and_single_run,
                                                                        tiny_ip2p_folder):
    """The saved run's model has moved: the editor ranks must load the one --model names now, as the trainer
    does (they used to read it from the saved job, and failed)."""
    data, _ = scene_and_single_run
    output = tmp_path / "run"
    interrupted_run_with_a_missing_model(data, output)
    result = launch(["-m", "splat2splat", "edit", "--output", str(output), "--resume", "--model",
                     str(tiny_ip2p_folder), "--device", "cpu"], 2)
    assert result.returncode == 0, result.stderr[-2000:]
    assert load_checkpoint_file(output / "checkpoint.pt")["idu"]["edits_done"] == 12


# ------------------------------------------------------------------------------------- GPU choice

def test_processes_share_the_gpus_round_robin():
    assert [local_gpu_index(rank, 1) for rank in range(3)] == [0, 0, 0]  # one GPU: trainer + editors on cuda:0
    assert [local_gpu_index(rank, 2) for rank in range(5)] == [0, 1, 0, 1, 0]
    assert [local_gpu_index(rank, 8) for rank in range(3)] == [0, 1, 2]


def test_an_editor_rank_edits_on_its_own_gpu():
    assert editor_rank_device("cuda", 1, 1) == "cuda:0"  # trainer + editor on a one-GPU machine
    assert editor_rank_device("cuda", 1, 2) == "cuda:1"
    assert editor_rank_device("cuda:0", 3, 4) == "cuda:3"  # not the index --device named for the trainer
    assert editor_rank_device("cpu", 1, 1) == "cpu"


def test_the_editor_rank_job_moves_only_the_editor():
    job = EditJob(device="cuda")
    job = dataclasses.replace(job, idu=dataclasses.replace(job.idu, editor=dataclasses.replace(job.idu.editor,
                                                                                             device="cuda")))
    moved = on_editor_rank_device(job, 1, 2)
    assert moved.idu.editor.device == "cuda:1"
    assert (moved.device, moved.scene.device, moved.idu.editor.model) == (job.device, job.scene.device,
                                                                              job.idu.editor.model)
