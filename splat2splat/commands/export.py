"""``splat2splat export``: a Gaussian scene as files for viewers and other tools, optionally slimmed down.

Formats (what each keeps: :mod:`splat2splat.gaussians.formats`):

* ``ply``: INRIA 3DGS PLY (``scene.ply``), read by every Gaussian-splatting viewer and by ``--scene``;
* ``splat``: antimatter15's ``.splat`` (``scene.splat``), 32 bytes per Gaussian, colour only;
* ``ply_compressed``: PlayCanvas / SuperSplat compressed PLY (``scene.compressed.ply``), about 4x smaller;
* ``spz``: Niantic's SPZ (``scene.spz``), about 10x smaller: version 4 (zstd), or 3 (gzip) with ``--spz-version 3``
  for viewers that predate version 4;
* ``sog``: PlayCanvas SOG (``scene.sog``), lossless WebP images in a zip, what SuperSplat publishes (5x smaller
  than PLY on a 2000-Gaussian scene; the SH palette is shared, so more on large ones);
* ``points``: a coloured point cloud (``point_cloud.ply``): Gaussian centres with their base colour, or,
  for a NeRF checkpoint, the NeRF's surface points plus renders of the eval views (its own export).

A checkpoint keeps its Gaussians in the normalised frame; ``--frame`` picks the frame of the files:
``original`` (default: the capture's own frame, e.g. COLMAP's, undoing nerfstudio's ``applied_transform``
-- rotating means, Gaussians and SH colours), ``dataset`` (the frame of the dataset's poses, e.g.
transforms.json) or ``normalized`` (the training frame). Normalisation and frame transform come from the
dataset (``--data``, default the one the checkpoint names), recomputed from its cameras exactly as training
did. A scene FILE (.ply, .splat, .spz, .sog, meta.json) is converted in its own frame and needs no dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from splat2splat.data.dataset import SceneNormalization
from splat2splat.errors import InputError
from splat2splat.gaussians.formats import load_splats, save_splats
from splat2splat.gaussians.formats.common import MAX_FILE_GAUSSIANS, MaxFileGaussians
from splat2splat.gaussians.frames import to_file_frame
from splat2splat.gaussians.model import SPLAT_KEYS, sh_to_rgb
from splat2splat.gaussians.ply import prune_splats
from splat2splat.folder_lock import claim_output_folder
from splat2splat.io import check_output_folder, write_json, write_point_ply
from splat2splat.checkpoint import backend_from_checkpoint
from splat2splat.scene_loading import dataset_frames, dataset_path_for, downscale_for, read_scene_checkpoint

ExportFormat = Literal["ply", "splat", "ply_compressed", "spz", "sog", "points"]
ExportFrame = Literal["original", "dataset", "normalized"]
FILE_NAMES: dict[str, str] = {"ply": "scene.ply", "splat": "scene.splat", "ply_compressed": "scene.compressed.ply",
                              "spz": "scene.spz", "sog": "scene.sog", "points": "point_cloud.ply"}
GAUSSIAN_ONLY_FORMATS = ("ply", "splat", "ply_compressed", "spz", "sog")


@dataclass
class ExportCommand:
    """Export a Gaussian scene as PLY / .splat / compressed PLY / SPZ / SOG (optionally pruned, cropped, fewer SH
    bands)."""

    scene: Path
    """The scene: a splat2splat checkpoint (.pt / .ckpt) or a Gaussian-splatting file (.ply, compressed .ply,
    .splat, .spz, .sog or a SOG's meta.json)."""
    output: Path = Path("outputs/export")
    """Folder for the exported files and export.json."""
    data: Path | None = None
    """Dataset of a checkpoint, for its normalisation and frame (default: the dataset the checkpoint names);
    ignored for a scene file, which is converted in its own frame."""
    formats: tuple[ExportFormat, ...] = ("ply", "splat")
    """Files to write: ply (INRIA 3DGS), splat (antimatter15), ply_compressed (SuperSplat), spz (Niantic),
    sog (PlayCanvas SOG bundle), points (point cloud)."""
    frame: ExportFrame = "original"
    """World frame of a checkpoint's files: original (the capture's, e.g. COLMAP's: undoes nerfstudio's
    applied_transform), dataset (the dataset's poses, e.g. transforms.json) or normalized (training frame)."""
    sh_degree: int | None = None
    """Keep spherical harmonics up to this degree (0 = base colour only; default: all of the scene's)."""
    min_opacity: float = 0.0
    """Leave out Gaussians less opaque than this (0-1; 0 keeps all)."""
    max_scale: float | None = None
    """Leave out Gaussians whose largest standard deviation exceeds this, in the files' units (huge floaters)."""
    crop_box: tuple[float, float, float, float, float, float] | None = None
    """Keep only Gaussians with centres inside xmin ymin zmin xmax ymax zmax (in the --frame of the files)."""
    downscale: int | None = None
    """Image downscale for a NeRF's renders (default: the checkpoint's training downscale)."""
    device: str = "auto"
    """Device a NeRF checkpoint renders on ('cuda', 'cpu' or 'auto')."""
    spz_version: Literal[3, 4] = 4
    """SPZ version --formats spz writes: 4 (zstd streams; Niantic's and splat-transform's default) or 3 (one
    gzip stream, for viewers that predate version 4)."""
    max_file_gaussians: MaxFileGaussians = MAX_FILE_GAUSSIANS


def check_formats(formats: tuple[str, ...]) -> None:
    if not formats:
        raise InputError(None, "--formats is empty: name at least one of " + ", ".join(FILE_NAMES))
    unknown = [f for f in formats if f not in FILE_NAMES]
    if unknown:
        raise InputError(None, f"unknown export format {unknown[0]!r}: use {', '.join(FILE_NAMES)}")


def check_spz_version(cmd: ExportCommand) -> None:
    if cmd.spz_version != 4 and "spz" not in cmd.formats:
        raise InputError(None, f"--spz-version {cmd.spz_version} applies to --formats spz, which is not asked for")


def check_not_overwriting(scene: Path, output_files: list[Path]) -> None:
    """Never write an export over the scene it was read from."""
    for path in output_files:
        if path.resolve() == Path(scene).resolve():
            raise InputError(scene, f"exporting to {path} would overwrite this input: choose another --output")


def gaussians_in_export_frame(cmd: ExportCommand, checkpoint: dict | None) -> torch.nn.ParameterDict:
    """The scene's Gaussians in the frame the files are written in (``cmd.frame``).

    A scene file stays in its own frame, so writing it back as INRIA PLY is bit-exact and the crop box and
    max scale apply in the file's own units.
    """
    if checkpoint is None:
        return load_splats(cmd.scene, SceneNormalization(), max_gaussians=cmd.max_file_gaussians)
    splats = checkpoint_splats(cmd.scene, checkpoint)
    if cmd.frame == "normalized":
        return splats
    normalization, frame_transform = dataset_frames(dataset_path_for(cmd.scene, cmd.data, checkpoint))
    moved = to_file_frame(splats, normalization, frame_transform if cmd.frame == "original" else None)
    return torch.nn.ParameterDict({key: torch.nn.Parameter(moved[key]) for key in SPLAT_KEYS})


def checkpoint_splats(scene: Path, checkpoint: dict) -> torch.nn.ParameterDict:
    """The Gaussians of a Gaussian checkpoint (normalised frame) as float32 Parameters."""
    splats = checkpoint["backend_state"]["splats"]  # checked by read_checkpoint
    return torch.nn.ParameterDict({key: torch.nn.Parameter(splats[key].detach().float()) for key in SPLAT_KEYS})


def write_point_cloud(path: Path, splats: dict[str, torch.Tensor], normalization: SceneNormalization) -> int:
    """Gaussian centres coloured with their base (degree-0) colour, in the original frame."""
    points = normalization.to_original(splats["means"].detach().double()).float()
    colors = sh_to_rgb(splats["sh0"].detach()[:, 0, :]).clamp(0, 1)
    write_point_ply(path, points, colors)
    return len(points)


def export_gaussians(cmd: ExportCommand, splats: dict[str, torch.Tensor]) -> dict[str, str]:
    """Write every requested format of the (already pruned, already in the export frame) Gaussians;
    returns format -> file."""
    written = {}
    for name in dict.fromkeys(cmd.formats):  # each format once, in the order asked for
        path = cmd.output / FILE_NAMES[name]
        if name == "points":
            write_point_cloud(path, splats, SceneNormalization())
        else:
            save_splats(path, splats, SceneNormalization(), name, cmd.sh_degree, spz_version=cmd.spz_version)
        written[name] = str(path)
    return written


def export_other_backend(cmd: ExportCommand, checkpoint: dict) -> dict[str, list[str]]:
    """A scene without Gaussians (a NeRF): only ``points`` (its own export: surface points and renders) applies."""
    gaussian_formats = [f for f in cmd.formats if f in GAUSSIAN_ONLY_FORMATS]
    if gaussian_formats:
        raise InputError(cmd.scene, f"is a {checkpoint['backend']} checkpoint, and {', '.join(gaussian_formats)} "
                                    f"export Gaussians, which need a Gaussian scene; use --formats points for its "
                                    f"point cloud and renders")
    if cmd.sh_degree is not None or cmd.min_opacity or cmd.max_scale is not None or cmd.crop_box is not None:
        raise InputError(cmd.scene, f"is a {checkpoint['backend']} checkpoint: --sh-degree, --min-opacity, "
                                    "--max-scale and --crop-box apply to Gaussian scenes only")
    from splat2splat.data.readers import load_dataset

    dataset = load_dataset(dataset_path_for(cmd.scene, cmd.data, checkpoint),
                           downscale=downscale_for(checkpoint, cmd.downscale))
    backend = backend_from_checkpoint(cmd.scene, checkpoint, cmd.device)
    return {"points": [str(path) for path in backend.export(cmd.output, dataset)]}


def run(cmd: ExportCommand) -> dict:
    """Export the scene; returns what export.json holds."""
    check_formats(cmd.formats)
    check_spz_version(cmd)
    check_not_overwriting(cmd.scene, [cmd.output / FILE_NAMES[f] for f in cmd.formats])
    checkpoint = read_scene_checkpoint(cmd.scene)
    check_output_folder(cmd.output)  # before converting: a folder that cannot hold the files fails now
    claim_output_folder(cmd.output)
    summary: dict = {"scene": str(cmd.scene), "formats": list(cmd.formats)}
    if "spz" in cmd.formats:
        summary["spz_version"] = cmd.spz_version
    if checkpoint is not None and checkpoint["backend"] != "gaussian":
        summary["files"] = export_other_backend(cmd, checkpoint)
    else:
        splats = gaussians_in_export_frame(cmd, checkpoint)
        kept = prune_splats(splats, cmd.min_opacity or None, cmd.max_scale, cmd.crop_box)
        summary.update(gaussians_in=len(splats["means"]), gaussians_out=len(kept["means"]),
                       frame=cmd.frame if checkpoint is not None else "file", sh_degree=cmd.sh_degree,
                       min_opacity=cmd.min_opacity, max_scale=cmd.max_scale, crop_box=cmd.crop_box)
        summary["files"] = export_gaussians(cmd, kept)
    write_json(cmd.output / "export.json", summary)
    print(f"exported {', '.join(summary['files'])} to {cmd.output}")
    return summary
