"""Niantic's ``.spz`` (versions 1-4 read, version 4 written by default, 3 on request). Our own reader (no
maintained pure-Python package exists), following the spz spec / C++.

Versions 1-3: one gzip stream of a 16-byte header and the attribute blocks. Header (little endian): uint32
magic ``0x5053474e`` ("NGSP"), uint32 version, uint32 numPoints, uint8 shDegree (0-3; 4 is refused), uint8
fractionalBits, uint8 flags (0x1 = trained with antialiasing; ignored: we render classic 3DGS), uint8 reserved.

Version 4 (splat-transform's default): a plain 32-byte header (magic, version, numPoints, shDegree,
fractionalBits, flags, uint8 numStreams, uint32 tocByteOffset, 12 reserved bytes), extension records up to
``tocByteOffset`` when flags & 0x2 (``u32 type, u32 length, payload``; skipped, except that Adobe's
coordinate-system record must say RUB, the default), a table of ``numStreams`` x (u64 compressed size, u64
size), then one zstd frame per non-empty block below (no SH block at degree 0).

The blocks, each for all Gaussians in turn:

* positions: 3 x 24-bit signed fixed point with ``fractionalBits`` fraction bits (version 1: float16);
* alphas: 1 byte, ``sigmoid(opacity) * 255`` rounded (0 / 255 decode to +-inf and are clamped);
* colours: 3 bytes, ``f_dc * 0.15 * 255 + 127.5`` rounded, so the DC range is [-3.33, 3.33];
* scales: 3 bytes, ``(log-scale + 10) * 16`` rounded, so log-scales in [-10, 5.94] in 1/16 steps;
* rotations: version 1-2: 3 bytes x y z, ``q * 127.5 + 127.5`` with ``w >= 0`` derived; version 3-4: 4
  bytes, 2 bits index of the largest component + 3 x (1 sign bit, 9 bits magnitude of ``|q_i| * sqrt 2``);
* SH: 3, 8 or 15 coefficients x 3 channels (channel fastest), bytes ``x * 128 + 128``, so SH range [-1, 1];
  writers keep 5 bits for band 1 and 4 bits for bands 2-3 (Niantic's defaults).

SPZ stores a RUB frame (x right, y up, z back); PLY files and our scenes are RDF, so reading and writing
rotate by 180 degrees about x (y and z flip, quaternions and SH coefficients follow), as Niantic's library
and splat-transform do.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
import zstandard

from splat2splat.data.dataset import SceneNormalization
from splat2splat.errors import InputError
from splat2splat.gaussians.formats.common import (MAX_FILE_GAUSSIANS, arrays_for_export, check_file_gaussians,
                                                 sigmoid, splats_from_arrays)
from splat2splat.gaussians.formats.quantize import check_claimed_size, from_smallest_three, smallest_three, to_byte
from splat2splat.gaussians.frames import Similarity
from splat2splat.gaussians.ply import opacity_logits
from splat2splat.io import write_bytes

KIND = "SPZ file"
MAGIC = 0x5053474E
HEADER = struct.Struct("<IIIBBBB")
READ_VERSIONS = (1, 2, 3, 4)
WRITE_VERSIONS = (3, 4)
WRITE_VERSION = 4  # splat-transform's default, and Niantic's
NGSP_HEADER = struct.Struct("<IIIBBBBI12x")  # version 4: ..., numStreams, tocByteOffset, reserved
NGSP_TOC_ENTRY = struct.Struct("<QQ")  # compressed size, size
ANTIALIASED, HAS_EXTENSIONS = 0x1, 0x2
EXTENSION_RECORD = struct.Struct("<II")  # type, payload length
COORDINATE_SYSTEM_EXTENSION = 0xADBE0003  # Adobe's: the frame the data is stored in (u32 payload)
RUB_CODES = (0, 4)  # unspecified (= RUB, the spec's default) and RUB
ZSTD_LEVEL = 12  # Niantic's
SH_COEFFICIENTS = {0: 0, 1: 3, 2: 8, 3: 15}  # per channel, beyond the DC term
COLOR_SCALE = 0.15
SCALE_OFFSET, SCALE_STEPS = 10.0, 16.0
FRACTIONAL_BITS = 12  # Niantic's default: 1/4096 units, +-2048 units of range
MAX_FRACTIONAL_BITS = 24  # positions are 24-bit fixed point
SH1_BITS, SH_REST_BITS = 5, 4
# Gzip can expand data ~1032x, but SPZ's quantised Gaussians compress ~1.2-3x: a file that claims more than
# MAX_SPZ_RATIO times its size (or more than the reader's cap, MAX_FILE_GAUSSIANS by default) is refused
# before anything is allocated.
MAX_SPZ_RATIO = 64
# Version 4: Niantic's bound, numPoints x 9 position bytes <= 1024 x the file's size (zstd can expand more,
# but no real scene does), and the same absolute count.
MAX_ZSTD_RATIO, POSITION_BYTES = 1024, 9
# RUB <-> RDF: a 180-degree turn about x (its own inverse).
RUB_TO_RDF = Similarity(((1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, -1.0)), 1.0, (0.0, 0.0, 0.0))


# --------------------------------------------------------------------------------------------- reading


def load_spz(path: str | Path, normalization: SceneNormalization, frame_transform: torch.Tensor | None = None,
             *, max_gaussians: int = MAX_FILE_GAUSSIANS) -> torch.nn.ParameterDict:
    """Read a version 1-4 ``.spz`` into the normalised frame (one claiming more than ``max_gaussians`` is
    refused); problems are one InputError line."""
    path = Path(path)
    data = _decompress(path, max_gaussians)
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


def _decompress(path: Path, max_gaussians: int) -> bytes:
    """The 16-byte header and the attribute blocks, checked, as a version 1-3 gzip stream holds them (a
    version-4 file is brought to the same form)."""
    raw = path.read_bytes()
    if raw[:4] == b"NGSP":
        return _read_ngsp(path, raw, max_gaussians)
    if raw[:2] != b"\x1f\x8b":
        raise InputError(path, f"not an {KIND} (no gzip stream and no NGSP header)")
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        head = decompressor.decompress(raw, HEADER.size)
        if len(head) < HEADER.size:
            raise InputError(path, f"truncated or corrupt {KIND}: the gzip stream ends inside the header")
        magic, version, n, degree, *_ = HEADER.unpack(head)
        _check_header(path, magic, version, degree)
        if version == 4:
            raise InputError(path, f"corrupt {KIND}: version 4 inside a gzip stream (version 4 is plain NGSP)")
        expected = HEADER.size + n * _bytes_per_gaussian(version, degree)
        check_claimed_size(path, KIND, n, _bytes_per_gaussian(version, degree), MAX_SPZ_RATIO * len(raw))
        check_file_gaussians(path, KIND, n, max_gaussians)
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
        raise InputError(path, f"{KIND} version {version} is not supported (readable: 1, 2, 3, 4)")
    if degree not in SH_COEFFICIENTS:
        raise InputError(path, f"{KIND} has SH degree {degree}; degrees 0 to 3 are supported")


def _read_ngsp(path: Path, raw: bytes, max_gaussians: int) -> bytes:
    """A version-4 file as the same header + blocks a version-3 gzip stream holds (after checking every
    size the table of contents claims against the file, before decompressing)."""
    if len(raw) < NGSP_HEADER.size:
        raise InputError(path, f"truncated or corrupt {KIND}: {len(raw)} bytes, shorter than the version-4 header")
    magic, version, n, degree, fractional_bits, flags, num_streams, toc_offset = NGSP_HEADER.unpack_from(raw)
    _check_header(path, magic, version, degree)
    if version < 4:
        raise InputError(path, f"corrupt {KIND}: version {version} in a plain NGSP header (versions 1-3 are gzip)")
    if n == 0:
        raise InputError(path, f"{KIND} contains no Gaussians")
    check_claimed_size(path, KIND, n, POSITION_BYTES, MAX_ZSTD_RATIO * len(raw))
    check_file_gaussians(path, KIND, n, max_gaussians)
    sizes = [size for size in _block_sizes(version, n, degree).values() if size]
    toc_end = toc_offset + num_streams * NGSP_TOC_ENTRY.size
    if num_streams != len(sizes) or toc_offset < NGSP_HEADER.size or toc_end > len(raw):
        raise InputError(path, f"truncated or corrupt {KIND}: {num_streams} streams with their table at byte "
                               f"{toc_offset} (expected {len(sizes)} streams in a {len(raw)}-byte file)")
    if flags & HAS_EXTENSIONS:
        _check_extensions(path, raw[NGSP_HEADER.size:toc_offset])
    table = [NGSP_TOC_ENTRY.unpack_from(raw, toc_offset + i * NGSP_TOC_ENTRY.size) for i in range(num_streams)]
    if [size for _, size in table] != sizes or toc_end + sum(packed for packed, _ in table) != len(raw):
        raise InputError(path, f"truncated or corrupt {KIND}: its streams' sizes do not match {n} Gaussians of "
                               f"SH degree {degree} in a {len(raw)}-byte file")
    blocks, offset = [], toc_end
    for packed, size in table:
        blocks.append(_unzstd(path, raw[offset:offset + packed], size))
        offset += packed
    return HEADER.pack(magic, version, n, degree, fractional_bits, flags & ANTIALIASED, 0) + b"".join(blocks)


def _check_extensions(path: Path, records: bytes) -> None:
    """Extension records are skipped, except a coordinate system other than SPZ's RUB, which is refused."""
    offset = 0
    while offset + EXTENSION_RECORD.size <= len(records):
        kind, length = EXTENSION_RECORD.unpack_from(records, offset)
        payload = records[offset + EXTENSION_RECORD.size:offset + EXTENSION_RECORD.size + length]
        if kind == COORDINATE_SYSTEM_EXTENSION and len(payload) >= 4:
            code = struct.unpack_from("<I", payload)[0]
            if code not in RUB_CODES:
                raise InputError(path, f"{KIND} stores its Gaussians in coordinate system {code} (Adobe's "
                                       f"extension); only RUB, SPZ's default, is read")
        offset += EXTENSION_RECORD.size + length


def _unzstd(path: Path, frame: bytes, size: int) -> bytes:
    """One zstd frame that must hold exactly ``size`` bytes (its claimed size checked before allocating)."""
    try:
        claimed = zstandard.frame_content_size(frame)
        if claimed not in (-1, size):
            raise InputError(path, f"truncated or corrupt {KIND}: a zstd stream claims {claimed} bytes, "
                                   f"its table {size}")
        data = zstandard.ZstdDecompressor().decompress(frame, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise InputError(path, f"truncated or corrupt {KIND}: zstd stream is damaged ({exc})") from None
    if len(data) != size:
        raise InputError(path, f"truncated or corrupt {KIND}: a zstd stream holds {len(data)} bytes, "
                               f"its table {size}")
    return data


def _block_sizes(version: int, n: int, degree: int) -> dict[str, int]:
    return {"positions": n * (6 if version == 1 else 9), "alphas": n, "colors": 3 * n, "scales": 3 * n,
            "rotations": n * (4 if version >= 3 else 3), "sh": 3 * n * SH_COEFFICIENTS[degree]}


def _bytes_per_gaussian(version: int, degree: int) -> int:
    return sum(_block_sizes(version, 1, degree).values())


def _split_blocks(path: Path, data: bytes, version: int, n: int, degree: int) -> dict[str, bytes]:
    sizes = _block_sizes(version, n, degree)
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
             sh_degree: int | None = None, frame_transform: torch.Tensor | None = None,
             version: int = WRITE_VERSION) -> int:
    """Write a version-4 (zstd) or version-3 (gzip) ``.spz`` atomically (values rounded to the nearest code);
    returns the Gaussian count."""
    if version not in WRITE_VERSIONS:
        raise ValueError(f"SPZ version {version} cannot be written (writable: 3, 4)")
    arrays = arrays_for_export(path, splats, normalization, sh_degree, frame_transform)
    rub = RUB_TO_RDF.apply({name: torch.from_numpy(value) for name, value in arrays.items()})
    arrays = {name: value.double().numpy() for name, value in rub.items()}
    n, degree = len(arrays["means"]), int(round(math.sqrt(arrays["shN"].shape[1] + 1))) - 1
    fractional_bits = _fractional_bits(path, arrays["means"])
    fixed = np.floor(arrays["means"] * (1 << fractional_bits) + 0.5).astype(np.int64) & 0xFFFFFF
    positions = np.stack([fixed & 255, (fixed >> 8) & 255, fixed >> 16], axis=-1).astype(np.uint8)
    blocks = [
        positions.tobytes(),
        to_byte(sigmoid(arrays["opacities"]) * 255.0).tobytes(),
        to_byte(arrays["sh0"][:, 0, :] * (COLOR_SCALE * 255.0) + 127.5).tobytes(),
        to_byte((arrays["scales"] + SCALE_OFFSET) * SCALE_STEPS).tobytes(),
        _pack_rotations(arrays["quats"]).tobytes(),
        _sh_bytes(arrays["shN"]).tobytes(),
    ]
    if version == 4:
        write_bytes(path, _ngsp_file(n, degree, fractional_bits, blocks))
    else:
        header = HEADER.pack(MAGIC, version, n, degree, fractional_bits, 0, 0)
        write_bytes(path, gzip.compress(header + b"".join(blocks), mtime=0))
    return n


def _ngsp_file(n: int, degree: int, fractional_bits: int, blocks: list[bytes]) -> bytes:
    """Version 4: plain header, table of contents, one zstd frame per non-empty block."""
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    frames = [(compressor.compress(block), len(block)) for block in blocks if block]
    header = NGSP_HEADER.pack(MAGIC, 4, n, degree, fractional_bits, 0, len(frames), NGSP_HEADER.size)
    table = b"".join(NGSP_TOC_ENTRY.pack(len(frame), size) for frame, size in frames)
    return header + table + b"".join(frame for frame, _ in frames)


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
