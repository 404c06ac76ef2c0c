"""The report's pictures: the contact sheet's borders and the camera path seen from above."""

from __future__ import annotations

import numpy as np
from PIL import Image

from splat2splat.data.demo import demo_cameras
from splat2splat.sfm import report


def test_top_view_looks_down_the_cameras_up_direction():
    cameras = demo_cameras(12, 32).camtoworlds.double().numpy()  # orbits around the z axis, z up
    axes = report.top_view_axes(cameras)
    assert np.allclose(axes @ axes.T, np.eye(2), atol=1e-9)
    assert np.abs(axes[:, 2]).max() < 1e-6  # the drawing plane is horizontal


def test_camera_path_and_frames_sheet_are_written(tmp_path):
    cameras = demo_cameras(12, 32).camtoworlds.double().numpy()
    points = np.random.default_rng(0).normal(scale=0.5, size=(500, 3))
    report.camera_path_plot(tmp_path / "path.png", cameras, points, size=400)
    with Image.open(tmp_path / "path.png") as im:
        assert im.size == (400, 400) and len(set(im.convert("RGB").getdata())) > 3
    frames = []
    for k in range(3):
        frames.append(tmp_path / f"{k}.png")
        Image.new("RGB", (40, 30), (128, 128, 128)).save(frames[-1])
    report.frames_sheet(tmp_path / "sheet.png", frames, [True, False, True])
    sheet = np.asarray(Image.open(tmp_path / "sheet.png").convert("RGB")).reshape(-1, 3)
    colours = {tuple(c) for c in sheet}
    assert report.REGISTERED_COLOR in colours and report.DROPPED_COLOR in colours
