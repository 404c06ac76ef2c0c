"""Gaussian-scene files of the splat world, read and written: one entry point each way.

:func:`load_splats` reads any of them (by suffix, and for ``.ply`` by header) into the normalised frame;
:func:`save_splats` writes one. What each keeps (value ranges are in the FILE's units):

==================  =====================  ==============================================================
format              suffix                 keeps / loses
==================  =====================  ==============================================================
INRIA 3DGS PLY      ``.ply``               everything, float32; SH degree 0-3; any range
compressed PLY      ``.compressed.ply``    positions 11-10-11 bits and log-scales 11-10-11 bits within each
(PlayCanvas /       (``.ply`` with a       256-Gaussian chunk's box; rotation 2+3x10 bits; base colour
SuperSplat)         ``chunk`` element)     (0.5 + SH_C0 f_dc) 8 bits within the chunk's colour range;
                                           opacity 8 bits after the sigmoid; SH bands 1-3 8 bits over
                                           [-4, 4]
antimatter15       ``.splat``             positions and linear scales float32; colour 8 bits clamped to
                                           [0, 1] (f_dc in [-1.77, 1.77]); opacity 8 bits; rotation 4x8
                                           bits; NO view-dependent SH
Niantic SPZ         ``.spz``               positions 24-bit fixed point (1/4096 units up to +-2048);
(v1-4 read, v4                             log-scales 8 bits over [-10, 5.94]; rotation 2+3x10 bits;
written, v3 on                             f_dc 8 bits over [-3.33, 3.33]; opacity 8 bits; SH 1-3 over
request)                                   [-1, 1] with 5 bits (band 1) / 4 bits (bands 2-3); zstd (v4) or
                                           gzip (v1-3)
PlayCanvas SOG      ``.sog`` (zip) or      positions 16 bits of the log-transformed box (finer near the
(meta v1-2 read,    ``meta.json`` + WebP   origin); rotation 3x8 bits + index; log-scales and f_dc: one of
v2 written)                                256 fitted values each; opacity 8 bits; SH 1-3: one of up to
                                           65536 palette vectors (k-means) of 256 fitted values
==================  =====================  ==============================================================

All values are rounded to the nearest code when written. An 8-bit opacity of 0 or 255 decodes to an
infinite logit, which readers clamp to +-:data:`~splat2splat.gaussians.ply.OPACITY_LOGIT_LIMIT` (renders the
same, see there); NaN and other infinities are refused. Every problem with a file is ONE
:class:`~splat2splat.errors.InputError` line naming the file and the format; counts a header claims are
checked against the file's size before anything is allocated.

``frame_transform`` (both ways) maps the FILE's frame into the dataset frame: pass
``Dataset.frame_transform`` for files in the capture's original frame (what splat2splat writes by default),
None for files in the dataset (transforms.json) frame. See :mod:`splat2splat.gaussians.frames`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from splat2splat.data.dataset import SceneNormalization
from splat2splat.errors import InputError
from splat2splat.gaussians.formats.common import MAX_FILE_GAUSSIANS

SplatFormat = Literal["ply", "ply_compressed", "splat", "spz", "sog"]
# Suffix -> format; ".ply" is INRIA or compressed by header; ".json" is an unbundled SOG's meta.json.
SCENE_FILE_SUFFIXES = (".ply", ".splat", ".spz", ".sog", ".json")
FORMAT_NAMES = {"ply": "INRIA PLY", "ply_compressed": "compressed PLY", "splat": ".splat file", "spz": "SPZ file",
                "sog": "SOG file"}


def splat_file_format(path: str | Path) -> SplatFormat:
    """Which format a scene file holds: by suffix, and for ``.ply`` by its header."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SCENE_FILE_SUFFIXES:
        raise InputError(path, f"unknown Gaussian-scene format '{path.suffix}': use {', '.join(SCENE_FILE_SUFFIXES)}")
    if suffix == ".splat":
        return "splat"
    if suffix == ".spz":
        return "spz"
    if suffix in (".sog", ".json"):
        return "sog"
    from splat2splat.gaussians.formats.compressed_ply import is_compressed_ply

    return "ply_compressed" if path.is_file() and is_compressed_ply(path) else "ply"


def load_splats(path: str | Path, normalization: SceneNormalization, frame_transform: torch.Tensor | None = None,
                *, max_gaussians: int = MAX_FILE_GAUSSIANS) -> torch.nn.ParameterDict:
    """Read an INRIA PLY, compressed PLY, ``.splat``, ``.spz`` or SOG (``.sog`` / ``meta.json``) into trainable
    Parameters (normalised frame); a compressed file (SPZ, SOG) claiming more than ``max_gaussians`` is refused
    (the others are bounded by their size)."""
    path = Path(path)
    fmt = splat_file_format(path)
    if not path.exists():
        raise InputError(path, f"{FORMAT_NAMES[fmt]} does not exist")
    if not path.is_file():
        raise InputError(path, f"is not a file (expected a Gaussian-splatting {path.suffix})")
    if fmt == "spz":
        from splat2splat.gaussians.formats.spz import load_spz

        return load_spz(path, normalization, frame_transform, max_gaussians=max_gaussians)
    if fmt == "sog":
        from splat2splat.gaussians.formats.sog import load_sog

        return load_sog(path, normalization, frame_transform, max_gaussians=max_gaussians)
    if fmt == "ply":
        from splat2splat.gaussians.ply import load_ply as load
    elif fmt == "ply_compressed":
        from splat2splat.gaussians.formats.compressed_ply import load_compressed_ply as load
    else:
        from splat2splat.gaussians.formats.splat_file import load_splat_file as load
    return load(path, normalization, frame_transform)


def save_splats(path: str | Path, splats: dict[str, torch.Tensor], normalization: SceneNormalization,
                fmt: SplatFormat, sh_degree: int | None = None, frame_transform: torch.Tensor | None = None,
                *, spz_version: int = 4) -> int:
    """Write ``splats`` in ``fmt`` atomically (``.splat`` keeps SH degree 0 whatever ``sh_degree``; SPZ is
    written as ``spz_version``, 4 or 3); returns the number of Gaussians written."""
    if fmt == "ply":
        from splat2splat.gaussians.ply import save_ply

        return save_ply(path, splats, normalization, sh_degree, frame_transform)
    if fmt == "ply_compressed":
        from splat2splat.gaussians.formats.compressed_ply import save_compressed_ply

        return save_compressed_ply(path, splats, normalization, sh_degree, frame_transform)
    if fmt == "splat":
        from splat2splat.gaussians.formats.splat_file import save_splat_file

        return save_splat_file(path, splats, normalization, frame_transform)
    if fmt == "spz":
        from splat2splat.gaussians.formats.spz import save_spz

        return save_spz(path, splats, normalization, sh_degree, frame_transform, version=spz_version)
    if fmt == "sog":
        from splat2splat.gaussians.formats.sog import save_sog

        return save_sog(path, splats, normalization, sh_degree, frame_transform)
    raise ValueError(f"unknown Gaussian-scene format {fmt!r}")
