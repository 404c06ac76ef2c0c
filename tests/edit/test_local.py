"""Local edits end to end: outside the region, Gaussians stay bit for bit and the training images stay the original."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from tests.cli_args import for_backend
from splat2splat.checkpoint import load_checkpoint_file
from splat2splat.cli import entrypoint
from splat2splat.commands.edit import parse as parse_edit_args, run as run_edit
from splat2splat.data.demo import DemoConfig, write_demo_scene
from splat2splat.data.readers import load_dataset
from splat2splat.edit.local import LocalIterativeDatasetUpdate
from splat2splat.edit.regions import BINARY_THRESHOLD
from splat2splat.runner import Interrupted
from splat2splat.testing.editors import TintEditor

SPHERE_BOX = ["0.0", "-0.1", "-0.05", "0.7", "0.6", "0.65"]  # around the demo's striped sphere


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return write_demo_scene(tmp_path_factory.mktemp("local-demo"), DemoConfig(n_views=16, image_size=32, n_points=800))


def local_args(data: Path, output: Path, *extra: str, steps: int = 12) -> list[str]:
    return for_backend([
            "--preset", "in2n-tiny", "--data", str(data), "--prompt", "make the ball orange", "--output", str(output),
            "--device", "cpu", "--init-steps", "20", "--idu.steps", str(steps), "--idu.edit-rate", "1",
            "--idu.noise-range", "0.9", "0.98", "--gaussians.sh-degree", "0", "--gaussians.init-opacity", "0.5",
            "--gaussians.strategy.kind", "none", "--checkpoint-every", "0", "--eval-every", "0",
            "--turntable-frames", "0", "--region.box", *SPHERE_BOX, *extra])


@pytest.mark.parametrize("density", ["off", "cull"])
def test_a_local_edit_keeps_every_gaussian_outside_the_region_bit_for_bit(scene, tmp_path, density):
    output = tmp_path / "run"
    # A high cull threshold makes the cull actually remove in-region Gaussians: the frozen mask must follow.
    extra = ["--idu.density-control", density, "--gaussians.strategy.cull-opacity", "0.45",
             "--gaussians.strategy.refine-every", "4"]
    record = run_edit(parse_edit_args(local_args(scene, output, *extra)), editor=TintEditor())
    before = load_checkpoint_file(output / "initial" / "checkpoint.pt")["backend_state"]["splats"]
    state = load_checkpoint_file(output / "checkpoint.pt")
    after, frozen = state["backend_state"]["splats"], state["backend_state"]["frozen"]
    centres = load_dataset(scene).normalization.to_original(before["means"])
    box = torch.tensor([float(v) for v in SPHERE_BOX])
    outside = ~((centres >= box[:3]) & (centres <= box[3:])).all(-1)
    assert 0 < int((~outside).sum()) and int(frozen.sum()) == int(outside.sum())
    for key in before:
        assert torch.equal(after[key][frozen], before[key][outside]), key  # bitwise, in their order
        assert not torch.equal(after[key][~frozen], before[key][~outside]) or key in ("shN",), key
    if density == "cull":
        assert len(after["means"]) < len(before["means"])  # some in-region Gaussians were culled
    assert record["edits"] == 12


def test_local_edit_images_keep_the_original_outside_the_masks(scene, tmp_path):
    output = tmp_path / "run"
    run_edit(parse_edit_args(local_args(scene, output, "--idu.density-control", "off")), editor=TintEditor())
    state = load_checkpoint_file(output / "checkpoint.pt")
    dataset = load_dataset(scene)
    masks, current = state["idu"]["region_masks"], state["dataset_edits"]["current"]
    edited = [i for i, count in enumerate(state["dataset_edits"]["edit_counts"]) if count > 0]
    assert len(edited) == 12
    for view in edited:
        outside = masks[view] < BINARY_THRESHOLD
        assert outside.any() and (~outside).any()
        assert torch.equal(current[view][outside], dataset.original(view)[outside])
        assert not torch.equal(current[view][~outside], dataset.original(view)[~outside])


def test_an_interrupted_local_edit_resumes_to_the_same_scene(scene, tmp_path):
    args = ["--idu.density-control", "off"]
    reference = tmp_path / "reference"
    run_edit(parse_edit_args(local_args(scene, reference, *args, steps=8)), editor=TintEditor())
    resumed = tmp_path / "resumed"

    def stop_at(step: int) -> None:
        if step == 4:  # Ctrl-C: the loop checkpoints step 4 and stops
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        run_edit(parse_edit_args(local_args(scene, resumed, *args, steps=8)), editor=TintEditor(), on_step=stop_at)
    assert load_checkpoint_file(resumed / "checkpoint.pt")["idu"]["step"] == 4
    run_edit(parse_edit_args(["--output", str(resumed), "--resume"]), editor=TintEditor())
    a = load_checkpoint_file(reference / "checkpoint.pt")
    b = load_checkpoint_file(resumed / "checkpoint.pt")
    for key in a["backend_state"]["splats"]:
        assert torch.equal(a["backend_state"]["splats"][key], b["backend_state"]["splats"][key]), key
    assert torch.equal(a["backend_state"]["frozen"], b["backend_state"]["frozen"])


def one_line_error(capsys, exit_info) -> str:
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("extra, message", [
    (["--region.sphere", "0", "0", "0", "1"], "give one region"),
    (["--region.feather", "nan"], "--region.feather"),
    (["--idu.density-control", "continue", "--gaussians.strategy.kind", "default"], "density-control off or cull"),
    (["--backend", "nerf", "--idu.density-control", "off"], "needs --region.masks"),
])
def test_bad_local_edits_are_one_line_before_any_training(scene, tmp_path, capsys, extra, message):
    output = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["edit", *local_args(scene, output, *extra)])
    assert message in one_line_error(capsys, exit_info)
    assert not (output / "initial").exists()


def test_a_nan_box_is_refused_by_the_option_checks(scene, tmp_path, capsys):
    args = local_args(scene, tmp_path / "run")
    args[args.index("--region.box") + 3] = "nan"
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["edit", *args])
    assert "--region.box" in one_line_error(capsys, exit_info)


def test_the_local_loop_is_used_only_with_a_region(scene, tmp_path):
    from splat2splat.edit.job import start_edit
    from splat2splat.checkpoint import job_fields
    from splat2splat.edit.job import EditJob

    cmd = parse_edit_args(local_args(scene, tmp_path / "run", "--idu.density-control", "off"))
    run = start_edit(job_fields(cmd, EditJob), editor=TintEditor())
    assert isinstance(run.idu, LocalIterativeDatasetUpdate)
    assert run.backend.frozen is not None and run.backend.frozen.any() and not run.backend.frozen.all()


def test_a_nerf_local_edit_composites_with_the_masks(scene, tmp_path):
    from splat2splat.io import save_image
    from tests.commands.test_edit import NERF_TINY

    dataset = load_dataset(scene)
    masks = tmp_path / "masks"
    masks.mkdir()
    for name in dataset.image_names:
        mask = torch.zeros(32, 32, 3)
        mask[8:24, 8:24] = 1.0
        save_image(masks / name, mask)
    args = local_args(scene, tmp_path / "run", "--backend", "nerf", *NERF_TINY, steps=4)
    box = args.index("--region.box")
    args[box:box + 7] = ["--region.masks", str(masks)]
    run_edit(parse_edit_args(args), editor=TintEditor())
    state = load_checkpoint_file(tmp_path / "run" / "checkpoint.pt")
    current = state["dataset_edits"]["current"]
    for view, count in enumerate(state["dataset_edits"]["edit_counts"]):
        if count:
            assert torch.equal(current[view][:8], dataset.original(view)[:8])
            assert not torch.equal(current[view][12:20, 12:20], dataset.original(view)[12:20, 12:20])
