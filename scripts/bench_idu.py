"""Edit throughput of the IDU loop: serial vs batched vs pipelined edits, the same edit in each.

Every mode runs the same in2n-tiny schedule (same steps, same number of edits) from the same unedited demo
scene; only ``edit_batch`` (k views per editor batch, every k * edit_rate steps) and ``edit_lag`` (the edit of
step s lands after step s + L, edited in a thread meanwhile) differ. Two runs per mode:

* timing, with the tiny random-weight InstructPix2Pix (the real editor's code path; its edits are noise):
  wall time, edits per second, the trainer's idle time (serial: every edit; pipelined: waiting for late
  edits) and the editor's idle time (wall time minus the time it spent editing);
* fidelity, with the oracle editor (splat2splat.testing.oracle): PSNR of the held-out renders to the known
  target scene (as scripts/bench_fidelity.py), to show that batching and lag do not cost fidelity.

On a CPU the trainer and the editor share the same cores, so the overlap of pipelining cannot pay off there;
the GPU numbers (editor and rasterizer on one GPU, or on several) are what this is for.

    python scripts/bench_idu.py                      # CPU, 32-px demo, a few minutes
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
from bench_fidelity import BenchFidelity, Scenes, prepare, score  # noqa: E402

from splat2splat.configs import config_to_dict  # noqa: E402
from splat2splat.edit.idu import IterativeDatasetUpdate  # noqa: E402
from splat2splat.edit.ip2p import IP2PConfig, InstructPix2PixEditor  # noqa: E402
from splat2splat.edit.presets import IDUConfig, preset  # noqa: E402
from splat2splat.gaussians.backend import GaussianBackend  # noqa: E402
from splat2splat.io import write_json  # noqa: E402
from splat2splat.losses import PhotometricLoss  # noqa: E402
from splat2splat.runner import run_loop  # noqa: E402
from splat2splat.testing.oracle import OracleEditor  # noqa: E402
from splat2splat.testing.tiny_ip2p import build_tiny_ip2p  # noqa: E402


@dataclass
class BenchIDU:
    """Serial vs batched vs pipelined editing: wall time, edits/s, idle time of trainer and editor, fidelity."""

    output: Path = Path("outputs/bench_idu.json")
    """JSON file for the results (with machine, versions, date and command)."""
    modes: tuple[str, ...] = ("serial", "batch4", "lag10", "batch4-lag10")
    """Modes: 'serial', 'batchK' (edit_batch K), 'lagL' (edit_lag L), 'batchK-lagL' (both)."""
    image_size: int = 32
    """Demo image size in pixels."""
    views: int = 16
    """Demo views (every 8th held out)."""
    step_scale: int = 250
    """bench_fidelity's scale: the 30000-step initial scene and in2n-tiny's 30000 edit steps divided by this
    (250: 120 steps each, 12 edits)."""
    edit_rate: int = 10
    """Steps between single-view edits (in2n's own value)."""
    diffusion_steps: int = 20
    """DDIM steps of every edit (in2n's 20)."""
    model: str | None = None
    """InstructPix2Pix of the timing pass and the editor options (hub id or folder, e.g. timbrooks/instruct-pix2pix
    on a GPU); default: the tiny random-weight model, built here."""
    dtype: Literal["float32", "float16", "bfloat16", "autocast"] = "float32"
    """Precision of the timing pass's editor (float16 on a GPU, as in2n-tiny)."""
    timing: bool = True
    """Run the timing pass with the tiny InstructPix2Pix."""
    fidelity: bool = True
    """Run the fidelity pass with the oracle editor."""
    editor_options: tuple[str, ...] = ()
    """Editor speed options to time one by one on the tiny model (median of `option_edits` edits of one
    view each, after one warm-up): 'default', 'channels_last', 'float16', 'bfloat16', 'batchK' (K views per
    edit_batch call, time per view)."""
    option_edits: int = 5
    """Timed edits per editor option."""
    threads: int | None = None
    """torch CPU threads (the CPU runs of docs/BENCHMARKS.md use 1: steadier on a shared machine)."""
    seed: int = 0
    """Seed of the demo scene's training and of every edit."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device of the scene and the editor."""


def mode_settings(mode: str, cfg: BenchIDU) -> IDUConfig:
    """in2n-tiny, scaled as bench_fidelity scales it, with the mode's batch and lag."""
    batch, lag = 1, 0
    for part in mode.split("-"):
        if part.startswith("batch"):
            batch = int(part[len("batch"):])
        elif part.startswith("lag"):
            lag = int(part[len("lag"):])
        elif part != "serial":
            raise SystemExit(f"unknown mode {mode!r}")
    settings = preset("in2n-tiny")
    return dataclasses.replace(settings, steps=settings.steps // cfg.step_scale, edit_rate=cfg.edit_rate,
                               edit_batch=batch, edit_lag=lag, seed=cfg.seed)


def run_mode(mode: str, cfg: BenchIDU, scenes: Scenes, editor, device: torch.device) -> tuple[dict, GaussianBackend]:
    scenes.dataset.reset_edits()
    backend = GaussianBackend.from_state_dict(scenes.gaussian_state, str(device))
    for group in backend.optimizers["sh0"].param_groups:  # as bench_fidelity: colours must move within the steps
        group["lr"] = 0.025
    backend.background = scenes.target_background.to(backend.background)
    settings = mode_settings(mode, cfg)
    loop = IterativeDatasetUpdate(scenes.dataset, backend, editor, "make it autumn", settings,
                                  PhotometricLoss(settings.loss))
    start = time.perf_counter()
    run_loop(loop, settings.steps, lambda: None, 0, 0, mode)
    wall = time.perf_counter() - start
    seconds = loop.timings()
    trainer_idle = seconds.get("edit_wait", seconds["edit"])  # serial: the trainer waits for every edit
    row = {"mode": mode, "edit_batch": settings.edit_batch, "edit_lag": settings.edit_lag, "steps": settings.steps,
           "edits": loop.edits_done, "wall_s": wall, "edits_per_s": loop.edits_done / wall,
           "trainer_idle_s": trainer_idle, "editor_idle_s": wall - seconds["edit"], "seconds": seconds}
    return row, backend


def time_editor_option(option: str, cfg: BenchIDU, model: Path, device: torch.device) -> dict:
    """Median seconds per edited view of the tiny editor with one speed option."""
    from splat2splat.edit.ip2p import EditRequest

    settings = IP2PConfig(model=str(model), dtype=cfg.dtype, device=str(device), diffusion_steps=cfg.diffusion_steps)
    batch = int(option[len("batch"):]) if option.startswith("batch") else 1
    if option == "channels_last":
        settings.channels_last = True
    elif option in ("float16", "bfloat16"):
        settings.dtype = option
    elif option != "default" and batch == 1:
        raise SystemExit(f"unknown editor option {option!r}")
    editor = InstructPix2PixEditor.from_config(settings)
    generator = torch.Generator().manual_seed(cfg.seed)
    images = [torch.rand(cfg.image_size, cfg.image_size, 3, generator=generator) for _ in range(2)]
    requests = [EditRequest(images[0], images[1], "make it autumn", (0.02, 0.98), generator) for _ in range(batch)]
    times = []
    for repeat in range(cfg.option_edits + 1):
        start = time.perf_counter()
        if batch > 1:
            editor.edit_batch(requests)
        else:
            editor.edit(images[0], images[1], "make it autumn", (0.02, 0.98), generator)
        if repeat:  # the first call warms up
            times.append((time.perf_counter() - start) / batch)
    return {"option": option, "seconds_per_view": sorted(times)[len(times) // 2], "edits": len(times)}


def main(cfg: BenchIDU) -> dict:
    device = resolve_bench_device(cfg.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    oracle = OracleEditor()
    fidelity_cfg = BenchFidelity(image_size=cfg.image_size, views=cfg.views, step_scale=cfg.step_scale,
                                 methods=("in2n-tiny",), seed=cfg.seed, device=cfg.device)
    rows = {mode: {"mode": mode} for mode in cfg.modes}
    options = []
    with tempfile.TemporaryDirectory() as tmp:
        model = cfg.model or build_tiny_ip2p(Path(tmp) / "tiny-ip2p", seed=0)
        options = [time_editor_option(option, cfg, model, device) for option in cfg.editor_options]
        scenes = prepare(fidelity_cfg, oracle, Path(tmp) / "demo", device) if cfg.timing or cfg.fidelity else None
        if cfg.timing:
            ip2p = InstructPix2PixEditor.from_config(IP2PConfig(model=str(model), dtype=cfg.dtype, device=str(device),
                                                                diffusion_steps=cfg.diffusion_steps))
            for mode in cfg.modes:
                rows[mode].update(run_mode(mode, cfg, scenes, ip2p, device)[0])
        if cfg.fidelity:
            for mode in cfg.modes:
                row, backend = run_mode(mode, cfg, scenes, oracle, device)
                rows[mode].update({"oracle_edits": row["edits"], "oracle_wall_s": row["wall_s"], **score(backend, scenes)})
    if not (cfg.timing or cfg.fidelity):
        rows = {}
    result = {"record": run_record(device), "settings": config_to_dict(cfg), "results": list(rows.values()),
              "editor_options": options}
    write_json(cfg.output, result)
    headers = ["mode", "edit batch", "edit lag", "steps", "edits", "wall s", "edits/s", "trainer idle s",
               "editor idle s", "oracle PSNR to target", "oracle PSNR to unedited"]

    def cell(row, key, fmt):
        return format(row[key], fmt) if key in row else "-"

    print(markdown_table(headers, [[r["mode"], cell(r, "edit_batch", "d"), cell(r, "edit_lag", "d"),
                                    cell(r, "steps", "d"), cell(r, "edits", "d"), cell(r, "wall_s", ".1f"),
                                    cell(r, "edits_per_s", ".3f"), cell(r, "trainer_idle_s", ".1f"),
                                    cell(r, "editor_idle_s", ".1f"), cell(r, "psnr_to_target", ".2f"),
                                    cell(r, "psnr_to_unedited", ".2f")] for r in rows.values()]))
    if options:
        print(markdown_table(["editor option", "s per view (median)", "edits timed"],
                             [[o["option"], f"{o['seconds_per_view']:.3f}", o["edits"]] for o in options]))
    return result


if __name__ == "__main__":
    main(tyro.cli(BenchIDU))
