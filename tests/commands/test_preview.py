"""``splat2splat preview``: 2D edits of representative views with the tiny random InstructPix2Pix, guidance sweeps."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import torch

from splat2splat.cli import entrypoint
from splat2splat.data.readers import load_dataset
from splat2splat.edit.ip2p import IP2PConfig
from splat2splat.testing.editors import TintEditor
from splat2splat.errors import InputError
from splat2splat.io import load_image
from splat2splat.media import contact_sheet
from splat2splat.commands.preview import PreviewCommand, run as run_preview
from splat2splat.edit.preview import edit_original, representative_views

DOWNSCALE = 2  # 32-px views


@pytest.fixture(scope="module")
def dataset(demo_scene):
    return load_dataset(demo_scene, downscale=DOWNSCALE)


def tiny_editor_config(tiny_ip2p_folder, **overrides) -> IP2PConfig:
    return IP2PConfig(model=str(tiny_ip2p_folder), device="cpu", dtype="float32", diffusion_steps=2, **overrides)


@dataclass
class RecordingFactory:
    """Builds TintEditors (cheap, deterministic) and records the options each was built with."""

    configs: list[IP2PConfig] = field(default_factory=list)

    def __call__(self, config: IP2PConfig) -> TintEditor:
        self.configs.append(config)
        return TintEditor()


def sheet_shape(rows: int, columns: int, row_labels: list[str], column_labels: list[str]) -> tuple[int, ...]:
    image = torch.zeros(32, 32, 3)
    return tuple(contact_sheet([[image] * columns] * rows, row_labels, column_labels).shape)


def test_preview_with_the_tiny_ip2p_folder(demo_scene, tiny_ip2p_folder, dataset, tmp_path):
    cmd = PreviewCommand(data=demo_scene, prompt="make it look like autumn", output=tmp_path, views=2,
                  editor=tiny_editor_config(tiny_ip2p_folder), downscale=DOWNSCALE)
    summary = run_preview(cmd)
    assert json.loads((tmp_path / "preview.json").read_text()) == summary
    assert summary["prompt"] == "make it look like autumn" and summary["edits"] == 2 and summary["sweep"] is None
    assert summary["editor"]["model"] == str(tiny_ip2p_folder) and summary["seconds"] > 0
    views = representative_views(dataset, 2)
    assert summary["views"] == [dataset.image_names[v] for v in views]
    sheet = torch.from_numpy(load_image(tmp_path / "preview.png"))
    assert tuple(sheet.shape) == sheet_shape(2, 2, summary["views"], ["original", "edited"])
    assert not (tmp_path / "sweep.png").exists()


def test_first_edit_conditions_on_the_original_and_is_reproducible(demo_scene, tiny_ip2p_folder, dataset):
    from splat2splat.edit.ip2p import InstructPix2PixEditor

    cmd = PreviewCommand(data=demo_scene, prompt="make it snowy", editor=tiny_editor_config(tiny_ip2p_folder), seed=3)
    editor = InstructPix2PixEditor.from_config(cmd.editor)
    first = edit_original(editor, dataset, 5, cmd.prompt, cmd.noise_range, cmd.seed)
    assert first.shape == dataset.original(5).shape
    assert torch.equal(first, edit_original(editor, dataset, 5, cmd.prompt, cmd.noise_range, cmd.seed))  # same seed, same edit
    assert (first - dataset.original(5)).abs().mean() > 0.01  # random weights at high noise: visibly changed


def test_sweep_grid_uses_every_scale_pair_on_the_first_view(demo_scene, dataset, tmp_path):
    factory = RecordingFactory()
    cmd = PreviewCommand(data=demo_scene, prompt="p", output=tmp_path, views=3, guidance_scales=(3.0, 7.5),
                  image_guidance_scales=(1.0, 1.5, 2.0), downscale=DOWNSCALE)
    summary = run_preview(cmd, factory)
    pairs = [(c.guidance_scale, c.image_guidance_scale) for c in factory.configs[1:]]
    assert pairs == [(t, i) for t in (3.0, 7.5) for i in (1.0, 1.5, 2.0)]
    assert summary["edits"] == 3 + 6
    assert summary["sweep"]["view"] == summary["views"][0]
    sweep = load_image(tmp_path / "sweep.png")
    assert sweep.shape == sheet_shape(2, 3, ["text 3", "text 7.5"], ["image 1", "image 1.5", "image 2"])


def test_sweeping_one_axis_keeps_the_editors_other_scale(demo_scene, tmp_path):
    factory = RecordingFactory()
    cmd = PreviewCommand(data=demo_scene, prompt="p", output=tmp_path, views=1, image_guidance_scales=(1.0, 2.0),
                  editor=IP2PConfig(guidance_scale=5.0), downscale=4)
    run_preview(cmd, factory)
    assert [(c.guidance_scale, c.image_guidance_scale) for c in factory.configs[1:]] == [(5.0, 1.0), (5.0, 2.0)]


def test_representative_views_are_spread_over_the_training_cameras(dataset):
    views = representative_views(dataset, 4)
    assert len(set(views)) == 4 and set(views) <= set(dataset.train_indices) and views == sorted(views)
    centers = dataset.cameras.centers()

    def closest_pair(indices):
        c = centers[indices]
        return float((torch.cdist(c, c) + torch.eye(len(indices)) * 1e9).min())

    # Farther apart than neighbouring views, which is what the first few training views are.
    assert closest_pair(views) > 2 * closest_pair(dataset.train_indices[:4])
    assert representative_views(dataset, 1000) == sorted(dataset.train_indices)


@pytest.mark.parametrize("changes, message", [
    (dict(prompt="  "), "prompt is empty"),
    (dict(views=0), "--views"),
    (dict(noise_range=(0.9, 0.2)), "noise range"),
])
def test_bad_options_are_input_errors(demo_scene, tmp_path, changes, message):
    cmd = PreviewCommand(**{"data": demo_scene, "prompt": "p", "output": tmp_path, **changes})
    with pytest.raises(InputError, match=message):
        run_preview(cmd, RecordingFactory())
    assert list(tmp_path.iterdir()) == []


def test_missing_model_folder_is_an_input_error(demo_scene, tmp_path):
    cmd = PreviewCommand(data=demo_scene, prompt="p", output=tmp_path / "out", downscale=4,
                  editor=IP2PConfig(model=str(tmp_path / "no-model"), device="cpu"))
    with pytest.raises(InputError, match="no-model"):
        run_preview(cmd)


def test_command_line_help_shows_the_3d_switch(capsys):
    with pytest.raises(SystemExit) as exit_status:
        entrypoint(["preview", "--help"])
    assert exit_status.value.code == 0
    result = capsys.readouterr().out
    for option in ("--prompt", "--3d", "--guidance-scales", "--image-guidance-scales", "--editor.model"):
        assert option in result


def test_command_line_reports_bad_input_in_one_line(tmp_path, capsys):
    missing = tmp_path / "no-dataset"
    with pytest.raises(SystemExit) as exit_status:
        entrypoint(["preview", "--data", str(missing), "--prompt", "p"])
    assert exit_status.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.strip().count("\n") == 0 and str(missing) in stderr


def test_3d_preview_runs_a_short_edit_and_keeps_earlier_previews(demo_scene, tmp_path):
    from splat2splat.commands.preview import Preview3D

    fast = Preview3D(downscale=1, init_steps=10, steps=6, edit_rate=2, turntable_frames=3)
    cmd = PreviewCommand(data=demo_scene, prompt="p", output=tmp_path, views=1, downscale=DOWNSCALE * 2, three_d=True,
                         fast=fast, device="cpu")
    first = run_preview(cmd, RecordingFactory())
    assert first["three_d"]["edits"] == 3 and first["three_d"]["output"] == str(tmp_path / "3d")
    assert {"scene.ply", "turntable.mp4", "before_after.png"} <= {p.name for p in (tmp_path / "3d").iterdir()}
    record = json.loads((tmp_path / "3d" / "run.json").read_text())
    assert record["preset"] == "in2n-tiny" and record["scene_steps"] == 10 + 6
    second = run_preview(cmd, RecordingFactory())
    assert second["three_d"]["output"] == str(tmp_path / "3d-2") and (tmp_path / "3d" / "run.json").is_file()


def test_preview_shows_the_region_before_any_3d_work(demo_scene, dataset, tmp_path):
    from splat2splat.edit.regions import RegionConfig

    region = RegionConfig(box=(0.0, -0.1, -0.05, 0.7, 0.6, 0.65))  # around the demo's sphere
    summary = run_preview(PreviewCommand(data=demo_scene, prompt="make the ball orange", output=tmp_path, views=2,
                                  downscale=DOWNSCALE, region=region), make_editor=RecordingFactory())
    assert summary["region"] == {"box": str(region.box)}
    sheet = torch.from_numpy(load_image(tmp_path / "preview.png"))
    assert tuple(sheet.shape) == sheet_shape(2, 3, summary["views"], ["original", "edited", "region"])
    from splat2splat.edit.regions import preview_masks

    masks = preview_masks(region, dataset, representative_views(dataset, 2))
    coverage = [float(m.mean()) for m in masks]
    assert all(0.02 < c < 0.7 for c in coverage), coverage


def test_preview_refuses_a_bad_region_in_one_line(demo_scene, tmp_path):
    from splat2splat.edit.regions import RegionConfig

    with pytest.raises(InputError, match="--region.masks must be a folder"):
        run_preview(PreviewCommand(data=demo_scene, prompt="p", output=tmp_path, views=1, downscale=DOWNSCALE,
                            region=RegionConfig(masks=tmp_path / "nothing")), make_editor=RecordingFactory())


def test_an_edit_that_diverges_to_nan_is_one_line_not_a_black_sheet(demo_scene, tmp_path):
    from tests.commands.test_failure_paths import NaNEditor

    cmd = PreviewCommand(data=demo_scene, prompt="p", output=tmp_path / "out", views=2, downscale=DOWNSCALE)
    with pytest.raises(InputError, match="NaN or infinite pixels") as error:
        run_preview(cmd, lambda config: NaNEditor())
    assert "\n" not in str(error.value) and not (tmp_path / "out" / "preview.png").exists()


def test_model_and_device_are_the_flags_edit_uses():
    """preview --model and --device, as in edit: --model wins over --editor.model, --editor.device over --device."""
    from splat2splat.cli import parse
    from splat2splat.commands.preview import with_shortcuts

    cmd = with_shortcuts(parse("preview", ["--data", "d", "--prompt", "p", "--model", "m", "--device", "cpu"]))
    assert (cmd.editor.model, cmd.editor.device) == ("m", "cpu")
    cmd = with_shortcuts(parse("preview", ["--data", "d", "--prompt", "p", "--model", "m", "--editor.model", "e",
                                           "--device", "cpu", "--editor.device", "auto"]))
    assert (cmd.editor.model, cmd.editor.device) == ("m", "auto")
