"""Just-in-time build of splat2splat's own C++/CUDA kernels (the top-level ``cuda/`` folder).

Every kernel has a pure-PyTorch reference, so a kernel is an optimisation, never a requirement:
:func:`load_extension` (CUDA kernels) returns ``None`` without a CUDA device or when the build fails, and
:func:`load_cpu_extension` (C++/OpenMP kernels) when no compiler works, both after one warning; callers then
use the reference. A compiler without OpenMP (Apple clang) builds the C++ kernels single-threaded, after one
warning. A build is cached in the torch extensions folder (once per machine), keyed by the torch build and the
GPU architecture or ``cpu`` (and OpenMP or not), and loaded once per process.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

# pyproject maps the repository's cuda/ folder into the installed package under this name.
CUDA_SOURCE_PACKAGE = "splat2splat._cuda_src"
REPOSITORY_CUDA_DIR = Path(__file__).resolve().parents[2] / "cuda"


def cuda_source_dir() -> Path:
    """Folder holding the ``.cu`` / ``.cpp`` sources: the installed package data, else the repository's ``cuda/``."""
    try:
        spec = importlib.util.find_spec(CUDA_SOURCE_PACKAGE)
    except ModuleNotFoundError:
        spec = None
    # cuda/ has no __init__.py, so an installed copy is a namespace package: take its folder.
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        if Path(location).is_dir():
            return Path(location)
    return REPOSITORY_CUDA_DIR


def _device_arch() -> tuple[int, int]:
    return torch.cuda.get_device_capability(torch.cuda.current_device())


def _build_directory(name: str, target: str) -> Path:
    """A folder per extension, target (GPU architecture ``smXY`` or ``cpu``) and torch build: objects of one never
    load into another."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or _import_cpp_extension().get_default_build_root()
    flavour = re.sub(r"[^0-9A-Za-z.]+", "_", f"torch{torch.__version__}_cu{torch.version.cuda}")
    directory = Path(root) / f"{name}_{target}_{flavour}"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _import_cpp_extension() -> ModuleType:
    """torch.utils.cpp_extension, imported late: its import probes for a CUDA toolkit and, on a machine without a
    GPU, logs "No CUDA runtime is found" (noise for a CPU build), which is silenced here."""
    torch_logger = logging.getLogger("torch.utils.cpp_extension")
    level = torch_logger.level
    torch_logger.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension
    finally:
        torch_logger.setLevel(level)
    return torch.utils.cpp_extension


def _compile(name: str, sources: Sequence[str], cuda: bool) -> ModuleType:
    cpp_extension = _import_cpp_extension()
    source_dir = cuda_source_dir()
    # No fast-math and no FMA contraction: the kernels must reproduce the reference's values operation by operation.
    cflags = ["-O3", "-ffp-contract=off"]
    if cuda:
        arch = _device_arch()
        target = f"sm{arch[0]}{arch[1]}"
        # An explicit -gencode makes torch skip TORCH_CUDA_ARCH_LIST: build for this device only (fast).
        gencode = f"-gencode=arch=compute_{arch[0]}{arch[1]},code=sm_{arch[0]}{arch[1]}"
        extra = {"extra_cuda_cflags": ["-O3", gencode], "extra_cflags": cflags}
    else:
        # -fno-trapping-math and -fno-math-errno change no value (nothing here traps on a floating-point exception or
        # reads errno); they let the compiler turn the kernels' selects into vector blends and vectorise std::sqrt.
        # Wider vectors only where this CPU has them, each in a build folder of its own: AVX2 (8 floats per
        # instruction instead of 4), AVX-512 (16: a whole lane group of the rasterizer; its backward ~25 % faster
        # than with AVX2 on an AMD EPYC). The same IEEE operations either way (no FMA): the same values. Without
        # OpenMP (Apple clang) the same kernels run on one thread, built in a folder of their own ("_noomp").
        level = _cpu_vector_level()
        no_openmp = _missing_openmp()
        target = (f"cpu_{level}" if level else "cpu") + ("" if no_openmp is None else "_noomp")
        openmp = ["-fopenmp"] if no_openmp is None else []
        if no_openmp is not None:
            _warn_once(f"the C++ compiler has no OpenMP, building the C++ extensions single-threaded: {no_openmp}")
        extra = {"extra_cflags": [*cflags, "-fno-trapping-math", "-fno-math-errno", *VECTOR_FLAGS[level], *openmp],
                 "extra_ldflags": openmp, "with_cuda": False}
    return cpp_extension.load(
        name=name,
        sources=[str(source_dir / source) for source in sources],
        extra_include_paths=[str(source_dir)],
        build_directory=str(_build_directory(name, target)),
        verbose=False,
        **extra,
    )


def _cpu_compiler() -> str:
    return os.environ.get("CXX") or "c++"  # what torch's build uses


@functools.lru_cache(maxsize=None)
def _missing_cpu_compiler() -> str | None:
    """Why no C++ extension can be built here, or ``None`` when the compiler torch's build uses is found (looked up
    once per process)."""
    compiler = _cpu_compiler()
    if shutil.which(compiler) is None:
        return f"no C++ compiler found ({compiler!r}: set CXX or put c++ on PATH)"
    return None


OPENMP_PROBE = "#include <omp.h>\nint splat2splat_openmp_probe() { return omp_get_max_threads(); }\n"


@functools.lru_cache(maxsize=None)
def _missing_openmp() -> str | None:
    """Why the C++ compiler cannot build with OpenMP (Apple clang has no -fopenmp), or ``None`` when it compiles and
    links a tiny shared object with -fopenmp (tried once per process, a fraction of a second)."""
    with tempfile.TemporaryDirectory(prefix="splat2splat-openmp-") as folder:
        source = Path(folder) / "probe.cpp"
        source.write_text(OPENMP_PROBE)
        command = [_cpu_compiler(), "-fopenmp", "-shared", "-fPIC", str(source), "-o", str(Path(folder) / "probe.so")]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as error:
            return str(error)
    if result.returncode == 0:
        return None
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    return (lines[0] if lines else f"{command[0]} -fopenmp exited with status {result.returncode}")[:300]


# Compiler flags per vector extension, and the CPU flags each needs (Linux /proc/cpuinfo names).
VECTOR_FLAGS = {
    "avx512": ("-mavx2", "-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mprefer-vector-width=512"),
    "avx2": ("-mavx2",),
    "": (),
}
VECTOR_CPU_FLAGS = {"avx512": ("avx2", "avx512f", "avx512vl", "avx512bw", "avx512dq"), "avx2": ("avx2",)}


def _cpu_vector_level() -> str:
    """The widest vector extension of VECTOR_FLAGS this x86-64 CPU runs (Linux: /proc/cpuinfo); "" where none or
    where that cannot be told."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    flags = next((set(line.split(":", 1)[-1].split()) for line in cpuinfo.splitlines() if line.startswith("flags")),
                 set())
    return next((level for level, needs in VECTOR_CPU_FLAGS.items() if flags.issuperset(needs)), "")


@functools.lru_cache(maxsize=None)
def _load_once(name: str, sources: tuple[str, ...], cuda: bool = True) -> ModuleType | None:
    kind = "CUDA" if cuda else "C++"
    try:
        return _compile(name, sources, cuda)
    except Exception as error:  # noqa: BLE001 - any build or import failure means "use the reference"
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        logger.warning("could not build the %s extension %r, using the PyTorch reference instead: %s", kind, name,
                       first_line)
        return None


def load_extension(name: str, sources: Sequence[str]) -> ModuleType | None:
    """Build (once per process) and import the extension ``name`` from files of :func:`cuda_source_dir`.

    Returns ``None`` when no CUDA device is available or the build fails; a build's result is cached either way
    (the device check is not, so a process that hides its GPU for a while does not lose the kernel).
    """
    if not torch.cuda.is_available():
        return None
    return _load_once(name, tuple(sources))


def load_cpu_extension(name: str, sources: Sequence[str]) -> ModuleType | None:
    """Build (once per machine, into the torch extensions folder) and import the C++ extension ``name``, once per
    process; ``None`` after one warning when it does not build. Without a compiler, or with one that has no OpenMP
    (the extensions are then built single-threaded), that is one warning for all the C++ extensions of the
    process, not one each."""
    missing = _missing_cpu_compiler()
    if missing is not None:
        _warn_once(f"could not build the C++ extensions, using the PyTorch reference instead: {missing}")
        return None
    return _load_once(name, tuple(sources), cuda=False)


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    """One warning line per process for what concerns all the C++ extensions alike."""
    logger.warning("%s", message)


# ------------------------------------------------------------------------------------------------ gsplat
def _import_gsplat_extension() -> ModuleType | None:
    """gsplat's compiled module: importing ``gsplat.cuda._backend`` JIT-builds it on first use (minutes); it is
    ``None`` when gsplat finds no CUDA toolkit, and the import raises when the build fails."""
    from gsplat.cuda._backend import _C

    return _C


def gsplat_cuda_available() -> bool:
    """Whether gsplat's CUDA kernels can run here: a CUDA device and an extension that builds (built once per
    process; a failure logs one warning and the callers use the pure-PyTorch rasterizer instead)."""
    return torch.cuda.is_available() and _gsplat_extension_builds()


@functools.lru_cache(maxsize=None)
def _gsplat_extension_builds() -> bool:
    try:
        extension = _import_gsplat_extension()
    except Exception as error:  # noqa: BLE001 - any build or import failure means "use the PyTorch rasterizer"
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        logger.warning("could not build gsplat's CUDA extension, using the PyTorch rasterizer instead: %s", first_line)
        return False
    if extension is None:
        logger.warning("gsplat found no CUDA toolkit (nvcc) to build its kernels, using the PyTorch rasterizer instead")
        return False
    return True
