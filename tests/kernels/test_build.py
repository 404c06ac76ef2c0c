"""gsplat's CUDA extension: when it cannot be used, one warning and the PyTorch rasterizer instead (the C++ CPU
rasterizer's fallback: tests/kernels/test_cpu_rasterizer.py); the C++ extensions' build flags, and their build with
a compiler that has no OpenMP."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from splat2splat.errors import InputError
from splat2splat.gaussians.rasterize import choose_rasterizer
from splat2splat.kernels import build


@pytest.fixture
def fresh_gsplat_check():
    build._gsplat_extension_builds.cache_clear()
    yield
    build._gsplat_extension_builds.cache_clear()


def _pretend_cuda_with_gsplat(monkeypatch, extension):
    """A CUDA device whose gsplat import gives ``extension`` (raised when it is an exception)."""
    calls = []

    def fake_import():
        calls.append(1)
        if isinstance(extension, Exception):
            raise extension
        return extension

    monkeypatch.setattr(build.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(build, "_import_gsplat_extension", fake_import)
    return calls


def test_gsplat_build_failure_warns_once_and_auto_uses_torch(monkeypatch, caplog, fresh_gsplat_check):
    calls = _pretend_cuda_with_gsplat(monkeypatch, RuntimeError("Error building extension 'gsplat_cuda'\nlong log"))
    with caplog.at_level(logging.WARNING, logger=build.__name__):
        assert choose_rasterizer("auto", torch.device("cuda")) == "torch"
        assert choose_rasterizer("auto", torch.device("cuda")) == "torch"
        assert not build.gsplat_cuda_available()
    assert len(calls) == 1  # the build is tried once per process
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "Error building extension 'gsplat_cuda'" in caplog.text and "long log" not in caplog.text


def test_forced_gsplat_that_cannot_build_is_a_clear_input_error(monkeypatch, fresh_gsplat_check):
    _pretend_cuda_with_gsplat(monkeypatch, RuntimeError("nvcc exploded"))
    with pytest.raises(InputError, match="rasterizer 'gsplat' cannot run: its CUDA extension could not be built"):
        choose_rasterizer("gsplat", torch.device("cuda"))


def test_no_cuda_toolkit_is_the_same_fallback(monkeypatch, caplog, fresh_gsplat_check):
    _pretend_cuda_with_gsplat(monkeypatch, None)  # gsplat sets _C = None without nvcc
    with caplog.at_level(logging.WARNING, logger=build.__name__):
        assert choose_rasterizer("auto", torch.device("cuda")) == "torch"
    assert "no CUDA toolkit" in caplog.text


def test_working_gsplat_is_chosen_on_cuda_only(monkeypatch, fresh_gsplat_check):
    _pretend_cuda_with_gsplat(monkeypatch, object())
    assert choose_rasterizer("auto", torch.device("cuda")) == "gsplat"
    assert choose_rasterizer("gsplat", torch.device("cuda:0")) == "gsplat"
    assert choose_rasterizer("torch", torch.device("cuda")) == "torch"
    assert choose_rasterizer("torch", torch.device("cpu")) == "torch"


def test_gsplat_on_the_cpu_is_an_input_error():
    with pytest.raises(InputError, match="needs a CUDA device and the scene is on cpu"):
        choose_rasterizer("gsplat", torch.device("cpu"))
    with pytest.raises(InputError, match="unknown rasterizer 'opengl'"):
        choose_rasterizer("opengl", torch.device("cpu"))


def test_without_cuda_nothing_is_imported(monkeypatch, fresh_gsplat_check):
    monkeypatch.setattr(build.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(build, "_import_gsplat_extension", lambda: pytest.fail("must not build without CUDA"))
    assert not build.gsplat_cuda_available()


def test_cpp_rasterizer_that_cannot_build_auto_uses_torch_and_forced_is_an_input_error(monkeypatch):
    from splat2splat.kernels import cpu_rasterizer

    monkeypatch.setattr(cpu_rasterizer, "cpu_rasterizer_extension", lambda: None)
    assert choose_rasterizer("auto", torch.device("cpu")) == "torch"
    with pytest.raises(InputError, match="rasterizer 'cpp' cannot run: its C\\+\\+ extension could not be built"):
        choose_rasterizer("cpp", torch.device("cpu"))


def test_cpu_build_folder_is_keyed_by_torch_build_and_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    folder = build._build_directory("splat2splat_x", "cpu")
    assert folder.parent == tmp_path and folder.name.startswith("splat2splat_x_cpu_torch") and folder.is_dir()
    assert build._build_directory("splat2splat_x", "sm90") != folder


@pytest.mark.parametrize("level", ["avx512", "avx2", ""])
def test_cpu_build_uses_wider_vectors_only_where_the_cpu_has_them_in_a_folder_of_its_own(monkeypatch, tmp_path, level):
    calls = {}

    class FakeCppExtension:
        @staticmethod
        def load(**kwargs):
            calls.update(kwargs)
            return "module"

        @staticmethod
        def get_default_build_root():
            return str(tmp_path)

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(build, "_import_cpp_extension", lambda: FakeCppExtension)
    monkeypatch.setattr(build, "_cpu_vector_level", lambda: level)
    monkeypatch.setattr(build, "_missing_openmp", lambda: None)
    monkeypatch.setattr(build.shutil, "which", lambda name: "/usr/bin/c++")
    assert build._compile("splat2splat_x", ["x.cpp"], cuda=False) == "module"
    assert ("-mavx2" in calls["extra_cflags"]) == (level != "")
    assert ("-mavx512f" in calls["extra_cflags"]) == (level == "avx512")
    assert "-ffp-contract=off" in calls["extra_cflags"]  # the kernels' parity needs it either way
    expected = f"splat2splat_x_cpu_{level}_" if level else "splat2splat_x_cpu_torch"
    assert Path(calls["build_directory"]).name.startswith(expected)


def test_cpu_vector_detection_reads_the_cpu_flags(monkeypatch):
    texts = {"/proc/cpuinfo": "processor : 0\nflags\t\t: fpu sse2 avx avx2 fma\n"}
    monkeypatch.setattr(build.Path, "read_text", lambda self: texts[str(self)])
    assert build._cpu_vector_level() == "avx2"
    texts["/proc/cpuinfo"] = "processor : 0\nflags\t\t: fpu sse2 avx avx512f\n"
    assert build._cpu_vector_level() == ""
    texts["/proc/cpuinfo"] = "processor : 0\nflags\t\t: avx avx2 avx512f avx512dq avx512bw avx512vl fma\n"
    assert build._cpu_vector_level() == "avx512"


def test_openmp_is_probed_once_with_the_compiler_of_the_build(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "absent-c++"))
    build._missing_openmp.cache_clear()
    try:
        first = build._missing_openmp()
        assert first is not None and "absent-c++" in first
        monkeypatch.setenv("CXX", shutil.which("sh") or "/bin/sh")
        assert build._missing_openmp() == first  # cached for the process
    finally:
        build._missing_openmp.cache_clear()


@pytest.mark.parametrize("openmp", [True, False])
def test_cpu_build_without_openmp_drops_its_flags_in_a_folder_of_its_own(monkeypatch, tmp_path, caplog, openmp):
    calls = []

    class FakeCppExtension:
        @staticmethod
        def load(**kwargs):
            calls.append(kwargs)
            return "module"

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(build, "_import_cpp_extension", lambda: FakeCppExtension)
    monkeypatch.setattr(build, "_cpu_vector_level", lambda: "")
    monkeypatch.setattr(build, "_missing_openmp", lambda: None if openmp else "unsupported option '-fopenmp'")
    build._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger=build.__name__):
        for name in ("splat2splat_x", "splat2splat_y"):
            build._compile(name, ["x.cpp"], cuda=False)
    build._warn_once.cache_clear()
    for kwargs in calls:
        assert ("-fopenmp" in kwargs["extra_cflags"]) == openmp and (kwargs["extra_ldflags"] == ["-fopenmp"]) == openmp
        assert Path(kwargs["build_directory"]).name.startswith("splat2splat_") and \
            ("_cpu_noomp_" in kwargs["build_directory"]) != openmp
    # One line for both extensions.
    expected = [] if openmp else \
        ["the C++ compiler has no OpenMP, building the C++ extensions single-threaded: unsupported option '-fopenmp'"]
    assert [record.getMessage() for record in caplog.records] == expected


# ---------------------------------------------------------------------------------- a compiler without OpenMP
NO_OPENMP_COMPILER = """#!/bin/sh
# A C++ compiler without OpenMP, as Apple clang: -fopenmp and OpenMP's libraries refused, no <omp.h>.
for arg in "$@"; do
    case "$arg" in
        -fopenmp|-lgomp|-lomp) echo "c++: error: unsupported option '$arg'" >&2; echo "$arg" >> "{refused}"; exit 1;;
    esac
done
exec "{real}" -isystem "{no_omp_header}" "$@"
"""

NO_OPENMP_SCRIPT = textwrap.dedent("""
    import logging, sys, torch
    logging.basicConfig(format="%(levelname)s %(message)s")
    sys.path.insert(0, sys.argv[1])
    torch.set_num_threads(1)
    from tests.kernels.test_build import kernel_outputs
    torch.save(kernel_outputs(), sys.argv[2])
""")


def kernel_outputs() -> dict[str, torch.Tensor]:
    """Every C++ extension at work: the cpp rasterizer's image, alpha and gradients (C++ projection, SH colours and
    compositing) and the CPU L1 + D-SSIM loss with its gradient; also where the extensions were loaded from."""
    from splat2splat.kernels.cpu_projection import cpu_projection_extension
    from splat2splat.kernels.cpu_rasterizer import cpu_rasterizer_extension
    from splat2splat.kernels.ssim import cpu_ssim_extension, l1_dssim_loss
    from tests.kernels.test_cpu_rasterizer import hard_scene, render_with

    extensions = (cpu_projection_extension(), cpu_rasterizer_extension(), cpu_ssim_extension())
    assert None not in extensions, "a C++ extension did not build (see the warning)"
    params, viewmats, Ks = hard_scene(300, torch.float32)
    image, alpha, _, grads = render_with("cpp", params, viewmats, Ks, 40, 30, 3)
    pred = image.clone().requires_grad_(True)
    loss = l1_dssim_loss(pred, image.flip(1))
    loss.backward()
    return {"image": image, "alpha": alpha, **grads, "loss": loss.detach(), "loss_grad": pred.grad,
            "folders": [str(Path(extension.__file__).parent) for extension in extensions]}


@pytest.mark.slow  # builds the three C++ extensions
@pytest.mark.skipif(build._missing_cpu_compiler() is not None or sys.platform == "win32",
                    reason="needs a C++ compiler and a POSIX shell")
def test_a_compiler_without_openmp_builds_the_same_kernels_single_threaded(tmp_path):
    real = shutil.which(os.environ.get("CXX") or "c++")
    no_omp_header = tmp_path / "no-omp-header"
    no_omp_header.mkdir()
    (no_omp_header / "omp.h").write_text('#error "this compiler has no OpenMP"\n')
    compiler = tmp_path / "bin" / "c++"
    compiler.parent.mkdir()
    refused = tmp_path / "refused.txt"
    compiler.write_text(NO_OPENMP_COMPILER.format(refused=refused, real=real, no_omp_header=no_omp_header))
    compiler.chmod(0o755)
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, CXX=str(compiler), TORCH_EXTENSIONS_DIR=str(tmp_path / "extensions"), PYTHONPATH=str(root))
    outputs = tmp_path / "outputs.pt"
    result = subprocess.run([sys.executable, "-c", NO_OPENMP_SCRIPT, str(root), str(outputs)], env=env,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr
    assert refused.read_text().split() == ["-fopenmp"]  # the probe was refused, the build never asked again
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0] == ("WARNING the C++ compiler has no OpenMP, building the C++ extensions single-threaded: "
                        "c++: error: unsupported option '-fopenmp'")
    single_threaded = torch.load(outputs, weights_only=True)
    assert all(Path(folder).parent == tmp_path / "extensions" and "_noomp_" in Path(folder).name
               for folder in single_threaded.pop("folders"))
    with_openmp = kernel_outputs()
    assert not any("_noomp_" in folder for folder in with_openmp.pop("folders"))
    assert with_openmp.keys() == single_threaded.keys()
    for name, expected in with_openmp.items():
        assert torch.equal(single_threaded[name], expected), name
