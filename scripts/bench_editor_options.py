"""The editor's speed options, measured one by one against the default editor in the same run.

Used by ``scripts/bench_speed.py --editor-options ...``. Every option gets its own editor, loaded from the
same model folder (so one option's in-place changes, channels-last weights or attention processors, never
leak into another); all stay loaded and are timed in turns (default, option 1, option 2, ..., rotated each
round), so a change in the machine's load falls on all of them alike. Per option: the seconds to build the
editor, the first edit (warm-up; for a compiled UNet this is the compilation), the median seconds per edited
view afterwards, its ratio to the default's median, and the largest pixel difference between its edit and
the default's edit of the same images with the same seed (every option must leave the edit unchanged up to
rounding; half precisions differ by more). An option the machine cannot run (an attention kernel the GPU
lacks for the model's head sizes, CUDA graphs on a CPU) is listed as refused, with its one-line reason.

Peak memory: the largest extra memory one timed call needed beyond what was held before it (GPU memory on
CUDA, resident memory on the CPU), and on CUDA the GPU memory the editor holds between edits (allocated while
it was built: the offloaded models hold none).

An option is a ``+``-joined list of settings: ``channels-last``, ``offload``, ``compile=MODE``,
``attention=KERNEL``, ``dtype=DTYPE`` (of IP2PConfig) and ``batch=K`` (K views per ``edit_batch`` call; time
per view), e.g. ``compile=inductor-cuda-graphs+batch=4``. ``default`` is always measured first.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from bench_common import measure_peak_memory, memory_method, mib, synchronize, time_call
from splat2splat.devices import resolve_device
from splat2splat.edit.ip2p import EditRequest, IP2PConfig, InstructPix2PixEditor
from splat2splat.errors import InputError

SETTINGS = ("compile", "attention", "dtype")  # IP2PConfig fields an option may set to a value


@dataclass
class EditorOption:
    name: str
    config: IP2PConfig
    batch: int


def parse_option(name: str, base: IP2PConfig) -> EditorOption:
    """``channels-last+compile=inductor+batch=4`` -> the base config with those settings, and the batch."""
    config, batch = base, 1
    if name == "default":
        return EditorOption(name, config, batch)
    for part in name.split("+"):
        key, _, value = part.partition("=")
        if part in ("channels-last", "offload"):
            config = dataclasses.replace(config, **{part.replace("-", "_"): True})
        elif key == "batch" and value.isdigit() and int(value) >= 1:
            batch = int(value)
        elif key in SETTINGS and value:
            config = dataclasses.replace(config, **{key: value})
        else:
            raise SystemExit(f"unknown editor option {part!r} in {name!r}: use channels-last, offload, "
                             "compile=MODE, attention=KERNEL, dtype=DTYPE or batch=K, joined by '+'")
    return EditorOption(name, config, batch)


def edit_requests(images: torch.Tensor, batch: int, seed: int, prompt: str,
                  noise_range: tuple[float, float]) -> list[EditRequest]:
    """``batch`` requests of the same two images, each with its own generator (seed, seed + 1, ...)."""
    return [EditRequest(images[0], images[1], prompt, noise_range, torch.Generator().manual_seed(seed + k))
            for k in range(batch)]


def run_option(editor: InstructPix2PixEditor, option: EditorOption, images: torch.Tensor, seed: int, prompt: str,
               noise_range: tuple[float, float]) -> list[torch.Tensor]:
    return editor.edit_batch(edit_requests(images, option.batch, seed, prompt, noise_range))


def build_and_warm_up(option: EditorOption, images: torch.Tensor, seed: int, prompt: str,
                      noise_range: tuple[float, float], device: torch.device):
    """(the option's editor, its row, its first edit): build time, GPU memory it holds, first-edit time."""
    synchronize(device)
    held_before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    started = time.perf_counter()
    editor = InstructPix2PixEditor.from_config(option.config)
    synchronize(device)
    built = time.perf_counter() - started
    held = torch.cuda.memory_allocated(device) - held_before if held_before is not None else None
    first_edit, first = time_call(lambda: run_option(editor, option, images, seed, prompt, noise_range), device)
    row = {"option": option.name, "views_per_call": option.batch, "build_s": built, "first_edit_s": first.wall_s,
           "held_bytes": held, "peak_bytes": 0, "seconds_per_view": []}
    return editor, row, first_edit[0].cpu()


def bench_editor_options(names: tuple[str, ...], base: IP2PConfig, image_size: int, repeats: int, seed: int,
                         prompt: str, noise_range: tuple[float, float], progress) -> dict[str, Any]:
    """Time ``default`` and each option in ``names`` (see the module doc); returns rows and settings."""
    options = [parse_option(name, base) for name in ("default", *[n for n in names if n != "default"])]
    images = torch.rand(2, image_size, image_size, 3, generator=torch.Generator().manual_seed(seed))
    device = resolve_device(base.device)
    task = progress.add_task("editor options", total=len(options) * (repeats + 1))
    editors, rows, refused, default_edit = [], [], [], None
    for option in list(options):
        progress.update(task, description=f"editor options: {option.name} (build + first edit)")
        try:
            editor, row, edit = build_and_warm_up(option, images, seed, prompt, noise_range, device)
        except InputError as error:  # e.g. an attention kernel this GPU lacks: a result, not a crash
            if not editors:
                raise
            refused.append({"option": option.name, "refused": str(error)})
            options.remove(option)
            progress.advance(task, repeats + 1)
            continue
        default_edit = edit if default_edit is None else default_edit
        row["max_abs_difference"] = float((edit - default_edit).abs().max())
        editors.append(editor)
        rows.append(row)
        progress.advance(task)
    for repeat in range(repeats):
        for index in rotated(range(len(options)), repeat):  # who goes first changes every round
            option, editor = options[index], editors[index]
            progress.update(task, description=f"editor options: {option.name} {repeat + 1}/{repeats}")
            with measure_peak_memory(device) as peak:
                _, timing = time_call(lambda: run_option(editor, option, images, seed, prompt, noise_range), device)
            rows[index]["seconds_per_view"].append(timing.wall_s / option.batch)
            rows[index]["peak_bytes"] = max(rows[index]["peak_bytes"], peak.bytes)
            progress.advance(task)
    for row in rows:
        row["median_s_per_view"] = statistics.median(row["seconds_per_view"])
        row["speedup_over_default"] = rows[0]["median_s_per_view"] / row["median_s_per_view"]
    return {"image_size": image_size, "repeats": repeats, "noise_range": list(noise_range),
            "diffusion_steps": base.diffusion_steps, "dtype": str(editors[0].dtype).removeprefix("torch."),
            "memory_method": memory_method(device), "rows": rows, "refused": refused}


def rotated(indices, shift: int) -> list[int]:
    indices = list(indices)
    return indices[shift % len(indices):] + indices[:shift % len(indices)]


OPTION_HEADERS = ["option", "views per call", "build s", "first edit s", "median s per view", "speed-up vs default",
                  "max abs diff vs default", "held MiB", "peak MiB"]


def option_table_rows(result: dict[str, Any]) -> list[list[Any]]:
    return [[row["option"], row["views_per_call"], f"{row['build_s']:.1f}", f"{row['first_edit_s']:.2f}",
             f"{row['median_s_per_view']:.4f}", f"{row['speedup_over_default']:.2f}",
             f"{row['max_abs_difference']:.1e}", "-" if row["held_bytes"] is None else mib(row["held_bytes"]),
             mib(row["peak_bytes"])] for row in result["rows"]]
