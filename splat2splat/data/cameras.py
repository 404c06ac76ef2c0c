"""Pinhole cameras in ONE convention: OpenCV.

Camera axes are x right, y down, z forward (looking along +z), as in COLMAP and gsplat.
``camtoworlds[i]`` maps camera coordinates to world coordinates. Readers of other conventions
(nerfstudio / Blender use OpenGL: x right, y up, z backward) convert with :func:`opengl_to_opencv`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Flipping y and z turns an OpenGL camera frame into an OpenCV one (and back: it is its own inverse).
_FLIP_YZ = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


def opengl_to_opencv(camtoworlds: torch.Tensor) -> torch.Tensor:
    """Convert [..., 4, 4] camera-to-world matrices from OpenGL to OpenCV camera axes."""
    return camtoworlds @ _FLIP_YZ.to(camtoworlds)


opencv_to_opengl = opengl_to_opencv  # the flip is an involution


@dataclass
class Cameras:
    """A batch of N pinhole cameras (OpenCV convention, pixel centres at +0.5)."""

    camtoworlds: torch.Tensor  # [N, 4, 4] float32
    fx: torch.Tensor  # [N]
    fy: torch.Tensor  # [N]
    cx: torch.Tensor  # [N]
    cy: torch.Tensor  # [N]
    width: torch.Tensor  # [N] int64
    height: torch.Tensor  # [N] int64

    def __post_init__(self) -> None:
        n = self.camtoworlds.shape[0]
        if self.camtoworlds.shape != (n, 4, 4):
            raise ValueError(f"camtoworlds must be [N, 4, 4], got {tuple(self.camtoworlds.shape)}")
        for name in ("fx", "fy", "cx", "cy", "width", "height"):
            value = torch.as_tensor(getattr(self, name))
            if value.ndim == 0:
                value = value.expand(n)
            if value.shape != (n,):
                raise ValueError(f"{name} must have shape [{n}], got {tuple(value.shape)}")
            dtype = torch.int64 if name in ("width", "height") else torch.float32
            setattr(self, name, value.to(dtype=dtype, device=self.camtoworlds.device).clone())

    def __len__(self) -> int:
        return self.camtoworlds.shape[0]

    def __getitem__(self, index: int | slice | list[int] | torch.Tensor) -> "Cameras":
        if isinstance(index, int):
            index = [index]
        return Cameras(
            self.camtoworlds[index], self.fx[index], self.fy[index], self.cx[index], self.cy[index],
            self.width[index], self.height[index],
        )

    @property
    def device(self) -> torch.device:
        return self.camtoworlds.device

    def to(self, device: str | torch.device) -> "Cameras":
        return Cameras(*(getattr(self, f).to(device) for f in self._fields()))

    @staticmethod
    def _fields() -> tuple[str, ...]:
        return ("camtoworlds", "fx", "fy", "cx", "cy", "width", "height")

    @staticmethod
    def cat(cameras: list["Cameras"]) -> "Cameras":
        return Cameras(*(torch.cat([getattr(c, f) for c in cameras]) for f in Cameras._fields()))

    def Ks(self) -> torch.Tensor:
        """[N, 3, 3] intrinsic matrices."""
        K = torch.zeros(len(self), 3, 3, device=self.device)
        K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = self.fx, self.fy, self.cx, self.cy, 1.0
        return K

    def viewmats(self) -> torch.Tensor:
        """[N, 4, 4] world-to-camera matrices (gsplat's ``viewmats``)."""
        return torch.linalg.inv(self.camtoworlds)

    def centers(self) -> torch.Tensor:
        return self.camtoworlds[:, :3, 3]

    def image_size(self, i: int) -> tuple[int, int]:
        """(height, width) of camera ``i``."""
        return int(self.height[i]), int(self.width[i])

    def rays(self, index: int, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World ray origins and unit directions [..., 3] (on the CPU) of camera ``index`` through the image
        points (u, v) in pixel units: the centre of pixel (x, y) is (x + 0.5, y + 0.5)."""
        fx, fy, cx, cy = (float(value[index]) for value in (self.fx, self.fy, self.cx, self.cy))
        u, v = u.cpu().float(), v.cpu().float()
        dirs_cam = torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u)], -1)
        c2w = self.camtoworlds[index].float().cpu()
        dirs = torch.nn.functional.normalize(dirs_cam @ c2w[:3, :3].T, dim=-1)
        return c2w[:3, 3].expand_as(dirs).contiguous(), dirs

    def pixel_rays(self, index: int, xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`rays` through the centres of the integer pixels (xs, ys)."""
        return self.rays(index, xs.float() + 0.5, ys.float() + 0.5)

    def scaled(self, factor: float) -> "Cameras":
        """Cameras for images resized by ``factor`` (0.5 halves the resolution)."""
        width = torch.clamp((self.width.float() * factor).round(), min=1).long()
        height = torch.clamp((self.height.float() * factor).round(), min=1).long()
        sx, sy = width.float() / self.width.float(), height.float() / self.height.float()
        return Cameras(self.camtoworlds, self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, width, height)

    def transformed(self, transform: torch.Tensor, scale: float) -> "Cameras":
        """Apply a world transform ``x -> scale * (R x + t)`` (``transform`` is [4, 4] rigid) to the poses."""
        c2w = transform.to(self.camtoworlds) @ self.camtoworlds
        c2w = c2w.clone()
        c2w[:, :3, 3] *= scale
        return Cameras(c2w, self.fx, self.fy, self.cx, self.cy, self.width, self.height)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f: getattr(self, f).cpu() for f in self._fields()}

    @staticmethod
    def from_state_dict(state: dict[str, torch.Tensor]) -> "Cameras":
        return Cameras(**{f: state[f] for f in Cameras._fields()})


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor = torch.tensor([0.0, 0.0, 1.0])) -> torch.Tensor:
    """OpenCV camera-to-world [4, 4] at ``eye`` looking at ``target`` (world ``up`` is +z by default)."""
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    right = torch.nn.functional.normalize(torch.linalg.cross(forward, up.to(eye)), dim=-1)
    down = torch.linalg.cross(forward, right)
    c2w = torch.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, eye
    return c2w


def orbit_path(cameras: Cameras, n_frames: int, elevation_offset: float = 0.0) -> Cameras:
    """A turntable path: ``n_frames`` cameras on a circle around the scene centre that the input cameras look at.

    The circle lies at the mean camera height and radius around the vertical axis fitted to the inputs,
    with the intrinsics of the first input camera. Cameras that share one centre (a single view, a tripod
    panorama) have no circle to follow: the path then turns around the vertical axis at that centre.
    """
    centers = cameras.centers().cpu().float()
    up = vertical_axis(cameras)
    target = _focus_point(cameras.camtoworlds.cpu().float())
    offsets = centers - target
    height = (offsets @ up).mean() + elevation_offset
    horizontal = offsets - (offsets @ up)[:, None] * up
    distances = horizontal.norm(dim=-1)
    radius = distances.mean()
    scale = float(centers.abs().max()) + float(target.abs().max()) + 1.0
    if not bool(torch.isfinite(radius)) or radius <= 1e-6 * scale:
        return _panning_path(cameras, n_frames, up)
    # The circle starts at the first camera, or the farthest off the axis when the first is on it.
    first = 0 if distances[0] > 1e-6 * scale else int(distances.argmax())
    start = horizontal[first] / distances[first]
    side = torch.linalg.cross(up, start)
    poses = []
    for k in range(n_frames):
        angle = torch.tensor(2 * torch.pi * k / n_frames)
        eye = target + up * height + radius * (start * torch.cos(angle) + side * torch.sin(angle))
        poses.append(look_at(eye, target, up))
    return _path_cameras(cameras, poses)


def vertical_axis(cameras: Cameras) -> torch.Tensor:
    """The unit "up" of a capture: the mean of its cameras' up axes (world +z when they cancel out)."""
    up = -cameras.camtoworlds[:, :3, 1].cpu().float().mean(0)  # OpenCV y is down
    norm = up.norm()
    return up / norm if bool(torch.isfinite(norm)) and norm > 1e-6 else torch.tensor([0.0, 0.0, 1.0])


def _panning_path(cameras: Cameras, n_frames: int, up: torch.Tensor) -> Cameras:
    """``n_frames`` cameras at the inputs' common centre, looking around the vertical axis ``up``."""
    eye = cameras.centers().cpu().float().mean(0)
    forward = cameras.camtoworlds[0, :3, 2].cpu().float()
    start = forward - (forward @ up) * up
    if start.norm() <= 1e-6:  # the first camera looks straight up or down: start from any horizontal direction
        start = torch.linalg.cross(up, torch.tensor([1.0, 0.0, 0.0]) if abs(float(up[0])) < 0.9
                                   else torch.tensor([0.0, 1.0, 0.0]))
    start = start / start.norm()
    side = torch.linalg.cross(up, start)
    poses = []
    for k in range(n_frames):
        angle = torch.tensor(2 * torch.pi * k / n_frames)
        poses.append(look_at(eye, eye + start * torch.cos(angle) + side * torch.sin(angle), up))
    return _path_cameras(cameras, poses)


def _path_cameras(cameras: Cameras, poses: list[torch.Tensor]) -> Cameras:
    """Cameras at ``poses`` with the intrinsics of the first input camera."""
    first, n_frames = cameras[0], len(poses)
    repeat = lambda t: t.cpu().expand(n_frames)  # noqa: E731
    return Cameras(torch.stack(poses), repeat(first.fx), repeat(first.fy), repeat(first.cx), repeat(first.cy),
                   repeat(first.width), repeat(first.height))


def _focus_point(camtoworlds: torch.Tensor) -> torch.Tensor:
    """Least-squares point closest to all optical axes (where the cameras look)."""
    origins, directions = camtoworlds[:, :3, 3], camtoworlds[:, :3, 2]
    projector = torch.eye(3) - directions[:, :, None] * directions[:, None, :]
    lhs, rhs = projector.sum(0), (projector @ origins[:, :, None]).sum(0)
    try:
        return torch.linalg.solve(lhs, rhs)[:, 0]
    except RuntimeError:  # all axes parallel
        return origins.mean(0)
