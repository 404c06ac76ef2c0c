"""Time and peak memory of each editing preset and of the preview, with the edit's wall time split into
render / editor / train / I/O (checkpoints, evaluation, outputs).

Every preset edits the same trained demo scene (``--init`` checkpoint, trained once at the start) for the
same number of steps; igs2gs's dataset-wide rounds are scaled to two within those steps.

    python scripts/bench_presets.py                                   # CPU: tiny random IP2P
    python scripts/bench_presets.py --model models/ip2p-random --image-size 512 --device cuda   # GPU

LPIPS presets use a random LPIPS backbone unless --lpips-weights is given: the weights' values do not change
the time or memory of the loss.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import tyro

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import markdown_table, measure_peak_memory, mib, resolve_bench_device, run_record  # noqa: E402

from splat2splat.configs import config_to_dict  # noqa: E402
from splat2splat.data.demo import DemoConfig, write_demo_scene  # noqa: E402
from splat2splat.edit.lpips_loss import load_lpips  # noqa: E402
from splat2splat.edit.presets import PRESETS, preset  # noqa: E402
from splat2splat.commands.edit import EditCommand, run as run_edit  # noqa: E402
from splat2splat.gaussians.backend import GaussianConfig, StrategyConfig  # noqa: E402
from splat2splat.io import write_json  # noqa: E402
from splat2splat.commands.preview import PreviewCommand, Preview3D, run as run_preview  # noqa: E402
from splat2splat.commands.train import TrainCommand, run as run_train  # noqa: E402


@dataclass
class BenchPresets:
    """Wall time (split by activity) and peak memory of every preset's edit and of the preview."""

    output: Path = Path("outputs/bench_presets.json")
    """JSON file for the results (with machine, versions, date and command)."""
    model: Path | None = None
    """InstructPix2Pix folder; default: a tiny random-weight model built in a temp folder."""
    lpips_weights: Path | None = None
    """LPIPS backbone checkpoint; default: a random backbone (same cost)."""
    presets: tuple[str, ...] = tuple(PRESETS)
    """Presets to measure."""
    dtype_on_cpu: Literal["preset", "float32"] = "float32"
    """On a CPU, run every preset's editor in float32 (half precision is emulated and slow there) or as the preset says."""
    image_size: int = 64
    """Demo image size in pixels."""
    views: int = 40
    """Demo views."""
    init_steps: int = 300
    """Training steps of the shared initial scene."""
    steps: int = 60
    """Editing steps per preset."""
    edit_rate: int = 10
    """Steps between edits (in2n presets)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device of scene and editor."""
    markdown: bool = True
    """Print a markdown table for docs/BENCHMARKS.md."""


def edit_command(cfg: BenchPresets, name: str, scene: Path, init: Path, model: Path, output: Path,
                 device: torch.device) -> EditCommand:
    idu = preset(name)
    idu = dataclasses.replace(idu, steps=cfg.steps, edit_rate=cfg.edit_rate if idu.schedule == "in2n" else cfg.steps // 2)
    if device.type == "cpu" and cfg.dtype_on_cpu == "float32":
        idu.editor.dtype = "float32"
    return EditCommand(data=scene, prompt="make it look like autumn", preset=name, output=output, init=init,
                model=str(model), device=str(device), checkpoint_every=cfg.steps // 2, eval_every=cfg.steps,
                turntable_frames=0, lpips_weights=cfg.lpips_weights, idu=idu)


def main(cfg: BenchPresets) -> dict:
    device = resolve_bench_device(cfg.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scene = write_demo_scene(tmp / "demo", DemoConfig(n_views=cfg.views, image_size=cfg.image_size))
        run_train(TrainCommand(data=scene, output=tmp / "initial", steps=cfg.init_steps, eval_every=0,
                        scene=GaussianConfig(device=str(device), strategy=StrategyConfig(refine_start=100))))
        model = cfg.model
        if model is None:
            from splat2splat.testing.tiny_ip2p import build_tiny_ip2p

            model = build_tiny_ip2p(tmp / "tiny-ip2p")
        for name in cfg.presets:
            cmd = edit_command(cfg, name, scene, tmp / "initial" / "checkpoint.pt", model, tmp / name, device)
            lpips = None
            if cmd.idu.loss.lpips > 0 and cfg.lpips_weights is None:
                lpips = load_lpips(cmd.idu.lpips_net, random_backbone=True)
            with measure_peak_memory(device) as peak:
                record = run_edit(cmd, lpips=lpips)
            seconds = record["seconds"]
            rows.append({"run": name, "editor_dtype": cmd.idu.editor.dtype, "steps": record["steps"],
                         "edits": record["edits"], "wall_s": seconds["this_session"],
                         "render_s": seconds["render"], "editor_s": seconds["edit"], "train_s": seconds["train"],
                         "io_s": seconds["checkpoint"] + seconds["eval"] + seconds["outputs"],
                         "peak_mib": mib(peak.bytes), "memory_method": peak.method})
        preview = PreviewCommand(data=scene, prompt="make it look like autumn", output=tmp / "preview", seed=0,
                                 device=str(device))
        preview.editor = dataclasses.replace(preview.editor, model=str(model), device=str(device),
                                             dtype="float32" if device.type == "cpu" else "auto")
        for three_d in (False, True):
            cmd = dataclasses.replace(preview, three_d=three_d,
                                      fast=Preview3D(init_steps=cfg.init_steps, steps=cfg.steps))
            with measure_peak_memory(device) as peak:
                summary = run_preview(cmd)
            wall = summary["seconds"] + (summary["three_d"]["seconds"] if three_d else 0.0)
            rows.append({"run": "preview --3d" if three_d else "preview (2D, 4 views)", "editor_dtype": cmd.editor.dtype,
                         "steps": cfg.steps if three_d else 0, "edits": summary["edits"] +
                         (summary["three_d"]["edits"] if three_d else 0), "wall_s": wall, "peak_mib": mib(peak.bytes),
                         "memory_method": peak.method})
    result = {"record": run_record(device), "settings": config_to_dict(cfg),
              "model": "tiny random IP2P" if cfg.model is None else str(cfg.model), "results": rows}
    write_json(cfg.output, result)
    if cfg.markdown:
        headers = ["run", "editor dtype", "steps", "edits", "wall s", "render s", "editor s", "train s", "I/O s",
                   "peak MiB"]
        table = [[r["run"], r["editor_dtype"], r["steps"], r["edits"], f"{r['wall_s']:.1f}",
                  *(f"{r[k]:.1f}" if k in r else "-" for k in ("render_s", "editor_s", "train_s", "io_s")),
                  f"{r['peak_mib']:.0f}"] for r in rows]
        print(markdown_table(headers, table))
    return result


if __name__ == "__main__":
    main(tyro.cli(BenchPresets))
