"""Try an instruction on a few dataset images before editing the 3D scene.

A 3D edit takes long; whether InstructPix2Pix understands an instruction at all, and which guidance scales
suit it, shows on single images in seconds. A preview edits representative views the way the Iterative
Dataset Update edits a view for the first time: at that point the scene renders the original image, so the
editor gets the ORIGINAL image both as the render to noise and as its condition.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch

from splat2splat.data.dataset import Dataset
from splat2splat.devices import resolve_device
from splat2splat.edit.editor import Editor
from splat2splat.edit.ip2p import InstructPix2PixEditor, IP2PConfig, IP2PModels, load_ip2p_models, resolve_dtype
from splat2splat.errors import InputError
from splat2splat.media import contact_sheet

# Builds the editor for one set of options; injectable so tests and callers can supply their own.
EditorFactory = Callable[[IP2PConfig], Editor]


class IP2PEditorFactory:
    """InstructPix2Pix editors that share ONE loaded model, whatever their guidance scales."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str, str], IP2PModels] = {}

    def __call__(self, config: IP2PConfig) -> Editor:
        key = (config.model, config.dtype, config.device)
        if key not in self._models:
            dtype = resolve_dtype(config.dtype, resolve_device(config.device))
            self._models[key] = load_ip2p_models(config.model, dtype)
        return InstructPix2PixEditor(self._models[key], config)


def representative_views(dataset: Dataset, count: int) -> list[int]:
    """``count`` training views far apart: farthest-point sampling of the camera centres, from the first view.

    Returned in dataset order, so the sheet reads like the capture.
    """
    candidates = list(dataset.train_indices) or list(range(len(dataset)))
    if count >= len(candidates):
        return sorted(candidates)
    centers = dataset.cameras.centers()[candidates].cpu()
    chosen = [0]
    distance = (centers - centers[0]).norm(dim=-1)
    while len(chosen) < count:
        farthest = int(distance.argmax())
        chosen.append(farthest)
        distance = torch.minimum(distance, (centers - centers[farthest]).norm(dim=-1))
    return sorted(candidates[k] for k in chosen)


def edit_original(editor: Editor, dataset: Dataset, view: int, prompt: str, noise_range: tuple[float, float],
                  seed: int) -> torch.Tensor:
    """A first edit of ``view``: the original is both the render and the condition (render == original)."""
    original = dataset.original(view)
    generator = torch.Generator().manual_seed(seed)
    edited = editor.edit(original, original, prompt, noise_range, generator).detach().float().cpu()
    if not bool(torch.isfinite(edited).all()):  # clamping would turn NaN into a black sheet written as a result
        raise InputError(None, f"the edit of view {dataset.image_names[view]} has NaN or infinite pixels: the editor "
                               f"diverged (a guidance scale far too large, or a broken model)")
    return edited.clamp(0, 1)


def sweep_grid(make_editor: EditorFactory, editor_config: IP2PConfig, dataset: Dataset, view: int, prompt: str,
               noise_range: tuple[float, float], seed: int, text_scales: tuple[float, ...],
               image_scales: tuple[float, ...], advance: Callable[[], None] = lambda: None) -> torch.Tensor:
    """The sweep sheet: one edit of ``view`` per (text scale, image scale), axes labelled with the scales."""
    rows = []
    for text_scale in text_scales:
        row = []
        for image_scale in image_scales:
            editor = make_editor(replace(editor_config, guidance_scale=text_scale, image_guidance_scale=image_scale))
            row.append(edit_original(editor, dataset, view, prompt, noise_range, seed))
            advance()
        rows.append(row)
    return contact_sheet(rows, row_labels=[f"text {s:g}" for s in text_scales],
                         column_labels=[f"image {s:g}" for s in image_scales])
