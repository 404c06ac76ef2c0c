"""What lets an interrupted ``process`` resume: the staging folder's record of its finished stages.

``process`` builds the dataset in a hidden folder beside ``--output`` and keeps there ``stages.json``: the
run's options and, for each finished stage, what it produced (written atomically after the stage, so a stage
recorded is a stage whose files are complete). A resumed run skips the recorded stages and redoes the first
unrecorded one from its start, after removing what its interrupted attempt left (the frames folder, the COLMAP
database of an unfinished extraction, the matches of an unfinished matching, the mapper's partial models):
nothing half-written is trusted. An option used by a finished stage cannot change on resume (refused in one
line); one used only by stages still to run is honoured; ``--threads`` and ``--verbose`` always are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splat2splat.errors import InputError
from splat2splat.io import read_json, write_json

RECORD_FILE = "stages.json"
RECORD_VERSION = 1
STAGES = ("frames", "features", "matching", "mapping", "undistortion", "dataset", "report")
# The first stage whose result each option changes (the later ones are redone with it); None: no stage's result.
OPTION_STAGES = {"input": "frames", "num_frames": "frames", "camera_model": "features", "single_camera": "features",
                 "max_features": "features", "matching": "matching", "sequential_overlap": "matching",
                 "mapper": "mapping", "seed": "mapping", "threads": None, "verbose": None}


def staging_folder(output: Path) -> Path:
    """Where the dataset for ``output`` is built (and an interrupted run's stages wait): ``.NAME.process``."""
    return output.parent / f".{output.name}.process"


def option_stage(name: str, from_video: bool) -> str | None:
    """The first stage that ``name`` changes (``--num-frames`` changes nothing for photos)."""
    if name == "num_frames" and not from_video:
        return None
    return OPTION_STAGES[name]


def flag(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"--{'' if value else 'no-'}{name.replace('_', '-')}"
    return f"--{name.replace('_', '-')} {value}"


@dataclass
class StageRecord:
    """``stages.json``: the run's options (JSON values, input as an absolute path) and the finished stages."""

    folder: Path
    options: dict[str, Any]
    done: dict[str, dict] = field(default_factory=dict)  # stage -> what it produced, in stage order
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> its wall time (in the run that did it)

    @property
    def path(self) -> Path:
        return self.folder / RECORD_FILE

    @classmethod
    def read(cls, folder: Path) -> StageRecord:
        path = folder / RECORD_FILE
        saved = read_json(path)
        if not (isinstance(saved, dict) and saved.get("version") == RECORD_VERSION
                and isinstance(saved.get("options"), dict) and isinstance(saved.get("done"), dict)
                and isinstance(saved.get("seconds"), dict) and set(saved["done"]) <= set(STAGES)):
            raise InputError(path, "not a stage record of this version of `splat2splat process`; delete "
                                   f"{folder} to start over")
        return cls(folder, saved["options"], saved["done"], saved["seconds"])

    def write(self) -> None:
        write_json(self.path, {"version": RECORD_VERSION, "options": self.options, "done": self.done,
                               "seconds": self.seconds})

    def finish(self, stage: str, produced: dict, seconds: float) -> None:
        self.done[stage] = produced
        self.seconds[stage] = seconds
        self.write()

    def with_options(self, given: dict[str, Any], from_video: bool) -> dict[str, Any]:
        """The saved options with this command line's ``given`` ones; a given option that differs from what a
        finished stage used is refused in one line."""
        changed = {name: value for name, value in given.items() if self.options.get(name) != value}
        refused = [name for name in changed if option_stage(name, from_video) in self.done]
        if refused:
            now = ", ".join(flag(name, changed[name]) for name in refused)
            before = ", ".join(flag(name, self.options.get(name)) for name in refused)
            stages = " and ".join(sorted({option_stage(name, from_video) for name in refused}, key=STAGES.index))
            raise InputError(self.folder, f"--resume continues the run whose finished {stages} stage used {before}, "
                                          f"not {now}: leave {'it' if len(refused) == 1 else 'them'} out to "
                                          f"continue, or choose a new --output (or delete this folder) to start over")
        return {**self.options, **changed}
