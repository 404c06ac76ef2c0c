"""The InstructPix2Pix editor: loading, in2n's edit semantics (checked against an independent DDIM), precision."""

from __future__ import annotations

import json

import pytest
import torch

from splat2splat.edit.editor import Editor
from splat2splat.edit.ip2p import IP2PConfig, InstructPix2PixEditor
from splat2splat.edit.ip2p_steps import (combine_guidance, decode_latents, encode_prompt, sample_max_timestep,
                                         scheduler_for)
from splat2splat.errors import InputError

SIZE = 64


def image(seed: int, height: int = SIZE, width: int = SIZE) -> torch.Tensor:
    """A smooth random [H, W, 3] image in [0, 1]."""
    coarse = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return smooth[0].permute(1, 2, 0)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def editor(tiny_ip2p_folder) -> InstructPix2PixEditor:
    return InstructPix2PixEditor.from_config(IP2PConfig(model=str(tiny_ip2p_folder), diffusion_steps=3, device="cpu"))


# ------------------------------------------------------------------------------------------ the real path

def test_tiny_folder_has_the_layout_of_the_real_model(tiny_ip2p_folder):
    index = json.loads((tiny_ip2p_folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionInstructPix2PixPipeline"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_ip2p_folder / part).is_dir()


def test_edit_runs_keeps_size_and_is_reproducible(editor):
    assert isinstance(editor, Editor)
    render, original = image(0), image(1)
    first = editor.edit(render, original, "make it snowy", (0.02, 0.98), seeded(7))
    again = editor.edit(render, original, "make it snowy", (0.02, 0.98), seeded(7))
    other = editor.edit(render, original, "make it snowy", (0.02, 0.98), seeded(8))
    assert first.shape == (SIZE, SIZE, 3) and first.dtype == torch.float32
    assert 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_sizes_that_are_not_multiples_of_8_come_back_at_the_render_size(editor):
    edited = editor.edit(image(0, 44, 60), image(1, 44, 60), "make it snowy", (0.5, 0.5), seeded(0))
    assert edited.shape == (44, 60, 3)


def test_ddim_flags_are_in2ns_whatever_the_model_scheduler_says(editor, tiny_ip2p_folder):
    # The tiny folder, like IP2P's, stores an Euler-ancestral config with timestep_spacing "linspace".
    saved = json.loads((tiny_ip2p_folder / "scheduler" / "scheduler_config.json").read_text())
    assert saved["timestep_spacing"] == "linspace"
    config = editor.models.scheduler.config
    assert type(editor.models.scheduler).__name__ == "DDIMScheduler"
    assert (config.clip_sample, config.set_alpha_to_one, config.steps_offset, config.timestep_spacing) == (
        False, False, 1, "leading")
    assert config.num_train_timesteps == 1000


# ---------------------------------------------------------------------------------------- in2n semantics

def sd_alphas_cumprod() -> torch.Tensor:
    """SD / IP2P's scaled-linear schedule over 1000 steps, computed independently of diffusers."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def test_max_timestep_is_uniform_over_the_inclusive_integer_range():
    drawn = {sample_max_timestep((0.3, 0.302), 1000, seeded(seed)) for seed in range(200)}
    assert drawn == {300, 301, 302}
    assert all(20 <= sample_max_timestep((0.02, 0.98), 1000, seeded(s)) <= 980 for s in range(200))


def test_ddim_timesteps_are_spread_over_0_to_t_with_the_full_schedule(editor):
    base = editor.models.scheduler
    scheduler = scheduler_for(base, 500, 20)
    assert scheduler.timesteps.tolist() == [25 * k + 1 for k in reversed(range(20))]  # 476, 451, ..., 1
    # The step to the previous timestep is T // steps, not 1000 // steps.
    assert scheduler.config.num_train_timesteps // scheduler.num_inference_steps == 25
    assert torch.allclose(scheduler.alphas_cumprod.double(), sd_alphas_cumprod(), atol=1e-6)
    assert base.config.num_train_timesteps == 1000  # the shared scheduler is untouched
    assert scheduler_for(base, 5, 20).timesteps.tolist() == [5, 4, 3, 2, 1]  # never more steps than T
    assert scheduler_for(base, 0, 20).timesteps.tolist() == [1]


def test_combine_guidance_is_ip2ps_formula():
    text, image_, uncond = torch.randn(3, 2, 4, 8, 8, generator=seeded(0))
    expected = uncond + 7.5 * (text - image_) + 1.5 * (image_ - uncond)
    assert torch.allclose(combine_guidance(text, image_, uncond, 7.5, 1.5), expected)


class RecordingUNet(torch.nn.Module):
    """Stands in for the UNet: records its inputs and predicts a different, deterministic noise per branch."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives .to()/.parameters() something to act on
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    @staticmethod
    def predict(noisy: torch.Tensor, condition: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        gains = torch.tensor([0.9, 0.6, 0.3]).view(3, 1, 1, 1)  # text, image, uncond branches
        return gains * noisy + 0.1 * condition + 1e-4 * t.float().view(-1, 1, 1, 1)

    def forward(self, sample, timestep, encoder_hidden_states, return_dict=True):
        self.calls.append((sample.clone(), timestep.clone(), encoder_hidden_states.clone()))
        return (self.predict(sample[:, :4], sample[:, 4:], timestep),)


@pytest.fixture
def recording_editor(editor):
    """The tiny editor with its UNet replaced by a recorder (restored afterwards)."""
    real_unet = editor.models.unet
    editor.models.unet = RecordingUNet()
    yield editor
    editor.models.unet = real_unet


def test_edit_follows_in2n_step_by_step(recording_editor):
    editor, unet = recording_editor, recording_editor.models.unet
    render, original = image(0), image(1)
    s_text, s_image, steps = editor.config.guidance_scale, editor.config.image_guidance_scale, editor.config.diffusion_steps
    edited = editor.edit(render, original, "turn it into bronze", (0.3, 0.7), seeded(3))

    # Replay the generator: T, then the VAE sample of the render, then the noise (in2n's order).
    generator = seeded(3)
    max_timestep = sample_max_timestep((0.3, 0.7), 1000, generator)
    assert 300 <= max_timestep <= 700
    vae = editor.models.vae
    posterior = vae.encode(render.permute(2, 0, 1)[None] * 2 - 1).latent_dist  # a SAMPLE of the posterior, scaled
    render_latents = (posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator))
    render_latents = render_latents * vae.config.scaling_factor
    noise = torch.randn(render_latents.shape, generator=generator)
    condition = vae.encode(original.permute(2, 0, 1)[None] * 2 - 1).latent_dist.mode()
    assert not torch.allclose(condition, vae.encode(render.permute(2, 0, 1)[None] * 2 - 1).latent_dist.mode())

    step = max_timestep // steps
    timesteps = [step * k + 1 for k in reversed(range(steps))]
    assert [t.tolist() for _, t, _ in unet.calls] == [[t] * 3 for t in timesteps]  # one per branch

    # Text embeddings: [text, uncond(""), uncond("")].
    tokenizer, text_encoder = editor.models.tokenizer, editor.models.text_encoder
    def embed(prompt):
        ids = tokenizer([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        return text_encoder(ids)[0][0]
    with torch.no_grad():
        expected_embeddings = torch.stack([embed("turn it into bronze"), embed(""), embed("")])
    for _, _, embeddings in unet.calls:
        assert torch.allclose(embeddings, expected_embeddings, atol=1e-6)

    # Independent DDIM (eta = 0) with the full schedule and in2n's spacing over [0, T].
    alphas = sd_alphas_cumprod().float()
    latents = alphas[timesteps[0]].sqrt() * render_latents + (1 - alphas[timesteps[0]]).sqrt() * noise
    conditioning = torch.cat([condition, condition, torch.zeros_like(condition)])
    for (sample, _, _), t in zip(unet.calls, timesteps):
        # The UNet sees the same noisy latents in all branches, then the ORIGINAL's [cond, cond, zeros].
        assert torch.allclose(sample[:, :4], latents.expand(3, -1, -1, -1), atol=1e-5)
        assert torch.allclose(sample[:, 4:], conditioning, atol=1e-6)
        text, image_, uncond = RecordingUNet.predict(sample[:, :4], sample[:, 4:], torch.tensor([t] * 3)).chunk(3)
        eps = uncond + s_text * (text - image_) + s_image * (image_ - uncond)
        alpha, alpha_prev = alphas[t], (alphas[t - step] if t - step >= 0 else alphas[0])
        predicted_original = (latents - (1 - alpha).sqrt() * eps) / alpha.sqrt()
        latents = alpha_prev.sqrt() * predicted_original + (1 - alpha_prev).sqrt() * eps

    with torch.no_grad():
        expected = decode_latents(vae, latents)[0].permute(1, 2, 0)
    assert torch.allclose(edited, expected, atol=1e-4)


def test_prompts_are_encoded_once(editor):
    calls = []
    hook = editor.models.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        for _ in range(2):
            editor.prompt_embeddings("a prompt seen twice")
        assert len(calls) == 1
        editor.prompt_embeddings("another prompt")
        assert len(calls) == 2
    finally:
        hook.remove()


def test_encode_prompt_returns_three_branches(editor):
    with torch.no_grad():
        embeddings = encode_prompt(editor.models.tokenizer, editor.models.text_encoder, "make it red")
    assert embeddings.shape == (3, 77, 32)
    assert torch.equal(embeddings[1], embeddings[2]) and not torch.allclose(embeddings[0], embeddings[1])


# ---------------------------------------------------------------------------------- errors and precision

def test_missing_model_folder_is_an_input_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(InputError, match="no such model folder.*--model"):
        InstructPix2PixEditor.from_config(IP2PConfig(model=str(missing)))


def test_folder_that_is_not_a_pipeline_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not a loadable InstructPix2Pix pipeline folder"):
        InstructPix2PixEditor.from_config(IP2PConfig(model=str(tmp_path)))


def test_unreachable_hub_model_says_how_to_supply_one():
    # HF_HUB_OFFLINE=1 (tests/conftest.py) and the id is in no cache.
    with pytest.raises(InputError, match="--model PATH") as raised:
        InstructPix2PixEditor.from_config(IP2PConfig(model="splat2splat-tests/no-such-model"))
    assert "\n" not in str(raised.value)


def test_bad_noise_range_is_an_input_error(editor):
    with pytest.raises(InputError, match="noise range"):
        editor.edit(image(0), image(1), "x", (0.8, 0.2), seeded(0))


def test_offload_on_the_cpu_has_nothing_to_do(tiny_ip2p_folder):
    """in2n-small/tiny turn offload on (their reference does); an editor on the CPU simply keeps its models."""
    config = IP2PConfig(model=str(tiny_ip2p_folder), diffusion_steps=2, device="cpu", offload=True)
    offloaded = InstructPix2PixEditor.from_config(config)
    plain = InstructPix2PixEditor.from_config(IP2PConfig(model=str(tiny_ip2p_folder), diffusion_steps=2, device="cpu"))
    assert not offloaded.offload
    args = (image(0, 32, 32), image(1, 32, 32), "make it red", (0.5, 0.6))
    assert torch.equal(offloaded.edit(*args, seeded(0)), plain.edit(*args, seeded(0)))


def test_autocast_precision_is_in2ns_full_precision(tiny_ip2p_folder):
    """in2n's default: weights loaded in float16, UNet and VAE promoted to float32 (holding fp16-rounded
    values), text encoder left in float16 (in2n/ip2p.py:71,89-91)."""
    editor = InstructPix2PixEditor.from_config(IP2PConfig(model=str(tiny_ip2p_folder), dtype="autocast",
                                                          diffusion_steps=2, device="cpu"))
    assert next(editor.models.text_encoder.parameters()).dtype == torch.float16
    for module in (editor.models.unet, editor.models.vae):
        weights = [p for p in module.parameters()]
        assert all(p.dtype == torch.float32 for p in weights)
        assert all(torch.equal(p, p.half().float()) for p in weights)  # fp16-rounded values
    edited = editor.edit(image(0, 32, 32), image(1, 32, 32), "make it red", (0.5, 0.6), seeded(0))
    assert edited.dtype == torch.float32 and torch.isfinite(edited).all()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precisions_run_on_the_cpu(tiny_ip2p_folder, dtype):
    editor = InstructPix2PixEditor.from_config(IP2PConfig(model=str(tiny_ip2p_folder), dtype=dtype,
                                                          diffusion_steps=2, device="cpu"))
    assert next(editor.models.unet.parameters()).dtype == getattr(torch, dtype)
    edited = editor.edit(image(0, 32, 32), image(1, 32, 32), "make it red", (0.5, 0.6), seeded(0))
    assert edited.shape == (32, 32, 3) and edited.dtype == torch.float32
    assert torch.isfinite(edited).all()


# ------------------------------------------------------------------------- equality with diffusers' IP2P

def test_edit_from_the_top_noise_level_equals_diffusers_instructpix2pix_pipeline(editor, monkeypatch):
    """Started at T = 1000 (noise range (1, 1)) our partial DDIM is the whole DDIM of diffusers'
    StableDiffusionInstructPix2PixPipeline: given the same starting latents, the same DDIM scheduler and the
    same conditioning image, both produce the same image."""
    from diffusers import DDIMScheduler, StableDiffusionInstructPix2PixPipeline

    import splat2splat.edit.ip2p as ip2p

    started_from = []
    real_denoise = ip2p.denoise

    def recording_denoise(unet, schedulers, latents, *args):
        started_from.append(latents.clone())
        return real_denoise(unet, schedulers, latents, *args)

    monkeypatch.setattr(ip2p, "denoise", recording_denoise)
    render, original, prompt = image(0), image(1), "make it look like bronze"
    ours = editor.edit(render, original, prompt, (1.0, 1.0), seeded(5))

    models = editor.models
    pipeline = StableDiffusionInstructPix2PixPipeline(
        vae=models.vae, text_encoder=models.text_encoder, tokenizer=models.tokenizer, unet=models.unet,
        scheduler=DDIMScheduler.from_config(models.scheduler.config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    theirs = pipeline(prompt, image=original.permute(2, 0, 1)[None], num_inference_steps=editor.config.diffusion_steps,
                      guidance_scale=editor.config.guidance_scale,
                      image_guidance_scale=editor.config.image_guidance_scale,
                      latents=started_from[0], output_type="pt").images[0].permute(1, 2, 0)
    steps = editor.config.diffusion_steps
    assert pipeline.scheduler.timesteps.tolist() == scheduler_for(models.scheduler, 1000, steps).timesteps.tolist()
    assert pipeline.scheduler.timesteps.tolist()[0] == (steps - 1) * (1000 // steps) + 1  # the top of the schedule
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()


def test_the_three_guidance_branches_are_text_image_and_unconditional():
    """combine_guidance(text, image, uncond): text scale 1 and image scale 1 give the text+image branch, text
    scale 0 the image-only branch, both 0 the unconditional one (diffusers' IP2P pipeline order)."""
    text, image_, uncond = (torch.full((1, 4, 2, 2), value) for value in (3.0, 2.0, 1.0))
    assert torch.equal(combine_guidance(text, image_, uncond, 1.0, 1.0), text)
    assert torch.equal(combine_guidance(text, image_, uncond, 0.0, 1.0), image_)
    assert torch.equal(combine_guidance(text, image_, uncond, 0.0, 0.0), uncond)
    assert torch.equal(combine_guidance(text, image_, uncond, 7.5, 1.5), uncond + 7.5 * (text - image_) + 1.5 * (image_ - uncond))


# ------------------------------------------------------------------------------------------ batched edits

def batch_requests(generator: torch.Generator, sizes=((SIZE, SIZE),) * 3, prompts=("make it snowy",) * 3):
    from splat2splat.edit.ip2p import EditRequest

    return [EditRequest(image(10 + i, *size), image(20 + i, *size), prompt, (0.02, 0.98), generator)
            for i, (size, prompt) in enumerate(zip(sizes, prompts))]


def test_edit_batch_equals_editing_one_at_a_time_with_a_shared_generator(editor):
    """The draws of every request are taken in the serial order (T, VAE sample, noise; request by request),
    so a generator shared by the batch ends where the serial calls leave it and every edit matches."""
    serial_generator, batch_generator = seeded(3), seeded(3)
    requests = batch_requests(batch_generator, prompts=("make it snowy", "make it red", "make it snowy"))
    serial = [editor.edit(r.render, r.original, r.prompt, r.noise_range, serial_generator) for r in requests]
    batched = editor.edit_batch(requests)
    assert len(batched) == 3
    for one, together in zip(serial, batched):
        assert one.shape == together.shape
        torch.testing.assert_close(together, one, atol=1e-5, rtol=0)
    assert torch.equal(serial_generator.get_state(), batch_generator.get_state())
    assert not torch.allclose(batched[0], batched[2])


def test_edit_batch_runs_views_at_different_noise_levels_in_one_unet_batch(editor, monkeypatch):
    """Requests of one size go through the UNet together, each sample with its own timestep."""
    seen = []
    unet_forward = editor.models.unet.forward

    def recording(sample, timestep, *args, **kwargs):
        seen.append((sample.shape[0], timestep.clone()))
        return unet_forward(sample, timestep, *args, **kwargs)

    monkeypatch.setattr(editor.models.unet, "forward", recording)
    plans_generator = seeded(11)
    editor.edit_batch(batch_requests(plans_generator))
    assert len(seen) == editor.config.diffusion_steps  # one UNet call per DDIM step for all three views
    batch, timesteps = seen[0]
    assert batch == 9 and timesteps.shape == (9,)
    per_view = timesteps.view(3, 3)
    assert (per_view == per_view[:, :1]).all()  # a view's three branches share its timestep
    assert len(set(per_view[:, 0].tolist())) > 1  # different views, different noise levels


def test_edit_batch_groups_different_sizes_and_keeps_the_order(editor):
    sizes = ((SIZE, SIZE), (40, 56), (SIZE, SIZE))
    serial_generator, batch_generator = seeded(5), seeded(5)
    requests = batch_requests(batch_generator, sizes=sizes)
    serial = [editor.edit(r.render, r.original, r.prompt, r.noise_range, serial_generator) for r in requests]
    batched = editor.edit_batch(requests)
    assert [tuple(e.shape[:2]) for e in batched] == list(sizes)
    for one, together in zip(serial, batched):
        torch.testing.assert_close(together, one, atol=1e-5, rtol=0)


def test_channels_last_is_a_speed_option_with_the_same_edits(tiny_ip2p_folder, editor):
    fast = InstructPix2PixEditor.from_config(IP2PConfig(model=str(tiny_ip2p_folder), diffusion_steps=3, device="cpu",
                                                        channels_last=True))
    conv = next(m for m in fast.models.unet.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    render, original = image(0), image(1)
    torch.testing.assert_close(fast.edit(render, original, "snow", (0.02, 0.98), seeded(2)),
                               editor.edit(render, original, "snow", (0.02, 0.98), seeded(2)), atol=1e-5, rtol=0)
