"""Camera paths that must stay renderable for any capture: single-centre sets, a camera on the orbit axis."""

from __future__ import annotations

import pytest
import torch

from splat2splat.data.cameras import Cameras, look_at, orbit_path


def cameras_at(eyes: list[list[float]], targets: list[list[float]]) -> Cameras:
    poses = torch.stack([look_at(torch.tensor(e), torch.tensor(t)) for e, t in zip(eyes, targets)])
    n = len(eyes)
    return Cameras(poses, torch.full((n,), 20.0), torch.full((n,), 20.0), torch.full((n,), 16.0),
                   torch.full((n,), 16.0), torch.full((n,), 32), torch.full((n,), 32))


def assert_proper_poses(path: Cameras, frames: int) -> None:
    assert len(path) == frames and torch.isfinite(path.camtoworlds).all()
    rotations = path.camtoworlds[:, :3, :3]
    assert torch.allclose(rotations @ rotations.transpose(1, 2), torch.eye(3).expand(frames, 3, 3), atol=1e-5)
    assert torch.isfinite(path.viewmats()).all()  # what crashed before: linalg.inv of a singular pose


CASES = {
    "one camera": ([[1.0, 2.0, 0.5]], [[0.0, 0.0, 0.0]]),
    "tripod panorama": ([[1.0, 2.0, 0.5]] * 4, [[0, 0, 0], [3, 2, 0.5], [1, 5, 0.5], [-2, 2, 0.5]]),
    "looking straight down": ([[0.0, 0.0, 3.0]] * 2, [[1e-9, 0.0, 0.0], [0.0, 1e-9, 0.0]]),
    "first camera on the axis": ([[0.0, 0.0, 2.0], [2.0, 0.0, 0.0], [0.0, 2.0, 0.0]], [[0, 0, 0]] * 3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_orbit_path_is_always_a_set_of_proper_poses(case):
    eyes, targets = CASES[case]
    assert_proper_poses(orbit_path(cameras_at(eyes, targets), 6), 6)


def test_single_centre_cameras_pan_around_their_centre():
    eyes, targets = CASES["tripod panorama"]
    path = orbit_path(cameras_at(eyes, targets), 8)
    assert torch.allclose(path.centers(), torch.tensor(eyes[0]).expand(8, 3), atol=1e-5)
    forwards = path.camtoworlds[:, :3, 2]
    assert (forwards[0] - forwards[4]).norm() > 1.9  # half a turn later it looks the other way


def test_orbit_of_a_ring_is_unchanged():
    """A capture with a circle to follow keeps the orbit that starts at its first camera."""
    eyes = [[2.0 * float(torch.cos(torch.tensor(a))), 2.0 * float(torch.sin(torch.tensor(a))), 1.0]
            for a in (0.0, torch.pi / 2, torch.pi, 3 * torch.pi / 2)]
    path = orbit_path(cameras_at(eyes, [[0, 0, 0]] * 4), 4)
    assert torch.allclose(path.centers()[0], torch.tensor(eyes[0]), atol=1e-4)
