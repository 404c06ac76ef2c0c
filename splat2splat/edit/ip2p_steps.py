"""The steps of one InstructPix2Pix edit as Instruct-NeRF2NeRF takes them, as plain functions of the models.

:class:`~splat2splat.edit.ip2p.InstructPix2PixEditor` strings them together (one view, or a batch of views);
the order of the random draws they take from the caller's generator is part of what makes an edit
reproducible, so each takes its generator explicitly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from splat2splat.errors import InputError

if TYPE_CHECKING:
    from splat2splat.edit.editor import EditPlan


def encode_prompt(tokenizer, text_encoder: torch.nn.Module, prompt: str) -> torch.Tensor:
    """CLIP embeddings [3, L, D] of in2n's three guidance branches: [text, uncond(""), uncond("")]."""
    tokens = tokenizer([prompt, ""], padding="max_length", max_length=tokenizer.model_max_length,
                       truncation=True, return_tensors="pt")
    device = next(text_encoder.parameters()).device
    text, uncond = text_encoder(tokens.input_ids.to(device))[0]
    return torch.stack([text, uncond, uncond])


def sample_max_timestep(noise_range: tuple[float, float], num_train_timesteps: int,
                        generator: torch.Generator) -> int:
    """T uniform over the integers [int(lower * N), int(upper * N)], inclusive (in2n's choice)."""
    lower, upper = noise_range
    min_step, max_step = int(num_train_timesteps * lower), int(num_train_timesteps * upper)
    return int(torch.randint(min_step, max_step + 1, (1,), generator=generator).item())


def scheduler_for(base_scheduler, max_timestep: int, steps: int):
    """A fresh DDIM scheduler with ``steps`` timesteps spread over [0, max_timestep].

    in2n sets ``scheduler.config.num_train_timesteps = T`` before ``set_timesteps``: the timesteps and the
    step size to the previous timestep (``num_train_timesteps // steps``) then span [0, T], while
    ``alphas_cumprod`` stay those of the full training schedule. The same is done here on a new scheduler,
    so the shared one is never mutated. Degenerate ranges that would crash in2n (T = 0 or fewer timesteps
    than steps) are clamped: T >= 1 and at most T steps.
    """
    from diffusers import DDIMScheduler

    max_timestep = max(1, max_timestep)
    scheduler = DDIMScheduler.from_config(base_scheduler.config)  # full-schedule alphas_cumprod
    scheduler.register_to_config(num_train_timesteps=max_timestep)  # from now on only the spacing reads it
    scheduler.set_timesteps(min(steps, max_timestep))
    return scheduler


def combine_guidance(text: torch.Tensor, image: torch.Tensor, uncond: torch.Tensor,
                     text_scale: float, image_scale: float) -> torch.Tensor:
    """IP2P's two-way classifier-free guidance of the noise predictions of the three branches."""
    return uncond + text_scale * (text - image) + image_scale * (image - uncond)


def denoise(unet, schedulers: list, latents: torch.Tensor, condition: torch.Tensor,
            text_embeddings: torch.Tensor, text_scale: float, image_scale: float) -> torch.Tensor:
    """DDIM of k views at once from their noised render latents [k, 4, h, w]; condition and text embeddings
    [3k, ...] with each view's three branches next to each other (the branches share the noisy latents;
    channels 4-7 carry their image conditioning); ``schedulers[i]`` holds view i's timesteps (all of one
    length). The UNet (a module, or a compiled callable of one) gets one timestep per sample, on the
    latents' device, so views at different noise levels share a batch."""
    count = len(schedulers)
    for index in range(len(schedulers[0].timesteps)):
        timesteps = torch.stack([scheduler.timesteps[index] for scheduler in schedulers])
        unet_input = torch.cat([latents.repeat_interleave(3, dim=0), condition], dim=1)
        noise_pred = unet(unet_input, timesteps.repeat_interleave(3).to(latents.device),
                          encoder_hidden_states=text_embeddings, return_dict=False)[0]
        branches = noise_pred.unflatten(0, (count, 3))
        latents = torch.cat([
            scheduler.step(combine_guidance(*branches[i, :, None].unbind(0), text_scale, image_scale),
                           scheduler.timesteps[index], latents[i:i + 1]).prev_sample
            for i, scheduler in enumerate(schedulers)])
    return latents


def batch_groups(plans: list[EditPlan], steps: int) -> list[list[int]]:
    """Indices of the plans that can share one batch: the same VAE input size and number of DDIM steps
    (:func:`scheduler_for` runs min(steps, T) steps)."""
    groups: dict[tuple, list[int]] = {}
    for index, plan in enumerate(plans):
        groups.setdefault((plan.size, min(steps, max(1, plan.max_timestep))), []).append(index)
    return list(groups.values())


def decode_latents(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Images [k, 3, H, W] in [0, 1] from latents [k, 4, h, w]."""
    image = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    return (image / 2 + 0.5).clamp(0, 1)


def size_for_vae(height: int, width: int, factor: int) -> tuple[int, int]:
    """The nearest size whose sides are multiples of the VAE's downsampling factor (8 for IP2P)."""
    return max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)


def place_module(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move ``module``; cast only when needed (diffusers warns on every cast, even a no-op one)."""
    module.to(device)
    if next(module.parameters()).dtype != dtype:
        module.to(dtype)
    return module


def check_noise_range(noise_range: tuple[float, float]) -> tuple[float, float]:
    lower, upper = (float(value) for value in noise_range)
    if not 0.0 <= lower <= upper <= 1.0:
        raise InputError(None, f"noise range ({lower}, {upper}) must satisfy 0 <= lower <= upper <= 1")
    return lower, upper


# ---------------------------------------------------------------------------------------------- editor
