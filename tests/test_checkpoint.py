"""The checkpoint format: what is written, what is refused (damaged, foreign, code-carrying files), command.json."""

from __future__ import annotations

import copy
import os
import random
from pathlib import Path

import pytest
import torch

from splat2splat.checkpoint import (FORMAT_VERSION, backend_from_checkpoint, job_from_dict, read_checkpoint,
                                    read_command, write_command)
from splat2splat.errors import InputError
from splat2splat.io import save_torch, write_bytes, write_json
from splat2splat.scene_loading import load_scene
from splat2splat.training import TrainJob
from tests.checkpoints import write_gaussian_checkpoint


@pytest.fixture(scope="module")
def trained(demo_scene, tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "checkpoint.pt"
    backend, dataset = write_gaussian_checkpoint(demo_scene, path)
    return path, backend, dataset


def corrupt_checkpoints(state: dict) -> dict[str, tuple[object, str]]:
    """Checkpoint contents that must be refused, with a word the message must contain."""
    no_splats = {k: v for k, v in state.items() if k != "splats"}
    wrong_shape = {**state, "splats": {**state["splats"], "quats": state["splats"]["quats"][:, :3]}}
    wrong_count = {**state, "splats": {**state["splats"], "means": torch.zeros(3, 3)}}
    v = FORMAT_VERSION
    return {
        "list": ([1, 2, 3], "not a dict"),
        "no_version": ({"backend": "gaussian", "backend_state": state}, "format None"),
        "future_version": ({"format": v + 1, "backend": "gaussian", "backend_state": state}, f"format {v + 1}"),
        "old_layout": ({"format": v, "backend": state, "data": "x"}, "'backend' must be"),
        "unknown_backend": ({"format": v, "backend": "mesh", "backend_state": state}, "'backend' must be"),
        "no_state": ({"format": v, "backend": "gaussian"}, "backend_state"),
        "missing_keys": ({"format": v, "backend": "gaussian", "backend_state": no_splats}, "splats"),
        "bad_downscale": ({"format": v, "backend": "gaussian", "backend_state": state, "downscale": 0}, "downscale"),
        "wrong_shape": ({"format": v, "backend": "gaussian", "backend_state": wrong_shape}, "'quats' has shape"),
        "wrong_count": ({"format": v, "backend": "gaussian", "backend_state": wrong_count}, "disagree"),
        "no_optimizers": ({"format": v, "backend": "gaussian", "backend_state": {**state, "optimizers": {}}},
                          "'backend_state.optimizers.means' is missing"),
    }


@pytest.mark.parametrize("case", ["list", "no_version", "future_version", "old_layout", "unknown_backend", "no_state", "missing_keys", "bad_downscale",
                                  "wrong_shape", "wrong_count", "no_optimizers"])
def test_bad_checkpoints_are_input_errors_naming_the_file(trained, tmp_path, case):
    _, backend, dataset = trained
    content, message = corrupt_checkpoints(backend.state_dict())[case]
    path = tmp_path / f"{case}.pt"
    save_torch(path, content)
    with pytest.raises(InputError, match=message) as error:
        load_scene(path, dataset, device="cpu")
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_corrupt_checkpoint_bytes_are_an_input_error(tmp_path):
    path = tmp_path / "broken.pt"
    write_bytes(path, b"this is not a torch archive")
    with pytest.raises(InputError, match="not a readable") as error:
        read_checkpoint(path)
    assert str(path) in str(error.value)
    assert path.read_bytes() == b"this is not a torch archive"  # inputs are never touched


class CodeThatRunsOnLoad:
    """Unpickling this calls ``open(marker, "w")``: what a malicious checkpoint would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_carrying_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT_VERSION, "backend": "gaussian", "payload": CodeThatRunsOnLoad(str(marker))}, path)
    with pytest.raises(InputError, match="could run code") as error:
        read_checkpoint(path)
    assert not marker.exists()
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_written_checkpoints_load_without_unpickling(trained):
    path, backend, _ = trained
    checkpoint = torch.load(path, weights_only=True)  # only tensors and plain containers
    assert checkpoint["format"] == FORMAT_VERSION and checkpoint["backend"] == "gaussian"
    assert read_checkpoint(path)["backend_state"]["step"] == backend.step


def test_command_json_round_trips_a_job(tmp_path):
    job = TrainJob(data=tmp_path / "data", output=tmp_path / "run", steps=7)
    write_command(tmp_path, job)
    assert read_command(tmp_path, TrainJob) == job


@pytest.mark.parametrize("content, message", [
    ([1, 2], "JSON object"),
    ({"steps": 5, "colour": "red"}, "no field"),
])
def test_bad_command_json_is_one_line(tmp_path, content, message):
    write_json(tmp_path / "command.json", content)
    with pytest.raises(InputError, match=message) as error:
        read_command(tmp_path, TrainJob)
    assert "command.json" in str(error.value) and "\n" not in str(error.value)


def test_options_of_one_invocation_are_not_part_of_a_saved_job(tmp_path):
    assert job_from_dict(TrainJob, {"steps": 3, "resume": True}, tmp_path).steps == 3


FUZZ_CASES = int(os.environ.get("SPLAT2SPLAT_FUZZ_CASES", "150"))


def mutated_values(state: dict, generator: random.Random) -> dict:
    """``state`` with one value somewhere inside replaced by a value of another kind."""
    replacements = [None, 0, -1, 2**40, "x", [], {}, torch.zeros(0), torch.zeros(2, 2), 1.5, True]
    mutated = copy.deepcopy(state)
    node, path = mutated, []
    while isinstance(node, dict) and node:
        key = generator.choice(sorted(node, key=str))
        path.append(key)
        if not isinstance(node[key], dict) or generator.random() < 0.3:
            node[key] = generator.choice(replacements)
            break
        node = node[key]
    return mutated


def test_fuzzed_checkpoints_end_in_a_project_error_or_a_scene(trained, tmp_path):
    """Structural and byte-level mutations of a real checkpoint: each loads, or is one InputError; never
    another exception (the loaders' trust boundary)."""
    path, backend, _ = trained
    original_bytes = path.read_bytes()
    checkpoint = read_checkpoint(path)
    generator = random.Random(0)
    outcomes = {"scene": 0, "input_error": 0}
    for case in range(FUZZ_CASES):
        target = tmp_path / f"fuzz-{case % 4}.pt"
        if case % 2:
            data = bytearray(original_bytes)
            for _ in range(generator.randint(1, 8)):
                data[generator.randrange(len(data))] = generator.randrange(256)
            target.write_bytes(bytes(data))
        else:
            save_torch(target, mutated_values(checkpoint, generator))
        try:
            backend_from_checkpoint(target, read_checkpoint(target), "cpu")
            outcomes["scene"] += 1
        except InputError as error:
            assert "\n" not in str(error)
            outcomes["input_error"] += 1
    print(f"checkpoint fuzz: {FUZZ_CASES} cases, {outcomes['scene']} valid, {outcomes['input_error']} InputError, 0 other")
    assert sum(outcomes.values()) == FUZZ_CASES and outcomes["input_error"] > 0


# ------------------------------------------------------------------------------- edit checkpoints by schema


@pytest.fixture(scope="module")
def edit_folder(tmp_path_factory) -> Path:
    """A run folder of an edit stopped after its first step, with an edit in flight (--idu.edit-lag 2)."""
    from splat2splat.data.demo import DemoConfig, write_demo_scene
    from splat2splat.edit.job import EditJob, run_edit_job
    from splat2splat.runner import Interrupted
    from splat2splat.testing.editors import IdentityEditor

    root = tmp_path_factory.mktemp("edit-checkpoint")
    data = write_demo_scene(root / "data", DemoConfig(n_views=8, image_size=32, n_points=200))
    job = EditJob(data=data, prompt="p", output=root / "run", device="cpu", preset="in2n-tiny", init_steps=2,
                  turntable_frames=0, checkpoint_every=1, eval_every=0)
    job.idu.loss.lpips, job.idu.steps, job.idu.edit_lag, job.idu.edit_rate = 0.0, 3, 2, 1

    def stop(step):
        raise Interrupted(step)

    with pytest.raises(Interrupted):
        run_edit_job(job, editor=IdentityEditor(), on_step=stop)
    assert read_checkpoint(job.output / "checkpoint.pt")["idu"]["pending_edits"]  # the case the fixture is for
    return job.output


def resume(folder: Path):
    from splat2splat.edit.job import EditJob, start_edit
    from splat2splat.testing.editors import IdentityEditor

    return start_edit(EditJob(output=folder), resume=True, editor=IdentityEditor())


def with_splats(state: dict, change) -> None:
    """Apply ``change`` to every Gaussian tensor and its optimizer moments alike."""
    backend = state["backend_state"]
    for key, tensor in backend["splats"].items():
        backend["splats"][key] = change(tensor)
        for slot in backend["optimizers"][key]["state"].values():
            slot["exp_avg"], slot["exp_avg_sq"] = change(slot["exp_avg"]), change(slot["exp_avg_sq"])


def deep_list(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def nan_image(image: torch.Tensor) -> torch.Tensor:
    image = image.clone()
    image[0, 0, 0] = float("nan")
    return image


# name -> (what is done to the checkpoint dict, what the one-line message must contain)
DAMAGED_EDIT_CHECKPOINTS = {
    "rng missing": (lambda s: s.pop("rng"), "'checkpoint.rng' is missing"),
    "rng a list": (lambda s: s.update(rng=[1, 2]), "'checkpoint.rng' must be a dict"),
    "rng cpu not a tensor": (lambda s: s["rng"].update(cpu="state"), "'checkpoint.rng.cpu' must be a tensor"),
    "rng cpu too short": (lambda s: s["rng"].update(cpu=torch.zeros(10, dtype=torch.uint8)), "'checkpoint.rng.cpu' must have shape"),
    "step a string": (lambda s: s["backend_state"].update(step="10"), "'backend_state.step' must be a whole number"),
    "step a float": (lambda s: s["backend_state"].update(step=3.0), "'backend_state.step' must be a whole number"),
    "step negative": (lambda s: s["backend_state"].update(step=-1), "'backend_state.step' must be from 0"),
    "idu step a string": (lambda s: s["idu"].update(step="1"), "'checkpoint.idu.step' must be a whole number"),
    "view_order out of range": (lambda s: s["backend_state"].update(view_order=[999]), "view_order names views [999]"),
    "edit_order out of range": (lambda s: s["idu"].update(edit_order=[1, 999]), "'idu.edit_order[1]' is view 999"),
    "edit_order empty": (lambda s: s["idu"].update(edit_order=[]), "'checkpoint.idu.edit_order' must have at least 1"),
    "next_in_order past the end": (lambda s: s["idu"].update(next_in_order=50), "'idu.next_in_order' is 50"),
    "fp16 splats": (lambda s: with_splats(s, torch.Tensor.half), "'backend_state.splats.means' must be float32"),
    "zero Gaussians": (lambda s: with_splats(s, lambda t: t[:0]), "'backend_state.splats.means' must have at least 1 rows"),
    "NaN Gaussians": (lambda s: s["backend_state"]["splats"]["scales"].fill_(float("nan")), "splats.scales' holds NaN"),
    "splats a list": (lambda s: s["backend_state"].update(splats=list(s["backend_state"]["splats"].values())),
                      "'splats' must be a dict"),
    "idu a list": (lambda s: s.update(idu=[1, 2]), "'checkpoint.idu' must be a dict"),
    "dataset_edits a list": (lambda s: s.update(dataset_edits=[]), "'checkpoint.dataset_edits' must be a dict"),
    "pending_edits junk": (lambda s: s["idu"].update(pending_edits=["junk"]), "'checkpoint.idu.pending_edits[0]' must be a dict"),
    "pending_edits of another view": (lambda s: s["idu"]["pending_edits"][0].update(views=[0]),
                                      "'idu.pending_edits[0]' does not hold one image per training view"),
    "pending edit NaN": (lambda s: s["idu"]["pending_edits"][0]["images"].__setitem__(
        0, nan_image(s["idu"]["pending_edits"][0]["images"][0])), "pending_edits[0].images[0]' holds NaN"),
    "shN of the wrong width": (lambda s: with_splats(s, lambda t: t[:, :5] if t.dim() == 3 and t.shape[1] == 15 else t),
                               "'backend_state.splats.shN' must have 0, 3, 8, 15 SH rows"),
    "optimizer moment of another shape": (lambda s: s["backend_state"]["optimizers"]["means"]["state"][0].update(
        exp_avg=torch.zeros(3, 3)), "'backend_state.optimizers.means.exp_avg' has shape [3, 3]"),
    "generator of another dtype": (lambda s: s["idu"].update(generator=torch.zeros(5056)), "'checkpoint.idu.generator' must be uint8"),
    "background too short": (lambda s: s["backend_state"].update(background=[1.0, 1.0]), "'backend_state.background' must have 3"),
    "seconds NaN": (lambda s: s["idu"]["seconds"].update(edit=float("nan")), "'checkpoint.idu.seconds.edit' must be a finite"),
    "NaN edited image": (lambda s: s["dataset_edits"]["current"].__setitem__(1, nan_image(s["dataset_edits"]["current"][1])),
                         "'checkpoint.dataset_edits.current[1]' holds NaN"),
    "edit_counts a string": (lambda s: s["dataset_edits"].update(edit_counts="0"), "'checkpoint.dataset_edits.edit_counts' must be a list"),
}


@pytest.mark.parametrize("case", list(DAMAGED_EDIT_CHECKPOINTS))
def test_damaged_edit_checkpoints_are_one_line_naming_the_file_and_field(edit_folder, tmp_path, case):
    import shutil

    damage, message = DAMAGED_EDIT_CHECKPOINTS[case]
    folder = tmp_path / "run"
    shutil.copytree(edit_folder, folder)
    state = read_checkpoint(folder / "checkpoint.pt")
    damage(state)
    save_torch(folder / "checkpoint.pt", state)
    with pytest.raises(InputError) as error:
        resume(folder)
    text = str(error.value)
    assert message in text and str(folder / "checkpoint.pt") in text and "\n" not in text, text


def test_a_structure_nested_200k_deep_is_one_line(monkeypatch, tmp_path):
    import splat2splat.checkpoint as checkpoint

    path = tmp_path / "deep.pt"
    path.write_bytes(b"stand-in: torch.load itself reads such a file iteratively")
    content = {"format": FORMAT_VERSION, "backend": "gaussian", "backend_state": {"config": deep_list(200_000)}}
    monkeypatch.setattr(checkpoint, "load_checkpoint_file", lambda p: content)
    with pytest.raises(InputError, match="nest deeper than 32 levels") as error:
        read_checkpoint(path)
    assert str(path) in str(error.value)
    assert checkpoint.describe(deep_list(200_000)) == "a list of 1 items"  # no repr of the whole structure


def test_the_undamaged_edit_checkpoint_resumes(edit_folder, tmp_path):
    import shutil

    shutil.copytree(edit_folder, tmp_path / "run")
    run = resume(tmp_path / "run")
    from splat2splat.edit.executors import EditQueue

    assert run.idu.step == 1 and isinstance(run.idu.executor, EditQueue) and len(run.idu.executor.pending) == 1


REPLACEMENTS = [None, 0, -1, 2**63, 1.5, float("nan"), "x", [], {}, [0], torch.zeros(0), torch.zeros(2, 2),
                torch.zeros(3, dtype=torch.float16), torch.full((1,), float("inf"))]


def mutated_node(node, generator: random.Random):
    """``node`` with one value deep inside replaced (another kind, a tensor of another shape or dtype) or one
    key dropped; the same seed gives the same mutation."""
    if isinstance(node, (dict, list)) and node and generator.random() < 0.85:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = generator.choice(keys)
        if generator.random() < 0.1:
            del node[key]
        else:
            node[key] = mutated_node(node[key], generator)
        return node
    if isinstance(node, torch.Tensor) and node.dim() and generator.random() < 0.5:
        return generator.choice([node[: max(len(node) - 1, 0)], node.double(), node.half(), node[None]])
    return copy.copy(generator.choice(REPLACEMENTS))


def test_fuzzed_edit_checkpoints_resume_and_step_or_are_one_line(edit_folder, tmp_path):
    """Seeded mutations of every part of an edit checkpoint (values of other kinds, tensors of other shapes
    and dtypes, keys dropped) through --resume and one more edit step: one InputError line or a working run."""
    import shutil

    from tests.fuzzing import fuzz

    folder = tmp_path / "run"
    shutil.copytree(edit_folder, folder)
    checkpoint = read_checkpoint(edit_folder / "checkpoint.pt")
    def run_case(generator: random.Random):
        state = copy.deepcopy(checkpoint)
        key = generator.choice(["rng", "backend_state", "backend_state", "idu", "idu", "dataset_edits", "downscale"])
        state[key] = mutated_node(state[key], generator)
        save_torch(folder / "checkpoint.pt", state)
        run = resume(folder)
        run.idu.run_step()

    report = fuzz("edit checkpoints", int(os.environ.get("SPLAT2SPLAT_FUZZ_CASES", "120")), 23, run_case)
    report.assert_clean()
    assert report.input_errors > report.valid > 0


def test_the_refusal_of_a_code_carrying_file_gives_no_advice_to_load_it_unsafely(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"payload": CodeThatRunsOnLoad(str(tmp_path / "pwned"))}, path)
    with pytest.raises(InputError) as error:
        read_checkpoint(path)
    text = str(error.value)
    assert "could run code" in text and "weights_only" not in text and "False" not in text and "\n" not in text
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------------------- NeRF checkpoints by schema


@pytest.fixture(scope="module")
def nerf_checkpoint(demo_scene, tmp_path_factory):
    from tests.checkpoints import write_nerf_checkpoint

    path = tmp_path_factory.mktemp("nerf") / "checkpoint.pt"
    _, dataset = write_nerf_checkpoint(demo_scene, path)
    return path, dataset


def first_slot(state: dict) -> dict:
    return next(iter(state["backend_state"]["optimizer"]["state"].values()))


# name -> (what is done to a NeRF checkpoint dict, what the one-line message must contain)
DAMAGED_NERF_CHECKPOINTS = {
    "optimizer a list": (lambda s: s["backend_state"].update(optimizer=[1]),
                         "'backend_state.optimizer' must be a dict"),
    "optimizer state missing": (lambda s: s["backend_state"]["optimizer"].pop("state"),
                                "'backend_state.optimizer.state' is missing"),
    "param_groups missing": (lambda s: s["backend_state"]["optimizer"].pop("param_groups"),
                             "'backend_state.optimizer.param_groups' is missing"),
    "one param group": (lambda s: s["backend_state"]["optimizer"]["param_groups"].pop(),
                        "'backend_state.optimizer.param_groups' must have 2 items"),
    "lr a string": (lambda s: s["backend_state"]["optimizer"]["param_groups"][0].update(lr="0.01"),
                    "'backend_state.optimizer.param_groups[0].lr' must be a finite number"),
    "lr negative": (lambda s: s["backend_state"]["optimizer"]["param_groups"][1].update(lr=-1.0),
                    "'backend_state.optimizer.param_groups[1].lr' must be a finite number >= 0"),
    "initial_lr missing": (lambda s: s["backend_state"]["optimizer"]["param_groups"][0].pop("initial_lr"),
                           "'backend_state.optimizer.param_groups[0].initial_lr' is missing"),
    "params of another count": (lambda s: s["backend_state"]["optimizer"]["param_groups"][1]["params"].pop(),
                                "'backend_state.optimizer.param_groups[1].params' names"),
    "params a string": (lambda s: s["backend_state"]["optimizer"]["param_groups"][1].update(params="0"),
                        "'backend_state.optimizer.param_groups[1].params' must be a list"),
    "moment of another shape": (lambda s: first_slot(s).update(exp_avg=torch.zeros(3, 3)),
                                ".exp_avg' has shape [3, 3]"),
    "moment NaN": (lambda s: first_slot(s)["exp_avg_sq"].view(-1).__setitem__(0, float("nan")),
                   ".exp_avg_sq' holds NaN"),
    "moment float64": (lambda s: first_slot(s).update(exp_avg=first_slot(s)["exp_avg"].double()),
                       ".exp_avg' must be float32 or float16"),
    "step a list": (lambda s: first_slot(s).update(step=[1]), ".step' must be a tensor"),
    "slot of no parameter": (lambda s: s["backend_state"]["optimizer"]["state"].update({999: first_slot(s)}),
                             "'backend_state.optimizer.state.999' belongs to no parameter"),
    "slot a string": (lambda s: s["backend_state"]["optimizer"]["state"].update({0: "junk"}),
                      "'backend_state.optimizer.state.0' must be a dict"),
}


@pytest.mark.parametrize("case", list(DAMAGED_NERF_CHECKPOINTS))
def test_damaged_nerf_optimizer_state_is_one_line_naming_the_file_and_field(nerf_checkpoint, tmp_path, case):
    source, dataset = nerf_checkpoint
    damage, message = DAMAGED_NERF_CHECKPOINTS[case]
    state = read_checkpoint(source)
    damage(state)
    path = tmp_path / "checkpoint.pt"
    save_torch(path, state)
    with pytest.raises(InputError) as error:
        load_scene(path, dataset, device="cpu")
    text = str(error.value)
    assert message in text and str(path) in text and "\n" not in text, text


def test_fuzzed_nerf_checkpoints_load_and_train_or_are_one_line(nerf_checkpoint, tmp_path):
    """Seeded mutations of a NeRF checkpoint (its optimizer state most often) through loading and one training
    step: one InputError line or a working scene."""
    from splat2splat.nerf.backend import mse_loss
    from tests.fuzzing import fuzz

    source, dataset = nerf_checkpoint
    checkpoint = read_checkpoint(source)
    path = tmp_path / "checkpoint.pt"

    def run_case(generator: random.Random):
        state = copy.deepcopy(checkpoint)
        part = generator.choice(["optimizer", "optimizer", "optimizer", "field", "occupancy", "train_indices", "step"])
        state["backend_state"][part] = mutated_node(state["backend_state"][part], generator)
        save_torch(path, state)
        load_scene(path, dataset, device="cpu").train_step(dataset, mse_loss)

    report = fuzz("NeRF checkpoints", int(os.environ.get("SPLAT2SPLAT_FUZZ_CASES", "120")), 23, run_case)
    report.assert_clean()
    assert report.input_errors > report.valid > 0
