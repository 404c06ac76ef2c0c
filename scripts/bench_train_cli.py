"""``splat2splat train --gaussians.device cpu`` on the demo scene with the C++ and the PyTorch rasterizer, side by side.

What issue 26 measures its goal by: the command a user runs, its steps per second (steps over the seconds the run
spent in training steps, from the run's metrics.json: start-up, the final evaluation and the exports excluded), the
two rasterizers alternating in one run of this script (this machine's load drifts). Each training is a subprocess
with all cores, as a user's run.

    .venv/bin/python scripts/bench_train_cli.py --image-size 384 --rounds 2
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_common import cpu_run_start, markdown_table, write_json  # noqa: E402

from splat2splat.data.demo import DemoConfig, write_demo_scene  # noqa: E402


@dataclass
class BenchTrainCli:
    image_size: int = 384
    """Demo scene image size in pixels (40 views, 4,000 points)."""
    cpp_steps: int = 600
    """Training steps per C++ run."""
    torch_steps: int = 60
    """Training steps per PyTorch-reference run (~0.6 s each at 384 px on 2 cores)."""
    rounds: int = 2
    """C++ then PyTorch runs, this many times."""
    output: Path | None = None
    """Also write the results as JSON here."""


def steps_per_second(scene: Path, folder: Path, rasterizer: str, steps: int) -> float:
    """One ``splat2splat train`` run; its training steps over the seconds spent in them."""
    command = [sys.executable, "-m", "splat2splat", "train", "--data", str(scene), "--output", str(folder),
               "--steps", str(steps), "--eval-every", str(10 * steps), "--gaussians.device", "cpu",
               "--gaussians.rasterizer", rasterizer]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"splat2splat train ({rasterizer}) failed:\n{result.stderr[-2000:]}")
    metrics = json.loads((folder / "metrics.json").read_text())
    return metrics["steps"] / metrics["seconds"]["steps"]


def main(args: BenchTrainCli) -> dict:
    record, _ = cpu_run_start()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-cli-") as work:
        scene = write_demo_scene(Path(work) / "demo", DemoConfig(n_views=40, image_size=args.image_size))
        for index in range(args.rounds):
            row = {"round": index + 1}
            for rasterizer, steps in (("cpp", args.cpp_steps), ("torch", args.torch_steps)):
                row[rasterizer] = steps_per_second(scene, Path(work) / f"{rasterizer}-{index}", rasterizer, steps)
            rows.append(row)
            print(f"round {index + 1}: cpp {row['cpp']:.2f} steps/s, torch {row['torch']:.3f} steps/s, "
                  f"{row['cpp'] / row['torch']:.1f}x", flush=True)
    print(markdown_table(["round", "cpp steps/s", "torch steps/s", "cpp / torch"],
                         [[row["round"], f"{row['cpp']:.2f}", f"{row['torch']:.3f}", f"{row['cpp'] / row['torch']:.1f}x"]
                          for row in rows]))
    results = {"run": record, "image_size": args.image_size, "rows": rows}
    if args.output is not None:
        write_json(args.output, results)
    return results


if __name__ == "__main__":
    main(tyro.cli(BenchTrainCli))
