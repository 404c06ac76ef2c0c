"""Atomic writes: all or nothing, and the file permissions of a normal write."""

from __future__ import annotations

import os
import stat

import pytest

from splat2splat.io import atomic_write, write_bytes


def test_written_file_gets_the_usual_permissions_not_mkstemps_0600(tmp_path):
    previous = os.umask(0o022)
    try:
        write_bytes(tmp_path / "scene.ply", b"data")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "scene.ply").stat().st_mode) == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write(b"half")
            raise RuntimeError("crash")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
