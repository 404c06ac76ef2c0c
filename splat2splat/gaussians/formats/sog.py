"""PlayCanvas SOG (what SuperSplat publishes), read (meta versions 1 and 2) and written (version 2): lossless
WebP images plus a ``meta.json``, bundled in a zip (``.sog``) or side by side (``meta.json`` + ``*.webp``).

Every image holds one texel per Gaussian, row by row (Morton order when we write), RGBA bytes:

* ``means_l`` / ``means_u``: low / high bytes of 16-bit x y z over ``meta.means.mins..maxs`` of the
  log-transformed positions ``sign(p) * ln(1 + |p|)`` (so the step grows with the distance from the origin);
* ``quats``: smallest three of the (w, x, y, z) quaternion as ``255 * (q * sqrt2 / 2 + 1/2)``, alpha
  ``252 + index of the largest component`` (made positive);
* ``scales``: three indices into ``meta.scales.codebook`` (256 log-scales) -- version 1: 8 bits over
  per-axis mins..maxs;
* ``sh0``: three indices into ``meta.sh0.codebook`` (256 ``f_dc`` values), alpha ``sigmoid(opacity) * 255``
  -- version 1: 8 bits over per-channel mins..maxs, the alpha over a logit range;
* ``shN`` (SH bands 1-3, optional): ``shN_labels`` holds a 16-bit palette index per Gaussian (R low, G
  high); ``shN_centroids`` (64 palette entries per row, ``coefficients`` texels each) holds, per
  coefficient, three indices into ``meta.shN.codebook`` (version 1: 8 bits over one mins..maxs).

SOG is in the PLY frame (RDF), like our scenes. Codebooks are fitted by 1-D k-means, the SH palette by
two-level k-means over the Gaussians' SH vectors (splat-transform's palette size: up to 65536 entries; a
scene with fewer Gaussians than the palette keeps one entry per Gaussian); both on the CPU.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, features

from splat2splat.data.dataset import SceneNormalization
from splat2splat.errors import InputError
from splat2splat.gaussians.formats.common import (MAX_FILE_GAUSSIANS, arrays_for_export, check_file_gaussians,
                                                 sigmoid, splats_from_arrays)
from splat2splat.gaussians.formats.quantize import from_smallest_three, morton_order, smallest_three, to_byte
from splat2splat.gaussians.ply import opacity_logits
from splat2splat.io import write_bytes

KIND = "SOG file"
META = "meta.json"
SH_COEFFICIENTS = {1: 3, 2: 8, 3: 15}  # per channel, by SH bands
V1_CENTROID_WIDTHS = {192: 1, 512: 2, 960: 3}  # version 1 names its bands by the centroid image's width
PALETTE_ROW = 64  # palette entries per row of shN_centroids
CODEBOOK_SIZE = 256
MAX_PALETTE = 1 << 16  # 16-bit labels
QUAT_TAG = 252
# Claims checked before allocating: a Gaussian costs every image at least a few bits however well WebP
# packs it, so a file claiming more than 64 Gaussians per byte is a lie; an image may hold at most twice
# the Gaussians (plus padding rows) it needs; meta.json and each image at most these sizes.
MAX_GAUSSIANS_PER_BYTE = 64
MAX_META_BYTES = 64 << 20
MAX_DEFLATE_RATIO = 1032
WEBP_OPTIONS = {"lossless": True, "exact": True, "quality": 100, "method": 4}
KMEANS_ITERATIONS = 10  # splat-transform's default
KMEANS_BLOCK = 1 << 24  # distances computed at once (64 MB of float32): Gaussians per block x palette entries

FileReader = Callable[[str], bytes]
FileSize = Callable[[str], int]
SECTIONS = {"means": 2, "scales": 1, "quats": 1, "sh0": 1, "shN": 2}  # meta.json section -> images it names


# --------------------------------------------------------------------------------------------- reading


def load_sog(path: str | Path, normalization: SceneNormalization, frame_transform: torch.Tensor | None = None,
             *, max_gaussians: int = MAX_FILE_GAUSSIANS) -> torch.nn.ParameterDict:
    """Read a ``.sog`` bundle or an unbundled ``meta.json`` into the normalised frame (one claiming more than
    ``max_gaussians`` is refused); problems are one InputError line naming the file."""
    path = Path(path)
    _require_webp(path)
    bundled = path.suffix.lower() != ".json"
    read, size = _zip_reader(path) if bundled else _folder_reader(path)
    meta = _parse_json(path, read(META if bundled else path.name))
    total = size(META if bundled else path.name) + sum(
        size(name) for key, images in SECTIONS.items() if key in meta for name in _files(path, meta, key, images))
    version = meta.get("version")
    if version not in (None, 2):
        raise InputError(path, f"{KIND} meta version {version!r} is not supported (readable: 1, 2)")
    shape = meta["means"].get("shape")
    count = _integer(path, meta.get("count") if version else shape[0] if isinstance(shape, list) and shape
                     else None, "count")
    if count == 0:
        raise InputError(path, f"{KIND} contains no Gaussians")
    if count > MAX_GAUSSIANS_PER_BYTE * total:
        raise InputError(path, f"truncated or corrupt {KIND}: it claims {count} Gaussians in {total} bytes")
    check_file_gaussians(path, KIND, count, max_gaussians)
    images = _Images(path, read, count)
    arrays = {"means": _means(path, meta, images), "quats": _quats(path, meta, images)}
    arrays["scales"] = _lookup(path, meta, "scales", images, 3)
    colors = _lookup(path, meta, "sh0", images, 4)
    arrays["sh0"] = colors[:, None, :3]
    if version is None:
        arrays["opacities"] = colors[:, 3]  # version 1: the alpha spans a logit range
    else:
        arrays["opacities"] = opacity_logits(images.texels(_files(path, meta, "sh0", 1)[0])[:, 3] / 255.0)
    arrays["shN"] = _sh_rest(path, meta, images) if "shN" in meta else np.zeros((count, 0, 3))
    return splats_from_arrays(path, KIND, arrays, normalization, frame_transform)


def _require_webp(path: Path) -> None:
    if not features.check("webp"):
        raise InputError(path, f"{KIND}: this Pillow was built without WebP; reinstall Pillow from PyPI (its wheels "
                               f"include WebP)")


def _zip_reader(path: Path) -> tuple[FileReader, FileSize]:
    total = path.stat().st_size
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
        raise InputError(path, f"not a {KIND} (a zip bundle of meta.json and WebP images): {exc}") from None
    members = {info.filename: info for info in archive.infolist()}

    def read(name: str) -> bytes:
        info = members.get(name)
        if info is None:
            raise InputError(path, f"truncated or corrupt {KIND}: the bundle has no {name!r}")
        limit = MAX_META_BYTES if name == META else MAX_DEFLATE_RATIO * max(info.compress_size, 1)
        if info.file_size > min(limit, MAX_DEFLATE_RATIO * total):
            raise InputError(path, f"truncated or corrupt {KIND}: {name!r} claims {info.file_size} bytes "
                                   f"({info.compress_size} compressed)")
        try:
            return archive.read(info)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
            raise InputError(path, f"truncated or corrupt {KIND}: {name!r} cannot be read ({exc})") from None

    def size(name: str) -> int:  # as stored (what the bundle's bytes hold)
        if name not in members:
            raise InputError(path, f"truncated or corrupt {KIND}: the bundle has no {name!r}")
        return members[name].compress_size
    return read, size


def _folder_reader(meta_path: Path) -> tuple[FileReader, FileSize]:
    """The unbundled form: meta.json names images beside it (plain names only, nothing outside the folder)."""
    folder = meta_path.parent

    def size(name: str) -> int:
        if not (folder / name).is_file():
            raise InputError(meta_path, f"{KIND}: {name!r}, which meta.json names, is not beside it")
        return (folder / name).stat().st_size

    def read(name: str) -> bytes:
        if size(name) > (MAX_META_BYTES if name == meta_path.name else MAX_META_BYTES << 4):
            raise InputError(meta_path, f"{KIND}: {name!r} is {size(name)} bytes, too large")
        return (folder / name).read_bytes()
    return read, size


def _parse_json(path: Path, raw: bytes) -> dict:
    if len(raw) > MAX_META_BYTES:
        raise InputError(path, f"{KIND}: meta.json is {len(raw)} bytes, too large")
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise InputError(path, f"not a {KIND}: meta.json is not JSON ({exc})") from None
    sections = ("means", "scales", "quats", "sh0") + (("shN",) if isinstance(meta, dict) and "shN" in meta else ())
    if not isinstance(meta, dict) or not all(isinstance(meta.get(key), dict) for key in sections):
        raise InputError(path, f"not a {KIND}: meta.json lacks the means, scales, quats or sh0 sections")
    return meta


def _integer(path: Path, value, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InputError(path, f"corrupt {KIND}: meta.json {what} is {value!r}, not a count")
    return value


def _numbers(path: Path, value, length: int, what: str) -> np.ndarray:
    """A list of ``length`` finite numbers from meta.json (or a single number when ``length`` is 0)."""
    ok = isinstance(value, (int, float)) if length == 0 else (
        isinstance(value, list) and len(value) == length and all(isinstance(v, (int, float)) for v in value))
    try:
        array = np.asarray(value, dtype=np.float64) if ok else None
    except OverflowError:  # an integer beyond float64
        array = None
    if array is None or not (np.abs(array) <= np.finfo(np.float32).max).all():  # scenes are float32; NaN fails
        raise InputError(path, f"corrupt {KIND}: meta.json {what} is not {length or 1} finite numbers")
    return array


def _files(path: Path, meta: dict, key: str, count: int) -> list[str]:
    files = meta[key].get("files")
    if not isinstance(files, list) or len(files) < count or not all(isinstance(f, str) for f in files[:count]):
        raise InputError(path, f"corrupt {KIND}: meta.json {key}.files does not name {count} images")
    for name in files[:count]:
        if not name or "/" in name or "\\" in name or name in (".", "..") or ":" in name:
            raise InputError(path, f"corrupt {KIND}: meta.json names {name!r}; images are plain file names")
    return files[:count]


class _Images:
    """Decoded images by name (each once), their sizes checked against the Gaussian count before decoding."""

    def __init__(self, path: Path, read: FileReader, count: int):
        self.path, self.read, self.count, self.cache = path, read, count, {}

    def rgba(self, name: str, least: int, most: int) -> np.ndarray:
        """The image as [height, width, 4] uint8; it must hold ``least`` to ``most`` texels."""
        if name not in self.cache:
            try:
                with Image.open(io.BytesIO(self.read(name))) as image:
                    if image.format != "WEBP":
                        raise InputError(self.path, f"corrupt {KIND}: {name!r} is not a WebP image")
                    width, height = image.size
                    if not least <= width * height <= most:
                        raise InputError(self.path, f"truncated or corrupt {KIND}: {name!r} is {width}x{height}, "
                                                    f"for {least} texels")
                    pixels = np.asarray(image.convert("RGBA"), dtype=np.uint8)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                raise InputError(self.path, f"corrupt {KIND}: {name!r} cannot be decoded ({exc})") from None
            self.cache[name] = pixels
        return self.cache[name]

    def texels(self, name: str) -> np.ndarray:
        """A per-Gaussian image's first ``count`` texels, [count, 4]."""
        image = self.rgba(name, self.count, 2 * self.count + 4096)
        return image.reshape(-1, 4)[:self.count]


def _means(path: Path, meta: dict, images: _Images) -> np.ndarray:
    low_name, high_name = _files(path, meta, "means", 2)
    codes = images.texels(low_name)[:, :3].astype(np.float64) + 256.0 * images.texels(high_name)[:, :3]
    low = _numbers(path, meta["means"].get("mins"), 3, "means.mins")
    span = _numbers(path, meta["means"].get("maxs"), 3, "means.maxs") - low
    with np.errstate(over="ignore", invalid="ignore"):  # huge bounds: infinite positions, refused by name later
        logs = low + np.where(span != 0, span, 1.0) * codes / 65535.0
        return np.sign(logs) * np.expm1(np.abs(logs))


def _quats(path: Path, meta: dict, images: _Images) -> np.ndarray:
    texels = images.texels(_files(path, meta, "quats", 1)[0])
    largest = texels[:, 3].astype(np.int64) - QUAT_TAG
    if ((largest < 0) | (largest > 3)).any():
        bad = int(((largest < 0) | (largest > 3)).sum())
        raise InputError(path, f"corrupt {KIND}: {bad} Gaussians' rotations lack the largest-component tag "
                               f"(alpha 252-255)")
    others = (texels[:, :3] / 255.0 * 2.0 - 1.0) / math.sqrt(2.0)
    return from_smallest_three(largest, others)


def _lookup(path: Path, meta: dict, key: str, images: _Images, channels: int) -> np.ndarray:
    """Version 2: codebook[byte] for the colour channels; version 1: bytes over per-channel mins..maxs."""
    texels = images.texels(_files(path, meta, key, 1)[0])[:, :channels].astype(np.int64)
    if meta.get("version") is None:
        low = _numbers(path, meta[key].get("mins"), channels, f"{key}.mins")
        high = _numbers(path, meta[key].get("maxs"), channels, f"{key}.maxs")
        return low + (high - low) * texels / 255.0
    codebook = _numbers(path, meta[key].get("codebook"), CODEBOOK_SIZE, f"{key}.codebook")
    return codebook[texels[:, :min(channels, 3)]]


def _sh_rest(path: Path, meta: dict, images: _Images) -> np.ndarray:
    """[count, coefficients, 3]: each Gaussian's palette entry, decoded."""
    centroids_name, labels_name = _files(path, meta, "shN", 2)
    version_1 = meta.get("version") is None
    if version_1:  # the centroids' width names the bands
        width = images.rgba(centroids_name, 1, max(V1_CENTROID_WIDTHS) * MAX_PALETTE // PALETTE_ROW).shape[1]
        if width not in V1_CENTROID_WIDTHS:
            raise InputError(path, f"corrupt {KIND}: shN centroids are {width} texels wide (192, 512 or 960)")
        coefficients = SH_COEFFICIENTS[V1_CENTROID_WIDTHS[width]]
        palette = MAX_PALETTE
    else:
        bands = meta["shN"].get("bands")
        if not isinstance(bands, int) or bands not in SH_COEFFICIENTS:
            raise InputError(path, f"corrupt {KIND}: meta.json shN.bands is {bands!r} (1, 2 or 3)")
        coefficients = SH_COEFFICIENTS[bands]
        palette = _integer(path, meta["shN"].get("count"), "shN.count")
        if not 0 < palette <= MAX_PALETTE:
            raise InputError(path, f"corrupt {KIND}: meta.json shN.count is {palette} (1 to {MAX_PALETTE})")
    row = PALETTE_ROW * coefficients
    centroids = images.rgba(centroids_name, row, row * math.ceil(palette / PALETTE_ROW))
    if centroids.shape[1] != row:
        raise InputError(path, f"corrupt {KIND}: shN centroids are {centroids.shape[1]} texels wide, not {row}")
    labels = images.texels(labels_name)
    label = labels[:, 0].astype(np.int64) + 256 * labels[:, 1]
    entries = min(palette, centroids.shape[0] * PALETTE_ROW)
    if (label >= entries).any():
        raise InputError(path, f"corrupt {KIND}: {int((label >= entries).sum())} Gaussians' SH labels are "
                               f"beyond the {entries}-entry palette")
    table = centroids[:, :, :3].reshape(-1, coefficients, 3)[label]  # [count, coefficients, 3] bytes
    if version_1:
        low = _numbers(path, meta["shN"].get("mins"), 0, "shN.mins")
        high = _numbers(path, meta["shN"].get("maxs"), 0, "shN.maxs")
        return low + (high - low) * table / 255.0
    return _numbers(path, meta["shN"].get("codebook"), CODEBOOK_SIZE, "shN.codebook")[table]


# --------------------------------------------------------------------------------------------- writing


def save_sog(path: str | Path, splats: dict[str, torch.Tensor], normalization: SceneNormalization,
             sh_degree: int | None = None, frame_transform: torch.Tensor | None = None,
             palette_size: int | None = None) -> int:
    """Write a version-2 SOG atomically: a ``.sog`` zip bundle, or, for a path ending in ``.json``, that
    meta.json with its images beside it. ``palette_size``: SH palette entries (default: splat-transform's
    choice for the Gaussian count). Returns the Gaussian count."""
    path = Path(path)
    _require_webp(path)
    arrays = arrays_for_export(path, splats, normalization, sh_degree, frame_transform)
    order = morton_order(arrays["means"])
    arrays = {name: value[order] for name, value in arrays.items()}
    n = len(order)
    width = math.ceil(math.sqrt(n) / 4) * 4
    height = math.ceil(n / width / 4) * 4

    def image(texels: np.ndarray, shape: tuple[int, int] = (height, width)) -> bytes:
        rgba = np.zeros((shape[0] * shape[1], 4), dtype=np.uint8)
        rgba[:len(texels), :texels.shape[1]] = texels
        if texels.shape[1] < 4:
            rgba[:len(texels), 3] = 255
        buffer = io.BytesIO()
        Image.fromarray(rgba.reshape(shape[0], shape[1], 4)).save(buffer, "WEBP", **WEBP_OPTIONS)
        return buffer.getvalue()

    logs = np.sign(arrays["means"]) * np.log1p(np.abs(arrays["means"]))
    low, high = logs.min(axis=0), logs.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    codes = np.clip(np.floor((logs - low) / span * 65535.0 + 0.5), 0, 65535).astype(np.uint32)
    largest, others = smallest_three(arrays["quats"])
    scale_book, scale_codes = _codebook(arrays["scales"])
    color_book, color_codes = _codebook(arrays["sh0"][:, 0, :])
    alpha = to_byte(sigmoid(arrays["opacities"]) * 255.0)
    files = {
        "means_l.webp": image((codes & 255).astype(np.uint8)),
        "means_u.webp": image((codes >> 8).astype(np.uint8)),
        "quats.webp": image(np.concatenate([to_byte((others * math.sqrt(2.0) * 0.5 + 0.5) * 255.0),
                                            (QUAT_TAG + largest).astype(np.uint8)[:, None]], axis=1)),
        "scales.webp": image(scale_codes),
        "sh0.webp": image(np.concatenate([color_codes, alpha[:, None]], axis=1)),
    }
    meta = {"version": 2, "asset": {"generator": "splat2splat"}, "count": n,
            "means": {"mins": low.tolist(), "maxs": high.tolist(), "files": ["means_l.webp", "means_u.webp"]},
            "scales": {"codebook": scale_book.tolist(), "files": ["scales.webp"]},
            "quats": {"files": ["quats.webp"]},
            "sh0": {"codebook": color_book.tolist(), "files": ["sh0.webp"]}}
    coefficients = arrays["shN"].shape[1]
    if coefficients:
        bands = {3: 1, 8: 2, 15: 3}[coefficients]
        palette, labels = _palette(arrays["shN"].reshape(n, -1), palette_size or default_palette_size(n))
        sh_book, sh_codes = _codebook(palette.reshape(-1, coefficients, 3))
        rows = math.ceil(len(palette) / PALETTE_ROW)
        files["shN_centroids.webp"] = image(sh_codes.reshape(-1, 3), (rows, PALETTE_ROW * coefficients))
        files["shN_labels.webp"] = image(np.stack([labels & 255, labels >> 8], axis=1).astype(np.uint8))
        meta["shN"] = {"count": len(palette), "bands": bands, "codebook": sh_book.tolist(),
                       "files": ["shN_centroids.webp", "shN_labels.webp"]}
    files[META] = json.dumps(meta).encode()
    if path.suffix.lower() == ".json":
        for name, data in files.items():
            write_bytes(path if name == META else path.parent / name, data)
    else:
        write_bytes(path, _zip(files))
    return n


def default_palette_size(n: int) -> int:
    """splat-transform's SH palette size: 1024 x a power of two up to 64, by the Gaussian count."""
    return int(min(64.0, 2.0 ** math.floor(math.log2(n / 1024))) * 1024)


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():  # stored, as splat-transform writes (WebP is compressed already)
            archive.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_STORED)
    return buffer.getvalue()


def _codebook(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """256 values fitted to ``values`` by 1-D k-means (quantile start), and each value's nearest entry
    (uint8, ``values``' shape)."""
    flat = np.sort(np.asarray(values, dtype=np.float64).ravel())
    book = np.quantile(flat, (np.arange(CODEBOOK_SIZE) + 0.5) / CODEBOOK_SIZE)
    running = np.concatenate([[0.0], np.cumsum(flat)])
    for _ in range(KMEANS_ITERATIONS):  # sorted values split at the midpoints between entries
        bounds = np.concatenate([[0], np.searchsorted(flat, (book[1:] + book[:-1]) / 2), [len(flat)]])
        counts = np.diff(bounds)
        sums = running[bounds[1:]] - running[bounds[:-1]]
        book = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), book))
    codes = np.searchsorted((book[1:] + book[:-1]) / 2, np.asarray(values, dtype=np.float64))
    return book, codes.astype(np.uint8)


def _palette(vectors: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """SH palette and labels: every vector itself when there are no more than ``size``, else two-level
    k-means: ~sqrt(size) groups, then each group's share of the palette fitted to its members. Assigning a
    vector costs ~2 sqrt(size) distances instead of ``size`` (minutes instead of hours for millions of
    Gaussians on a CPU), for a slightly worse fit than one flat k-means."""
    n, size = len(vectors), min(size, MAX_PALETTE)
    if n <= size:
        return vectors, np.arange(n, dtype=np.int64)
    data = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    generator = torch.Generator().manual_seed(0)
    groups = math.isqrt(size - 1) + 1
    _, group_of = _kmeans(data, groups, generator)
    shares = _shares(torch.bincount(group_of, minlength=groups), size)
    palette, labels = [], torch.empty(n, dtype=torch.int64)
    for group in torch.nonzero(shares).flatten().tolist():
        rows = torch.nonzero(group_of == group).flatten()
        centroids, local = _kmeans(data[rows], int(shares[group]), generator)
        labels[rows] = local + sum(len(entries) for entries in palette)
        palette.append(centroids)
    return torch.cat(palette).double().numpy(), labels.numpy()


def _shares(members: torch.Tensor, size: int) -> torch.Tensor:
    """Palette entries per group: one each for the non-empty groups, the rest in proportion to their members
    (largest remainders first), ``size`` in all."""
    quota = members.double() * (size - int((members > 0).sum())) / members.sum()
    shares = quota.floor().long() + (members > 0).long()
    leftover = size - int(shares.sum())
    remainders = torch.where(members > 0, quota - quota.floor(), -1.0)  # empty groups get no entries
    shares[torch.argsort(remainders, descending=True)[:leftover]] += 1
    return shares


def _kmeans(data: torch.Tensor, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means from a random sample of ``data`` (itself when it has no more rows than ``size``)."""
    if len(data) <= size:
        return data, torch.arange(len(data))
    centroids = data[torch.randperm(len(data), generator=generator)[:size]].clone()
    for _ in range(KMEANS_ITERATIONS):
        labels = _nearest(data, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, labels, data)
        counts = torch.bincount(labels, minlength=size).unsqueeze(1)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return centroids, _nearest(data, centroids)


def _nearest(data: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    norms = (centroids ** 2).sum(dim=1)
    rows = max(1, KMEANS_BLOCK // len(centroids))
    labels = [(norms - 2 * chunk @ centroids.T).argmin(dim=1) for chunk in data.split(rows)]
    return torch.cat(labels)
