"""antimatter15's ``.splat``: 32 bytes per Gaussian, no header, no spherical harmonics beyond the base colour.

Record (little endian): float32 x y z | float32 scale x y z (LINEAR standard deviations) | uint8 r g b a |
uint8 rotation w x y z. Colour bytes are ``round(255 * clamp(0.5 + SH_C0 * f_dc, 0, 1))`` (so base colours
outside [0, 1] are lost), alpha ``round(255 * sigmoid(opacity))``, rotation bytes ``round(128 + 128 * q)`` of
the unit quaternion, read back as ``(byte - 128) / 128`` and renormalised (antimatter15's viewer).
Writers order records by ``exp(sum of log-scales) * opacity``, largest first, as antimatter15's converter does,
so viewers that stream the file show the big splats first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from splat2splat.data.dataset import SceneNormalization
from splat2splat.errors import InputError
from splat2splat.gaussians.formats.common import arrays_for_export, sigmoid, splats_from_arrays
from splat2splat.gaussians.formats.quantize import log_or_nan, normalized_quaternions, to_byte
from splat2splat.gaussians.model import SH_C0
from splat2splat.gaussians.ply import opacity_logits
from splat2splat.io import write_bytes

KIND = ".splat file"
RECORD = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rotation", "u1", 4)])


def load_splat_file(path: str | Path, normalization: SceneNormalization,
                    frame_transform: torch.Tensor | None = None) -> torch.nn.ParameterDict:
    """Read a ``.splat`` into the normalised frame (SH degree 0); problems are one InputError line."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise InputError(path, f"{KIND} is empty: no Gaussians")
    if size % RECORD.itemsize:
        raise InputError(path, f"truncated or corrupt {KIND}: {size} bytes is not a whole number of "
                               f"{RECORD.itemsize}-byte records")
    records = np.fromfile(path, dtype=RECORD)
    rotation = (records["rotation"].astype(np.float64) - 128.0) / 128.0
    zero = ~np.any(rotation, axis=1)
    rotation[zero] = 1.0  # an all-128 rotation has no direction: flagged below as an all-zero quaternion
    quats = normalized_quaternions(rotation)
    quats[zero] = 0.0
    rgba = records["rgba"].astype(np.float64) / 255.0
    return splats_from_arrays(path, KIND, {
        "means": records["position"], "scales": log_or_nan(records["scale"]), "quats": quats,
        "opacities": opacity_logits(rgba[:, 3]), "sh0": ((rgba[:, :3] - 0.5) / SH_C0)[:, None, :],
        "shN": np.zeros((len(records), 0, 3)),
    }, normalization, frame_transform)


def save_splat_file(path: str | Path, splats: dict[str, torch.Tensor], normalization: SceneNormalization,
                    frame_transform: torch.Tensor | None = None) -> int:
    """Write a ``.splat`` (base colour only), atomically, rounding colours and opacities to the nearest byte."""
    arrays = arrays_for_export(path, splats, normalization, 0, frame_transform)
    alpha = sigmoid(arrays["opacities"])
    order = np.argsort(-(np.exp(arrays["scales"].sum(axis=1)) * alpha), kind="stable")
    records = np.empty(len(order), dtype=RECORD)
    records["position"] = arrays["means"][order]
    # exp of a log-scale above ~88.7 is infinite in float32, which no reader (ours included) accepts
    with np.errstate(over="ignore"):
        records["scale"] = np.minimum(np.exp(arrays["scales"][order]), np.finfo(np.float32).max)
    colors = np.clip(0.5 + SH_C0 * arrays["sh0"][order, 0, :], 0.0, 1.0)
    records["rgba"] = to_byte(255.0 * np.concatenate([colors, alpha[order, None]], axis=1))
    records["rotation"] = to_byte(128.0 + 128.0 * normalized_quaternions(arrays["quats"][order]))
    write_bytes(path, records.tobytes())
    return len(records)
