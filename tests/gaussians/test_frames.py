"""Frame changes of Gaussian scenes: SH rotation, quaternions, exact point / covariance mapping, renders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci, _quat_to_rotmat, _spherical_harmonics

from splat2splat.data.dataset import SceneNormalization
from splat2splat.errors import InputError
from splat2splat.gaussians.frames import Similarity, from_file_frame, sh_rotation, to_file_frame
from splat2splat.gaussians.rasterize import rasterize
from splat2splat.rotations import matrix_to_quaternion

GENERATOR_SEED = 3


def random_rotation(seed: int, proper: bool = True) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    if (np.linalg.det(q) > 0) != proper:
        q[:, 0] *= -1
    return q


def random_splats(n: int, degree: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"means": torch.randn(n, 3, generator=g) * 0.3, "scales": torch.randn(n, 3, generator=g) * 0.3 - 3.0,
            "quats": torch.randn(n, 4, generator=g), "opacities": torch.randn(n, generator=g) + 1.0,
            "sh0": torch.randn(n, 1, 3, generator=g),
            "shN": torch.randn(n, (degree + 1) ** 2 - 1, 3, generator=g) * 0.3}


def as_tuple(matrix: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in matrix)


@pytest.mark.parametrize("proper", [True, False])
def test_sh_rotation_turns_colours_with_the_scene(proper):
    """c'(R d) == c(d) for every direction d, all bands, rotations and reflections alike."""
    rotation = random_rotation(1, proper)
    coefficients = torch.randn(20, 16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rotated = torch.einsum("jk,nkc->njc", sh_rotation(as_tuple(rotation), 3), coefficients)
    directions = torch.nn.functional.normalize(torch.randn(20, 3, dtype=torch.float64), dim=1)
    before = _spherical_harmonics(3, directions, coefficients)
    after = _spherical_harmonics(3, directions @ torch.tensor(rotation).T, rotated)
    torch.testing.assert_close(after, before, atol=1e-12, rtol=0)


@pytest.mark.parametrize("axis_angle", [(0, 0.3), (1, 2.9), (2, math.pi), (0, math.pi), (1, math.pi), (2, 0.0)])
def test_matrix_to_quaternion_inverts_gsplats_quaternion_to_matrix(axis_angle):
    """Covers all four branches of Shepperd's method (near-180-degree turns included)."""
    axis, angle = axis_angle
    rotation = random_rotation(7) @ _axis_rotation(axis, angle) @ random_rotation(7).T if angle else np.eye(3)
    quaternion = matrix_to_quaternion(rotation)
    np.testing.assert_allclose(_quat_to_rotmat(quaternion[None])[0].numpy(), rotation, atol=1e-12)


def _axis_rotation(axis: int, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    i, j = [k for k in range(3) if k != axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


@pytest.mark.parametrize("proper", [True, False])
def test_similarity_maps_means_and_covariances_exactly(proper):
    similarity = Similarity(as_tuple(random_rotation(2, proper)), 2.5, (1.0, -3.0, 0.5))
    splats = {key: value.double() for key, value in random_splats(50).items()}
    moved = similarity.apply(splats)
    rotation = torch.tensor(similarity.rotation, dtype=torch.float64)
    shift = torch.tensor([1.0, -3.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(moved["means"], 2.5 * splats["means"] @ rotation.T + shift)
    covariance = _quat_scale_to_covar_preci(splats["quats"], torch.exp(splats["scales"]), triu=False)[0]
    moved_covariance = _quat_scale_to_covar_preci(moved["quats"], torch.exp(moved["scales"]), triu=False)[0]
    torch.testing.assert_close(moved_covariance, 2.5 ** 2 * rotation @ covariance @ rotation.T)
    torch.testing.assert_close(moved["opacities"], splats["opacities"])


def test_inverse_and_composition():
    a = Similarity(as_tuple(random_rotation(4)), 0.5, (1.0, 2.0, 3.0))
    b = Similarity(as_tuple(random_rotation(5, proper=False)), 3.0, (-1.0, 0.0, 4.0))
    points = torch.randn(10, 3, dtype=torch.float64)
    torch.testing.assert_close(a.inverse().apply_to_points(a.apply_to_points(points)), points)
    torch.testing.assert_close(a.then(b).apply_to_points(points), b.apply_to_points(a.apply_to_points(points)))


def test_file_frame_round_trip_and_exact_point_mapping():
    """A file in the original frame: dataset = applied @ original; normalised = (dataset - c) * s."""
    normalization = SceneNormalization(center=(0.5, -1.0, 2.0), scale=0.25)
    applied = np.eye(4)
    applied[:3, :3] = random_rotation(6)
    applied[:3, 3] = (2.0, 0.0, -1.0)
    splats = random_splats(30)
    in_file = to_file_frame(splats, normalization, torch.tensor(applied))
    dataset_frame = normalization.to_original(splats["means"].double())
    expected = (dataset_frame - torch.tensor(applied[:3, 3])) @ torch.tensor(applied[:3, :3])  # R^T (x - t)
    torch.testing.assert_close(in_file["means"], expected.float())
    back = from_file_frame(in_file, normalization, torch.tensor(applied))
    for key in ("means", "scales", "opacities", "sh0", "shN"):
        torch.testing.assert_close(back[key], splats[key], atol=2e-6, rtol=1e-5)


def test_no_frame_transform_and_identity_normalisation_is_bit_exact():
    splats = random_splats(10)
    moved = to_file_frame(splats, SceneNormalization())
    for key, value in splats.items():
        assert torch.equal(moved[key], value), key


def test_renders_agree_across_a_rotated_scaled_frame():
    """Render the scene, then render it moved by a similarity with the camera moved along: same image
    (view-dependent SH colours included, which only match when the SH bands are rotated)."""
    splats = random_splats(200, seed=GENERATOR_SEED)
    splats["shN"] *= 3.0  # strongly view dependent
    similarity = Similarity(as_tuple(random_rotation(8)), 1.7, (0.4, -0.2, 0.9))
    moved = {key: value.float() for key, value in similarity.apply({k: v.double() for k, v in splats.items()}).items()}
    viewmat = torch.eye(4)
    viewmat[2, 3] = 2.0  # camera 2 units in front of the origin, looking along +z
    # New frame: x' = s R x + t, so camera coordinates s * V(M^-1 x') are a rigid function of x'.
    rotation, translation = torch.tensor(similarity.rotation).float(), torch.tensor(similarity.translation).float()
    moved_viewmat = torch.eye(4)
    moved_viewmat[:3, :3] = viewmat[:3, :3] @ rotation.T
    moved_viewmat[:3, 3] = similarity.scale * viewmat[:3, 3] - viewmat[:3, :3] @ rotation.T @ translation
    intrinsics = torch.tensor([[40.0, 0.0, 24.0], [0.0, 40.0, 20.0], [0.0, 0.0, 1.0]])

    def render(scene, view):
        image, _, _ = rasterize(scene["means"], scene["quats"], torch.exp(scene["scales"]),
                                torch.sigmoid(scene["opacities"]), torch.cat([scene["sh0"], scene["shN"]], 1),
                                view[None], intrinsics[None], 48, 40, 3)
        return image[0]

    before, after = render(splats, viewmat), render(moved, moved_viewmat)
    assert before.std() > 0.05  # something is on screen
    torch.testing.assert_close(after, before, atol=2e-4, rtol=0)


def test_a_transform_with_shear_or_uneven_scale_is_refused():
    with pytest.raises(InputError, match="not a rotation \\+ uniform scale"):
        Similarity.from_matrix(np.diag([1.0, 2.0, 1.0, 1.0]))
    assert Similarity.from_matrix(np.diag([2.0, 2.0, -2.0, 1.0])).scale == pytest.approx(2.0)
