"""The evaluation camera path: capture order, rotation interpolation, even spacing along the captured views."""

from __future__ import annotations

import math

import pytest
import torch

from splat2splat.data.cameras import Cameras, look_at
from splat2splat.data.demo import demo_cameras
from splat2splat.evaluation.camera_path import capture_order, capture_path, interpolate_cameras
from splat2splat.rotations import matrix_to_quaternion, quaternion_to_matrix, slerp


def rotation_z(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def cameras_at(centers: list[list[float]], width: int = 32, height: int = 24) -> Cameras:
    poses = torch.stack([look_at(torch.tensor(c, dtype=torch.float32), torch.zeros(3)) for c in centers])
    n = len(centers)
    return Cameras(poses, torch.full((n,), 30.0), torch.full((n,), 30.0), torch.full((n,), width / 2),
                   torch.full((n,), height / 2), torch.full((n,), width), torch.full((n,), height))


def test_capture_order_walks_to_the_nearest_unvisited_camera():
    centers = torch.tensor([[0.0, 0, 0], [3, 0, 0], [1, 0, 0], [4, 0, 0], [2, 0, 0]])
    assert capture_order(centers) == [0, 2, 4, 1, 3]


@pytest.mark.parametrize("angle, axis", [(0.3, (0, 0, 1)), (2.0, (1, 1, 0)), (math.pi, (1, 0, 0)),
                                         (math.pi, (0, 1, 0)), (math.pi, (0, 0, 1)), (1.0, (1, -2, 3))])
def test_quaternions_round_trip_every_rotation(angle, axis):
    axis = torch.nn.functional.normalize(torch.tensor(axis, dtype=torch.float32), dim=0)
    skew = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = torch.linalg.matrix_exp(angle * skew)
    assert torch.allclose(quaternion_to_matrix(matrix_to_quaternion(rotation)).float(), rotation, atol=1e-5)


def test_slerp_halfway_between_two_turns_is_the_middle_turn():
    q0, q1 = matrix_to_quaternion(rotation_z(0.0)).float(), matrix_to_quaternion(rotation_z(math.pi / 2)).float()
    assert torch.allclose(quaternion_to_matrix(slerp(q0, q1, 0.5)), rotation_z(math.pi / 4), atol=1e-5)
    assert torch.allclose(quaternion_to_matrix(slerp(q0, -q1, 0.5)), rotation_z(math.pi / 4), atol=1e-5)


def test_path_starts_and_ends_at_the_chain_ends_and_spaces_frames_evenly():
    cameras = cameras_at([[2.0, 0, 1], [0, 2, 1], [-2, 0, 1]])
    path = interpolate_cameras(cameras, 9)
    assert len(path) == 9 and path.image_size(0) == (24, 32)
    assert torch.allclose(path.camtoworlds[0], cameras.camtoworlds[0], atol=1e-5)
    assert torch.allclose(path.camtoworlds[-1], cameras.camtoworlds[-1], atol=1e-5)
    assert torch.allclose(path.camtoworlds[4], cameras.camtoworlds[1], atol=1e-5)  # the middle view, halfway
    steps = (path.centers()[1:] - path.centers()[:-1]).norm(dim=-1)
    assert torch.allclose(steps, steps.mean().expand_as(steps), rtol=1e-3)
    rotations = path.camtoworlds[:, :3, :3]
    assert torch.allclose(rotations @ rotations.transpose(1, 2), torch.eye(3).expand(9, 3, 3), atol=1e-5)


def test_path_gives_every_frame_the_first_camera_image_size():
    cameras = cameras_at([[2.0, 0, 1], [0, 2, 1]])
    cameras.width[1], cameras.height[1], cameras.fx[1], cameras.cx[1] = 64, 48, 60.0, 32.0  # twice the size
    path = interpolate_cameras(cameras, 3)
    assert path.width.tolist() == [32] * 3 and path.height.tolist() == [24] * 3
    assert torch.allclose(path.fx, torch.full((3,), 30.0)) and torch.allclose(path.cx, torch.full((3,), 16.0))


def test_a_camera_that_only_turns_still_moves_along_the_path():
    poses = torch.eye(4).repeat(2, 1, 1)
    poses[1, :3, :3] = rotation_z(1.0)
    cameras = Cameras(poses, torch.full((2,), 30.0), torch.full((2,), 30.0), torch.full((2,), 16.0),
                      torch.full((2,), 12.0), torch.full((2,), 32), torch.full((2,), 24))
    path = interpolate_cameras(cameras, 3)
    assert torch.allclose(path.camtoworlds[1, :3, :3], rotation_z(0.5), atol=1e-5)


def test_single_camera_path_repeats_it():
    cameras = cameras_at([[2.0, 0, 1]])
    assert torch.allclose(interpolate_cameras(cameras, 3).camtoworlds, cameras.camtoworlds.expand(3, 4, 4), atol=1e-6)


def test_capture_path_of_the_demo_rings_has_no_long_jumps():
    """The demo's views alternate between two rings; the path follows neighbours instead of zigzagging."""
    cameras = demo_cameras(16, 32)
    path = capture_path(cameras, 60)
    steps = (path.centers()[1:] - path.centers()[:-1]).norm(dim=-1)
    zigzag = (cameras.centers()[1:] - cameras.centers()[:-1]).norm(dim=-1)
    assert steps.max() < 0.5 * zigzag.min()
