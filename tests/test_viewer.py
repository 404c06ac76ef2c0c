"""The optional live viewer (viser): serves a page on localhost and takes the scene and the current images."""

from __future__ import annotations

import socket
import urllib.request

import pytest
import torch

viser = pytest.importorskip("viser", reason="viser is not installed (pip install viser; .ci/run installs it)")

from splat2splat.gaussians.model import random_points, init_splats  # noqa: E402
from splat2splat.rotations import quaternion_to_matrix  # noqa: E402
from splat2splat.viewer import LiveViewer  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_quaternions_become_rotations():
    quats = torch.nn.functional.normalize(torch.randn(20, 4), dim=-1)
    rotations = quaternion_to_matrix(quats)
    assert torch.allclose(rotations @ rotations.transpose(-1, -2), torch.eye(3).expand(20, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(rotations), torch.ones(20), atol=1e-5)
    half_turn_about_z = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    assert torch.allclose(quaternion_to_matrix(half_turn_about_z)[0], torch.diag(torch.tensor([-1.0, -1.0, 1.0])))


def test_viewer_serves_the_scene_on_localhost(demo_scene):
    from splat2splat.data.readers import load_dataset
    from splat2splat.gaussians.backend import GaussianBackend, GaussianConfig

    dataset = load_dataset(demo_scene, downscale=2)
    points, colors = random_points(200, 0.5, torch.Generator().manual_seed(0))
    backend = GaussianBackend(init_splats(points, colors, 1, 0.1, 1.0), GaussianConfig(), dataset.background)
    viewer = LiveViewer(port=free_port(), every=10)
    try:
        viewer.update(backend, dataset)
        viewer.maybe_update(20, backend, dataset)
        with urllib.request.urlopen(viewer.url, timeout=10) as response:
            assert response.status == 200 and b"<html" in response.read(2048).lower()
    finally:
        viewer.close()


def test_busy_port_moves_to_a_free_one_and_says_where(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        viewer = LiveViewer(port=port)
        try:
            assert not viewer.url.endswith(f":{port}")
            assert f"live viewer: {viewer.url}" in capsys.readouterr().out
        finally:
            viewer.close()
