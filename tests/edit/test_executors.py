"""How edits are computed: at once (serial or batched) and behind training with a fixed lag
(splat2splat/edit/executors.py)."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import time

import pytest
import torch

from splat2splat.edit.executors import EditQueue, ImmediateEdits
from splat2splat.edit.idu import IterativeDatasetUpdate
from splat2splat.edit.presets import IDUConfig
from splat2splat.errors import InputError
from splat2splat.testing.editors import TintEditor
from tests.edit.test_idu import FakeBackend, tiny_dataset


class LearningBackend:
    """A scene whose render follows training: each step moves one colour halfway to the mean of the current
    images. Renders therefore depend on WHEN edits land, so a lag or an ordering mistake shows in the result.
    Records the edit counts each step's loss saw."""

    name = "learning"

    def __init__(self):
        self.step, self.colour = 0, torch.full((3,), 0.5)
        self.seen_edit_counts: list[list[int]] = []

    def render(self, cameras):
        return [self.colour.expand(int(cameras.height[i]), int(cameras.width[i]), 3).clone() for i in range(len(cameras))]

    def configure_edit(self, density_control, random_background):
        pass

    def train_step(self, dataset, loss_fn, view=None, edit=None):
        self.seen_edit_counts.append(list(dataset.edit_counts))
        mean = torch.stack([dataset.current_image(i).mean((0, 1)) for i in dataset.train_indices]).mean(0)
        self.colour = 0.5 * self.colour + 0.5 * mean
        self.step += 1
        return {"loss": 0.0}


class SlowEditor(TintEditor):
    """The tint editor, sleeping a random time per edit (from its own RNG, not the edit generator)."""

    def __init__(self, seed: int, longest: float = 0.02):
        super().__init__()
        self.pause, self.longest = random.Random(seed), longest

    def edit(self, render, original, prompt, noise_range, generator):
        time.sleep(self.pause.uniform(0, self.longest))
        return super().edit(render, original, prompt, noise_range, generator)


def make(config: IDUConfig, editor=None):
    backend = LearningBackend()
    idu = IterativeDatasetUpdate(tiny_dataset(), backend, editor or TintEditor(), "tint", config,
                                 lambda p, t: (None, {}))
    return idu, backend


def run(idu, steps: int):
    for _ in range(steps):
        idu.run_step()
    return idu


def same_images(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.dataset.current, b.dataset.current))


# ------------------------------------------------------------------------------------------ lag 0

def test_lag_zero_is_the_serial_loop_bit_for_bit():
    """The reference loop written out: render, edit (one generator), train on the pre-edit images, replace."""
    config = IDUConfig(edit_rate=2, edit_count=2, steps=12, seed=3)
    idu, backend = make(config)
    assert isinstance(idu.executor, ImmediateEdits)  # no editor thread at lag 0
    run(idu, 12)

    reference, editor = LearningBackend(), TintEditor()
    dataset, generator = tiny_dataset(), torch.Generator().manual_seed(3)
    order, position = idu.edit_order, 0
    for step in range(12):
        edits = []
        if step % 2 == 0:
            for view in (order[position % 5], order[(position + 1) % 5]):
                render = reference.render(dataset.cameras[[view]])[0]
                edits.append((view, editor.edit(render, dataset.original(view), "tint", config.noise_range, generator)))
            position += 2
        reference.train_step(dataset, None)
        for view, image in edits:
            dataset.replace_image(view, image)
    assert all(torch.equal(x, y) for x, y in zip(idu.dataset.current, dataset.current))
    assert torch.equal(backend.colour, reference.colour)


# ------------------------------------------------------------------------------------------ lag L

def test_edit_of_step_s_replaces_its_image_exactly_after_step_s_plus_lag():
    idu, backend = make(IDUConfig(edit_rate=4, edit_lag=3, steps=100))
    run(idu, 9)
    first = idu.edit_order[0]
    counts = [seen[first] for seen in backend.seen_edit_counts]
    assert counts == [0, 0, 0, 0, 1, 1, 1, 1, 1]  # submitted at step 0, trained on from step 4 = 0 + 3 + 1
    second = idu.edit_order[1]  # submitted at step 4, lands after step 7
    assert [seen[second] for seen in backend.seen_edit_counts] == [0] * 8 + [1]


def test_pipelined_edit_uses_the_render_of_the_step_that_requested_it():
    renders = []

    class Spy(TintEditor):
        def edit(self, render, original, prompt, noise_range, generator):
            renders.append(render[0, 0].clone())
            return super().edit(render, original, prompt, noise_range, generator)

    idu, backend = make(IDUConfig(edit_rate=3, edit_lag=2, steps=100), Spy())
    colours = []
    for _ in range(9):
        colours.append(backend.colour.clone())
        idu.run_step()
    idu.state_dict()  # finishes the edits in flight
    assert [r.tolist() for r in renders] == [colours[s].tolist() for s in (0, 3, 6)]


def test_pipelined_results_do_not_depend_on_the_editors_timing():
    config = IDUConfig(edit_rate=1, edit_count=2, edit_lag=2, steps=15, seed=4)
    slow_early, _ = make(config, SlowEditor(seed=1))
    slow_late, _ = make(config, SlowEditor(seed=2))
    instant, backend = make(config)
    for idu in (slow_early, slow_late, instant):
        run(idu, 15)
    assert same_images(slow_early, instant) and same_images(slow_late, instant)
    assert instant.timings()["edit_wait"] >= 0 and "edit_wait" in slow_early.timings()


def test_the_last_step_applies_every_edit_still_in_flight():
    serial, _ = make(IDUConfig(edit_rate=2, steps=9))
    pipelined, _ = make(IDUConfig(edit_rate=2, edit_lag=4, steps=9))
    run(serial, 9), run(pipelined, 9)
    assert serial.edits_done == pipelined.edits_done == 5
    assert list(serial.dataset.edit_counts) == list(pipelined.dataset.edit_counts)
    assert pipelined.executor.pending == []


def test_resume_with_edits_in_flight_equals_the_uninterrupted_run():
    config = IDUConfig(edit_rate=1, edit_count=1, edit_lag=3, steps=14, seed=6)
    reference, reference_backend = make(config, SlowEditor(seed=0))
    run(reference, 14)

    first, first_backend = make(config, SlowEditor(seed=1))
    run(first, 6)
    state = first.state_dict()  # what a checkpoint holds: the three edits in flight, finished, with due steps
    assert [entry["due"] for entry in state["pending_edits"]] == [6, 7, 8]
    dataset_state, colour = first.dataset.edit_state(), first_backend.colour.clone()

    second, second_backend = make(dataclasses.replace(config, seed=99), SlowEditor(seed=2))
    second.dataset.load_edit_state(dataset_state)
    second.load_state_dict(state)
    second_backend.colour, second_backend.step = colour, 6
    run(second, 8)
    assert same_images(second, reference) and torch.equal(second_backend.colour, reference_backend.colour)
    assert second.edits_done == reference.edits_done == 14


def test_a_checkpoint_in_the_middle_does_not_change_the_run():
    config = IDUConfig(edit_rate=1, edit_lag=2, steps=10, seed=2)
    plain, _ = make(config)
    checkpointed, _ = make(config)
    run(plain, 10)
    for _ in range(10):
        checkpointed.run_step()
        checkpointed.state_dict()
    assert same_images(plain, checkpointed)


def test_lag_is_not_the_same_as_serial():
    """A guard on the tests above: with this scene the lag does change the result, so equalities mean something."""
    serial, _ = make(IDUConfig(edit_rate=1, steps=10))
    lagged, _ = make(IDUConfig(edit_rate=1, edit_lag=2, steps=10))
    run(serial, 10), run(lagged, 10)
    assert not same_images(serial, lagged)


# ------------------------------------------------------------------------------------------ batching

def test_edit_batch_keeps_the_edits_per_step_and_edits_k_views_at_once():
    idu, backend = make(IDUConfig(edit_rate=2, edit_batch=3, edit_order="dataset"))
    requested = []
    for _ in range(12):
        requested.append(idu.views_to_edit())
        idu.run_step()
    assert [views for views in requested if views] == [[1, 2, 3], [4, 5, 1]]
    assert [bool(views) for views in requested] == [True] + [False] * 5 + [True] + [False] * 5
    assert idu.edits_done == 6  # 12 steps / edit rate 2: as many as one view every 2 steps


def test_batched_idu_equals_serial_edits_at_the_same_steps(tiny_ip2p_folder):
    """edit_batch 3 (one UNet batch) against the same schedule edited one view at a time, with InstructPix2Pix."""
    from splat2splat.edit.ip2p import IP2PConfig, InstructPix2PixEditor

    editor = InstructPix2PixEditor.from_config(IP2PConfig(model=str(tiny_ip2p_folder), diffusion_steps=3, device="cpu"))
    calls = []
    run_plans = editor.run_plans
    editor.run_plans = lambda plans: calls.append(len(plans)) or run_plans(plans)

    def images(config):
        idu = IterativeDatasetUpdate(tiny_dataset(size=16), LearningBackend(), editor, "tint", config,
                                     lambda p, t: (None, {}))
        return run(idu, 6).dataset.current

    batched = images(IDUConfig(edit_rate=1, edit_batch=3, seed=1))
    assert calls == [3, 3]
    serial = images(IDUConfig(edit_rate=3, edit_count=3, seed=1))
    assert calls == [3, 3] + [1] * 6  # edit_batch 1 edits one by one
    for a, b in zip(batched, serial):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_batched_and_pipelined_together_equal_batched_at_any_timing():
    config = IDUConfig(edit_rate=1, edit_batch=2, edit_lag=3, steps=12, seed=8)
    a, _ = make(config, SlowEditor(seed=3))
    b, _ = make(config)
    run(a, 12), run(b, 12)
    assert same_images(a, b)


# ------------------------------------------------------------------------------------------ options

def test_igs2gs_takes_neither_batching_nor_lag():
    for changes in ({"edit_batch": 2}, {"edit_lag": 1}):
        with pytest.raises(InputError, match="igs2gs"):
            make(IDUConfig(schedule="igs2gs", **changes))
    with pytest.raises(InputError, match="edit-lag"):
        make(IDUConfig(edit_lag=-1))


def test_edit_job_with_lag_and_batch_resumes_after_ctrl_c_to_the_uninterrupted_result(tmp_path, tiny_ip2p_folder):
    from splat2splat.checkpoint import load_checkpoint_file
    from splat2splat.commands.edit import parse, run as run_edit
    from splat2splat.data.demo import DemoConfig, write_demo_scene
    from splat2splat.runner import Interrupted

    data = write_demo_scene(tmp_path / "data", DemoConfig(n_views=8, image_size=32, n_points=300))

    def args(output):
        return ["--preset", "in2n-tiny", "--data", str(data), "--prompt", "autumn", "--output", str(output),
                "--model", str(tiny_ip2p_folder), "--device", "cpu", "--init-steps", "10", "--idu.steps", "12",
                "--idu.edit-rate", "1", "--idu.edit-batch", "2", "--idu.edit-lag", "3",
                "--idu.editor.dtype", "float32", "--idu.editor.diffusion-steps", "2",
                "--gaussians.strategy.kind", "none", "--checkpoint-every", "0", "--eval-every", "0",
                "--turntable-frames", "0"]

    run_edit(parse(args(tmp_path / "reference")))

    def press_ctrl_c(step: int) -> None:
        if step == 5:  # edits of steps 2 and 4 are in flight
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        run_edit(parse(args(tmp_path / "resumed")), on_step=press_ctrl_c)
    saved = load_checkpoint_file(tmp_path / "resumed" / "checkpoint.pt")
    assert [entry["due"] for entry in saved["idu"]["pending_edits"]] == [5, 7]
    run_edit(parse(["--output", str(tmp_path / "resumed"), "--resume"]))

    a = load_checkpoint_file(tmp_path / "reference" / "checkpoint.pt")
    b = load_checkpoint_file(tmp_path / "resumed" / "checkpoint.pt")
    for key, value in a["backend_state"]["splats"].items():
        assert torch.equal(value, b["backend_state"]["splats"][key]), key
    for x, y in zip(a["dataset_edits"]["current"], b["dataset_edits"]["current"]):
        assert torch.equal(x, y)


def test_edits_in_flight_that_do_not_fit_the_dataset_are_refused_on_load():
    idu, _ = make(IDUConfig(edit_rate=1, edit_lag=2, steps=10))
    run(idu, 3)
    state = idu.state_dict()
    state["pending_edits"][0]["images"][0] = torch.zeros(4, 4, 3)
    fresh, _ = make(IDUConfig(edit_rate=1, edit_lag=2, steps=10))
    with pytest.raises(ValueError, match="does not fit"):
        fresh.load_state_dict(state)
    serial, _ = make(IDUConfig(edit_rate=1, steps=10))
    with pytest.raises(ValueError, match="edit-lag"):
        serial.load_state_dict(idu.state_dict())


def test_the_queue_with_no_lag_reproduces_the_serial_loop():
    """The pipelined path itself (editor thread, due steps) with L = 0 gives the serial loop's result: what a
    lag changes is only when edits land."""
    from splat2splat.testing.oracle import OracleEditor

    config = IDUConfig(edit_rate=3, edit_count=2, steps=20, seed=5)
    serial, serial_backend = make(config, OracleEditor())
    queued, queued_backend = make(config, OracleEditor())
    queued.executor = EditQueue(queued.editor, queued.prompt, config.noise_range, queued.generator, lag=0)
    queued.seconds["edit_wait"] = 0.0
    run(serial, 20), run(queued, 20)
    assert same_images(serial, queued) and torch.equal(serial_backend.colour, queued_backend.colour)


# ------------------------------------------------------------------------------------------ the interface

def test_the_executor_follows_the_lag_and_an_editor_pool_needs_one():
    from splat2splat.edit.distributed import RemoteEditors
    from splat2splat.edit.executors import make_executor

    generator = torch.Generator()
    assert isinstance(make_executor(TintEditor(), "p", (0.0, 1.0), generator, 1, 0), ImmediateEdits)
    assert isinstance(make_executor(TintEditor(), "p", (0.0, 1.0), generator, 2, 3), EditQueue)
    pool = RemoteEditors.__new__(RemoteEditors)  # an editor pool, without the processes behind it
    pool.lanes = [TintEditor()]
    with pytest.raises(InputError, match="edit-lag of at least 1"):
        make_executor(pool, "p", (0.0, 1.0), generator, 1, 0)


def test_a_planning_editor_is_declared_not_probed(tiny_ip2p_folder):
    from splat2splat.edit.distributed import RemoteEditors
    from splat2splat.edit.editor import Editor, EditorPool, PlanningEditor
    from splat2splat.edit.ip2p import InstructPix2PixEditor

    assert issubclass(InstructPix2PixEditor, PlanningEditor)
    assert isinstance(TintEditor(), Editor) and not isinstance(TintEditor(), PlanningEditor)
    pool = RemoteEditors.__new__(RemoteEditors)
    pool.lanes = []
    assert isinstance(pool, EditorPool) and not isinstance(pool, Editor)  # a pool never edits in the loop


def test_every_write_back_goes_through_apply():
    """Serial, batched, lagged and igs2gs edits all reach the dataset through IterativeDatasetUpdate.apply (the
    fake backend calls igs2gs' in-step edit hook)."""
    class Counting(IterativeDatasetUpdate):
        applied = 0

        def apply(self, view, edited):
            Counting.applied += 1
            super().apply(view, edited)

    for config in (IDUConfig(edit_rate=1, steps=6), IDUConfig(edit_rate=1, edit_batch=2, steps=6),
                   IDUConfig(edit_rate=1, edit_lag=2, steps=6), IDUConfig(schedule="igs2gs", edit_rate=6, steps=6)):
        Counting.applied = 0
        idu = Counting(tiny_dataset(), FakeBackend(), TintEditor(), "tint", config, lambda p, t: (None, {}))
        run(idu, 6)
        assert Counting.applied == idu.edits_done == sum(idu.dataset.edit_counts) > 0, config
