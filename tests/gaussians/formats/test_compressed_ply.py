"""Compressed PLY: the layout we write decodes by hand, and gsplat's own exporter's files read back."""

from __future__ import annotations

import numpy as np
import plyfile
import torch
from gsplat.exporter import export_splats

from splat2splat.data.dataset import SceneNormalization
from splat2splat.gaussians.formats import load_splats, save_splats
from tests.gaussians.formats.test_formats import matched, scene_splats

NORMALIZATION = SceneNormalization(center=(1.5, -20.0, 3.25), scale=0.37)


def test_written_layout_parses_and_decodes_by_hand(tmp_path):
    splats = scene_splats(n=300, sh_degree=2)
    path = tmp_path / "scene.compressed.ply"
    save_splats(path, splats, NORMALIZATION, "ply_compressed")
    ply = plyfile.PlyData.read(str(path))
    assert ply.header.splitlines()[1] == "format binary_little_endian 1.0"
    assert [element.name for element in ply.elements] == ["chunk", "vertex", "sh"]
    assert len(ply["chunk"].data) == 2 and len(ply["vertex"].data) == 300
    assert len(ply["sh"].properties) == 24
    # Decode the 11-10-11 bit positions against their chunk's bounds (256 Gaussians per chunk).
    chunk = ply["chunk"].data[np.arange(300) // 256]
    packed = ply["vertex"].data["packed_position"].astype(np.int64)
    fractions = np.stack([(packed >> 21) / 2047, ((packed >> 11) & 1023) / 1023, (packed & 2047) / 2047], 1)
    low = np.stack([chunk["min_x"], chunk["min_y"], chunk["min_z"]], 1)
    high = np.stack([chunk["max_x"], chunk["max_y"], chunk["max_z"]], 1)
    decoded = torch.from_numpy(low + fractions * (high - low))
    original = NORMALIZATION.to_original(splats["means"].double())
    nearest = torch.cdist(decoded, original).min(dim=1).values
    assert nearest.max() < 2e-3 * (original.max() - original.min())


def test_gsplats_compressed_ply_reads_back(tmp_path):
    splats = scene_splats(n=512, sh_degree=3)
    splats["opacities"] = splats["opacities"].abs() + 0.5  # gsplat leaves out Gaussians below 1/255
    path = tmp_path / "gsplat.compressed.ply"
    path.write_bytes(export_splats(**splats, format="ply_compressed"))
    loaded = load_splats(path, SceneNormalization())
    expected = matched(loaded, splats)
    assert (loaded["means"].detach() - expected["means"]).abs().max() < 0.01
    assert (loaded["sh0"].detach() - expected["sh0"]).abs().max() < 0.03
    assert (loaded["shN"].detach() - expected["shN"]).abs().max() < 0.04  # gsplat truncates: up to one step
