"""Every option checked before anything is written or trained, each problem one line naming the option.

:func:`check_options` walks a command's (nested) dataclass and applies the rules below by field name, so a
new option with a known name (``*_every``, ``*steps``, ``*_lr``...) is checked without extra code. Every float
must be finite; paths and strings are left to the code that opens them (they produce their own one-line
errors). A saved job is checked the same way when a run resumes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from splat2splat.errors import InputError

# A rule returns the problem with a value, or None when the value is fine.
Rule = Callable[[Any], "str | None"]


def at_least(minimum: float) -> Rule:
    return lambda value: None if value >= minimum else f"must be at least {minimum:g}"


def between(lower: float, upper: float) -> Rule:
    def text(bound: float) -> str:
        return str(bound) if isinstance(bound, int) else f"{bound:g}"

    return lambda value: None if lower <= value <= upper else f"must be between {text(lower)} and {text(upper)}"


def positive(value: float) -> str | None:
    return None if value > 0 else "must be positive"


def unit_range(values: Any) -> str | None:
    lower, upper = values
    return None if 0.0 <= lower <= upper <= 1.0 else "must satisfy 0 <= lower <= upper <= 1"


def crop_box(values: Any) -> str | None:
    if values is None:
        return None
    low, high = values[:3], values[3:]
    return None if all(lo < hi for lo, hi in zip(low, high)) else "needs xmin < xmax, ymin < ymax and zmin < zmax"


# Rules by field name, or by ``Class.field`` where one name means different things; checked after the general
# ones (finite floats, suffix rules).
FIELD_RULES: dict[str, Rule] = {
    "steps": at_least(1),
    "init_steps": at_least(0),
    "downscale": at_least(1),
    "edit_rate": at_least(1),
    "edit_count": at_least(1),
    "edit_batch": at_least(1),
    "edit_lag": at_least(0),
    "diffusion_steps": at_least(1),
    "views": at_least(1),
    "frames": at_least(2),
    "turntable_frames": at_least(0),
    "sheet_frames": at_least(1),
    "fps": at_least(1),
    "batch_size": at_least(1),
    # Gaussian SH degrees: what INRIA PLY, our readers and the rasterizer support (the NeRF's sh_degree
    # counts view-direction bands, another quantity).
    "GaussianConfig.sh_degree": between(0, 3),
    "GaussianConfig.initial_sh_degree": between(0, 3),
    "Export.sh_degree": between(0, 3),
    "noise_range": unit_range,
    "min_opacity": between(0, 1),
    "init_opacity": between(0, 1),
    "prune_opacity": between(0, 1),
    "max_scale": positive,
    "scene_scale": positive,
    "init_scale": between(1e-6, 1000),  # a multiple of the neighbour distance; 1e30 overflows float32 covariances
    "init_random_extent": positive,
    "lr": between(0, 100),
    "init_random_count": between(1, 50_000_000),  # 50M random Gaussians: ~12 GB of parameters, ~50 with Adam
    "max_file_gaussians": between(1, 2**32),  # 4G Gaussians: ~1 TB of parameters
    "seed": between(-(2**63), 2**64 - 1),  # what torch's generators take
    "cap_max": at_least(1),
    "rays_per_batch": at_least(1),
    "patch_size": at_least(1),
    "lpips_patch_size": at_least(1),
    "lpips_patches": at_least(1),
    "samples_per_ray": at_least(1),
    "image_size": between(8, 4096),  # the demo renders it on the CPU
    "n_views": between(2, 10_000),
    "crop_box": crop_box,
    "checkpoint_minutes": at_least(0),
    "viewer_port": between(0, 65535),
}
# Rules by name suffix: intervals may be 0 (off), learning rates and steps of schedules must be sane.
SUFFIX_RULES: dict[str, Rule] = {
    "_every": at_least(0),
    "_steps": at_least(0),
    "_lr": between(0, 100),  # far above any working rate; beyond, Adam's own arithmetic overflows
    "_interval": at_least(1),
}


def option_name(path: tuple[str, ...]) -> str:
    return "--" + ".".join(part.replace("_", "-") for part in path)


def option_prefix(value: Any) -> str | None:
    """How the options of a scene backend's config are spelled (``--gaussians.*``), whatever field holds it."""
    from splat2splat.backends import BACKENDS

    return next((kind.option_prefix for kind in BACKENDS.values() if type(value) is kind.config_class), None)


def problems(config: Any, path: tuple[str, ...] = ()) -> list[str]:
    """Every problem of ``config`` (a dataclass, nested ones included), as ``--option value: problem``."""
    found = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        where = (*path, option_prefix(value) or f.name)
        if dataclasses.is_dataclass(value):
            found += problems(value, where)
            continue
        problem = check_value(f.name, value, f"{type(config).__name__}.{f.name}")
        if problem is not None:
            found.append(f"{option_name(where)} {format_value(value)}: {problem}")
    return found


def check_value(name: str, value: Any, qualified_name: str = "") -> str | None:
    numbers = value if isinstance(value, (tuple, list)) else [value]
    if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
        return "must be a finite number"
    if value is None or isinstance(value, bool):
        return None
    rules = [rule for suffix, rule in SUFFIX_RULES.items() if name.endswith(suffix) and isinstance(value, (int, float))]
    specific = FIELD_RULES.get(qualified_name, FIELD_RULES.get(name))
    if specific is not None:
        rules.append(specific)
    for rule in rules:
        problem = rule(value)
        if problem is not None:
            return problem
    return None


def format_value(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(str(v) for v in value)
    return str(value)


def check_options(config: Any, source: Any = None) -> None:
    """Raise one InputError (on ``source``, e.g. a saved command.json) for the first bad option of ``config``."""
    found = problems(config)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise InputError(source, found[0] + more)
