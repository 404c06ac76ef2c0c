"""The oracle-editor fidelity benchmark at toy size: IDU must beat "edit once, then train" on a known target."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))

from bench_fidelity import BenchFidelity, main  # noqa: E402


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    # Step counts / 300: a 100-step scene, 100 edit steps (in2n-tiny), an edit every 2 steps.
    cfg = BenchFidelity(output=tmp_path_factory.mktemp("fidelity") / "result.json", methods=("in2n-tiny", "naive"),
                        image_size=32, views=16, step_scale=300, in2n_edit_rate=2, device="cpu", markdown=False)
    return main(cfg)


def test_idu_beats_editing_once_then_training(result):
    rows = {row["method"]: row for row in result["results"]}
    # IDU must beat edit-once-then-train on the target renders of held-out views. Measured at this toy size:
    # 31.84 vs 31.19 dB. (The earlier margin of 1.5 dB was measured while loading a state aliased it, so
    # "naive" started from the scene in2n-tiny had left behind: 30.15 dB.)
    assert rows["in2n-tiny"]["psnr_to_target"] > rows["naive"]["psnr_to_target"] + 0.3
    assert rows["in2n-tiny"]["ssim_to_target"] > rows["naive"]["ssim_to_target"]


def test_the_edited_scene_is_closer_to_the_target_than_to_the_unedited_scene(result):
    for row in result["results"]:
        assert row["psnr_to_target"] > row["psnr_to_unedited"] + 5.0, row["method"]
    # ... while the unedited scene itself is far from the target (the edit is not a no-op).
    assert result["psnr_unedited_to_target"] < 22.0


def test_result_records_how_it_was_made(result):
    assert {"machine", "device", "versions", "date", "command"} <= set(result["record"])
    assert Path(BenchFidelity().output).suffix == ".json"
