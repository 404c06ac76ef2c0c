"""What an evaluation compares: the edited scene, the original scene it started from, and their dataset.

An edit run folder (written by ``splat2splat edit``) holds the edited scene (``checkpoint.pt``, or
``scene.ply``), the command that made it (``command.json``: the dataset, its downscale and ``--init``, the
original scene) and, once finished, ``run.json`` with its metrics. The original scene is ``--init`` when the
edit started from one, else ``initial/checkpoint.pt``, which the edit trained. A bare scene file (``.pt`` /
``.ply``) can be evaluated too, given the original scene.

Paths in ``command.json`` are as the edit was given them (often relative to where it ran), so each one is
checked and a missing one names the option that overrides it. Only the command's fields named in
:class:`RecordedEdit` are read (type-checked as a resume reads a job): the evaluation is a layer the edit
uses, so it never imports the edit's own job class.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from splat2splat.checkpoint import CHECKPOINT_FILE, COMMAND_FILE, job_from_dict
from splat2splat.errors import InputError
from splat2splat.io import read_json

EDITED_SCENE_FILES = (CHECKPOINT_FILE, "scene.ply")  # in order of preference: the checkpoint is exact
INITIAL_SCENE = Path("initial") / CHECKPOINT_FILE


@dataclass
class EvalTarget:
    """One edited scene to evaluate against the original scene it was edited from."""

    name: str  # the label in the report
    edited: Path
    original: Path
    data: Path
    downscale: int
    prompt: str | None = None
    run_folder: Path | None = None
    finished: bool = True  # the run wrote run.json (an interrupted run is evaluated at its last checkpoint)
    run_metrics: dict = field(default_factory=dict)  # run.json "metrics": PSNR figures of the edit


@dataclass
class RecordedEdit:
    """What an edit's saved command says about its inputs (the fields of the edit job the evaluation needs)."""

    data: Path | None = None
    init: Path | None = None
    downscale: int = 1
    prompt: str = ""


def locate_target(path: Path, original: Path | None = None, data: Path | None = None,
                  downscale: int | None = None) -> EvalTarget:
    """The target for an edit run folder or a scene file; ``original``/``data``/``downscale`` override the run's."""
    path = Path(path)
    if path.is_dir():
        return _run_folder_target(path, original, data, downscale)
    if not path.exists():
        raise InputError(path, "no such edit run folder or scene file")
    return _scene_file_target(path, original, data, downscale)


def _run_folder_target(folder: Path, original: Path | None, data: Path | None, downscale: int | None) -> EvalTarget:
    edited = next((folder / name for name in EDITED_SCENE_FILES if (folder / name).is_file()), None)
    if edited is None:
        raise InputError(folder, f"not an edit run folder with a scene: it has no {' or '.join(EDITED_SCENE_FILES)} "
                                 "(splat2splat edit writes them; pass the run's --output folder)")
    record = read_json(folder / "run.json") if (folder / "run.json").is_file() else {}
    if not isinstance(record, dict):
        raise InputError(folder / "run.json", "not an edit's run.json (not a JSON object)")
    job = _run_job(folder, record)
    if original is None:
        original = _recorded_original(folder, job)
    elif not Path(original).is_file():
        raise InputError(original, "original scene file (--original) does not exist")
    return EvalTarget(
        name=folder.resolve().name, edited=edited, original=Path(original),
        data=_recorded_path(folder, job.data, "data", data, "--data DATA (the dataset the edit ran on)"),
        downscale=downscale if downscale is not None else job.downscale,
        prompt=record.get("prompt", job.prompt), run_folder=folder, finished=bool(record),
        run_metrics=dict(record.get("metrics") or {}),
    )


def _run_job(folder: Path, record: dict) -> RecordedEdit:
    """The inputs of the edit's saved job: command.json, else the copy in run.json, type-checked by
    :mod:`splat2splat.checkpoint` like a resume reads it."""
    if (folder / COMMAND_FILE).is_file():
        source, command = folder / COMMAND_FILE, read_json(folder / COMMAND_FILE)
    elif isinstance(record.get("command"), dict):
        source, command = folder / "run.json", record["command"]
    else:
        raise InputError(folder, "not an edit run folder: no command.json (nor a command in run.json) says which "
                                 "dataset and original scene it used; pass the scene file with --original and --data")
    if not isinstance(command, dict):
        raise InputError(source, "not an edit's command (not a JSON object)")
    names = {f.name for f in fields(RecordedEdit)}
    return job_from_dict(RecordedEdit, {key: value for key, value in command.items() if key in names}, source)


def _recorded_original(folder: Path, job: RecordedEdit) -> Path:
    if job.init is not None:
        return _recorded_path(folder, job.init, "init", None, "--original SCENE (the scene the edit started from)")
    initial = folder / INITIAL_SCENE
    if not initial.is_file():
        raise InputError(initial, "the run's original scene is missing (the edit trained it here): pass --original SCENE")
    return initial


def _recorded_path(folder: Path, recorded: Path | None, key: str, override: Path | None, option: str) -> Path:
    if override is not None:
        if not Path(override).exists():
            raise InputError(override, f"does not exist ({option.split()[0]})")
        return Path(override)
    if not recorded:
        raise InputError(folder, f"the run's command does not name its '{key}': pass {option}")
    if not Path(recorded).exists():
        raise InputError(folder, f"the run's {key} {recorded} does not exist (recorded relative to where the edit ran, "
                                 f"or moved): pass {option}")
    return Path(recorded)


def _scene_file_target(scene: Path, original: Path | None, data: Path | None, downscale: int | None) -> EvalTarget:
    from splat2splat.scene_loading import dataset_path_for, downscale_for, read_scene_checkpoint

    if original is None:
        raise InputError(scene, "a scene file (not an edit run folder) needs --original SCENE, the unedited scene "
                                "to compare with")
    if not Path(original).is_file():
        raise InputError(original, "original scene file (--original) does not exist")
    checkpoint = read_scene_checkpoint(scene)
    return EvalTarget(name=scene.stem if scene.stem not in ("checkpoint", "scene") else scene.parent.resolve().name,
                      edited=scene, original=Path(original), data=dataset_path_for(scene, data, checkpoint),
                      downscale=downscale_for(checkpoint, downscale))


def unique_names(targets: list[EvalTarget]) -> list[EvalTarget]:
    """Targets with distinct report names (a repeated name gets -2, -3, ...): names become file names."""
    seen: dict[str, int] = {}
    for target in targets:
        count = seen.get(target.name, 0) + 1
        seen[target.name] = count
        if count > 1:
            target.name = f"{target.name}-{count}"
    return targets
