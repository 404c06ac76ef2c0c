"""SOG: our writer's values are the nearest codes of each codebook / 16-bit grid, the SH palette is exact
when it has room for every Gaussian and k-means otherwise, and damaged bundles end in one line."""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci
from PIL import Image

from splat2splat.data.dataset import SceneNormalization
from splat2splat.errors import InputError
from splat2splat.gaussians.formats import load_splats, save_splats, splat_file_format
from splat2splat.gaussians.formats.sog import save_sog
from tests.gaussians.formats.test_formats import matched, scene_splats

IDENTITY = SceneNormalization()


def meta_of(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("meta.json"))


def nearest_entry(values: torch.Tensor, codebook: list[float]) -> torch.Tensor:
    book = torch.tensor(codebook, dtype=torch.float64)
    return book[(values.double().unsqueeze(-1) - book).abs().argmin(dim=-1)]


def covariances(splats: dict[str, torch.Tensor]) -> torch.Tensor:
    return _quat_scale_to_covar_preci(splats["quats"].detach().double(), torch.exp(splats["scales"].detach().double()),
                                      triu=False)[0]


@pytest.mark.parametrize("name", ["scene.sog", "unbundled/meta.json"])
def test_values_are_the_nearest_codes(tmp_path, name):
    splats = scene_splats(n=600)
    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    assert save_sog(path, splats, IDENTITY, palette_size=1024) == 600  # room for every Gaussian's SH
    assert splat_file_format(path) == "sog"
    meta = json.loads(path.read_text()) if name.endswith(".json") else meta_of(path)
    assert meta["version"] == 2 and meta["count"] == 600 and meta["shN"]["count"] == 600
    loaded = {key: value.detach().double() for key, value in load_splats(path, IDENTITY).items()}
    expected = {key: value.double() for key, value in matched(load_splats(path, IDENTITY), splats).items()}
    for key, book in (("scales", "scales"), ("sh0", "sh0"), ("shN", "shN")):
        torch.testing.assert_close(loaded[key], nearest_entry(expected[key], meta[book]["codebook"]), atol=1e-6, rtol=0)
    # Positions: half a 16-bit step of the log-transformed range, stretched back by exp(|log p|).
    logs = torch.sign(expected["means"]) * torch.log1p(expected["means"].abs())
    step = (torch.tensor(meta["means"]["maxs"]) - torch.tensor(meta["means"]["mins"])).double() / 65535
    assert ((loaded["means"] - expected["means"]).abs() <= step / 2 * torch.exp(logs.abs()) + 1e-6).all()
    assert (torch.sigmoid(loaded["opacities"]) - torch.sigmoid(expected["opacities"])).abs().max() <= 0.5 / 255 + 1e-6
    # Rotations: 8 bits per smallest component; compare the covariances they give, with the decoded scales.
    relative = (covariances(dict(loaded)) - covariances(dict(expected, scales=loaded["scales"]))).abs().amax(dim=(1, 2))
    assert (relative / covariances(dict(loaded)).abs().amax(dim=(1, 2))).max() < 0.05


def test_a_full_palette_is_fitted_by_k_means(tmp_path):
    """Eight SH "looks" with noise of 0.01, and a palette of 64 < 600 Gaussians: k-means keeps the looks."""
    splats = scene_splats(n=600)
    g = torch.Generator().manual_seed(1)
    looks = 0.5 * torch.rand(8, 15, 3, generator=g) - 0.25
    splats["shN"] = looks[torch.arange(600) % 8] + 0.01 * torch.randn(600, 15, 3, generator=g)
    save_sog(tmp_path / "scene.sog", splats, IDENTITY, palette_size=64)
    assert meta_of(tmp_path / "scene.sog")["shN"]["count"] == 64
    loaded = load_splats(tmp_path / "scene.sog", IDENTITY)
    assert len(torch.unique(loaded["shN"].detach().reshape(600, -1), dim=0)) <= 64
    error = (loaded["shN"].detach() - matched(loaded, splats)["shN"]).pow(2).mean()
    # Within the noise (a centroid averages its members: ~1x the noise variance; a random member as the entry
    # would leave ~2x); the looks themselves differ by ~0.2.
    assert error < 1.3 * 0.01 ** 2, error


@pytest.mark.parametrize("members, size", [([5, 0, 7, 0, 1000, 3], 64), ([1] * 10, 10), ([0, 0, 9], 5),
                                           ([123456, 7, 0, 99999], 32768)])
def test_palette_shares_fill_the_palette_and_skip_empty_groups(members, size):
    from splat2splat.gaussians.formats.sog import _shares

    shares = _shares(torch.tensor(members), size)
    assert int(shares.sum()) == size and ((shares > 0) == (torch.tensor(members) > 0)).all()
    big = torch.tensor(members).argmax()
    assert shares[big] == shares.max()  # in proportion to the members


def test_a_pillow_without_webp_is_one_line_both_ways(tmp_path, monkeypatch):
    from PIL import features

    monkeypatch.setattr(features, "check", lambda name: name != "webp")
    for action in (lambda: save_sog(tmp_path / "s.sog", scene_splats(n=5), IDENTITY),
                   lambda: load_splats(tmp_path / "s.sog", IDENTITY)):
        (tmp_path / "s.sog").write_bytes(b"x")
        with pytest.raises(InputError, match="Pillow was built without WebP"):
            action()


def test_degree_0_has_no_sh_images_and_other_formats_read_it(tmp_path):
    splats = scene_splats(n=50, sh_degree=0)
    save_splats(tmp_path / "scene.sog", splats, IDENTITY, "sog")
    assert "shN" not in meta_of(tmp_path / "scene.sog")
    assert load_splats(tmp_path / "scene.sog", IDENTITY)["shN"].shape == (50, 0, 3)


# ------------------------------------------------------------------------------------------ damaged files


def rewrite_bundle(change):
    """A valid bundle, with ``change(files: dict[name, bytes])`` applied to its members."""
    def write(path: Path) -> None:
        save_sog(path, scene_splats(n=300, sh_degree=1), IDENTITY)
        with zipfile.ZipFile(path) as archive:
            files = {name: archive.read(name) for name in archive.namelist()}
        change(files)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, data in files.items():
                archive.writestr(name, data)
        path.write_bytes(buffer.getvalue())
    return write


def edit_meta(change):
    def edit(files: dict[str, bytes]) -> None:
        meta = json.loads(files["meta.json"])
        change(meta)
        files["meta.json"] = json.dumps(meta).encode()
    return rewrite_bundle(edit)


def webp(rgba: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, "WEBP", lossless=True, exact=True)
    return buffer.getvalue()


def replace_image(name: str, change):
    def edit(files: dict[str, bytes]) -> None:
        files[name] = webp(change(np.asarray(Image.open(io.BytesIO(files[name])).convert("RGBA")).copy()))
    return rewrite_bundle(edit)


def lie_about_member_size(path: Path) -> None:
    save_sog(path, scene_splats(n=300, sh_degree=1), IDENTITY)
    data = bytearray(path.read_bytes())
    central = data.rfind(b"PK\x01\x02")  # the last member's central-directory entry (meta.json)
    data[central + 24:central + 28] = (2 ** 31).to_bytes(4, "little")  # its uncompressed size
    path.write_bytes(bytes(data))


def set_tag(rgba: np.ndarray) -> np.ndarray:
    rgba[0, 0, 3] = 17
    return rgba


def set_label(rgba: np.ndarray) -> np.ndarray:
    rgba[0, 0, :2] = 255
    return rgba


def unbundled_without(name: str):
    def write(path: Path) -> None:
        save_sog(path, scene_splats(n=30, sh_degree=1), IDENTITY)
        (path.parent / name).unlink()
    return write


DAMAGED = {
    "not_zip": ("scene.sog", lambda path: path.write_bytes(b"hello"), "not a SOG file"),
    "no_meta": ("scene.sog", rewrite_bundle(lambda files: files.pop("meta.json")), "has no 'meta.json'"),
    "meta_not_json": ("scene.sog", rewrite_bundle(lambda files: files.update({"meta.json": b"{"})), "not JSON"),
    "meta_not_sog": ("scene.sog", rewrite_bundle(lambda files: files.update({"meta.json": b"{}"})),
                     "lacks the means"),
    "version_3": ("scene.sog", edit_meta(lambda meta: meta.update(version=3)), "meta version 3 is not supported"),
    "count_lie": ("scene.sog", edit_meta(lambda meta: meta.update(count=4_000_000_000)),
                  "claims 4000000000 Gaussians"),
    "count_above_images": ("scene.sog", edit_meta(lambda meta: meta.update(count=5000)), "for 5000 texels"),
    "traversal": ("scene.sog", edit_meta(lambda meta: meta["quats"].update(files=["../../etc/passwd"])),
                  "images are plain file names"),
    "short_codebook": ("scene.sog", edit_meta(lambda meta: meta["scales"].update(codebook=[1.0, 2.0])),
                       "scales.codebook is not 256 finite numbers"),
    "member_size_lie": ("scene.sog", lie_about_member_size, "SOG file"),
    "not_webp": ("scene.sog", rewrite_bundle(lambda files: files.update({"quats.webp": b"RIFF0000WEBPjunk"})),
                 "'quats.webp' cannot be decoded"),
    "bad_quat_tag": ("scene.sog", replace_image("quats.webp", set_tag), "largest-component tag"),
    "label_beyond_palette": ("scene.sog", replace_image("shN_labels.webp", set_label), "beyond the"),
    "unbundled_missing_image": ("meta.json", unbundled_without("means_u.webp"), "'means_u.webp', which meta.json"),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_files_end_in_one_line_naming_file_and_format(tmp_path, case):
    name, write, message = DAMAGED[case]
    path = tmp_path / name
    write(path)
    with pytest.raises(InputError, match=message) as error:
        load_splats(path, IDENTITY)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value) and "SOG" in str(error.value)


def check_scene(splats) -> None:
    n = len(splats["means"])
    assert n > 0 and splats["sh0"].shape == (n, 1, 3) and splats["shN"].shape[0] == n
    assert all(torch.isfinite(value).all() for value in splats.values())
    assert (splats["quats"].abs().sum(1) > 0).all()


@pytest.mark.parametrize("target", ["meta", "bytes", "image"])
def test_fuzz_load_sog(tmp_path, target):
    """Mutated meta.json values, bundle bytes or image bytes end in an InputError or a finite scene."""
    import random

    from tests.fuzzing import cases, fuzz, mutate_bytes, mutate_json

    path = tmp_path / "scene.sog"
    save_sog(path, scene_splats(n=40, sh_degree=2), IDENTITY)
    original = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}

    def bundle(files: dict[str, bytes]) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, data in files.items():
                archive.writestr(name, data)
        return buffer.getvalue()

    def run_case(rng: random.Random):
        if target == "meta":
            text = mutate_json(json.loads(members["meta.json"]), rng)
            path.write_bytes(bundle(dict(members, **{"meta.json": text.encode("utf-8", errors="surrogatepass")})))
        elif target == "image":
            name = rng.choice([name for name in members if name.endswith(".webp")])
            path.write_bytes(bundle(dict(members, **{name: mutate_bytes(members[name], rng)})))
        else:
            path.write_bytes(mutate_bytes(original, rng))
        return load_splats(path, IDENTITY)

    fuzz(f"load_sog ({target})", cases(), 70 + ["meta", "bytes", "image"].index(target), run_case,
         check_scene).assert_clean()


def test_meta_version_1_decodes_to_its_spec_values(tmp_path):
    """A legacy (version 1) bundle built byte by byte: per-channel mins..maxs instead of codebooks."""
    def texels(rows: list[list[int]]) -> np.ndarray:
        rgba = np.full((16, 4), 255, dtype=np.uint8)
        rgba[:len(rows), :len(rows[0])] = rows
        return rgba.reshape(4, 4, 4)

    centroids = np.zeros((1, 192, 4), dtype=np.uint8)  # 64 entries x 3 coefficients: SH band 1
    centroids[0, 3:6, :3] = [[0, 255, 51], [102, 153, 204], [255, 0, 0]]  # entry 1
    centroids[..., 3] = 255
    files = {
        "means_l.webp": webp(texels([[0, 0, 0], [255, 255, 255], [0, 0, 0]])),
        "means_u.webp": webp(texels([[0, 0, 0], [255, 255, 255], [128, 0, 0]])),
        "quats.webp": webp(texels([[128, 128, 128, 255], [255, 128, 128, 252], [128, 0, 128, 253]])),
        "scales.webp": webp(texels([[0, 255, 51], [0, 0, 0], [255, 255, 255]])),
        "sh0.webp": webp(texels([[0, 255, 51, 255], [0, 0, 0, 0], [255, 255, 255, 51]])),
        "shN_centroids.webp": webp(centroids),
        "shN_labels.webp": webp(texels([[1, 0, 0], [1, 0, 0], [0, 0, 0]])),
        "meta.json": json.dumps({
            "means": {"shape": [3, 3], "mins": [-1.0, -1.0, -1.0], "maxs": [1.0, 1.0, 1.0],
                      "files": ["means_l.webp", "means_u.webp"]},
            "scales": {"mins": [-5.0, -4.0, -3.0], "maxs": [0.0, 1.0, 2.0], "files": ["scales.webp"]},
            "quats": {"files": ["quats.webp"]},
            "sh0": {"mins": [-2.0, -2.0, -2.0, -6.0], "maxs": [2.0, 2.0, 2.0, 4.0], "files": ["sh0.webp"]},
            "shN": {"mins": -1.0, "maxs": 1.0, "files": ["shN_centroids.webp", "shN_labels.webp"]},
        }).encode(),
    }
    path = tmp_path / "legacy.sog"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    splats = {key: value.detach().double() for key, value in load_splats(path, IDENTITY).items()}
    # Means: 16-bit codes over the log-transformed box, sign(l) * (exp|l| - 1) back.
    logs = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [-1 + 2 * (128 * 256) / 65535, -1.0, -1.0]])
    torch.testing.assert_close(splats["means"], torch.sign(logs).double() * torch.expm1(logs.abs()).double())
    torch.testing.assert_close(splats["scales"][0], torch.tensor([-5.0, 1.0, -3.0 + 5.0 * 51 / 255]).double())
    torch.testing.assert_close(splats["sh0"][0, 0], torch.tensor([-2.0, 2.0, -2.0 + 4.0 * 51 / 255]).double())
    torch.testing.assert_close(splats["opacities"], torch.tensor([4.0, -6.0, -6.0 + 10.0 * 51 / 255]).double())
    # Quaternions (w, x, y, z): tag 252 + index of the largest; the others (byte / 255 * 2 - 1) / sqrt2.
    small, half = (128 / 255 * 2 - 1) / math.sqrt(2), math.sqrt(0.5)  # bytes 128 and 255 / 0
    largest = math.sqrt(1 - half ** 2 - 2 * small ** 2)
    torch.testing.assert_close(splats["quats"][1], torch.tensor([largest, half, small, small]).double())  # tag 252
    torch.testing.assert_close(splats["quats"][2], torch.tensor([small, largest, -half, small]).double())  # 253
    expected_sh = torch.tensor([[0, 255, 51], [102, 153, 204], [255, 0, 0]]).double() / 255 * 2 - 1
    torch.testing.assert_close(splats["shN"][0], expected_sh)
    torch.testing.assert_close(splats["shN"][2], torch.full((3, 3), -1.0).double())  # entry 0: all zero bytes
