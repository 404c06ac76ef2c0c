"""The oracle editor: its known target, its per-view imperfections, and the exact 3D target scene."""

from __future__ import annotations

import pytest
import torch

from splat2splat.data.cameras import Cameras, look_at
from splat2splat.edit.editor import Editor
from splat2splat.testing.oracle import ColorTransform, OracleEditor
from splat2splat.gaussians.model import activated, rgb_to_sh
from splat2splat.gaussians.rasterize import rasterize

IMAGE_SIZE = 32


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def images() -> tuple[torch.Tensor, torch.Tensor]:
    generator = seeded(0)
    return torch.rand(20, 28, 3, generator=generator), torch.rand(20, 28, 3, generator=generator)


def test_oracle_is_an_editor():
    assert isinstance(OracleEditor(), Editor)


def test_default_transform_maps_the_colour_cube_into_itself():
    corners = torch.cartesian_prod(*[torch.tensor([0.0, 1.0])] * 3)
    mapped = ColorTransform().apply_to_image(corners)
    assert mapped.min() >= 0 and mapped.max() <= 1
    assert not torch.allclose(mapped, corners)  # it is an edit, not the identity


def test_without_jitter_blobs_and_with_full_noise_it_returns_the_transformed_original(images):
    render, original = images
    editor = OracleEditor(jitter=0.0, blobs=0)
    edited = editor.edit(render, original, "ignored", (1.0, 1.0), seeded(3))
    assert torch.equal(edited, editor.transform.apply_to_image(original).clamp(0, 1))
    assert torch.equal(edited, editor.target_image(original))


def test_at_zero_noise_the_render_is_kept_whatever_the_imperfections(images):
    render, original = images
    edited = OracleEditor(jitter=0.5, blobs=5, blob_strength=1.0).edit(render, original, "p", (0.0, 0.0), seeded(0))
    assert torch.equal(edited, render)


def test_is_deterministic_per_seed(images):
    render, original = images
    editor = OracleEditor(jitter=0.05, blobs=4)
    first = editor.edit(render, original, "p", (0.02, 0.98), seeded(1))
    assert torch.equal(first, editor.edit(render, original, "p", (0.02, 0.98), seeded(1)))
    assert not torch.allclose(first, editor.edit(render, original, "p", (0.02, 0.98), seeded(2)))


def test_edits_of_the_same_view_differ_by_jitter_and_blobs(images):
    """View inconsistency: with level fixed at 1, the only differences between two draws are the imperfections."""
    render, original = images
    target = OracleEditor().target_image(original)
    for editor in (OracleEditor(jitter=0.05, blobs=0), OracleEditor(jitter=0.0, blobs=3, blob_strength=0.8)):
        a = editor.edit(render, original, "p", (1.0, 1.0), seeded(1))
        b = editor.edit(render, original, "p", (1.0, 1.0), seeded(2))
        assert not torch.allclose(a, b, atol=1e-3)
        assert not torch.allclose(a, target, atol=1e-3)


def test_blobs_are_local(images):
    """A blob changes the image near its centre and (almost) nothing far from it."""
    render, original = images
    editor = OracleEditor(jitter=0.0, blobs=1, blob_strength=1.0, blob_size=0.05)
    changed = (editor.edit(render, original, "p", (1.0, 1.0), seeded(5)) - editor.target_image(original)).abs().amax(-1)
    assert changed.max() > 0.05
    assert (changed > 1e-3).float().mean() < 0.5


def test_level_grows_with_the_noise_range(images):
    """Higher noise ranges move the edit further from the render, towards the target."""
    render, original = images
    editor = OracleEditor(jitter=0.0, blobs=0)
    target = editor.target_image(original)
    distances = [(editor.edit(render, original, "p", (low, low + 0.1), seeded(0)) - target).abs().mean()
                 for low in (0.1, 0.5, 0.9)]
    assert distances[0] > distances[1] > distances[2]


def test_output_is_in_range_and_has_the_render_size_for_an_original_of_another_size():
    generator = seeded(0)
    render, original = torch.rand(16, 24, 3, generator=generator), torch.rand(33, 47, 3, generator=generator)
    # A large jitter pushes the target out of [0, 1]; the output must still be an image.
    editor = OracleEditor(jitter=0.5, blobs=6, blob_strength=1.0)
    for seed in range(5):
        edited = editor.edit(render, original, "p", (0.02, 0.98), seeded(seed))
        assert edited.shape == render.shape
        assert edited.min() >= 0 and edited.max() <= 1


def test_rejects_an_invalid_noise_range(images):
    render, original = images
    with pytest.raises(Exception, match="noise range"):
        OracleEditor().edit(render, original, "p", (0.8, 0.2), seeded(0))


# ------------------------------------------------------------------------------ target scene in 3D

def random_splats(count: int, sh_degree: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Gaussians in front of the test camera, colours in [0.2, 0.8] with small view dependence (never clamped)."""
    bases = (sh_degree + 1) ** 2
    colors = 0.2 + 0.6 * torch.rand(count, 3, generator=generator)
    return {
        "means": (torch.rand(count, 3, generator=generator) - 0.5) * 1.2,
        "scales": torch.log(0.1 + 0.1 * torch.rand(count, 3, generator=generator)),
        "quats": torch.nn.functional.normalize(torch.randn(count, 4, generator=generator), dim=-1),
        "opacities": torch.logit(0.3 + 0.6 * torch.rand(count, generator=generator)),
        "sh0": rgb_to_sh(colors)[:, None, :],
        "shN": 0.02 * torch.randn(count, bases - 1, 3, generator=generator),
    }


def render(splats: dict[str, torch.Tensor], background: torch.Tensor, sh_degree: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image [H, W, 3] and accumulated alpha [H, W, 1] of one camera looking at the origin."""
    camera = Cameras(look_at(torch.tensor([0.3, -2.5, 0.8]), torch.zeros(3))[None], IMAGE_SIZE, IMAGE_SIZE,
                     IMAGE_SIZE / 2, IMAGE_SIZE / 2, IMAGE_SIZE, IMAGE_SIZE)
    p = activated(splats)
    image, alpha, _ = rasterize(p["means"], p["quats"], p["scales"], p["opacities"], p["sh"], camera.viewmats(),
                                camera.Ks(), IMAGE_SIZE, IMAGE_SIZE, sh_degree, background)
    return image[0], alpha[0]


@pytest.mark.parametrize("sh_degree", [0, 1])
def test_transformed_splats_render_the_transformed_render(sh_degree):
    transform = ColorTransform(matrix=((0.7, 0.2, 0.1), (0.1, 0.5, 0.2), (0.3, 0.1, 0.4)), offset=(0.05, -0.02, 0.1))
    splats = random_splats(40, sh_degree, seeded(0))
    background = torch.tensor([0.9, 0.6, 0.3])
    with torch.no_grad():
        image, alpha = render(splats, background, sh_degree)
        target_image, target_alpha = render(transform.apply_to_splats(splats), transform.apply_to_image(background),
                                            sh_degree)
        same_background, _ = render(transform.apply_to_splats(splats), background, sh_degree)
    assert 0.2 < alpha.mean() < 0.95  # both Gaussians and background show, so both parts are tested
    assert torch.equal(target_alpha, alpha)  # geometry untouched
    assert torch.allclose(target_image, transform.apply_to_image(image), atol=1e-5)
    # Composite = sum w_i c_i + (1 - sum w_i) bg: without transforming the background, the renders
    # differ by exactly the uncovered fraction of the background's change.
    background_change = transform.apply_to_image(background) - background
    assert torch.allclose(same_background, transform.apply_to_image(image) - (1 - alpha) * background_change, atol=1e-5)


def test_splat_transform_copies_geometry_and_leaves_the_input_alone():
    splats = random_splats(10, 1, seeded(1))
    before = {key: value.clone() for key, value in splats.items()}
    transformed = ColorTransform().apply_to_splats(splats)
    for key in ("means", "scales", "quats", "opacities"):
        assert torch.equal(transformed[key], splats[key])
        assert transformed[key].data_ptr() != splats[key].data_ptr()
    assert all(torch.equal(splats[key], before[key]) for key in splats)
    assert not torch.allclose(transformed["sh0"], splats["sh0"])
