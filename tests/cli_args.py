"""Command lines for tests that build one argument list for either backend."""

from __future__ import annotations


def for_backend(args: list[str]) -> list[str]:
    """``args`` without the other backend's options: each backend takes only its own (``--gaussians.*`` or
    ``--nerf.*``, chosen by ``--backend``), so shared Gaussian settings are dropped from a NeRF run."""
    backend = "gaussian"
    for k, arg in enumerate(args[:-1]):
        if arg == "--backend":
            backend = args[k + 1]
    other = "--nerf." if backend == "gaussian" else "--gaussians."
    kept, dropping = [], False
    for arg in args:
        if arg.startswith("--"):
            dropping = arg.startswith(other)
        if not dropping:
            kept.append(arg)
    return kept
