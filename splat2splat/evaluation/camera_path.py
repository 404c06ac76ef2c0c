"""Smooth camera paths through a capture, for rendering an original and an edited scene frame by frame.

in2n computed its CLIP metrics on renders along a camera path through the captured views, not on the
training poses themselves (in2n issue #48). :func:`capture_path` chains the training cameras in capture
order (nearest neighbour next) and places frames evenly along that chain, interpolating positions
linearly and orientations spherically, so consecutive frames are close and most frames are novel views.
"""

from __future__ import annotations

import torch

from splat2splat.data.cameras import Cameras
from splat2splat.rotations import matrix_to_quaternion, quaternion_to_matrix, slerp


def capture_order(centers: torch.Tensor) -> list[int]:
    """A chain through all camera centres ([N, 3]): the first camera, then always the nearest one not yet visited.

    For a capture already in order this is its order; a shuffled one (or two interleaved rings) becomes a walk
    without long jumps back and forth.
    """
    remaining = list(range(1, len(centers)))
    order = [0]
    while remaining:
        distances = (centers[remaining] - centers[order[-1]]).norm(dim=-1)
        order.append(remaining.pop(int(distances.argmin())))
    return order


def interpolate_cameras(cameras: Cameras, n_frames: int) -> Cameras:
    """``n_frames`` cameras spread evenly along the chain ``cameras[0] -> cameras[1] -> ...`` (both ends included).

    The distance along the chain counts camera movement plus turning (radians times the capture's radius), so
    a camera that only turns still moves along the path. Intrinsics are interpolated linearly after scaling
    every camera to the image size of the first, which all frames get.
    """
    if n_frames < 1:
        raise ValueError(f"a camera path needs at least one frame, got {n_frames}")
    cameras = cameras.to("cpu")
    height, width = cameras.image_size(0)
    sx, sy = width / cameras.width.float(), height / cameras.height.float()
    intrinsics = torch.stack([cameras.fx * sx, cameras.fy * sy, cameras.cx * sx, cameras.cy * sy], dim=-1)
    centers = cameras.centers()
    quaternions = torch.stack([matrix_to_quaternion(c2w[:3, :3]) for c2w in cameras.camtoworlds]).float()
    radius = float((centers - centers.mean(0)).norm(dim=-1).mean()) or 1.0
    turns = 2 * torch.arccos((quaternions[1:] * quaternions[:-1]).sum(-1).abs().clamp(max=1.0))
    lengths = (centers[1:] - centers[:-1]).norm(dim=-1) + turns * radius + 1e-9
    cumulative = torch.cat([torch.zeros(1), lengths.cumsum(0)])
    last = len(cameras) - 1
    poses, frame_intrinsics = [], []
    for k in range(n_frames):
        distance = cumulative[-1] * (k / (n_frames - 1) if n_frames > 1 else 0.0)
        a = min(int(torch.searchsorted(cumulative, distance, right=True)) - 1, max(last - 1, 0))
        b = min(a + 1, last)
        t = min(max(float((distance - cumulative[a]) / (cumulative[b] - cumulative[a])), 0.0), 1.0) if b > a else 0.0
        pose = torch.eye(4)
        pose[:3, :3] = quaternion_to_matrix(slerp(quaternions[a], quaternions[b], t))
        pose[:3, 3] = (1 - t) * centers[a] + t * centers[b]
        poses.append(pose)
        frame_intrinsics.append((1 - t) * intrinsics[a] + t * intrinsics[b])
    fx, fy, cx, cy = torch.stack(frame_intrinsics).unbind(-1)
    return Cameras(torch.stack(poses), fx, fy, cx, cy, torch.full((n_frames,), width), torch.full((n_frames,), height))


def capture_path(cameras: Cameras, n_frames: int) -> Cameras:
    """``n_frames`` cameras along the capture (see :func:`capture_order`), evenly spaced."""
    order = capture_order(cameras.centers().cpu())
    return interpolate_cameras(cameras[order], n_frames)
