"""Options checked before any work: every bad value is one line naming the option, and nothing is written."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from splat2splat.commands.edit import parse as parse_edit_args
from splat2splat.commands.train import TrainCommand
from splat2splat.errors import InputError
from splat2splat.validation import check_options, problems

BASE = ["--data", "data", "--prompt", "make it autumn", "--output", "unused"]


@pytest.mark.parametrize("args, option", [
    (["--idu.edit-rate", "0"], "--idu.edit-rate 0"),
    (["--idu.editor.diffusion-steps", "0"], "--idu.editor.diffusion-steps 0"),
    (["--idu.noise-range", "2", "-1"], "--idu.noise-range 2.0 -1.0"),
    (["--idu.editor.guidance-scale", "nan"], "--idu.editor.guidance-scale nan"),
    (["--idu.editor.image-guidance-scale", "inf"], "--idu.editor.image-guidance-scale inf"),
    (["--gaussians.sh-degree", "7"], "--gaussians.sh-degree 7"),
    (["--idu.steps", "0"], "--idu.steps 0"),
    (["--checkpoint-every", "-5"], "--checkpoint-every -5"),
    (["--turntable-frames", "-1"], "--turntable-frames -1"),
    (["--downscale", "0"], "--downscale 0"),
    (["--checkpoint-minutes", "-1"], "--checkpoint-minutes -1.0"),
    (["--gaussians.means-lr", "-0.1"], "--gaussians.means-lr -0.1"),
])
def test_each_bad_edit_option_is_named(args, option):
    with pytest.raises(InputError) as error:
        check_options(parse_edit_args([*BASE, *args]))
    message = str(error.value)
    assert message.startswith(option) and "\n" not in message


def test_the_defaults_of_every_command_pass():
    from splat2splat.commands.export import ExportCommand
    from splat2splat.commands.preview import PreviewCommand
    from splat2splat.commands.render import RenderCommand

    for command in (parse_edit_args(BASE), TrainCommand(), ExportCommand(scene=Path("s.ply")), RenderCommand(scene=Path("s.ply")),
                    PreviewCommand(data=Path("d"), prompt="p")):
        assert problems(command) == []


def test_every_problem_is_counted():
    found = problems(TrainCommand(steps=0, downscale=0, eval_every=-1))
    assert len(found) == 3 and any(p.startswith("--eval-every") for p in found)


def test_nerf_sh_bands_are_not_mistaken_for_a_gaussian_sh_degree():
    assert problems(parse_edit_args([*BASE, "--backend", "nerf", "--nerf.sh-degree", "4"])) == []


def test_a_backend_takes_only_its_own_options(capsys):
    """--nerf.* belongs to --backend nerf, --gaussians.* to the Gaussian backend; the other is unknown."""
    with pytest.raises(SystemExit):
        parse_edit_args([*BASE, "--nerf.sh-degree", "4"])
    with pytest.raises(SystemExit):
        parse_edit_args([*BASE, "--backend", "nerf", "--gaussians.sh-degree", "2"])
    assert parse_edit_args([*BASE, "--backend", "nerf"]).backend == "nerf"
    assert parse_edit_args([*BASE, "--backend=nerf", "--backend", "gaussian"]).backend == "gaussian"


@pytest.mark.parametrize("args", [["--idu.edit-rate", "0"], ["--idu.editor.guidance-scale", "nan"],
                                  ["--idu.noise-range", "2", "-1"]])
def test_the_cli_refuses_bad_options_before_writing_anything(tmp_path, capsys, args):
    from splat2splat.cli import entrypoint

    output = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["edit", "--data", str(tmp_path), "--prompt", "p", "--output", str(output), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --") and len(err.splitlines()) == 1
    assert not output.exists()  # nothing to resume with the bad settings


def test_nan_never_reaches_json(tmp_path):
    from splat2splat.io import read_json, write_json

    write_json(tmp_path / "run.json", {"psnr": math.nan, "history": [{"loss": math.inf}, 1.5]})
    text = (tmp_path / "run.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert read_json(tmp_path / "run.json") == {"psnr": None, "history": [{"loss": None}, 1.5]}


@pytest.mark.parametrize("command, args, option", [
    ("edit", ["--gaussians.init-random-count", "1000000000000"], "--gaussians.init-random-count 1000000000000"),
    ("edit", ["--gaussians.seed", str(2**64)], f"--gaussians.seed {2**64}: must be between"),
    ("edit", ["--idu.seed", str(2**70)], f"--idu.seed {2**70}"),
    ("preview", ["--seed", str(2**64)], f"--seed {2**64}"),
    ("demo", ["--scene.image-size", "100000"], "--scene.image-size 100000: must be between 8 and 4096"),
    ("demo", ["--scene.n-views", "100000000"], "--scene.n-views 100000000"),
])
def test_options_with_upper_bounds_are_refused_before_any_allocation(tmp_path, capsys, command, args, option):
    from splat2splat.cli import entrypoint

    output = tmp_path / "out"
    needs = {"edit": ["--data", str(tmp_path), "--prompt", "p"], "preview": ["--data", str(tmp_path), "--prompt", "p"],
             "demo": []}[command]
    with pytest.raises(SystemExit) as exit_info:
        entrypoint([command, *needs, "--output", str(output), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {option}") and len(err.splitlines()) == 1, err
    assert not output.exists()


def test_memory_error_anywhere_is_one_line(tmp_path, capsys, monkeypatch):
    import splat2splat.commands.demo as demo
    from splat2splat.cli import entrypoint

    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(demo, "write_demo_scene", exhausted)
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["demo", "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: out of memory") and len(err.splitlines()) == 1
