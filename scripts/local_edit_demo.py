"""A local edit of the demo scene on a CPU, for the README's before/after sheet.

Runs ``splat2splat edit --region.box`` (the box around the striped sphere) with the tint editor of
``splat2splat.testing.editors`` (an edit that warms the whole image, like an instruction that InstructPix2Pix
would apply too widely): only the sphere changes, the rest of the scene stays bit for bit. Copies
``before_after.png`` to ``--figures``.

    python scripts/local_edit_demo.py                # CPU, 64-px demo, about 3 minutes
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tyro

from splat2splat.commands.edit import parse as parse_edit_args, run as run_edit
from splat2splat.data.demo import DemoConfig, write_demo_scene
from splat2splat.testing.editors import TintEditor

SPHERE_BOX = ("0.0", "-0.1", "-0.05", "0.7", "0.6", "0.65")


@dataclass
class LocalEditDemo:
    """Edit only the demo's sphere and keep the before/after sheet."""

    output: Path = Path("outputs/local-edit-demo")
    """Run folder of the edit."""
    figures: Path = Path("docs/images")
    """Where the before/after sheet is copied (local_edit_before_after.png)."""
    image_size: int = 64
    """Demo image size in pixels."""
    init_steps: int = 400
    """Training steps of the unedited scene."""
    steps: int = 150
    """Editing steps."""


def edit_arguments(cfg: LocalEditDemo, scene: Path) -> list[str]:
    return ["--preset", "in2n-tiny", "--data", str(scene), "--prompt", "make the ball orange (tint editor)",
            "--output", str(cfg.output), "--device", "cpu", "--init-steps", str(cfg.init_steps),
            "--idu.steps", str(cfg.steps), "--idu.edit-rate", "2", "--idu.density-control", "off",
            "--gaussians.strategy.kind", "none", "--gaussians.sh0-lr", "0.025", "--checkpoint-every", "0",
            "--eval-every", "0", "--turntable-frames", "0", "--region.box", *SPHERE_BOX]


def main(cfg: LocalEditDemo) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        scene = write_demo_scene(Path(tmp) / "demo", DemoConfig(n_views=24, image_size=cfg.image_size))
        run_edit(parse_edit_args(edit_arguments(cfg, scene)), editor=TintEditor())
    cfg.figures.mkdir(parents=True, exist_ok=True)
    shutil.copy(cfg.output / "before_after.png", cfg.figures / "local_edit_before_after.png")
    print(f"sheet in {cfg.figures / 'local_edit_before_after.png'}")


if __name__ == "__main__":
    main(tyro.cli(LocalEditDemo))
