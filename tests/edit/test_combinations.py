"""The combination matrix: schedule {in2n, igs2gs} x backend {gaussian, nerf} x region {none, a region} x
throughput {serial, batch 2, lag 2, 2 editor ranks}. Every cell either runs and keeps its promises, or is
refused before any work, in one line that says why.

Promises checked in every cell that runs:

* a region: every training image equals its original outside the region's mask, bit for bit, and (Gaussians)
  every frozen Gaussian keeps its values bit for bit;
* a run interrupted mid-way (Ctrl-C, checkpoint) and resumed equals the uninterrupted run, bit for bit;
* batch 2 equals the same schedule edited one view at a time, to 1e-5;
* lag 2 does not depend on timing: the resumed run edits with a slowed editor and still equals the reference.

The region is a box on Gaussian scenes; on the NeRF a box is refused (it has no Gaussians to select, README
"Local edits") and the matrix uses the mask variant (--region.masks). Editor ranks are launched with torchrun
for Gaussian scenes (slow cells); elsewhere the launch's refusals are checked in-process with the launch's
environment, since they happen before any process waits for another.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.cli_args import for_backend
from splat2splat.checkpoint import load_checkpoint_file
from splat2splat.cli import entrypoint
from splat2splat.commands.edit import parse as parse_edit_args, run as run_edit
from splat2splat.data.demo import DemoConfig, write_demo_scene
from splat2splat.data.readers import load_dataset
from splat2splat.edit.regions import BINARY_THRESHOLD
from splat2splat.io import save_image
from splat2splat.runner import Interrupted
from tests.commands.test_edit import NERF_TINY

SCHEDULES = {"in2n": "in2n-tiny", "igs2gs": "igs2gs"}
BACKENDS = ("gaussian", "nerf")
REGIONS = ("none", "region")
THROUGHPUTS = {"serial": [], "batch2": ["--idu.edit-batch", "2"], "lag2": ["--idu.edit-lag", "2"], "ranks2": []}
SPHERE_BOX = ["0.0", "-0.1", "-0.05", "0.7", "0.6", "0.65"]  # around the demo's striped sphere
STEPS, STOP_AT = 8, 3  # edit steps; the interrupted run stops after this step


def refusal(schedule: str, throughput: str) -> str | None:
    """The one-line reason a cell is refused (None: it runs)."""
    if schedule == "igs2gs" and throughput != "serial":
        return "igs2gs schedule trains every step on that step's fresh edit"
    return None


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("combinations")
    data = write_demo_scene(folder / "data", DemoConfig(n_views=8, image_size=32, n_points=300))
    masks = folder / "masks"  # the NeRF's region: a square in the middle of every view
    masks.mkdir()
    for name in load_dataset(data).image_names:
        mask = torch.zeros(32, 32, 3)
        mask[8:24, 10:26] = 1.0
        save_image(masks / name, mask)
    return data


@pytest.fixture(scope="module")
def editor(tiny_ip2p_folder):
    """The tiny InstructPix2Pix: a planning editor, so batches and lags take the real editor's paths."""
    from splat2splat.edit.ip2p import IP2PConfig, InstructPix2PixEditor

    return InstructPix2PixEditor.from_config(IP2PConfig(model=str(tiny_ip2p_folder), dtype="float32",
                                                        diffusion_steps=2, device="cpu"))


class SlowedEditor:
    """``inner`` with a pause before each batch of plans: the edits finish later, in other interleavings."""

    def __init__(self, inner, pause: float = 0.05):
        self.inner, self.pause = inner, pause

    def edit(self, *args):
        return self.inner.edit(*args)

    def plan(self, request):
        return self.inner.plan(request)

    def run_plans(self, plans):
        time.sleep(self.pause)
        return self.inner.run_plans(plans)


def cell_args(scene: Path, output: Path, schedule: str, backend: str, region: str, throughput: str,
              *extra: str) -> list[str]:
    args = ["--preset", SCHEDULES[schedule], "--data", str(scene), "--prompt", "make it autumn",
            "--output", str(output), "--device", "cpu", "--init-steps", "10", "--idu.steps", str(STEPS),
            "--idu.edit-rate", "1" if schedule == "in2n" else str(STEPS), "--idu.noise-range", "0.5", "0.98",
            "--idu.density-control", "off", "--gaussians.strategy.kind", "none", "--gaussians.sh-degree", "0",
            "--checkpoint-every", "0", "--eval-every", "0", "--turntable-frames", "0", "--backend", backend,
            *THROUGHPUTS[throughput], *extra]
    if backend == "nerf":
        args += NERF_TINY
    if region == "region":
        args += ["--region.masks", str(scene.parent / "masks")] if backend == "nerf" else ["--region.box", *SPHERE_BOX]
    return for_backend(args)


def edit(args: list[str], editor, stop_after: int | None = None) -> None:
    def press_ctrl_c(step: int) -> None:
        if step == stop_after:
            os.kill(os.getpid(), signal.SIGINT)

    run_edit(parse_edit_args(args), editor=editor, on_step=press_ctrl_c if stop_after else None)


def final_state(output: Path) -> dict:
    state = load_checkpoint_file(output / "checkpoint.pt")
    return {"scene": state["backend_state"], "images": state["dataset_edits"]["current"],
            "edit_counts": state["dataset_edits"]["edit_counts"], "idu": state["idu"]}


def assert_same(a, b, atol: float = 0.0, where: str = "") -> None:
    """Every tensor of ``a`` equals ``b``'s (within ``atol``); other values equal."""
    if isinstance(a, torch.Tensor):
        if atol == 0 or not a.is_floating_point():
            assert torch.equal(a, b), where
        else:
            torch.testing.assert_close(a, b, atol=atol, rtol=0, msg=where)
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            assert_same(a[key], b[key], atol, f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, atol, f"{where}[{k}]")
    else:
        assert a == b, where


def assert_region_kept(output: Path, scene: Path, backend: str) -> None:
    """Outside the region: the training images are the originals and the frozen Gaussians their initial values."""
    state = load_checkpoint_file(output / "checkpoint.pt")
    dataset = load_dataset(scene)
    masks, current = state["idu"]["region_masks"], state["dataset_edits"]["current"]
    edited = [view for view, count in enumerate(state["dataset_edits"]["edit_counts"]) if count > 0]
    assert edited
    for view in edited:
        outside = masks[view] < BINARY_THRESHOLD
        assert outside.any() and torch.equal(current[view][outside], dataset.original(view)[outside]), view
        assert not torch.equal(current[view], dataset.original(view)), view  # the edit did land inside
    if backend == "gaussian":
        before = load_checkpoint_file(output / "initial" / "checkpoint.pt")["backend_state"]["splats"]
        after, frozen = state["backend_state"]["splats"], state["backend_state"]["frozen"]
        assert frozen.any() and not frozen.all()
        for key in before:
            assert torch.equal(after[key][frozen], before[key][frozen]), key


CELLS = [(s, b, r, t) for s in SCHEDULES for b in BACKENDS for r in REGIONS for t in THROUGHPUTS]


def one_line_refusal(capsys, args: list[str], output: Path) -> str:
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["edit", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert not output.exists() or not any(output.iterdir()), "a refused edit wrote files"
    return err


@pytest.mark.parametrize("schedule, backend, region, throughput",
                         [c for c in CELLS if refusal(c[0], c[3]) is not None])
def test_a_refused_cell_says_why_in_one_line_before_any_work(schedule, backend, region, throughput, scene,
                                                              tmp_path, capsys, monkeypatch):
    output = tmp_path / "run"
    args = cell_args(scene, output, schedule, backend, region, throughput)
    if throughput == "ranks2":  # what every rank of `torchrun --nproc-per-node 2` runs, before any rank waits
        monkeypatch.setenv("WORLD_SIZE", "2")
        args += ["--idu.edit-lag", "2"]
    assert refusal(schedule, throughput) in one_line_refusal(capsys, args, output)


def test_a_box_on_the_nerf_is_refused_in_one_line_before_any_work(scene, tmp_path, capsys):
    output = tmp_path / "run"
    args = cell_args(scene, output, "in2n", "nerf", "none", "serial", "--region.box", *SPHERE_BOX)
    assert "needs --region.masks" in one_line_refusal(capsys, args, output)


def test_editor_ranks_without_a_lag_are_refused_in_one_line_before_any_work(scene, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    output = tmp_path / "run"
    args = cell_args(scene, output, "in2n", "gaussian", "none", "serial")
    assert "needs a lag of at least 1" in one_line_refusal(capsys, args, output)


@pytest.mark.parametrize("schedule, backend, region, throughput",
                         [c for c in CELLS if refusal(c[0], c[3]) is None and c[3] != "ranks2"])
def test_a_running_cell_keeps_its_promises(schedule, backend, region, throughput, scene, editor, tmp_path):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    args = lambda output: cell_args(scene, output, schedule, backend, region, throughput)  # noqa: E731
    edit(args(reference), editor)
    expected = final_state(reference)
    assert expected["idu"]["edits_done"] == (STEPS if schedule == "in2n" else 7)  # igs2gs: one update of 7 views

    # Interrupted mid-run and resumed (with lag 2: by a slowed editor, so the edits land in other interleavings).
    resumed_editor = SlowedEditor(editor) if throughput == "lag2" else editor
    with pytest.raises(Interrupted):
        edit(args(resumed), resumed_editor, stop_after=STOP_AT)
    assert load_checkpoint_file(resumed / "checkpoint.pt")["idu"]["step"] == STOP_AT
    run_edit(parse_edit_args(["--output", str(resumed), "--resume"]), editor=resumed_editor)
    got = final_state(resumed)
    assert_same(got["scene"], expected["scene"], where="scene")
    assert_same(got["images"], expected["images"], where="images")

    if region == "region":
        assert_region_kept(reference, scene, backend)
    if throughput == "batch2":  # the same schedule, edited one view at a time
        serial = tmp_path / "serial"
        edit(cell_args(scene, serial, schedule, backend, region, "serial", "--idu.edit-rate", "2",
                       "--idu.edit-count", "2"), editor)
        one_by_one = final_state(serial)
        assert one_by_one["edit_counts"] == expected["edit_counts"]
        assert_same(one_by_one["images"], expected["images"], atol=1e-5, where="images")
        assert_same(one_by_one["scene"]["splats" if backend == "gaussian" else "field"],
                    expected["scene"]["splats" if backend == "gaussian" else "field"], atol=1e-5, where="scene")


# ------------------------------------------------------------------------------------ editor ranks (torchrun)

@pytest.mark.slow
@pytest.mark.parametrize("schedule, backend, region, throughput",
                         [c for c in CELLS if refusal(c[0], c[3]) is None and c[3] == "ranks2"])
def test_a_cell_on_editor_ranks_keeps_its_promises(schedule, backend, region, throughput, scene, tiny_ip2p_folder,
                                                   tmp_path):
    """Under torchrun with 2 processes (trainer + 1 editor rank, lag 2) the edit equals the single process's;
    a single-process run interrupted mid-way and resumed on the ranks equals it too; a region holds."""
    from tests.edit.test_distributed import TORCHRUN, launch

    if not TORCHRUN.exists():
        pytest.skip("torchrun is not installed beside this Python")
    model = ["--model", str(tiny_ip2p_folder), "--idu.editor.dtype", "float32", "--idu.editor.diffusion-steps", "2"]

    def args(output: Path) -> list[str]:
        return cell_args(scene, output, schedule, backend, region, throughput, "--idu.edit-lag", "2", *model)

    single, ranks, resumed = tmp_path / "single", tmp_path / "ranks", tmp_path / "resumed"
    edit(args(single), None)
    with pytest.raises(Interrupted):
        edit(args(resumed), None, stop_after=STOP_AT)
    for command in (["-m", "splat2splat", "edit", *args(ranks)],
                    ["-m", "splat2splat", "edit", "--output", str(resumed), "--resume"]):
        result = launch(command, 2)
        assert result.returncode == 0, result.stderr[-2000:]
    expected = final_state(single)
    for other in (ranks, resumed):
        got = final_state(other)
        assert_same(got["scene"], expected["scene"], where=f"{other.name} scene")
        assert_same(got["images"], expected["images"], where=f"{other.name} images")
    if region == "region":
        assert_region_kept(ranks, scene, backend)
