"""--max-file-gaussians: the cap on what a compressed scene file (.spz, .sog) may claim, in every command that
reads scene files (export, render, edit --init / --region.gaussians, preview --region.gaussians, eval)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from splat2splat.cli import entrypoint
from splat2splat.commands.edit import parse as parse_edit_args, run as run_edit
from splat2splat.data.demo import DemoConfig, write_demo_scene
from splat2splat.gaussians.formats import save_splats
from splat2splat.io import read_json
from splat2splat.scene_loading import dataset_frames
from splat2splat.testing.editors import TintEditor
from tests.commands.test_failure_paths import one_line_error

COUNT = 300


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> tuple[Path, Path]:
    """A small demo dataset and a .spz of COUNT Gaussians around its objects, in its original frame."""
    root = tmp_path_factory.mktemp("cap")
    data = write_demo_scene(root / "data", DemoConfig(n_views=8, image_size=32, n_points=200))
    normalization, frame_transform = dataset_frames(data)
    g = torch.Generator().manual_seed(0)
    splats = {"means": torch.rand(COUNT, 3, generator=g) * 0.6 - 0.3, "scales": torch.full((COUNT, 3), -3.0),
              "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(COUNT, 1), "opacities": torch.ones(COUNT),
              "sh0": torch.rand(COUNT, 1, 3, generator=g), "shN": torch.zeros(COUNT, 0, 3)}
    path = root / "scene.spz"
    save_splats(path, splats, normalization, "spz", frame_transform=frame_transform)
    return data, path


def refusal(capsys, exit_info, path: Path) -> str:
    err = one_line_error(capsys, exit_info)
    assert str(path) in err and f"claims {COUNT} Gaussians, more than the {COUNT - 1}" in err, err
    assert f"pass --max-file-gaussians {COUNT}" in err
    return err


def test_export_refuses_a_file_over_the_cap_and_reads_it_under_a_raised_one(scene, tmp_path, capsys):
    _, spz = scene
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["export", "--scene", str(spz), "--output", str(tmp_path / "low"),
                    "--max-file-gaussians", str(COUNT - 1)])
    refusal(capsys, exit_info, spz)
    assert not (tmp_path / "low" / "scene.ply").exists()
    entrypoint(["export", "--scene", str(spz), "--output", str(tmp_path / "ok"), "--max-file-gaussians", str(COUNT)])
    assert read_json(tmp_path / "ok" / "export.json")["gaussians_in"] == COUNT


def test_render_refuses_a_file_over_the_cap_and_reads_it_under_a_raised_one(scene, tmp_path, capsys):
    data, spz = scene
    args = ["render", "--scene", str(spz), "--data", str(data), "--split", "all", "--turntable-frames", "0",
            "--device", "cpu"]
    with pytest.raises(SystemExit) as exit_info:
        entrypoint([*args, "--output", str(tmp_path / "low"), "--max-file-gaussians", str(COUNT - 1)])
    refusal(capsys, exit_info, spz)
    entrypoint([*args, "--output", str(tmp_path / "ok"), "--max-file-gaussians", str(COUNT)])
    assert len(read_json(tmp_path / "ok" / "metrics.json")["views"]) == 8


@pytest.mark.parametrize("option", ["--init", "--region.gaussians"])
def test_edit_refuses_a_scene_file_over_the_cap_before_any_work(scene, tmp_path, capsys, option):
    data, spz = scene
    output = tmp_path / "run"
    args = ["--preset", "in2n-tiny", "--data", str(data), "--prompt", "p", "--output", str(output), "--device",
            "cpu", "--init-steps", "2", "--idu.steps", "2", "--turntable-frames", "0", "--idu.density-control", "off",
            option, str(spz),
            "--max-file-gaussians", str(COUNT - 1)]
    from splat2splat.errors import InputError

    with pytest.raises(InputError) as error:
        run_edit(parse_edit_args(args), editor=TintEditor())
    assert f"claims {COUNT} Gaussians" in str(error.value) and "--max-file-gaussians" in str(error.value)
    assert not (output / "checkpoint.pt").exists()


def test_an_edit_from_a_scene_file_under_a_raised_cap_runs_and_a_resume_may_change_the_cap(scene, tmp_path):
    data, spz = scene
    output = tmp_path / "run"
    args = ["--preset", "in2n-tiny", "--data", str(data), "--prompt", "p", "--output", str(output), "--device",
            "cpu", "--idu.steps", "2", "--idu.edit-rate", "1", "--turntable-frames", "0", "--eval-every", "0",
            "--init", str(spz), "--max-file-gaussians", str(COUNT)]
    from splat2splat.runner import Interrupted

    def stop(step: int) -> None:
        if step == 1:
            raise Interrupted(step)

    with pytest.raises(Interrupted):
        run_edit(parse_edit_args(args), editor=TintEditor(), on_step=stop)
    assert read_json(output / "command.json")["max_file_gaussians"] == COUNT
    record = run_edit(parse_edit_args(["--output", str(output), "--resume", "--max-file-gaussians", "1000"]),
                      editor=TintEditor())
    assert record["steps"] == 2 and record["edits"] == 2


def test_preview_refuses_a_region_file_over_the_cap_before_the_editor_loads(scene, tmp_path, capsys):
    data, spz = scene
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["preview", "--data", str(data), "--prompt", "p", "--output", str(tmp_path / "p"), "--device",
                    "cpu", "--model", str(tmp_path / "no-model"), "--region.gaussians", str(spz),
                    "--max-file-gaussians", str(COUNT - 1)])
    refusal(capsys, exit_info, spz)


def test_eval_refuses_a_scene_file_over_the_cap(scene, tmp_path, capsys, tiny_clip_folder):
    data, spz = scene
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["eval", str(spz), "--original", str(spz), "--data", str(data), "--source-caption", "a",
                    "--target-caption", "b", "--clip-model", str(tiny_clip_folder), "--frames", "3",
                    "--device", "cpu", "--output", str(tmp_path / "e"), "--max-file-gaussians", str(COUNT - 1)])
    refusal(capsys, exit_info, spz)


def test_the_cap_has_bounds(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["export", "--scene", str(tmp_path / "x.spz"), "--max-file-gaussians", "0"])
    assert "--max-file-gaussians 0: must be between 1 and 4294967296" in one_line_error(capsys, exit_info)
