"""The IDU loop's schedule and state, on a fake scene backend (fast) and the real Gaussian backend."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from splat2splat.data.cameras import Cameras
from splat2splat.data.dataset import Dataset
from splat2splat.edit.idu import IterativeDatasetUpdate
from splat2splat.edit.presets import IDUConfig
from splat2splat.testing.editors import RecordingEditor, TintEditor
from splat2splat.losses import LossWeights, PhotometricLoss


def tiny_dataset(n_views: int = 6, size: int = 8) -> Dataset:
    generator = torch.Generator().manual_seed(0)
    images = tuple(torch.rand(size, size, 3, generator=generator) for _ in range(n_views))
    cameras = Cameras(torch.eye(4).expand(n_views, 4, 4).clone(), torch.full((n_views,), 8.0),
                      torch.full((n_views,), 8.0), torch.full((n_views,), size / 2), torch.full((n_views,), size / 2),
                      torch.full((n_views,), size), torch.full((n_views,), size))
    return Dataset(cameras, [f"v{i}" for i in range(n_views)], images, train_indices=list(range(1, n_views)),
                   eval_indices=[0])


class FakeBackend:
    """Renders a constant grey and records, per step, the view it trained on (None: random) and the edit
    counts of the images the loss saw."""

    name = "fake"

    def __init__(self):
        self.step = 0
        self.seen_edit_counts: list[list[int]] = []
        self.trained_views: list[int | None] = []
        self.edit_settings = None

    def render(self, cameras):
        return [torch.full((int(cameras.height[i]), int(cameras.width[i]), 3), 0.5) for i in range(len(cameras))]

    def configure_edit(self, density_control, random_background):
        self.edit_settings = (density_control, random_background)

    def train_step(self, dataset, loss_fn, view=None, edit=None):
        if edit is not None:
            edit(view, torch.full(tuple(dataset.original(view).shape), 0.25))  # "this step's render"
        self.seen_edit_counts.append(list(dataset.edit_counts))
        self.trained_views.append(view)
        self.step += 1
        return {"loss": 0.0}


def make_idu(config: IDUConfig, dataset=None, editor=None):
    dataset = dataset or tiny_dataset()
    editor = editor or RecordingEditor(TintEditor())
    backend = FakeBackend()
    return IterativeDatasetUpdate(dataset, backend, editor, "make it orange", config, lambda p, t: (None, {})), backend


def test_in2n_schedule_edits_edit_count_views_every_edit_rate_steps_in_a_seeded_permutation():
    """in2n cycles the positions of its cached batch, which nerfstudio's loader filled in a random order drawn
    once (README presets table): a permutation of the training views from the run's seed, then cycled."""
    idu, backend = make_idu(IDUConfig(edit_rate=3, edit_count=2, seed=0))
    order = idu.edit_order
    permutation = torch.randperm(5, generator=torch.Generator().manual_seed(0)).tolist()
    assert order == [idu.dataset.train_indices[i] for i in permutation]  # the held-out view 0 is never edited
    assert sorted(order) == [1, 2, 3, 4, 5] and order != [1, 2, 3, 4, 5]
    edited = []
    for _ in range(9):
        edited.append(idu.views_to_edit())
        idu.run_step()
    assert [views for views in edited if views] == [order[0:2], order[2:4], [order[4], order[0]]]
    assert [bool(views) for views in edited] == [True, False, False] * 3
    assert idu.edits_done == 6
    assert idu.dataset.edit_counts[0] == 0  # the held-out view stays original


def test_dataset_order_cycles_the_training_views_as_they_come():
    idu, _ = make_idu(IDUConfig(edit_rate=3, edit_count=2, edit_order="dataset"))
    assert idu.edit_order == [1, 2, 3, 4, 5]
    edited = []
    for _ in range(9):
        edited.append(idu.views_to_edit())
        idu.run_step()
    assert [views for views in edited if views] == [[1, 2], [3, 4], [5, 1]]


def test_the_order_has_its_own_generator_and_an_unknown_order_is_refused():
    """Drawing the permutation leaves the edits' generator as the seed made it (the edits' draws do not depend
    on the order chosen)."""
    idu, _ = make_idu(IDUConfig(seed=4))
    assert torch.equal(idu.generator.get_state(), torch.Generator().manual_seed(4).get_state())
    with pytest.raises(ValueError, match="edit order"):
        make_idu(IDUConfig(edit_order="shuffled"))


def test_in2n_step_trains_on_the_pre_edit_images_and_the_next_step_on_the_edit():
    """in2n samples and forwards the batch, then edits, and the loss uses the pre-edit batch
    (in2n_pipeline.py:125-179): the edit made at step s reaches training at step s + 1."""
    idu, backend = make_idu(IDUConfig(edit_rate=1, edit_count=1))
    idu.run_step()
    first = idu.edit_order[0]
    assert sum(backend.seen_edit_counts[0]) == 0  # step 0's loss saw no edit yet
    assert not torch.equal(idu.dataset.current[first], idu.dataset.original(first))  # but the edit is in
    idu.run_step()
    assert backend.seen_edit_counts[1][first] == 1


def test_editor_gets_the_render_the_original_the_prompt_and_the_noise_range():
    calls = []

    class Spy:
        def edit(self, render, original, prompt, noise_range, generator):
            calls.append((render.clone(), original.clone(), prompt, noise_range))
            return render

    dataset = tiny_dataset()
    dataset.replace_image(1, torch.zeros(8, 8, 3))  # an earlier edit: the editor must still see the ORIGINAL
    idu, _ = make_idu(IDUConfig(edit_rate=1, noise_range=(0.3, 0.6), edit_order="dataset"), dataset, Spy())
    idu.run_step()  # view 1 is the first of the dataset order
    render, original, prompt, noise_range = calls[-1]
    assert torch.equal(render, torch.full((8, 8, 3), 0.5))
    assert torch.equal(original, dataset.original(1))
    assert prompt == "make it orange" and noise_range == (0.3, 0.6)


def test_igs2gs_update_edits_one_view_per_step_and_trains_on_that_fresh_edit():
    """igs2gs_pipeline.py:106-147: an update edits the views in dataset order, one per training step; each
    step edits its own training render and its loss already uses the new image."""
    renders = []

    class Spy(TintEditor):
        def edit(self, render, original, prompt, noise_range, generator):
            renders.append(render.clone())
            return super().edit(render, original, prompt, noise_range, generator)

    idu, backend = make_idu(IDUConfig(schedule="igs2gs", edit_order="dataset", edit_rate=8), editor=Spy())
    for _ in range(16):
        idu.run_step()
    views = idu.dataset.train_indices  # 5 training views
    assert backend.trained_views == [*views, None, None, None, *views, None, None, None]
    assert idu.edits_done == 10 and all(idu.dataset.edit_counts[i] == 2 for i in views)
    for step, view in enumerate(views):  # the step's loss saw its view's fresh edit, later views not yet
        assert backend.seen_edit_counts[step][view] == 1
        assert all(backend.seen_edit_counts[step][later] == 0 for later in views[step + 1:])
    assert all(torch.equal(r, torch.full((8, 8, 3), 0.25)) for r in renders)  # the step's render, not a new one


def test_igs2gs_update_longer_than_the_edit_rate_runs_to_its_end():
    idu, backend = make_idu(IDUConfig(schedule="igs2gs", edit_order="dataset", edit_rate=2))
    for _ in range(7):
        idu.run_step()
    assert backend.trained_views == [1, 2, 3, 4, 5, None, 1]  # steps 2 and 4 start nothing new; step 6 does


def test_edit_settings_reach_the_backend():
    _, backend = make_idu(IDUConfig(density_control="cull", random_background=True))
    assert backend.edit_settings == ("cull", True)


def test_originals_are_never_modified():
    dataset = tiny_dataset()
    before = [dataset.original(i) for i in range(len(dataset))]
    idu, _ = make_idu(IDUConfig(edit_rate=1, edit_count=3), dataset)
    for _ in range(5):
        idu.run_step()
    assert all(torch.equal(a, b) for a, b in zip(before, map(dataset.original, range(len(dataset)))))


def test_state_dict_round_trip_continues_identically():
    config = IDUConfig(edit_rate=2, edit_count=2, seed=5)
    reference, _ = make_idu(config)
    for _ in range(10):
        reference.run_step()

    first, _ = make_idu(config)
    for _ in range(4):
        first.run_step()
    state, dataset_state = first.state_dict(), first.dataset.edit_state()
    second, _ = make_idu(dataclasses.replace(config, seed=99))  # state, not config, decides what follows
    second.dataset.load_edit_state(dataset_state)
    second.load_state_dict(state)
    for _ in range(6):
        second.run_step()
    assert second.edits_done == reference.edits_done
    assert all(torch.equal(a, b) for a, b in zip(second.dataset.current, reference.dataset.current))


def test_seed_decides_the_edits_and_the_order():
    a, _ = make_idu(IDUConfig(seed=1))
    b, _ = make_idu(IDUConfig(seed=1))
    c, _ = make_idu(IDUConfig(seed=2))
    for idu in (a, b, c):
        for _ in range(10):
            idu.run_step()
    assert a.edit_order == b.edit_order != c.edit_order
    assert all(torch.equal(x, y) for x, y in zip(a.dataset.current, b.dataset.current))
    assert any(not torch.equal(x, y) for x, y in zip(a.dataset.current, c.dataset.current))


def test_a_checkpointed_order_that_is_not_of_this_dataset_is_refused():
    idu, _ = make_idu(IDUConfig())
    state = idu.state_dict()
    fresh, _ = make_idu(IDUConfig())
    for order in ([1, 2, 3, 4], [1, 1, 2, 3, 4], [0, 1, 2, 3, 4]):
        with pytest.raises(ValueError, match="edit order"):
            fresh.load_state_dict({**state, "edit_order": order})


def test_invalid_schedule_is_rejected():
    with pytest.raises(ValueError, match="edit_rate"):
        make_idu(IDUConfig(edit_rate=0))
    with pytest.raises(ValueError, match="schedule"):
        make_idu(IDUConfig(schedule="random"))


def test_idu_on_the_gaussian_scene_moves_it_towards_the_edit(demo_scene):
    """With the tint editor, the scene's renders approach the tinted images and leave the originals."""
    from splat2splat.data.readers import load_dataset
    from splat2splat.gaussians.backend import GaussianBackend, GaussianConfig, StrategyConfig
    from splat2splat.losses import psnr

    dataset = load_dataset(demo_scene, downscale=2)
    # A 10x colour learning rate: at 3DGS' 2.5e-3 a colour needs several hundred steps to move by 0.3.
    config = GaussianConfig(sh0_lr=0.025, strategy=StrategyConfig(kind="none"))
    backend = GaussianBackend.from_dataset(dataset, config)
    for _ in range(60):
        backend.train_step(dataset, PhotometricLoss(LossWeights()))
    editor = TintEditor()
    view = dataset.eval_indices[0]
    target = editor.target(dataset.original(view))
    # Compare on the objects: the white background is the scene's fixed background colour, which no edit of
    # the Gaussians can tint.
    objects = (dataset.original(view) < 0.95).any(-1)

    def distances():
        render = backend.render(dataset.cameras[[view]])[0]
        return psnr(render[objects], target[objects]), psnr(render[objects], dataset.original(view)[objects])

    to_target_before, to_original_before = distances()
    idu = IterativeDatasetUpdate(dataset, backend, editor, "tint", IDUConfig(edit_rate=2, noise_range=(0.7, 0.98)),
                                 PhotometricLoss(LossWeights(l1=1.0, dssim=0.0)))
    for _ in range(120):
        idu.run_step()
    to_target_after, to_original_after = distances()
    assert to_target_after > to_target_before + 5.0  # measured: 13.9 -> 21.7 dB
    assert to_target_after > to_original_after + 5.0  # measured: 21.7 vs 12.3 dB
