"""The edit-throughput benchmark at toy size: every mode makes the same edits, and neither batching nor lag
costs fidelity on the oracle's known target."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))

from bench_idu import (BenchIDU, main, mode_parts, mode_settings, single_process_mode,  # noqa: E402
                       with_single_process_modes)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    # Step counts / 1000: a 30-step scene, 30 edit steps, an edit every 2 steps (15 edits per mode).
    cfg = BenchIDU(output=tmp_path_factory.mktemp("idu") / "result.json", modes=("serial", "batch3", "lag4"),
                   image_size=16, views=8, step_scale=1000, edit_rate=2, diffusion_steps=2, device="cpu")
    return main(cfg)


def test_every_mode_makes_the_same_number_of_edits(result):
    rows = result["results"]
    assert [row["edits"] for row in rows] == [15, 15, 15]
    assert all(row["oracle_edits"] == 15 for row in rows)
    for row in rows:
        assert row["wall_s"] > 0 and 0 <= row["trainer_idle_s"] and row["editor_idle_s"] <= row["wall_s"]


def test_batching_and_lag_keep_the_fidelity_of_the_serial_loop(result):
    rows = {row["mode"]: row for row in result["results"]}
    for mode in ("batch3", "lag4"):
        assert rows[mode]["psnr_to_target"] > rows["serial"]["psnr_to_target"] - 1.0, mode
        assert rows[mode]["psnr_to_target"] > rows[mode]["psnr_to_unedited"], mode


def test_mode_names_set_batch_and_lag():
    settings = mode_settings("batch5-lag10", BenchIDU())
    assert (settings.edit_batch, settings.edit_lag, settings.edit_rate) == (5, 10, 10)
    assert (mode_settings("serial", BenchIDU()).edit_batch, mode_settings("serial", BenchIDU()).edit_lag) == (1, 0)


def test_procs_mode_names():
    assert mode_parts("procs3-batch2-lag10") == (3, 2, 10)
    assert single_process_mode("procs3-batch2-lag10") == "batch2-lag10"
    assert with_single_process_modes(("serial", "procs2-lag4", "lag4", "procs3-lag4", "procs2-lag8")) == (
        "serial", "procs2-lag4", "lag4", "procs3-lag4", "lag8", "procs2-lag8")
    for mode in ("procs2", "procs1-lag4", "procs2-batch2"):
        with pytest.raises(SystemExit):
            mode_parts(mode)


def test_editor_processes_give_the_single_process_scene(tmp_path):
    cfg = BenchIDU(output=tmp_path / "procs.json", modes=("procs3-lag4",), image_size=16, views=8, step_scale=1000,
                   edit_rate=2, diffusion_steps=2, fidelity=False, device="cpu")
    rows = {row["mode"]: row for row in main(cfg)["results"]}
    assert list(rows) == ["lag4", "procs3-lag4"]  # the single-process mode of the check comes first
    assert rows["procs3-lag4"]["equals_single_process"] is True
    assert rows["procs3-lag4"]["processes"] == 3 and rows["procs3-lag4"]["edits"] == rows["lag4"]["edits"] == 15
    assert rows["procs3-lag4"]["editor_idle_s"] <= 2 * rows["procs3-lag4"]["wall_s"]
