"""Speed and memory benchmarks: editor latency (ours vs diffusers' stock pipeline) and Gaussian training steps.

One command on the CPU or a GPU; it writes every result with its machine, device, versions, date and
command to a JSON file (``--output``), prints rich tables, and with ``--markdown`` the rows for
docs/BENCHMARKS.md. Examples::

    python scripts/bench_speed.py --device cpu                       # CPU defaults (a few minutes)
    python scripts/bench_speed.py --device cuda --random-model-folder models/ip2p-random   # GPU defaults
    python scripts/bench_speed.py --model models/ip2p --image-size 512 --steps 20        # a given model

Editor benchmark. Our :class:`~splat2splat.edit.ip2p.InstructPix2PixEditor` and diffusers'
``StableDiffusionInstructPix2PixPipeline`` run on the SAME modules (one copy of the weights, same device
and precision), the same images and size, in alternating order (ours, stock, stock, ours, ...), after one
warm-up call each; the table reports medians and the ratio ours / stock. The two do different things:
ours noises the render to a level T and denoises over [0, T] (Instruct-NeRF2NeRF's partial DDIM), the
stock pipeline denoises from pure noise with its own scheduler. The comparison is made fair by the number
of UNet evaluations: ours runs ``--steps`` DDIM steps (noise range fixed at (0.98, 0.98), so T = 980 leaves
room for every step) and the stock pipeline ``num_inference_steps = --steps``; both evaluate the UNet on a
batch of 3 (text, image, unconditional guidance branches) per step. The remaining differences: ours
VAE-encodes two images (render and original) and caches the prompt's text embeddings; the stock pipeline
encodes one image and re-encodes the prompt (and the empty negative prompt) on every call.

Training-step benchmark. One ``GaussianBackend.train_step`` (rasterize, L1 + D-SSIM loss, backward, Adam
step) on a synthetic scene: N random Gaussians in the cube [-1, 1]^3 seen by cameras on the demo scene's
orbits (2.4 units from the centre, so they are in front of and mostly inside every view), random target
images, SH degree 3 fully active (an edit starts from a trained scene), no densification (N stays fixed).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import tyro
from rich.console import Console
from rich.table import Table

from bench_editor_options import OPTION_HEADERS, bench_editor_options, option_table_rows
from bench_common import (DeviceChoice, Timing, markdown_table, measure_peak_memory, memory_method, mib, progress_bar,
                          record_summary_line, resolve_bench_device, run_record, summarize, time_call, write_json)
from splat2splat.data.cameras import Cameras
from splat2splat.data.dataset import Dataset
from splat2splat.data.demo import demo_cameras
from splat2splat.edit.ip2p import IP2PConfig, InstructPix2PixEditor, load_ip2p_models, resolve_dtype
from splat2splat.model_loading import quiet_model_loading
from splat2splat.gaussians.backend import GaussianBackend, GaussianConfig, StrategyConfig
from splat2splat.gaussians.model import num_sh_bases, rgb_to_sh
from splat2splat.losses import LossWeights, PhotometricLoss

EDIT_PROMPT = "make it look like autumn"
# A fixed noise level at the top of in2n's range (0.02, 0.98): T = 980 timesteps, enough for every step.
EDIT_NOISE_RANGE = (0.98, 0.98)
# Mean distance of a uniform random point to its 3 nearest neighbours, in units of the mean spacing
# (volume / N)^(1/3): the average of the 1st-3rd neighbour distances of a 3D Poisson process (0.554, 0.743,
# 0.868). It gives the initial sizes of init_splats without its O(N^2) neighbour search at a million points.
KNN3_DISTANCE_PER_SPACING = 0.72
DEVICE_DEFAULTS = {
    # CPU: a full-size edit at 256 px and 2 steps takes 1-2 min on a busy 2-core machine, so 128 px.
    "cpu": dict(image_size=128, steps=2, editor_repeats=3, gaussian_counts=(1_000, 5_000, 20_000),
                train_image_sizes=(64, 128)),
    "cuda": dict(image_size=512, steps=20, editor_repeats=10, gaussian_counts=(10_000, 100_000, 1_000_000),
                 train_image_sizes=(256, 512, 1024)),
}


@dataclass
class BenchSpeedConfig:
    """Editor latency and memory (ours vs diffusers' stock IP2P pipeline) and Gaussian training-step time."""

    device: DeviceChoice = "auto"
    """Where to run: cuda, cpu, or auto (cuda when a GPU is present)."""
    output: Path = Path("outputs/bench_speed.json")
    """JSON file for the results (with machine, device, versions, date and command)."""
    markdown: bool = False
    """Also print the result tables as Markdown rows for docs/BENCHMARKS.md."""
    skip_editor: bool = False
    """Skip the editor benchmark."""
    skip_train: bool = False
    """Skip the training-step benchmark."""
    editor_options: tuple[str, ...] = ()
    """Editor speed options to time against the default editor in the same run (scripts/bench_editor_options.py),
    each a '+'-joined list of channels-last, offload, compile=MODE, attention=KERNEL, dtype=DTYPE, batch=K, e.g.
    channels-last compile=inductor compile=inductor-cuda-graphs attention=flash dtype=bfloat16 batch=4. Uses
    the same model, --dtype, --image-size, --steps and --editor-repeats as the editor benchmark; every option
    keeps its own copy of the model loaded while they are timed in turns."""
    model: str | None = None
    """InstructPix2Pix to time: a local diffusers folder or a hub id in the HF cache. Without it a random-weight
    model is built (see --random-model)."""
    random_model: Literal["full-size", "tiny"] = "full-size"
    """Random model built when --model is not given: 'full-size' is the real IP2P architecture (SD 1.5 UNet and
    VAE, CLIP ViT-L/14; honest speed and memory, about 1 min to build), 'tiny' a toy for smoke tests."""
    random_model_folder: Path | None = None
    """Where to build the random model, reused on later runs when it already holds one (default: a temporary
    folder, deleted afterwards)."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Precision of both editors: auto is float16 on CUDA and float32 on the CPU."""
    image_size: int | None = None
    """Width and height of the edited images (default: 512 on CUDA, 128 on the CPU)."""
    steps: int | None = None
    """UNet evaluations per edit: our DDIM steps and the stock pipeline's num_inference_steps (default: 20 on
    CUDA, in2n's setting; 2 on the CPU)."""
    editor_repeats: int | None = None
    """Timed edits per editor, after one warm-up edit each; the median is reported (default: 10 on CUDA, 3 on
    the CPU)."""
    gaussian_counts: tuple[int, ...] | None = None
    """Scene sizes of the training-step benchmark (default: 10k 100k 1M on CUDA, 1k 5k 20k on the CPU)."""
    train_image_sizes: tuple[int, ...] | None = None
    """Square image sizes of the training-step benchmark (default: 256 512 1024 on CUDA, 64 128 on the CPU)."""
    train_steps: int = 5
    """Timed training steps per (scene size, image size); the median is reported."""
    train_warmup: int = 2
    """Untimed training steps before the timed ones (first-call allocations, kernel compilation)."""
    threads: int | None = None
    """CPU threads for torch (default: torch's own choice); recorded in the results."""
    seed: int = 0
    """Seed of the random images, Gaussians and edits."""


def with_device_defaults(config: BenchSpeedConfig, device: torch.device) -> BenchSpeedConfig:
    """Fill every option left at None with the default of ``device`` (cpu or cuda)."""
    defaults = DEVICE_DEFAULTS[device.type]
    values = asdict(config)
    for name, value in defaults.items():
        if values[name] is None:
            values[name] = value
    return BenchSpeedConfig(**values)


# -------------------------------------------------------------------------------------------- editor

def prepare_model_folder(config: BenchSpeedConfig, scratch: Path) -> tuple[str, str]:
    """(model to load, how it was obtained): --model, or a random model built (or found) in its folder."""
    if config.model is not None:
        return config.model, "given"
    from splat2splat.testing.tiny_ip2p import build_full_size_random_ip2p, build_tiny_ip2p

    folder = config.random_model_folder or scratch / f"random-{config.random_model}-ip2p"
    if not (folder / "model_index.json").exists():
        # Random weights stored at float16 (half the disk); the editors cast them to the benchmark's precision.
        with quiet_model_loading():  # the library's cast and save chatter says nothing about the benchmark
            if config.random_model == "tiny":
                build_tiny_ip2p(folder, seed=config.seed)
            else:
                build_full_size_random_ip2p(folder, seed=config.seed, dtype=torch.float16)
    return str(folder), f"random {config.random_model} (built with splat2splat.testing.tiny_ip2p)"


def stock_pipeline(models, model: str):
    """diffusers' stock IP2P pipeline on our editor's modules (the same weights) with the model's own scheduler."""
    import diffusers

    scheduler_config = diffusers.DDIMScheduler.load_config(model, subfolder="scheduler")
    scheduler = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
    pipeline = diffusers.StableDiffusionInstructPix2PixPipeline(
        vae=models.vae, text_encoder=models.text_encoder, tokenizer=models.tokenizer, unet=models.unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@dataclass
class EditorRunners:
    """One edit of the same images by each editor, as ``runner(seed)``; both share ``unet``."""

    ours: Callable[[int], torch.Tensor]
    stock: Callable[[int], torch.Tensor]
    dtype: torch.dtype
    unet: torch.nn.Module

    def run(self, name: str, seed: int) -> torch.Tensor:
        return getattr(self, name)(seed)


def editor_runners(config: BenchSpeedConfig, model: str, device: torch.device, render: torch.Tensor,
                   original: torch.Tensor) -> EditorRunners:
    editor_config = IP2PConfig(model=model, dtype=config.dtype, diffusion_steps=config.steps, device=str(device))
    models = load_ip2p_models(model, resolve_dtype(config.dtype, device))
    ours = InstructPix2PixEditor(models, editor_config)
    stock = stock_pipeline(models, model)
    render, original = render.to(device), original.to(device)
    stock_image = original.permute(2, 0, 1)[None]  # the stock pipeline edits (and is conditioned on) one image

    def run_ours(seed: int) -> torch.Tensor:
        return ours.edit(render, original, EDIT_PROMPT, EDIT_NOISE_RANGE, torch.Generator().manual_seed(seed))

    def run_stock(seed: int) -> torch.Tensor:
        return stock(EDIT_PROMPT, image=stock_image, num_inference_steps=config.steps, guidance_scale=7.5,
                     image_guidance_scale=1.5, generator=torch.Generator().manual_seed(seed), output_type="pt").images

    return EditorRunners(run_ours, run_stock, ours.dtype, models.unet)


def alternating_order(repeat: int) -> tuple[str, str]:
    """ours-stock, stock-ours, ...: neither editor always runs on the warmer (or cooler) machine."""
    return ("ours", "stock") if repeat % 2 == 0 else ("stock", "ours")


def bench_editor(config: BenchSpeedConfig, device: torch.device, progress) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(config.seed)
    size = config.image_size
    render, original = torch.rand(size, size, 3, generator=generator), torch.rand(size, size, 3, generator=generator)
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as scratch:
        model, model_source = prepare_model_folder(config, Path(scratch))
        task = progress.add_task("editor: loading", total=2 + 2 * config.editor_repeats)
        runners = editor_runners(config, model, device, render, original)
        timings: dict[str, list[Timing]] = {"ours": [], "stock": []}
        peak_bytes: dict[str, int] = {"ours": 0, "stock": 0}
        for name in ("ours", "stock"):  # warm-up: first-call allocations, lazy initialisation, autotuning
            progress.update(task, description=f"editor: warm-up {name}")
            time_call(lambda: runners.run(name, config.seed), device)
            progress.advance(task)
        for repeat in range(config.editor_repeats):
            for name in alternating_order(repeat):
                progress.update(task, description=f"editor: {name} {repeat + 1}/{config.editor_repeats}")
                with measure_peak_memory(device) as peak:
                    _, timing = time_call(lambda: runners.run(name, config.seed + 1 + repeat), device)
                timings[name].append(timing)
                peak_bytes[name] = max(peak_bytes[name], peak.bytes)
                progress.advance(task)
    summaries = {name: summarize(values) for name, values in timings.items()}
    return {
        "model": model, "model_source": model_source, "image_size": size, "unet_evaluations_per_edit": config.steps,
        "unet_batch": 3, "dtype": str(runners.dtype).removeprefix("torch."), "noise_range_ours": list(EDIT_NOISE_RANGE),
        "repeats": config.editor_repeats, "memory_method": memory_method(device),
        "ours": {**asdict(summaries["ours"]), "peak_memory_bytes": peak_bytes["ours"]},
        "stock": {**asdict(summaries["stock"]), "peak_memory_bytes": peak_bytes["stock"]},
        "latency_ratio_ours_over_stock": summaries["ours"].median_s / summaries["stock"].median_s,
        "cpu_time_ratio_ours_over_stock": summaries["ours"].median_cpu_s / summaries["stock"].median_cpu_s,
    }


def bench_options(config: BenchSpeedConfig, device: torch.device, progress) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as scratch:
        model, model_source = prepare_model_folder(config, Path(scratch))
        base = IP2PConfig(model=model, dtype=config.dtype, diffusion_steps=config.steps, device=str(device))
        result = bench_editor_options(config.editor_options, base, config.image_size, config.editor_repeats,
                                      config.seed, EDIT_PROMPT, EDIT_NOISE_RANGE, progress)
    return {**result, "model": model, "model_source": model_source}


# --------------------------------------------------------------------------------------- train step

def synthetic_dataset(image_size: int, views: int, generator: torch.Generator) -> Dataset:
    """The demo scene's camera orbits with random target images (content does not change the cost)."""
    cameras: Cameras = demo_cameras(views, image_size)
    images = tuple(torch.rand(image_size, image_size, 3, generator=generator) for _ in range(views))
    return Dataset(cameras=cameras, image_names=[f"view_{i:03d}" for i in range(views)], originals=images,
                   train_indices=list(range(views)), eval_indices=[])


def random_splats(count: int, sh_degree: int, generator: torch.Generator) -> torch.nn.ParameterDict:
    """``init_splats`` of ``count`` uniform random points in [-1, 1]^3, with the expected 3-nearest-neighbour
    size instead of the exact one (whose brute-force search is quadratic in ``count``)."""
    extent = 1.0
    means = (torch.rand(count, 3, generator=generator) * 2 - 1) * extent
    spacing = ((2 * extent) ** 3 / count) ** (1 / 3)
    log_scale = math.log(KNN3_DISTANCE_PER_SPACING * spacing)
    colors = torch.rand(count, 3, generator=generator)
    return torch.nn.ParameterDict({
        "means": torch.nn.Parameter(means),
        "scales": torch.nn.Parameter(torch.full((count, 3), log_scale)),
        "quats": torch.nn.Parameter(torch.cat([torch.ones(count, 1), torch.zeros(count, 3)], -1)),
        "opacities": torch.nn.Parameter(torch.logit(torch.full((count,), GaussianConfig.init_opacity))),
        "sh0": torch.nn.Parameter(rgb_to_sh(colors)[:, None, :]),
        "shN": torch.nn.Parameter(torch.zeros(count, num_sh_bases(sh_degree) - 1, 3)),
    })


def training_backend(count: int, device: torch.device, seed: int) -> GaussianBackend:
    """A backend over random Gaussians, with every SH degree active and no densification."""
    config = GaussianConfig(sh_degree=3, sh_degree_interval=1, device=str(device), seed=seed,
                            strategy=StrategyConfig(kind="none"))
    backend = GaussianBackend(random_splats(count, config.sh_degree, torch.Generator().manual_seed(seed)), config,
                              background=(1.0, 1.0, 1.0))
    backend.step = config.sh_degree * config.sh_degree_interval  # where the last SH degree switches on
    return backend


def bench_train_step(config: BenchSpeedConfig, device: torch.device, progress) -> dict[str, Any]:
    loss = PhotometricLoss(LossWeights())  # in2n's Gaussian counterpart: 0.8 L1 + 0.2 D-SSIM
    cases = [(count, size) for count in config.gaussian_counts for size in config.train_image_sizes]
    task = progress.add_task("train step", total=len(cases) * (config.train_warmup + config.train_steps))
    rows = []
    for count, size in cases:
        progress.update(task, description=f"train step: {count:,} Gaussians, {size} px")
        dataset = synthetic_dataset(size, views=8, generator=torch.Generator().manual_seed(config.seed))
        backend = training_backend(count, device, config.seed)
        for _ in range(config.train_warmup):
            time_call(lambda: backend.train_step(dataset, loss), device)
            progress.advance(task)
        timings, peak_bytes = [], 0
        for _ in range(config.train_steps):
            with measure_peak_memory(device) as peak:
                _, timing = time_call(lambda: backend.train_step(dataset, loss), device)
            timings.append(timing)
            peak_bytes = max(peak_bytes, peak.bytes)
            progress.advance(task)
        rows.append({"gaussians": count, "image_size": size, **asdict(summarize(timings)),
                     "peak_memory_bytes": peak_bytes, "rasterizer": backend.rasterizer})
        del backend, dataset
    return {"memory_method": memory_method(device), "loss": "0.8 L1 + 0.2 D-SSIM", "sh_degree": 3,
            "strategy": "none", "rows": rows}


# ------------------------------------------------------------------------------------------- output

def editor_table_rows(editor: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for name, label in (("ours", "ours (in2n partial DDIM)"), ("stock", "diffusers StableDiffusionInstructPix2PixPipeline")):
        result = editor[name]
        rows.append([label, editor["image_size"], editor["unet_evaluations_per_edit"], editor["dtype"],
                     f"{result['median_s']:.3f}", f"{result['min_s']:.3f}-{result['max_s']:.3f}",
                     f"{result['median_cpu_s']:.3f}", mib(result["peak_memory_bytes"])])
    rows.append(["ratio ours / stock (medians)", "", "", "", f"{editor['latency_ratio_ours_over_stock']:.2f}", "",
                 f"{editor['cpu_time_ratio_ours_over_stock']:.2f}", ""])
    return rows


EDITOR_HEADERS = ["editor", "image px", "UNet evals", "dtype", "median wall s", "min-max wall s", "median CPU s",
                  "peak MiB"]
TRAIN_HEADERS = ["Gaussians", "image px", "median wall s/step", "min-max wall s", "median CPU s", "steps/s (wall)",
                 "peak MiB", "rasterizer"]


def train_table_rows(train: dict[str, Any]) -> list[list[Any]]:
    return [[f"{row['gaussians']:,}", row["image_size"], f"{row['median_s']:.4f}",
             f"{row['min_s']:.4f}-{row['max_s']:.4f}", f"{row['median_cpu_s']:.4f}", f"{1 / row['median_s']:.2f}",
             mib(row["peak_memory_bytes"]), row["rasterizer"]] for row in train["rows"]]


def rich_table(title: str, headers: list[str], rows: list[list[Any]]) -> Table:
    table = Table(title=title)
    for header in headers:
        table.add_column(header)
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    return table


def print_results(results: dict[str, Any], markdown: bool, console: Console) -> None:
    console.print(record_summary_line(results["record"]))
    sections = []
    if "editor" in results:
        sections.append(("Editor latency", EDITOR_HEADERS, editor_table_rows(results["editor"]),
                         results["editor"]["memory_method"]))
    if "editor_options" in results:
        options = results["editor_options"]
        sections.append((f"Editor speed options ({options['image_size']} px, {options['diffusion_steps']} steps, "
                         f"{options['dtype']})", OPTION_HEADERS, option_table_rows(options), options["memory_method"]))
    if "train_step" in results:
        sections.append(("Gaussian training step", TRAIN_HEADERS, train_table_rows(results["train_step"]),
                         results["train_step"]["memory_method"]))
    for title, headers, rows, method in sections:
        console.print(rich_table(title, headers, rows))
        console.print(f"peak memory: {method}")
    for refusal in results.get("editor_options", {}).get("refused", []):
        console.print(f"editor option {refusal['option']} refused: {refusal['refused']}", markup=False)
    if markdown:
        # soft_wrap: Markdown rows must stay on one line whatever the terminal width.
        console.print(f"\nCommand: `{results['record']['command']}`\n", markup=False, highlight=False, soft_wrap=True)
        for title, headers, rows, _ in sections:
            console.print(f"{title}\n\n{markdown_table(headers, rows)}\n", markup=False, highlight=False,
                          soft_wrap=True)


def main(config: BenchSpeedConfig, command: str | None = None, console: Console | None = None) -> dict[str, Any]:
    """Run the selected benchmarks, write ``config.output`` and return the results."""
    console = console or Console()
    device = resolve_bench_device(config.device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    config = with_device_defaults(config, device)
    results: dict[str, Any] = {"benchmark": "speed", "record": run_record(device, command),
                               "config": {**asdict(config), "output": str(config.output),
                                          "random_model_folder": str(config.random_model_folder or "")}}
    with progress_bar() as progress:
        if not config.skip_editor:
            results["editor"] = bench_editor(config, device, progress)
        if config.editor_options:
            results["editor_options"] = bench_options(config, device, progress)
        if not config.skip_train:
            results["train_step"] = bench_train_step(config, device, progress)
    write_json(config.output, results)
    print_results(results, config.markdown, console)
    console.print(f"wrote {config.output}")
    return results


if __name__ == "__main__":
    main(tyro.cli(BenchSpeedConfig))
