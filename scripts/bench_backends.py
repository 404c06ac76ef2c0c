"""Side by side: the Gaussian and the NeRF backend on the same scene, preset and editor.

For each backend: train the initial scene on the demo (held-out reconstruction PSNR/SSIM and time), then run
the Iterative Dataset Update for a number of in2n cycles (one cycle = ``edit_rate`` training steps with one
edit) and report the time per cycle, split into render / edit / train.

    python scripts/bench_backends.py                      # CPU: tiny random IP2P, 64-px demo
    python scripts/bench_backends.py --model PATH --image-size 256 --device cuda   # full size on a GPU

Without --model a tiny random-weight IP2P is built (its edits are noise-like; only timings and the scenes'
reconstruction quality are meaningful then).
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import tyro

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import markdown_table, resolve_bench_device, run_record  # noqa: E402

from splat2splat.configs import config_to_dict  # noqa: E402
from splat2splat.data.demo import DemoConfig, write_demo_scene  # noqa: E402
from splat2splat.data.readers import load_dataset  # noqa: E402
from splat2splat.edit.idu import IterativeDatasetUpdate  # noqa: E402
from splat2splat.edit.ip2p import InstructPix2PixEditor  # noqa: E402
from splat2splat.edit.presets import PRESETS, preset  # noqa: E402
from splat2splat.gaussians.backend import GaussianConfig  # noqa: E402
from splat2splat.losses import PhotometricLoss  # noqa: E402
from splat2splat.nerf.backend import NerfConfig  # noqa: E402
from splat2splat.testing.cpu_settings import NERF_CPU_DEMO_SETTINGS  # noqa: E402
from splat2splat.io import write_json  # noqa: E402
from splat2splat.runner import run_loop  # noqa: E402
from splat2splat.backends import make_backend, reconstruction_loss  # noqa: E402
from splat2splat.training import TrainLoop  # noqa: E402



@dataclass
class BenchBackends:
    """Time per IDU cycle and reconstruction quality of both scene backends, in one run."""

    output: Path = Path("outputs/bench_backends.json")
    """JSON file for the results (with machine, versions, date and command)."""
    model: Path | None = None
    """InstructPix2Pix folder; default: a tiny random-weight model built in a temp folder."""
    preset: Literal[tuple(PRESETS)] = "in2n-tiny"  # type: ignore[valid-type]
    """Editing preset for both backends (its LPIPS term needs the backbone weights when > 0)."""
    editor_dtype: Literal["auto", "float32", "float16", "bfloat16"] = "float32"
    """Editor precision (float32 by default: half precision is slow on CPUs)."""
    image_size: int = 64
    """Demo image size in pixels."""
    views: int = 40
    """Demo views (every 8th held out)."""
    gaussian_init_steps: int = 500
    """Initial training steps of the Gaussian scene (one whole image per step)."""
    nerf_init_steps: int = 300
    """Initial training steps of the NeRF (a batch of rays per step)."""
    nerf_cpu_settings: bool = True
    """Use the CPU-sized NeRF (512 rays, 64 samples, small planes); off: in2n/nerfacto-sized defaults."""
    cycles: int = 5
    """IDU cycles timed per backend."""
    edit_rate: int = 10
    """Training steps per cycle (one edit each)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device of scenes and editor."""
    markdown: bool = True
    """Print the results as a markdown table for docs/BENCHMARKS.md."""


def run_backend(kind: str, dataset, editor, cfg: BenchBackends, device: torch.device) -> dict:
    gaussians = GaussianConfig(device=str(device))
    nerf = NerfConfig(**(NERF_CPU_DEMO_SETTINGS if cfg.nerf_cpu_settings else {}), device=str(device))
    torch.manual_seed(0)
    backend = make_backend(kind, dataset, gaussians if kind == "gaussian" else nerf)
    init_steps = cfg.gaussian_init_steps if kind == "gaussian" else cfg.nerf_init_steps
    loop = TrainLoop(dataset, backend, reconstruction_loss(kind))
    start = time.perf_counter()
    run_loop(loop, init_steps, lambda: None, 0, 0, f"{kind}: initial scene")
    init_seconds = time.perf_counter() - start
    reconstruction = loop.evaluate()

    idu_config = dataclasses.replace(preset(cfg.preset), edit_rate=cfg.edit_rate, edit_count=1)
    idu = IterativeDatasetUpdate(dataset, backend, editor, "make it look like autumn", idu_config,
                                 PhotometricLoss(idu_config.loss))
    start = time.perf_counter()
    run_loop(idu, cfg.cycles * cfg.edit_rate, lambda: None, 0, 0, f"{kind}: IDU")
    idu_seconds = time.perf_counter() - start
    dataset.reset_edits()
    return {
        "backend": kind, "init_steps": init_steps, "init_seconds": init_seconds,
        "heldout_psnr": reconstruction["psnr"], "heldout_ssim": reconstruction["ssim"],
        "cycle_seconds": idu_seconds / cfg.cycles,
        "cycle_split": {k: v / cfg.cycles for k, v in idu.timings().items()},
    }


def main(cfg: BenchBackends) -> dict:
    device = resolve_bench_device(cfg.device)
    with tempfile.TemporaryDirectory() as tmp:
        scene = write_demo_scene(Path(tmp) / "demo", DemoConfig(n_views=cfg.views, image_size=cfg.image_size))
        dataset = load_dataset(scene)
        model = cfg.model
        if model is None:
            from splat2splat.testing.tiny_ip2p import build_tiny_ip2p

            model = build_tiny_ip2p(Path(tmp) / "tiny-ip2p")
        editor_config = dataclasses.replace(preset(cfg.preset).editor, model=str(model), dtype=cfg.editor_dtype,
                                            device=str(device))
        editor = InstructPix2PixEditor.from_config(editor_config)
        rows = [run_backend(kind, dataset, editor, cfg, device) for kind in ("gaussian", "nerf")]
    result = {"record": run_record(device), "settings": config_to_dict(cfg),
              "model": "tiny random IP2P" if cfg.model is None else str(cfg.model), "results": rows}
    write_json(cfg.output, result)
    if cfg.markdown:
        headers = ["backend", "initial steps", "initial s", "held-out PSNR", "held-out SSIM", "s / IDU cycle",
                   "render", "edit", "train"]
        table = [[r["backend"], r["init_steps"], f"{r['init_seconds']:.1f}", f"{r['heldout_psnr']:.2f}",
                  f"{r['heldout_ssim']:.3f}", f"{r['cycle_seconds']:.2f}", f"{r['cycle_split']['render']:.2f}",
                  f"{r['cycle_split']['edit']:.2f}", f"{r['cycle_split']['train']:.2f}"] for r in rows]
        print(markdown_table(headers, table))
    return result


if __name__ == "__main__":
    main(tyro.cli(BenchBackends))
