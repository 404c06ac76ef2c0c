"""Time per stage of ``splat2splat process`` on the CPU, for several frame counts and image sizes.

The frames are renders of a noise-textured scene (:func:`splat2splat.testing.sfm_scene.render_benchmark_view`)
from the demo's two camera orbits, written once per (count, size) into ``--cache`` and processed as a photo
folder with the given matching (sequential is what a video gets). Prints one markdown row per run, with the
registered views, points and reprojection error, and writes them all to ``--output`` (JSON) with the machine's
load (and the machine, versions and command: ``bench_common.run_record``). Example (the rows in docs/BENCHMARKS.md)::

    python scripts/bench_process.py --runs 40x512 150x512 40x1080 --matching sequential
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro
from bench_common import run_record

from splat2splat.io import save_image, write_json


@dataclass
class BenchProcess:
    runs: tuple[str, ...] = ("40x512", "150x512", "300x512", "40x1080", "150x1080", "300x1080")
    """FRAMESxSIZE: number of views and their width = height in pixels."""
    matching: str = "sequential"
    """--matching of process (auto, exhaustive, sequential)."""
    max_features: int = 8192
    """--max-features of process (its default)."""
    cache: Path = Path(tempfile.gettempdir()) / "splat2splat-bench-process"
    """Where the rendered frames are kept between runs."""
    output: Path = Path("outputs/bench_process.json")


def frames_folder(cache: Path, count: int, size: int) -> Path:
    from splat2splat.data.demo import demo_cameras
    from splat2splat.testing.sfm_scene import render_benchmark_view

    folder = cache / f"{count}x{size}"
    cameras = demo_cameras(count, size)
    for i in range(count):
        path = folder / f"view_{i:04d}.png"
        if not path.exists():
            save_image(path, render_benchmark_view(cameras, i))
    return folder


def main(options: BenchProcess) -> None:
    from splat2splat.sfm.process import ProcessConfig, process

    record = run_record(torch.device("cpu"))
    rows = []
    for run in options.runs:
        count, size = (int(v) for v in run.split("x"))
        photos = frames_folder(options.cache, count, size)
        output = Path(tempfile.mkdtemp(prefix="bench-process-")) / "dataset"
        load_before = os.getloadavg()[0]
        start, cpu_start = time.perf_counter(), sum(os.times()[:2])
        try:
            result = process(ProcessConfig(photos, output, matching=options.matching,
                                           max_features=options.max_features))
        finally:
            shutil.rmtree(output.parent)
        total, cpu = time.perf_counter() - start, sum(os.times()[:2]) - cpu_start
        row = {"frames": count, "size": size, "matching": result["matching"], "registered": result["registered"],
               "points": result["points"], "reprojection_error_px": result["reprojection_error_px"],
               "seconds": result["seconds"], "total_seconds": round(total, 1), "cpu_seconds": round(cpu, 1),
               "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
        rows.append(row)
        s = row["seconds"]
        print(f"| {count} | {size} | {row['matching']} | {row['registered']}/{count} | {row['points']} | "
              f"{row['reprojection_error_px']:.2f} | {s['frames']:.1f} | {s['features']:.1f} | {s['matching']:.1f} | "
              f"{s['mapping']:.1f} | {s['undistortion']:.1f} | {s['dataset'] + s['report']:.1f} | {total:.0f} | "
              f"{row['load_average_1min'][0]:.1f}-{row['load_average_1min'][1]:.1f} |", flush=True)
        write_json(options.output, {**record, "runs": rows})


if __name__ == "__main__":
    main(tyro.cli(BenchProcess))
