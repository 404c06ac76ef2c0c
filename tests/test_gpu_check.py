"""scripts/gpu_check.py's bookkeeping: a stage past its limit is killed and fails, a skipped GPU test or stage
fails the GPU run (but not the CPU dry run), JUnit counts. (The whole dry run takes minutes: see BENCHMARKS.md.)"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


def test_a_stage_past_its_limit_is_killed_and_fails(gpu_check, tmp_path):
    (tmp_path / "logs").mkdir()
    stage = gpu_check.Stage("hang", lambda sizes, work: {}, timeout_s=1)
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    log = open(tmp_path / "logs" / "hang.log", "w")
    now = time.monotonic()
    started = time.perf_counter()
    record = gpu_check.finish_stage(gpu_check.Running(stage, process, log, now + 1.0, now), tmp_path)
    assert time.perf_counter() - started < 30 and process.poll() is not None
    assert record["status"] == "FAIL" and "timed out" in record["reason"]
    assert json.loads((tmp_path / "hang.json").read_text())["status"] == "FAIL"


def test_a_stage_that_dies_without_a_record_fails(gpu_check, tmp_path):
    (tmp_path / "logs").mkdir()
    stage = gpu_check.Stage("crash", lambda sizes, work: {}, timeout_s=30)
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], start_new_session=True)
    now = time.monotonic()
    record = gpu_check.finish_stage(gpu_check.Running(stage, process, open(tmp_path / "logs" / "crash.log", "w"),
                                                      now + 30, now), tmp_path)
    assert record["status"] == "FAIL" and "exit 3" in record["reason"]


@pytest.mark.parametrize("dry_run, expected", [(False, "FAIL"), (True, "PASS")])
def test_skips_fail_the_gpu_run_only(gpu_check, tmp_path, dry_run, expected, capsys):
    (tmp_path / "logs").mkdir()
    records = [{"stage": "train_mcmc", "status": "PASS", "result": {}},
               {"stage": "build_gsplat", "status": "SKIP", "reason": "needs CUDA"}]
    environment = {"mode": "cpu-dry-run" if dry_run else "gpu"}
    (tmp_path / "out").mkdir()
    report = gpu_check.write_report(tmp_path / "out", tmp_path, records, environment, dry_run, 1.0)
    assert report["status"] == expected
    assert json.loads((tmp_path / "out" / "gpu_check.json").read_text())["status"] == expected
    assert f"gpu_check {expected}" in capsys.readouterr().out


def test_junit_counts_include_skips(gpu_check, tmp_path):
    report = tmp_path / "report.xml"
    report.write_text('<testsuites><testsuite tests="5" failures="0" errors="0" skipped="2"/></testsuites>')
    assert gpu_check.junit_counts(report) == {"tests": 5, "failures": 0, "errors": 0, "skipped": 2}


def test_the_throughput_group_reuses_the_checks_builds_and_stays_out_of_the_first_run(gpu_check):
    def group(name):
        return [stage.name for stage in gpu_check.STAGES if name in stage.groups]

    assert group("throughput") == ["build_gsplat", "make_editor_model", "throughput_tests", "idu_throughput",
                                   "editor_options"]
    assert sum(stage.timeout_s for stage in gpu_check.STAGES if "throughput" in stage.groups and not stage.parallel) <= 500
    assert "editor_options" not in group("check") and "idu_throughput" not in group("check")
    # bench_idu's modes make the same number of edits only when the steps are a multiple of batch x edit rate.
    from splat2splat.edit.presets import preset

    for sizes in (gpu_check.GPU, gpu_check.DRY_RUN):
        steps = preset("in2n-tiny").steps // sizes.idu_step_scale  # bench_idu's scaled in2n-tiny
        batches = [int(part[5:]) for mode in sizes.idu_modes for part in mode.split("-") if part.startswith("batch")]
        assert all(steps % (batch * 10) == 0 for batch in batches)
