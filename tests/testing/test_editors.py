"""The test-double editors: protocol, determinism, and the blend semantics the IDU tests rely on."""

from __future__ import annotations

import pytest
import torch

from splat2splat.edit.editor import Editor
from splat2splat.testing.editors import IdentityEditor, RecordingEditor, TintEditor


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def images() -> tuple[torch.Tensor, torch.Tensor]:
    generator = seeded(0)
    return torch.rand(16, 24, 3, generator=generator), torch.rand(16, 24, 3, generator=generator)


@pytest.mark.parametrize("editor", [IdentityEditor(), TintEditor(), RecordingEditor()])
def test_doubles_are_editors(editor):
    assert isinstance(editor, Editor)


def test_identity_returns_a_copy_of_the_render(images):
    render, original = images
    edited = IdentityEditor().edit(render, original, "anything", (0.02, 0.98), seeded(0))
    assert torch.equal(edited, render) and edited.data_ptr() != render.data_ptr()


def test_tint_blends_render_towards_the_tinted_original_by_the_noise_level(images):
    render, original = images
    editor = TintEditor(tint=(1.0, 0.5, 0.25))
    target = original * torch.tensor([1.0, 0.5, 0.25])
    assert torch.allclose(editor.edit(render, original, "p", (1.0, 1.0), seeded(0)), target)
    assert torch.allclose(editor.edit(render, original, "p", (0.0, 0.0), seeded(0)), render)
    edited = editor.edit(render, original, "p", (0.2, 0.8), seeded(0))
    level = ((edited - render) / (target - render)).median()  # the single blend weight of this edit
    assert 0.2 <= level <= 0.8
    assert torch.allclose(edited, level * target + (1 - level) * render, atol=1e-5)


def test_tint_is_reproducible_per_seed(images):
    render, original = images
    editor = TintEditor()
    first = editor.edit(render, original, "p", (0.02, 0.98), seeded(1))
    assert torch.equal(first, editor.edit(render, original, "p", (0.02, 0.98), seeded(1)))
    assert not torch.allclose(first, editor.edit(render, original, "p", (0.02, 0.98), seeded(2)))


def test_tint_resizes_an_original_of_another_size(images):
    render, _ = images
    edited = TintEditor().edit(render, torch.rand(32, 48, 3), "p", (0.5, 0.5), seeded(0))
    assert edited.shape == render.shape


def test_recording_editor_records_and_delegates(images):
    render, original = images
    editor = RecordingEditor(TintEditor())
    edited = editor.edit(render, original, "make it red", (0.3, 0.6), seeded(0))
    assert torch.equal(edited, TintEditor().edit(render, original, "make it red", (0.3, 0.6), seeded(0)))
    assert [(c.prompt, c.noise_range, c.render_size) for c in editor.calls] == [("make it red", (0.3, 0.6), (16, 24))]
