"""Shared test set-up: private JIT build folder, deterministic torch, the demo scene once per session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# gsplat / our kernels JIT-compile into TORCH_EXTENSIONS_DIR; never share the user's build folder.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", tempfile.mkdtemp(prefix="splat2splat-torch-ext-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)  # tiny models run faster single-threaded on a busy 2-core machine


def cuda_available() -> bool:
    return torch.cuda.is_available()


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


@pytest.fixture(autouse=True)
def cpu_unless_gpu_test(request, monkeypatch):
    """Tests not marked ``gpu`` run as they do on CI, with no CUDA device to see, so device "auto" means the CPU.

    On a GPU machine they would otherwise train through gsplat, whose backward pass is not bitwise repeatable
    (atomic adds), and the determinism and resume tests would compare different numbers. GPU tests (marked
    ``gpu``, skipped without CUDA) see the device.
    """
    if torch.cuda.is_available() and request.node.get_closest_marker("gpu") is None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture(scope="session")
def demo_scene(tmp_path_factory) -> Path:
    """The bundled demo scene at a small size (written once per test session; treat as read-only)."""
    from splat2splat.data.demo import DemoConfig, write_demo_scene

    return write_demo_scene(tmp_path_factory.mktemp("demo"), DemoConfig(n_views=40, image_size=64, n_points=3000))


@pytest.fixture(scope="session")
def tiny_ip2p_folder(tmp_path_factory) -> Path:
    """A tiny random-weight IP2P pipeline folder, loaded by the editor with from_pretrained like the real one."""
    from splat2splat.testing.tiny_ip2p import build_tiny_ip2p

    return build_tiny_ip2p(tmp_path_factory.mktemp("tiny-ip2p") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_clip_folder(tmp_path_factory) -> Path:
    """A tiny random-weight CLIP model folder with OpenAI CLIP's tokenizer and preprocessing config."""
    from splat2splat.testing.tiny_clip import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "model", seed=0)
