"""InstructPix2Pix as the image editor of the Iterative Dataset Update, exactly as Instruct-NeRF2NeRF runs it.

One edit (in2n's ``InstructPix2Pix.edit_image``):

1. the instruction is encoded once per prompt into three branches ``[text, uncond, uncond]``;
2. a maximum timestep ``T`` is drawn uniformly from ``noise_range`` (fractions of the 1000 training steps);
3. the CURRENT RENDER is VAE-encoded (a sample of the latent distribution, times the VAE scaling factor)
   and noised to ``T``; the ORIGINAL image's latents (the distribution's mode, unscaled) condition the UNet
   as ``[cond, cond, zeros]``;
4. DDIM runs ``diffusion_steps`` steps spread over ``[0, T]`` (not over all 1000 steps) with the full
   1000-step noise schedule, combining the three UNet branches with text and image guidance;
5. the latents are decoded and the image is resized back to the render's size.

All randomness (``T``, the VAE sample, the noise) comes from the caller's CPU ``torch.Generator``, drawn in
that order, so a seed fixes the edit on any device.

Precision (``IP2PConfig.dtype``), as the references run it:

* ``autocast`` is what in2n's default preset calls "full precision" (in2n/ip2p.py:71,89-91 with
  in2n_config.py:39 ``mixed_precision=True``): the weights are loaded in float16, the UNet and the VAE are
  then promoted to float32 (so they hold fp16-rounded values), the text encoder stays float16, and on CUDA
  the edit runs under ``torch.autocast(float16)`` as nerfstudio's trainer wraps it. On the CPU there is no
  float16 autocast here: the promoted float32 models run as they are.
* ``float16`` is in2n-small / in2n-tiny / igs2gs (their IP2P stays in half precision).
* ``float32`` is a true full-precision reference (no reference runs it); ``auto`` is float16 on CUDA and
  float32 on the CPU. float16 and bfloat16 also run on the CPU, but far slower than float32 there, so a
  warning is logged for CPU float16.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
import tyro

from splat2splat.devices import resolve_device
from splat2splat.edit.editor import EditPlan, EditRequest
from splat2splat.edit.ip2p_speed import AttentionKernel, CompileMode, check_speed_options, compiled, use_attention_kernel
from splat2splat.edit.ip2p_steps import (batch_groups, check_noise_range, decode_latents, denoise, encode_prompt,
                                         place_module, sample_max_timestep, scheduler_for, size_for_vae)
from splat2splat.errors import InputError
from splat2splat.imaging import resize_image
from splat2splat.model_loading import load_failure, model_source, quiet_model_loading

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "timbrooks/instruct-pix2pix"
DEFAULT_NOISE_RANGE = (0.02, 0.98)
# in2n samples with the DDIM scheduler of CompVis/stable-diffusion-v1-4, whose betas equal IP2P's. Its
# sampler flags are pinned here because IP2P's own scheduler config (Euler-ancestral) may lack them or
# carry others, and DDIM's defaults (clip_sample=True, set_alpha_to_one=True) would clip latents to
# [-1, 1] and change the last step.
IN2N_DDIM_FLAGS = dict(clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# in2n's "full precision": loaded in float16, UNet and VAE promoted to float32, run under float16 autocast.
AUTOCAST = "autocast"
AUTOCAST_LOAD_DTYPE = torch.float16


@dataclass
class IP2PConfig:
    """Options of the InstructPix2Pix editor."""

    model: str = DEFAULT_MODEL
    """Hugging Face hub id or local folder of a diffusers InstructPix2Pix pipeline (a folder with
    model_index.json). Without hub access, pass a local folder or have the model in the HF cache."""
    dtype: Literal["auto", "autocast", "float32", "float16", "bfloat16"] = "auto"
    """Precision of the diffusion models: 'autocast' as in2n's 'full precision' runs (fp16-loaded weights,
    UNet and VAE promoted to fp32, float16 autocast on CUDA), 'float16' as in2n-small/tiny and igs2gs, 'auto'
    float16 on CUDA and float32 on the CPU (half precision runs there too, but slowly)."""
    guidance_scale: float = 7.5
    """Text guidance scale: how strongly the edit follows the instruction."""
    image_guidance_scale: float = 1.5
    """Image guidance scale: how strongly the edit stays close to the original image."""
    diffusion_steps: int = 20
    """Number of DDIM denoising steps per edit, spread over [0, T] for the sampled noise level T."""
    device: Annotated[str | None, tyro.conf.arg(help_behavior_hint="(default: --device)")] = None
    """Device of the diffusion models, overriding --device for them: cuda, cuda:N, cpu or auto."""
    channels_last: bool = False
    """Hold the UNet and VAE weights in channels-last memory format (a speed option: convolutions on GPU
    tensor cores often run faster so; results equal up to rounding). Measure before use: docs/BENCHMARKS.md."""
    compile: CompileMode = "off"
    """torch.compile the UNet: 'inductor' (fused kernels), 'inductor-cuda-graphs' (inductor's kernels replayed
    as CUDA graphs; CUDA only), 'cuda-graphs' (the eager kernels as CUDA graphs; CUDA only). The first edit of
    each batch shape compiles (a minute or more). Measure before use: docs/BENCHMARKS.md."""
    attention: AttentionKernel = "auto"
    """Attention kernel of the UNet: 'auto' (PyTorch chooses, as diffusers does), one of PyTorch's
    'flash', 'efficient', 'cudnn', 'math', or 'unfused' (diffusers' matmul + softmax). Measure before use."""
    offload: bool = False
    """Keep the models in CPU memory and move each one to the GPU only while it runs (in2n-small/tiny do, with
    diffusers' enable_model_cpu_offload): frees GPU memory for the scene at the cost of host-to-GPU copies
    on every edit. Nothing to do when the editor runs on the CPU."""


@dataclass
class IP2PModels:
    """The parts of an InstructPix2Pix pipeline the editor uses."""

    tokenizer: Any  # transformers.CLIPTokenizer
    text_encoder: torch.nn.Module  # CLIPTextModel
    unet: torch.nn.Module  # UNet2DConditionModel with 8 input channels
    vae: torch.nn.Module  # AutoencoderKL
    scheduler: Any  # diffusers.DDIMScheduler with the full training schedule; never mutated


@dataclass(frozen=True)
class NoiseGeometry:
    """What drawing an edit's noise needs to know of the model (so a process without it can draw)."""

    num_train_timesteps: int
    vae_scale_factor: int
    latent_channels: int


def draw_plan(request: EditRequest, geometry: NoiseGeometry) -> EditPlan:
    """Everything an edit draws from its generator, drawn now and in :meth:`InstructPix2PixEditor.edit`'s
    order: T, the VAE sample noise, the latent noise."""
    noise_range = check_noise_range(request.noise_range)
    factor = geometry.vae_scale_factor
    size = size_for_vae(*request.render.shape[:2], factor)
    max_timestep = sample_max_timestep(noise_range, geometry.num_train_timesteps, request.generator)
    latent_shape = (1, geometry.latent_channels, size[0] // factor, size[1] // factor)
    sample_noise = torch.randn(latent_shape, generator=request.generator, dtype=torch.float32)
    latent_noise = torch.randn(latent_shape, generator=request.generator, dtype=torch.float32)
    return EditPlan(request, size, max_timestep, sample_noise, latent_noise)


# --------------------------------------------------------------------------------------------- loading

def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The dtype the models are LOADED in (``autocast`` loads float16 and promotes the UNet and VAE later)."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype == AUTOCAST:
        return AUTOCAST_LOAD_DTYPE
    if dtype not in TORCH_DTYPES:
        raise InputError(None, f"unknown dtype {dtype!r}: use one of auto, {', '.join(TORCH_DTYPES)}")
    return TORCH_DTYPES[dtype]


HOW_TO_SUPPLY_A_MODEL = (
    "pass a local diffusers InstructPix2Pix folder with --model PATH (saved with save_pretrained, or a random "
    "test model from scripts/make_tiny_ip2p.py), or run where the Hugging Face hub is reachable or the model "
    "is in the HF cache (HF_HOME)"
)


def load_ip2p_models(model: str, dtype: torch.dtype) -> IP2PModels:
    """Load tokenizer, text encoder, UNet, VAE and DDIM scheduler from a hub id or a local folder (on the CPU).

    Honours ``HF_HUB_OFFLINE``; every failure becomes an :class:`InputError` that says how to supply a model.
    """
    from diffusers import DDIMScheduler, StableDiffusionInstructPix2PixPipeline

    source = model_source(model, "model", HOW_TO_SUPPLY_A_MODEL)
    try:
        with quiet_model_loading():
            pipeline = StableDiffusionInstructPix2PixPipeline.from_pretrained(
                source, torch_dtype=dtype, safety_checker=None, feature_extractor=None,
                requires_safety_checker=False,
                low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None,
            )
            # The model's noise schedule loaded into DDIM, with in2n's sampler flags.
            scheduler = DDIMScheduler.from_pretrained(source, subfolder="scheduler", **IN2N_DDIM_FLAGS)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise load_failure(model, error, "InstructPix2Pix pipeline", HOW_TO_SUPPLY_A_MODEL) from None
    if pipeline.unet.config.in_channels != 8:
        raise InputError(model, f"the UNet takes {pipeline.unet.config.in_channels} input channels, not the 8 "
                                "of InstructPix2Pix (4 noisy latents + 4 image-conditioning latents)")
    return IP2PModels(pipeline.tokenizer, pipeline.text_encoder, pipeline.unet, pipeline.vae, scheduler)


def check_editor_options(config: IP2PConfig) -> None:
    """One-line errors for editor options that cannot run together on the configured device (before loading)."""
    device = resolve_device(config.device)
    check_speed_options(config.compile, config.attention, config.offload and device.type == "cuda", device)


# ------------------------------------------------------------------------------------------- the editor

class InstructPix2PixEditor:
    """The editor of Instruct-NeRF2NeRF: InstructPix2Pix + partial DDIM (a
    :class:`~splat2splat.edit.editor.PlanningEditor`: it batches)."""

    def __init__(self, models: IP2PModels, config: IP2PConfig | None = None):
        self.config = config or IP2PConfig()
        self.device = resolve_device(self.config.device)
        self.dtype = resolve_dtype(self.config.dtype, self.device)
        self.offload = self.config.offload and self.device.type == "cuda"  # on the CPU there is nothing to offload
        check_editor_options(self.config)
        if self.dtype == torch.float16 and self.device.type == "cpu" and self.config.dtype != AUTOCAST:
            logger.warning("float16 on the CPU runs, but far slower than float32; prefer --idu.editor.dtype float32 there")
        self.models = models
        self._prompt_embeddings: dict[str, torch.Tensor] = {}
        # Without offload every model lives on the device for good; with it, each waits in CPU memory.
        home = torch.device("cpu") if self.offload else self.device
        place_module(models.text_encoder, home, self.dtype).eval().requires_grad_(False)
        for module in (models.unet, models.vae):
            place_module(module, home, self.dtype).eval().requires_grad_(False)
            if self.config.dtype == AUTOCAST:
                module.float()  # in2n: pipe.unet.float(), pipe.vae.float() after loading in float16
            if self.config.channels_last:
                module.to(memory_format=torch.channels_last)
        # The dtype of the images and latents that enter the UNet and the VAE.
        self.compute_dtype = torch.float32 if self.config.dtype == AUTOCAST else self.dtype
        self.vae_scale_factor = 2 ** (len(models.vae.config.block_out_channels) - 1)
        attention_dtype = torch.float16 if self.autocast_active() else self.compute_dtype
        use_attention_kernel(self.config.attention, models.unet, self.device, attention_dtype)
        self._compiled_unet = None

    def unet(self) -> Callable:
        """What the denoising loop calls: the UNet, or its compiled form (built on first use)."""
        if self.config.compile == "off":
            return self.models.unet
        if self._compiled_unet is None:
            self._compiled_unet = compiled(self.models.unet, self.config.compile)
        return self._compiled_unet

    def autocast_active(self) -> bool:
        return self.config.dtype == AUTOCAST and self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        """in2n's trainer runs the edit under float16 autocast (mixed_precision=True); only on CUDA here."""
        if self.autocast_active():
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    @classmethod
    def from_config(cls, config: IP2PConfig) -> InstructPix2PixEditor:
        """Load the model named by ``config.model`` (hub id or local folder) and build the editor."""
        device = resolve_device(config.device)
        return cls(load_ip2p_models(config.model, resolve_dtype(config.dtype, device)), config)

    @torch.no_grad()
    def edit(self, render: torch.Tensor, original: torch.Tensor, prompt: str,
             noise_range: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
        """Edit ``render`` [H, W, 3] in [0, 1] towards ``prompt``, conditioned on ``original``; returns
        [H, W, 3] in [0, 1] (float32, on the render's device). A batch of one: the same code as
        :meth:`edit_batch`, so the speed options apply to both."""
        return self.run_plans([self.plan(EditRequest(render, original, prompt, noise_range, generator))])[0]

    @torch.no_grad()
    def edit_batch(self, requests: Sequence[EditRequest]) -> list[torch.Tensor]:
        """Edit several views at once: the same results as :meth:`edit` called on each request in order.

        Every request first takes its draws from its generator in :meth:`edit`'s order (T, the VAE sample
        noise, the latent noise), request after request, so a generator shared by the requests is consumed
        exactly as by the serial calls. Then the VAE and the UNet run on all requests of one image size
        together: 3 guidance branches x k views in one UNet batch, each view with its own timesteps (views
        with different T have different DDIM sequences; the UNet takes a timestep per sample and each view
        steps its own scheduler). Only floating-point reassociation in batched kernels can differ.
        """
        return self.run_plans([self.plan(request) for request in requests])

    def noise_geometry(self) -> NoiseGeometry:
        return NoiseGeometry(self.models.scheduler.config.num_train_timesteps, self.vae_scale_factor,
                             self.models.vae.config.latent_channels)

    def plan(self, request: EditRequest) -> EditPlan:
        return draw_plan(request, self.noise_geometry())

    def run_plans(self, plans: list[EditPlan]) -> list[torch.Tensor]:
        """The edits of ``plans`` (any sizes and noise levels), in order; each group of one image size and
        one number of DDIM steps runs as one batch."""
        results: list[torch.Tensor | None] = [None] * len(plans)
        for group in batch_groups(plans, self.config.diffusion_steps):
            for index, edited in zip(group, self.run_batch([plans[i] for i in group])):
                results[index] = edited
        return results  # type: ignore[return-value]

    def run_batch(self, plans: list[EditPlan]) -> list[torch.Tensor]:
        """The edits of ``plans`` (one image size, one number of DDIM steps) as one batch."""
        size = plans[0].size
        schedulers = [scheduler_for(self.models.scheduler, plan.max_timestep, self.config.diffusion_steps)
                      for plan in plans]
        embeddings = torch.cat([self.prompt_embeddings(plan.request.prompt) for plan in plans])
        with self.autocast(), self.on_device(self.models.vae) as vae:
            renders = torch.cat([self.model_input(plan.request.render, size) for plan in plans])
            originals = torch.cat([self.model_input(plan.request.original, size) for plan in plans])
            # The render to edit: a SAMPLE of the VAE posterior, scaled. The conditioning original: the posterior
            # MODE, unscaled (as IP2P was trained), as [cond, cond, zeros] for the text, image and unconditional
            # branches.
            posterior = vae.encode(renders).latent_dist
            sample_noise = torch.cat([plan.sample_noise for plan in plans]).to(posterior.mean)
            latents = (posterior.mean + posterior.std * sample_noise) * vae.config.scaling_factor
            condition = vae.encode(originals).latent_dist.mode()
        condition = torch.stack([condition, condition, torch.zeros_like(condition)], dim=1).flatten(0, 1)
        latents = torch.cat([
            scheduler.add_noise(latents[i:i + 1], plan.latent_noise.to(latents), scheduler.timesteps[:1])
            for i, (plan, scheduler) in enumerate(zip(plans, schedulers))])
        with self.autocast(), self.on_device(self.models.unet):
            latents = denoise(self.unet(), schedulers, latents, condition, embeddings.to(self.compute_dtype),
                              self.config.guidance_scale, self.config.image_guidance_scale)
        with self.autocast(), self.on_device(self.models.vae) as vae:
            decoded = decode_latents(vae, latents)
        edits = []
        for plan, image in zip(plans, decoded):
            render = plan.request.render
            edited = resize_image(image.float().permute(1, 2, 0), tuple(render.shape[:2])).clamp(0, 1)
            edits.append(edited.to(render.device))
        return edits

    @torch.no_grad()
    def prompt_embeddings(self, prompt: str) -> torch.Tensor:
        """[text, uncond, uncond] embeddings on the device, encoded once per prompt."""
        if prompt not in self._prompt_embeddings:
            with self.on_device(self.models.text_encoder) as text_encoder:
                embeddings = encode_prompt(self.models.tokenizer, text_encoder, prompt)
            self._prompt_embeddings[prompt] = embeddings.to(self.device, self.dtype)
        return self._prompt_embeddings[prompt]

    def model_input(self, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """[H, W, 3] in [0, 1] -> [1, 3, h, w] in [-1, 1] at the VAE-friendly size, device and dtype."""
        image = resize_image(image.detach().to(self.device, torch.float32), size)
        return (image.permute(2, 0, 1)[None] * 2 - 1).to(self.compute_dtype)

    @contextlib.contextmanager
    def on_device(self, module: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Yield ``module`` on the device; with offload, move it there only for the block."""
        if not self.offload:
            yield module
            return
        module.to(self.device)
        try:
            yield module
        finally:
            module.to("cpu")
