"""``splat2splat demo``: write the bundled offline demo scene."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from splat2splat.data.demo import DemoConfig, write_demo_scene
from splat2splat.errors import InputError
from splat2splat.folder_lock import LOCK_FILE, claim_output_folder, release_output_folder
from splat2splat.io import check_output_folder


@dataclass
class DemoCommand:
    """Write the bundled offline demo scene (nerfstudio format)."""

    output: Path = Path("demo_scene")
    """Folder to write the scene into."""
    scene: DemoConfig = field(default_factory=DemoConfig)


def run(cmd: DemoCommand) -> None:
    check_output_folder(cmd.output)
    claim_output_folder(cmd.output)  # a second demo into this folder at once is refused, not interleaved
    if any(path.name != LOCK_FILE for path in cmd.output.iterdir()):  # an existing dataset would be replaced
        raise InputError(cmd.output, "--output is not empty: the demo scene is written only into a new or empty folder")
    path = write_demo_scene(cmd.output, cmd.scene)
    print(f"demo scene written to {path}")
    release_output_folder(cmd.output)
