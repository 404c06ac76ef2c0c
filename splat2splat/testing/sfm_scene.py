"""Photos and videos with known poses for testing ``splat2splat process`` (structure from motion) offline.

The demo tabletop's own textures (checkerboard, stripes) are too regular for SIFT at test sizes: at 256 px
COLMAP registers about half of its 40 views, with a wrong focal length. Here the same geometry and shading
are multiplied by a fixed 3D value-noise texture (a function of the surface point, so every view sees the
same texture), which gives SIFT distinct features everywhere. Also: the similarity (Umeyama) alignment of
recovered camera centres to the truth, and a PyAV video writer for frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from splat2splat.data.cameras import Cameras
from splat2splat.data.demo import demo_cameras, supersampled_rays, trace
from splat2splat.io import save_image, to_uint8

_NOISE_SCALES = (0.03, 0.012)  # world units per lattice cell: blobs of a few pixels at 256 px


def _lattice_value(cells: torch.Tensor, seed: int) -> torch.Tensor:
    """A pseudo-random value in [0, 1) for every integer lattice point [..., 3] (a fixed integer hash)."""
    c = cells.long()
    h = (c[..., 0] * 73856093) ^ (c[..., 1] * 19349663) ^ (c[..., 2] * 83492791) ^ (seed * 2654435761)
    h = (h ^ (h >> 13)) * 1274126177
    h = h ^ (h >> 16)
    return (h & 0xFFFF).float() / 65536.0


def value_noise(points: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Smooth 3D value noise in [0, 1] at ``points`` [N, 3], summed over a few scales."""
    total = torch.zeros(points.shape[:-1])
    for k, scale in enumerate(_NOISE_SCALES):
        p = points / scale
        base = torch.floor(p)
        t = p - base
        t = t * t * (3 - 2 * t)  # smoothstep between lattice points
        octave = torch.zeros_like(total)
        for corner in range(8):
            offset = torch.tensor([(corner >> axis) & 1 for axis in range(3)], dtype=points.dtype)
            weight = torch.where(offset.bool(), t, 1 - t).prod(-1)
            octave += weight * _lattice_value(base + offset, seed + k)
        total += octave
    return total / len(_NOISE_SCALES)


def render_textured_view(cameras: Cameras, index: int, supersample: int = 1) -> torch.Tensor:
    """The demo tabletop seen by camera ``index`` [H, W, 3], its surfaces covered with value noise."""
    origins, dirs = supersampled_rays(cameras, index, supersample)
    color, hit, points = trace(origins, dirs)
    texture = 0.35 + 0.65 * value_noise(points)
    color = torch.where(hit[..., None], color * texture[..., None], color)
    h, w = cameras.image_size(index)
    return color.reshape(h, supersample, w, supersample, 3).mean((1, 3))


def textured_scene_views(n_views: int, image_size: int, supersample: int = 1) -> tuple[Cameras, list[torch.Tensor]]:
    """The demo's cameras (two orbits) and the textured renders seen from them."""
    cameras = demo_cameras(n_views, image_size)
    return cameras, [render_textured_view(cameras, i, supersample) for i in range(n_views)]


def write_photos(folder: Path, images: list[torch.Tensor], suffix: str = ".png") -> list[Path]:
    """Images only (no poses), as a user's photo folder."""
    paths = [Path(folder) / f"photo_{i:03d}{suffix}" for i in range(len(images))]
    for path, image in zip(paths, images):
        save_image(path, image)
    return paths


def write_video_av(path: Path, images: list[torch.Tensor], fps: int = 10, rotation: int = 0, crf: int = 0) -> Path:
    """An H.264 (4:4:4) video of ``images`` written with PyAV; ``crf`` 0 is lossless up to the RGB -> YUV
    rounding, higher values compress (at 256 px, crf 4 moved the worst recovered camera of the test's 36 views
    from 0.56 to 0.95 degrees). ``rotation``: display-matrix degrees, counter-clockwise."""
    import av

    path = Path(path)
    height, width = images[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv444p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        if rotation:
            stream.set_display_rotation(rotation)  # counter-clockwise, as PyAV reads it back
        for image in images:
            frame = av.VideoFrame.from_ndarray(to_uint8(image), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def umeyama(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Scale s, rotation R, translation t minimising |s R source + t - target|^2 over points [N, 3]."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    xs, xt = source - mu_s, target - mu_t
    covariance = xt.T @ xs / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2, 2] = -1
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(singular) @ sign) / xs.var(0).sum())
    return scale, rotation, mu_t - scale * rotation @ mu_s


def rotation_error_degrees(a: np.ndarray, b: np.ndarray) -> float:
    """The angle of the rotation between rotation matrices ``a`` and ``b``."""
    cosine = (np.trace(a.T @ b) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))


def pose_errors(truth: Cameras, recovered: Cameras) -> tuple[float, float]:
    """Largest rotation error (degrees) and camera-centre error (fraction of the rig's diameter) of
    ``recovered`` after the similarity that best maps its centres onto ``truth``'s (same views, same order)."""
    true_c2w = truth.camtoworlds.double().numpy()
    found_c2w = recovered.camtoworlds.double().numpy()
    scale, rotation, shift = umeyama(found_c2w[:, :3, 3], true_c2w[:, :3, 3])
    moved = scale * found_c2w[:, :3, 3] @ rotation.T + shift
    centres = true_c2w[:, :3, 3]
    diameter = max(np.linalg.norm(centres[:, None] - centres[None], axis=-1).max(), 1e-12)
    rotation_errors = [rotation_error_degrees(t[:3, :3], rotation @ f[:3, :3]) for t, f in zip(true_c2w, found_c2w)]
    return max(rotation_errors), float(np.linalg.norm(moved - centres, axis=1).max() / diameter)


# A cheaper scene for benchmarks at video sizes (the demo's ray tracer takes tens of seconds per 1080-px view):
# a noise-textured disc and three noise-textured spheres, lit from one direction, no shadows.
_BENCH_SPHERES = torch.tensor([[0.35, 0.25, 0.3, 0.3], [-0.4, -0.2, 0.25, 0.25], [0.1, -0.5, 0.15, 0.15]])
_BENCH_COLOURS = torch.tensor([[0.8, 0.75, 0.65], [0.9, 0.3, 0.2], [0.3, 0.5, 0.9], [0.4, 0.8, 0.4]])
_BENCH_LIGHT = torch.nn.functional.normalize(torch.tensor([0.4, -0.5, 0.8]), dim=0)


def render_benchmark_view(cameras: Cameras, index: int) -> torch.Tensor:
    """The benchmark scene seen by camera ``index`` [H, W, 3] (white background)."""
    origins, dirs = supersampled_rays(cameras, index, 1)
    o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    t_disc = -o[:, 2] / torch.where(d[:, 2].abs() < 1e-9, torch.full_like(d[:, 2], -1e-9), d[:, 2])
    on_disc = (((o + t_disc[:, None] * d)[:, :2] ** 2).sum(-1) <= 1.5**2) & (t_disc > 0)
    hits = [torch.where(on_disc, t_disc, torch.full_like(t_disc, float("inf")))]
    for sphere in _BENCH_SPHERES:
        oc = o - sphere[:3]
        b = (oc * d).sum(-1)
        disc = b * b - (oc * oc).sum(-1) + sphere[3] ** 2
        t = -b - disc.clamp(min=0).sqrt()
        hits.append(torch.where((disc >= 0) & (t > 1e-4), t, torch.full_like(t, float("inf"))))
    t_min, which = torch.stack(hits, -1).min(-1)
    hit = torch.isfinite(t_min)
    points = o + d * torch.where(hit, t_min, torch.zeros_like(t_min))[:, None]
    normals = torch.zeros_like(points)
    normals[:, 2] = 1.0
    for k, sphere in enumerate(_BENCH_SPHERES):
        on_sphere = which == k + 1
        normals[on_sphere] = (points[on_sphere] - sphere[:3]) / sphere[3]
    shade = 0.35 + 0.65 * (normals * _BENCH_LIGHT).sum(-1).clamp(min=0)
    colour = _BENCH_COLOURS[which] * (0.35 + 0.65 * value_noise(points))[:, None] * shade[:, None]
    colour = torch.where(hit[:, None], colour, torch.ones_like(colour))
    h, w = cameras.image_size(index)
    return colour.reshape(h, w, 3).clamp(0, 1)
