"""Fixtures of the editor tests: the tiny random InstructPix2Pix model, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_ip2p_folder(tmp_path_factory) -> Path:
    """A tiny random-weight IP2P pipeline folder, loaded by the editor with from_pretrained like the real one."""
    from splat2splat.edit.tiny_model import build_tiny_ip2p

    return build_tiny_ip2p(tmp_path_factory.mktemp("tiny-ip2p") / "model", seed=0)


@pytest.fixture(autouse=True)
def single_thread():
    """The tiny models are far too small to gain from threads, and on a busy machine thread synchronisation
    makes them an order of magnitude slower; restore the session's setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
