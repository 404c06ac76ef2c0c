"""What a careless user or a hostile machine does to a run: bad folders, full disks, mismatched checkpoints,
start-up interrupts, saved commands edited by hand. Each ends in one line and loses nothing."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


def cli_process(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.Popen([sys.executable, "-m", "splat2splat", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env, text=True)


def test_two_trainings_into_one_folder_at_once_one_is_refused(small_scene, tmp_path):
    """Two processes race for one --output: one trains, the other is refused in one line, nothing interleaves."""
    from splat2splat.checkpoint import read_checkpoint

    output = tmp_path / "run"
    processes = {steps: cli_process(*train_args(small_scene, output)[:5], "--steps", str(steps), "--eval-every",
                                    "0", "--gaussians.device", "cpu", "--gaussians.strategy.kind", "none")
                 for steps in (30, 31)}
    results = {steps: (p.wait(timeout=300), p.stderr.read().strip()) for steps, p in processes.items()}
    assert sorted(status for status, _ in results.values()) == [0, 2], results
    winner = next(steps for steps, (status, _) in results.items() if status == 0)
    refusal = next(err for status, err in results.values() if status == 2)
    # The loser meets the winner's lock (held, or still being written) or, after it, the finished run.
    assert len(refusal.splitlines()) == 1 and any(
        reason in refusal for reason in ("another splat2splat run", "another run ", "already exists"))
    assert read_checkpoint(output / "checkpoint.pt")["command"]["steps"] == winner
    assert json.loads((output / "metrics.json").read_text())["steps"] == winner
    assert not (output / "splat2splat.lock").exists()


def test_an_edit_into_a_folder_another_run_holds_is_refused_before_any_work(small_scene, tmp_path, capsys):
    output = tmp_path / "run"
    output.mkdir()
    from tests.test_folder_lock import holder as hold_folder

    process = hold_folder(output)
    try:
        with pytest.raises(SystemExit) as exit_info:
            entrypoint(["edit", "--data", str(small_scene), "--prompt", "p", "--output", str(output),
                        "--device", "cpu", "--preset", "in2n-tiny", "--model", str(tmp_path / "no-model")])
        assert f"pid {process.pid}" in one_line_error(capsys, exit_info)
        with pytest.raises(SystemExit) as exit_info:
            entrypoint(train_args(small_scene, output))
        assert f"pid {process.pid}" in one_line_error(capsys, exit_info)
    finally:
        process.kill()
        process.wait()
    assert sorted(p.name for p in output.iterdir()) == ["splat2splat.lock"]  # nothing written but the holder's lock


def test_a_saved_command_cannot_grant_access_outside_the_dataset(small_scene, tmp_path, capsys):
    """A run folder from elsewhere whose command.json allows paths outside the dataset: --resume refuses it
    unless the flag is on the command line again (it would otherwise read any file the dataset names)."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(small_scene, data)
    transforms = json.loads((data / "transforms.json").read_text())
    transforms["frames"][0]["file_path"] = str(tmp_path / "secret.png")
    (data / "transforms.json").write_text(json.dumps(transforms))
    output = tmp_path / "run"
    output.mkdir()
    (output / "command.json").write_text(json.dumps({"data": str(data), "prompt": "p", "init_steps": 2,
                                                     "allow_paths_outside_data": True}))
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["edit", "--output", str(output), "--resume"])
    err = one_line_error(capsys, exit_info)
    assert "--allow-paths-outside-data again" in err and "command.json" in err
    assert sorted(p.name for p in output.iterdir()) == ["command.json"]  # refused before anything ran


def test_a_saved_training_command_cannot_grant_access_outside_the_dataset(small_scene, tmp_path, capsys):
    from splat2splat.checkpoint import read_checkpoint
    from splat2splat.io import save_torch

    output = tmp_path / "run"
    entrypoint(train_args(small_scene, output, "--checkpoint-every", "2"))
    state = read_checkpoint(output / "checkpoint.pt")
    state["command"]["allow_paths_outside_data"] = True
    state["command"]["steps"] = 6
    save_torch(output / "checkpoint.pt", state)
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["train", "--output", str(output), "--resume"])
    assert "--allow-paths-outside-data again" in one_line_error(capsys, exit_info)
    entrypoint(["train", "--output", str(output), "--resume", "--allow-paths-outside-data"])  # given again: runs
    assert read_checkpoint(output / "checkpoint.pt")["backend_state"]["step"] == 6


@pytest.mark.parametrize("device, message", [("meta", "computes on cpu, cuda"), ("mps", "no MPS"),
                                             ("cuda:0", "no CUDA GPU")])
def test_devices_that_cannot_run_are_one_line_before_anything_is_written(small_scene, tmp_path, capsys, device,
                                                                         message, monkeypatch):
    import torch

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    output = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["edit", "--data", str(small_scene), "--prompt", "p", "--output", str(output), "--device", device])
    assert message in one_line_error(capsys, exit_info)
    assert not output.exists()


def test_blender_file_path_of_the_root_is_one_line(tmp_path):
    from splat2splat.data.readers import load_dataset
    from splat2splat.errors import InputError
    from tests.data.scenes import write_blender_scene

    root = write_blender_scene(tmp_path / "blender", {"train": [0, 1], "val": [2]})
    transforms = json.loads((root / "transforms_train.json").read_text())
    transforms["frames"][0]["file_path"] = "/"
    (root / "transforms_train.json").write_text(json.dumps(transforms))
    with pytest.raises(InputError) as error:
        load_dataset(root)
    assert "transforms_train.json" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("distance, trains", [(1e29, True), (1e31, False)])
def test_camera_translations_near_1e30(small_scene, tmp_path, capsys, distance, trains):
    """Float32 squares of such positions overflow: the scene's scale is fitted in float64, and positions beyond
    what a float32 scene can hold are one line naming the file."""
    import shutil

    data = tmp_path / "far"
    shutil.copytree(small_scene, data)
    transforms = json.loads((data / "transforms.json").read_text())
    for k, frame in enumerate(transforms["frames"]):
        frame["transform_matrix"][0][3] = distance * (k + 1)
    (data / "transforms.json").write_text(json.dumps(transforms))
    args = train_args(data, tmp_path / "run")
    if trains:
        entrypoint(args)
        assert (tmp_path / "run" / "scene.ply").is_file()
        return
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(args)
    err = one_line_error(capsys, exit_info)
    assert "transforms.json" in err and "units apart" in err


# ------------------------------------------------------------------------- silent overwrites, wrong records


def test_render_into_a_run_folder_is_refused_and_its_metrics_stay(small_scene, tmp_path, capsys):
    output = tmp_path / "run"
    entrypoint(train_args(small_scene, output))
    before = (output / "metrics.json").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["render", "--scene", str(output / "checkpoint.pt"), "--output", str(output), "--device", "cpu",
                    "--turntable-frames", "0"])
    assert "holds a training or edit run" in one_line_error(capsys, exit_info)
    assert (output / "metrics.json").read_bytes() == before


def test_demo_into_an_existing_dataset_is_refused(small_scene, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(small_scene, data)
    before = {p.name: p.read_bytes() for p in (data / "images").iterdir()}
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["demo", "--output", str(data), "--scene.n-views", "4", "--scene.image-size", "16"])
    assert "not empty" in one_line_error(capsys, exit_info)
    assert {p.name: p.read_bytes() for p in (data / "images").iterdir()} == before


def test_the_last_preset_given_is_the_one_recorded_and_run():
    from splat2splat.commands.edit import parse
    from splat2splat.edit.presets import preset

    cmd = parse(["--preset", "in2n-tiny", "--data", "d", "--prompt", "p", "--preset", "in2n"])
    assert cmd.preset == "in2n" and cmd.idu == preset("in2n")


def test_a_missing_lpips_weights_file_is_one_line(small_scene, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["edit", "--data", str(small_scene), "--prompt", "p", "--output", str(tmp_path / "run"),
                    "--device", "cpu", "--lpips-weights", str(tmp_path / "alex.pth")])
    assert "--lpips-weights file does not exist" in one_line_error(capsys, exit_info)


def test_resume_honours_more_steps_and_refuses_other_settings_in_one_line(small_scene, tmp_path, capsys):
    from splat2splat.checkpoint import read_checkpoint

    output = tmp_path / "run"
    entrypoint(train_args(small_scene, output))
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["train", "--output", str(output), "--resume", "--data", str(tmp_path), "--steps", "6"])
    err = one_line_error(capsys, exit_info)
    assert "keeps --data" in err and "--steps" not in err.split("keeps")[1].split(";")[0]
    entrypoint(["train", "--output", str(output), "--resume", "--steps", "6"])
    assert read_checkpoint(output / "checkpoint.pt")["backend_state"]["step"] == 6


# ------------------------------------------------------------------------------------ errors after the work


class NaNEditor:
    """What InstructPix2Pix returns with a guidance scale of 1e38: NaN pixels."""

    def edit(self, render, original, prompt, noise_range, generator):
        return torch.full_like(render, float("nan"))


def test_a_nan_edit_is_an_error_not_a_black_image(small_scene, tmp_path):
    from splat2splat.edit.job import EditJob, run_edit_job
    from splat2splat.errors import InputError

    job = EditJob(data=small_scene, prompt="p", output=tmp_path / "edit", device="cpu", preset="in2n-tiny",
                  init_steps=2, turntable_frames=0, checkpoint_every=1, eval_every=0)
    job.idu.loss.lpips, job.idu.steps, job.idu.edit_rate = 0.0, 3, 1
    with pytest.raises(InputError, match="NaN or infinite pixels.*guidance-scale") as error:
        run_edit_job(job, editor=NaNEditor())
    assert "\n" not in str(error.value) and not (job.output / "run.json").exists()
    assert not (job.output / "checkpoint.pt").exists()  # no edit checkpoint holds the NaN image


def test_export_to_an_output_that_is_a_file_is_refused_before_writing(small_scene, tmp_path, capsys):
    entrypoint(train_args(small_scene, tmp_path / "run"))
    target = tmp_path / "taken"
    target.write_text("precious")
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["export", "--scene", str(tmp_path / "run" / "checkpoint.pt"), "--output", str(target)])
    assert "existing file" in one_line_error(capsys, exit_info)
    assert target.read_text() == "precious"


def test_an_overflowing_initial_scale_is_refused_up_front(small_scene, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(train_args(small_scene, tmp_path / "run", "--gaussians.init-scale", "1e30"))
    assert "--gaussians.init-scale" in one_line_error(capsys, exit_info)


def test_a_failing_training_export_is_one_line_and_the_checkpoint_and_metrics_land(small_scene, tmp_path, capsys,
                                                                                 monkeypatch):
    from splat2splat.gaussians.backend import GaussianBackend

    def broken(self, output_dir, dataset):
        raise OSError(28, "No space left on device", str(output_dir / "scene.ply"))

    monkeypatch.setattr(GaussianBackend, "export", broken)
    output = tmp_path / "run"
    entrypoint(train_args(small_scene, output))
    assert "warning: scene export not written" in capsys.readouterr().err
    metrics = json.loads((output / "metrics.json").read_text())
    assert "scene.ply: No space left on device" in metrics["failed_outputs"]["scene export"]
    assert (output / "checkpoint.pt").is_file()


def test_an_option_typed_with_its_default_value_counts_as_given_on_resume(small_scene, tmp_path, capsys):
    """--eval-every 500 is train's default: typed on a resume it is honoured, not taken for "not given"; a
    run setting typed with its default value is refused like any other, unless it repeats the saved value."""
    from splat2splat.checkpoint import read_checkpoint

    output = tmp_path / "run"
    entrypoint(train_args(small_scene, output, "--gaussians.sh-degree", "2"))
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["train", "--output", str(output), "--resume", "--steps", "6", "--gaussians.sh-degree", "3"])
    assert "keeps --gaussians.sh-degree;" in one_line_error(capsys, exit_info)  # 3 is the default, 2 was run
    entrypoint(["train", "--output", str(output), "--resume", "--steps", "6", "--eval-every", "500",
                "--gaussians.sh-degree", "2", "--gaussians.strategy.kind", "none"])  # the saved values: accepted
    checkpoint = read_checkpoint(output / "checkpoint.pt")
    assert checkpoint["backend_state"]["step"] == 6 and checkpoint["command"]["eval_every"] == 500


def test_typed_options_name_the_fields_of_the_command_line():
    from splat2splat.checkpoint import given_options, typed_options
    from splat2splat.training import TrainJob

    assert typed_options(["--idu.editor.guidance-scale=9", "x", "--gaussians.sh-degree", "3", "--no-viewer",
                          "--nerf.lr", "1"]) >= {"idu.editor.guidance_scale", "scene.sh_degree", "viewer", "scene.lr"}
    default = TrainJob()
    assert given_options(TrainJob(), default) == {}
    assert given_options(TrainJob(), default, ["--steps", "30000"]) == {"steps": 30_000}
