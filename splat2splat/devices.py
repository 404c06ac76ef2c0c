"""One meaning of ``--device`` everywhere: 'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'.

A job's ``--device`` is the default of every part; a part's own device option (``--gaussians.device``,
``--idu.editor.device``) is None unless given, and then overrides it for that part only.
"""

from __future__ import annotations

import torch

from splat2splat.errors import InputError


def resolve_device(device: str | None) -> torch.device:
    """The torch device for a ``--device`` value (None: 'auto'); asking for CUDA without a GPU is a clear error,
    not a fallback."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(None, f"--device {device} asked for, but no CUDA GPU is available (use --device cpu)")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InputError(None, f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(None, f"--device {device} asked for, but this torch build or machine has no MPS "
                               f"(use --device cpu)")
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise InputError(None, f"--device {device}: splat2splat computes on cpu, cuda or cuda:N (mps where available)")
    return resolved


def to_device(obj, device: str | torch.device):
    """A copy of nested dicts/lists (optimiser or strategy state) with every tensor moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to(device, copy=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_device(v, device) for v in obj]
    return obj
