"""The bundled demo scene: a small textured tabletop, ray-traced offline, written in nerfstudio format.

Objects (world z is up): a checkerboard disc (the "table"), a striped sphere, a box with a different
colour and pattern on every face, and a small two-tone cylinder. Lambertian shading with one directional
light and ambient light, 2x2 supersampling against aliasing, white background. Cameras orbit the scene
on two rings. Everything is deterministic; no download is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from splat2splat.data.cameras import Cameras, look_at, opencv_to_opengl
from splat2splat.io import save_image, write_json, write_point_ply

BACKGROUND = (1.0, 1.0, 1.0)
_LIGHT = torch.nn.functional.normalize(torch.tensor([0.4, -0.5, 0.8]), dim=0)
_SPHERE_CENTER, _SPHERE_RADIUS = torch.tensor([0.35, 0.25, 0.3]), 0.3
_BOX_MIN, _BOX_MAX = torch.tensor([-0.6, -0.45, 0.0]), torch.tensor([-0.1, 0.05, 0.45])
_CYL_CENTER, _CYL_RADIUS, _CYL_HEIGHT = torch.tensor([0.1, -0.45]), 0.13, 0.5
_TABLE_RADIUS = 1.1


@dataclass
class DemoConfig:
    """Options of the demo scene."""

    n_views: int = 48
    """Number of views (two orbits around the scene; at least 40 is recommended)."""
    image_size: int = 96
    """Width and height of the square images in pixels."""
    n_points: int = 4000
    """Number of surface points written to points3D.ply (a stand-in for a COLMAP sparse cloud)."""
    seed: int = 0
    """Seed of the scene's random content (point positions and colours): the same seed writes the same files."""


def demo_cameras(n_views: int, image_size: int) -> Cameras:
    """Two rings of cameras (elevations 25 and 50 degrees) looking at the table centre."""
    poses = []
    for k in range(n_views):
        ring = k % 2
        elevation = math.radians(25 if ring == 0 else 50)
        azimuth = 2 * math.pi * k / n_views + ring * 0.3
        radius = 2.4
        eye = torch.tensor([radius * math.cos(elevation) * math.cos(azimuth),
                            radius * math.cos(elevation) * math.sin(azimuth),
                            radius * math.sin(elevation)])
        poses.append(look_at(eye, torch.tensor([0.0, 0.0, 0.2])))
    focal = image_size * 1.1  # ~49 degree field of view
    n = n_views
    return Cameras(torch.stack(poses), torch.full((n,), focal), torch.full((n,), focal),
                   torch.full((n,), image_size / 2), torch.full((n,), image_size / 2),
                   torch.full((n,), image_size), torch.full((n,), image_size))


def supersampled_rays(cameras: Cameras, index: int, supersample: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays [H*s, W*s, 3] through an s x s grid of points inside every pixel of camera ``index``."""
    height, width = cameras.image_size(index)
    ys, xs = torch.meshgrid(torch.arange(height * supersample), torch.arange(width * supersample), indexing="ij")
    return cameras.rays(index, (xs + 0.5) / supersample, (ys + 0.5) / supersample)


def trace(origins: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shade rays. Returns colour [..., 3], hit mask [...] and hit points [..., 3]."""
    inf = torch.full(origins.shape[:-1], float("inf"))
    hits = [_hit_sphere(origins, dirs), _hit_box(origins, dirs), _hit_cylinder(origins, dirs), _hit_table(origins, dirs)]
    ts = torch.stack([torch.where(t > 1e-4, t, inf) for t, _ in hits], -1)
    t_min, which = ts.min(-1)
    hit = torch.isfinite(t_min)
    t_safe = torch.where(hit, t_min, torch.zeros_like(t_min))
    points = origins + dirs * t_safe[..., None]
    normals = torch.zeros_like(points)
    for k, (_, normal_fn) in enumerate(hits):
        sel = which == k
        normals[sel] = normal_fn(points[sel])
    albedo = torch.zeros_like(points)
    for k, fn in enumerate((_albedo_sphere, _albedo_box, _albedo_cylinder, _albedo_table)):
        sel = (which == k) & hit
        albedo[sel] = fn(points[sel])
    # Light with shadows from the sphere, box and cylinder onto everything.
    shadow_origin = points + normals * 1e-3
    light = _LIGHT.expand_as(points)
    shadowed = torch.isfinite(_occluder_distance(shadow_origin, light))
    diffuse = (normals * _LIGHT).sum(-1).clamp(min=0.0) * (~shadowed).float()
    color = albedo * (0.35 + 0.65 * diffuse[..., None])
    color = torch.where(hit[..., None], color, torch.tensor(BACKGROUND))
    return color.clamp(0, 1), hit, points


def _occluder_distance(origins, dirs):
    """Distance to the nearest of sphere, box and cylinder along each ray (inf where none is hit)."""
    t = torch.stack([_hit_sphere(origins, dirs)[0], _hit_box(origins, dirs)[0], _hit_cylinder(origins, dirs)[0]], -1)
    t = torch.where(t > 1e-4, t, torch.full_like(t, float("inf")))
    return t.min(-1).values


def _hit_sphere(o, d):
    oc = o - _SPHERE_CENTER
    b = (oc * d).sum(-1)
    c = (oc * oc).sum(-1) - _SPHERE_RADIUS**2
    disc = b * b - c
    sq = disc.clamp(min=0).sqrt()
    t = torch.where(-b - sq > 1e-4, -b - sq, -b + sq)
    t = torch.where(disc >= 0, t, torch.full_like(t, float("inf")))
    return t, lambda p: torch.nn.functional.normalize(p - _SPHERE_CENTER, dim=-1)


def _hit_box(o, d):
    inv = 1.0 / torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    t0, t1 = (_BOX_MIN - o) * inv, (_BOX_MAX - o) * inv
    t_near = torch.minimum(t0, t1).max(-1).values
    t_far = torch.maximum(t0, t1).min(-1).values
    t = torch.where((t_far >= t_near) & (t_far > 0), torch.where(t_near > 1e-4, t_near, t_far), torch.full_like(t_near, float("inf")))

    def normal(p):
        center, half = (_BOX_MIN + _BOX_MAX) / 2, (_BOX_MAX - _BOX_MIN) / 2
        q = (p - center) / half
        axis = q.abs().argmax(-1)
        n = torch.zeros_like(p)
        n[torch.arange(len(p)), axis] = torch.sign(q[torch.arange(len(p)), axis])
        return n

    return t, normal


def _hit_cylinder(o, d):
    oc = o[..., :2] - _CYL_CENTER
    dd = d[..., :2]
    a = (dd * dd).sum(-1).clamp(min=1e-12)
    b = (oc * dd).sum(-1)
    c = (oc * oc).sum(-1) - _CYL_RADIUS**2
    disc = b * b - a * c
    sq = disc.clamp(min=0).sqrt()
    t_side = (-b - sq) / a
    z = o[..., 2] + t_side * d[..., 2]
    t_side = torch.where((disc >= 0) & (z >= 0) & (z <= _CYL_HEIGHT), t_side, torch.full_like(t_side, float("inf")))
    t_cap = (_CYL_HEIGHT - o[..., 2]) / torch.where(d[..., 2].abs() < 1e-9, torch.full_like(d[..., 2], 1e-9), d[..., 2])
    cap_xy = o[..., :2] + t_cap[..., None] * d[..., :2]
    on_cap = ((cap_xy - _CYL_CENTER) ** 2).sum(-1) <= _CYL_RADIUS**2
    t_cap = torch.where(on_cap & (t_cap > 1e-4), t_cap, torch.full_like(t_cap, float("inf")))
    t = torch.minimum(torch.where(t_side > 1e-4, t_side, torch.full_like(t_side, float("inf"))), t_cap)

    def normal(p):
        side = torch.nn.functional.pad(p[..., :2] - _CYL_CENTER, (0, 1))
        top = torch.tensor([0.0, 0.0, 1.0]).expand_as(p)
        return torch.where((p[..., 2:] > _CYL_HEIGHT - 1e-4), top, torch.nn.functional.normalize(side, dim=-1))

    return t, normal


def _hit_table(o, d):
    t = -o[..., 2] / torch.where(d[..., 2].abs() < 1e-9, torch.full_like(d[..., 2], -1e-9), d[..., 2])
    p = o + t[..., None] * d
    inside = (p[..., :2] ** 2).sum(-1) <= _TABLE_RADIUS**2
    t = torch.where(inside & (t > 0), t, torch.full_like(t, float("inf")))
    return t, lambda p: torch.tensor([0.0, 0.0, 1.0]).expand_as(p)


def _albedo_table(p):
    checker = ((torch.floor(p[..., 0] / 0.2) + torch.floor(p[..., 1] / 0.2)) % 2)[..., None]
    rim = (((p[..., :2] ** 2).sum(-1).sqrt() > _TABLE_RADIUS - 0.08).float())[..., None]
    base = checker * torch.tensor([0.85, 0.8, 0.7]) + (1 - checker) * torch.tensor([0.35, 0.3, 0.28])
    return base * (1 - rim) + rim * torch.tensor([0.2, 0.35, 0.6])


def _albedo_sphere(p):
    q = p - _SPHERE_CENTER
    stripes = (torch.sin(q[..., 2] * 30.0) > 0).float()[..., None]
    return stripes * torch.tensor([0.9, 0.15, 0.1]) + (1 - stripes) * torch.tensor([0.95, 0.9, 0.85])


_FACE_COLORS = torch.tensor([[0.1, 0.6, 0.2], [0.95, 0.75, 0.1], [0.2, 0.4, 0.9],
                             [0.7, 0.2, 0.7], [0.1, 0.7, 0.7], [0.9, 0.5, 0.2]])


def _albedo_box(p):
    center, half = (_BOX_MIN + _BOX_MAX) / 2, (_BOX_MAX - _BOX_MIN) / 2
    q = (p - center) / half
    axis = q.abs().argmax(-1)
    positive = (q[torch.arange(len(p)), axis] > 0).long() if len(p) else axis
    base = _FACE_COLORS[axis * 2 + positive]
    dots = ((torch.sin(p[..., 0] * 40) * torch.sin(p[..., 1] * 40) * torch.sin(p[..., 2] * 40 + 1.0)) > 0.2).float()[..., None]
    return base * (1 - 0.5 * dots)


def _albedo_cylinder(p):
    band = (p[..., 2] > _CYL_HEIGHT / 2).float()[..., None]
    return band * torch.tensor([0.95, 0.95, 0.95]) + (1 - band) * torch.tensor([0.1, 0.1, 0.12])


def render_demo_view(cameras: Cameras, index: int, supersample: int = 2) -> torch.Tensor:
    """Ground-truth image [H, W, 3] of the demo scene for any camera."""
    origins, dirs = supersampled_rays(cameras, index, supersample)
    color, _, _ = trace(origins, dirs)
    h, w = cameras.image_size(index)
    return color.reshape(h, supersample, w, supersample, 3).mean((1, 3))


def sample_surface_points(cameras: Cameras, n_points: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points on visible surfaces (with their shaded colours), like a sparse SfM cloud."""
    generator = torch.Generator().manual_seed(seed)
    points, colors = [], []
    for i in range(0, len(cameras), max(1, len(cameras) // 8)):
        origins, dirs = supersampled_rays(cameras, i)
        color, hit, p = trace(origins.reshape(-1, 3), dirs.reshape(-1, 3))
        points.append(p[hit])
        colors.append(color[hit])
    points, colors = torch.cat(points), torch.cat(colors)
    pick = torch.randperm(len(points), generator=generator)[:n_points]
    jitter = torch.randn(len(pick), 3, generator=generator) * 0.005  # SfM points are not exact
    return points[pick] + jitter, colors[pick]


def write_demo_scene(output: str | Path, config: DemoConfig = DemoConfig()) -> Path:
    """Write the demo scene to ``output`` (images/, transforms.json, points3D.ply) and return the folder."""
    output = Path(output)
    cameras = demo_cameras(config.n_views, config.image_size)
    frames = []
    for i in range(len(cameras)):
        name = f"images/frame_{i:05d}.png"
        save_image(output / name, render_demo_view(cameras, i))
        frames.append({"file_path": name, "transform_matrix": opencv_to_opengl(cameras.camtoworlds[i]).tolist()})
    points, colors = sample_surface_points(cameras, config.n_points, config.seed)
    write_point_ply(output / "points3D.ply", points, colors)
    size = config.image_size
    write_json(output / "transforms.json", {
        "camera_model": "OPENCV",
        "fl_x": float(cameras.fx[0]), "fl_y": float(cameras.fy[0]),
        "cx": float(cameras.cx[0]), "cy": float(cameras.cy[0]), "w": size, "h": size,
        "ply_file_path": "points3D.ply",
        "frames": frames,
    })
    return output
