"""``splat2splat export``: round trips, SH reduction, pruning and cropping, every format, NeRF scenes, bad inputs."""

from __future__ import annotations

import json

import numpy as np
import plyfile
import pytest
import torch

from splat2splat.cli import entrypoint
from splat2splat.data.dataset import SceneNormalization
from splat2splat.errors import InputError
from splat2splat.commands.export import ExportCommand, run as run_export
from splat2splat.gaussians.ply import save_ply
from splat2splat.scene_loading import load_scene
from tests.checkpoints import write_gaussian_checkpoint, write_nerf_checkpoint


@pytest.fixture(scope="module")
def trained(demo_scene, tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "checkpoint.pt"
    backend, dataset = write_gaussian_checkpoint(demo_scene, path)
    return path, backend, dataset


def vertex_element(path) -> plyfile.PlyElement:
    return plyfile.PlyData.read(str(path))["vertex"]


def f_rest_count(path) -> int:
    return sum(prop.name.startswith("f_rest_") for prop in vertex_element(path).properties)


def test_exported_ply_reloads_and_renders_like_the_checkpoint(trained, tmp_path):
    path, backend, dataset = trained
    summary = run_export(ExportCommand(scene=path, output=tmp_path))  # data: the checkpoint's
    n = len(backend.splats["means"])
    assert summary["gaussians_in"] == summary["gaussians_out"] == n
    assert len(vertex_element(tmp_path / "scene.ply")) == n
    assert (tmp_path / "scene.splat").stat().st_size == 32 * n  # antimatter15: 32 bytes per Gaussian
    assert json.loads((tmp_path / "export.json").read_text())["files"] == summary["files"]
    reloaded = load_scene(tmp_path / "scene.ply", dataset, device="cpu")
    views = dataset.cameras[dataset.eval_indices[:2]]
    for a, b in zip(reloaded.render(views), backend.render(views)):
        assert (a - b).abs().max() < 1e-3


def test_ply_scene_exports_bit_exactly_without_data(trained, tmp_path):
    _, backend, dataset = trained
    source = tmp_path / "in" / "scene.ply"
    save_ply(source, backend.splats, dataset.normalization)
    run_export(ExportCommand(scene=source, output=tmp_path / "out", formats=("ply",)))
    assert (tmp_path / "out" / "scene.ply").read_bytes() == source.read_bytes()


@pytest.mark.parametrize("degree, expected_f_rest", [(None, 45), (2, 24), (1, 9), (0, 0)])
def test_sh_reduction_drops_f_rest(trained, tmp_path, degree, expected_f_rest):
    path, _, _ = trained
    run_export(ExportCommand(scene=path, output=tmp_path, formats=("ply",), sh_degree=degree))
    assert f_rest_count(tmp_path / "scene.ply") == expected_f_rest


def test_sh_degree_above_the_scene_is_an_input_error(trained, tmp_path):
    path, _, _ = trained
    with pytest.raises(InputError, match="SH degree 4"):
        run_export(ExportCommand(scene=path, output=tmp_path, formats=("ply",), sh_degree=4))


def test_min_opacity_and_max_scale_prune_as_expected(trained, tmp_path):
    path, backend, dataset = trained
    opacity = torch.sigmoid(backend.splats["opacities"].detach())
    threshold = float(opacity.median())
    largest_std = torch.exp(backend.splats["scales"].detach()).amax(dim=1) / dataset.normalization.scale
    max_scale = float(largest_std.quantile(0.75))
    expected = int(((opacity >= threshold) & (largest_std <= max_scale)).sum())
    assert 0 < expected < len(opacity) // 2 + 1
    summary = run_export(ExportCommand(scene=path, output=tmp_path, formats=("ply",), min_opacity=threshold,
                                max_scale=max_scale))
    assert summary["gaussians_out"] == expected
    assert len(vertex_element(tmp_path / "scene.ply")) == expected


def test_crop_box_keeps_centres_inside_it_in_the_original_frame(trained, tmp_path):
    path, backend, dataset = trained
    original = dataset.normalization.to_original(backend.splats["means"].detach().double())
    box = (-0.5, -0.5, 0.0, 0.5, 0.5, 0.4)  # the demo objects' middle, in the capture's own units
    inside = ((original >= torch.tensor(box[:3], dtype=torch.float64)) &
              (original <= torch.tensor(box[3:], dtype=torch.float64))).all(dim=1)
    assert 0 < int(inside.sum()) < len(original)
    run_export(ExportCommand(scene=path, output=tmp_path, formats=("ply",), crop_box=box))
    vertex = vertex_element(tmp_path / "scene.ply")
    assert len(vertex) == int(inside.sum())
    for axis, low, high in zip("xyz", box[:3], box[3:]):
        assert vertex[axis].min() >= low - 1e-5 and vertex[axis].max() <= high + 1e-5


def test_compressed_ply_and_point_cloud(trained, tmp_path):
    path, backend, _ = trained
    run_export(ExportCommand(scene=path, output=tmp_path, formats=("ply_compressed", "points"), sh_degree=1))
    compressed = plyfile.PlyData.read(str(tmp_path / "scene.compressed.ply"))
    assert len(compressed["vertex"]) == len(backend.splats["means"])
    assert len(compressed["sh"].properties) == 9  # degree 1: 3 bases x 3 channels
    points = vertex_element(tmp_path / "point_cloud.ply")
    assert len(points) == len(backend.splats["means"])
    assert {"red", "green", "blue"} <= {prop.name for prop in points.properties}
    assert not (tmp_path / "scene.ply").exists()


def test_pruning_everything_is_an_input_error(trained, tmp_path):
    path, _, _ = trained
    with pytest.raises(InputError, match="no Gaussians left"):
        run_export(ExportCommand(scene=path, output=tmp_path, crop_box=(50.0, 50.0, 50.0, 51.0, 51.0, 51.0)))


def test_export_never_overwrites_its_input(trained, tmp_path):
    _, backend, dataset = trained
    source = tmp_path / "scene.ply"
    save_ply(source, backend.splats, dataset.normalization)
    before = source.read_bytes()
    with pytest.raises(InputError, match="overwrite"):
        run_export(ExportCommand(scene=source, output=tmp_path, sh_degree=0))
    assert source.read_bytes() == before


def test_nerf_checkpoint_exports_points_only(demo_scene, tmp_path):
    path = tmp_path / "nerf.pt"
    _, dataset = write_nerf_checkpoint(demo_scene, path)
    with pytest.raises(InputError, match="Gaussian scene") as error:
        run_export(ExportCommand(scene=path, output=tmp_path / "out"))
    assert str(path) in str(error.value)
    summary = run_export(ExportCommand(scene=path, output=tmp_path / "out", formats=("points",), device="cpu"))
    assert (tmp_path / "out" / "point_cloud.ply").is_file()
    renders = list((tmp_path / "out" / "renders").iterdir())
    assert len(renders) == len(dataset.eval_indices)
    assert len(summary["files"]["points"]) == len(renders) + 1


def test_checkpoint_with_a_vanished_dataset_needs_data(trained, demo_scene, tmp_path):
    _, backend, _ = trained
    from splat2splat.checkpoint import save_checkpoint

    moved = tmp_path / "moved.pt"
    save_checkpoint(moved, backend, tmp_path / "gone", 1)
    with pytest.raises(InputError, match="--data"):
        run_export(ExportCommand(scene=moved, output=tmp_path / "out"))
    run_export(ExportCommand(scene=moved, data=demo_scene, output=tmp_path / "out", formats=("splat",)))
    assert (tmp_path / "out" / "scene.splat").is_file()


def test_command_line_help(capsys):
    with pytest.raises(SystemExit) as exit_status:
        entrypoint(["export", "--help"])
    assert exit_status.value.code == 0
    result = capsys.readouterr().out
    for option in ("--formats", "--frame", "--sh-degree", "--min-opacity", "--max-scale", "--crop-box"):
        assert option in result


def test_command_line_reports_bad_input_in_one_line(tmp_path, capsys):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as exit_status:
        entrypoint(["export", "--scene", str(corrupt), "--output", str(tmp_path / "o")])
    assert exit_status.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.strip().count("\n") == 0 and str(corrupt) in stderr


# ------------------------------------------------------------------------------------------------ frames

APPLIED = [[0.0, 0.0, 1.0, 0.5], [1.0, 0.0, 0.0, -1.0], [0.0, 1.0, 0.0, 2.0]]  # rotation + shift, as ns-process-data


@pytest.fixture(scope="module")
def nerfstudio_checkpoint(tmp_path_factory):
    """A Gaussian checkpoint on a nerfstudio dataset with an applied_transform (view-dependent colours)."""
    from splat2splat.data.readers import load_dataset
    from splat2splat.gaussians.backend import GaussianBackend, GaussianConfig
    from splat2splat.checkpoint import save_checkpoint
    from tests.data.scenes import LOOK_AT, tiny_cameras, write_nerfstudio_scene
    from tests.gaussians.test_frames import random_splats

    folder = tmp_path_factory.mktemp("nerfstudio")
    write_nerfstudio_scene(folder, tiny_cameras(4), applied_transform=APPLIED)
    dataset = load_dataset(folder)
    splats = random_splats(300, seed=1)
    splats["means"] = splats["means"] + dataset.normalization.to_normalized(LOOK_AT[None].double()).float()
    splats["shN"] = splats["shN"] * 3.0
    config = GaussianConfig(device="cpu", initial_sh_degree=3)  # render view-dependent colour from the start
    backend = GaussianBackend(torch.nn.ParameterDict(splats), config, dataset.background)
    path = folder / "checkpoint.pt"
    save_checkpoint(path, backend, folder, 1)
    return path, backend, dataset


def exported_means(cmd_output) -> torch.Tensor:
    vertex = vertex_element(cmd_output / "scene.ply")
    return torch.from_numpy(np.stack([vertex[axis] for axis in "xyz"], 1)).double()


def test_export_frames_map_points_exactly(nerfstudio_checkpoint, tmp_path):
    path, backend, dataset = nerfstudio_checkpoint
    normalized = backend.splats["means"].detach().double()
    in_dataset = dataset.normalization.to_original(normalized)
    applied = torch.tensor(APPLIED, dtype=torch.float64)
    in_original = (in_dataset - applied[:, 3]) @ applied[:, :3]  # applied^-1: R^T (x - t)
    for frame, expected in (("normalized", normalized), ("dataset", in_dataset), ("original", in_original)):
        summary = run_export(ExportCommand(scene=path, output=tmp_path / frame, formats=("ply",), frame=frame))
        assert summary["frame"] == frame
        torch.testing.assert_close(exported_means(tmp_path / frame), expected.float().double(), atol=1e-5, rtol=0)
    run_export(ExportCommand(scene=path, output=tmp_path / "default", formats=("ply",)))
    assert (tmp_path / "default" / "scene.ply").read_bytes() == (tmp_path / "original" / "scene.ply").read_bytes()


def test_original_frame_export_renders_like_the_scene_seen_from_the_original_cameras(nerfstudio_checkpoint, tmp_path):
    """Rotations and SH colours moved too: render the file (no normalisation, no frame transform) from the
    cameras mapped into the original frame by hand, and compare with the checkpoint's own renders."""
    from splat2splat.data.cameras import Cameras
    from splat2splat.data.readers.nerfstudio import read_nerfstudio
    from splat2splat.gaussians.backend import GaussianBackend, GaussianConfig
    from splat2splat.gaussians.formats import load_splats
    from splat2splat.gaussians.frames import Similarity

    path, backend, dataset = nerfstudio_checkpoint
    run_export(ExportCommand(scene=path, output=tmp_path, formats=("ply",), frame="original"))
    cameras = read_nerfstudio(dataset.source).cameras  # dataset frame, not normalised
    inverse = torch.eye(4)
    inverse[:3] = torch.tensor(APPLIED)
    original_c2w = torch.linalg.inv(inverse) @ cameras.camtoworlds
    original = Cameras(original_c2w, cameras.fx, cameras.fy, cameras.cx, cameras.cy, cameras.width, cameras.height)
    expected = backend.render(dataset.cameras)
    assert max(float(image.std()) for image in expected) > 0.05
    file_scene = GaussianBackend(load_splats(tmp_path / "scene.ply", SceneNormalization()),
                                 GaussianConfig(device="cpu", initial_sh_degree=3),
                                 dataset.background)
    for got, want in zip(file_scene.render(original), expected):
        assert (got - want).abs().max() < 1e-3
    assert Similarity.from_matrix(inverse).rotation != Similarity.from_matrix(torch.eye(4)).rotation  # a real turn
    # And the file loads back into the dataset's frame (scene loading assumes the original frame).
    reloaded = load_scene(tmp_path / "scene.ply", dataset, device="cpu")
    for got, want in zip(reloaded.render(dataset.cameras), expected):
        assert (got - want).abs().max() < 1e-3


def test_spz_is_version_4_unless_version_3_is_asked_for(trained, tmp_path):
    _, backend, dataset = trained
    source = tmp_path / "scene.ply"
    save_ply(source, backend.splats, dataset.normalization)
    run_export(ExportCommand(scene=source, output=tmp_path / "v4", formats=("spz",)))
    summary = run_export(ExportCommand(scene=source, output=tmp_path / "v3", formats=("spz",), spz_version=3))
    assert summary["spz_version"] == 3
    assert (tmp_path / "v4" / "scene.spz").read_bytes()[:8] == b"NGSP\x04\x00\x00\x00"
    assert (tmp_path / "v3" / "scene.spz").read_bytes()[:2] == b"\x1f\x8b"  # gzip
    for version in ("v3", "v4"):
        loaded = load_scene(tmp_path / version / "scene.spz", dataset, device="cpu").splats
        assert len(loaded["means"]) == len(backend.splats["means"])
    with pytest.raises(InputError, match="--spz-version 3 applies to --formats spz"):
        run_export(ExportCommand(scene=source, output=tmp_path / "no", formats=("ply",), spz_version=3))


def test_sog_export_reloads(trained, tmp_path):
    path, backend, dataset = trained
    summary = run_export(ExportCommand(scene=path, output=tmp_path, formats=("sog",), sh_degree=1))
    assert summary["files"] == {"sog": str(tmp_path / "scene.sog")}
    reloaded = load_scene(tmp_path / "scene.sog", dataset, device="cpu").splats
    assert len(reloaded["means"]) == len(backend.splats["means"]) and reloaded["shN"].shape[1] == 3
    closest = torch.cdist(reloaded["means"].detach(), backend.splats["means"].detach()).min(dim=1).values
    assert closest.max() < 1e-2  # 16-bit positions, back in the normalised frame
