"""The oracle-editor fidelity benchmark at toy size: IDU must beat "edit once, then train" on a known target."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))

from bench_fidelity import BenchFidelity, main, scaled_scene_config  # noqa: E402


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    # Step counts / 300: a 100-step scene, 100 edit steps (in2n-tiny), an edit every 2 steps.
    cfg = BenchFidelity(output=tmp_path_factory.mktemp("fidelity") / "result.json", methods=("in2n-tiny", "naive"),
                        image_size=32, views=16, step_scale=300, in2n_edit_rate=2, device="cpu", markdown=False)
    return main(cfg)


def test_idu_beats_editing_once_then_training(result):
    rows = {row["method"]: row for row in result["results"]}
    # IDU must beat edit-once-then-train on the target renders of held-out views. (The margin was 1.5 dB while
    # every method after the first started, by a CPU aliasing bug in GaussianBackend.load_state_dict, from the
    # previous method's edited scene; from the unedited scene, as intended, it was 0.65 dB at this toy size, and
    # 0.35 dB with in2n's random edit order and the C++ CPU rasterizer: 16 views, 100 steps.)
    assert rows["in2n-tiny"]["psnr_to_target"] > rows["naive"]["psnr_to_target"] + 0.25
    assert rows["in2n-tiny"]["ssim_to_target"] > rows["naive"]["ssim_to_target"]


def test_the_edited_scene_is_closer_to_the_target_than_to_the_unedited_scene(result):
    for row in result["results"]:
        assert row["psnr_to_target"] > row["psnr_to_unedited"] + 5.0, row["method"]
    # ... while the unedited scene itself is far from the target (the edit is not a no-op).
    assert result["psnr_unedited_to_target"] < 22.0


def test_result_records_how_it_was_made(result):
    assert {"machine", "device", "versions", "date", "command"} <= set(result["record"])
    assert Path(BenchFidelity().output).suffix == ".json"


def test_patch_and_whole_image_lpips_side_by_side(tmp_path):
    """One run compares in2n-small's LPIPS on 16 random 32x32 patches with LPIPS on the whole view (here with a
    random backbone: the numbers only show that both run and differ, not which is better)."""
    cfg = BenchFidelity(output=tmp_path / "result.json", methods=("in2n-small", "in2n-small-image"), image_size=48,
                        views=10, step_scale=600, in2n_edit_rate=2, device="cpu", markdown=False, random_lpips=True)
    rows = {row["method"]: row for row in main(cfg)["results"]}
    assert rows["in2n-small"]["lpips"] == "16 patches 32x32" and rows["in2n-small-image"]["lpips"] == "whole view"
    assert rows["in2n-small"]["psnr_to_target"] != rows["in2n-small-image"]["psnr_to_target"]
    for row in rows.values():
        assert row["psnr_to_target"] > row["psnr_to_unedited"], row["method"]


@pytest.mark.parametrize("densify", [False, True])
def test_the_unedited_scene_densifies_on_the_reference_schedule_divided_like_every_step_count(densify):
    config = scaled_scene_config(BenchFidelity(step_scale=10, densify=densify), torch.device("cpu"))
    strategy = config.strategy
    assert strategy.kind == ("default" if densify else "none")
    # gsplat's 500..15000 every 100, opacity reset every 3000, SH every 1000, 30000-step decay: all divided by 10.
    assert (strategy.refine_start, strategy.refine_stop, strategy.refine_every, strategy.reset_opacity_every) == \
        (50, 1500, 10, 300)
    assert (config.sh_degree_interval, config.lr_decay_steps) == (100, 3000)
