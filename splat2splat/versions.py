"""The software a run used, as its run.json and eval.json record it (one definition for every record)."""

from __future__ import annotations

import importlib.metadata
import platform

import torch

RECORDED_PACKAGES = ("gsplat", "diffusers", "transformers")


def software_versions() -> dict[str, str]:
    """Python, torch (and its CUDA), splat2splat, the model libraries and the platform."""
    import splat2splat

    versions = {"python": platform.python_version(), "torch": torch.__version__, "splat2splat": splat2splat.__version__}
    for package in RECORDED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {**versions, "cuda": torch.version.cuda or "none", "platform": platform.platform()}
