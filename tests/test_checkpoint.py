"""The checkpoint format: what is written, what is refused (damaged, foreign, code-carrying files), command.json."""

from __future__ import annotations

import copy
import os
import random

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
                          "loadable gaussian scene"),
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
    with pytest.raises(InputError, match="not a readable") as error:
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
