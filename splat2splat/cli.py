"""The `splat2splat` command line: one subcommand per module of :mod:`splat2splat.commands`.

Each command module holds a tyro dataclass of its options and a ``run(options)`` that calls the library
(and optionally a ``parse(args)`` when its defaults depend on an option, like ``edit --preset``).
``splat2splat <command> --help`` explains every option of a command.
"""

from __future__ import annotations

import importlib
import sys

from splat2splat.errors import InputError

# name -> (command dataclass in splat2splat.commands.<name>, one-line summary); modules load only when used.
COMMANDS = {
    "demo": ("DemoCommand", "write the bundled demo scene"),
    "process": ("ProcessCommand", "photos or a video -> posed dataset (COLMAP)"),
    "train": ("TrainCommand", "fit a Gaussian (or NeRF) scene to posed images"),
    "edit": ("EditCommand", "edit a scene with a text instruction (IDU)"),
    "preview": ("PreviewCommand", "see what an instruction does, in seconds"),
    "render": ("RenderCommand", "render dataset views and a turntable video"),
    "export": ("ExportCommand", "write PLY / .splat / compressed PLY / SPZ / SOG for viewers"),
    "eval": ("EvalCommand", "CLIP metrics and a report for edit runs"),
}
RESUMABLE = ("process", "train", "edit")  # the commands with --resume


def usage() -> str:
    lines = ["usage: splat2splat COMMAND [OPTIONS]   (splat2splat COMMAND --help for its options; --version)", "",
             "commands:"]
    lines += [f"  {name:<9} {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def command_module(name: str):
    return importlib.import_module(f"splat2splat.commands.{name}")


def parse(name: str, args: list[str]):
    from splat2splat.cli_parsing import cli

    module = command_module(name)
    if hasattr(module, "parse"):
        return module.parse(args)
    return cli(getattr(module, COMMANDS[name][0]), args=args, prog=f"splat2splat {name}")


def entrypoint(argv: list[str] | None = None) -> None:
    from splat2splat.folder_lock import release_all
    from splat2splat.runner import Interrupted
    from splat2splat.validation import check_options

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv and argv[0] in ("-V", "--version"):
        from splat2splat import __version__

        print(f"splat2splat {__version__}")
        return
    if not argv:
        print(f"error: name a command\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    name, args = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    try:
        command = parse(name, args)
        check_options(command)  # every option, before anything is read, written or trained
        command_module(name).run(command)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as interrupted:
        print(f"stopped: {interrupted}", file=sys.stderr)
        sys.exit(interrupted.exit_status)
    except KeyboardInterrupt as stop:  # during start-up (loading models, data), or a second signal while running
        then = "an unfinished run continues with --resume" if name in RESUMABLE else "run the command again"
        print(f"stopped: interrupted; files written so far are complete (atomic); {then}", file=sys.stderr)
        sys.exit(getattr(stop, "exit_status", 130))
    except MemoryError:
        print("error: out of memory (an input or option asks for more than this machine has: a smaller "
              "--downscale, fewer Gaussians or a smaller batch helps); files written before stay intact",
              file=sys.stderr)
        sys.exit(1)
    except OSError as error:  # a full disk, a folder that became unwritable: the files already written stay intact
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {where}{error.strerror or error}; files written before stay intact", file=sys.stderr)
        sys.exit(1)
    finally:
        release_all()  # this command's claims on its output folders


if __name__ == "__main__":
    entrypoint()
