"""The local-editing benchmark at toy size: the local edit leaves every Gaussian outside the region alone."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))

from bench_local import BenchLocal, main  # noqa: E402


def test_local_edit_changes_no_outside_gaussian_and_global_does(tmp_path):
    result = main(BenchLocal(output=tmp_path / "local.json", image_size=32, views=16, init_steps=30, steps=12,
                             edit_rate=1, device="cpu"))
    rows = {row["method"]: row for row in result["results"]}
    assert rows["local"]["outside_gaussians_changed"] == 0 < rows["global"]["outside_gaussians_changed"]
    assert rows["local"]["edits"] == rows["global"]["edits"] == 12
    assert (tmp_path / "local.json").is_file() and result["record"]
