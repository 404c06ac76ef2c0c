"""Local versus global editing against a known answer: an instruction about ONE object of the demo scene.

The oracle (``splat2splat.testing.oracle``) is made local: inside the object's true region mask its edit moves
towards the warm colour transform of the original, outside it the edit moves towards the original itself; its
imperfections (noise-level blend with the render, per-view jitter, colour blobs painted anywhere in the image)
stay global, as InstructPix2Pix' stray changes do. The TARGET scene is the initial Gaussian scene with the
transform applied to the Gaussians of the region only (the box around the striped sphere).

Both methods run the same in2n-tiny schedule from the same scene with this editor:

* ``global``: the plain Iterative Dataset Update (every Gaussian trains on the edited images);
* ``local``: ``--region.box`` around the sphere (composited edits, Gaussians outside the box frozen).

Reported on the held-out views: PSNR to the target inside the region (pixels of the true mask) and PSNR to the
unedited scene's renders outside it, plus how many Gaussians outside the region changed at all.

    python scripts/bench_local.py                    # CPU, 64-px demo, 11 minutes on a loaded 2-core machine
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import markdown_table, resolve_bench_device, run_record  # noqa: E402

from splat2splat.backends import make_backend, reconstruction_loss  # noqa: E402
from splat2splat.configs import config_to_dict  # noqa: E402
from splat2splat.data.demo import DemoConfig, write_demo_scene  # noqa: E402
from splat2splat.data.readers import load_dataset  # noqa: E402
from splat2splat.edit.idu import IterativeDatasetUpdate  # noqa: E402
from splat2splat.edit.local import LocalIterativeDatasetUpdate  # noqa: E402
from splat2splat.edit.presets import preset  # noqa: E402
from splat2splat.edit.regions import BINARY_THRESHOLD, RegionConfig, project_gaussians, resolve_region  # noqa: E402
from splat2splat.gaussians.backend import GaussianBackend, GaussianConfig, StrategyConfig  # noqa: E402
from splat2splat.io import write_json  # noqa: E402
from splat2splat.losses import PhotometricLoss, psnr_from_mse  # noqa: E402
from splat2splat.runner import run_loop  # noqa: E402
from splat2splat.testing.oracle import ColorTransform, OracleEditor  # noqa: E402
from splat2splat.training import TrainLoop  # noqa: E402

SPHERE_BOX = (0.0, -0.1, -0.05, 0.7, 0.6, 0.65)  # the demo's striped sphere: centre (0.35, 0.25, 0.3), radius 0.3
IDENTITY = ColorTransform(((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)), (0.0, 0.0, 0.0))


@dataclass
class BenchLocal:
    """Local (--region.box) versus global editing of one object, with a region-only oracle."""

    output: Path = Path("outputs/bench_local.json")
    """JSON file for the results (with machine, versions, date and command)."""
    image_size: int = 64
    """Demo image size in pixels."""
    views: int = 24
    """Demo views (every 8th held out)."""
    init_steps: int = 600
    """Training steps of the unedited scene (schedules of a 30000-step training divided by 50)."""
    steps: int = 300
    """Editing steps of each method."""
    edit_rate: int = 3
    """Steps between single-view edits."""
    sh0_lr: float = 0.025
    """Colour learning rate while editing (as bench_fidelity: short runs need faster colours)."""
    seed: int = 0
    """Seed of the training and of every edit."""
    device: str = "auto"
    """Device of the scenes."""


@dataclass
class RegionOracle:
    """The oracle's edit inside ``masks[view]``, the identity-transform oracle's (imperfections only) outside;
    both draw the same random numbers, so blobs and noise level are one edit's."""

    masks: list[torch.Tensor]  # per view, soft, the true region
    originals: list[torch.Tensor]  # to recognise the view from the original the loop passes
    inside: OracleEditor = dataclasses.field(default_factory=OracleEditor)

    def edit(self, render, original, prompt, noise_range, generator):
        view = next(i for i, o in enumerate(self.originals) if torch.equal(o, original))
        state = generator.get_state()
        edited = self.inside.edit(render, original, prompt, noise_range, generator)
        replay = torch.Generator().set_state(state)
        outside = dataclasses.replace(self.inside, transform=IDENTITY).edit(render, original, prompt, noise_range,
                                                                              replay)
        weight = self.masks[view][..., None]
        return weight * edited + (1 - weight) * outside


def masked_psnr(render: torch.Tensor, target: torch.Tensor, where: torch.Tensor) -> float:
    return psnr_from_mse(float(((render - target) ** 2)[where].mean()))


def main(cfg: BenchLocal) -> dict:
    device = resolve_bench_device(cfg.device)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = load_dataset(write_demo_scene(Path(tmp) / "demo", DemoConfig(n_views=cfg.views,
                                                                               image_size=cfg.image_size)))
    k = 50
    gaussians = GaussianConfig(seed=cfg.seed, device=str(device), lr_decay_steps=30000 // k,
                               sh_degree_interval=max(1, 1000 // k), strategy=StrategyConfig(kind="none"))
    torch.manual_seed(cfg.seed)
    initial = make_backend("gaussian", dataset, gaussians)
    run_loop(TrainLoop(dataset, initial, reconstruction_loss("gaussian")), cfg.init_steps, lambda: None, 0, 0,
             "unedited scene")
    state = initial.state_dict()
    region = resolve_region(RegionConfig(box=SPHERE_BOX), dataset, initial)
    editor = RegionOracle(region.masks, [dataset.original(i) for i in range(len(dataset))])

    target_splats = editor.inside.transform.apply_to_splats(initial.splats)
    for key in target_splats:  # the transform on the region's Gaussians only
        target_splats[key].data[~region.inside] = initial.splats[key].detach()[~region.inside]
    target = GaussianBackend(target_splats, gaussians, tuple(initial.background.tolist()))
    target.step = initial.step
    eval_cameras = dataset.eval_cameras
    targets, unedited = target.render(eval_cameras), initial.render(eval_cameras)
    true_masks = [m >= BINARY_THRESHOLD for m in project_gaussians(initial, dataset, region.inside)]
    eval_masks = [true_masks[i] for i in dataset.eval_indices]

    rows = []
    for method in ("global", "local"):
        dataset.reset_edits()
        backend = GaussianBackend.from_state_dict(state, str(device))
        for group in backend.optimizers["sh0"].param_groups:
            group["lr"] = cfg.sh0_lr
        settings = dataclasses.replace(preset("in2n-tiny"), steps=cfg.steps, edit_rate=cfg.edit_rate, seed=cfg.seed,
                                       density_control="off")
        loss = PhotometricLoss(settings.loss)
        start = time.perf_counter()
        if method == "local":
            backend.freeze(~region.inside)
            loop = LocalIterativeDatasetUpdate(dataset, backend, editor, "oracle", settings, loss,
                                               masks=region.masks, feather=RegionConfig().feather)
        else:
            loop = IterativeDatasetUpdate(dataset, backend, editor, "oracle", settings, loss)
        run_loop(loop, settings.steps, lambda: None, 0, 0, method)
        seconds = time.perf_counter() - start
        renders = backend.render(eval_cameras)
        outside_rows = ~region.inside.to(backend.splats["means"].device)
        changed = torch.zeros(int(outside_rows.sum()), dtype=torch.bool)
        for key in backend.splats:
            diff = backend.splats[key].detach()[outside_rows] != initial.splats[key].detach()[outside_rows]
            changed |= diff.reshape(len(changed), -1).any(dim=-1).cpu()
        rows.append({
            "method": method, "steps": settings.steps, "edits": loop.edits_done, "seconds": seconds,
            "psnr_inside_to_target": sum(masked_psnr(r, t, m) for r, t, m in zip(renders, targets, eval_masks))
            / len(renders),
            "psnr_outside_to_unedited": sum(masked_psnr(r, u, ~m) for r, u, m in zip(renders, unedited, eval_masks))
            / len(renders),
            "outside_gaussians_changed": int(changed.sum()), "outside_gaussians": int(outside_rows.sum()),
        })
    baseline = {"psnr_inside_unedited_to_target": sum(masked_psnr(u, t, m) for u, t, m in
                                                      zip(unedited, targets, eval_masks)) / len(unedited)}
    result = {"record": run_record(device), "settings": config_to_dict(cfg), "region_box": list(SPHERE_BOX),
              **baseline, "results": rows}
    write_json(cfg.output, result)
    headers = ["method", "steps", "edits", "PSNR inside to target", "PSNR outside to unedited",
               "outside Gaussians changed", "s"]
    print(markdown_table(headers, [[r["method"], r["steps"], r["edits"], f"{r['psnr_inside_to_target']:.2f}",
                                    f"{r['psnr_outside_to_unedited']:.2f}",
                                    f"{r['outside_gaussians_changed']} / {r['outside_gaussians']}",
                                    f"{r['seconds']:.1f}"] for r in rows]))
    print(f"unedited scene inside the region vs target: {baseline['psnr_inside_unedited_to_target']:.2f} dB")
    return result


if __name__ == "__main__":
    main(tyro.cli(BenchLocal))
