"""The one checkpoint format: every checkpoint and ``command.json`` is written and read here.

A checkpoint (``.pt`` / ``.ckpt``) is a dict of plain values and tensors, loaded with
``torch.load(weights_only=True)`` so a file from someone else can never run code::

    {"format": 1,                          # FORMAT_VERSION; an unknown version is refused
     "backend": "gaussian" | "nerf",       # which registered SceneBackend wrote it
     "backend_state": backend.state_dict(),
     "data": "path/to/dataset",            # the dataset it was trained on (default for --data)
     "downscale": 2,                       # the image downscale it was trained at (default for --downscale)
     "rng": {...},                         # global torch RNG states (gsplat's strategies draw from them)
     ...}                                  # what the writing loop needs to resume (command, IDU state, edits)

``command.json`` beside it holds the job that started a run, so ``--resume`` rebuilds exactly that job: its
options, with the scene backend's name under "backend" and that backend's settings under "scene" (files of
earlier versions held both backends' settings under "gaussians" and "nerf"; they still resume).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import torch

from splat2splat.backends import BACKENDS, backend_from_state, backend_kind
from splat2splat.configs import config_from_dict, config_to_dict
from splat2splat.errors import InputError
from splat2splat.io import read_json, save_torch, write_json
from splat2splat.scene import SceneBackend

FORMAT_VERSION = 1  # bumped whenever the layout above changes
CHECKPOINT_SUFFIXES = (".pt", ".ckpt")
CHECKPOINT_FILE = "checkpoint.pt"  # the name every run folder gives its checkpoint
COMMAND_FILE = "command.json"
# Options that older splat2splat versions saved with a run but that belong to one invocation only.
PER_INVOCATION_KEYS = ("resume", "viewer", "viewer_port", "viewer_every")

Job = TypeVar("Job")


# ------------------------------------------------------------------------------------------------ writing


def rng_state() -> dict:
    """The global torch RNG states: gsplat's strategies draw from them (split positions, relocation)."""
    state = {"cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def load_rng_state(state: dict) -> None:
    torch.random.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, backend: SceneBackend, data: Path | None, downscale: int, **extra: Any) -> None:
    """Write the checkpoint of ``backend`` atomically; ``extra`` holds what the writing loop resumes from."""
    save_torch(path, {"format": FORMAT_VERSION, "backend": backend.name, "backend_state": backend.state_dict(),
                      "data": str(data), "downscale": downscale, "rng": rng_state(), **extra})


def job_to_dict(job: Any) -> dict:
    """A train or edit job as plain values: its options, its backend's name and that backend's settings."""
    return {**config_to_dict(job), "backend": job.backend}


def write_command(folder: Path, job: Any) -> None:
    """Record the job that starts a run in ``folder/command.json``."""
    write_json(Path(folder) / COMMAND_FILE, job_to_dict(job))


# ------------------------------------------------------------------------------------------------ reading


def load_checkpoint_file(path: Path) -> Any:
    """``torch.load`` that never unpickles code: only tensors and plain containers load."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint file does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or code-carrying archive
        cause = " ".join(str(exc).split())[:200]
        raise InputError(path, f"not a readable splat2splat checkpoint ({type(exc).__name__}: {cause})") from None


def read_checkpoint(path: Path) -> dict:
    """Load a checkpoint and check its layout; every problem is an InputError naming ``path``."""
    path = Path(path)
    checkpoint = load_checkpoint_file(path)
    if not isinstance(checkpoint, dict):
        raise InputError(path, f"not a splat2splat checkpoint (holds a {type(checkpoint).__name__}, not a dict)")
    version = checkpoint.get("format")
    if type(version) is not int or version != FORMAT_VERSION:
        raise InputError(path, f"checkpoint format {describe(version)} is not the format {FORMAT_VERSION} this "
                               f"splat2splat reads (written by another version or another program)")
    kind = checkpoint.get("backend")
    if not isinstance(kind, str) or kind not in BACKENDS:
        raise InputError(path, f"not a splat2splat checkpoint: 'backend' must be one of {', '.join(BACKENDS)}, "
                               f"found {describe(kind)}")
    state = checkpoint.get("backend_state")
    if not isinstance(state, dict):
        raise InputError(path, f"checkpoint has no 'backend_state' dict (found {describe(state)})")
    try:
        BACKENDS[kind].backend_class.check_state(state)
    except ValueError as problem:
        raise InputError(path, f"the {kind} scene in this checkpoint is damaged or from another program: "
                               f"{problem}") from None
    if "data" in checkpoint and not isinstance(checkpoint["data"], str):
        raise InputError(path, f"checkpoint 'data' must be a dataset path, found {describe(checkpoint['data'])}")
    downscale = checkpoint.get("downscale", 1)
    if isinstance(downscale, bool) or not isinstance(downscale, int) or downscale < 1:
        raise InputError(path, f"checkpoint 'downscale' must be a whole number >= 1, found {describe(downscale)}")
    return checkpoint


def backend_from_checkpoint(path: Path, checkpoint: dict, device: str | None = None) -> SceneBackend:
    """The backend a :func:`read_checkpoint` result describes (``device``: override the saved device)."""
    kind = checkpoint["backend"]
    try:
        return backend_from_state(kind, checkpoint["backend_state"], device)
    except InputError as error:  # e.g. a CUDA device asked for on a machine without one, or a bad saved setting
        if error.path is not None:
            raise
        raise InputError(path, error.problem) from None
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as error:
        cause = " ".join(str(error).split())[:300]
        raise InputError(path, f"checkpoint does not hold a loadable {kind} scene "
                               f"({type(error).__name__}: {cause})") from None


def require_keys(path: Path, checkpoint: dict, keys: tuple[str, ...], written_by: str) -> None:
    """A checkpoint to resume must come from the loop that resumes it."""
    missing = [key for key in keys if key not in checkpoint]
    if missing:
        raise InputError(path, f"not a checkpoint of {written_by} (it lacks {', '.join(missing)}); nothing to resume")


def job_from_dict(cls: type[Job], values: Any, source: Path) -> Job:
    """A saved job (checkpoint 'command' or command.json) as ``cls``; bad content is one InputError."""
    if not isinstance(values, dict):
        raise InputError(source, f"the saved command must be a JSON object, found {describe(values)}")
    values = {key: value for key, value in values.items() if key not in PER_INVOCATION_KEYS}
    if "scene" not in {f.name for f in dataclasses.fields(cls)}:  # a part of a job (the evaluation reads some)
        return config_from_dict(cls, values, source)
    name = values.pop("backend", "gaussian")
    if not isinstance(name, str) or name not in BACKENDS:
        raise InputError(source, f"the saved command's backend must be one of {', '.join(BACKENDS)}, "
                                 f"found {describe(name)}")
    kind = backend_kind(name)
    if "scene" not in values:  # written before a job held one backend's settings: both were saved
        values["scene"] = values.get(kind.option_prefix, {})
        for kind_of_old in BACKENDS.values():
            values.pop(kind_of_old.option_prefix, None)
    scene = config_from_dict(kind.config_class, values.pop("scene"), source, f"{cls.__name__}.{kind.option_prefix}")
    return dataclasses.replace(config_from_dict(cls, values, source), scene=scene)


def read_command(folder: Path, cls: type[Job]) -> Job:
    """The job recorded in ``folder/command.json``."""
    path = Path(folder) / COMMAND_FILE
    return job_from_dict(cls, read_json(path), path)


def job_fields(job: Any, cls: type[Job]) -> Job:
    """``job`` (a command: the job plus per-invocation options) reduced to the library job ``cls``."""
    return cls(**{f.name: getattr(job, f.name) for f in dataclasses.fields(cls)})


def describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"a {type(value).__name__}"
