"""What every non-INRIA reader and writer shares: decoded arrays -> checked Parameters, and the other way."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import tyro

from splat2splat.data.dataset import SceneNormalization
from splat2splat.errors import InputError
from splat2splat.gaussians.ply import clamp_opacity_logits, export_tensors, splats_from_file

ARRAY_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")
# A compressed file (.spz, .sog) can claim far more Gaussians than its bytes hold; beyond its format's ratio
# check, a claim above this is refused before anything is allocated, unless the reader is given a larger cap
# (the commands' --max-file-gaussians). Files whose every Gaussian costs fixed bytes (PLY, compressed PLY,
# .splat) are bounded by their size instead.
MAX_FILE_GAUSSIANS = 50_000_000
# The option of every command that reads scene files, with its help in one place.
MaxFileGaussians = Annotated[int, tyro.conf.arg(help=(
    "Most Gaussians a compressed scene file (.spz, .sog) may claim; one claiming more is refused in one line "
    "before anything is allocated. Raise it to read a bigger scene (about 250 bytes of memory per Gaussian)."))]


def check_file_gaussians(path: Path, kind: str, count: int, max_gaussians: int) -> None:
    """Refuse a compressed file claiming more than ``max_gaussians`` (the cap the option sets)."""
    if count > max_gaussians:
        raise InputError(path, f"{kind} claims {count} Gaussians, more than the {max_gaussians} that "
                               f"--max-file-gaussians allows: pass --max-file-gaussians {count} to read it "
                               f"(memory permitting)")


def splats_from_arrays(path: Path, kind: str, arrays: dict[str, np.ndarray], normalization: SceneNormalization,
                       frame_transform: torch.Tensor | None) -> torch.nn.ParameterDict:
    """Decoded file-frame arrays (means [N,3], log-scales [N,3], wxyz quats [N,4], opacity logits [N],
    sh0 [N,1,3], shN [N,K,3]) as Parameters in the normalised frame. Infinite opacities (8-bit 0 / 255) are
    clamped; any other NaN / inf is refused with one line naming the format."""
    arrays = dict(arrays, opacities=clamp_opacity_logits(np.asarray(arrays["opacities"], dtype=np.float64)))
    n = len(arrays["means"])
    bad = np.zeros(n, dtype=bool)
    first: tuple[int, str] | None = None
    for name in ARRAY_NAMES:
        with np.errstate(over="ignore", invalid="ignore"):  # finite as decoded, but beyond float32: infinite
            values = np.asarray(arrays[name], dtype=np.float64).astype(np.float32)
        rows = ~np.isfinite(values.reshape(n, -1)).all(axis=1)
        if rows.any() and (first is None or int(np.argmax(rows)) < first[0]):
            first = (int(np.argmax(rows)), name)
        bad |= rows
    if first is not None:
        raise InputError(path, f"{kind}: {int(bad.sum())} Gaussians have NaN or infinite values "
                               f"(first: Gaussian {first[0]}, {first[1]})")
    tensors = {name: torch.from_numpy(np.ascontiguousarray(arrays[name], dtype=np.float32)) for name in ARRAY_NAMES}
    return splats_from_file(path, tensors, normalization, frame_transform, f"{kind} Gaussian")


def arrays_for_export(path: str | Path, splats: dict[str, torch.Tensor], normalization: SceneNormalization,
                      sh_degree: int | None, frame_transform: torch.Tensor | None) -> dict[str, np.ndarray]:
    """The Gaussians in the file's frame as float64 numpy arrays (non-finite ones left out), for the packers."""
    tensors = export_tensors(path, splats, normalization, sh_degree, frame_transform)
    return {name: tensors[name].double().numpy() for name in ARRAY_NAMES}


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
