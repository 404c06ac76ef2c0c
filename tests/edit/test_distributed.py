"""Editing on other processes: `torchrun --nproc-per-node 2 -m splat2splat.cli edit` (gloo, CPU) gives the
single process's result at the same lag and seed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from splat2splat.checkpoint import load_checkpoint_file
from splat2splat.data.demo import DemoConfig, write_demo_scene

TORCHRUN = Path(sys.executable).with_name("torchrun")


def edit_command(data: Path, output: Path, model: Path, lag: int) -> list[str]:
    return ["-m", "splat2splat.cli", "edit", "--preset", "in2n-tiny", "--data", str(data), "--prompt", "autumn",
            "--output", str(output), "--model", str(model), "--device", "cpu", "--init-steps", "10",
            "--idu.steps", "12", "--idu.edit-rate", "1", "--idu.edit-batch", "2", "--idu.edit-lag", str(lag),
            "--idu.editor.dtype", "float32", "--idu.editor.diffusion-steps", "2", "--gaussians.strategy.kind", "none",
            "--checkpoint-every", "0", "--eval-every", "0", "--turntable-frames", "0"]


def launch(command: list[str], processes: int | None) -> subprocess.CompletedProcess:
    # Same thread count in every process (torchrun would set 1), so the CPU kernels sum in the same order.
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    prefix = [str(TORCHRUN), "--nproc-per-node", str(processes), "--master-port", "29631"] if processes else [sys.executable]
    return subprocess.run(prefix + command, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_two_processes_give_the_single_process_result(tmp_path, tiny_ip2p_folder):
    data = write_demo_scene(tmp_path / "data", DemoConfig(n_views=8, image_size=32, n_points=300))
    single = launch(edit_command(data, tmp_path / "single", tiny_ip2p_folder, lag=2), None)
    assert single.returncode == 0, single.stderr[-2000:]
    pair = launch(edit_command(data, tmp_path / "pair", tiny_ip2p_folder, lag=2), 2)
    assert pair.returncode == 0, pair.stderr[-2000:]

    a = load_checkpoint_file(tmp_path / "single" / "checkpoint.pt")
    b = load_checkpoint_file(tmp_path / "pair" / "checkpoint.pt")
    assert a["idu"]["edits_done"] == b["idu"]["edits_done"] == 12
    for x, y in zip(a["dataset_edits"]["current"], b["dataset_edits"]["current"]):
        assert torch.equal(x, y)
    for key, value in a["backend_state"]["splats"].items():
        assert torch.equal(value, b["backend_state"]["splats"][key]), key
    assert (tmp_path / "single" / "scene.ply").read_bytes() == (tmp_path / "pair" / "scene.ply").read_bytes()


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_several_processes_without_a_lag_is_one_clear_line(tmp_path, tiny_ip2p_folder):
    data = write_demo_scene(tmp_path / "data", DemoConfig(n_views=8, image_size=32, n_points=300))
    result = launch(edit_command(data, tmp_path / "run", tiny_ip2p_folder, lag=0), 2)
    assert result.returncode != 0
    assert "error: --idu.edit-lag 0: editing on other processes" in result.stderr
