"""`splat2splat process` refuses bad inputs and outputs in one line each, leaving nothing behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from splat2splat.cli import entrypoint
from splat2splat.testing.sfm_scene import write_video_av


def run_fails(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as stopped:
        entrypoint(["process", *args])
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def noise_photos(folder: Path, count: int, size: int = 160) -> Path:
    """Unrelated pictures: independent random blobs (many SIFT features, nothing in common)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        coarse = np.random.default_rng(k).random((size // 8, size // 8, 3))
        image = Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
        image.save(folder / f"unrelated_{k}.png")
    return folder


def assert_nothing_written(parent: Path, output: Path) -> None:
    assert not output.exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{output.name}.partial")]


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    line = run_fails(capsys, "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "out"))
    assert "no images" in line and str(tmp_path / "empty") in line
    assert_nothing_written(tmp_path, tmp_path / "out")


def test_two_images(tmp_path, capsys):
    noise_photos(tmp_path / "two", 2)
    line = run_fails(capsys, "--input", str(tmp_path / "two"), "--output", str(tmp_path / "out"))
    assert "only 2 images" in line and "at least 3" in line
    assert_nothing_written(tmp_path, tmp_path / "out")


def test_unrelated_images(tmp_path, capsys):
    noise_photos(tmp_path / "unrelated", 6)
    before = sorted((p.name, p.read_bytes()) for p in (tmp_path / "unrelated").iterdir())
    line = run_fails(capsys, "--input", str(tmp_path / "unrelated"), "--output", str(tmp_path / "out"),
                     "--max-features", "512")
    assert ("no two views could be matched" in line or "registered" in line) and "overlap" in line
    assert sorted((p.name, p.read_bytes()) for p in (tmp_path / "unrelated").iterdir()) == before
    assert_nothing_written(tmp_path, tmp_path / "out")


def test_corrupt_video(tmp_path, capsys):
    frames = [torch.rand(32, 32, 3) for _ in range(10)]
    whole = write_video_av(tmp_path / "whole.mp4", frames).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(whole[: len(whole) // 2])  # a copy that stopped half way
    line = run_fails(capsys, "--input", str(tmp_path / "cut.mp4"), "--output", str(tmp_path / "out"))
    assert "cut.mp4" in line and "video" in line
    assert_nothing_written(tmp_path, tmp_path / "out")


def test_not_a_video(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("shopping list\n" * 50)
    line = run_fails(capsys, "--input", str(tmp_path / "notes.txt"), "--output", str(tmp_path / "out"))
    assert "notes.txt: cannot be read as a video or image folder" in line
    assert_nothing_written(tmp_path, tmp_path / "out")


def test_outputs_that_would_write_into_the_input_or_over_files_are_refused(tmp_path, capsys):
    photos = noise_photos(tmp_path / "photos", 3)
    assert "is inside the input" in run_fails(capsys, "--input", str(photos), "--output", str(photos / "out"))
    assert "is inside the input" in run_fails(capsys, "--input", str(photos), "--output", str(photos))
    assert "contains the input" in run_fails(capsys, "--input", str(photos), "--output", str(tmp_path))
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    assert "not an empty folder" in run_fails(capsys, "--input", str(photos), "--output", str(tmp_path / "used"))
    assert (tmp_path / "used" / "keep.txt").read_text() == "mine"
    assert "does not exist" in run_fails(capsys, "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o"))
    assert "--num-frames 2: must be at least 3" in run_fails(capsys, "--input", str(photos), "--output",
                                                              str(tmp_path / "o"), "--num-frames", "2")
    assert sorted(p.name for p in photos.iterdir()) == [f"unrelated_{k}.png" for k in range(3)]
