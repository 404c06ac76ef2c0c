"""Shared helpers of the benchmark scripts: what ran where, timers, peak memory, tables and JSON.

Every benchmark result carries a :func:`run_record` (machine, device, library versions, date, exact
command), so a number in docs/BENCHMARKS.md can always be traced to the run that produced it.

Imported by the scripts next to it (``python scripts/bench_speed.py`` puts this folder on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

DeviceChoice = Literal["auto", "cpu", "cuda"]
VERSIONED_PACKAGES = ("torch", "gsplat", "diffusers", "transformers", "splat2splat")
PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


# ------------------------------------------------------------------------------------------ device

def resolve_bench_device(choice: DeviceChoice) -> torch.device:
    """auto: the GPU when there is one, else the CPU; asking for cuda without a GPU is an error, not a fallback."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but no CUDA GPU is available (use --device cpu)")
    return torch.device(choice)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -------------------------------------------------------------------------------------- run record

def cpu_model_name() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what the platform module knows."""
    with contextlib.suppress(OSError):
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine()


def total_memory_gib() -> float | None:
    with contextlib.suppress(OSError, AttributeError):
        match = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
        if match:
            return round(int(match.group(1)) / 2**20, 1)
    return None


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version(), "cuda (torch build)": torch.version.cuda}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    versions["torch"] = torch.__version__  # the metadata version drops the build tag (+cu130, +cpu)
    return versions


def device_record(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": properties.name, "memory_gib": round(properties.total_memory / 2**30, 1)}
    return {"type": "cpu", "name": cpu_model_name(), "torch_threads": torch.get_num_threads()}


def current_command() -> str:
    """The command line that started this process, as it can be pasted into a shell."""
    return shlex.join(["python", *sys.argv])


def code_version() -> dict[str, Any]:
    """The git commit of this checkout and its modified tracked files (numbers of uncommitted code say so)."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.rstrip("\n") if done.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    commit = git("rev-parse", "HEAD")
    return {"commit": commit and commit.strip(),
            "modified_files": None if status is None else [line[3:] for line in status.splitlines()]}


def run_record(device: torch.device, command: str | None = None) -> dict[str, Any]:
    """Machine, device, versions, UTC date and the exact command of a benchmark run."""
    return {
        "machine": {
            "cpu": cpu_model_name(),
            "cpu_cores": os.cpu_count(),
            "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "memory_gib": total_memory_gib(),
            "platform": platform.platform(),
            # Other processes on a shared machine slow every number down; the load says how busy it was.
            "load_average_1m_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        },
        "device": device_record(device),
        "versions": package_versions(),
        "code": code_version(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command or current_command(),
    }


def record_summary_line(record: dict[str, Any]) -> str:
    """One line for the top of a results section: device, CPU, versions, date."""
    machine, device, versions = record["machine"], record["device"], record["versions"]
    return (f"{device['type']}: {device['name']}; CPU {machine['cpu']} ({machine['cpu_cores_usable']} usable cores); "
            f"torch {versions['torch']}, gsplat {versions['gsplat']}, diffusers {versions['diffusers']}; "
            f"{record['date']}")


# ------------------------------------------------------------------------------------------ timing

@dataclass
class Timing:
    """One timed call: wall-clock seconds, and the CPU seconds this process spent in it (all threads)."""

    wall_s: float
    cpu_s: float


@dataclass
class TimingSummary:
    """Repeated runs (warm-up runs excluded). Wall time is what a user waits; on a shared CPU it also counts
    the time other processes held the cores, which the process CPU time does not."""

    median_s: float
    min_s: float
    max_s: float
    median_cpu_s: float
    runs: int
    seconds: list[float]
    cpu_seconds: list[float]


def summarize(timings: list[Timing]) -> TimingSummary:
    if not timings:
        raise ValueError("no timed runs to summarise")
    wall, cpu = [t.wall_s for t in timings], [t.cpu_s for t in timings]
    return TimingSummary(statistics.median(wall), min(wall), max(wall), statistics.median(cpu), len(wall), wall, cpu)


def time_call(function: Callable[[], Any], device: torch.device) -> tuple[Any, Timing]:
    """Run ``function`` and return (its result, its timing), queued GPU work included."""
    synchronize(device)
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    result = function()
    synchronize(device)
    return result, Timing(time.perf_counter() - wall_start, time.process_time() - cpu_start)


# ------------------------------------------------------------------------------------ peak memory

CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated during the call minus memory allocated before it"
CPU_HWM_METHOD = ("process resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs before the "
                  "call) minus the resident set before it")
CPU_RUSAGE_METHOD = ("growth of the process's lifetime peak resident set (resource.getrusage ru_maxrss): a LOWER "
                     "bound, 0 unless the call exceeds every earlier peak of the process")


def _proc_status_kib(field_name: str) -> int:
    match = re.search(rf"^{field_name}:\s+(\d+) kB", PROC_STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise OSError(f"{field_name} missing from {PROC_STATUS}")
    return int(match.group(1))


def _reset_rss_high_water_mark() -> bool:
    """Linux resets VmHWM to the current RSS when '5' is written to clear_refs; False where that is unavailable."""
    try:
        PROC_CLEAR_REFS.write_text("5")
        _proc_status_kib("VmHWM")
        return True
    except OSError:
        return False


def cpu_memory_method() -> str:
    """Which CPU peak-memory method :func:`measure_peak_memory` uses on this machine."""
    return CPU_HWM_METHOD if _reset_rss_high_water_mark() else CPU_RUSAGE_METHOD


def memory_method(device: torch.device) -> str:
    return CUDA_MEMORY_METHOD if device.type == "cuda" else cpu_memory_method()


@dataclass
class PeakMemory:
    """Filled in when the :func:`measure_peak_memory` block ends."""

    bytes: int = 0
    method: str = ""


@contextlib.contextmanager
def measure_peak_memory(device: torch.device) -> Iterator[PeakMemory]:
    """Peak memory the block needs beyond what was held when it started (GPU memory on CUDA, RSS on CPU)."""
    peak = PeakMemory()
    if device.type == "cuda":
        synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield peak
        synchronize(device)
        peak.bytes, peak.method = torch.cuda.max_memory_allocated(device) - start, CUDA_MEMORY_METHOD
        return
    if _reset_rss_high_water_mark():
        start_kib = _proc_status_kib("VmRSS")
        yield peak
        peak.bytes, peak.method = max(0, _proc_status_kib("VmHWM") - start_kib) * 1024, CPU_HWM_METHOD
        return
    start_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    yield peak
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start_kib
    peak.bytes, peak.method = max(0, grown) * 1024, CPU_RUSAGE_METHOD


def mib(count: int) -> float:
    return round(count / 2**20, 1)


# -------------------------------------------------------------------------------------------- output

def progress_bar() -> Progress:
    """The rich progress bar of every benchmark loop (description, bar, n/total, elapsed, remaining)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn())


REPOSITORY = Path(__file__).resolve().parents[1]


def git_show(commit: str, path: str) -> str:
    """``path`` as it is in ``commit`` of this repository."""
    return subprocess.run(["git", "-C", str(REPOSITORY), "show", f"{commit}:{path}"], check=True,
                          capture_output=True, text=True).stdout


def cpu_extension_at(commit: str, source: str, name: str):
    """The C++ extension ``name`` built from ``commit``'s ``cuda/source`` with this tree's flags, as ``name_at_COMMIT``
    (the source is kept in the extensions folder, so that a second run reuses the build)."""
    from unittest import mock

    from splat2splat.kernels import build

    text = git_show(commit, f"cuda/{source}")
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or build._import_cpp_extension().get_default_build_root()
    folder = Path(root) / f"bench_source_{commit}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / source
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    with mock.patch.object(build, "cuda_source_dir", lambda: folder):
        return build._compile(f"{name}_at_{commit}", [source], cuda=False)


def cpu_run_start() -> tuple[dict[str, Any], int]:
    """A CPU benchmark's run record and this process's core count, both printed in one line first."""
    all_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    record = run_record(torch.device("cpu"))
    print(f"{record['machine']['cpu']}, {all_cores} cores, load {record['machine']['load_average_1m_at_start']}; "
          f"torch {torch.__version__}; {record['date']}", flush=True)
    return record, all_cores


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
