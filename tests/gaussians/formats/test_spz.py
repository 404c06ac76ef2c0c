"""SPZ decoding checked against files built byte by byte from the spec (not by our writer)."""

from __future__ import annotations

import gzip
import math
import struct

import pytest
import torch
import zstandard
from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci

from splat2splat.data.dataset import SceneNormalization
from splat2splat.gaussians.formats import load_splats

QUAT_XYZW = (0.6, 0.2, -0.2, math.sqrt(1 - 0.36 - 0.04 - 0.04))


def int24(value: int) -> bytes:
    return (value & 0xFFFFFF).to_bytes(3, "little")


def one_gaussian_blocks(rotation: bytes) -> list[bytes]:
    """positions, alphas, colours, scales, rotations, SH of one degree-1 Gaussian."""
    positions = int24(int(1.5 * 4096)) + int24(int(-2.25 * 4096)) + int24(int(0.125 * 4096))
    sh = bytes([192, 128, 64, 160, 128, 128, 96, 128, 128])  # coefficient-major, channel fastest
    return [positions, bytes([191]), bytes([128, 0, 255]), bytes([160, 144, 128]), rotation, sh]


def one_gaussian_spz(version: int, rotation: bytes, extensions: bytes = b"") -> bytes:
    blocks = one_gaussian_blocks(rotation)
    if version < 4:
        return gzip.compress(struct.pack("<IIIBBBB", 0x5053474E, version, 1, 1, 12, 0, 0) + b"".join(blocks))
    # Version 4: 32-byte plain header, extension records, table (u64 compressed size, u64 size), zstd frames.
    frames = [zstandard.ZstdCompressor().compress(block) for block in blocks]
    header = struct.pack("<IIIBBBBI12x", 0x5053474E, 4, 1, 1, 12, 0x2 if extensions else 0, len(frames),
                         32 + len(extensions))
    table = b"".join(struct.pack("<QQ", len(frame), len(block)) for frame, block in zip(frames, blocks))
    return header + extensions + table + b"".join(frames)


def v3_rotation() -> bytes:
    """Smallest three: 2 bits index of the largest (w = 3), then x, y, z as sign bit + 9-bit |q| * sqrt2 * 511."""
    comp = 3
    for value in QUAT_XYZW[:3]:
        comp = (comp << 10) | (int(value < 0) << 9) | int(math.floor(abs(value) * math.sqrt(2) * 511 + 0.5))
    return struct.pack("<I", comp)


# An unknown vendor's record, then Adobe's coordinate-system record saying RUB (4): both change nothing.
EXTENSIONS = struct.pack("<II", 0x12340001, 3) + b"abc" + struct.pack("<III", 0xADBE0003, 4, 4)


@pytest.mark.parametrize("version", [2, 3, 4, "4 with extensions"])
def test_spec_bytes_decode_to_the_spec_values_in_the_ply_frame(tmp_path, version):
    rotation = bytes(int(v * 127.5 + 127.5) for v in QUAT_XYZW[:3]) if version == 2 else v3_rotation()
    path = tmp_path / "one.spz"
    path.write_bytes(one_gaussian_spz(4, rotation, EXTENSIONS) if version == "4 with extensions"
                     else one_gaussian_spz(version, rotation))
    splats = {key: value.detach().double() for key, value in load_splats(path, SceneNormalization()).items()}
    # SPZ is RUB; PLY / our frame is RDF: y and z flip.
    torch.testing.assert_close(splats["means"][0], torch.tensor([1.5, 2.25, -0.125], dtype=torch.float64))
    assert splats["opacities"][0].item() == pytest.approx(math.log(191 / 64), abs=1e-6)
    torch.testing.assert_close(splats["sh0"][0, 0], (torch.tensor([128, 0, 255]) / 255 - 0.5).double() / 0.15,
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(splats["scales"][0], torch.tensor([0.0, -1.0, -2.0], dtype=torch.float64))
    # Degree-1 SH bases are -y, z, -x (times a constant): flipping y and z negates the first two coefficients.
    coefficients = torch.tensor([[192, 128, 64], [160, 128, 128], [96, 128, 128]], dtype=torch.float64)
    expected_sh = (coefficients - 128) / 128 * torch.tensor([[-1.0], [-1.0], [1.0]], dtype=torch.float64)
    torch.testing.assert_close(splats["shN"][0], expected_sh, atol=1e-6, rtol=0)
    # Rotation: the covariance of the file's quaternion, turned by the RUB -> RDF flip.
    x, y, z, w = QUAT_XYZW
    scales = torch.exp(splats["scales"])
    file_covariance = _quat_scale_to_covar_preci(torch.tensor([[w, x, y, z]], dtype=torch.float64), scales,
                                                 triu=False)[0][0]
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    covariance = _quat_scale_to_covar_preci(splats["quats"], scales, triu=False)[0][0]
    torch.testing.assert_close(covariance, flip @ file_covariance @ flip, atol=1e-2 * float(scales.max() ** 2), rtol=0)


@pytest.mark.parametrize("degree", [0, 3])
def test_version_4_has_one_stream_per_non_empty_block(tmp_path, degree):
    from splat2splat.gaussians.formats import save_splats
    from tests.gaussians.formats.test_formats import scene_splats

    splats = scene_splats(n=10, sh_degree=degree)
    save_splats(tmp_path / "s.spz", splats, SceneNormalization(), "spz")
    data = (tmp_path / "s.spz").read_bytes()
    magic, version, n, file_degree, bits, flags, streams, toc = struct.unpack_from("<IIIBBBBI12x", data)
    assert (magic, version, n, file_degree, bits, flags, toc) == (0x5053474E, 4, 10, degree, 12, 0, 32)
    assert streams == (5 if degree == 0 else 6)  # positions, alphas, colours, scales, rotations (, SH)
    sizes = [struct.unpack_from("<QQ", data, 32 + 16 * k)[1] for k in range(streams)]
    assert sizes == [90, 10, 30, 30, 40] + ([450] if degree else [])
    assert load_splats(tmp_path / "s.spz", SceneNormalization())["shN"].shape == (10, (degree + 1) ** 2 - 1, 3)


@pytest.mark.parametrize("version", [3, 4])
def test_fuzz_load_spz(tmp_path, version):
    """Mutated SPZ bytes (version 4: the plain header and table too) end in an InputError or a finite scene."""
    import random

    from splat2splat.gaussians.formats import save_splats
    from tests.fuzzing import cases, fuzz, mutate_bytes
    from tests.gaussians.formats.test_formats import scene_splats
    from tests.gaussians.formats.test_sog import check_scene

    path = tmp_path / "scene.spz"
    save_splats(path, scene_splats(n=40, sh_degree=2), SceneNormalization(), "spz", spz_version=version)
    original = path.read_bytes()

    def run_case(rng: random.Random):
        path.write_bytes(mutate_bytes(original, rng))
        return load_splats(path, SceneNormalization())

    fuzz(f"load_spz (version {version})", cases(), 80 + version, run_case, check_scene).assert_clean()
