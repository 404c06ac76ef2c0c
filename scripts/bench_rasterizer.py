"""The CPU rasterizers side by side: the C++ one ("cpp", the default on a CPU) and its pure-PyTorch reference ("torch").

    .venv/bin/python scripts/bench_rasterizer.py --sizes 96 256 384 512 --counts 4000 50000 300000 --threads 1 0
    .venv/bin/python scripts/bench_rasterizer.py --sizes --threads 1 --demo-size 384  # the demo's train_step only

For every image size, Gaussian count and thread count, both run on the same random scene (one camera 2.5 units
away, focal 1.2 x size, SH degree 3, Gaussians of size 0.015 x (4000 / N)^(1/3) units, so that a pixel sees more
Gaussians as there are more, as in real captures): forward, backward, and a whole training step (render, L1 +
D-SSIM loss, backward, Adam), the median of ``--repeats`` runs after a warm-up, with the peak memory of a step and
the largest difference of image and gradients between the two, and the number of pixel-Gaussian pairs blended.
The reference can take minutes per step at large sizes: ``--torch-max-gaussians`` skips it above that many
Gaussians (and the pair count, which its pair search gives). ``--demo-size`` also times what ``splat2splat train``
runs, ``GaussianBackend.train_step``, on the demo scene with each rasterizer (median wall and process CPU seconds).

With ``--baseline``, a third path runs beside them: "cpp-v2", the C++ compositing with the PyTorch projection, SH
colours and per-tensor Adam (the rasterizer before the C++ projection and fused CPU Adam), for a before/after in
one run. With ``--baseline-commit COMMIT`` instead, the third path is "cpp@COMMIT": this tree with the compositing
(``cuda/cpu_rasterizer.cpp``) of that git commit, built with the same flags as an extension of its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import cpu_extension_at, cpu_run_start, markdown_table, measure_peak_memory, memory_method, mib, write_json  # noqa: E402

from splat2splat.data.demo import DemoConfig, write_demo_scene  # noqa: E402
from splat2splat.data.readers import load_dataset  # noqa: E402
from splat2splat.gaussians import rasterize as R  # noqa: E402
from splat2splat.gaussians.backend import CPU_FUSED_ADAM, GaussianBackend, GaussianConfig  # noqa: E402
from splat2splat.kernels import cpu_projection, cpu_rasterizer  # noqa: E402
from splat2splat.losses import LossWeights, PhotometricLoss  # noqa: E402

PATHS = ("torch", "cpp")
BASELINE = "cpp-v2"  # the C++ compositing only: PyTorch projection and SH colours, per-tensor Adam


@contextlib.contextmanager
def pytorch_projection():
    """The "cpp" rasterizer with the PyTorch projection and SH colours (as when their extension does not build)."""
    with mock.patch.object(cpu_projection, "cpu_projection_extension", lambda: None):
        yield


@functools.lru_cache(maxsize=None)
def compositing_at(commit: str):
    """The C++ compositing extension of ``commit``'s cuda/cpu_rasterizer.cpp, built like this tree's."""
    return cpu_extension_at(commit, cpu_rasterizer.CPU_RASTERIZER_SOURCES[0], cpu_rasterizer.CPU_RASTERIZER_EXTENSION)


class BackgroundAfterwards:
    """A compositing extension from before the background moved into the kernel (996c5cb and older), with this
    tree's signature: the background is added (and differentiated) around it with tensor operations, as the Python
    side did then."""

    def __init__(self, extension):
        self.extension = extension

    def forward(self, *arguments):
        *arguments, background = arguments
        image, alpha, *saved = self.extension.forward(*arguments)
        if background.numel():
            image = image + (1.0 - alpha[..., None]) * background
        return [image, alpha, *saved]

    def backward(self, *arguments):
        *arguments, grad_image, grad_alpha, width, height, tile_size, background = arguments
        if background.numel():
            grad_alpha = (grad_alpha - (grad_image * background).sum(-1)).contiguous()
        return self.extension.backward(*arguments, grad_image, grad_alpha, width, height, tile_size)


def path_context(path: str, args: "BenchRasterizer"):
    """What a path runs under: the PyTorch projection for cpp-v2, the commit's compositing for cpp@COMMIT."""
    if path == BASELINE:
        return pytorch_projection()
    if path.startswith("cpp@"):
        extension = compositing_at(args.baseline_commit)
        if "background" not in (extension.forward.__doc__ or ""):  # its arguments are named since it takes one
            extension = BackgroundAfterwards(extension)
        return mock.patch.object(cpu_rasterizer, "cpu_rasterizer_extension", lambda: extension)
    return contextlib.nullcontext()


def baseline_path(args: "BenchRasterizer") -> list[str]:
    if args.baseline and args.baseline_commit:
        raise SystemExit("--baseline and --baseline-commit: choose one")
    return [BASELINE] if args.baseline else [f"cpp@{args.baseline_commit}"] if args.baseline_commit else []


def baseline_of(row: dict) -> str | None:
    return next((key for key in row if key == BASELINE or key.startswith("cpp@")), None)


def random_scene(n: int, size: int, seed: int = 0, scale: float | None = None):
    """n Gaussians spread over the view of a camera 2.5 units away (focal 1.2 * size)."""
    scale = 0.015 * (4000 / n) ** (1 / 3) if scale is None else scale
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([1.8, 1.8, 1.0])
    quats = torch.randn(n, 4, generator=g)
    scales = torch.exp(torch.randn(n, 3, generator=g) * 0.5) * scale
    opacities = torch.rand(n, generator=g) * 0.9 + 0.05
    sh = torch.randn(n, 16, 3, generator=g) * 0.3
    c2w = torch.eye(4)
    c2w[2, 3] = -2.5
    K = torch.tensor([[1.2 * size, 0, size / 2], [0, 1.2 * size, size / 2], [0, 0, 1.0]])
    return (means, quats, scales, opacities, sh), torch.linalg.inv(c2w)[None], K[None]


def release_free_memory() -> None:
    """Give the memory freed by earlier steps back to the system (glibc malloc_trim), so that the resident-set peak
    of the next steps is what they need, not 0 because the heap already holds it."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def count_pairs(params, viewmats, Ks, size) -> int:
    with torch.no_grad():
        radii, means2d, depths, conics = R.project(params[0], params[1], params[2], params[3][None], viewmats, Ks,
                                                   size, size, 0.01, 1e10, 0.3)
        return len(R._contributing_pairs(means2d[0], conics[0], params[3], radii[0], depths[0], size, size, 16)[0])


class Step:
    """Forward, backward and a whole Adam training step of one rasterizer on one scene."""

    def __init__(self, backend: str, params, viewmats, Ks, size: int, args: "BenchRasterizer"):
        self.backend, self.viewmats, self.Ks, self.size = backend, viewmats, Ks, size
        self.context = lambda: path_context(backend, args)
        self.params = [p.detach().clone().requires_grad_(True) for p in params]
        # As GaussianBackend: fused Adam on the CPU; the baseline's per-tensor Adam as before it.
        self.optimizer = torch.optim.Adam(self.params, lr=1e-4, fused=CPU_FUSED_ADAM and backend != BASELINE)
        self.target = torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(1))
        self.loss = PhotometricLoss(LossWeights())

    def forward(self):
        return R.rasterize(*self.params, self.viewmats, self.Ks, self.size, self.size, 3, torch.ones(3),
                           backend="torch" if self.backend == "torch" else "cpp")

    def timed(self) -> tuple[float, float, float, float]:
        """Seconds of forward, backward (loss included) and the whole step (with the optimiser); process CPU
        seconds of the whole step."""
        with self.context():
            start, cpu = time.perf_counter(), time.process_time()
            image, _, _ = self.forward()
            rendered = time.perf_counter()
            self.loss(image, self.target)[0].backward()
            backward = time.perf_counter()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return rendered - start, backward - rendered, time.perf_counter() - start, time.process_time() - cpu

    def result(self):
        """Image and gradients of a fixed loss at the current parameters (for the comparison)."""
        with self.context():
            image, _, _ = self.forward()
            (image * torch.tensor([0.3, 0.5, 0.7])).sum().backward()
        grads = [p.grad.clone() for p in self.params]
        self.optimizer.zero_grad(set_to_none=True)
        return image.detach(), grads


@dataclass
class BenchRasterizer:
    """The C++ and PyTorch CPU rasterizers side by side: forward, backward, training step, peak memory."""

    sizes: tuple[int, ...] = (96, 256, 384, 512)
    """Square image sizes in pixels."""
    counts: tuple[int, ...] = (4000, 50000, 300000)
    """Numbers of random Gaussians."""
    threads: tuple[int, ...] = (1, 0)
    """torch (and OpenMP) CPU threads; 0: all cores."""
    repeats: int = 3
    """Timed steps per rasterizer (after one warm-up step); the median is reported."""
    baseline: bool = False
    """Also time "cpp-v2": the C++ compositing with the PyTorch projection, SH colours and per-tensor Adam (before
    the C++ projection and fused CPU Adam), side by side."""
    baseline_commit: str = ""
    """Also time "cpp@COMMIT": this tree with the C++ compositing of that git commit (e.g. the branch this one
    started from), side by side; not with --baseline."""
    torch_max_gaussians: int = 50_000
    """Skip the PyTorch reference above this many Gaussians (it can take minutes per step)."""
    demo_size: int = 0
    """Also time ``GaussianBackend.train_step`` (what ``splat2splat train`` runs) on the demo scene (40 views, 4,000
    points) at this image size, per rasterizer and thread count (0: skip)."""
    demo_steps: int = 5
    """Timed demo training steps per rasterizer (after 2 warm-up steps); the reference gets at most 3."""
    output: Path | None = None
    """Also write the results as JSON here."""


def bench_one(size: int, n: int, threads: int, args: BenchRasterizer) -> dict:
    torch.set_num_threads(threads)
    params, viewmats, Ks = random_scene(n, size)
    with_reference = n <= args.torch_max_gaussians
    pairs = count_pairs(params, viewmats, Ks, size) if with_reference else None
    row = {"size": size, "gaussians": n, "threads": threads, "pairs": pairs}
    results = {}
    paths = [*(PATHS if with_reference else ("cpp",)), *baseline_path(args)]
    for backend in paths:
        step = Step(backend, params, viewmats, Ks, size, args)
        results[backend] = step.result()
        step.timed()  # warm-up
        release_free_memory()
        with measure_peak_memory(torch.device("cpu")) as peak:
            times = [step.timed() for _ in range(args.repeats)]
        forward, backward, whole, cpu = (statistics.median(t[k] for t in times) for k in range(4))
        row[backend] = {"forward_s": forward, "backward_s": backward, "step_s": whole, "step_cpu_s": cpu,
                        "peak_bytes": peak.bytes}
    if "torch" in results:
        (image_a, grads_a), (image_b, grads_b) = results["torch"], results["cpp"]
        row["max_abs_diff_image"] = float((image_a - image_b).abs().max())
        row["max_rel_diff_grads"] = max(float((a - b).abs().max() / a.abs().max().clamp(min=1e-12))
                                        for a, b in zip(grads_a, grads_b))
    return row


def bench_demo(size: int, threads: int, args: BenchRasterizer, folder: Path) -> dict:
    """Seconds per ``train_step`` on the demo scene (median wall and process CPU time) for both rasterizers."""
    torch.set_num_threads(threads)
    dataset = load_dataset(folder)
    row = {"size": size, "threads": threads}
    for backend_name in ("cpp", "torch", *baseline_path(args)):
        config = GaussianConfig(device="cpu", rasterizer="torch" if backend_name == "torch" else "cpp")
        backend = GaussianBackend.from_dataset(dataset, config)
        if backend_name == BASELINE:
            for optimizer in backend.optimizers.values():
                optimizer.param_groups[0]["fused"] = None
        loss = PhotometricLoss(LossWeights())
        with path_context(backend_name, args):
            for _ in range(2):
                backend.train_step(dataset, loss)
            walls, cpus = [], []
            for _ in range(min(3, args.demo_steps) if backend_name == "torch" else args.demo_steps):
                wall, cpu = time.perf_counter(), time.process_time()
                backend.train_step(dataset, loss)
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
        row[backend_name] = {"step_s": statistics.median(walls), "cpu_s": statistics.median(cpus)}
    return row


def ratio(row: dict, slower: str, faster: str) -> str:
    """Wall and CPU-time ratio of two paths' demo steps."""
    return (f"{row[slower]['step_s'] / row[faster]['step_s']:.1f}x / "
            f"{row[slower]['cpu_s'] / row[faster]['cpu_s']:.1f}x")


def demo_table(rows: list[dict]) -> str:
    baseline = baseline_of(rows[0]) if rows else None
    headers = ["px", "threads", "torch s/step (wall / CPU)", "cpp s/step (wall / CPU)", "cpp steps/s",
               "speed-up (wall / CPU)",
               *([f"{baseline} s/step (wall / CPU)", f"cpp vs {baseline} (wall / CPU)"] if baseline else [])]
    return markdown_table(headers, [[
        row["size"], row["threads"], f"{row['torch']['step_s']:.3f} / {row['torch']['cpu_s']:.3f}",
        f"{row['cpp']['step_s']:.3f} / {row['cpp']['cpu_s']:.3f}", f"{1 / row['cpp']['step_s']:.1f}",
        ratio(row, "torch", "cpp"),
        *([f"{row[baseline]['step_s']:.3f} / {row[baseline]['cpu_s']:.3f}", ratio(row, baseline, "cpp")]
          if baseline else []),
    ] for row in rows])


def table(rows: list[dict]) -> str:
    def seconds(row, backend, key):
        return f"{row[backend][key]:.3f}" if backend in row else "-"

    baseline = baseline_of(rows[0]) if rows else None
    headers = ["px", "Gaussians", "threads", "pairs", "torch fwd s", "torch bwd s", "torch step s", "cpp fwd s",
               "cpp bwd s", "cpp step s", "step speed-up", "peak MiB torch / cpp", "max diff image / grads (rel)",
               *([f"{baseline} fwd / bwd / step s", f"cpp vs {baseline}", f"step CPU s cpp / {baseline}"]
                 if baseline else [])]
    lines = []
    for row in rows:
        both = "torch" in row
        versus = ([f"{row[baseline]['forward_s']:.3f} / {row[baseline]['backward_s']:.3f} / "
                   f"{row[baseline]['step_s']:.3f}", f"{row[baseline]['step_s'] / row['cpp']['step_s']:.1f}x",
                   f"{row['cpp']['step_cpu_s']:.3f} / {row[baseline]['step_cpu_s']:.3f}"]
                  if baseline in row else [])
        lines.append([
            row["size"], f"{row['gaussians']:,}", row["threads"], "-" if row["pairs"] is None else f"{row['pairs']:,}",
            seconds(row, "torch", "forward_s"), seconds(row, "torch", "backward_s"), seconds(row, "torch", "step_s"),
            seconds(row, "cpp", "forward_s"), seconds(row, "cpp", "backward_s"), seconds(row, "cpp", "step_s"),
            f"{row['torch']['step_s'] / row['cpp']['step_s']:.1f}x" if both else "-",
            (f"{mib(row['torch']['peak_bytes'])} / " if both else "- / ") + f"{mib(row['cpp']['peak_bytes'])}",
            f"{row['max_abs_diff_image']:.1e} / {row['max_rel_diff_grads']:.1e}" if both else "-", *versus,
        ])
    return markdown_table(headers, lines)


def main(args: BenchRasterizer) -> dict:
    if R.choose_rasterizer("cpp", torch.device("cpu")) != "cpp":
        raise SystemExit("the C++ rasterizer did not build")
    record, all_cores = cpu_run_start()
    rows = []
    for threads in args.threads:
        for size in args.sizes:
            for n in args.counts:
                rows.append(bench_one(size, n, threads or all_cores, args))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    if rows:
        print(table(rows))
    demo_rows = []
    if args.demo_size:
        with tempfile.TemporaryDirectory() as folder:
            scene = write_demo_scene(Path(folder) / "demo", DemoConfig(n_views=40, image_size=args.demo_size))
            for threads in args.threads:
                demo_rows.append(bench_demo(args.demo_size, threads or all_cores, args, scene))
                print(demo_table(demo_rows[-1:]).splitlines()[-1], flush=True)
        print(demo_table(demo_rows))
    results = {"record": record, "memory_method": memory_method(torch.device("cpu")), "rows": rows,
               "demo_rows": demo_rows}
    if args.output:
        write_json(args.output, results)
    return results


if __name__ == "__main__":
    main(tyro.cli(BenchRasterizer))
