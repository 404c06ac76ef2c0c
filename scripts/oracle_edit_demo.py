"""A complete `splat2splat edit` run on the demo scene with the oracle editor, for a picture of the IDU at work.

Real InstructPix2Pix weights cannot be downloaded everywhere; the oracle editor
(`splat2splat.testing.oracle.OracleEditor`) edits like IP2P in miniature (a noise-level blend towards a warm
colour grade of the original, plus per-view colour blobs), so the run folder shows what an edit run
produces: the before/after sheet, the turntable and the PLY. Copies the sheet and a GIF turntable to
``--figures`` for the docs.

    python scripts/oracle_edit_demo.py
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tyro

from splat2splat.data.demo import DemoConfig, write_demo_scene
from splat2splat.testing.oracle import OracleEditor
from splat2splat.edit.presets import preset
from splat2splat.edit.job import EditJob, run_edit_job


@dataclass
class OracleEditDemo:
    """Edit the demo scene with the oracle editor and keep the pictures."""

    output: Path = Path("outputs/oracle-edit-demo")
    """Run folder of the edit."""
    figures: Path = Path("docs/images")
    """Where the before/after sheet and the turntable GIF are copied."""
    image_size: int = 96
    """Demo image size in pixels."""
    init_steps: int = 1000
    """Training steps of the unedited scene."""
    steps: int = 1000
    """Editing steps."""
    edit_rate: int = 5
    """Steps between single-view edits."""


def main(cfg: OracleEditDemo) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        scene = write_demo_scene(Path(tmp) / "demo", DemoConfig(image_size=cfg.image_size))
        idu = dataclasses.replace(preset("in2n-tiny"), steps=cfg.steps, edit_rate=cfg.edit_rate)
        cmd = EditJob(data=scene, prompt="give it a warm, sepia grade (oracle editor)", preset="in2n-tiny",
                   output=cfg.output, init_steps=cfg.init_steps, device="cpu", turntable_frames=36,
                   video_format="gif", checkpoint_every=0, eval_every=cfg.steps, idu=idu)
        run_edit_job(cmd, editor=OracleEditor())
    cfg.figures.mkdir(parents=True, exist_ok=True)
    shutil.copy(cfg.output / "before_after.png", cfg.figures / "oracle_edit_before_after.png")
    shutil.copy(cfg.output / "turntable.gif", cfg.figures / "oracle_edit_turntable.gif")
    print(f"figures in {cfg.figures}")


if __name__ == "__main__":
    main(tyro.cli(OracleEditDemo))
