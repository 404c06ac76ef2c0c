"""An interrupted `splat2splat process` resumes at its first unfinished stage (the finished ones are not run
again) and ends with the dataset an uninterrupted run writes; options a finished stage used cannot change."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from splat2splat.cli import entrypoint
from splat2splat.errors import InputError
from splat2splat.folder_lock import LOCK_FILE
from splat2splat.io import read_json
from splat2splat.sfm import inputs, reconstruct
from splat2splat.sfm.process import ProcessConfig, process
from splat2splat.sfm.resume import OPTION_STAGES, RECORD_FILE, STAGES, StageRecord, staging_folder
from splat2splat.data.demo import demo_cameras
from splat2splat.testing.sfm_scene import render_textured_view, write_photos, write_video_av

# 12 neighbouring views of the test scene, few features and one COLMAP thread (repeatable): a few seconds a run
FAST = dict(max_features=1024, threads=1)
FAST_FLAGS = ["--max-features", "1024", "--threads", "1"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def views() -> list:
    cameras = demo_cameras(36, 256)  # two orbits of 36 views; the first 12 are neighbours (a third of them)
    return [render_textured_view(cameras, i) for i in range(12)]


@pytest.fixture(scope="module")
def photos(views, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    write_photos(folder, views)
    return folder


def snapshot(folder: Path) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()}


def done_stages(output: Path) -> list[str]:
    return list(read_json(staging_folder(output) / RECORD_FILE)["done"])


class Calls:
    """Counts the calls of stage functions; ``stop_in(name)`` makes the next call of one raise KeyboardInterrupt
    (after doing its work when ``after_work``: what a stop just before the stage's record is written leaves)."""

    def __init__(self, monkeypatch):
        self.counts: dict[str, int] = {}
        self.stop: tuple[str, bool] | None = None
        for module, name in ((inputs, "stage_photos"), (inputs, "stage_video"), (reconstruct, "extract_features"),
                             (reconstruct, "match_features"), (reconstruct, "map_images"), (reconstruct, "undistort")):
            monkeypatch.setattr(module, name, self.counted(name, getattr(module, name)))

    def counted(self, name, function):
        def wrapper(*args, **kwargs):
            self.counts[name] = self.counts.get(name, 0) + 1
            stop = self.stop is not None and self.stop[0] == name
            after_work = stop and self.stop[1]
            if stop:
                self.stop = None
            if stop and not after_work:
                raise KeyboardInterrupt
            value = function(*args, **kwargs)
            if after_work:
                raise KeyboardInterrupt
            return value
        return wrapper

    def stop_in(self, name: str, after_work: bool = False) -> None:
        self.stop = (name, after_work)


def test_a_stopped_run_resumes_at_its_unfinished_stage_and_ends_as_an_uninterrupted_one(photos, tmp_path, monkeypatch):
    reference = process(ProcessConfig(photos, tmp_path / "reference", **FAST))
    before = snapshot(photos)
    calls = Calls(monkeypatch)
    output = tmp_path / "dataset"
    config = ProcessConfig(photos, output, **FAST)

    calls.stop_in("match_features", after_work=True)  # its matches are in the database, its record is not
    with pytest.raises(KeyboardInterrupt):
        process(config)
    assert done_stages(output) == ["frames", "features"] and not output.exists()
    assert not (staging_folder(output) / LOCK_FILE).exists(), "the stopped run kept its claim"
    with pytest.raises(InputError, match="pass --resume to continue it"):
        process(config)  # a new run into the same --output

    calls.stop_in("map_images")
    with pytest.raises(KeyboardInterrupt):
        process(config, resume=True)
    assert done_stages(output) == ["frames", "features", "matching"]
    calls.stop_in("undistort", after_work=True)
    with pytest.raises(KeyboardInterrupt):
        process(config, resume=True)
    assert done_stages(output) == ["frames", "features", "matching", "mapping"]

    result = process(ProcessConfig(output=output), resume=True)  # the saved run's input and options
    assert calls.counts == {"stage_photos": 1, "extract_features": 1, "match_features": 2, "map_images": 2,
                            "undistort": 2}
    assert result["resumed"] == ["frames", "features", "matching", "mapping"]
    assert set(result["seconds"]) == set(STAGES)
    assert not staging_folder(output).exists() and not (output / LOCK_FILE).exists()
    assert not (output / RECORD_FILE).exists()
    assert snapshot(photos) == before, "the input folder was written"

    # the same dataset as the uninterrupted run's
    assert [f["registered"] for f in result["frames"]] == [f["registered"] for f in reference["frames"]]
    assert result["points"] == reference["points"]
    assert sorted(p.name for p in output.iterdir()) == sorted(p.name for p in (tmp_path / "reference").iterdir())
    ours, theirs = (read_json(folder / "transforms.json") for folder in (output, tmp_path / "reference"))
    assert [f["file_path"] for f in ours["frames"]] == [f["file_path"] for f in theirs["frames"]]
    difference = np.abs(np.array([f["transform_matrix"] for f in ours["frames"]])
                        - np.array([f["transform_matrix"] for f in theirs["frames"]])).max()
    print(f"largest difference of a pose entry from the uninterrupted run's: {difference:.2e}")
    assert difference < 1e-6 and abs(ours["fl_x"] - theirs["fl_x"]) < 1e-6 * theirs["fl_x"]


def run_cli(args: list[str], capsys) -> tuple[int, list[str]]:
    """Exit status and the lines on stderr of `splat2splat process ARGS` (on success: on stdout)."""
    status = 0
    try:
        entrypoint(["process", *args])
    except SystemExit as exit_:
        status = exit_.code
    out = capsys.readouterr()
    return status, (out.out if status == 0 else out.err).strip().splitlines()


def test_a_resume_refuses_options_of_finished_stages_and_takes_those_of_the_others(photos, tmp_path, monkeypatch,
                                                                                 capsys):
    output = str(tmp_path / "dataset")
    calls = Calls(monkeypatch)
    calls.stop_in("map_images")
    status, err = run_cli(["--input", str(photos), "--output", output, *FAST_FLAGS], capsys)
    assert status == 130 and err[-1].startswith("stopped: interrupted") and "--resume" in err[-1]

    for args, refusal in ((["--max-features", "2048"], "finished features stage used --max-features 1024, not "
                                                       "--max-features 2048"),
                          (["--input", str(tmp_path)], "finished frames stage used --input"),
                          (["--matching", "sequential", "--no-single-camera"], "finished features and matching"),
                          (["--input", str(photos), *FAST_FLAGS[:2]], None)):  # the same options: not a change
        if refusal is None:
            calls.stop_in("map_images")
        status, err = run_cli(["--output", output, "--resume", *args], capsys)
        if refusal is not None:
            assert status == 2 and len(err) == 1 and refusal in err[0], err
        else:
            assert status == 130, err
    status, err = run_cli(["--input", str(photos), "--output", output, *FAST_FLAGS], capsys)
    assert status == 2 and len(err) == 1 and "pass --resume" in err[0]
    status, err = run_cli(["--output", str(tmp_path / "elsewhere"), "--resume"], capsys)
    assert status == 2 and len(err) == 1 and "no unfinished `process` run" in err[0]

    # the mapping has not run: its options may change
    status, out = run_cli(["--output", output, "--resume", "--mapper", "global"], capsys)
    assert status == 0 and "(frames, features, matching: in the interrupted run)" in out[-2], out
    result = read_json(Path(output) / "process.json")
    assert result["mapper"] == "global" and result["resumed"] == ["frames", "features", "matching"]
    assert result["options"]["max_features"] == 1024 and result["registered"] >= 10
    assert calls.counts["extract_features"] == 1 and calls.counts["match_features"] == 1
    status, err = run_cli(["--output", output, "--resume"], capsys)
    assert status == 2 and len(err) == 1 and "holds a finished dataset; nothing to resume" in err[0]


def test_sigterm_stops_the_run_and_a_resume_finishes_it(photos, tmp_path):
    output = tmp_path / "dataset"
    record = staging_folder(output) / RECORD_FILE
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.Popen([sys.executable, "-m", "splat2splat", "process", "--input", str(photos), "--output",
                            str(output), *FAST_FLAGS], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and run.poll() is None:
            if record.is_file() and "features" in read_json(record)["done"]:
                break
            time.sleep(0.05)
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1].startswith("stopped: interrupted") and "--resume" in err
    assert not output.exists() and not (staging_folder(output) / LOCK_FILE).exists()
    finished = done_stages(output)
    print(f"SIGTERM after the stages {finished}: {err.strip().splitlines()[-1]}")
    assert finished[:2] == ["frames", "features"] and "report" not in finished
    result = process(ProcessConfig(output=output), resume=True)
    assert result["resumed"] == finished and result["registered"] >= 10


def test_every_option_names_the_first_stage_it_changes():
    assert set(OPTION_STAGES) == {f.name for f in fields(ProcessConfig)} - {"output"}
    assert set(OPTION_STAGES.values()) <= set(STAGES) | {None}


def test_a_video_resumes_without_decoding_again(views, tmp_path, monkeypatch):
    video = write_video_av(tmp_path / "clip.mp4", views, fps=10)
    output = tmp_path / "dataset"
    calls = Calls(monkeypatch)
    calls.stop_in("extract_features")
    with pytest.raises(KeyboardInterrupt):
        process(ProcessConfig(video, output, num_frames=12, **FAST))
    with pytest.raises(InputError, match="finished frames stage used --num-frames 12, not --num-frames 6"):
        process(ProcessConfig(output=output, num_frames=6), resume=True)
    result = process(ProcessConfig(output=output, mapper="global"), resume=True)
    assert calls.counts["stage_video"] == 1 and calls.counts["extract_features"] == 2
    assert result["resumed"] == ["frames"] and result["views"] == 12 and result["registered"] >= 10
    assert result["matching"] == "sequential" and result["mapper"] == "global"


@pytest.mark.parametrize("from_video", [False, True])
def test_a_resume_may_change_the_options_of_stages_still_to_run_only(tmp_path, from_video):
    saved = {"input": "/data/in", "num_frames": 300, "camera_model": "OPENCV", "single_camera": True,
             "max_features": 8192, "matching": "auto", "sequential_overlap": 10, "mapper": "incremental", "seed": 0,
             "threads": -1, "verbose": False}
    changed = {"input": "/data/other", "num_frames": 100, "camera_model": "PINHOLE", "single_camera": False,
               "max_features": 1024, "matching": "sequential", "sequential_overlap": 5, "mapper": "global",
               "seed": 1, "threads": 2, "verbose": True}
    assert set(saved) == set(changed) == set(OPTION_STAGES)
    for finished in range(len(STAGES) + 1):
        record = StageRecord(tmp_path, dict(saved), {stage: {} for stage in STAGES[:finished]})
        for name, value in changed.items():
            stage = OPTION_STAGES[name] if from_video or name != "num_frames" else None
            if stage is not None and STAGES.index(stage) < finished:
                with pytest.raises(InputError, match=f"finished {stage} stage used"):
                    record.with_options({name: value}, from_video)
            else:
                assert record.with_options({name: value}, from_video) == {**saved, name: value}
            assert record.with_options({name: saved[name]}, from_video) == saved  # given as before: no change


def test_a_resume_is_refused_while_another_run_holds_the_folder(photos, tmp_path, monkeypatch):
    output = tmp_path / "dataset"
    Calls(monkeypatch).stop_in("extract_features")
    with pytest.raises(KeyboardInterrupt):
        process(ProcessConfig(photos, output, **FAST))
    hold = ("import sys, time; from splat2splat.folder_lock import claim_output_folder; "
            "claim_output_folder(sys.argv[1]); print('held', flush=True); time.sleep(60)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    other = subprocess.Popen([sys.executable, "-c", hold, str(staging_folder(output))], stdout=subprocess.PIPE,
                             env=env, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match="another splat2splat run .* is writing into this --output folder"):
            process(ProcessConfig(output=output), resume=True)
    finally:
        other.kill()
        other.wait()
    assert done_stages(output) == ["frames"]  # the refused resume left the run as it was
