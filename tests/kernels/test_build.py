"""gsplat's CUDA extension: when it cannot be used, one warning and the PyTorch rasterizer instead (the C++ CPU
rasterizer's fallback: tests/kernels/test_cpu_rasterizer.py)."""

from __future__ import annotations

import logging
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
