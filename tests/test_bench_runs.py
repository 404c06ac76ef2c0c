"""Smoke runs of the edit-level benchmark scripts at toy sizes: they finish and record what they measured."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))

from bench_backends import BenchBackends  # noqa: E402
from bench_backends import main as bench_backends  # noqa: E402
from bench_presets import BenchPresets  # noqa: E402
from bench_presets import main as bench_presets  # noqa: E402


def test_backend_side_by_side(tmp_path):
    result = bench_backends(BenchBackends(output=tmp_path / "b.json", image_size=32, views=16, gaussian_init_steps=10,
                                          nerf_init_steps=10, cycles=1, edit_rate=2, device="cpu", markdown=False))
    assert [row["backend"] for row in result["results"]] == ["gaussian", "nerf"]
    for row in result["results"]:
        assert row["cycle_seconds"] > 0 and row["heldout_psnr"] > 5
        assert row["cycle_split"]["edit"] > 0 and row["cycle_split"]["train"] > 0
    assert (tmp_path / "b.json").is_file() and "command" in result["record"]


def test_presets_and_preview(tmp_path):
    result = bench_presets(BenchPresets(output=tmp_path / "p.json", presets=("in2n", "in2n-tiny"), image_size=32,
                                        views=16, init_steps=10, steps=4, edit_rate=2, device="cpu", markdown=False))
    runs = [row["run"] for row in result["results"]]
    assert runs == ["in2n", "in2n-tiny", "preview (2D, 4 views)", "preview --3d"]
    edits = {row["run"]: row for row in result["results"]}
    assert edits["in2n"]["edits"] == 2 and edits["in2n"]["editor_s"] > 0
    assert all(row["wall_s"] > 0 and row["peak_mib"] >= 0 for row in result["results"])
