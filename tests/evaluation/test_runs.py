"""Finding the edited scene, the original scene and the dataset of an edit run folder (or a scene file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from splat2splat.errors import InputError
from splat2splat.evaluation.runs import EvalTarget, locate_target, unique_names


def make_run(folder: Path, data: Path | None, init: Path | None = None, initial: bool = True,
             finished: bool = True) -> Path:
    """A run folder as `splat2splat edit` leaves it (the scene files are empty: locating never reads them)."""
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"")
    command = {"data": str(data) if data else None, "downscale": 2, "prompt": "make it autumn",
               "init": str(init) if init else None}
    (folder / "command.json").write_text(json.dumps(command))
    if initial:
        (folder / "initial").mkdir()
        (folder / "initial" / "checkpoint.pt").write_bytes(b"")
    if finished:
        (folder / "run.json").write_text(json.dumps({"prompt": "make it autumn", "metrics": {"psnr_to_edited": 25.0}}))
    return folder


def test_run_folder_names_its_scenes_dataset_and_metrics(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    run = make_run(tmp_path / "run", data)
    target = locate_target(run)
    assert (target.edited, target.original, target.data) == (run / "checkpoint.pt", run / "initial" / "checkpoint.pt", data)
    assert target.downscale == 2 and target.prompt == "make it autumn" and target.finished
    assert target.run_metrics == {"psnr_to_edited": 25.0} and target.name == "run"


def test_the_init_scene_is_the_original_and_options_override_the_run(tmp_path):
    data, other = tmp_path / "data", tmp_path / "other"
    data.mkdir(), other.mkdir()
    init = tmp_path / "trained.pt"
    init.write_bytes(b"")
    run = make_run(tmp_path / "run", data, init=init, initial=False, finished=False)
    target = locate_target(run)
    assert target.original == init and not target.finished and target.run_metrics == {}
    overridden = locate_target(run, original=run / "checkpoint.pt", data=other, downscale=4)
    assert (overridden.original, overridden.data, overridden.downscale) == (run / "checkpoint.pt", other, 4)


def test_folder_without_a_scene_is_one_clear_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no checkpoint.pt or scene.ply") as error:
        locate_target(tmp_path / "empty")
    assert error.value.path == tmp_path / "empty"


def test_moved_dataset_names_the_option_that_overrides_it(tmp_path):
    run = make_run(tmp_path / "run", tmp_path / "gone")
    with pytest.raises(InputError, match="the run's data .*gone does not exist.*pass --data"):
        locate_target(run)


def test_missing_initial_scene_asks_for_the_original(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    run = make_run(tmp_path / "run", data, initial=False)
    with pytest.raises(InputError, match="original scene is missing.*--original"):
        locate_target(run)


def test_scene_file_needs_the_original(tmp_path):
    scene = tmp_path / "edited.ply"
    scene.write_bytes(b"")
    with pytest.raises(InputError, match="needs --original SCENE"):
        locate_target(scene)
    with pytest.raises(InputError, match="no such edit run folder or scene file"):
        locate_target(tmp_path / "nothing")


def test_repeated_names_become_distinct():
    targets = [EvalTarget(name, Path("e"), Path("o"), Path("d"), 1) for name in ("run", "run", "other")]
    assert [t.name for t in unique_names(targets)] == ["run", "run-2", "other"]


def test_a_command_json_with_a_wrong_type_is_one_clear_line(tmp_path):
    """The evaluation reads the edit's command without the edit's job class, checked like a resume reads it."""
    data = tmp_path / "data"
    data.mkdir()
    run = make_run(tmp_path / "run", data)
    (run / "command.json").write_text(json.dumps({"data": str(data), "downscale": "two", "idu": {"steps": 3}}))
    with pytest.raises(InputError, match="downscale") as error:
        locate_target(run)
    assert error.value.path == run / "command.json" and "\n" not in str(error.value)
