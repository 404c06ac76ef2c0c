"""`splat2splat` command line: `demo` writes the bundled scene, `train` fits and exports a Gaussian scene."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Union

import tyro
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from splat2splat.data.demo import DemoConfig, write_demo_scene
from splat2splat.errors import InputError
from splat2splat.gaussians.backend import GaussianConfig


@dataclass
class Demo:
    """Write the bundled offline demo scene (nerfstudio format)."""

    output: Path = Path("demo_scene")
    """Folder to write the scene into."""
    scene: DemoConfig = field(default_factory=DemoConfig)


@dataclass
class Train:
    """Train a Gaussian scene on posed images, evaluate held-out PSNR and export PLY + .splat."""

    data: Path
    """Dataset folder (nerfstudio transforms.json, COLMAP sparse model or Blender transforms_*.json)."""
    output: Path = Path("outputs/train")
    """Run folder for the checkpoint, exports and metrics."""
    steps: int = 1000
    """Optimisation steps."""
    downscale: int = 1
    """Image downscale factor."""
    gaussians: GaussianConfig = field(default_factory=GaussianConfig)


def run_demo(cmd: Demo) -> None:
    path = write_demo_scene(cmd.output, cmd.scene)
    print(f"demo scene written to {path}")


def run_train(cmd: Train) -> None:
    from splat2splat.data.readers import load_dataset
    from splat2splat.gaussians.backend import GaussianBackend
    from splat2splat.io import save_torch, write_json
    from splat2splat.losses import LossWeights, PhotometricLoss, psnr

    dataset = load_dataset(cmd.data, downscale=cmd.downscale)
    backend = GaussianBackend.from_dataset(dataset, cmd.gaussians)
    loss_fn = PhotometricLoss(LossWeights())
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns) as progress:
        task = progress.add_task("train", total=cmd.steps, info="")
        for _ in range(cmd.steps):
            stats = backend.train_step(dataset, loss_fn)
            progress.update(task, advance=1, info=f"loss {stats['loss']:.4f} N {int(stats['num_gaussians'])}")
    renders = backend.render(dataset.eval_cameras)
    scores = [psnr(r, dataset.originals[i]) for r, i in zip(renders, dataset.eval_indices)]
    metrics = {"steps": cmd.steps, "eval_psnr": sum(scores) / max(1, len(scores)), "num_gaussians": len(backend.splats["means"])}
    save_torch(cmd.output / "checkpoint.pt", {"backend": backend.state_dict(), "data": str(cmd.data)})
    files = backend.export(cmd.output, dataset)
    write_json(cmd.output / "metrics.json", metrics)
    print(f"eval PSNR {metrics['eval_psnr']:.2f} dB; wrote {', '.join(str(f) for f in files)}")


def entrypoint() -> None:
    command = tyro.cli(Union[Annotated[Demo, tyro.conf.subcommand("demo")], Annotated[Train, tyro.conf.subcommand("train")]])
    try:
        run_demo(command) if isinstance(command, Demo) else run_train(command)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    entrypoint()
