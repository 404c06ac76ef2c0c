"""One run per output folder: the lock file, its owner, stale locks, and two processes racing for one folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from splat2splat.errors import InputError
from splat2splat.folder_lock import LOCK_FILE, claim_output_folder, process_start_time, release_output_folder

HOLD = "import sys, time; from splat2splat.folder_lock import claim_output_folder; " \
       "claim_output_folder(sys.argv[1]); print('held', flush=True); time.sleep(60)"


def holder(folder: Path) -> subprocess.Popen:
    """A process that claims ``folder`` and keeps running."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, env=env, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_live_owner_is_refused_in_one_line_and_a_dead_one_is_taken_over(tmp_path):
    process = holder(tmp_path)
    try:
        with pytest.raises(InputError, match=f"pid {process.pid} on {socket.gethostname()}") as error:
            claim_output_folder(tmp_path)
        assert "\n" not in str(error.value) and LOCK_FILE in str(error.value)
    finally:
        process.kill()
        process.wait()
    claim_output_folder(tmp_path)  # its owner is gone: the lock is stale
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    release_output_folder(tmp_path)
    assert not (tmp_path / LOCK_FILE).exists() and not list(tmp_path.iterdir())


def write_lock(folder: Path, **owner) -> None:
    (folder / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                "started": process_start_time(os.getpid()), **owner}))


@pytest.mark.parametrize("owner, stale", [
    ({"pid": 2**22 + 12345}, True),  # no such process (above Linux's pid_max)
    ({"pid": 1, "started": -5}, True),  # a live pid, but a later process than the one that wrote the lock
    ({"pid": "x"}, True),
    ({"pid": 1, "host": "another-machine"}, False),  # cannot be checked from here: respected
    ({}, False),  # this very process: re-entrant, so not refused either
])
def test_stale_locks(tmp_path, owner, stale):
    write_lock(tmp_path, **owner)
    if owner.get("host") == "another-machine":
        with pytest.raises(InputError, match="another-machine"):
            claim_output_folder(tmp_path)
        return
    claim_output_folder(tmp_path)
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    release_output_folder(tmp_path)


def test_a_lock_being_written_is_respected(tmp_path):
    (tmp_path / LOCK_FILE).write_text("")
    with pytest.raises(InputError, match="claiming this --output folder right now"):
        claim_output_folder(tmp_path)
    os.utime(tmp_path / LOCK_FILE, (0, 0))  # an old, empty lock: its writer died
    claim_output_folder(tmp_path)
    release_output_folder(tmp_path)
