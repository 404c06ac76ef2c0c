"""Editing presets, as data: Instruct-NeRF2NeRF's three (in2n, in2n-small, in2n-tiny) and Instruct-GS2GS'.

Each preset is its reference as the reference's CODE runs it (where a README says otherwise, the code is
what users got): the README's presets table gives every value with its file and line, and
tests/edit/test_presets.py checks the run.json of an edit with each preset against that table. Every
field can be overridden on the command line, e.g.
``splat2splat edit --preset in2n-tiny --idu.steps 500 --idu.editor.guidance-scale 10``.

What differs on purpose (the README lists it too): the scene is a Gaussian splatting scene unless
``--backend nerf``; the in2n presets' density control on Gaussians (in2n has none; chosen by measurement,
docs/BENCHMARKS.md); on Gaussians in2n's LPIPS patches come from the rendered view, the L1 from the whole view;
the in2n presets have no camera-pose optimiser (in2n's SO3xR3); an igs2gs dataset update
starts at edit step 0 rather than at the first global step with ``(step - 1) % 2500 == 0``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Literal

import tyro

from splat2splat.edit.ip2p import DEFAULT_NOISE_RANGE, IP2PConfig
from splat2splat.gaussians.config import DensityControl
from splat2splat.losses import LossWeights, LpipsPatches

Schedule = Literal["in2n", "igs2gs"]
EditOrder = Literal["random-permutation", "dataset"]
LpipsOn = Literal["patches", "image"]


@dataclass
class IDUConfig:
    """An editing preset: the IDU schedule, the editor's settings and the training loss while editing."""

    description: Annotated[str, tyro.conf.Suppress] = "custom settings"
    """What this preset is for (stored in run.json; a record, not an option)."""
    schedule: Schedule = "in2n"
    """'in2n': edit --idu.edit-count views every --idu.edit-rate steps, cycling through the edit order;
    'igs2gs': every --idu.edit-rate steps re-edit every training view in the edit order, one per step, training on
    each fresh edit."""
    edit_order: EditOrder = "random-permutation"
    """The order views are edited in: 'random-permutation' of the training views, drawn once from --idu.seed
    and then cycled (in2n), or the 'dataset' order (igs2gs). run.json and the checkpoint record it."""
    steps: int = 3000
    """Training steps of the edit (the scene's own step counter continues from its initial training)."""
    edit_rate: int = 10
    """Steps between edit rounds."""
    edit_count: int = 1
    """Views edited per round (in2n schedule)."""
    noise_range: tuple[float, float] = DEFAULT_NOISE_RANGE
    """Range of the editor's noise level, as fractions of the diffusion timesteps (in2n: 0.02-0.98)."""
    loss: LossWeights = field(default_factory=lambda: LossWeights(l1=1.0, dssim=0.0, lpips=1.0))
    """Training loss while editing (in2n: L1 + LPIPS, both weight 1)."""
    lpips_net: Literal["alex", "vgg", "squeeze"] = "alex"
    """LPIPS backbone (in2n uses torchmetrics' default, AlexNet)."""
    lpips_on: LpipsOn = "patches"
    """What LPIPS compares on a Gaussian scene: 'patches' (in2n's: --idu.lpips-patches random squares of side
    --idu.lpips-patch-size in the rendered view and the same squares of its training image, new ones every step,
    drawn from the scene's checkpointed generator, by the training step only, so edit batches, lags, editor
    ranks, regions and --resume see the same patches) or 'image' (the whole view). L1 and D-SSIM always take
    the whole view. The NeRF trains on ray patches of that side (as many as a ray batch holds), so
    it takes 'patches' only."""
    lpips_patch_size: int = 32
    """Side of the LPIPS patches in pixels (in2n: 32)."""
    lpips_patches: int = 16
    """LPIPS patches per step on a Gaussian scene (in2n: its 16384-ray batch holds 16 patches of 32x32)."""
    editor: IP2PConfig = field(default_factory=IP2PConfig)
    """InstructPix2Pix settings (model, precision, guidance scales, diffusion steps)."""
    density_control: DensityControl = "continue"
    """What the Gaussian scene's density control does during the edit: 'continue' its strategy on the scene's
    own step counter (once past the strategy's refine stop, as after a full 30k training, nothing happens),
    'cull' only removes transparent and oversized Gaussians at the strategy's refine interval (igs2gs), 'off'
    freezes the set. The NeRF has no density control: it ignores this."""
    random_background: bool = False
    """Train the Gaussian scene over a random background colour during the edit (igs2gs: splatfacto's
    default); ignored where the images had alpha composited over a fixed background."""
    edit_batch: int = 1
    """Views per editor batch (in2n schedule): k edits k * --idu.edit-count views every k * --idu.edit-rate steps as one
    UNet batch (the same edits per training step; each edit equals the serial one). 1 = one at a time."""
    edit_lag: int = 0
    """Steps an edit may run behind training: the edit of step s runs in an editor thread and replaces its
    image after step s + --idu.edit-lag (the trainer waits for a late one, so results do not depend on timing).
    0 = edit, then train (the references' serial loop); in2n schedule only."""
    seed: int = 0
    """Seed of every edit's noise and of the random edit order."""

    def lpips_patch_sampling(self) -> LpipsPatches | None:
        """The LPIPS patches a whole-image scene's loss draws (None: LPIPS over the whole image, or no LPIPS)."""
        if self.loss.lpips <= 0 or self.lpips_on != "patches":
            return None
        return LpipsPatches(self.lpips_patches, self.lpips_patch_size)


def _in2n(description: str, steps: int, dtype: str, offload: bool, lpips: float) -> IDUConfig:
    # edit_order is the default random permutation. edit_batch 1 and edit_lag 0: in2n edits one view at a time
    # and trains after it (the throughput options are opt-in: docs/BENCHMARKS.md, "Edit throughput", shows
    # what they cost and save).
    return IDUConfig(description=description, schedule="in2n", steps=steps, edit_rate=10, edit_count=1,
                     edit_batch=1, edit_lag=0, noise_range=(0.02, 0.98), loss=LossWeights(l1=1.0, dssim=0.0, lpips=lpips),
                     lpips_net="alex", lpips_on="patches", lpips_patch_size=32, lpips_patches=16,
                     density_control=IN2N_GAUSSIAN_DENSITY_CONTROL,
                     editor=IP2PConfig(dtype=dtype, offload=offload, guidance_scale=7.5, image_guidance_scale=1.5,
                                       diffusion_steps=20))


# in2n edits a NeRF; on Gaussians its presets keep the scene's own strategy running on the scene's step
# counter (after a full 30k training: nothing happens). Chosen by the oracle benchmark (docs/BENCHMARKS.md).
IN2N_GAUSSIAN_DENSITY_CONTROL = "continue"

PRESETS: dict[str, IDUConfig] = {
    "in2n": _in2n("Instruct-NeRF2NeRF: in2n's 'full precision' InstructPix2Pix (fp16 weights in fp32, autocast), "
                  "L1 + LPIPS, 15000 steps", 15000, "autocast", False, 1.0),
    "in2n-small": _in2n("in2n-small: half-precision InstructPix2Pix with CPU offload, L1 + LPIPS, 30000 steps",
                        30000, "float16", True, 1.0),
    "in2n-tiny": _in2n("in2n-tiny: half-precision InstructPix2Pix with CPU offload, L1 only, 30000 steps",
                       30000, "float16", True, 0.0),
    "igs2gs": IDUConfig(
        description="Instruct-GS2GS: every 2500 steps re-edit the dataset one view per step, 0.8 L1 + 0.2 D-SSIM",
        schedule="igs2gs", edit_order="dataset", steps=7500, edit_rate=2500, edit_batch=1, edit_lag=0, noise_range=(0.70, 0.98),
        loss=LossWeights(l1=0.8, dssim=0.2, lpips=0.0), density_control="cull", random_background=True,
        editor=IP2PConfig(dtype="float16", offload=True, guidance_scale=12.5, image_guidance_scale=1.5,
                          diffusion_steps=20),
    ),
}
DEFAULT_PRESET = "in2n-small"


HALF_PRECISION = ("float16", "bfloat16")
# Why a CPU run departs from a half-precision preset (measured: 2.94 vs 1.27 it/s, float32 vs float16).
CPU_FLOAT32 = ("the CPU runs half precision about 2x slower than float32, so the preset's half-precision editor runs "
               "in float32 there; --idu.editor.dtype float16 keeps half precision")


def preset_on(name: str, editor_device: str) -> IDUConfig:
    """Preset ``name`` as it runs with its editor on ``editor_device``: on the CPU a half-precision editor runs
    in float32 (run.json records the departure; an explicit --idu.editor.dtype overrides it)."""
    config = preset(name)
    if editor_device == "cpu" and config.editor.dtype in HALF_PRECISION:
        config.editor.dtype = "float32"
    return config


def departures(name: str, used: IDUConfig) -> dict[str, dict]:
    """Every setting of ``used`` that differs from preset ``name``, by flag: {"preset": value, "used": value},
    with the reason where the program chose it (float32 on the CPU). Settings the preset leaves to the job (None,
    such as the editor's device) are not departures."""
    from splat2splat.configs import config_to_dict

    found, in_use = {}, _flat(config_to_dict(used))
    for key, value in _flat(config_to_dict(preset(name))).items():
        if value is not None and value != in_use[key]:
            found[f"--idu.{key.replace('_', '-')}"] = {"preset": value, "used": in_use[key]}
    dtype = found.get("--idu.editor.dtype")
    if dtype is not None and dtype["preset"] in HALF_PRECISION and dtype["used"] == "float32" \
            and used.editor.device == "cpu":
        dtype["why"] = CPU_FLOAT32
    return found


def _flat(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def preset(name: str) -> IDUConfig:
    """A fresh copy of the named preset (callers may change it freely)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], loss=dataclasses.replace(PRESETS[name].loss),
                               editor=dataclasses.replace(PRESETS[name].editor))
