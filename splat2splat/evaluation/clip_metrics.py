"""CLIP metrics of a text-driven edit, as Instruct-NeRF2NeRF (in2n) reports them.

Every metric compares unit CLIP embeddings ``E`` of renders of the ORIGINAL scene ``o_i`` and of the EDITED
scene ``e_i`` from the same cameras along a path, and of a source caption ``t_o`` and a target caption ``t_e``
(the README's evaluation table says where each definition comes from):

* text-image direction similarity, per frame: ``cos(E(e_i) - E(o_i), E(t_e) - E(t_o))``: did the image change
  the way the captions say;
* direction consistency, per pair of consecutive frames: ``cos(E(o_{i+1}) - E(o_i), E(e_{i+1}) - E(e_i))``:
  does the camera's step from frame i to i+1 change the edited renders as it changes the original ones (the
  in2n author's definition; an unedited scene scores 1);
* edit direction consistency, per pair of consecutive frames: ``cos(ΔI_i, ΔI_{i+1})`` with
  ``ΔI_i = E(e_i) - E(o_i)``: does the edit change neighbouring views the same way (not in2n's; an unedited
  scene has no change and scores 0).

Images are preprocessed here on tensors, batched, as in2n's metrics script does (``resize="in2n"``, the
default: a bicubic squash to the square input size, no crop, no antialiasing), or as transformers'
``CLIPImageProcessor`` does (``resize="clip"``: bicubic resize of the shortest side, centre crop).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F


DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"  # OpenAI CLIP ViT-L/14, what in2n evaluates with
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_CONTEXT_LENGTH = 77
ResizeMode = Literal["in2n", "clip"]
DEFAULT_RESIZE: ResizeMode = "in2n"

HOW_TO_SUPPLY_A_CLIP_MODEL = (
    "pass a local transformers CLIP folder with --clip-model PATH (saved with save_pretrained: config, weights, "
    "tokenizer and preprocessor_config.json; scripts/make_tiny_clip.py writes a random test model), or run where "
    "the Hugging Face hub is reachable or the model is in the HF cache (HF_HOME)"
)


# ------------------------------------------------------------------------------------------ the formulas

def direction_similarity(original: torch.Tensor, edited: torch.Tensor, source_text: torch.Tensor,
                         target_text: torch.Tensor) -> torch.Tensor:
    """Per frame ``cos(E(e_i) - E(o_i), E(t_e) - E(t_o))``; [N, D] unit image embeddings, [D] text embeddings."""
    text_direction = (target_text - source_text).reshape(1, -1).expand_as(edited)
    return F.cosine_similarity(edited - original, text_direction, dim=-1)


def direction_consistency(original: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
    """Per consecutive pair ``cos(E(o_{i+1}) - E(o_i), E(e_{i+1}) - E(e_i))`` (in2n's); [N, D] -> [N - 1]."""
    return F.cosine_similarity(original[1:] - original[:-1], edited[1:] - edited[:-1], dim=-1)


def edit_direction_consistency(original: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
    """Per consecutive pair ``cos(ΔI_i, ΔI_{i+1})`` with ``ΔI_i = E(e_i) - E(o_i)``; [N, D] -> [N - 1]."""
    change = edited - original
    return F.cosine_similarity(change[:-1], change[1:], dim=-1)


# --------------------------------------------------------------------------------------- preprocessing

@dataclass(frozen=True)
class ClipPreprocessing:
    """What turns a [0, 1] RGB image into CLIP's input (the values of a ``preprocessor_config.json``)."""

    shortest_edge: int = 224
    crop_size: tuple[int, int] = (224, 224)  # (height, width)
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    resize: ResizeMode = DEFAULT_RESIZE

    @staticmethod
    def from_processor(processor: Any, resize: ResizeMode = DEFAULT_RESIZE) -> "ClipPreprocessing":
        """The settings of a transformers ``CLIPImageProcessor`` (sizes: dicts, SizeDicts, or ints in old configs)."""
        size, crop = processor.size, processor.crop_size
        shortest = _size_entry(size, "shortest_edge") or _size_entry(size, "height")
        crop_size = (_size_entry(crop, "height"), _size_entry(crop, "width"))
        return ClipPreprocessing(int(shortest), (int(crop_size[0]), int(crop_size[1])),
                                 tuple(processor.image_mean), tuple(processor.image_std), resize)


def _size_entry(size: Any, key: str) -> int | None:
    """``size[key]`` of a processor size (dict or transformers 5's SizeDict); an int is every entry."""
    return int(size) if isinstance(size, (int, float)) else size.get(key)


def shortest_edge_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """(height, width) with the shorter side at ``shortest_edge``; the longer side truncated as transformers does."""
    if width <= height:
        return int(shortest_edge * height / width), shortest_edge
    return shortest_edge, int(shortest_edge * width / height)


def center_crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[N, C, H, W] cropped to ``size`` around the centre (zero-padded first where smaller, like transformers)."""
    height, width = images.shape[-2:]
    crop_height, crop_width = size
    pad_width, pad_height = max(crop_width - width, 0), max(crop_height - height, 0)
    if pad_width or pad_height:
        images = F.pad(images, (pad_width // 2, (pad_width + 1) // 2, pad_height // 2, (pad_height + 1) // 2))
        height, width = images.shape[-2:]
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    return images[..., top:top + crop_height, left:left + crop_width]


def preprocess_images(images: torch.Tensor, settings: ClipPreprocessing) -> torch.Tensor:
    """[N, H, W, 3] images in [0, 1] -> [N, 3, h, w] normalised CLIP input (``pixel_values``)."""
    pixels = images.permute(0, 3, 1, 2).float()
    if settings.resize == "in2n":  # in2n's metrics script: F.interpolate to the square, nothing else
        pixels = F.interpolate(pixels, size=settings.crop_size, mode="bicubic", align_corners=False)
    else:
        # antialias=True is PIL's bicubic filter (a = -0.5, support widened when shrinking), which the
        # processor applies; it clamps like PIL's 8-bit output.
        size = shortest_edge_size(pixels.shape[-2], pixels.shape[-1], settings.shortest_edge)
        pixels = F.interpolate(pixels, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        pixels = center_crop(pixels, settings.crop_size)
    mean = torch.tensor(settings.mean, dtype=pixels.dtype, device=pixels.device).reshape(1, 3, 1, 1)
    std = torch.tensor(settings.std, dtype=pixels.dtype, device=pixels.device).reshape(1, 3, 1, 1)
    return (pixels - mean) / std


# ---------------------------------------------------------------------------------------------- the model

@dataclass
class ClipEncoder:
    """A CLIP model that maps images and captions to unit embeddings."""

    model: torch.nn.Module  # transformers.CLIPModel
    tokenizer: Any  # transformers.CLIPTokenizer
    preprocessing: ClipPreprocessing
    name: str
    device: torch.device
    batch_size: int = 16

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts), padding="max_length", max_length=CLIP_CONTEXT_LENGTH, truncation=True,
                                return_tensors="pt").to(self.device)
        features = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return F.normalize(_pooled(features).float(), dim=-1).cpu()

    @torch.no_grad()
    def encode_images(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """[N, D] unit embeddings of [H, W, 3] images in [0, 1] (sizes may differ between images)."""
        batches = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            pixels = torch.cat([preprocess_images(image[None].to(self.device), self.preprocessing) for image in chunk]) \
                if len({tuple(image.shape) for image in chunk}) > 1 \
                else preprocess_images(torch.stack(list(chunk)).to(self.device), self.preprocessing)
            features = self.model.get_image_features(pixel_values=pixels.to(next(self.model.parameters()).dtype))
            batches.append(F.normalize(_pooled(features).float(), dim=-1).cpu())
        return torch.cat(batches)


def _pooled(features: Any) -> torch.Tensor:
    """transformers 4 returns the projected embeddings; 5 returns an output whose pooler_output holds them."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """transformers draws a progress bar for every weight file it reads; a report needs none."""
    from transformers.utils import logging as transformers_logging

    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def load_clip(model: str, device: str | torch.device = "cpu", resize: ResizeMode = DEFAULT_RESIZE,
              batch_size: int = 16) -> ClipEncoder:
    """CLIP model, tokenizer and preprocessing from a hub id or a local folder (``HF_HUB_OFFLINE`` honoured).

    Every failure is an :class:`InputError` that says how to supply a model.
    """
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    from splat2splat.model_loading import load_failure, model_source, quiet_model_loading

    source = model_source(model, "CLIP model", HOW_TO_SUPPLY_A_CLIP_MODEL)
    try:
        with quiet_model_loading(), no_progress_bars():
            clip = CLIPModel.from_pretrained(source)
            tokenizer = CLIPTokenizer.from_pretrained(source)
            processor = CLIPImageProcessor.from_pretrained(source)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise load_failure(model, error, "CLIP model", HOW_TO_SUPPLY_A_CLIP_MODEL) from None
    device = torch.device(device)
    clip = clip.to(device).eval().requires_grad_(False)
    return ClipEncoder(clip, tokenizer, ClipPreprocessing.from_processor(processor, resize), model, device, batch_size)
