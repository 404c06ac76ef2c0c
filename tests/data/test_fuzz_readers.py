"""Fuzzing every dataset reader: a mutated file ends in an InputError or a valid dataset, nothing else.

The mutants come from :mod:`tests.fuzzing` (seeded; ``SPLAT2SPLAT_FUZZ_CASES`` scales the run). A
"valid" dataset must also be sane, or the reader let wrong data through silently: finite cameras,
images of the camera's size with values in [0, 1], finite points.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from splat2splat.data.dataset import Dataset
from splat2splat.data.readers import load_dataset, read_raw_scene
from splat2splat.io import load_image, save_image, write_point_ply
from tests.data.colmap_models import colmap_scene, model_from_cameras, write_binary_model, write_text_model
from tests.data.scenes import pattern_image, tiny_cameras, write_blender_scene, write_nerfstudio_scene
from tests.fuzzing import cases, fuzz, mutate_bytes, mutate_json, mutate_text

N_VIEWS = 2


def assert_sane(dataset: Dataset) -> None:
    """What every dataset a reader accepts must satisfy, however odd its file was."""
    cameras = dataset.cameras
    assert torch.isfinite(cameras.camtoworlds).all()
    rotations = cameras.camtoworlds[:, :3, :3]
    torch.testing.assert_close(rotations.transpose(1, 2) @ rotations, torch.eye(3).expand_as(rotations), atol=2e-3, rtol=0)
    for key in ("fx", "fy", "cx", "cy"):
        assert torch.isfinite(getattr(cameras, key)).all(), key
    assert (cameras.fx > 0).all() and (cameras.fy > 0).all()
    for i, image in enumerate(map(dataset.original, range(len(dataset)))):
        assert tuple(image.shape) == (*cameras.image_size(i), 3)
        assert torch.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
    if dataset.points is not None:
        assert torch.isfinite(dataset.points).all() and torch.isfinite(dataset.point_colors).all()
    for view in dataset.train_indices + dataset.eval_indices:
        assert 0 <= view < len(dataset)


def fuzz_file(folder: Path, target: Path, mutate, load=lambda folder: load_dataset(folder, eval_every=0),
              check=assert_sane, seed: int = 0, name: str = ""):
    """Fuzz ``target`` (a file of the dataset in ``folder``) with ``mutate(original, rng)``; restore it after."""
    original = target.read_bytes()

    def run_case(rng: random.Random):
        target.write_bytes(mutate(original, rng))
        return load(folder)

    try:
        report = fuzz(name or target.name, cases(), seed, run_case, check)
    finally:
        target.write_bytes(original)
    report.assert_clean()


def json_mutator(original: bytes, rng: random.Random) -> bytes:
    return mutate_json(json.loads(original), rng).encode()


def text_mutator(original: bytes, rng: random.Random) -> bytes:
    text = mutate_text(original.decode(), rng)
    return text.encode("utf-8", errors="surrogatepass") if rng.random() < 0.9 else mutate_bytes(text.encode(), rng)


def bytes_mutator(original: bytes, rng: random.Random) -> bytes:
    return mutate_bytes(original, rng)


def ply_mutator(original: bytes, rng: random.Random) -> bytes:
    """Half the time the text header (element counts, property types), else any bytes."""
    end = original.index(b"end_header\n") + len(b"end_header\n")
    if rng.random() < 0.5:
        return mutate_text(original[:end].decode(), rng).encode("utf-8", errors="surrogatepass") + original[end:]
    return mutate_bytes(original, rng)


# ------------------------------------------------------------------------------------------------ nerfstudio


@pytest.fixture
def nerfstudio_scene(tmp_path) -> Path:
    """Two views with OPENCV distortion, a mask, an applied_transform and a point cloud (every optional part)."""
    json_path = write_nerfstudio_scene(tmp_path / "ns", tiny_cameras(N_VIEWS), k1=0.01, ply_file_path="points3D.ply",
                                       applied_transform=[[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0]])
    meta = json.loads(json_path.read_text())
    save_image(json_path.parent / "masks" / "m0.png", torch.ones(24, 32, 3))
    meta["frames"][0]["mask_path"] = "masks/m0.png"
    json_path.write_text(json.dumps(meta))
    rng = np.random.default_rng(0)
    write_point_ply(json_path.parent / "points3D.ply", torch.from_numpy(rng.normal(size=(10, 3))).float(), torch.rand(10, 3))
    return json_path.parent


def test_fuzz_nerfstudio_transforms(nerfstudio_scene):
    fuzz_file(nerfstudio_scene, nerfstudio_scene / "transforms.json", json_mutator, seed=1)


def test_fuzz_nerfstudio_transforms_as_text(nerfstudio_scene):
    fuzz_file(nerfstudio_scene, nerfstudio_scene / "transforms.json", text_mutator, seed=2, name="transforms.json text")


@pytest.mark.parametrize("text", [False, True], ids=["binary", "ascii"])
def test_fuzz_nerfstudio_point_cloud(nerfstudio_scene, text):
    import plyfile

    ply = nerfstudio_scene / "points3D.ply"
    if text:
        plyfile.PlyData(plyfile.PlyData.read(str(ply), mmap=False).elements, text=True).write(str(ply))
    fuzz_file(nerfstudio_scene, ply, ply_mutator, load=read_raw_scene, check=_points_sane, seed=3 + text, name=f"points3D.ply ({'ascii' if text else 'binary'})")


def _points_sane(raw) -> None:
    if raw.points is None:
        return
    assert len(raw.points) > 0 and torch.isfinite(raw.points).all()
    assert torch.isfinite(raw.point_colors).all() and raw.point_colors.min() >= 0 and raw.point_colors.max() <= 1


# ----------------------------------------------------------------------------------------------------- COLMAP


@pytest.fixture
def colmap_binary(tmp_path) -> Path:
    root, cameras = colmap_scene(tmp_path, binary=True, model="OPENCV", extra_params=(0.01, 0.0, 0.0, 0.0), n_views=N_VIEWS)
    model = model_from_cameras(cameras, "OPENCV", (0.01, 0.0, 0.0, 0.0))
    model.xyz, model.rgb = np.random.default_rng(0).normal(size=(5, 3)), np.full((5, 3), 128, np.uint8)
    write_binary_model(model, root / "sparse" / "0")
    return root


@pytest.fixture
def colmap_text(tmp_path) -> Path:
    root, cameras = colmap_scene(tmp_path, binary=False, model="SIMPLE_RADIAL", extra_params=(0.01,), n_views=N_VIEWS)
    model = model_from_cameras(cameras, "SIMPLE_RADIAL", (0.01,))
    model.xyz, model.rgb = np.random.default_rng(0).normal(size=(5, 3)), np.full((5, 3), 128, np.uint8)
    write_text_model(model, root / "sparse" / "0")
    return root


@pytest.mark.parametrize("stem", ["cameras", "images", "points3D"])
def test_fuzz_colmap_binary(colmap_binary, stem):
    fuzz_file(colmap_binary, colmap_binary / "sparse" / "0" / f"{stem}.bin", bytes_mutator, seed=10 + len(stem))


@pytest.mark.parametrize("stem", ["cameras", "images", "points3D"])
def test_fuzz_colmap_text(colmap_text, stem):
    fuzz_file(colmap_text, colmap_text / "sparse" / "0" / f"{stem}.txt", text_mutator, seed=20 + len(stem))


# ----------------------------------------------------------------------------------------------------- Blender


def test_fuzz_blender_transforms(tmp_path):
    root = write_blender_scene(tmp_path / "lego", {"train": [0, 1], "test": [2]})
    fuzz_file(root, root / "transforms_train.json", json_mutator, seed=30, name="transforms_train.json")


# ------------------------------------------------------------------------------------------------ image files


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_fuzz_image_files(tmp_path, fmt):
    """Mutated image bytes (headers claiming huge sizes, broken chunks) through load_image and the size check."""
    scene = write_nerfstudio_scene(tmp_path / "img", tiny_cameras(1))
    image_path = scene.parent / "images" / "frame_00000.png"
    buffer = io.BytesIO()
    Image.fromarray((pattern_image(0).numpy() * 255).astype(np.uint8)).save(buffer, format=fmt)
    image_path.write_bytes(buffer.getvalue())
    fuzz_file(scene.parent, image_path, bytes_mutator, seed=40 + len(fmt), name=f"image ({fmt})")


def test_fuzz_load_image_alone(tmp_path):
    """Every outcome of load_image itself: float32 HxWx(3|4) in [0, 1], or an InputError."""
    path = tmp_path / "x.png"
    buffer = io.BytesIO()
    Image.fromarray((pattern_image(1).numpy() * 255).astype(np.uint8)).convert("RGBA").save(buffer, format="PNG")
    original = buffer.getvalue()

    def run_case(rng):
        path.write_bytes(mutate_bytes(original, rng))
        return load_image(path)

    def check(array):
        assert array.dtype == np.float32 and array.ndim == 3 and array.shape[2] in (3, 4)
        assert np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1

    fuzz("load_image", cases(), 50, run_case, check).assert_clean()


def test_mutators_are_deterministic_and_change_the_input():
    """A failing case number must reproduce: the same seed gives the same mutant."""
    data = b"0123456789" * 10
    assert mutate_bytes(data, random.Random(7)) == mutate_bytes(data, random.Random(7))
    assert sum(mutate_bytes(data, random.Random(k)) != data for k in range(50)) >= 45
    meta = {"a": [1, 2, 3], "b": {"c": 1.5}}
    assert mutate_json(meta, random.Random(3)) == mutate_json(json.loads(json.dumps(meta)), random.Random(3))
    assert sum(mutate_text("1 2 3\n4 5 6", random.Random(k)) != "1 2 3\n4 5 6" for k in range(50)) >= 40
