"""Smoke test of scripts/bench_process.py at a toy size: it renders, processes and records every stage."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from splat2splat.io import read_json

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.mark.slow
def test_bench_process_records_the_stages_of_a_small_run(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import bench_process

    try:
        bench_process.main(bench_process.BenchProcess(runs=("24x192",), max_features=1024, cache=tmp_path / "cache",
                                                      output=tmp_path / "bench.json"))
    finally:
        sys.modules.pop("bench_process", None)
        sys.modules.pop("bench_common", None)
    record = read_json(tmp_path / "bench.json")
    (run,) = record["runs"]
    assert run["frames"] == 24 and run["size"] == 192 and run["registered"] >= 12
    assert set(run["seconds"]) >= {"features", "matching", "mapping", "undistortion"}
    assert record["machine"]["cpu_cores"] and record["command"]
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("| 24 | 192 | sequential |")
