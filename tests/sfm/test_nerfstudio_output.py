"""COLMAP poses -> transforms.json as ns-process-data writes them, and back to the COLMAP frame."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from splat2splat.data.cameras import opengl_to_opencv
from splat2splat.gaussians.frames import frame_similarity
from splat2splat.sfm.nerfstudio_output import APPLIED_TRANSFORM, DOWNSCALES, nerfstudio_pose, write_downscales


def random_pose(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    pose = np.eye(4)
    pose[:3, :3] = q * np.sign(np.linalg.det(q))
    pose[:3, 3] = rng.normal(size=3)
    return pose


def test_undoing_applied_transform_and_the_axes_gives_colmaps_pose_back():
    colmap_c2w = random_pose(0)
    written = nerfstudio_pose(colmap_c2w)
    assert np.allclose(written[:3, :3] @ written[:3, :3].T, np.eye(3))
    # what our reader does: OpenGL -> OpenCV axes, then frame_transform (applied_transform) inverted
    opencv = opengl_to_opencv(torch.from_numpy(written)[None]).double()[0].numpy()
    back = frame_similarity(torch.from_numpy(APPLIED_TRANSFORM).float()).inverse()
    recovered_rotation = back.rotation_matrix @ opencv[:3, :3]
    recovered_centre = back.apply_to_points(torch.from_numpy(opencv[None, :3, 3])).double()[0].numpy()
    assert np.allclose(recovered_rotation, colmap_c2w[:3, :3], atol=1e-6)
    assert np.allclose(recovered_centre, colmap_c2w[:3, 3], atol=1e-5)
    # nerfstudio's applied_transform: world (x, y, z) -> (x, z, -y)
    assert np.allclose(APPLIED_TRANSFORM[:, :3] @ [1.0, 2.0, 3.0], [1.0, 3.0, -2.0])


def test_downscaled_copies_have_nerfstudios_sizes(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (101, 60), (10, 20, 30)).save(tmp_path / "images" / "frame_00001.png")
    write_downscales(tmp_path, ["frame_00001.png"])
    for factor in DOWNSCALES:
        with Image.open(tmp_path / f"images_{factor}" / "frame_00001.png") as im:
            assert im.size == (round(101 / factor), round(60 / factor))
