"""The first GPU run: every check that needs a CUDA device, in one command that fits a short GPU lease.

Run through ``scripts/gpu_check.sh`` (which installs the carried wheels first); on its own::

    python scripts/gpu_check.py --output $OUT                # on the GPU machine (about 8 minutes)
    python scripts/gpu_check.py --output /tmp/dry --cpu-dry-run   # here: the same stages on the CPU, tiny sizes

Each stage runs in its own process with its own time limit (a hang or crash costs that stage only), writes
its result to ``<work>/<stage>.json`` and the orchestrator gathers them into ``<output>/gpu_check.json`` and a
PASS/FAIL summary. Stages after a failure still run. The first group runs side by side (the CUDA builds,
the CPU half of the parity training, building the full-size random editor: all CPU-bound, none timed);
the rest runs one at a time so timings and peak memory are undisturbed.

Stages: build_gsplat, build_ssim (JIT builds, timed, one TORCH_EXTENSIONS_DIR for every process),
train_cpu, make_editor_model, gpu_tests (``pytest -m gpu``: none may fail or skip), train_parity (the demo
scene on cuda vs cpu, same settings: held-out PSNR within 1 dB), train_mcmc, edit_tiny (the edit command end
to end with a tiny random InstructPix2Pix), resume_on_cpu (a CUDA run interrupted, resumed on the CPU),
bench_editor (scripts/bench_speed.py: full-size random editor vs diffusers' pipeline, 512 px fp16),
edit_memory (peak GPU memory of in2n-small IDU steps at 512 px), bench_train (100k / 1M Gaussians at
512 / 1024 px). With ``--cpu-dry-run`` everything runs on the CPU at tiny sizes and the CUDA-only parts are
skipped with their reason.

``--group throughput`` (issue 16, a second call on the warm machine; it reuses the check's gsplat build and
editor model), most needed first: throughput_tests (``pytest -m "gpu and throughput"``: compiled UNets and
attention kernels on the GPU), idu_throughput (bench_idu's serial / batched / pipelined / editor-process modes
at 512 px) and editor_options (bench_speed's editor speed options against the default editor).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPOSITORY = Path(__file__).resolve().parents[1]
SCRIPTS = REPOSITORY / "scripts"
PSNR_GAP_LIMIT_DB = 1.0
# The GPU tests that must be collected (and then pass): the acceptance list.
REQUIRED_GPU_TESTS = ("test_parity_with_gsplat_cuda", "test_cuda_train_step_densifies_with_fused_ssim_and_round_trips",
                      "test_fused_kernel_matches_reference")
REQUIRED_THROUGHPUT_TESTS = ("test_compiled_unets_edit_like_eager_on_the_gpu_in_the_editor_thread",
                             "test_attention_kernels_on_the_gpu_give_the_default_half_precision_edits")
EDIT_PROMPT = "make it look like autumn"


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU run and the CPU dry run."""

    device: str
    demo_views: int
    demo_image_size: int
    demo_points: int
    train_steps: int
    refine_start: int
    refine_every: int
    mcmc_cap: int
    edit_init_steps: int
    edit_steps: int
    editor_model: str  # random model of the editor benchmark and the memory stage: full-size or tiny
    editor_image_size: int
    editor_steps: int
    editor_repeats: int
    memory_image_size: int
    memory_steps: int
    train_counts: tuple[int, ...]
    train_image_sizes: tuple[int, ...]
    editor_options: tuple[str, ...]  # the throughput group's editor speed options (bench_speed --editor-options)
    idu_image_size: int  # the throughput group's bench_idu: image size, views, step scale, modes
    idu_views: int
    idu_step_scale: int
    idu_modes: tuple[str, ...]

    @property
    def editor_dtype(self) -> str:
        """The editors' precision: float16 on the GPU (in2n-small/tiny), float32 in the CPU dry run."""
        return "float16" if self.device == "cuda" else "float32"


GPU = Sizes(device="cuda", demo_views=40, demo_image_size=64, demo_points=3000, train_steps=300, refine_start=100,
            refine_every=50, mcmc_cap=6000, edit_init_steps=100, edit_steps=30, editor_model="full-size",
            editor_image_size=512, editor_steps=20, editor_repeats=3, memory_image_size=512, memory_steps=3,
            train_counts=(100_000, 1_000_000), train_image_sizes=(512, 1024),
            editor_options=("channels-last", "dtype=bfloat16", "attention=flash", "attention=efficient",
                            "attention=cudnn", "compile=inductor", "compile=inductor-cuda-graphs", "compile=cuda-graphs",
                            "batch=4", "offload"),
            idu_image_size=512, idu_views=16, idu_step_scale=250,
            idu_modes=("serial", "batch4", "lag10", "batch4-lag40", "procs2-lag10"))
DRY_RUN = Sizes(device="cpu", demo_views=12, demo_image_size=32, demo_points=600, train_steps=30, refine_start=10,
                refine_every=10, mcmc_cap=800, edit_init_steps=10, edit_steps=4, editor_model="tiny",
                editor_image_size=64, editor_steps=2, editor_repeats=1, memory_image_size=64, memory_steps=2,
                train_counts=(1_000, 2_000), train_image_sizes=(32, 64),
                editor_options=("channels-last", "attention=math", "batch=2"),
                idu_image_size=32, idu_views=8, idu_step_scale=500, idu_modes=("serial", "batch2", "procs2-lag4"))


class Skip(Exception):
    """A stage that cannot run in this mode (the dry run's CUDA-only parts); its message is the reason."""


class CheckFailed(Exception):
    """A stage ran and its result is wrong."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


# ------------------------------------------------------------------------------------------------ stages
# Each stage is ``fn(sizes, work) -> dict`` run in its own process; it raises Skip or CheckFailed (or crashes).

def stage_build_gsplat(sizes: Sizes, work: Path) -> dict:
    import torch

    from splat2splat.kernels.build import gsplat_cuda_available

    if not torch.cuda.is_available():
        require(not gsplat_cuda_available(), "gsplat reported usable without a CUDA device")
        raise Skip("needs CUDA: gsplat's kernels are only built on a GPU machine")
    started = time.perf_counter()
    available = gsplat_cuda_available()
    seconds = time.perf_counter() - started
    require(available, "gsplat's CUDA extension did not build (see the log)")
    return {"build_seconds": seconds}


def stage_build_ssim(sizes: Sizes, work: Path) -> dict:
    import torch

    from splat2splat.kernels.ssim import fused_ssim_extension

    if not torch.cuda.is_available():
        require(fused_ssim_extension() is None, "fused SSIM extension reported without a CUDA device")
        raise Skip("needs CUDA: the fused SSIM kernel is only built on a GPU machine")
    started = time.perf_counter()
    extension = fused_ssim_extension()
    seconds = time.perf_counter() - started
    require(extension is not None, "the fused SSIM extension did not build (see the log)")
    return {"build_seconds": seconds}


def demo_scene(sizes: Sizes, work: Path) -> Path:
    """The demo scene every training stage uses (written by the first stage that needs it)."""
    from splat2splat.data.demo import DemoConfig, write_demo_scene

    folder = work / "demo_scene"
    if not (folder / "transforms.json").exists():
        partial = work / f"demo_scene.partial-{os.getpid()}"
        write_demo_scene(partial, DemoConfig(n_views=sizes.demo_views, image_size=sizes.demo_image_size,
                                             n_points=sizes.demo_points))
        try:
            partial.rename(folder)
        except OSError:  # another stage wrote it first
            shutil.rmtree(partial, ignore_errors=True)
    return folder


def train_demo(sizes: Sizes, work: Path, device: str, name: str, **gaussian_options) -> dict:
    """The train command on the demo scene; returns its metrics (held-out PSNR/SSIM, steps, timings)."""
    from splat2splat.gaussians.backend import GaussianConfig, StrategyConfig
    from splat2splat.commands.train import TrainCommand, run as run_train

    options = {"refine_start": sizes.refine_start, "refine_every": sizes.refine_every, **gaussian_options}
    strategy = StrategyConfig(**options)
    output = work / name
    shutil.rmtree(output, ignore_errors=True)
    config = GaussianConfig(device=device, strategy=strategy)
    started = time.perf_counter()
    metrics = run_train(TrainCommand(data=demo_scene(sizes, work), output=output, steps=sizes.train_steps, eval_every=0,
                              checkpoint_every=0, scene=config))
    return {"device": device, "steps": metrics["steps"], "psnr": metrics["eval"]["psnr"],
            "ssim": metrics["eval"]["ssim"], "num_gaussians": metrics["num_gaussians"],
            "seconds": time.perf_counter() - started}


def stage_train_cpu(sizes: Sizes, work: Path) -> dict:
    result = train_demo(sizes, work, "cpu", "train_cpu")
    require(math.isfinite(result["psnr"]), "held-out PSNR is not finite")
    return result


def stage_train_parity(sizes: Sizes, work: Path) -> dict:
    import torch

    cpu_file = work / "train_cpu.json"
    require(cpu_file.exists(), "the CPU half (stage train_cpu) left no result")
    cpu = json.loads(cpu_file.read_text())
    require(cpu.get("status") == "PASS", f"the CPU half failed: {cpu.get('reason')}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    other = train_demo(sizes, work, device, f"train_{device}")
    gap = abs(other["psnr"] - cpu["result"]["psnr"])
    result = {"cpu": cpu["result"], device: other, "psnr_gap_db": gap, "limit_db": PSNR_GAP_LIMIT_DB}
    if device == "cpu":
        result["note"] = "dry run: both halves on the CPU"
    require(math.isfinite(gap) and gap < PSNR_GAP_LIMIT_DB,
            f"held-out PSNR {device} {other['psnr']:.2f} dB vs cpu {cpu['result']['psnr']:.2f} dB: gap {gap:.2f} dB")
    return result


def stage_train_mcmc(sizes: Sizes, work: Path) -> dict:
    result = train_demo(sizes, work, sizes.device, "train_mcmc", kind="mcmc", cap_max=sizes.mcmc_cap)
    require(math.isfinite(result["psnr"]), "held-out PSNR is not finite")
    require(result["num_gaussians"] <= sizes.mcmc_cap, f"{result['num_gaussians']} Gaussians exceed cap_max")
    if sizes.device == "cuda":  # a flat image of the mean colour scores about 9 dB on these views
        require(result["psnr"] > 15.0, f"MCMC reached only {result['psnr']:.2f} dB held-out PSNR")
    return result


def stage_edit_tiny(sizes: Sizes, work: Path) -> dict:
    from splat2splat.cli import entrypoint
    from splat2splat.testing.tiny_ip2p import build_tiny_ip2p
    from splat2splat.io import read_json

    model = build_tiny_ip2p(work / "tiny-ip2p", seed=0)
    output = work / "edit_tiny"
    shutil.rmtree(output, ignore_errors=True)
    entrypoint(["edit", "--preset", "in2n-tiny", "--data", str(demo_scene(sizes, work)), "--prompt", EDIT_PROMPT,
                "--output", str(output), "--model", str(model), "--device", sizes.device,
                "--init-steps", str(sizes.edit_init_steps), "--idu.steps", str(sizes.edit_steps),
                "--idu.edit-rate", "2", "--idu.editor.diffusion-steps", "3", "--checkpoint-every", "0",
                "--idu.editor.dtype", sizes.editor_dtype,
                "--eval-every", "0", "--turntable-frames", "4", "--video-format", "gif"])
    record = read_json(output / "run.json")
    require(record["steps"] == sizes.edit_steps and record["edits"] > 0, f"run.json says {record['steps']} steps, "
                                                                          f"{record['edits']} edits")
    require(all(math.isfinite(v) for v in record["metrics"].values()), f"metrics not finite: {record['metrics']}")
    require((output / "scene.ply").exists() and (output / "turntable.gif").exists(), "outputs missing")
    return {"device": sizes.device, "steps": record["steps"], "edits": record["edits"], "metrics": record["metrics"],
            "seconds": record["seconds"]}


def stage_resume_on_cpu(sizes: Sizes, work: Path) -> dict:
    """Train on the GPU, stop half-way as Ctrl-C would, resume the run in a process that sees no GPU."""
    from splat2splat.gaussians.backend import GaussianConfig, StrategyConfig
    from splat2splat.checkpoint import load_checkpoint_file
    from splat2splat.io import read_json
    from splat2splat.runner import Interrupted
    from splat2splat.commands.train import TrainCommand, run as run_train

    output = work / "resume"
    shutil.rmtree(output, ignore_errors=True)
    total, stop_at = sizes.train_steps // 2, sizes.train_steps // 4
    strategy = StrategyConfig(refine_start=sizes.refine_start // 4, refine_every=sizes.refine_every // 2)
    # device auto: the checkpoint records the choice, not the GPU, as a user's run would.
    command = TrainCommand(data=demo_scene(sizes, work), output=output, steps=total, eval_every=0, checkpoint_every=0,
                    scene=GaussianConfig(device="auto", strategy=strategy))

    def interrupt(step: int) -> None:
        if step == stop_at:
            os.kill(os.getpid(), signal.SIGINT)  # drive() finishes the step, saves and raises Interrupted

    try:
        run_train(command, on_step=interrupt)
        raise CheckFailed("the interrupt did not stop training")
    except Interrupted:
        pass
    saved = load_checkpoint_file(output / "checkpoint.pt")
    require(saved["backend_state"]["step"] == stop_at, f"checkpoint at step {saved['backend_state']['step']}")
    import torch

    trained_on = "cuda" if torch.cuda.is_available() else "cpu"
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    resumed = subprocess.run([sys.executable, "-m", "splat2splat.cli", "train", "--output", str(output), "--resume"],
                             env=environment, capture_output=True, text=True, timeout=600)
    print(resumed.stdout[-3000:], resumed.stderr[-3000:], sep="\n")
    require(resumed.returncode == 0, f"resume on the CPU exited {resumed.returncode}: {resumed.stderr[-300:]}")
    metrics = read_json(output / "metrics.json")
    require(metrics["steps"] == total and math.isfinite(metrics["eval"]["psnr"]), f"resumed run: {metrics['eval']}")
    return {"interrupted_at": stop_at, "resumed_to": metrics["steps"], "psnr": metrics["eval"]["psnr"],
            "num_gaussians": metrics["num_gaussians"], "first_half_device": trained_on, "second_half_device": "cpu"}


def stage_make_editor_model(sizes: Sizes, work: Path) -> dict:
    """The random-weight editor of the benchmark and the memory stage, built once (CPU work, ~1 min full-size)."""
    import torch

    from splat2splat.testing.tiny_ip2p import build_full_size_random_ip2p, build_tiny_ip2p

    folder = work / f"ip2p-{sizes.editor_model}"
    if (folder / "model_index.json").exists():  # built by an earlier run on this machine (same seed, same weights)
        return {"model": sizes.editor_model, "folder": str(folder), "reused": True}
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    if sizes.editor_model == "full-size":
        build_full_size_random_ip2p(folder, seed=0, dtype=torch.float16)
    else:
        build_tiny_ip2p(folder, seed=0)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return {"model": sizes.editor_model, "folder": str(folder), "bytes": size, "seconds": time.perf_counter() - started}


def editor_model_folder(sizes: Sizes, work: Path) -> Path:
    folder = work / f"ip2p-{sizes.editor_model}"
    require((folder / "model_index.json").exists(), "no editor model (stage make_editor_model failed)")
    return folder


def run_bench_speed(arguments: list[str]) -> dict:
    sys.path.insert(0, str(SCRIPTS))
    import bench_speed
    import tyro

    config = tyro.cli(bench_speed.BenchSpeedConfig, args=arguments)
    return bench_speed.main(config, command="python scripts/bench_speed.py " + " ".join(arguments))


def stage_bench_editor(sizes: Sizes, work: Path) -> dict:
    folder = editor_model_folder(sizes, work)
    results = run_bench_speed(["--device", sizes.device, "--skip-train", "--random-model", sizes.editor_model,
                               "--random-model-folder", str(folder), "--dtype", sizes.editor_dtype,
                               "--image-size", str(sizes.editor_image_size), "--steps", str(sizes.editor_steps),
                               "--editor-repeats", str(sizes.editor_repeats), "--output",
                               str(work / "bench_speed_editor.json")])
    editor = results["editor"]
    require(math.isfinite(editor["latency_ratio_ours_over_stock"]), "no latency ratio")
    return {"ours_median_s": editor["ours"]["median_s"], "stock_median_s": editor["stock"]["median_s"],
            "ratio_ours_over_stock": editor["latency_ratio_ours_over_stock"],
            "ours_peak_bytes": editor["ours"]["peak_memory_bytes"], "stock_peak_bytes": editor["stock"]["peak_memory_bytes"],
            "dtype": editor["dtype"], "image_size": editor["image_size"], "steps": editor["unet_evaluations_per_edit"],
            "json": "bench_speed_editor.json"}


def stage_editor_options(sizes: Sizes, work: Path) -> dict:
    """The editor's speed options against the default editor, in one run (issue 16: each option is kept only
    where this shows a gain)."""
    folder = editor_model_folder(sizes, work)
    results = run_bench_speed(["--device", sizes.device, "--skip-train", "--skip-editor", "--random-model-folder",
                               str(folder), "--random-model", sizes.editor_model, "--dtype", sizes.editor_dtype,
                               "--image-size", str(sizes.editor_image_size), "--steps", str(sizes.editor_steps),
                               "--editor-repeats", str(sizes.editor_repeats + 2), "--editor-options",
                               *sizes.editor_options, "--output", str(work / "bench_speed_options.json")])
    rows, refused = results["editor_options"]["rows"], results["editor_options"]["refused"]
    require(len(rows) + len(refused) == 1 + len(sizes.editor_options), "missing option rows")
    keep = ("option", "first_edit_s", "median_s_per_view", "speedup_over_default", "max_abs_difference", "held_bytes",
            "peak_bytes")
    return {"rows": [{k: row[k] for k in keep} for row in rows], "refused": refused, "json": "bench_speed_options.json"}


# in2n-small's and in2n-tiny's edit: 30000 steps with an edit every 10 (the in2n preset runs 15000).
IN2N_EDIT_STEPS = 30000


def stage_idu_throughput(sizes: Sizes, work: Path) -> dict:
    """scripts/bench_idu.py with the full-size random editor: serial vs batched vs pipelined vs an editor process
    (trainer and editor process share the GPU), the same edits each; and what that rate means for an
    in2n-length edit (a projection from the measured steps, labelled as one)."""
    sys.path.insert(0, str(SCRIPTS))
    import bench_idu

    folder = editor_model_folder(sizes, work)
    config = bench_idu.BenchIDU(output=work / "bench_idu.json", modes=sizes.idu_modes, image_size=sizes.idu_image_size,
                                views=sizes.idu_views, step_scale=sizes.idu_step_scale, model=str(folder),
                                dtype=sizes.editor_dtype, fidelity=False, device=sizes.device)
    rows = bench_idu.main(config)["results"]
    require(all(row["edits"] == rows[0]["edits"] > 0 for row in rows), "the modes made different numbers of edits")
    for row in rows:
        row["projected_in2n_length_min"] = row["wall_s"] / row["steps"] * IN2N_EDIT_STEPS / 60
    keep = ("mode", "processes", "steps", "edits", "wall_s", "edits_per_s", "trainer_idle_s", "editor_idle_s",
            "equals_single_process", "max_splat_difference", "projected_in2n_length_min")
    return {"rows": [{k: row[k] for k in keep if k in row} for row in rows], "image_size": sizes.idu_image_size,
            "editor": sizes.editor_model, "dtype": sizes.editor_dtype, "json": "bench_idu.json",
            "projection": f"wall_s / steps x {IN2N_EDIT_STEPS} steps (same edit rate), not a measured full run"}


def stage_edit_memory(sizes: Sizes, work: Path) -> dict:
    """Peak GPU memory of in2n-small IDU steps (fp16 editor, L1 + LPIPS) at 512 px, each step with an edit.

    LPIPS' ImageNet backbone cannot be downloaded on the GPU machine; a random backbone of the same network
    takes the same memory, and memory is all this stage measures.
    """
    import dataclasses

    import torch

    from splat2splat.data.demo import DemoConfig, write_demo_scene
    from splat2splat.data.readers import load_dataset
    from splat2splat.edit.idu import IterativeDatasetUpdate
    from splat2splat.edit.ip2p import InstructPix2PixEditor
    from splat2splat.edit.lpips_loss import load_lpips
    from splat2splat.edit.presets import preset
    from splat2splat.gaussians.backend import GaussianBackend, GaussianConfig, StrategyConfig
    from splat2splat.losses import PhotometricLoss

    scene = write_demo_scene(work / "memory_scene", DemoConfig(n_views=6, image_size=sizes.memory_image_size,
                                                               n_points=sizes.demo_points))
    dataset = load_dataset(scene)
    config = preset("in2n-small")
    config = dataclasses.replace(config, edit_rate=1, editor=dataclasses.replace(
        config.editor, model=str(editor_model_folder(sizes, work)), device=sizes.device,
        dtype=sizes.editor_dtype))
    backend = GaussianBackend.from_dataset(dataset, GaussianConfig(device=sizes.device,
                                                                   strategy=StrategyConfig(kind="none")))
    lpips = load_lpips(config.lpips_net, random_backbone=True)
    loss = PhotometricLoss(config.loss, lpips, config.lpips_patch_sampling())  # the preset's LPIPS patches
    idu = IterativeDatasetUpdate(dataset, backend, InstructPix2PixEditor.from_config(config.editor), EDIT_PROMPT,
                                 config, loss)
    idu.run_step()  # warm-up: loads the editor onto the device, first-call allocations
    if sizes.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(sizes.memory_steps):
        stats = idu.run_step()
    seconds = (time.perf_counter() - started) / sizes.memory_steps
    require(math.isfinite(stats["loss"]) and idu.edits_done == 1 + sizes.memory_steps, f"IDU steps gave {stats}")
    result = {"preset": "in2n-small", "image_size": sizes.memory_image_size, "editor": sizes.editor_model,
              "editor_dtype": config.editor.dtype, "lpips": f"{config.lpips_net} on {config.lpips_on} (random backbone, same memory)",
              "steps": sizes.memory_steps, "seconds_per_step_with_edit": seconds}
    if sizes.device != "cuda":
        result["peak_memory_bytes"] = None
        result["note"] = "dry run: steps ran on the CPU; GPU memory is measured on CUDA only"
        return result
    result["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
    result["peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
    return result


def stage_bench_train(sizes: Sizes, work: Path) -> dict:
    results = run_bench_speed(["--device", sizes.device, "--skip-editor", "--gaussian-counts",
                               *map(str, sizes.train_counts), "--train-image-sizes", *map(str, sizes.train_image_sizes),
                               "--train-steps", "3", "--train-warmup", "1", "--output", str(work / "bench_speed_train.json")])
    rows = results["train_step"]["rows"]
    require(len(rows) == len(sizes.train_counts) * len(sizes.train_image_sizes), "missing rows")
    return {"rows": [{k: row[k] for k in ("gaussians", "image_size", "median_s", "peak_memory_bytes", "rasterizer")}
                     for row in rows], "json": "bench_speed_train.json"}


def stage_gpu_tests(sizes: Sizes, work: Path) -> dict:
    return run_gpu_tests(work, "gpu and not throughput", "gpu-tests.xml", REQUIRED_GPU_TESTS)


def stage_throughput_tests(sizes: Sizes, work: Path) -> dict:
    """The editor speed options on the GPU: compiled UNets (CUDA graphs too) edit like eager from the editor
    thread, each attention kernel edits like PyTorch's choice or is refused in one line."""
    return run_gpu_tests(work, "gpu and throughput", "throughput-tests.xml", REQUIRED_THROUGHPUT_TESTS)


def run_gpu_tests(work: Path, marker: str, report_name: str, required: tuple[str, ...]) -> dict:
    """``pytest -m MARKER``: every required test collected; on a GPU none may fail, error or skip."""
    import torch

    report = work / report_name
    base = [sys.executable, "-m", "pytest", "-m", marker, "-p", "no:cacheprovider", "-q", str(REPOSITORY / "tests")]
    collected = subprocess.run([*base, "--collect-only"], capture_output=True, text=True, cwd=REPOSITORY)
    missing = [name for name in required if name not in collected.stdout]
    require(collected.returncode == 0 and not missing, f"pytest -m '{marker}' does not collect {missing}")
    if not torch.cuda.is_available():
        raise Skip("needs CUDA: the GPU tests were only collected "
                   f"({collected.stdout.count('::')} collected, every required one among them)")
    ran = subprocess.run([*base, "-rs", f"--junitxml={report}"], cwd=REPOSITORY)
    counts = junit_counts(report)
    require(ran.returncode == 0 and counts["failures"] == 0 and counts["errors"] == 0,
            f"GPU tests failed: {counts} (exit {ran.returncode})")
    require(counts["skipped"] == 0, f"{counts['skipped']} GPU tests skipped; none may skip on a GPU machine")
    require(counts["tests"] >= len(required), f"only {counts['tests']} GPU tests ran")
    return {**counts, "junit": report.name}


def junit_counts(report: Path) -> dict[str, int]:
    require(report.exists(), "pytest wrote no JUnit report")
    root = ElementTree.parse(report).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    return {key: sum(int(suite.get(key, 0)) for suite in suites) for key in ("tests", "failures", "errors", "skipped")}


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Sizes, Path], dict]
    timeout_s: int  # on the GPU machine; the dry run allows more (a slow, shared CPU)
    parallel: bool = False  # part of the first group, run side by side
    groups: tuple[str, ...] = ("check",)  # --group: the first GPU run ("check") or edit throughput ("throughput")


STAGES = (
    Stage("build_gsplat", stage_build_gsplat, 330, parallel=True, groups=("check", "throughput")),
    Stage("build_ssim", stage_build_ssim, 200, parallel=True),
    Stage("train_cpu", stage_train_cpu, 200, parallel=True),
    Stage("make_editor_model", stage_make_editor_model, 200, parallel=True, groups=("check", "throughput")),
    Stage("gpu_tests", stage_gpu_tests, 150),
    Stage("train_parity", stage_train_parity, 60),
    Stage("train_mcmc", stage_train_mcmc, 45),
    Stage("edit_tiny", stage_edit_tiny, 60),
    Stage("resume_on_cpu", stage_resume_on_cpu, 90),
    Stage("bench_editor", stage_bench_editor, 120),
    Stage("edit_memory", stage_edit_memory, 75),
    Stage("bench_train", stage_bench_train, 90),
    # Most needed first: what a short lease left after the check can still fit (see --budget).
    Stage("throughput_tests", stage_throughput_tests, 110, groups=("throughput",)),
    Stage("idu_throughput", stage_idu_throughput, 150, groups=("throughput",)),
    Stage("editor_options", stage_editor_options, 240, groups=("throughput",)),
)
STAGE_BY_NAME = {stage.name: stage for stage in STAGES}


# ------------------------------------------------------------------------------------------ one stage

def run_one_stage(name: str, work: Path, dry_run: bool) -> int:
    """The body of a stage's process: run it and write ``<work>/<name>.json``."""
    sizes = DRY_RUN if dry_run else GPU
    started = time.perf_counter()
    record: dict[str, Any] = {"stage": name}
    try:
        record.update(status="PASS", result=STAGE_BY_NAME[name].run(sizes, work))
    except Skip as skip:
        record.update(status="SKIP", reason=str(skip))
    except CheckFailed as failure:
        record.update(status="FAIL", reason=str(failure))
    except BaseException as error:  # noqa: BLE001 - a crash is this stage's failure, reported with its cause
        traceback.print_exc()
        record.update(status="FAIL", reason=f"{type(error).__name__}: {str(error).strip()[:500]}")
    record["seconds"] = time.perf_counter() - started
    (work / f"{name}.json").write_text(json.dumps(record, indent=2, default=str))
    return 0


# ------------------------------------------------------------------------------------------ orchestrator

@dataclass
class Running:
    stage: Stage
    process: subprocess.Popen
    log: Any
    deadline: float
    started: float


def start_stage(stage: Stage, work: Path, dry_run: bool, budget_s: float) -> Running:
    log = open(work / "logs" / f"{stage.name}.log", "w")
    command = [sys.executable, str(Path(__file__).resolve()), "--stage", stage.name, "--work", str(work)]
    if dry_run:
        command.append("--cpu-dry-run")
    # A new session: a stage past its limit is killed with everything it started (compilers, pytest).
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPOSITORY, start_new_session=True)
    print(f"[gpu_check] start {stage.name} (limit {budget_s:.0f} s)", flush=True)
    now = time.monotonic()
    return Running(stage, process, log, now + budget_s, now)


def finish_stage(running: Running, work: Path) -> dict:
    """Wait for a stage (killing it at its deadline) and read its record."""
    name = running.stage.name
    try:
        running.process.wait(timeout=max(0.0, running.deadline - time.monotonic()))
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):  # the group may be gone already
            os.killpg(running.process.pid, signal.SIGKILL)
        running.process.wait()
    running.log.close()
    seconds = time.monotonic() - running.started
    result_file = work / f"{name}.json"
    if timed_out:
        record = {"stage": name, "status": "FAIL", "reason": f"timed out after {seconds:.0f} s (its limit)"}
    elif result_file.exists():
        record = json.loads(result_file.read_text())
    else:
        record = {"stage": name, "status": "FAIL", "reason": f"the stage process died (exit {running.process.returncode})"}
    record["wall_seconds"] = seconds
    result_file.write_text(json.dumps(record, indent=2, default=str))
    print(f"[gpu_check] {record['status']} {name} ({seconds:.0f} s){': ' + record['reason'] if 'reason' in record else ''}",
          flush=True)
    return record


def build_environment(work: Path, dry_run: bool) -> dict[str, Any]:
    """One extension folder for every stage, the present GPU's architecture only, every core for the builds."""
    import torch

    environment: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0]}
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(work / "torch_extensions"))
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))
    os.environ["PYTHONUNBUFFERED"] = "1"
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
        environment["gpu"] = torch.cuda.get_device_name()
        environment["nvidia_smi"] = nvidia_smi()
    for key in ("TORCH_EXTENSIONS_DIR", "MAX_JOBS", "TORCH_CUDA_ARCH_LIST"):
        environment[key] = os.environ.get(key)
    environment["cpu_count"] = os.cpu_count()
    environment["mode"] = "cpu-dry-run" if dry_run else "gpu"
    return environment


def nvidia_smi() -> str | None:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,compute_cap",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def run_all(output: Path, dry_run: bool, only: list[str] | None, group: str, total_budget_s: float) -> int:
    started = time.monotonic()
    work = Path(os.environ.get("GPU_CHECK_WORK", "/tmp/splat2splat-gpu-check"))
    shutil.rmtree(work / "logs", ignore_errors=True)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    output.mkdir(parents=True, exist_ok=True)
    environment = build_environment(work, dry_run)
    print(f"[gpu_check] {json.dumps(environment)}", flush=True)
    stages = [s for s in STAGES if s.name in only] if only else [s for s in STAGES if group in s.groups]
    for stage in stages:
        (work / f"{stage.name}.json").unlink(missing_ok=True)
    scale = 6.0 if dry_run else 1.0  # the dry run's shared 2-core CPU, not the GPU machine's 16 cores

    def remaining() -> float:
        return total_budget_s - (time.monotonic() - started)

    records = []
    group = [start_stage(s, work, dry_run, min(s.timeout_s * scale, remaining())) for s in stages if s.parallel]
    records += [finish_stage(running, work) for running in group]
    for stage in (s for s in stages if not s.parallel):
        if remaining() < 10:
            records.append({"stage": stage.name, "status": "FAIL", "reason": "not run: the whole check's time ran out"})
            continue
        records.append(finish_stage(start_stage(stage, work, dry_run, min(stage.timeout_s * scale, remaining())), work))

    summary = write_report(output, work, records, environment, dry_run, time.monotonic() - started)
    return 0 if summary["status"] == "PASS" else 1


def write_report(output: Path, work: Path, records: list[dict], environment: dict, dry_run: bool,
                 seconds: float) -> dict:
    """gpu_check.json, one log of every stage, the benchmark JSONs and the JUnit report; the summary printed."""
    # In the dry run the CUDA-only stages skip with their reason; on the GPU nothing may skip.
    allowed = {"PASS", "SKIP"} if dry_run else {"PASS"}
    status = "PASS" if records and all(r["status"] in allowed for r in records) else "FAIL"
    report = {"check": "gpu_check", "status": status, "mode": environment["mode"], "seconds": seconds,
              "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "environment": environment,
              "stages": records}
    (output / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    with open(output / "gpu_check.log", "w") as combined:
        for record in records:
            log = work / "logs" / f"{record['stage']}.log"
            combined.write(f"===== {record['stage']} ({record['status']})\n")
            if log.exists():
                combined.write(log.read_text(errors="replace")[-200_000:])
    for name in ("bench_speed_editor.json", "bench_speed_train.json", "bench_speed_options.json", "bench_idu.json",
                 "gpu-tests.xml", "throughput-tests.xml"):
        if (work / name).exists():
            shutil.copy(work / name, output / name)
    print(f"\n{'stage':<20} {'status':<6} {'wall s':>7}  detail")
    for record in records:
        detail = record.get("reason") or json.dumps(record.get("result", {}), default=str)[:150]
        print(f"{record['stage']:<20} {record['status']:<6} {record.get('wall_seconds', 0):>7.0f}  {detail}")
    print(f"\ngpu_check {status} ({environment['mode']}, {seconds:.0f} s); wrote {output / 'gpu_check.json'}")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path(os.environ.get("OUT") or "outputs/gpu_check"),
                        help="folder for gpu_check.json, gpu_check.log and the benchmark results (default: $OUT)")
    parser.add_argument("--cpu-dry-run", action="store_true", default=os.environ.get("GPU_CHECK_DRY_RUN") == "1",
                        help="run every stage on the CPU at tiny sizes (CUDA-only parts skip with their reason)")
    parser.add_argument("--only", nargs="+", choices=list(STAGE_BY_NAME), help="run only these stages")
    parser.add_argument("--group", choices=["check", "throughput"], default="check",
                        help="check: the first GPU run (default); throughput: issue 16's editor options and IDU "
                             "throughput (after a check on the same warm machine, which reuses its builds)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole check (default: 510 on the GPU, 3000 for the dry run)")
    parser.add_argument("--stage", choices=list(STAGE_BY_NAME), help=argparse.SUPPRESS)  # a stage's own process
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        return run_one_stage(args.stage, args.work, args.cpu_dry_run)
    budget = args.budget or (3000.0 if args.cpu_dry_run else 510.0)
    return run_all(args.output, args.cpu_dry_run, args.only, args.group, budget)


if __name__ == "__main__":
    sys.exit(main())
