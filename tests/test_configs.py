"""config_from_dict: commands rebuilt from checkpoints / command.json, with every value type-checked."""

from __future__ import annotations

import dataclasses
import json
import random
import types
import typing
from pathlib import Path

import pytest

from splat2splat.checkpoint import job_from_dict, job_to_dict
from splat2splat.configs import config_from_dict, config_to_dict
from splat2splat.gaussians.config import GaussianConfig
from splat2splat.nerf.backend import NerfConfig
from splat2splat.commands.edit import EditCommand
from splat2splat.errors import InputError
from splat2splat.io import read_json
from splat2splat.commands.train import TrainCommand
from tests.fuzzing import cases, fuzz, mutate_json


JOBS = [TrainCommand, EditCommand]


@pytest.mark.parametrize("scene", [GaussianConfig(sh_degree=1), NerfConfig(rays_per_batch=512)])
@pytest.mark.parametrize("cls", JOBS)
def test_round_trip(cls, scene, tmp_path):
    """A saved job holds one backend's settings and its name, and comes back equal."""
    config = cls(scene=scene)
    saved = json.loads(json.dumps(job_to_dict(config)))
    assert saved["backend"] == config.backend and "gaussians" not in saved and "nerf" not in saved
    assert job_from_dict(cls, saved, tmp_path / "command.json") == config


@pytest.mark.parametrize("cls", JOBS)
def test_a_command_json_of_the_two_config_layout_still_resumes(cls, tmp_path):
    """Files written when every job carried both backends' settings: the named backend's are kept."""
    old = {key: value for key, value in config_to_dict(cls()).items() if key != "scene"}
    old.update(backend="nerf", gaussians={"sh_degree": 1}, nerf={"rays_per_batch": 512})
    assert job_from_dict(cls, old, tmp_path / "command.json").scene == NerfConfig(rays_per_batch=512)
    old.update(backend="gaussian")
    assert job_from_dict(cls, old, tmp_path / "command.json").scene == GaussianConfig(sh_degree=1)


@pytest.mark.parametrize("values, problem", [
    ({"steps": "ten"}, "TrainCommand.steps must be a whole number (64-bit), got 'ten'"),
    ({"steps": 2**63}, "TrainCommand.steps must be a whole number (64-bit), got 9223372036854775808"),
    ({"steps": True}, "TrainCommand.steps must be a whole number"),
    ({"allow_paths_outside_data": 1}, "TrainCommand.allow_paths_outside_data must be true or false, got 1"),
    ({"backend": "mesh"}, "the saved command's backend must be one of gaussian, nerf, found 'mesh'"),
    ({"output": None}, "TrainCommand.output must be a path string, got None"),
    ({"data": 7}, "TrainCommand.data must be a path string, got 7"),
    ({"scene": []}, "TrainCommand.gaussians must be an object of settings, got []"),
    ({"scene": {"strategy": {"kind": "fast"}}}, "TrainCommand.gaussians.strategy.kind must be one of"),
    ({"scene": {"means_lr": 10**400}}, "TrainCommand.gaussians.means_lr is too large"),
    ({"backend": "nerf", "scene": {"plane_resolutions": [64, "x"]}},
     "TrainCommand.nerf.plane_resolutions[1] must be a whole number"),
    ({"backend": "nerf", "scene": {"patch_size": 0}},
     "TrainCommand.nerf: rays_per_batch (4096) must hold at least one 0x0 patch"),
    ({"backend": "nerf", "scene": {"sh_degree": 1, "strategy": {}}}, "TrainCommand.nerf has no field(s) strategy"),
    ({"bogus": 1}, "TrainCommand has no field(s) bogus"),
    ([1, 2], "the saved command must be a JSON object, found a list of 2 items"),
])
def test_bad_values_are_one_input_error_naming_the_file_and_field(values, problem, tmp_path):
    with pytest.raises(InputError) as info:
        job_from_dict(TrainCommand, values, tmp_path / "command.json")
    assert str(info.value).startswith(f"{tmp_path / 'command.json'}: {problem}")


def test_values_are_converted_to_the_field_types():
    config = job_from_dict(EditCommand, {"data": "scene", "idu": {"noise_range": [0.7, 1]}, "scene": {"init_scale": 2}},
                           Path("command.json"))
    assert config.data == Path("scene") and config.idu.noise_range == (0.7, 1.0)
    assert isinstance(config.idu.noise_range[1], float) and isinstance(config.scene.init_scale, float)
    with pytest.raises(InputError, match=r"EditCommand.idu.noise_range must have 2 entries, got 3"):
        config_from_dict(EditCommand, {"idu": {"noise_range": [0.1, 0.2, 0.3]}})


def assert_typed(config) -> None:
    """Every field of ``config`` (recursively) holds a value of its declared type."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        _assert_value(hints[f.name], getattr(config, f.name), f.name)


def _assert_value(hint, value, name) -> None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        assert isinstance(value, hint), name
        assert_typed(value)
    elif origin in (typing.Union, types.UnionType):
        assert any(value is None if arg is type(None) else _matches(arg, value) for arg in args), (name, value)
    elif origin is typing.Literal:
        assert value in args, (name, value)
    elif origin is tuple:
        assert isinstance(value, tuple), name
        for k, item in enumerate(value):
            _assert_value(args[0] if args[-1] is Ellipsis else args[k], item, f"{name}[{k}]")
    elif hint in (bool, int, float, str, Path):
        assert _matches(hint, value), (name, value)


def _matches(hint, value) -> bool:
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


@pytest.mark.parametrize("scene", [GaussianConfig(), NerfConfig()])
@pytest.mark.parametrize("cls", JOBS)
def test_fuzz_config_from_dict(cls, scene, tmp_path):
    """Mutated command.json / checkpoint commands: an InputError naming the file, or a correctly typed command."""
    original = job_to_dict(cls(scene=scene))
    source = tmp_path / "command.json"

    def run_case(rng: random.Random):
        text = mutate_json(original, rng)
        source.write_text(text)
        return job_from_dict(cls, read_json(source), source)

    fuzz(f"config_from_dict({cls.__name__})", cases(), 70 + len(cls.__name__), run_case, assert_typed).assert_clean()
