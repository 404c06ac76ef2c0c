"""load_splats / save_splats: every format round trips within its stated precision, dispatch by suffix and
header, 8-bit opacities, rounding, and one clear line for each kind of damaged file."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci

from splat2splat.data.dataset import SceneNormalization
from splat2splat.errors import InputError
from splat2splat.gaussians.formats import load_splats, save_splats, splat_file_format
from splat2splat.gaussians.formats.splat_file import RECORD
from splat2splat.gaussians.model import SH_C0
from splat2splat.gaussians.ply import OPACITY_LOGIT_LIMIT

NORMALIZATION = SceneNormalization(center=(1.5, -2.0, 0.25), scale=0.4)
FILE_NAMES = {"ply": "scene.ply", "ply_compressed": "scene.compressed.ply", "splat": "scene.splat", "spz": "scene.spz",
              "sog": "scene.sog"}


def scene_splats(n: int = 600, sh_degree: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """Values inside every format's range (SPZ: SH in [-1, 1], log-scales in [-10, 6], f_dc in [-1.7, 1.7])."""
    g = torch.Generator().manual_seed(seed)
    return {"means": torch.randn(n, 3, generator=g), "scales": torch.randn(n, 3, generator=g) * 0.3 - 3.0,
            "quats": torch.randn(n, 4, generator=g), "opacities": torch.randn(n, generator=g),
            "sh0": torch.randn(n, 1, 3, generator=g).clamp(-3, 3) * 0.5,
            "shN": (torch.randn(n, (sh_degree + 1) ** 2 - 1, 3, generator=g) * 0.2).clamp(-0.9, 0.9)}


def matched(loaded: dict[str, torch.Tensor], original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original Gaussians in the loaded file's order (packed formats reorder them), by nearest mean."""
    order = torch.cdist(loaded["means"].detach(), original["means"]).argmin(dim=1)
    assert len(set(order.tolist())) == len(order)
    return {key: value[order] for key, value in original.items()}


def covariances(splats: dict[str, torch.Tensor]) -> torch.Tensor:
    return _quat_scale_to_covar_preci(splats["quats"].detach(), torch.exp(splats["scales"].detach()), triu=False)[0]


# Largest error each format may show, per parameter, in the NORMALISED frame of NORMALIZATION (scale 0.4):
# half a quantisation step of the format's stated precision (module docstrings), plus float32 slack.
TOLERANCES = {
    "ply": {"means": 1e-6, "scales": 1e-6, "opacities": 0, "sh0": 0, "shN": 0, "cov": 1e-6},
    "ply_compressed": {"means": None, "scales": 2.0 / 2047, "opacities": 0.05, "sh0": 0.5 / 255 / SH_C0 * 1.5,
                       "shN": 4 / 256 + 1e-6, "cov": 0.02},
    "splat": {"means": 1e-6, "scales": 1e-5, "opacities": 0.05, "sh0": 0.5 / 255 / SH_C0 + 1e-6, "shN": None,
              "cov": 0.02},
    "spz": {"means": 0.4 * 0.5 / 4096 + 1e-6, "scales": 1 / 32 + 1e-6, "opacities": 0.05,
            "sh0": 0.5 / 255 / 0.15 + 1e-6, "shN": 8.5 / 128 + 1e-6, "cov": 0.1},
}


@pytest.mark.parametrize("fmt", list(TOLERANCES))  # SOG's codebooks and palette: tests/gaussians/formats/test_sog.py
def test_every_format_round_trips_within_its_precision(tmp_path, fmt):
    splats = scene_splats()
    path = tmp_path / FILE_NAMES[fmt]
    assert save_splats(path, splats, NORMALIZATION, fmt) == 600
    assert splat_file_format(path) == fmt
    loaded = load_splats(path, NORMALIZATION)
    assert isinstance(loaded, torch.nn.ParameterDict) and loaded["means"].requires_grad
    expected = matched(loaded, splats)
    tolerance = dict(TOLERANCES[fmt])
    if fmt == "ply_compressed":  # half a 10-bit step of the scene's box (each 256-Gaussian chunk's is smaller)
        original = NORMALIZATION.to_original(splats["means"])
        tolerance["means"] = NORMALIZATION.scale * (original.amax(0) - original.amin(0)).max().item() / 1023 / 2
    for key in ("means", "scales", "opacities", "sh0", "shN"):
        if tolerance[key] is None:
            assert loaded[key].shape[1] == 0, f"{fmt} holds no {key}"
            continue
        error = (loaded[key].detach() - expected[key]).abs().max().item()
        assert error <= tolerance[key], (key, error)
    # Rotations: compare the covariances they give (q and -q, and spz's frame flip, describe one Gaussian).
    relative = (covariances(loaded) - covariances(expected)).abs().amax(dim=(1, 2)) / covariances(expected).abs().amax(
        dim=(1, 2))
    assert relative.max().item() <= tolerance["cov"]


@pytest.mark.parametrize("fmt", ["ply_compressed", "splat", "spz", "sog"])
def test_8_bit_opacities_of_0_and_255_load_clamped(tmp_path, fmt):
    splats = scene_splats(n=4, sh_degree=1)
    splats["opacities"] = torch.tensor([40.0, -40.0, 0.0, 1.0])  # sigmoid rounds to byte 255 and 0
    path = tmp_path / FILE_NAMES[fmt]
    save_splats(path, splats, NORMALIZATION, fmt)
    loaded = load_splats(path, NORMALIZATION)["opacities"].detach()
    expected = matched(load_splats(path, NORMALIZATION), splats)["opacities"]
    assert loaded[expected == 40.0].item() == OPACITY_LOGIT_LIMIT
    assert loaded[expected == -40.0].item() == -OPACITY_LOGIT_LIMIT


def test_splat_export_rounds_colours_and_opacities(tmp_path):
    """Byte = round(255 x value), not a truncation (which biases every colour by -0.5 / 255)."""
    values = torch.tensor([100.6, 100.4, 254.6]) / 255  # round: 101, 100, 255 (truncation: 100, 100, 254)
    splats = scene_splats(n=1, sh_degree=0)
    splats["sh0"] = ((values - 0.5) / SH_C0).reshape(1, 1, 3)
    splats["opacities"] = torch.logit(torch.tensor([200.7 / 255]))
    save_splats(tmp_path / "s.splat", splats, SceneNormalization(), "splat")
    record = np.frombuffer((tmp_path / "s.splat").read_bytes(), dtype=RECORD)[0]
    assert record["rgba"].tolist() == [101, 100, 255, 201]


def test_ply_is_told_apart_by_header_and_unknown_suffixes_are_refused(tmp_path):
    splats = scene_splats(n=300, sh_degree=0)
    save_splats(tmp_path / "plain.ply", splats, NORMALIZATION, "ply_compressed")  # compressed, plain name
    assert splat_file_format(tmp_path / "plain.ply") == "ply_compressed"
    assert load_splats(tmp_path / "plain.ply", NORMALIZATION)["shN"].shape == (300, 0, 3)
    with pytest.raises(InputError, match="unknown Gaussian-scene format '.obj'"):
        load_splats(tmp_path / "scene.obj", NORMALIZATION)


def test_a_frame_transform_is_undone_on_save_and_applied_on_load(tmp_path):
    applied = torch.tensor([[0.0, 1.0, 0.0, 2.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0], [0.0, 0.0, 0.0, 1.0]])
    splats = scene_splats(n=20, sh_degree=2)
    for fmt in ("ply", "spz", "sog"):
        path = tmp_path / FILE_NAMES[fmt]
        save_splats(path, splats, NORMALIZATION, fmt, frame_transform=applied)
        in_file = load_splats(path, SceneNormalization())["means"].detach().double()
        dataset_frame = NORMALIZATION.to_original(splats["means"].double())
        expected = (dataset_frame - applied[:3, 3].double()) @ applied[:3, :3].double()
        assert (matched({"means": in_file}, {"means": expected})["means"] - in_file).abs().max() < 1e-3
        back = load_splats(path, NORMALIZATION, frame_transform=applied)
        assert (back["means"].detach() - matched(back, splats)["means"]).abs().max() < 1e-3


# ------------------------------------------------------------------------------------------ damaged files


def write_format(fmt: str, n: int = 300, sh_degree: int = 1, spz_version: int = 4):
    def write(path: Path) -> None:
        save_splats(path, scene_splats(n=n, sh_degree=sh_degree), SceneNormalization(), fmt, spz_version=spz_version)
    return write


def cut(fmt: str, keep: float):
    def write(path: Path) -> None:
        write_format(fmt)(path)
        data = path.read_bytes()
        path.write_bytes(data[:int(len(data) * keep)])
    return write


def replaced(fmt: str, old: bytes, new: bytes):
    def write(path: Path) -> None:
        write_format(fmt)(path)
        path.write_bytes(path.read_bytes().replace(old, new, 1))
    return write


def spz_bytes(header: tuple, body: bytes = b"") -> bytes:
    return gzip.compress(struct.pack("<IIIBBBB", *header) + body)


def spz_header_only(version: int, count: int, degree: int, body: bytes = b""):
    return lambda path: path.write_bytes(spz_bytes((0x5053474E, version, count, degree, 12, 0, 0), body))


def ngsp_edit(layout: str, offset: int, value: int):
    """A version-4 file with one field replaced."""
    def write(path: Path) -> None:
        write_format("spz")(path)
        data = bytearray(path.read_bytes())
        struct.pack_into(layout, data, offset, value)
        path.write_bytes(bytes(data))
    return write


def ngsp_with_coordinate_system(code: int):
    """A version-4 file with Adobe's coordinate-system record inserted before its table."""
    def write(path: Path) -> None:
        write_format("spz")(path)
        data = bytearray(path.read_bytes())
        record = struct.pack("<III", 0xADBE0003, 4, code)
        data[14] |= 0x2  # flags: has extensions
        struct.pack_into("<I", data, 16, 32 + len(record))
        path.write_bytes(bytes(data[:32]) + record + bytes(data[32:]))
    return write


def long_header_ply(path: Path) -> None:
    """A header over 64 KB (a long comment) claiming 10^12 rows with a list property: plyfile would allocate them."""
    header = ("ply\nformat binary_big_endian 1.0\ncomment " + "x" * 70_000 + f"\nelement vertex {10**12}\n"
              "property list uchar float junk\nproperty float x\nend_header\n")
    path.write_bytes(header.encode() + bytes(2000))


def nan_splat(path: Path) -> None:
    record = np.zeros(2, dtype=RECORD)
    record["scale"] = 0.1
    record["rotation"] = (255, 128, 128, 128)
    record["position"][1, 2] = np.nan
    path.write_bytes(record.tobytes())


DAMAGED = {
    "compressed_truncated": ("scene.compressed.ply", cut("ply_compressed", 0.7), "truncated or corrupt compressed PLY"),
    "compressed_count_lie": ("scene.compressed.ply", replaced("ply_compressed", b"element vertex 300",
                                                              b"element vertex 9000000000"), "truncated or corrupt"),
    "compressed_wrong_chunks": ("scene.compressed.ply", replaced("ply_compressed", b"element chunk 2\n",
                                                                 b"element chunk 1\n"),
                                "compressed PLY"),
    "compressed_no_packed_scale": ("scene.compressed.ply", replaced("ply_compressed", b"property uint packed_scale",
                                                                    b"property float packed_scale"),
                                   "compressed PLY: vertex element lacks uint properties packed_scale"),
    "splat_empty": ("scene.splat", lambda path: path.write_bytes(b""), ".splat file is empty"),
    "splat_partial_record": ("scene.splat", cut("splat", 0.999), "not a whole number of 32-byte records"),
    "splat_nan": ("scene.splat", nan_splat, ".splat file: 1 Gaussians have NaN or infinite values"),
    "splat_zero_scale": ("scene.splat", lambda path: path.write_bytes(np.zeros(1, dtype=RECORD).tobytes()),
                         ".splat file: 1 Gaussians have NaN"),
    "spz_not_gzip": ("scene.spz", lambda path: path.write_bytes(b"hello"), "not an SPZ file"),
    "spz_truncated": ("scene.spz", cut("spz", 0.6), "SPZ file"),
    "spz_bad_magic": ("scene.spz", lambda path: path.write_bytes(spz_bytes((0x12345678, 2, 1, 0, 12, 0, 0)),),
                      "without the NGSP magic"),
    "spz4_short_header": ("scene.spz", lambda path: path.write_bytes(b"NGSP" + struct.pack("<I", 4) + bytes(20)),
                          "shorter than the version-4 header"),
    "spz4_truncated": ("scene.spz", cut("spz", 0.6), "truncated or corrupt SPZ file"),
    "spz4_count_lie": ("scene.spz", ngsp_edit("<I", 8, 4_000_000_000), "claims 4000000000 Gaussians"),
    "spz4_stream_size_lie": ("scene.spz", ngsp_edit("<Q", 32 + 8, 2 ** 40), "sizes do not match"),
    "spz4_toc_beyond_file": ("scene.spz", ngsp_edit("<I", 16, 2 ** 31), "streams with their table at byte"),
    "spz4_damaged_zstd": ("scene.spz", ngsp_edit("<Q", 32 + 6 * 16, 0), "zstd stream"),
    "spz4_other_frame": ("scene.spz", ngsp_with_coordinate_system(6), "coordinate system 6"),
    "spz4_in_gzip": ("scene.spz", lambda path: path.write_bytes(spz_bytes((0x5053474E, 4, 1, 0, 12, 0, 0))),
                     "version 4 inside a gzip stream"),
    "spz_version_9": ("scene.spz", lambda path: path.write_bytes(spz_bytes((0x5053474E, 9, 1, 0, 12, 0, 0))),
                      "SPZ file version 9 is not supported"),
    "spz_degree_4": ("scene.spz", lambda path: path.write_bytes(spz_bytes((0x5053474E, 3, 1, 4, 12, 0, 0))),
                     "SH degree 4"),
    "spz_count_lie": ("scene.spz", spz_header_only(2, 4_000_000_000, 3), "claims 4000000000 Gaussians"),
    "spz_short_body": ("scene.spz", spz_header_only(2, 10, 0, bytes(50)), "claims 10 Gaussians"),
    "ply_header_over_64kb": ("scene.ply", long_header_ply, "PLY header longer than 64 KB"),
    "compressed_list_packed_position": ("scene.compressed.ply", replaced(
        "ply_compressed", b"property uint packed_position", b"property list uchar uint packed_position"),
        "compressed PLY"),
    "spz_fractional_bits_64": ("scene.spz", lambda path: path.write_bytes(spz_bytes((0x5053474E, 2, 1, 0, 64, 0, 0),
                                                                                    bytes(19))), "64 fractional bits"),
    # 2M Gaussians of zeros gzip to ~38 KB: more than SPZ's stated maximum ratio, refused before decompressing
    "spz_zeros_claiming_2M": ("scene.spz", spz_header_only(2, 2_000_000, 0, bytes(19 * 2_000_000)),
                              "claims 2000000 Gaussians"),
    "spz_empty": ("scene.spz", lambda path: path.write_bytes(spz_bytes((0x5053474E, 2, 0, 0, 12, 0, 0))),
                  "contains no Gaussians"),
    "missing": ("scene.spz", lambda path: None, "SPZ file does not exist"),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_files_end_in_one_line_naming_file_and_format(tmp_path, case):
    name, write, message = DAMAGED[case]
    path = tmp_path / name
    write(path)
    with pytest.raises(InputError, match=message) as error:
        load_splats(path, SceneNormalization())
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


@pytest.mark.parametrize("fmt, options", [("spz", {"spz_version": 4}), ("spz", {"spz_version": 3}), ("sog", {})])
def test_a_compressed_file_over_the_cap_is_refused_and_a_raised_cap_reads_it(tmp_path, fmt, options):
    """The absolute cap of compressed formats is the reader's argument (the commands' --max-file-gaussians):
    a file claiming more is one line naming the option that raises it; at or above its count, it reads."""
    path = tmp_path / FILE_NAMES[fmt]
    save_splats(path, scene_splats(600, sh_degree=1), NORMALIZATION, fmt, **options)
    with pytest.raises(InputError, match="claims 600 Gaussians, more than the 599 that --max-file-gaussians "
                                         "allows: pass --max-file-gaussians 600") as error:
        load_splats(path, NORMALIZATION, max_gaussians=599)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)
    assert len(load_splats(path, NORMALIZATION, max_gaussians=600)["means"]) == 600
    assert len(load_splats(path, NORMALIZATION)["means"]) == 600  # the default cap: 50M


def test_a_splat_export_of_huge_scales_reads_back(tmp_path):
    """exp of a log-scale above ~88.7 overflows float32: the export keeps the largest finite scale instead."""
    splats = {key: value.detach().clone() for key, value in scene_splats(n=3, sh_degree=0).items()}
    splats["scales"][0] = 200.0
    path = tmp_path / "scene.splat"
    save_splats(path, splats, SceneNormalization(), "splat")
    loaded = load_splats(path, SceneNormalization())
    assert torch.isfinite(loaded["scales"]).all() and len(loaded["means"]) == 3


@pytest.mark.parametrize("fmt, suffix", [("ply_compressed", "scene.compressed.ply"), ("spz", "scene.spz"),
                                         ("splat", "scene.splat")])
def test_fuzz_scene_files(tmp_path, fmt, suffix):
    """Seeded mutations of each compressed scene format: bytes (claims, counts, truncation), for compressed PLY
    also header lines and a header padded past 64 KB, for SPZ (version 3: version 4 has its own fuzz target)
    the header inside the gzip stream (counts claiming up to 4G Gaussians, fractional bits up to 255). Each case ends in an InputError or a finite scene, under
    a memory cap and a time limit."""
    import random

    from tests.fuzzing import cases, fuzz, mutate_bytes, mutate_text

    path = tmp_path / suffix
    write_format(fmt, n=300, sh_degree=1, spz_version=3)(path)
    original = path.read_bytes()

    def mutated_spz(rng: random.Random) -> bytes:
        data = bytearray(gzip.decompress(original))
        field = rng.choice([(8, "<I", [0, 1, 300, 2**20, 2**31, 2**32 - 1]), (12, "<B", [0, 3, 4, 255]),
                            (13, "<B", [0, 12, 24, 25, 63, 64, 255])])
        struct.pack_into(field[1], data, field[0], rng.choice(field[2]))
        return gzip.compress(bytes(data))

    def run_case(rng: random.Random):
        roll = rng.random()
        if fmt == "spz" and roll < 0.5:
            path.write_bytes(mutated_spz(rng))
        elif fmt == "ply_compressed" and roll < 0.4:
            end = original.index(b"end_header\n") + len(b"end_header\n")
            header = mutate_text(original[:end].decode(), rng)
            if rng.random() < 0.2:
                header = header.replace("\nelement", "\ncomment " + "x" * 70_000 + "\nelement", 1)
            path.write_bytes(header.encode("utf-8", errors="surrogatepass") + original[end:])
        else:
            path.write_bytes(mutate_bytes(original, rng))
        return load_splats(path, SceneNormalization())

    def check(splats):
        assert len(splats["means"]) > 0 and all(torch.isfinite(value).all() for value in splats.values())

    fuzz(f"load_splats ({fmt})", cases(200), 230 + len(fmt), run_case, check).assert_clean()
