"""The `splat2splat` command line: one subcommand per job, each a dataclass parsed by tyro.

``splat2splat <command> --help`` explains every option of a command.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

from splat2splat.data.demo import DemoConfig, write_demo_scene
from splat2splat.errors import InputError


@dataclass
class Demo:
    """Write the bundled offline demo scene (nerfstudio format)."""

    output: Path = Path("demo_scene")
    """Folder to write the scene into."""
    scene: DemoConfig = field(default_factory=DemoConfig)


def run_demo(cmd: Demo) -> None:
    path = write_demo_scene(cmd.output, cmd.scene)
    print(f"demo scene written to {path}")


# name -> (module, command dataclass, run function, one-line summary); modules load only when used.
COMMANDS = {
    "demo": ("splat2splat.cli", "Demo", "run_demo", "write the bundled demo scene"),
    "train": ("splat2splat.training", "Train", "run_train", "fit a Gaussian (or NeRF) scene to posed images"),
    "edit": ("splat2splat.edit.run", "Edit", "run_edit", "edit a scene with a text instruction (IDU)"),
    "preview": ("splat2splat.preview", "Preview", "run_preview", "see what an instruction does, in seconds"),
    "render": ("splat2splat.render", "Render", "run_render", "render dataset views and a turntable video"),
    "export": ("splat2splat.export", "Export", "run_export", "write PLY / .splat / compressed PLY for viewers"),
    "eval": ("splat2splat.commands.eval", "Eval", "run_eval", "CLIP metrics and a report for edit runs"),
}


def usage() -> str:
    lines = ["usage: splat2splat COMMAND [OPTIONS]   (splat2splat COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<9} {summary}" for name, (_, _, _, summary) in COMMANDS.items()]
    return "\n".join(lines)


def parse(name: str, args: list[str]):
    import tyro

    module_name, class_name, _, _ = COMMANDS[name]
    if name == "edit":  # --preset supplies the defaults of the other options
        from splat2splat.edit.run import parse_edit_args

        return parse_edit_args(args)
    command_class = getattr(importlib.import_module(module_name), class_name)
    return tyro.cli(command_class, args=args, prog=f"splat2splat {name}")


def entrypoint(argv: list[str] | None = None) -> None:
    from splat2splat.runner import Interrupted

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    name, args = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    try:
        command = parse(name, args)
        module_name, _, run_name, _ = COMMANDS[name]
        getattr(importlib.import_module(module_name), run_name)(command)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as interrupted:
        print(f"stopped: {interrupted}", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    entrypoint()
