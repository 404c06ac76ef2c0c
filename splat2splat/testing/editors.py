"""Cheap, deterministic stand-ins for InstructPix2Pix, for tests and benchmarks (not pytest files).

They implement the :class:`~splat2splat.edit.editor.Editor` protocol, so the Iterative Dataset Update can be
exercised end to end in milliseconds and without model weights:

* :class:`IdentityEditor` returns the render unchanged: an IDU with it must leave the scene as trained.
* :class:`TintEditor` behaves like a diffusion edit in miniature: the target is a fixed colour transform of
  the ORIGINAL image, and the result blends the render towards it by a noise level drawn from
  ``noise_range`` with the caller's generator (high noise: mostly the target; low noise: mostly the render).
  Repeated updates converge to the tinted scene, and the same seed gives the same edit.
* :class:`RecordingEditor` wraps any editor and records every call (for asserting what the IDU asked for).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from splat2splat.edit.editor import Editor
from splat2splat.imaging import resize_image


class IdentityEditor:
    """Returns a copy of the render; ignores the original, the prompt and the noise."""

    def edit(self, render: torch.Tensor, original: torch.Tensor, prompt: str,
             noise_range: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
        return render.detach().clone()


@dataclass
class TintEditor:
    """Blends the render towards ``original * tint`` by a noise level drawn uniformly from ``noise_range``."""

    tint: tuple[float, float, float] = (1.0, 0.55, 0.35)
    """Per-channel gain of the edit target (the default warms the image towards orange)."""

    def target(self, original: torch.Tensor) -> torch.Tensor:
        """The fully edited image: the original with its channels scaled by ``tint``."""
        return (original * torch.tensor(self.tint, dtype=original.dtype, device=original.device)).clamp(0, 1)

    def edit(self, render: torch.Tensor, original: torch.Tensor, prompt: str,
             noise_range: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
        lower, upper = noise_range
        # One draw per edit from the caller's generator, like IP2P's timestep: reproducible per seed.
        level = lower + (upper - lower) * torch.rand((), generator=generator).item()
        target = self.target(resize_image(original.detach(), render.shape[:2]).to(render.device, render.dtype))
        return level * target + (1 - level) * render.detach()


@dataclass
class RecordedEdit:
    prompt: str
    noise_range: tuple[float, float]
    render_size: tuple[int, int]  # (H, W)


@dataclass
class RecordingEditor:
    """Delegates to ``inner`` and appends a :class:`RecordedEdit` per call to ``calls``."""

    inner: Editor = field(default_factory=IdentityEditor)
    calls: list[RecordedEdit] = field(default_factory=list)

    def edit(self, render: torch.Tensor, original: torch.Tensor, prompt: str,
             noise_range: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
        self.calls.append(RecordedEdit(prompt, tuple(noise_range), tuple(render.shape[:2])))
        return self.inner.edit(render, original, prompt, noise_range, generator)
