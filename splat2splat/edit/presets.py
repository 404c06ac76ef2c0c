"""Editing presets, as data: Instruct-NeRF2NeRF's three (in2n, in2n-small, in2n-tiny) and an Instruct-GS2GS-style one.

in2n's presets differ only in the editor's precision and the LPIPS term (its table: in2n ~15 GB,
in2n-small ~12 GB, in2n-tiny ~10 GB of GPU memory). Every field can be overridden on the command line,
e.g. ``splat2splat edit --preset in2n-tiny --idu.steps 500 --idu.editor.guidance-scale 10``.
"""

from __future__ import annotations

import dataclasses

from splat2splat.edit.idu import IDUConfig
from splat2splat.edit.ip2p import IP2PConfig
from splat2splat.losses import LossWeights


def _in2n(description: str, dtype: str, lpips: float) -> IDUConfig:
    return IDUConfig(description=description, schedule="in2n", steps=3000, edit_rate=10, edit_count=1,
                     loss=LossWeights(l1=1.0, dssim=0.0, lpips=lpips), editor=IP2PConfig(dtype=dtype))


PRESETS: dict[str, IDUConfig] = {
    "in2n": _in2n("Instruct-NeRF2NeRF: full-precision InstructPix2Pix, L1 + LPIPS loss", "float32", 1.0),
    "in2n-small": _in2n("in2n with a half-precision InstructPix2Pix (less GPU memory, same quality)", "float16", 1.0),
    "in2n-tiny": _in2n("in2n with a half-precision InstructPix2Pix and no LPIPS (least memory)", "float16", 0.0),
    "igs2gs": IDUConfig(
        description="Instruct-GS2GS-style: re-edit the whole dataset every 2500 steps, train in between",
        schedule="igs2gs", steps=7500, edit_rate=2500, loss=LossWeights(l1=1.0, dssim=0.0, lpips=1.0),
        editor=IP2PConfig(dtype="float16"),
    ),
}
DEFAULT_PRESET = "in2n-small"


def preset(name: str) -> IDUConfig:
    """A fresh copy of the named preset (callers may change it freely)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], loss=dataclasses.replace(PRESETS[name].loss),
                               editor=dataclasses.replace(PRESETS[name].editor))
