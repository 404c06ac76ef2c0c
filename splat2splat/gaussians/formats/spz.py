"""Niantic's ``.spz`` (versions 1-3 read, version 3 written): a gzip stream of a 16-byte header and
attribute blocks. Our own reader (no maintained pure-Python package exists), following the spz spec / C++.

Header (little endian): uint32 magic ``0x5053474e`` ("NGSP"), uint32 version, uint32 numPoints, uint8
shDegree (0-3; 4 is refused), uint8 fractionalBits, uint8 flags (0x1 = trained with antialiasing; ignored:
we render classic 3DGS), uint8 reserved. Then, each for all Gaussians in turn:

* positions: 3 x 24-bit signed fixed point with ``fractionalBits`` fraction bits (version 1: float16);
* alphas: 1 byte, ``sigmoid(opacity) * 255`` rounded (0 / 255 decode to +-inf and are clamped);
* colours: 3 bytes, ``f_dc * 0.15 * 255 + 127.5`` rounded, so the DC range is [-3.33, 3.33];
* scales: 3 bytes, ``(log-scale + 10) * 16`` rounded, so log-scales in [-10, 5.94] in 1/16 steps;
* rotations: version 1-2: 3 bytes x y z, ``q * 127.5 + 127.5`` with ``w >= 0`` derived; version 3: 4 bytes,
  2 bits index of the largest component + 3 x (1 sign bit, 9 bits magnitude of ``|q_i| * sqrt 2``);
* SH: 3, 8 or 15 coefficients x 3 channels (channel fastest), bytes ``x * 128 + 128``, so SH range [-1, 1];
  writers keep 5 bits for band 1 and 4 bits for bands 2-3 (Niantic's defaults).

SPZ stores a RUB frame (x right, y up, z back); PLY files and our scenes are RDF, so reading and writing
rotate by 180 degrees about x (y and z flip, quaternions and SH coefficients follow), as Niantic's library
and splat-transform do. Version 4 (zstd streams, a plain "NGSP" header) is refused with a hint.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from splat2splat.data.dataset import SceneNormalization
from splat2splat.errors import InputError
from splat2splat.gaussians.formats.common import arrays_for_export, sigmoid, splats_from_arrays
from splat2splat.gaussians.formats.quantize import check_claimed_size, from_smallest_three, smallest_three, to_byte
from splat2splat.gaussians.frames import Similarity
from splat2splat.gaussians.ply import opacity_logits
from splat2splat.io import write_bytes

KIND = "SPZ file"
MAGIC = 0x5053474E
HEADER = struct.Struct("<IIIBBBB")
READ_VERSIONS = (1, 2, 3)
WRITE_VERSION = 3
SH_COEFFICIENTS = {0: 0, 1: 3, 2: 8, 3: 15}  # per channel, beyond the DC term
COLOR_SCALE = 0.15
SCALE_OFFSET, SCALE_STEPS = 10.0, 16.0
FRACTIONAL_BITS = 12  # Niantic's default: 1/4096 units, +-2048 units of range
MAX_FRACTIONAL_BITS = 24  # positions are 24-bit fixed point
SH1_BITS, SH_REST_BITS = 5, 4
# Gzip can expand data ~1032x, but SPZ's quantised Gaussians compress ~1.2-3x: a file that claims more than
# MAX_SPZ_RATIO times its size (or more than MAX_SPZ_GAUSSIANS) is refused before anything is allocated.
MAX_SPZ_RATIO = 64
MAX_SPZ_GAUSSIANS = 50_000_000
# RUB <-> RDF: a 180-degree turn about x (its own inverse).
RUB_TO_RDF = Similarity(((1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, -1.0)), 1.0, (0.0, 0.0, 0.0))


# --------------------------------------------------------------------------------------------- reading


def load_spz(path: str | Path, normalization: SceneNormalization,
             frame_transform: torch.Tensor | None = None) -> torch.nn.ParameterDict:
    """Read a version 1-3 ``.spz`` into the normalised frame; problems are one InputError line."""
    path = Path(path)
    data = _decompress(path)
    _, version, n, degree, fractional_bits, _, _ = HEADER.unpack_from(data)
    if fractional_bits > MAX_FRACTIONAL_BITS:
        raise InputError(path, f"{KIND} claims {fractional_bits} fractional bits of its 24-bit positions; at most "
                               f"{MAX_FRACTIONAL_BITS} are meaningful")
    blocks = _split_blocks(path, data, version, n, degree)
    if version == 1:
        means = np.frombuffer(blocks["positions"], dtype="<f2").reshape(n, 3).astype(np.float64)
    else:
        means = _int24(blocks["positions"]).reshape(n, 3) / (1 << fractional_bits)
    alphas = np.frombuffer(blocks["alphas"], dtype=np.uint8).astype(np.float64) / 255.0
    colors = np.frombuffer(blocks["colors"], dtype=np.uint8).reshape(n, 3).astype(np.float64)
    scales = np.frombuffer(blocks["scales"], dtype=np.uint8).reshape(n, 3).astype(np.float64)
    sh = np.frombuffer(blocks["sh"], dtype=np.uint8).reshape(n, SH_COEFFICIENTS[degree], 3).astype(np.float64)
    arrays = {
        "means": means, "scales": scales / SCALE_STEPS - SCALE_OFFSET,
        "quats": _rotations(blocks["rotations"], version, n), "opacities": opacity_logits(alphas),
        "sh0": ((colors / 255.0 - 0.5) / COLOR_SCALE)[:, None, :], "shN": (sh - 128.0) / 128.0,
    }
    rdf = RUB_TO_RDF.apply({name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in arrays.items()})
    return splats_from_arrays(path, KIND, {name: value.numpy() for name, value in rdf.items()},
                              normalization, frame_transform)


def _decompress(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:4] == b"NGSP":
        version = struct.unpack_from("<I", raw, 4)[0] if len(raw) >= 8 else "?"
        raise InputError(path, f"{KIND} version {version} (zstd streams) is not supported; write version 3, "
                               f"e.g. `splat-transform --spz-version 3 in.spz out.spz`")
    if raw[:2] != b"\x1f\x8b":
        raise InputError(path, f"not an {KIND} (no gzip stream and no NGSP header)")
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        head = decompressor.decompress(raw, HEADER.size)
        if len(head) < HEADER.size:
            raise InputError(path, f"truncated or corrupt {KIND}: the gzip stream ends inside the header")
        magic, version, n, degree, *_ = HEADER.unpack(head)
        _check_header(path, magic, version, degree)
        expected = HEADER.size + n * _bytes_per_gaussian(version, degree)
        check_claimed_size(path, KIND, n, _bytes_per_gaussian(version, degree), MAX_SPZ_RATIO * len(raw))
        if n > MAX_SPZ_GAUSSIANS:
            raise InputError(path, f"{KIND} claims {n} Gaussians, more than the {MAX_SPZ_GAUSSIANS} read")
        body = decompressor.decompress(decompressor.unconsumed_tail, expected - HEADER.size + 1)
    except zlib.error as exc:
        raise InputError(path, f"truncated or corrupt {KIND}: gzip stream is damaged ({exc})") from None
    data = head + body
    if len(data) != expected:
        raise InputError(path, f"truncated or corrupt {KIND}: the header claims {n} Gaussians ({expected} bytes) "
                               f"but the gzip stream holds {'more' if len(data) > expected else len(data)} bytes")
    return data


def _check_header(path: Path, magic: int, version: int, degree: int) -> None:
    if magic != MAGIC:
        raise InputError(path, f"not an {KIND}: gzip data without the NGSP magic number")
    if version not in READ_VERSIONS:
        raise InputError(path, f"{KIND} version {version} is not supported (readable: 1, 2, 3)")
    if degree not in SH_COEFFICIENTS:
        raise InputError(path, f"{KIND} has SH degree {degree}; degrees 0 to 3 are supported")


def _bytes_per_gaussian(version: int, degree: int) -> int:
    position = 6 if version == 1 else 9
    rotation = 4 if version >= 3 else 3
    return position + 1 + 3 + 3 + rotation + 3 * SH_COEFFICIENTS[degree]


def _split_blocks(path: Path, data: bytes, version: int, n: int, degree: int) -> dict[str, bytes]:
    sizes = {"positions": n * (6 if version == 1 else 9), "alphas": n, "colors": 3 * n, "scales": 3 * n,
             "rotations": n * (4 if version >= 3 else 3), "sh": 3 * n * SH_COEFFICIENTS[degree]}
    if n == 0:
        raise InputError(path, f"{KIND} contains no Gaussians")
    blocks, offset = {}, HEADER.size
    for name, size in sizes.items():
        blocks[name] = data[offset:offset + size]
        offset += size
    return blocks


def _int24(raw: bytes) -> np.ndarray:
    b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
    value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
    return np.where(value & 0x800000, value - (1 << 24), value).astype(np.float64)


def _rotations(raw: bytes, version: int, n: int) -> np.ndarray:
    """Our (w, x, y, z) quaternions from the file's (x, y, z, w) encoding."""
    if version < 3:
        xyz = np.frombuffer(raw, dtype=np.uint8).reshape(n, 3).astype(np.float64) / 127.5 - 1.0
        w = np.sqrt(np.maximum(0.0, 1.0 - (xyz ** 2).sum(axis=1)))
        return np.concatenate([w[:, None], xyz], axis=1)
    comp = np.frombuffer(raw, dtype="<u4").astype(np.int64)
    largest = comp >> 30
    others = np.zeros((n, 3))
    for slot in (2, 1, 0):  # the last-written component sits in the lowest bits
        magnitude = (comp & 511) / 511 * math.sqrt(0.5)
        others[:, slot] = np.where((comp >> 9) & 1, -magnitude, magnitude)
        comp = comp >> 10
    xyzw = from_smallest_three(largest, others)
    return xyzw[:, [3, 0, 1, 2]]


# --------------------------------------------------------------------------------------------- writing


def save_spz(path: str | Path, splats: dict[str, torch.Tensor], normalization: SceneNormalization,
             sh_degree: int | None = None, frame_transform: torch.Tensor | None = None) -> int:
    """Write a version-3 ``.spz`` atomically (values rounded to the nearest code); returns the Gaussian count."""
    arrays = arrays_for_export(path, splats, normalization, sh_degree, frame_transform)
    rub = RUB_TO_RDF.apply({name: torch.from_numpy(value) for name, value in arrays.items()})
    arrays = {name: value.double().numpy() for name, value in rub.items()}
    n, degree = len(arrays["means"]), int(round(math.sqrt(arrays["shN"].shape[1] + 1))) - 1
    fractional_bits = _fractional_bits(path, arrays["means"])
    fixed = np.floor(arrays["means"] * (1 << fractional_bits) + 0.5).astype(np.int64) & 0xFFFFFF
    positions = np.stack([fixed & 255, (fixed >> 8) & 255, fixed >> 16], axis=-1).astype(np.uint8)
    blocks = [
        HEADER.pack(MAGIC, WRITE_VERSION, n, degree, fractional_bits, 0, 0),
        positions.tobytes(),
        to_byte(sigmoid(arrays["opacities"]) * 255.0).tobytes(),
        to_byte(arrays["sh0"][:, 0, :] * (COLOR_SCALE * 255.0) + 127.5).tobytes(),
        to_byte((arrays["scales"] + SCALE_OFFSET) * SCALE_STEPS).tobytes(),
        _pack_rotations(arrays["quats"]).tobytes(),
        _sh_bytes(arrays["shN"]).tobytes(),
    ]
    write_bytes(path, gzip.compress(b"".join(blocks), mtime=0))
    return n


def _fractional_bits(path: str | Path, means: np.ndarray) -> int:
    """Niantic's 12 fraction bits, fewer when the scene is too large for 24-bit positions."""
    extent = float(np.abs(means).max()) if len(means) else 0.0
    bits = FRACTIONAL_BITS
    while bits > 0 and extent * (1 << bits) >= (1 << 23) - 1:
        bits -= 1
    if extent >= (1 << 23) - 1:
        raise InputError(path, f"scene extends to {extent:g} units, beyond what SPZ's 24-bit positions hold")
    return bits


def _pack_rotations(quats: np.ndarray) -> np.ndarray:
    """Version-3 smallest-three packing of (w, x, y, z) quaternions, in the file's (x, y, z, w) order."""
    largest, others = smallest_three(quats[:, [1, 2, 3, 0]])
    comp = largest.astype(np.uint32)
    for slot in range(3):
        magnitude = np.floor(np.abs(others[:, slot]) / math.sqrt(0.5) * 511 + 0.5).clip(0, 511).astype(np.uint32)
        comp = (comp << 10) | ((others[:, slot] < 0).astype(np.uint32) << 9) | magnitude
    return comp.astype("<u4")


def _sh_bytes(sh_rest: np.ndarray) -> np.ndarray:
    """[N, K-1, 3] -> bytes (channel fastest); band 1 keeps SH1_BITS, higher bands SH_REST_BITS, rounded."""
    codes = np.clip(np.floor(sh_rest * 128.0 + 128.0 + 0.5), 0, 255)
    bits = np.where(np.arange(sh_rest.shape[1]) < 3, SH1_BITS, SH_REST_BITS)[None, :, None]
    bucket = 2.0 ** (8 - bits)
    codes = np.clip(np.floor((codes + bucket / 2) / bucket) * bucket, 0, 255)
    return codes.astype(np.uint8)
