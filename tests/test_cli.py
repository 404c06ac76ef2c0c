"""The `splat2splat` dispatcher: command list, per-command --help, unknown commands."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

from splat2splat.cli import COMMANDS, entrypoint


def test_no_arguments_lists_every_command(capsys):
    entrypoint([])
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_explains_every_option(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        entrypoint([name, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    module, class_name, _, _ = COMMANDS[name]
    command_class = getattr(importlib.import_module(module), class_name)
    for f in dataclasses.fields(command_class):
        # Positional arguments have no --flag (a command's own test checks their help).
        if not dataclasses.is_dataclass(f.type) and f.name != "three_d" and "Positional" not in str(f.type):
            assert "--" + f.name.replace("_", "-") in text, f"{name}: --{f.name} missing from --help"


def test_unknown_command_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["frobnicate"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: unknown command 'frobnicate'")
