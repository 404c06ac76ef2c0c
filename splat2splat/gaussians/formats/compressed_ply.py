"""The PlayCanvas / SuperSplat compressed PLY (``*.compressed.ply``), read and written.

Layout (binary little endian), Gaussians in chunks of 256 (in Morton order when we write):

* ``element chunk ceil(N/256)``: float ``min_x min_y min_z max_x max_y max_z``, ``min_scale_* max_scale_*``
  (log-scales) and, optionally, ``min_r min_g min_b max_r max_g max_b`` (base colour bounds);
* ``element vertex N``: uint ``packed_position`` (11-10-11 bits of the chunk's box), ``packed_rotation``
  (2 bits: index of the largest quaternion component, which is made positive; 3 x 10 bits: the others,
  mapped from [-1/sqrt2, 1/sqrt2] to [0, 1]), ``packed_scale`` (11-10-11 bits of the chunk's log-scale
  range), ``packed_color`` (8 bits each of r g b -- ``0.5 + SH_C0 * f_dc``, over the chunk's colour range
  when it has one, else over [0, 1] -- and of the opacity after the sigmoid);
* optional ``element sh N``: uchar ``f_rest_0 ..`` (9, 24 or 45; channel-major like the INRIA PLY), each
  ``byte -> ((byte + 0.5) / 256 - 0.5) * 8`` (0 -> -4 and 255 -> +4 exactly), so SH range [-4, 4].

Decoding follows splat-transform's ``decompressPly`` exactly. An alpha byte of 0 / 255 is an infinite
logit, clamped to +-OPACITY_LOGIT_LIMIT (:mod:`splat2splat.gaussians.ply`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import plyfile
import torch

from splat2splat.data.dataset import SceneNormalization
from splat2splat.errors import InputError
from splat2splat.gaussians.formats.common import arrays_for_export, sigmoid, splats_from_arrays
from splat2splat.gaussians.formats.quantize import (dequantize, from_smallest_three, morton_order, quantize,
                                                     smallest_three, to_byte)
from splat2splat.gaussians.model import SH_C0
from splat2splat.ply_header import check_ply_size, read_ply_header
from splat2splat.io import atomic_write

KIND = "compressed PLY"
CHUNK_SIZE = 256
BOUND_NAMES = ("min_x", "min_y", "min_z", "max_x", "max_y", "max_z",
               "min_scale_x", "min_scale_y", "min_scale_z", "max_scale_x", "max_scale_y", "max_scale_z")
COLOR_BOUND_NAMES = ("min_r", "min_g", "min_b", "max_r", "max_g", "max_b")
PACKED_NAMES = ("packed_position", "packed_rotation", "packed_scale", "packed_color")
SH_REST_COUNTS = (0, 9, 24, 45)
ROTATION_RANGE = math.sqrt(2.0) * 0.5  # the three smaller components of a unit quaternion lie in +-1/sqrt2


def is_compressed_ply(path: Path) -> bool:
    """Whether the PLY header has the chunked layout (a ``chunk`` element and packed vertex properties)."""
    header = read_ply_header(path)
    return (header is not None and "chunk" in header.elements
            and "packed_position" in header.elements.get("vertex", (0, ()))[1])


# --------------------------------------------------------------------------------------------- reading


def load_compressed_ply(path: str | Path, normalization: SceneNormalization,
                        frame_transform: torch.Tensor | None = None) -> torch.nn.ParameterDict:
    """Read a compressed PLY into the normalised frame; any problem is one InputError naming the format."""
    path = Path(path)
    ply = _read(path)
    chunk, vertex = ply["chunk"].data, ply["vertex"].data
    n = len(vertex)
    has_sh = "sh" in ply
    _check_layout(path, ply, n, has_sh)
    bounds = chunk[np.arange(n) // CHUNK_SIZE]  # each Gaussian's chunk row

    def lerp(prefix_min: str, prefix_max: str, fractions: np.ndarray, axes: tuple[str, ...]) -> np.ndarray:
        low = np.stack([bounds[f"{prefix_min}{a}"] for a in axes], 1).astype(np.float64)
        high = np.stack([bounds[f"{prefix_max}{a}"] for a in axes], 1).astype(np.float64)
        return low * (1 - fractions) + high * fractions

    means = lerp("min_", "max_", _unpack_111011(vertex["packed_position"]), ("x", "y", "z"))
    scales = lerp("min_scale_", "max_scale_", _unpack_111011(vertex["packed_scale"]), ("x", "y", "z"))
    rgba = _unpack_8888(vertex["packed_color"])
    colors = (lerp("min_", "max_", rgba[:, :3], ("r", "g", "b")) if "min_r" in chunk.dtype.names else rgba[:, :3])
    with np.errstate(divide="ignore"):
        opacities = -np.log(1.0 / rgba[:, 3] - 1.0)
    return splats_from_arrays(path, KIND, {
        "means": means, "scales": scales, "quats": _unpack_rotation(vertex["packed_rotation"]),
        "opacities": opacities, "sh0": ((colors - 0.5) / SH_C0)[:, None, :],
        "shN": _read_sh(ply["sh"].data, n) if has_sh else np.zeros((n, 0, 3)),
    }, normalization, frame_transform)


def _read(path: Path) -> plyfile.PlyData:
    check_ply_size(path, read_ply_header(path), KIND)
    try:
        return plyfile.PlyData.read(str(path))
    except plyfile.PlyElementParseError as exc:
        raise InputError(path, f"truncated or corrupt {KIND} data ({exc})") from None
    except (plyfile.PlyHeaderParseError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise InputError(path, f"cannot read {KIND} ({type(exc).__name__}: {exc})") from None


def _check_layout(path: Path, ply: plyfile.PlyData, n: int, has_sh: bool) -> None:
    chunk_types = {p.name: _scalar_type(p) for p in ply["chunk"].properties}
    vertex_types = {p.name: _scalar_type(p) for p in ply["vertex"].properties}
    needs_float = [*BOUND_NAMES, *(COLOR_BOUND_NAMES if "min_r" in chunk_types else ())]
    wrong = [name for name in needs_float if chunk_types.get(name) != np.float32]
    if wrong:
        raise InputError(path, f"{KIND}: chunk element lacks float properties {' '.join(wrong)}")
    wrong = [name for name in PACKED_NAMES if vertex_types.get(name) != np.uint32]
    if wrong:
        raise InputError(path, f"{KIND}: vertex element lacks uint properties {' '.join(wrong)}")
    if n == 0:
        raise InputError(path, f"{KIND} contains no Gaussians (element vertex 0)")
    if len(ply["chunk"].data) != math.ceil(n / CHUNK_SIZE):
        raise InputError(path, f"{KIND}: {len(ply['chunk'].data)} chunks for {n} Gaussians, expected "
                               f"{math.ceil(n / CHUNK_SIZE)} (one per {CHUNK_SIZE})")
    if has_sh:
        sh_props = ply["sh"].properties
        if len(sh_props) not in SH_REST_COUNTS[1:] or any(
                p.name != f"f_rest_{i}" or _scalar_type(p) != np.uint8 for i, p in enumerate(sh_props)):
            raise InputError(path, f"{KIND}: sh element must hold uchar f_rest_0.. (9, 24 or 45 of them), found "
                                   f"{len(sh_props)} properties")
        if len(ply["sh"].data) != n:
            raise InputError(path, f"{KIND}: sh element has {len(ply['sh'].data)} rows for {n} Gaussians")


def _scalar_type(prop: plyfile.PlyProperty) -> np.dtype | None:
    """A property's value type; None for a list property (one value per row is what the layout needs)."""
    return None if isinstance(prop, plyfile.PlyListProperty) else np.dtype(prop.val_dtype)


def _unpack_111011(packed: np.ndarray) -> np.ndarray:
    packed = packed.astype(np.uint32)
    return np.stack([dequantize(packed >> 21, 11), dequantize(packed >> 11, 10), dequantize(packed, 11)], 1)


def _unpack_8888(packed: np.ndarray) -> np.ndarray:
    packed = packed.astype(np.uint32)
    return np.stack([dequantize(packed >> shift, 8) for shift in (24, 16, 8, 0)], 1)


def _unpack_rotation(packed: np.ndarray) -> np.ndarray:
    packed = packed.astype(np.uint32)
    others = np.stack([dequantize(packed >> shift, 10) for shift in (20, 10, 0)], 1)
    return from_smallest_three((packed >> 30).astype(np.int64), (others - 0.5) / ROTATION_RANGE)


def _read_sh(sh: np.ndarray, n: int) -> np.ndarray:
    names = sh.dtype.names
    codes = np.stack([sh[name] for name in names], 1).astype(np.float64)  # [N, 3 (K-1)] channel-major
    unit = np.where(codes == 0, 0.0, np.where(codes == 255, 1.0, (codes + 0.5) / 256))
    return ((unit - 0.5) * 8).reshape(n, 3, len(names) // 3).transpose(0, 2, 1)


# --------------------------------------------------------------------------------------------- writing


def save_compressed_ply(path: str | Path, splats: dict[str, torch.Tensor], normalization: SceneNormalization,
                        sh_degree: int | None = None, frame_transform: torch.Tensor | None = None) -> int:
    """Write a compressed PLY (with per-chunk colour bounds), atomically; returns the number of Gaussians.

    Every value is rounded to the nearest code. ``frame_transform`` as in :func:`~splat2splat.gaussians.ply.save_ply`.
    """
    arrays = arrays_for_export(path, splats, normalization, sh_degree, frame_transform)
    order = morton_order(arrays["means"])
    arrays = {name: value[order] for name, value in arrays.items()}
    n = len(order)
    chunk_of = np.arange(n) // CHUNK_SIZE
    colors = 0.5 + SH_C0 * arrays["sh0"][:, 0, :]
    pos_low, pos_high, pos_codes = _chunked(arrays["means"], chunk_of)
    scale_low, scale_high, scale_codes = _chunked(arrays["scales"], chunk_of)
    color_low, color_high, color_codes = _chunked(colors, chunk_of, bits=(8, 8, 8))
    largest, others = smallest_three(arrays["quats"])
    rotation_codes = quantize(others * ROTATION_RANGE + 0.5, 10)

    chunk = np.empty(chunk_of[-1] + 1, dtype=[(name, "<f4") for name in (*BOUND_NAMES, *COLOR_BOUND_NAMES)])
    for values, prefix, axes in ((pos_low, "min_", "xyz"), (pos_high, "max_", "xyz"),
                                 (scale_low, "min_scale_", "xyz"), (scale_high, "max_scale_", "xyz"),
                                 (color_low, "min_", "rgb"), (color_high, "max_", "rgb")):
        for i, axis in enumerate(axes):
            chunk[f"{prefix}{axis}"] = values[:, i]
    vertex = np.empty(n, dtype=[(name, "<u4") for name in PACKED_NAMES])
    vertex["packed_position"] = (pos_codes[:, 0] << 21) | (pos_codes[:, 1] << 11) | pos_codes[:, 2]
    vertex["packed_scale"] = (scale_codes[:, 0] << 21) | (scale_codes[:, 1] << 11) | scale_codes[:, 2]
    vertex["packed_rotation"] = ((largest.astype(np.uint32) << 30) | (rotation_codes[:, 0] << 20)
                                 | (rotation_codes[:, 1] << 10) | rotation_codes[:, 2])
    vertex["packed_color"] = ((color_codes[:, 0] << 24) | (color_codes[:, 1] << 16) | (color_codes[:, 2] << 8)
                              | quantize(sigmoid(arrays["opacities"]), 8))
    elements = [plyfile.PlyElement.describe(chunk, "chunk"), plyfile.PlyElement.describe(vertex, "vertex")]
    if arrays["shN"].shape[1]:
        elements.append(plyfile.PlyElement.describe(_sh_codes(arrays["shN"]), "sh"))
    with atomic_write(path, "wb") as f:
        plyfile.PlyData(elements, text=False, byte_order="<").write(f)
    return n


def _chunked(values: np.ndarray, chunk_of: np.ndarray, bits: tuple[int, int, int] = (11, 10, 11)
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-chunk min / max of [N, 3] values and each value's code within its chunk's range."""
    n_chunks = chunk_of[-1] + 1
    low = np.full((n_chunks, 3), np.inf)
    high = np.full((n_chunks, 3), -np.inf)
    np.minimum.at(low, chunk_of, values)
    np.maximum.at(high, chunk_of, values)
    # Bounds are stored as float32: quantise against the stored values so decoding uses the same ones.
    low, high = low.astype(np.float32).astype(np.float64), high.astype(np.float32).astype(np.float64)
    span = high - low
    fractions = (values - low[chunk_of]) / np.where(span > 0, span, 1.0)[chunk_of]
    codes = np.stack([quantize(fractions[:, i], bits[i]) for i in range(3)], 1)
    return low, high, codes


def _sh_codes(sh_rest: np.ndarray) -> np.ndarray:
    """[N, K-1, 3] -> uchar f_rest_* columns (channel-major), the nearest code of the reader's decoding."""
    channel_major = sh_rest.transpose(0, 2, 1).reshape(len(sh_rest), -1)
    codes = to_byte((channel_major / 8 + 0.5) * 256 - 0.5)  # inverse of (code + 0.5) / 256
    sh = np.empty(len(sh_rest), dtype=[(f"f_rest_{i}", "u1") for i in range(channel_major.shape[1])])
    for i in range(channel_major.shape[1]):
        sh[f"f_rest_{i}"] = codes[:, i]
    return sh
