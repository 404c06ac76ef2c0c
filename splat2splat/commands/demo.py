"""``splat2splat demo``: write the bundled offline demo scene."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from splat2splat.data.demo import DemoConfig, write_demo_scene


@dataclass
class DemoCommand:
    """Write the bundled offline demo scene (nerfstudio format)."""

    output: Path = Path("demo_scene")
    """Folder to write the scene into."""
    scene: DemoConfig = field(default_factory=DemoConfig)


def run(cmd: DemoCommand) -> None:
    path = write_demo_scene(cmd.output, cmd.scene)
    print(f"demo scene written to {path}")
