"""Videos (mp4 / gif) read back, contact-sheet layout, turntable cameras and rendering."""

from __future__ import annotations

import imageio.v2 as imageio
import pytest
import torch
from PIL import Image

from splat2splat.data.cameras import Cameras
from splat2splat.data.readers import load_dataset
from splat2splat.errors import InputError
from splat2splat.media import SHEET_BACKGROUND, contact_sheet, render_turntable, turntable_cameras, write_video


def gradient_frames(count: int, height: int, width: int) -> list[torch.Tensor]:
    """Frames that differ from each other (a GIF writer merges identical consecutive frames)."""
    return [torch.full((height, width, 3), (k + 1) / (count + 1)) for k in range(count)]


def test_mp4_reads_back_with_all_frames_at_even_size(tmp_path):
    frames = gradient_frames(6, 33, 45)  # odd sides: H.264 yuv420p needs them padded to even
    path = write_video(tmp_path / "turntable.mp4", frames, fps=12)
    reader = imageio.get_reader(str(path))
    decoded = [frame for frame in reader]
    assert reader.get_meta_data()["fps"] == 12
    assert len(decoded) == 6
    assert decoded[0].shape == (34, 46, 3)
    for frame, source in zip(decoded, frames):  # lossy, but a flat grey survives within a few levels
        assert abs(frame[:33, :45].mean() / 255 - float(source.mean())) < 0.03
    assert sorted(p.name for p in tmp_path.iterdir()) == ["turntable.mp4"]  # no temp file left behind


def test_gif_reads_back_with_all_frames_and_loops_forever(tmp_path):
    frames = gradient_frames(5, 20, 30)
    path = write_video(tmp_path / "turntable.gif", frames, fps=10)
    decoded = imageio.mimread(str(path))
    assert len(decoded) == 5
    assert decoded[0].shape[:2] == (20, 30)
    with Image.open(path) as gif:
        assert gif.info["loop"] == 0
        assert gif.info["duration"] == 100


@pytest.mark.parametrize("name", ["video.avi", "video", "video.png"])
def test_unknown_video_suffix_is_an_input_error(tmp_path, name):
    with pytest.raises(InputError, match=name.replace(".", r"\.")):
        write_video(tmp_path / name, gradient_frames(2, 8, 8))
    assert list(tmp_path.iterdir()) == []


def test_frames_of_different_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="one size"):
        write_video(tmp_path / "v.gif", [torch.zeros(8, 8, 3), torch.zeros(8, 10, 3)])


def test_contact_sheet_layout_without_labels():
    pad = 3
    image = torch.rand(16, 20, 3)
    sheet = contact_sheet([[image] * 3, [image] * 3], pad=pad)
    assert sheet.shape == (2 * 16 + 3 * pad, 3 * 20 + 4 * pad, 3)
    # The first cell holds the image (up to 8-bit rounding); the corner is background.
    assert torch.allclose(sheet[pad:pad + 16, pad:pad + 20], image, atol=1 / 255)
    assert torch.allclose(sheet[0, 0], torch.tensor(SHEET_BACKGROUND), atol=1 / 255)


def test_contact_sheet_resizes_to_the_first_height_and_widens_columns():
    pad = 4
    first = torch.rand(16, 16, 3)
    short_and_wide = torch.rand(8, 20, 3)  # resized to 16 x 40
    sheet = contact_sheet([[first, short_and_wide], [first]], pad=pad)
    assert sheet.shape == (2 * 16 + 3 * pad, 16 + 40 + 3 * pad, 3)


def test_contact_sheet_labels_add_margins():
    image = torch.full((16, 16, 3), 0.9)  # light, so dark pixels can only be label ink
    plain = contact_sheet([[image, image]] * 2)
    labelled = contact_sheet([[image, image]] * 2, row_labels=["view 0", "view 1"],
                             column_labels=["original", "edited"])
    assert labelled.shape[0] > plain.shape[0] and labelled.shape[1] > plain.shape[1]
    assert plain.min() > 0.5
    top_margin = labelled[: labelled.shape[0] - plain.shape[0]]
    left_margin = labelled[:, : labelled.shape[1] - plain.shape[1]]
    assert top_margin.min() < 0.3 and left_margin.min() < 0.3
    with pytest.raises(ValueError, match="row labels"):
        contact_sheet([[image]], row_labels=["a", "b"])


@pytest.fixture(scope="module")
def dataset(demo_scene):
    return load_dataset(demo_scene, downscale=2)


def test_turntable_cameras_orbit_with_the_training_intrinsics(dataset):
    cameras = turntable_cameras(dataset, 8)
    assert len(cameras) == 8
    first = dataset.train_cameras[0]
    assert torch.equal(cameras.width, first.width.expand(8)) and torch.equal(cameras.fx, first.fx.expand(8))
    centers = cameras.centers()
    assert (torch.cdist(centers, centers) + torch.eye(8) * 10).min() > 0.1  # eight distinct places


class ConstantBackend:
    """Renders flat images whose grey level counts the calls, recording each camera."""

    name = "constant"
    step = 0

    def __init__(self) -> None:
        self.cameras: list[Cameras] = []

    def render(self, cameras: Cameras) -> list[torch.Tensor]:
        self.cameras.append(cameras)
        return [torch.full((*cameras.image_size(i), 3), len(self.cameras) / 10) for i in range(len(cameras))]


def test_render_turntable_renders_each_frame_at_the_camera_size(dataset):
    backend = ConstantBackend()
    frames = render_turntable(backend, dataset, n_frames=5)
    assert len(frames) == 5 and len(backend.cameras) == 5
    assert all(frame.shape == (32, 32, 3) for frame in frames)
    expected = turntable_cameras(dataset, 5).camtoworlds
    assert torch.allclose(torch.cat([c.camtoworlds for c in backend.cameras]), expected)
