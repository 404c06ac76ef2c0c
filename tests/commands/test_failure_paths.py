"""What a careless user or a hostile machine does to a run: bad folders, full disks, mismatched checkpoints,
start-up interrupts, saved commands edited by hand. Each ends in one line and loses nothing."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from splat2splat.cli import entrypoint
from splat2splat.data.demo import DemoConfig, write_demo_scene


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory) -> Path:
    return write_demo_scene(tmp_path_factory.mktemp("failure-demo"), DemoConfig(n_views=8, image_size=32, n_points=300))


def train_args(data: Path, output: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--output", str(output), "--steps", "4", "--eval-every", "0",
            "--gaussians.device", "cpu", "--gaussians.strategy.kind", "none", *extra]


def one_line_error(capsys, exit_info, status: int = 2) -> str:
    assert exit_info.value.code == status
    err = capsys.readouterr().err.strip()
    assert err.startswith(("error:", "stopped:")) and len(err.splitlines()) == 1, err
    return err


def test_output_that_is_a_file_is_refused_before_training(small_scene, tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("precious")
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(train_args(small_scene, target))
    assert "existing file" in one_line_error(capsys, exit_info)
    assert target.read_text() == "precious"


def test_unwritable_output_is_refused_before_training(small_scene, tmp_path, capsys, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(train_args(small_scene, tmp_path / "run"))
    assert "cannot be written" in one_line_error(capsys, exit_info)


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(small_scene, tmp_path, capsys, monkeypatch):
    output = tmp_path / "run"
    entrypoint(train_args(small_scene, output, "--checkpoint-every", "2"))
    before = (output / "checkpoint.pt").read_bytes()
    import splat2splat.io as io

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(output / "checkpoint.pt"))

    monkeypatch.setattr(io.os, "replace", disk_full)
    (output / "checkpoint.pt").unlink()
    (output / "checkpoint.pt").write_bytes(before)
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["train", "--output", str(output), "--resume"])  # nothing left to train: saves at once
    assert "No space left on device" in one_line_error(capsys, exit_info, status=1)
    assert (output / "checkpoint.pt").read_bytes() == before  # the earlier checkpoint is intact
    assert not [p for p in output.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_ctrl_c_during_start_up_is_one_line(small_scene, tmp_path, capsys, monkeypatch):
    import splat2splat.data.readers as readers

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(readers, "load_dataset", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(train_args(small_scene, tmp_path / "run"))
    assert one_line_error(capsys, exit_info, status=130).startswith("stopped:")


@pytest.mark.parametrize("content, message", [
    ({"init_steps": "ten"}, "init_steps must be a whole number"),
    ({"init_steps": 5, "shiny": True}, "no field"),
    ({"backend": "mesh"}, "backend must be one of"),
    ({"init_steps": -1}, "--init-steps -1"),
])
def test_a_hand_edited_saved_command_is_one_line(small_scene, tmp_path, capsys, content, message):
    """An edit interrupted before its first edit checkpoint resumes from command.json: bad content is refused."""
    output = tmp_path / "run"
    output.mkdir()
    (output / "command.json").write_text(json.dumps({"data": str(small_scene), "prompt": "p", **content}))
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["edit", "--output", str(output), "--resume"])
    err = one_line_error(capsys, exit_info)
    assert message in err and "command.json" in err


def test_init_checkpoint_of_the_other_backend_is_refused_before_anything_is_written(small_scene, tmp_path):
    from splat2splat.edit.job import EditJob, start_edit
    from splat2splat.errors import InputError
    from splat2splat.nerf.backend import NerfConfig
    from splat2splat.testing.editors import IdentityEditor

    entrypoint(train_args(small_scene, tmp_path / "scene"))
    init = tmp_path / "scene" / "checkpoint.pt"
    job = EditJob(data=small_scene, prompt="p", output=tmp_path / "edit", init=init, scene=NerfConfig(), device="cpu",
                  preset="in2n-tiny")
    job.idu.loss.lpips = 0.0
    with pytest.raises(InputError, match="holds a gaussian scene, but the edit asks for --backend nerf") as error:
        start_edit(job, editor=IdentityEditor())
    assert str(init) in str(error.value)
    assert not (tmp_path / "edit" / "command.json").exists()


def test_resume_with_images_of_another_size_is_one_line(small_scene, tmp_path):
    """An edit checkpoint whose edited images do not fit the dataset (another downscale) is refused clearly."""
    from splat2splat.edit.job import EditJob, run_edit_job, start_edit
    from splat2splat.errors import InputError
    from splat2splat.runner import Interrupted
    from splat2splat.testing.editors import IdentityEditor

    job = EditJob(data=small_scene, prompt="p", output=tmp_path / "edit", device="cpu", preset="in2n-tiny",
                  init_steps=2, turntable_frames=0, checkpoint_every=1)
    job.idu.loss.lpips, job.idu.steps = 0.0, 3

    def stop(step):
        raise Interrupted(step)

    with pytest.raises(Interrupted):
        run_edit_job(job, editor=IdentityEditor(), on_step=stop)
    from splat2splat.checkpoint import read_checkpoint
    from splat2splat.io import save_torch

    state = read_checkpoint(job.output / "checkpoint.pt")
    state["dataset_edits"]["current"][0] = state["dataset_edits"]["current"][0][:16, :16]
    save_torch(job.output / "checkpoint.pt", state)
    with pytest.raises(InputError, match="edited image 0 is") as error:
        start_edit(job, resume=True, editor=IdentityEditor())
    assert "checkpoint.pt" in str(error.value) and "\n" not in str(error.value)
