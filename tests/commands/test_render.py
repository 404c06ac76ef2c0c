"""``splat2splat render`` end to end on a briefly trained demo scene (Gaussian and NeRF), and its bad inputs."""

from __future__ import annotations

import json

import imageio.v2 as imageio
import pytest
import torch

from splat2splat.cli import entrypoint
from splat2splat.errors import InputError
from splat2splat.gaussians.ply import save_ply
from splat2splat.io import load_image
from splat2splat.kernels.ssim import ssim
from splat2splat.losses import psnr
from splat2splat.media import contact_sheet
from splat2splat.media import evenly_spread
from splat2splat.commands.render import COMPARISON_VIEWS, RenderCommand, render_file_name, run as run_render
from tests.checkpoints import write_gaussian_checkpoint, write_nerf_checkpoint


@pytest.fixture(scope="module")
def trained(demo_scene, tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "checkpoint.pt"
    backend, dataset = write_gaussian_checkpoint(demo_scene, path)
    return path, backend, dataset


@pytest.fixture(scope="module")
def rendered(trained, tmp_path_factory):
    """One full render run: eval split, 4-frame mp4 turntable; data and downscale from the checkpoint."""
    path, _, _ = trained
    output = tmp_path_factory.mktemp("render")
    metrics = run_render(RenderCommand(scene=path, output=output, turntable_frames=4, fps=8, device="cpu"))
    return output, metrics


def test_renders_are_written_per_eval_view(rendered, trained):
    output, _ = rendered
    _, backend, dataset = trained
    names = sorted(p.name for p in (output / "renders" / "eval").iterdir())
    assert names == sorted(render_file_name(dataset.image_names[i]) for i in dataset.eval_indices)
    first = dataset.eval_indices[0]
    saved = torch.from_numpy(load_image(output / "renders" / "eval" / render_file_name(dataset.image_names[first])))
    assert (saved - backend.render(dataset.cameras[first])[0]).abs().max() <= 1 / 255


def test_metrics_score_each_view_against_its_original(rendered, trained):
    output, metrics = rendered
    _, _, dataset = trained
    assert json.loads((output / "metrics.json").read_text()) == metrics
    assert metrics["backend"] == "gaussian" and metrics["split"] == "eval"
    assert len(metrics["views"]) == len(dataset.eval_indices)
    for i in dataset.eval_indices:
        name = dataset.image_names[i]
        saved = torch.from_numpy(load_image(output / "renders" / "eval" / render_file_name(name)))  # 8-bit render
        assert metrics["views"][name]["psnr"] == pytest.approx(psnr(saved, dataset.original(i)), abs=0.1)
        assert metrics["views"][name]["ssim"] == pytest.approx(float(ssim(saved[None], dataset.original(i)[None])),
                                                               abs=0.01)
    mean_psnr = sum(v["psnr"] for v in metrics["views"].values()) / len(metrics["views"])
    assert metrics["mean"]["psnr"] == pytest.approx(mean_psnr)
    assert 12.0 < metrics["mean"]["psnr"] < 40.0  # 30 steps fit the scene roughly, not perfectly


def test_comparison_sheet_has_one_row_per_view_and_two_columns(rendered, trained):
    output, _ = rendered
    _, _, dataset = trained
    sheet = load_image(output / "comparison.png")
    n_rows = len(evenly_spread(len(dataset.eval_indices), COMPARISON_VIEWS))
    image = torch.zeros(32, 32, 3)
    expected = contact_sheet([[image, image]] * n_rows, row_labels=[dataset.image_names[0]] * n_rows,
                             column_labels=["ground truth", "render"])
    assert sheet.shape == tuple(expected.shape)


def test_turntable_video_has_every_frame(rendered):
    output, metrics = rendered
    reader = imageio.get_reader(str(output / "turntable.mp4"))
    frames = [frame for frame in reader]
    assert len(frames) == 4 and frames[0].shape == (32, 32, 3)
    assert metrics["turntable"] == str(output / "turntable.mp4")


def test_comparison_rows_spread_over_the_views():
    assert evenly_spread(5, COMPARISON_VIEWS) == [0, 1, 2, 3, 4]
    assert evenly_spread(30, limit=4) == [0, 10, 19, 29]


def test_ply_scene_renders_train_split_as_gif(trained, demo_scene, tmp_path):
    _, backend, dataset = trained
    ply = tmp_path / "scene.ply"
    save_ply(ply, backend.splats, dataset.normalization)
    output = tmp_path / "out"
    metrics = run_render(RenderCommand(scene=ply, data=demo_scene, downscale=4, output=output, split="train",
                                turntable_frames=3, video_format="gif", device="cpu"))
    assert len(list((output / "renders" / "train").iterdir())) == len(dataset.train_indices)
    assert load_image(next((output / "renders" / "train").iterdir())).shape == (16, 16, 3)
    assert len(imageio.mimread(str(output / "turntable.gif"))) == 3
    assert len(metrics["views"]) == len(dataset.train_indices)


def test_nerf_checkpoint_renders_without_turntable(demo_scene, tmp_path):
    path = tmp_path / "nerf.pt"
    write_nerf_checkpoint(demo_scene, path)
    output = tmp_path / "out"
    metrics = run_render(RenderCommand(scene=path, output=output, turntable_frames=0, device="cpu"))
    assert metrics["backend"] == "nerf" and metrics["turntable"] is None
    assert not list(output.glob("turntable.*"))
    assert (output / "comparison.png").is_file()


def test_ply_without_data_is_an_input_error(trained, tmp_path):
    _, backend, dataset = trained
    ply = tmp_path / "scene.ply"
    save_ply(ply, backend.splats, dataset.normalization)
    with pytest.raises(InputError, match="--data") as error:
        run_render(RenderCommand(scene=ply, output=tmp_path / "out"))
    assert str(ply) in str(error.value)
    assert not (tmp_path / "out").exists()


def test_missing_scene_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        run_render(RenderCommand(scene=tmp_path / "nothing.pt", output=tmp_path / "out"))


def test_command_line_help(capsys):
    with pytest.raises(SystemExit) as exit_status:
        entrypoint(["render", "--help"])
    assert exit_status.value.code == 0
    help_text = capsys.readouterr().out
    assert "--turntable-frames" in help_text and "--video-format" in help_text


def test_command_line_reports_bad_input_in_one_line(tmp_path, capsys):
    missing = tmp_path / "nothing.pt"
    with pytest.raises(SystemExit) as exit_status:
        entrypoint(["render", "--scene", str(missing)])
    assert exit_status.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.strip().count("\n") == 0 and str(missing) in stderr and "Traceback" not in stderr


def test_a_nerfstudio_camera_path_renders_the_views_it_names(trained, rendered, tmp_path):
    """A path through three held-out views renders (as a gif) what those views render."""
    from tests.data.scenes import nerfstudio_camera_path

    path, _, dataset = trained
    views = list(dataset.eval_indices[:3])
    (tmp_path / "path.json").write_text(json.dumps(nerfstudio_camera_path(dataset, views)))
    output = tmp_path / "out"
    metrics = run_render(RenderCommand(scene=path, output=output, turntable_frames=0, camera_path=tmp_path / "path.json",
                                       video_format="gif", device="cpu"))
    assert metrics["camera_path"] == str(output / "camera_path.gif")
    frames = imageio.mimread(str(output / "camera_path.gif"))
    assert len(frames) == 3
    for frame, view in zip(frames, views):
        expected = torch.from_numpy(load_image(rendered[0] / "renders" / "eval" / render_file_name(dataset.image_names[view])))
        got = torch.from_numpy(frame[..., :3].copy()).float() / 255
        assert psnr(got, expected) > 25  # the same render, through the gif's 256-colour palette


def test_a_bad_camera_path_is_refused_before_the_scene_loads(tmp_path, capsys):
    (tmp_path / "path.json").write_text(json.dumps({"render_width": 32, "render_height": 32}))
    with pytest.raises(SystemExit):
        entrypoint(["render", "--scene", str(tmp_path / "missing.pt"), "--camera-path", str(tmp_path / "path.json")])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "path.json" in err and "camera_path" in err
