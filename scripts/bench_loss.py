"""The training loss (0.8 L1 + 0.2 D-SSIM, ``PhotometricLoss``) on the CPU: forward and backward, side by side.

    .venv/bin/python scripts/bench_loss.py --sizes 384 --threads 1
    .venv/bin/python scripts/bench_loss.py --sizes 384 --threads 1 --baseline-commit main  # before / after

Paths: "kernel" (this tree: the C++ kernel, ``cuda/cpu_ssim.cpp``), "torch" (the same loss with the kernel
disabled: the PyTorch reference) and, with ``--baseline-commit COMMIT``, "@COMMIT": that commit's
``splat2splat/losses.py``, ``splat2splat/kernels/ssim.py`` and ``cuda/cpu_ssim.cpp`` (built with this tree's flags as
an extension of its own). All run on the same fixed [1, size, size, 3] prediction (needing a gradient) and target, in
alternating rounds (the machine may be shared), and report the median process CPU time of a forward and of a
backward, with the largest difference of the loss and of the gradient from "kernel".
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import cpu_extension_at, cpu_run_start, git_show, markdown_table, write_json  # noqa: E402

from splat2splat.kernels import ssim as ssim_module  # noqa: E402
from splat2splat.losses import LossWeights, PhotometricLoss  # noqa: E402



@dataclass
class BenchLoss:
    """The CPU training loss (L1 + D-SSIM) with the C++ kernel, the PyTorch reference and optionally a commit's."""

    sizes: tuple[int, ...] = (96, 384)
    """Square image sizes in pixels."""
    threads: tuple[int, ...] = (1,)
    """torch (and OpenMP) CPU threads; 0: all cores."""
    rounds: int = 6
    """Alternating rounds; each times ``calls`` forward and backward passes per path."""
    calls: int = 10
    """Loss evaluations per path and round."""
    baseline_commit: str = ""
    """Also time "@COMMIT": that commit's loss, SSIM wrapper and C++ SSIM kernel, side by side."""
    output: Path | None = None
    """Also write the results as JSON here."""


@functools.lru_cache(maxsize=None)
def losses_at(commit: str) -> types.ModuleType:
    """``splat2splat.losses`` of ``commit``, on that commit's SSIM wrapper and C++ kernel (loaded as modules of their
    own, so that this tree's stay as they are)."""
    extension = cpu_extension_at(commit, ssim_module.CPU_SSIM_SOURCES[0], ssim_module.CPU_SSIM_EXTENSION)
    ssim_at = load_module(f"bench_loss_ssim_at_{commit}", commit, "splat2splat/kernels/ssim.py")
    ssim_at.cpu_ssim_extension = lambda: extension
    return load_module(f"bench_loss_losses_at_{commit}", commit, "splat2splat/losses.py",
                       {"splat2splat.kernels.ssim": ssim_at.__name__})


def load_module(name: str, commit: str, path: str, renames: dict[str, str] | None = None) -> types.ModuleType:
    """``path`` of ``commit`` as the module ``name`` (its imports of renamed modules pointed to the given ones)."""
    code = git_show(commit, path)
    for old, new in (renames or {}).items():
        code = code.replace(old, new)
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(code, f"{commit}:{path}", "exec"), module.__dict__)  # noqa: S102 - this repository's own code
    return module


def loss_paths(args: BenchLoss) -> dict:
    """Path name -> (loss, context it runs under)."""
    paths = {"kernel": (PhotometricLoss(LossWeights()), contextlib.nullcontext),
             "torch": (PhotometricLoss(LossWeights()),
                       lambda: mock.patch.object(ssim_module, "cpu_ssim_extension", lambda: None))}
    if args.baseline_commit:
        losses = losses_at(args.baseline_commit)
        paths[f"@{args.baseline_commit}"] = (losses.PhotometricLoss(losses.LossWeights()), contextlib.nullcontext)
    return paths


def evaluate(loss, pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """Process CPU seconds of the forward and of the backward; the loss and the gradient."""
    leaf = pred.clone().requires_grad_(True)
    start = time.process_time()
    value, _ = loss(leaf, target)
    middle = time.process_time()
    value.backward()
    return middle - start, time.process_time() - middle, value.detach(), leaf.grad


def bench_one(size: int, threads: int, args: BenchLoss) -> dict:
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(1, size, size, 3, generator=generator)
    pred = (target + 0.1 * torch.randn(1, size, size, 3, generator=generator)).clamp(0, 1)
    paths = loss_paths(args)
    times = {name: ([], []) for name in paths}
    results = {}
    for round_index in range(args.rounds + 1):  # the first round warms up
        for name, (loss, context) in paths.items():
            with context():
                for _ in range(args.calls):
                    forward_s, backward_s, value, grad = evaluate(loss, pred, target)
                    if round_index:
                        times[name][0].append(forward_s)
                        times[name][1].append(backward_s)
            results[name] = (value, grad)
    row = {"size": size, "threads": threads}
    value, grad = results["kernel"]
    for name, (forwards, backwards) in times.items():
        row[name] = {"forward_s": statistics.median(forwards), "backward_s": statistics.median(backwards),
                     "max_diff_loss": float((results[name][0] - value).abs()),
                     "max_rel_diff_grad": float((results[name][1] - grad).abs().max() / grad.abs().max())}
    return row


def table(rows: list[dict]) -> str:
    names = [key for key in rows[0] if key not in ("size", "threads")] if rows else []
    headers = ["px", "threads", *(f"{name} fwd / bwd ms" for name in names),
               *(f"{name} / kernel" for name in names[1:]), "max diff loss / grad (rel) vs kernel"]
    lines = []
    for row in rows:
        total = {name: row[name]["forward_s"] + row[name]["backward_s"] for name in names}
        lines.append([row["size"], row["threads"],
                      *(f"{row[name]['forward_s'] * 1e3:.2f} / {row[name]['backward_s'] * 1e3:.2f}" for name in names),
                      *(f"{total[name] / total['kernel']:.1f}x" for name in names[1:]),
                      ", ".join(f"{name} {row[name]['max_diff_loss']:.1e} / {row[name]['max_rel_diff_grad']:.1e}"
                                for name in names[1:])])
    return markdown_table(headers, lines)


def main(args: BenchLoss) -> dict:
    if ssim_module.cpu_ssim_extension() is None:
        raise SystemExit("the C++ SSIM kernel did not build")
    record, all_cores = cpu_run_start()
    rows = []
    for threads in args.threads:
        for size in args.sizes:
            rows.append(bench_one(size, threads or all_cores, args))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    results = {"record": record, "rows": rows}
    if args.output:
        write_json(args.output, results)
    return results


if __name__ == "__main__":
    main(tyro.cli(BenchLoss))
