"""`splat2splat demo`: one run per output folder (a second one at once is refused in one line)."""

from __future__ import annotations

import subprocess

import pytest

from splat2splat.cli import entrypoint
from tests.commands.test_failure_paths import cli_process, one_line_error
from tests.test_folder_lock import holder

SMALL = ["--scene.n-views", "8", "--scene.image-size", "32", "--scene.n-points", "200"]


def test_two_demos_into_one_folder_at_once_one_is_refused(tmp_path):
    output = tmp_path / "demo"
    processes = [cli_process("demo", "--output", str(output), *SMALL) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read().strip()) for p in processes]
    assert sorted(status for status, _ in results) == [0, 2], results
    refusal = next(err for status, err in results if status == 2)
    # The loser meets the winner's lock (held, or still being written) or, after it, the written scene.
    assert len(refusal.splitlines()) == 1 and any(
        reason in refusal for reason in ("another splat2splat run", "another run ", "is not empty"))
    assert (output / "transforms.json").is_file() and len(list((output / "images").iterdir())) == 8
    assert not (output / "splat2splat.lock").exists()


def test_a_demo_into_a_folder_another_run_holds_is_refused_before_writing(tmp_path, capsys):
    output = tmp_path / "demo"
    output.mkdir()
    process = holder(output)
    try:
        with pytest.raises(SystemExit) as exit_info:
            entrypoint(["demo", "--output", str(output), *SMALL])
        assert f"pid {process.pid}" in one_line_error(capsys, exit_info)
    finally:
        process.kill()
        process.wait()
    assert sorted(p.name for p in output.iterdir()) == ["splat2splat.lock"]
    entrypoint(["demo", "--output", str(output), *SMALL])  # its owner is gone: the stale lock is taken over
    assert (output / "transforms.json").is_file() and not (output / "splat2splat.lock").exists()
