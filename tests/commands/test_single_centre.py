"""Cameras that share one centre (a single view, a tripod panorama) through `edit`, `render` and `eval --path
orbit`: the turntable pans around the centre instead of crashing after the work is done, and an output that
still fails is one warning line while every other output lands (work that is done is never lost)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from splat2splat.cli import entrypoint
from splat2splat.commands.edit import parse as parse_edit_args, run as run_edit
from splat2splat.data.demo import DemoConfig, write_demo_scene
from splat2splat.io import read_json
from splat2splat.runner import Interrupted
from splat2splat.testing.editors import TintEditor

SOURCE, TARGET = "a photo of a table", "a photo of an orange table"


@pytest.fixture(scope="module")
def single_centre_scene(tmp_path_factory) -> Path:
    """The demo scene with every camera moved to the first one's centre (they keep looking where they did)."""
    folder = write_demo_scene(tmp_path_factory.mktemp("tripod"), DemoConfig(n_views=8, image_size=32, n_points=300))
    transforms = json.loads((folder / "transforms.json").read_text())
    centre = [row[3] for row in transforms["frames"][0]["transform_matrix"][:3]]
    for frame in transforms["frames"]:
        for row, value in zip(frame["transform_matrix"], centre):
            row[3] = value
    (folder / "transforms.json").write_text(json.dumps(transforms))
    return folder


def edit_args(data: Path, output: Path, *extra: str) -> list[str]:
    return ["--preset", "in2n-tiny", "--data", str(data), "--prompt", "make it orange", "--output", str(output),
            "--device", "cpu", "--init-steps", "4", "--idu.steps", "4", "--idu.edit-rate", "1",
            "--gaussians.strategy.kind", "none", "--turntable-frames", "3", "--video-format", "gif",
            "--checkpoint-every", "2", "--eval-every", "0", *extra]


def edit_interrupted_at_step_2(data, output) -> None:
    def stop(step: int) -> None:
        if step == 2:
            raise Interrupted(step)

    with pytest.raises(Interrupted):
        run_edit(parse_edit_args(edit_args(data, output)), editor=TintEditor(), on_step=stop)


def test_edit_of_a_single_centre_capture_writes_every_output(single_centre_scene, tmp_path, capsys):
    output = tmp_path / "run"
    record = run_edit(parse_edit_args(edit_args(single_centre_scene, output)), editor=TintEditor())
    assert "failed_outputs" not in record and "warning" not in capsys.readouterr().err
    for name in ("run.json", "checkpoint.pt", "scene.ply", "before_after.png", "turntable.gif"):
        assert (output / name).is_file(), name


def test_interrupted_single_centre_edit_resumes_to_the_end(single_centre_scene, tmp_path):
    output = tmp_path / "run"
    edit_interrupted_at_step_2(single_centre_scene, output)
    record = run_edit(parse_edit_args(["--output", str(output), "--resume"]), editor=TintEditor())
    assert record["steps"] == 4 and (output / "turntable.gif").is_file()


def test_a_failing_output_is_one_line_and_the_others_land(single_centre_scene, tmp_path, capsys, monkeypatch):
    import splat2splat.edit.outputs as outputs

    def broken(*args, **kwargs):
        raise RuntimeError("linalg.inv: the input matrix is singular")

    monkeypatch.setattr(outputs, "render_turntable", broken)
    output = tmp_path / "run"
    record = run_edit(parse_edit_args(edit_args(single_centre_scene, output)), editor=TintEditor())
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "turntable.gif not written" in warnings[0] and "singular" in warnings[0]
    saved = read_json(output / "run.json")
    assert saved["failed_outputs"] == record["failed_outputs"] and list(saved["failed_outputs"]) == ["turntable.gif"]
    for name in ("checkpoint.pt", "scene.ply", "scene.splat", "before_after.png"):
        assert (output / name).is_file(), name
    assert not (output / "turntable.gif").exists() and saved["metrics"]
    assert len(list((output / "edited").iterdir())) == saved["views_edited"] == 4  # the views edited, of 7


def test_render_and_eval_orbit_of_a_single_centre_capture(single_centre_scene, tmp_path, tiny_clip_folder):
    output = tmp_path / "run"
    run_edit(parse_edit_args(edit_args(single_centre_scene, output)), editor=TintEditor())
    entrypoint(["render", "--scene", str(output / "checkpoint.pt"), "--output", str(tmp_path / "render"),
                "--split", "all", "--turntable-frames", "3", "--video-format", "gif", "--device", "cpu"])
    assert (tmp_path / "render" / "turntable.gif").is_file() and (tmp_path / "render" / "metrics.json").is_file()
    entrypoint(["eval", str(output), "--path", "orbit", "--source-caption", SOURCE, "--target-caption", TARGET,
                "--clip-model", str(tiny_clip_folder), "--frames", "4", "--sheet-frames", "2", "--device", "cpu",
                "--output", str(tmp_path / "eval")])
    assert read_json(tmp_path / "eval" / "eval.json")["runs"][0]["path"]["frames"] == 4


def test_render_output_that_fails_is_one_line_and_metrics_land(single_centre_scene, tmp_path, capsys, monkeypatch):
    import splat2splat.commands.render as render

    output = tmp_path / "run"
    run_edit(parse_edit_args(edit_args(single_centre_scene, output, "--turntable-frames", "0")), editor=TintEditor())
    monkeypatch.setattr(render, "comparison_sheet", lambda *args: (_ for _ in ()).throw(MemoryError()))
    entrypoint(["render", "--scene", str(output / "checkpoint.pt"), "--output", str(tmp_path / "render"),
                "--split", "all", "--turntable-frames", "0", "--device", "cpu"])
    assert "comparison.png not written: MemoryError" in capsys.readouterr().err
    metrics = read_json(tmp_path / "render" / "metrics.json")
    assert metrics["failed_outputs"] == {"comparison.png": "MemoryError"} and len(metrics["views"]) == 8


def test_resume_honours_turntable_frames_and_refuses_a_new_prompt(single_centre_scene, tmp_path):
    from splat2splat.errors import InputError

    output = tmp_path / "run"
    edit_interrupted_at_step_2(single_centre_scene, output)
    with pytest.raises(InputError, match="keeps --prompt") as error:
        run_edit(parse_edit_args(["--output", str(output), "--resume", "--prompt", "other"]), editor=TintEditor())
    assert "\n" not in str(error.value)
    record = run_edit(parse_edit_args(["--output", str(output), "--resume", "--turntable-frames", "0",
                                       "--idu.steps", "6"]), editor=TintEditor())
    assert record["steps"] == 6 and not (output / "turntable.gif").exists()
    assert record["command"]["turntable_frames"] == 0 and record["command"]["idu"]["steps"] == 6
