"""INRIA PLY files: round trips and compatibility, opacity clamping, pruning, bad inputs (other formats:
tests/gaussians/formats)."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import plyfile
import pytest
import torch

from splat2splat.data.dataset import SceneNormalization
from splat2splat.errors import InputError
from splat2splat.gaussians.formats import save_splats
from splat2splat.gaussians.model import SPLAT_KEYS, num_sh_bases, rgb_to_sh
from splat2splat.gaussians.ply import OPACITY_LOGIT_LIMIT, inria_property_names, load_ply, prune_splats, save_ply

IDENTITY = SceneNormalization()
NORMALIZATION = SceneNormalization(center=(1.5, -20.0, 3.25), scale=0.37)


def random_splats(n: int = 64, sh_degree: int = 3, seed: int = 0) -> torch.nn.ParameterDict:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.ParameterDict({
        "means": torch.nn.Parameter(torch.randn(n, 3, generator=g)),
        "scales": torch.nn.Parameter(torch.randn(n, 3, generator=g) - 3),
        "quats": torch.nn.Parameter(torch.randn(n, 4, generator=g)),
        "opacities": torch.nn.Parameter(torch.randn(n, generator=g)),
        "sh0": torch.nn.Parameter(torch.randn(n, 1, 3, generator=g)),
        "shN": torch.nn.Parameter(torch.randn(n, num_sh_bases(sh_degree) - 1, 3, generator=g)),
    })


def read_vertex(path: Path) -> np.ndarray:
    return plyfile.PlyData.read(str(path))["vertex"].data


def assert_splats_equal(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    for key in SPLAT_KEYS:
        assert actual[key].dtype == torch.float32, key
        assert torch.equal(actual[key].detach(), expected[key].detach()), key


# ------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
def test_round_trip_is_exact(tmp_path, sh_degree):
    splats = random_splats(sh_degree=sh_degree)
    path = tmp_path / "scene.ply"
    assert save_ply(path, splats, IDENTITY) == 64
    loaded = load_ply(path, IDENTITY)
    assert isinstance(loaded, torch.nn.ParameterDict)
    assert_splats_equal(loaded, splats)
    assert len(read_vertex(path).dtype.names) == 17 + 3 * (num_sh_bases(sh_degree) - 1)


def test_file_is_in_the_original_frame_and_round_trips_the_normalization(tmp_path):
    splats = random_splats(sh_degree=1)
    path = tmp_path / "scene.ply"
    save_ply(path, splats, NORMALIZATION)
    vertex = read_vertex(path)

    file_means = np.stack([vertex["x"], vertex["y"], vertex["z"]], 1)
    expected_means = splats["means"].detach().double().numpy() / NORMALIZATION.scale + np.array(NORMALIZATION.center)
    np.testing.assert_allclose(file_means, expected_means, rtol=1e-6, atol=1e-6)
    file_scales = np.stack([vertex[f"scale_{i}"] for i in range(3)], 1)
    expected_scales = splats["scales"].detach().double().numpy() - math.log(NORMALIZATION.scale)
    np.testing.assert_allclose(file_scales, expected_scales, rtol=1e-6, atol=1e-6)

    loaded = load_ply(path, NORMALIZATION)
    # A float32 file in the original frame holds the frame-dependent values to float32 rounding there.
    torch.testing.assert_close(loaded["means"], splats["means"].detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(loaded["scales"], splats["scales"].detach(), rtol=0, atol=1e-6)
    for key in ("quats", "opacities", "sh0", "shN"):
        assert torch.equal(loaded[key], splats[key].detach()), key


def test_sh_coefficients_are_written_channel_major(tmp_path):
    """f_rest_{c * (K-1) + k} holds coefficient k of colour channel c, as in the INRIA code."""
    splats = random_splats(n=4, sh_degree=2)
    k_rest = splats["shN"].shape[1]
    coefficient = torch.arange(k_rest, dtype=torch.float32)[:, None]
    channel = torch.arange(3, dtype=torch.float32)[None, :]
    with torch.no_grad():
        splats["shN"][:] = 100 * channel + coefficient
        splats["sh0"][:] = torch.tensor([[[-1.0, -2.0, -3.0]]])
    path = tmp_path / "scene.ply"
    save_ply(path, splats, IDENTITY)
    vertex = read_vertex(path)
    for c in range(3):
        assert np.all(vertex[f"f_dc_{c}"] == -(c + 1))
        for k in range(k_rest):
            assert np.all(vertex[f"f_rest_{c * k_rest + k}"] == 100 * c + k)


def write_like_inria(path: Path, splats: dict[str, torch.Tensor]) -> None:
    """What graphdeco-inria/gaussian-splatting's GaussianModel.save_ply writes (features [N, K, 3])."""
    n = len(splats["means"])
    features_dc = splats["sh0"].detach().transpose(1, 2).flatten(1).numpy()
    features_rest = splats["shN"].detach().transpose(1, 2).flatten(1).numpy()
    names = ["x", "y", "z", "nx", "ny", "nz"] + [f"f_dc_{i}" for i in range(features_dc.shape[1])]
    names += [f"f_rest_{i}" for i in range(features_rest.shape[1])] + ["opacity"]
    names += [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
    elements = np.empty(n, dtype=[(name, "f4") for name in names])
    attributes = np.concatenate([
        splats["means"].detach().numpy(), np.zeros((n, 3)), features_dc, features_rest,
        splats["opacities"].detach().numpy()[:, None], splats["scales"].detach().numpy(), splats["quats"].detach().numpy(),
    ], axis=1)
    elements[:] = list(map(tuple, attributes))
    plyfile.PlyData([plyfile.PlyElement.describe(elements, "vertex")]).write(str(path))


@pytest.mark.parametrize("sh_degree", [0, 3])
def test_loads_a_ply_written_like_the_original_inria_code(tmp_path, sh_degree):
    splats = random_splats(n=20, sh_degree=sh_degree)
    path = tmp_path / "point_cloud.ply"
    write_like_inria(path, splats)
    assert_splats_equal(load_ply(path, IDENTITY), splats)


def write_vertex(path: Path, columns: dict[str, np.ndarray], text: bool = False, byte_order: str = "<") -> None:
    dtype = [(name, column.dtype.str if not text else column.dtype.str[1:]) for name, column in columns.items()]
    n = len(next(iter(columns.values())))
    vertex = np.empty(n, dtype=dtype)
    for name, column in columns.items():
        vertex[name] = column
    plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")], text=text, byte_order=byte_order).write(str(path))


def inria_columns(splats: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    n = len(splats["means"])
    values = torch.cat([
        splats["means"], torch.zeros(n, 3), splats["sh0"][:, 0], splats["shN"].transpose(1, 2).reshape(n, -1),
        splats["opacities"][:, None], splats["scales"], splats["quats"],
    ], 1).detach().numpy()
    return {name: values[:, i].astype("<f4") for i, name in enumerate(inria_property_names(3))}


@pytest.mark.parametrize("variant", ["shuffled_with_extras", "double", "big_endian", "ascii"])
def test_loads_other_writers_variants(tmp_path, variant):
    """Properties are found by name; extra properties, double, big-endian and ASCII files all load."""
    splats = random_splats(n=10, sh_degree=3)
    columns = inria_columns(splats)
    path = tmp_path / "scene.ply"
    if variant == "shuffled_with_extras":
        names = list(columns)[::-1]
        columns = {"filter_3D": np.ones(10, "<f4"), **{name: columns[name] for name in names}}
        write_vertex(path, columns)
    elif variant == "double":
        write_vertex(path, {name: column.astype("<f8") for name, column in columns.items()})
    elif variant == "big_endian":
        write_vertex(path, {name: column.astype(">f4") for name, column in columns.items()}, byte_order=">")
    else:
        write_vertex(path, columns, text=True)
    assert_splats_equal(load_ply(path, IDENTITY), splats)


def test_loads_nerfstudio_rgb_colour_mode(tmp_path):
    """nerfstudio's `ply_color_mode rgb` writes uchar red green blue and no f_dc / f_rest."""
    splats = random_splats(n=6, sh_degree=0)
    columns = inria_columns(random_splats(n=6, sh_degree=3))
    rgb = np.array([[255, 0, 128]] * 6, dtype=np.uint8)
    columns = {name: column for name, column in columns.items() if not name.startswith("f_")}
    columns.update({"red": rgb[:, 0], "green": rgb[:, 1], "blue": rgb[:, 2]})
    path = tmp_path / "splat.ply"
    write_vertex(path, columns)
    loaded = load_ply(path, IDENTITY)
    assert loaded["shN"].shape == (6, 0, 3) and splats["sh0"].shape == loaded["sh0"].shape
    torch.testing.assert_close(loaded["sh0"][0, 0], rgb_to_sh(torch.tensor([1.0, 0.0, 128 / 255])))


# ------------------------------------------------------------------------------------- viewer contract


def test_ply_header_is_what_web_viewers_parse(tmp_path):
    """Web viewers (gsplat.js, antimatter15, SuperSplat) parse the header text themselves and expect
    binary little endian float32 properties with the INRIA names in the INRIA order."""
    splats = random_splats(n=7, sh_degree=3)
    path = tmp_path / "scene.ply"
    save_ply(path, splats, IDENTITY)
    data = path.read_bytes()
    header_end = data.index(b"end_header\n") + len(b"end_header\n")
    lines = data[:header_end].decode("ascii").splitlines()
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", *[f"f_rest_{i}" for i in range(45)],
             "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert lines == ["ply", "format binary_little_endian 1.0", "element vertex 7",
                     *[f"property float {name}" for name in names], "end_header"]
    assert len(data) - header_end == 7 * len(names) * 4
    first_row = struct.unpack(f"<{len(names)}f", data[header_end:header_end + 4 * len(names)])
    assert first_row[:3] == tuple(splats["means"][0].tolist())


def test_sh_degree_reduction(tmp_path):
    splats = random_splats(n=8, sh_degree=3)
    path = tmp_path / "scene.ply"
    save_ply(path, splats, IDENTITY, sh_degree=1)
    loaded = load_ply(path, IDENTITY)
    assert torch.equal(loaded["shN"], splats["shN"].detach()[:, :3])
    assert torch.equal(loaded["sh0"], splats["sh0"].detach())
    save_ply(path, splats, IDENTITY, sh_degree=0)
    assert load_ply(path, IDENTITY)["shN"].shape == (8, 0, 3)
    save_splats(tmp_path / "c.ply", splats, IDENTITY, "ply_compressed", sh_degree=1)
    assert len(plyfile.PlyData.read(str(tmp_path / "c.ply"))["sh"].properties) == 9
    with pytest.raises(InputError, match="SH degree 4"):
        save_ply(path, splats, IDENTITY, sh_degree=4)


def test_infinite_opacities_from_8_bit_sources_are_clamped_nan_is_not(tmp_path):
    """PLYs decoded from 8-bit formats hold opacity logits of +-inf (bytes 255 / 0): they load, clamped."""
    columns = valid_columns()
    columns["opacity"] = np.array([np.inf, -np.inf, 0.5, 1.0], "<f4")
    path = tmp_path / "decoded.ply"
    write_vertex(path, columns)
    opacities = load_ply(path, IDENTITY)["opacities"].detach()
    assert opacities.tolist() == [OPACITY_LOGIT_LIMIT, -OPACITY_LOGIT_LIMIT, 0.5, 1.0]
    columns["opacity"][2] = np.nan
    write_vertex(path, columns)
    with pytest.raises(InputError, match="1 Gaussians have NaN.*vertex 2, property 'opacity'"):
        load_ply(path, IDENTITY)


def test_the_opacity_clamp_renders_like_infinity():
    """Why 17: float32 sigmoid(17) is exactly sigmoid(inf) = 1, and sigmoid(-17) is far below the 1/255 alpha
    under which the rasterizer skips a Gaussian (as it skips opacity 0)."""
    limit = torch.tensor(OPACITY_LOGIT_LIMIT, dtype=torch.float32)
    assert torch.sigmoid(limit).item() == 1.0 == torch.sigmoid(torch.tensor(float("inf"))).item()
    assert torch.sigmoid(-limit).item() < 1e-3 / 255
    assert torch.sigmoid(limit - 1).item() < 1.0  # and it is not far larger than needed


def test_a_claimed_count_beyond_the_file_size_is_refused_before_reading(tmp_path):
    path = tmp_path / "liar.ply"
    write_vertex(path, valid_columns())
    path.write_bytes(path.read_bytes().replace(b"element vertex 4", b"element vertex 4000000000000"))
    with pytest.raises(InputError, match="claims 4000000000000 vertex rows"):
        load_ply(path, IDENTITY)


def test_non_finite_gaussians_are_left_out_and_an_empty_export_is_refused(tmp_path):
    splats = random_splats(n=5, sh_degree=1)
    with torch.no_grad():
        splats["scales"][1, 0] = float("nan")
        splats["shN"][3, 2, 1] = float("inf")
    path = tmp_path / "scene.ply"
    assert save_ply(path, splats, IDENTITY) == 3
    assert torch.equal(load_ply(path, IDENTITY)["means"], splats["means"].detach()[[0, 2, 4]])
    # .splat holds no higher SH, so only the Gaussian with a NaN scale is left out there.
    assert save_splats(tmp_path / "s.splat", splats, IDENTITY, "splat") == 4
    with pytest.raises(InputError, match="empty.ply.*no Gaussians left"):
        save_ply(tmp_path / "empty.ply", prune_splats(splats, min_opacity=1.0), IDENTITY)
    assert not (tmp_path / "empty.ply").exists()


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "scene.ply"
    save_ply(path, random_splats(n=3, sh_degree=0), IDENTITY)
    before = path.read_bytes()

    def broken_write(self, stream):
        stream.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(plyfile.PlyData, "write", broken_write)
    with pytest.raises(OSError, match="disk full"):
        save_ply(path, random_splats(n=9, sh_degree=0), IDENTITY)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["scene.ply"]


# ------------------------------------------------------------------------------------------- pruning


def test_prune_by_opacity_scale_and_crop_box():
    splats = random_splats(n=4, sh_degree=1)
    normalization = SceneNormalization(center=(10.0, 0.0, 0.0), scale=0.5)
    with torch.no_grad():
        splats["opacities"][:] = torch.logit(torch.tensor([0.9, 0.01, 0.9, 0.9]))
        # Standard deviations in the original frame = exp(scale) / 0.5: 0.2, 0.2, 4.0, 0.2
        splats["scales"][:] = math.log(0.1)
        splats["scales"][2, 1] = math.log(2.0)
        # Original-frame x = 10 + 2 * normalised x: 10, 10, 10, 16
        splats["means"][:] = 0.0
        splats["means"][3, 0] = 3.0

    assert len(prune_splats(splats, min_opacity=0.5)["means"]) == 3
    assert len(prune_splats(splats, max_scale=1.0, normalization=normalization)["means"]) == 3
    box = (9.0, -1.0, -1.0, 11.0, 1.0, 1.0)
    cropped = prune_splats(splats, crop_box=box, normalization=normalization)
    assert torch.equal(cropped["means"], splats["means"].detach()[:3])
    everything = prune_splats(splats, min_opacity=0.5, max_scale=1.0, crop_box=box, normalization=normalization)
    assert isinstance(everything, torch.nn.ParameterDict)
    assert torch.equal(everything["quats"], splats["quats"].detach()[[0]])
    assert everything["shN"].shape == (1, 3, 3) and everything["means"].requires_grad
    assert len(splats["means"]) == 4  # the input is unchanged
    assert len(prune_splats(splats)["means"]) == 4


@pytest.mark.parametrize("options, message", [
    ({"min_opacity": 1.5}, "opacity"),
    ({"max_scale": 0.0}, "scale"),
    ({"crop_box": (0, 0, 0, 1, 1)}, "6 finite numbers"),
    ({"crop_box": (1, 0, 0, 0, 1, 1)}, "exceeds"),
])
def test_prune_rejects_bad_options(options, message):
    with pytest.raises(InputError, match=message):
        prune_splats(random_splats(n=2), **options)


# ---------------------------------------------------------------------------------------- bad inputs


def valid_columns(n: int = 4) -> dict[str, np.ndarray]:
    columns = inria_columns(random_splats(n=n, sh_degree=3))
    return {name: column for name, column in columns.items() if not name.startswith("f_rest")}


def write_truncated(path: Path) -> None:
    save_ply(path, random_splats(n=10, sh_degree=1), IDENTITY)
    path.write_bytes(path.read_bytes()[:-7])


def write_with(changes: dict[str, np.ndarray | None]):
    def write(path: Path) -> None:
        columns = valid_columns()
        for name, column in changes.items():
            if column is None:
                del columns[name]
            else:
                columns[name] = column
        write_vertex(path, columns)
    return write


def write_list_property(path: Path) -> None:
    columns = valid_columns()
    del columns["opacity"]
    vertex = np.empty(4, dtype=[*[(name, "<f4") for name in columns], ("opacity", object)])
    for name, column in columns.items():
        vertex[name] = column
    vertex["opacity"] = [np.zeros(2, "<f4")] * 4
    plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")]).write(str(path))


def write_no_vertex_element(path: Path) -> None:
    face = np.empty(1, dtype=[("a", "<f4")])
    plyfile.PlyData([plyfile.PlyElement.describe(face, "face")]).write(str(path))


def f_rest(indices) -> dict[str, np.ndarray]:
    return {f"f_rest_{i}": np.zeros(4, "<f4") for i in indices}


def nan_at(index: int, value: float) -> np.ndarray:
    column = np.zeros(4, "<f4")
    column[index] = value
    return column


BAD_FILES = {
    "missing": (lambda path: None, "does not exist"),
    "directory": (lambda path: path.mkdir(), "not a file"),
    "not_a_ply": (lambda path: path.write_text("hello, I am a text file\n"), "not a PLY"),
    "binary_garbage": (lambda path: path.write_bytes(bytes(range(256)) * 4), "not a PLY"),
    "truncated": (write_truncated, "truncated"),
    "empty_file": (lambda path: path.write_bytes(b""), "not a PLY"),
    "no_vertex_element": (write_no_vertex_element, "no 'vertex' element"),
    "zero_gaussians": (lambda path: write_vertex(path, {k: v[:0] for k, v in valid_columns().items()}), "no Gaussians"),
    "missing_property": (write_with({"scale_1": None, "rot_3": None}), "missing vertex properties scale_1 rot_3"),
    "missing_colour": (write_with({"f_dc_2": None}), "missing vertex properties f_dc_2"),
    "integer_property": (write_with({"opacity": np.zeros(4, "<i4")}), "'opacity' must be float or double, found int"),
    "list_property": (write_list_property, "'opacity' must be float or double, found a list property"),
    "wrong_f_rest_count": (write_with(f_rest(range(5))), "has 5 f_rest_"),
    "f_rest_gap": (write_with(f_rest([*range(8), 9])), "numbered 0 to 8; f_rest_8 is missing"),
    "nan": (write_with({"scale_0": nan_at(2, float("nan"))}), "1 Gaussians have NaN.*vertex 2, property 'scale_0'"),
    "inf": (write_with({"x": nan_at(1, float("inf"))}), "NaN or infinite.*vertex 1, property 'x'"),
    "double_overflows_float": (write_with({"z": np.full(4, 1e300, "<f8")}), "4 Gaussians have NaN or infinite"),
    "zero_rotation": (write_with({name: np.zeros(4, "<f4") for name in ("rot_0", "rot_1", "rot_2", "rot_3")}),
                      "all-zero rotation"),
    "rgb_not_uchar": (write_with({"f_dc_0": None, "f_dc_1": None, "f_dc_2": None, "red": np.zeros(4, "<f4"),
                                  "green": np.zeros(4, "<f4"), "blue": np.zeros(4, "<f4")}), "'red' must be uchar"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_input_raises_input_error_naming_the_file(tmp_path, case):
    write, message = BAD_FILES[case]
    path = tmp_path / f"bad_{case}.ply"
    write(path)
    with pytest.raises(InputError, match=message) as error:
        load_ply(path, IDENTITY)
    assert str(error.value).startswith(str(path) + ": ")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian"])
def test_header_claiming_more_gaussians_than_the_file_holds_is_refused_before_allocating(tmp_path, fmt):
    names = inria_property_names(0)
    header = f"ply\nformat {fmt} 1.0\nelement vertex {10**12}\n" + "".join(f"property float {n}\n" for n in names)
    path = tmp_path / "scene.ply"
    path.write_bytes((header + "end_header\n").encode() + b"0 " * 100)
    with pytest.raises(InputError, match=f"claims {10**12} vertex") as info:
        load_ply(path, SceneNormalization())
    assert str(info.value).startswith(str(path))


@pytest.mark.parametrize("text", [False, True], ids=["binary", "ascii"])
def test_fuzz_load_ply(tmp_path, text):
    """Mutated Gaussian PLYs (header lines or any bytes) end in an InputError or a finite, well-formed scene."""
    import random

    from tests.fuzzing import cases, fuzz, mutate_bytes, mutate_text

    path = tmp_path / "scene.ply"
    write_vertex(path, inria_columns(random_splats(6, sh_degree=3)), text=text)
    original = path.read_bytes()
    header_end = original.index(b"end_header\n") + len(b"end_header\n")

    def run_case(rng: random.Random):
        if rng.random() < 0.5:
            header = mutate_text(original[:header_end].decode(), rng).encode("utf-8", errors="surrogatepass")
            path.write_bytes(header + original[header_end:])
        else:
            path.write_bytes(mutate_bytes(original, rng))
        return load_ply(path, SceneNormalization((0.5, 0.0, -0.5), 2.0))

    def check(splats):
        n = len(splats["means"])
        assert n > 0 and set(splats) == set(SPLAT_KEYS)
        assert splats["sh0"].shape == (n, 1, 3) and splats["shN"].shape[0] == n and splats["shN"].shape[2] == 3
        assert all(torch.isfinite(value).all() for value in splats.values())
        assert (splats["quats"].abs().sum(1) > 0).all()

    fuzz(f"load_ply ({'ascii' if text else 'binary'})", cases(), 60 + text, run_case, check).assert_clean()


def test_position_that_overflows_in_the_scene_frame_is_refused(tmp_path):
    """Finite in the file (3e38) but infinite once scaled into the normalised frame: an InputError, not inf."""
    columns = inria_columns(random_splats(4))
    columns["x"][2] = 3e38
    write_vertex(tmp_path / "far.ply", columns)
    load_ply(tmp_path / "far.ply", SceneNormalization())  # identity: still representable
    with pytest.raises(InputError, match=r"vertex 2, property 'x \(in the scene's frame\)'"):
        load_ply(tmp_path / "far.ply", SceneNormalization((0.0, 0.0, 0.0), 2.0))
