"""Interop with PlayCanvas splat-transform (npm ``@playcanvas/splat-transform``), the tool behind SuperSplat.

Each route takes a scene we wrote, runs it through splat-transform, reads the result back with
:func:`~splat2splat.gaussians.formats.load_splats` and renders it with the CPU rasterizer; the render must stay
within a stated PSNR of the original's. Theirs -> ours: our PLY -> their compressed PLY / SPZ v4 (their
default) and v3 / SOG. Ours -> theirs: our compressed PLY / SPZ v4 and v3 / SOG / .splat -> their PLY. Both
readers must also decode the same SPZ v4 and SOG files (theirs and ours) to the same values. Run with ``-s`` to
print the PSNR of every route (docs/BENCHMARKS.md). Needs node >= 18 and ``npm ci --prefix tests/splat_transform``;
skipped without them. Their SOG writer runs its SH k-means on the CPU (``-g cpu``: no GPU, no webgpu build).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci

from splat2splat.data.dataset import SceneNormalization
from splat2splat.gaussians.formats import load_splats, save_splats
from splat2splat.gaussians.model import rgb_to_sh
from splat2splat.gaussians.rasterize import rasterize
from splat2splat.losses import psnr

TOOL_DIR = Path(__file__).resolve().parents[1] / "splat_transform"
SPLAT_TRANSFORM = TOOL_DIR / "node_modules" / ".bin" / "splat-transform"
IDENTITY = SceneNormalization()
IMAGE_SIZE = 64
TIMEOUT_S = 120

# Route -> (what we write, what splat-transform writes from it, extra arguments, the least PSNR in dB against
# the original render). Thresholds sit ~4-10 dB under what we measured (docs/BENCHMARKS.md).
ROUTES = {
    "our ply -> their compressed ply": ("ply", "their.compressed.ply", (), 48.0),
    "our ply -> their spz (v4)": ("ply", "their.spz", (), 38.0),
    "our ply -> their spz v3": ("ply", "their.spz", ("--spz-version", "3"), 38.0),
    "our ply -> their sog": ("ply", "their.sog", ("-g", "cpu"), 34.0),
    "our compressed ply -> their ply": ("ply_compressed", "their.ply", (), 48.0),
    "our spz (v4) -> their ply": ("spz", "their.ply", (), 38.0),
    "our spz v3 -> their ply": ("spz_v3", "their.ply", (), 38.0),
    "our sog -> their ply": ("sog", "their.ply", (), 34.0),
    "our splat -> their ply": ("splat", "their.ply", (), 60.0),  # against the degree-0 render: .splat has no SH
}
# What we write -> (file name, format, save_splats options).
OUR_FILES = {"ply": ("ours.ply", "ply", {}), "ply_compressed": ("ours.compressed.ply", "ply_compressed", {}),
             "spz": ("ours.spz", "spz", {}), "spz_v3": ("ours.spz", "spz", {"spz_version": 3}),
             "sog": ("ours.sog", "sog", {}), "splat": ("ours.splat", "splat", {})}


def tool_problem() -> str | None:
    if shutil.which("node") is None:
        return "needs node (>= 18) for splat-transform"
    if not SPLAT_TRANSFORM.is_file():
        return "needs splat-transform (npm ci --prefix tests/splat_transform)"
    version = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip().lstrip("v")
    if int(version.split(".")[0] or 0) < 18:
        return f"splat-transform 2.7 needs node >= 18, found {version}"
    return None


pytestmark = pytest.mark.skipif(tool_problem() is not None, reason=tool_problem() or "")


def interop_scene(n: int = 2000) -> dict[str, torch.Tensor]:
    """A ball of coloured, mildly view-dependent Gaussians at the origin (values inside every format's range)."""
    g = torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
    means = directions * torch.rand(n, 1, generator=g) ** (1 / 3)
    colors = 0.2 + 0.6 * torch.rand(n, 3, generator=g)
    return {"means": means, "scales": torch.log(0.03 + 0.05 * torch.rand(n, 3, generator=g)),
            "quats": torch.randn(n, 4, generator=g), "opacities": torch.logit(0.3 + 0.6 * torch.rand(n, generator=g)),
            "sh0": rgb_to_sh(colors)[:, None, :], "shN": 0.1 * torch.randn(n, 15, 3, generator=g)}


def views() -> torch.Tensor:
    """Three cameras 3.5 units from the origin, looking at it (world-to-camera matrices)."""
    mats = []
    for angle in (0.0, 2.1, 4.2):
        eye = torch.tensor([3.5 * math.sin(angle), 0.8, -3.5 * math.cos(angle)])
        forward = torch.nn.functional.normalize(-eye, dim=0)
        right = torch.nn.functional.normalize(torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0]), forward), dim=0)
        down = torch.linalg.cross(forward, right)
        rotation = torch.stack([right, down, forward])  # rows: camera axes in world coordinates
        mat = torch.eye(4)
        mat[:3, :3], mat[:3, 3] = rotation, -rotation @ eye
        mats.append(mat)
    return torch.stack(mats)


def render(splats: dict[str, torch.Tensor], sh_degree: int = 3) -> torch.Tensor:
    sh = torch.cat([splats["sh0"], splats["shN"]], 1).detach()[:, : (sh_degree + 1) ** 2]
    focal = IMAGE_SIZE * 0.9
    ks = torch.tensor([[focal, 0, IMAGE_SIZE / 2], [0, focal, IMAGE_SIZE / 2], [0, 0, 1.0]]).expand(3, 3, 3)
    images, _, _ = rasterize(splats["means"].detach(), splats["quats"].detach(), torch.exp(splats["scales"].detach()),
                             torch.sigmoid(splats["opacities"].detach()), sh, views(), ks, IMAGE_SIZE, IMAGE_SIZE,
                             sh_degree, background=torch.ones(3))
    return images.clamp(0, 1)


def save_ours(folder: Path, ours: str, scene: dict[str, torch.Tensor]) -> Path:
    name, fmt, options = OUR_FILES[ours]
    save_splats(folder / name, scene, IDENTITY, fmt, **options)
    return folder / name


def splat_transform(*args: str) -> None:
    result = subprocess.run([str(SPLAT_TRANSFORM), "-q", "-w", *args], capture_output=True, text=True,
                            timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def scene_and_renders():
    scene = interop_scene()
    return scene, render(scene), render(scene, sh_degree=0)


@pytest.mark.parametrize("route", list(ROUTES))
def test_route_through_splat_transform_keeps_the_render(tmp_path, scene_and_renders, route):
    scene, reference, reference_dc = scene_and_renders
    ours, theirs, arguments, least_psnr = ROUTES[route]
    source = save_ours(tmp_path, ours, scene)
    splat_transform(str(source), *arguments, str(tmp_path / theirs))
    loaded = load_splats(tmp_path / theirs, IDENTITY)
    assert len(loaded["means"]) == len(scene["means"])
    degree = 0 if ours == "splat" else 3
    value = psnr(render(loaded, degree), reference_dc if ours == "splat" else reference)
    print(f"\n{route}: {value:.1f} dB (threshold {least_psnr} dB), {(tmp_path / theirs).stat().st_size} bytes")
    assert value >= least_psnr


@pytest.mark.parametrize("ours", list(OUR_FILES))
def test_our_own_round_trip_for_comparison(tmp_path, scene_and_renders, ours):
    """Our writer -> our reader, the baseline the routes above are compared with (printed with -s)."""
    scene, reference, reference_dc = scene_and_renders
    path = save_ours(tmp_path, ours, scene)
    loaded = load_splats(path, IDENTITY)
    value = psnr(render(loaded, 0 if ours == "splat" else 3), reference_dc if ours == "splat" else reference)
    print(f"\nour {ours} -> ours: {value:.1f} dB, {path.stat().st_size} bytes")
    assert value >= min(threshold for written, _, _, threshold in ROUTES.values() if written == ours)


def test_the_scene_is_sensitive_to_what_the_routes_could_lose(scene_and_renders):
    """The thresholds mean something: losing the SH, or a quarter of the Gaussians, falls below them."""
    scene, reference, reference_dc = scene_and_renders
    lowest = min(threshold for *_, threshold in ROUTES.values())
    assert psnr(reference_dc, reference) < lowest
    fewer = {key: value[: 3 * len(value) // 4] for key, value in scene.items()}
    assert psnr(render(fewer), reference) < lowest


def test_their_default_spz_is_version_4_and_their_sog_a_version_2_bundle(tmp_path, scene_and_renders):
    source = save_ours(tmp_path, "ply", scene_and_renders[0])
    splat_transform(str(source), str(tmp_path / "their.spz"))
    splat_transform(str(source), "-g", "cpu", str(tmp_path / "their.sog"))
    assert (tmp_path / "their.spz").read_bytes()[:8] == b"NGSP\x04\x00\x00\x00"
    with zipfile.ZipFile(tmp_path / "their.sog") as archive:
        assert json.loads(archive.read("meta.json"))["version"] == 2


def same_values(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    """Two decodings of one file, Gaussian by Gaussian, float32 rounding apart. Rotations are compared by the
    covariances they give: SPZ's frame flip may be F R (ours) or F R F (Niantic's), one Gaussian."""
    ours = {key: value.detach().double() for key, value in ours.items()}
    theirs = {key: value.detach().double() for key, value in theirs.items()}
    for key in ("means", "scales", "sh0", "shN"):
        torch.testing.assert_close(ours[key], theirs[key], atol=1e-5, rtol=1e-5, msg=key)
    torch.testing.assert_close(torch.sigmoid(ours["opacities"]), torch.sigmoid(theirs["opacities"]), atol=1e-5, rtol=0)
    covariances = [_quat_scale_to_covar_preci(splats["quats"], torch.exp(ours["scales"]), triu=False)[0]
                   for splats in (ours, theirs)]
    torch.testing.assert_close(covariances[0], covariances[1], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("writer", ["their spz (v4)", "their sog", "our spz (v4)", "our sog"])
def test_both_readers_decode_spz_v4_and_sog_to_the_same_values(tmp_path, scene_and_renders, writer):
    """Within each format's quantisation there is one right answer: their reader (file -> their PLY) and ours
    must agree on it, whichever tool wrote the file."""
    scene = scene_and_renders[0]
    suffix = writer.split()[1]
    if writer.startswith("their"):
        path = tmp_path / f"their.{suffix}"
        splat_transform(str(save_ours(tmp_path, "ply", scene)), *(("-g", "cpu") if suffix == "sog" else ()), str(path))
    else:
        path = save_ours(tmp_path, suffix, scene)
    splat_transform(str(path), str(tmp_path / "decoded.ply"))
    same_values(load_splats(path, IDENTITY), load_splats(tmp_path / "decoded.ply", IDENTITY))
