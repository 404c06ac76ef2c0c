"""Regions of a local edit: what the user points at, as per-view masks and as a set of Gaussians.

A region is given in ONE of four ways (:class:`RegionConfig`):

* ``box`` / ``sphere``: a volume in the capture's ORIGINAL world frame, the frame ``export --crop-box`` and
  scene files use (for nerfstudio data without ``applied_transform`` that is the frame of transforms.json);
  the region holds the scene's Gaussians whose centres lie inside it;
* ``file``: a small JSON file ``{"box": [xmin, ymin, zmin, xmax, ymax, zmax]}`` or ``{"sphere": [cx, cy, cz, r]}``;
* ``gaussians``: a scene file (.ply, compressed .ply, .splat, .spz, e.g. a crop written by ``export
  --crop-box``); the region holds the scene's Gaussians within one standard deviation (geometric mean of the
  axes) of one of its Gaussians (a crop of the same scene selects its own Gaussians);
* ``masks``: a folder of per-view mask images (nerfstudio's convention: white = inside), one per view named
  like the view's image (any of .png/.jpg/.jpeg), at the view's size or at full resolution.

The two forms convert into each other through the scene: the Gaussians of a region PROJECT to soft per-view
masks (the scene rendered with each Gaussian's colour replaced by its in-region indicator: the accumulated
weight of in-region Gaussians, so occluders in front of the region count as outside), and masks LIFT to
Gaussians by their rendered contribution (a Gaussian is inside when at least half of its total rendered
weight over all views falls inside the masks).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from splat2splat.backends import backend_kind
from splat2splat.data.dataset import Dataset
from splat2splat.errors import InputError
from splat2splat.gaussians.formats.common import MAX_FILE_GAUSSIANS
from splat2splat.gaussians.model import SH_C0, activated
from splat2splat.gaussians.rasterize import rasterize
from splat2splat.io import load_image
from splat2splat.scene import GaussianScene, SceneBackend

MASK_SUFFIXES = (".png", ".jpg", ".jpeg")
REGION_SIGMAS = 1.0  # a region given as Gaussians covers each of its Gaussians out to this many standard deviations
BINARY_THRESHOLD = 0.5  # a soft mask counts as inside from here on; a Gaussian lifts into the region from here on


@dataclass
class RegionConfig:
    """The region of a local edit (give at most one of box, sphere, file, gaussians, masks; none = global edit).
    Outside it the scene stays exactly as it was."""

    box: tuple[float, float, float, float, float, float] | None = None
    """Box xmin ymin zmin xmax ymax zmax in the capture's original world frame (the frame of `export
    --crop-box` and scene files); the region holds the Gaussians whose centres lie inside."""
    sphere: tuple[float, float, float, float] | None = None
    """Sphere cx cy cz r in the capture's original world frame (as --region.box)."""
    file: Path | None = None
    """JSON file with {"box": [xmin, ymin, zmin, xmax, ymax, zmax]} or {"sphere": [cx, cy, cz, r]}."""
    gaussians: Path | None = None
    """Scene file (.ply, compressed .ply, .splat, .spz; original frame), e.g. a crop written by `export
    --crop-box`: the region holds the scene's Gaussians within one standard deviation of one of its Gaussians."""
    masks: Path | None = None
    """Folder of per-view masks (white = inside), one per view, named like the view's image (.png/.jpg/.jpeg),
    at the view's size or at full resolution. Gaussians are inside when at least half of their rendered weight
    falls inside the masks."""
    feather: float = 2.0
    """Soft edge of the composite, in pixels (standard deviation of the blur of each mask's inside; 0: hard).
    Pixels outside the mask are always the original's."""

    def given(self) -> list[str]:
        """The options that name a region (more than one is an error)."""
        return [name for name in ("box", "sphere", "file", "gaussians", "masks") if getattr(self, name) is not None]


@dataclass
class Region:
    """A resolved region: soft per-view masks [H, W] in [0, 1] (every view of the dataset) and, on a Gaussian
    scene, which of its Gaussians lie inside."""

    masks: list[torch.Tensor]
    inside: torch.Tensor | None = None  # [N] bool, aligned with the scene's Gaussians


def option(config: RegionConfig) -> str:
    return "--region." + config.given()[0]


def check_region_config(config: RegionConfig) -> None:
    """One-line errors for region options that are wrong before any file is read."""
    given = config.given()
    if len(given) > 1:
        raise InputError(None, f"give one region, not {' and '.join('--region.' + g for g in given)}")
    if config.box is not None:
        check_box(config.box, "--region.box")
    if config.sphere is not None:
        check_sphere(config.sphere, "--region.sphere")
    if not math.isfinite(config.feather) or config.feather < 0:
        raise InputError(None, f"--region.feather {config.feather}: must be a finite number >= 0")


def check_box(box, where: str | Path) -> None:
    values = [float(v) for v in box]
    if len(values) != 6 or not all(math.isfinite(v) for v in values):
        raise InputError(None if isinstance(where, str) else where,
                         f"{where if isinstance(where, str) else 'box'} needs 6 finite numbers xmin ymin zmin xmax "
                         f"ymax zmax, got {box}")
    if not all(lo < hi for lo, hi in zip(values[:3], values[3:])):
        raise InputError(None if isinstance(where, str) else where,
                         f"{where if isinstance(where, str) else 'box'} {values}: needs xmin < xmax, ymin < ymax "
                         f"and zmin < zmax")


def check_sphere(sphere, where: str | Path) -> None:
    values = [float(v) for v in sphere]
    name = where if isinstance(where, str) else "sphere"
    path = None if isinstance(where, str) else where
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise InputError(path, f"{name} needs 4 finite numbers cx cy cz r, got {sphere}")
    if values[3] <= 0:
        raise InputError(path, f"{name} {values}: the radius must be positive")


def volume_from_file(path: Path) -> tuple[str, list[float]]:
    """("box" | "sphere", numbers) of a region JSON file, checked."""
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "region file does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as problem:
        raise InputError(path, f"is not a readable JSON region file: {problem}") from None
    if not isinstance(content, dict) or len(set(content) & {"box", "sphere"}) != 1:
        raise InputError(path, 'needs exactly one of {"box": [xmin, ymin, zmin, xmax, ymax, zmax]} or '
                               '{"sphere": [cx, cy, cz, r]}')
    kind = "box" if "box" in content else "sphere"
    values = content[kind]
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise InputError(path, f'"{kind}" must be a list of numbers, got {values!r}')
    (check_box if kind == "box" else check_sphere)(values, path)
    return kind, [float(v) for v in values]


# ------------------------------------------------------------------------------------------- 3D -> Gaussians


def original_frame_points(points: torch.Tensor, dataset: Dataset) -> torch.Tensor:
    """Normalised-frame points in the capture's original frame (float64)."""
    from splat2splat.gaussians.frames import frame_similarity

    in_dataset_frame = dataset.normalization.to_original(points.detach().double().cpu())
    return frame_similarity(dataset.frame_transform).inverse().apply_to_points(in_dataset_frame)


def inside_volume(points: torch.Tensor, kind: str, values: list[float]) -> torch.Tensor:
    """Which ``points`` (original frame) lie inside the box or sphere."""
    v = torch.tensor(values, dtype=torch.float64)
    if kind == "box":
        return ((points >= v[:3]) & (points <= v[3:])).all(dim=-1)
    return (points - v[:3]).norm(dim=-1) <= v[3]


def inside_region_gaussians(splats: dict[str, torch.Tensor], region: dict[str, torch.Tensor],
                            max_distances: int = 2**24) -> torch.Tensor:
    """Which Gaussians of ``splats`` lie within REGION_SIGMAS (geometric-mean) standard deviations of one of
    ``region``'s (both normalised frame). A Gaussian of the same scene, read back from a crop, is at distance ~0."""
    device = splats["means"].device  # the scene's device: a GPU computes the N x R distances fast
    means = splats["means"].detach().float()
    centres = region["means"].detach().float().to(device)
    # The geometric mean of the axes: a large floater in the region must not swallow its neighbours.
    reach = (REGION_SIGMAS * torch.exp(region["scales"].detach().float().to(device).mean(dim=-1))).clamp(min=1e-6)
    inside = torch.zeros(len(means), dtype=torch.bool, device=device)
    chunk = max(1, max_distances // max(1, len(centres)))  # bounded memory: max_distances at a time
    for start in range(0, len(means), chunk):
        distance = torch.cdist(means[start:start + chunk], centres)  # [n, R]
        inside[start:start + chunk] = (distance <= reach[None]).any(dim=-1)
    return inside.cpu()


# ------------------------------------------------------------------------------------ projection and lifting


def _indicator_sh(values: torch.Tensor) -> torch.Tensor:
    """Degree-0 SH coefficients whose colour is ``values`` [N] in every channel (colour = SH_C0 * sh0 + 0.5)."""
    return ((values.float() - 0.5) / SH_C0)[:, None, None].expand(-1, 1, 3).contiguous()


def render_weights(backend: GaussianScene, dataset: Dataset, view: int, sh: torch.Tensor) -> torch.Tensor:
    """The scene's render of ``view`` with the given degree-0 colours on a black background ([H, W, 3])."""
    cameras = dataset.cameras[view].to(backend.device)
    height, width = cameras.image_size(0)
    p = activated(backend.splats)
    image, _, _ = rasterize(p["means"].detach(), p["quats"].detach(), p["scales"].detach(), p["opacities"].detach(),
                            sh, cameras.viewmats(), cameras.Ks(), width, height, 0,
                            torch.zeros(3, device=backend.device), absgrad=False, backend=backend.rasterizer)
    return image[0]


@torch.no_grad()
def project_gaussians(backend: GaussianScene, dataset: Dataset, inside: torch.Tensor) -> list[torch.Tensor]:
    """Soft per-view masks: the accumulated rendering weight of the in-region Gaussians in each view."""
    sh = _indicator_sh(inside.to(backend.device))
    return [render_weights(backend, dataset, view, sh)[..., 0].clamp(0, 1).cpu() for view in range(len(dataset))]


def lift_masks(backend: GaussianScene, dataset: Dataset, masks: list[torch.Tensor]) -> torch.Tensor:
    """Which Gaussians render mostly inside the masks: the gradient of the mask-weighted render with respect to
    a Gaussian's colour is its rendered weight inside the masks (channel 0) and outside them (channel 1)."""
    n = len(backend.splats["means"])
    totals = torch.zeros(n, 2, dtype=torch.float64)
    for view, mask in enumerate(masks):
        sh = torch.zeros(n, 1, 3, device=backend.device, requires_grad=True)  # colour 0.5: inside clamp's range
        image = render_weights(backend, dataset, view, sh)
        binary = (mask >= BINARY_THRESHOLD).float().to(backend.device)
        pixel_weights = torch.stack([binary, 1 - binary, torch.zeros_like(binary)], dim=-1)
        (image * pixel_weights).sum().backward()
        totals += sh.grad[:, 0, :2].double().cpu() / SH_C0
    seen = totals.sum(dim=-1) > 0
    return seen & (totals[:, 0] >= BINARY_THRESHOLD * totals.sum(dim=-1))


# ------------------------------------------------------------------------------------------------- masks


def read_masks(folder: Path, dataset: Dataset, downscale: int = 1) -> list[torch.Tensor]:
    """One mask per view from ``folder`` (white = inside), at the view's size; one-line errors naming the file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "--region.masks must be a folder of mask images (white = inside), one per view")
    masks = []
    for view, name in enumerate(dataset.image_names):
        path = mask_file(folder, name)
        height, width = dataset.image_size(view)
        try:  # sized from the header before its pixels are decoded: a small file can claim a huge picture
            array = load_image(path, lambda size: check_mask_size(path, size, height, width, downscale))
        except InputError:
            raise
        except Exception as problem:  # a damaged image: the reader's own message, on one line
            raise InputError(path, f"is not a readable mask image: {problem}") from None
        mask = torch.from_numpy(array[..., :3].mean(-1) if array.ndim == 3 else array).float()
        mask = fit_mask_size(path, mask, height, width, downscale)
        masks.append(mask.clamp(0, 1))
    if not any(bool((m >= BINARY_THRESHOLD).any()) for m in masks):
        raise InputError(folder, "every mask is black: the region is empty (white = inside)")
    return masks


def mask_file(folder: Path, image_name: str) -> Path:
    stem = Path(image_name).stem
    for candidate in [folder / image_name, *(folder / (stem + s) for s in MASK_SUFFIXES)]:
        if candidate.is_file():
            return candidate
    raise InputError(folder, f"has no mask for view {image_name} (expected {stem}.png; one mask per view, "
                             f"{sum(1 for p in folder.iterdir() if p.suffix.lower() in MASK_SUFFIXES)} found)")


def mask_sizes(height: int, width: int, downscale: int) -> list[tuple[int, int]]:
    """The (height, width) a mask file of a (height, width) view may have: the view's, or with ``downscale`` > 1
    full resolution (either rounding)."""
    full = [(height * downscale + d, width * downscale + e) for d in (-1, 0, 1) for e in (-1, 0, 1)]
    return [(height, width), *(full if downscale > 1 else [])]


def check_mask_size(path: Path, size: tuple[int, int], height: int, width: int, downscale: int) -> None:
    if tuple(size) not in mask_sizes(height, width, downscale):
        raise InputError(path, f"mask is {size[1]}x{size[0]}, its view is {width}x{height}")


def fit_mask_size(path: Path, mask: torch.Tensor, height: int, width: int, downscale: int) -> torch.Tensor:
    """The mask at (height, width): as is, or shrunk from full resolution (``downscale`` times the view)."""
    check_mask_size(path, tuple(mask.shape), height, width, downscale)
    if tuple(mask.shape) == (height, width):
        return mask
    from splat2splat.imaging import resize_image

    return resize_image(mask[..., None], (height, width), filter="area")[..., 0]


def feathered(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """The composite weight of a mask: 0 wherever the mask is outside, ramping up to 1 over about ``sigma``
    pixels inside it (a blur of the binary mask, only its inner half kept)."""
    binary = (mask >= BINARY_THRESHOLD).float()
    if sigma <= 0:
        return binary
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    blurred = binary[None, None]
    blurred = torch.nn.functional.conv2d(torch.nn.functional.pad(blurred, (radius, radius, 0, 0), mode="replicate"),
                                         kernel.view(1, 1, 1, -1))
    blurred = torch.nn.functional.conv2d(torch.nn.functional.pad(blurred, (0, 0, radius, radius), mode="replicate"),
                                         kernel.view(1, 1, -1, 1))[0, 0]
    # 0 at the edge (blur 0.5), 1 where the blur is nearly whole (0.95), without waiting for its far tails.
    return binary * ((blurred - 0.5) / 0.45).clamp(0, 1)


def composite(edited: torch.Tensor, original: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``edited`` where ``weight`` is 1, ``original`` where it is 0 (exactly: no arithmetic on those pixels)."""
    weight = weight.to(edited)[..., None]
    blended = weight * edited + (1 - weight) * original.to(edited)
    return torch.where(weight > 0, blended, original.to(edited))


# ------------------------------------------------------------------------------------------- resolving


def resolve_region(config: RegionConfig, dataset: Dataset, backend: SceneBackend, downscale: int = 1,
                   max_gaussians: int = MAX_FILE_GAUSSIANS) -> Region | None:
    """The region of ``config`` on this scene (None: no region given); ``max_gaussians`` caps the count a
    compressed --region.gaussians file may claim."""
    given = config.given()
    if not given:
        return None
    check_region_config(config)
    scene = backend.gaussians()
    if config.masks is not None:
        masks = read_masks(config.masks, dataset, downscale)
        inside = lift_masks(scene, dataset, masks) if scene is not None else None
        if inside is not None and not inside.any():
            raise InputError(config.masks, "the masks cover no Gaussian of the scene")
        return Region(masks, inside)
    if scene is None:
        raise InputError(None, f"{option(config)} selects Gaussians; a {backend.name} scene needs --region.masks")
    inside = region_gaussians(config, dataset, scene.splats, max_gaussians)
    if not inside.any():
        raise InputError(getattr(config, given[0]) if given[0] in ("file", "gaussians") else None,
                         f"{option(config)} holds none of the scene's {len(inside)} Gaussians (is it outside "
                         f"the scene, or in another frame?)")
    return Region(project_gaussians(scene, dataset, inside), inside)


def region_gaussians(config: RegionConfig, dataset: Dataset, splats: dict[str, torch.Tensor],
                     max_gaussians: int = MAX_FILE_GAUSSIANS) -> torch.Tensor:
    """Which of ``splats`` (normalised frame) a box, sphere, JSON file or scene file region holds."""
    if config.gaussians is not None:
        from splat2splat.gaussians.formats import load_splats

        region = load_splats(config.gaussians, dataset.normalization, dataset.frame_transform,
                             max_gaussians=max_gaussians)
        if len(region["means"]) == 0:
            raise InputError(config.gaussians, "holds no Gaussians: the region is empty")
        if not torch.isfinite(region["means"]).all() or not torch.isfinite(region["scales"]).all():
            raise InputError(config.gaussians, "holds non-finite positions or scales")
        return inside_region_gaussians(splats, region)
    if config.file is not None:
        kind, values = volume_from_file(config.file)
    elif config.box is not None:
        kind, values = "box", list(config.box)
    else:
        kind, values = "sphere", list(config.sphere)
    return inside_volume(original_frame_points(splats["means"], dataset), kind, values)


def check_region_inputs(config: RegionConfig, dataset: Dataset, downscale: int = 1, backend: str = "gaussian",
                        max_gaussians: int = MAX_FILE_GAUSSIANS) -> None:
    """Read what the region's files say before any training (their problems are one line each); ``backend``:
    the registry name of the scene's backend."""
    check_region_config(config)
    if not backend_kind(backend).holds_gaussians and config.masks is None:
        raise InputError(None, f"{option(config)} selects Gaussians; a {backend} scene needs --region.masks")
    if config.masks is not None:
        read_masks(config.masks, dataset, downscale)
    elif config.file is not None:
        volume_from_file(config.file)
    elif config.gaussians is not None:
        from splat2splat.gaussians.formats import load_splats

        if len(load_splats(config.gaussians, dataset.normalization, dataset.frame_transform,
                           max_gaussians=max_gaussians)["means"]) == 0:
            raise InputError(config.gaussians, "holds no Gaussians: the region is empty")


# ------------------------------------------------------------------------------ preview (no scene needed)

PREVIEW_RAY_SAMPLES = 256  # points per pixel ray that test a box or sphere (normalised frame: cameras within 1)
PREVIEW_RAY_LENGTH = 4.0  # normalised units: past the far side of the camera sphere


@torch.no_grad()
def preview_masks(config: RegionConfig, dataset: Dataset, views: list[int], downscale: int = 1,
                  max_gaussians: int = MAX_FILE_GAUSSIANS) -> list[torch.Tensor]:
    """Masks of ``views`` before any scene exists: the given masks; for a box or sphere the pixels whose rays
    pass through it; for a scene file the accumulated weight of its Gaussians alone (no occlusion by the rest
    of the scene, which the edit itself accounts for)."""
    check_region_inputs(config, dataset, downscale, max_gaussians=max_gaussians)
    if config.masks is not None:
        masks = read_masks(config.masks, dataset, downscale)
        return [masks[v] for v in views]
    if config.gaussians is not None:
        return [render_region_file(config.gaussians, dataset, view, max_gaussians) for view in views]
    kind, values = volume_from_file(config.file) if config.file is not None else \
        ("box", list(config.box)) if config.box is not None else ("sphere", list(config.sphere))
    return [rays_through_volume(dataset, view, kind, values) for view in views]


def rays_through_volume(dataset: Dataset, view: int, kind: str, values: list[float]) -> torch.Tensor:
    height, width = dataset.image_size(view)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    origins, dirs = dataset.cameras.pixel_rays(view, xs.reshape(-1), ys.reshape(-1))
    t = torch.linspace(0.0, PREVIEW_RAY_LENGTH, PREVIEW_RAY_SAMPLES)
    hit = torch.zeros(len(origins), dtype=torch.bool)
    for start in range(0, len(origins), 4096):
        points = origins[start:start + 4096, None] + t[None, :, None] * dirs[start:start + 4096, None]
        inside = inside_volume(original_frame_points(points.reshape(-1, 3), dataset), kind, values)
        hit[start:start + 4096] = inside.view(-1, len(t)).any(dim=-1)
    return hit.view(height, width).float()


def render_region_file(path: Path, dataset: Dataset, view: int,
                       max_gaussians: int = MAX_FILE_GAUSSIANS) -> torch.Tensor:
    from splat2splat.gaussians.formats import load_splats
    from splat2splat.gaussians.rasterize import choose_rasterizer

    splats = load_splats(path, dataset.normalization, dataset.frame_transform, max_gaussians=max_gaussians)
    p = activated({key: value.detach() for key, value in splats.items()})
    cameras = dataset.cameras[view]
    height, width = cameras.image_size(0)
    ones = _indicator_sh(torch.ones(len(p["means"])))
    image, _, _ = rasterize(p["means"], p["quats"], p["scales"], p["opacities"], ones, cameras.viewmats(),
                            cameras.Ks(), width, height, 0, torch.zeros(3), absgrad=False,
                            backend=choose_rasterizer("auto", torch.device("cpu")))
    return image[0, ..., 0].clamp(0, 1)


def region_overlay(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``image`` with the region tinted red and the rest dimmed (a sheet column showing what will change)."""
    weight = (mask >= BINARY_THRESHOLD).float()[..., None]
    red = torch.tensor([1.0, 0.15, 0.1])
    return (weight * (0.55 * image + 0.45 * red) + (1 - weight) * 0.45 * image).clamp(0, 1)
