"""Every preset is its reference as the reference's code runs it: a tiny edit with each preset writes run.json,
whose preset settings are checked value by value against the table below (file and line of each value)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from splat2splat.data.demo import DemoConfig, write_demo_scene
from splat2splat.edit.presets import CPU_FLOAT32, PRESETS
from splat2splat.commands.edit import parse as parse_edit_args, run as run_edit
from splat2splat.io import read_json

IN2N = "ayaanzhaque/instruct-nerf2nerf@2c0d385"
IGS2GS = "cvachha/instruct-gs2gs@5890bab"
SPLATFACTO = "nerfstudio splatfacto.py@05ce76db"

IN2N_COMMON = {
    "schedule": ("in2n", f"{IN2N} in2n/in2n_pipeline.py:46-48: one view every 10 steps"),
    "edit_order": ("random-permutation", f"{IN2N} in2n/in2n_pipeline.py:92-95,137 cycle(range(N)) over the positions "
                                         "of the cached batch, filled by nerfstudio data/utils/dataloaders.py "
                                         "CacheDataloader as random.sample(range(N), k=N)"),
    "edit_rate": (10, f"{IN2N} in2n/in2n_pipeline.py:46"),
    "edit_count": (1, f"{IN2N} in2n/in2n_pipeline.py:48"),
    "noise_range": ([0.02, 0.98], f"{IN2N} in2n/in2n_pipeline.py:52-55"),
    "editor.guidance_scale": (7.5, f"{IN2N} in2n/in2n_pipeline.py:42"),
    "editor.image_guidance_scale": (1.5, f"{IN2N} in2n/in2n_pipeline.py:44"),
    "editor.diffusion_steps": (20, f"{IN2N} in2n/in2n_pipeline.py:50"),
    "loss.l1": (1.0, f"{IN2N} in2n/in2n.py:55-57,64: L1Loss"),
    "loss.dssim": (0.0, f"{IN2N} in2n/in2n.py:61-69: no SSIM term"),
    "lpips_net": ("alex", f"{IN2N} in2n/in2n.py:59: torchmetrics LearnedPerceptualImagePatchSimilarity() (alex)"),
    "lpips_on": ("patches", f"{IN2N} in2n/in2n.py:66-69: LPIPS on the batch viewed as patch_size^2 patches"),
    "lpips_patch_size": (32, f"{IN2N} in2n/in2n.py:41 patch_size=32; in2n/in2n_config.py:45,88 patch_size=32"),
    "lpips_patches": (16, f"{IN2N} in2n/in2n_config.py:43,86: 16384 rays = 16 patches of 32x32"),
    "random_background": (False, "nerfacto renders over its own background; no random colour"),
}

# preset -> idu field -> (reference value, where the reference sets it)
REFERENCE = {
    "in2n": {
        **IN2N_COMMON,
        "steps": (15000, f"{IN2N} in2n/in2n_config.py:37 max_num_iterations"),
        "editor.dtype": ("autocast", f"{IN2N} in2n/ip2p.py:71 fp16 load, :89-91 unet/vae .float(); "
                                     "in2n/in2n_config.py:39 mixed_precision=True, :52 full precision"),
        "editor.offload": (False, f"{IN2N} in2n/ip2p.py:89-96: offload only without full precision"),
        "loss.lpips": (1.0, f"{IN2N} in2n/in2n_config.py:49 use_lpips=True; in2n/in2n.py:43 lpips_loss_mult"),
    },
    "in2n-small": {
        **IN2N_COMMON,
        "steps": (30000, f"{IN2N} in2n/in2n_config.py:80 max_num_iterations"),
        "editor.dtype": ("float16", f"{IN2N} in2n/in2n_config.py:95 ip2p_use_full_precision=False; in2n/ip2p.py:71"),
        "editor.offload": (True, f"{IN2N} in2n/ip2p.py:92-96 enable_model_cpu_offload"),
        "loss.lpips": (1.0, f"{IN2N} in2n/in2n_config.py:92 use_lpips=True"),
    },
    "in2n-tiny": {
        **IN2N_COMMON,
        "steps": (30000, f"{IN2N} in2n/in2n_config.py:123 max_num_iterations"),
        "editor.dtype": ("float16", f"{IN2N} in2n/in2n_config.py:138 ip2p_use_full_precision=False"),
        "editor.offload": (True, f"{IN2N} in2n/ip2p.py:92-96 enable_model_cpu_offload"),
        "loss.lpips": (0.0, f"{IN2N} in2n/in2n_config.py:135 use_lpips=False"),
    },
    "igs2gs": {
        "schedule": ("igs2gs", f"{IGS2GS} igs2gs/igs2gs_pipeline.py:106-147: one view per step, trained on"),
        "edit_order": ("dataset", f"{IGS2GS} igs2gs/igs2gs_pipeline.py:106-147: views 0..N-1 of the full-image "
                                  "data manager, in order"),
        "steps": (7500, f"{IGS2GS} igs2gs/igs2gs_config.py:45 max_num_iterations"),
        "edit_rate": (2500, f"{IGS2GS} igs2gs/igs2gs_pipeline.py:49 gs_steps"),
        "noise_range": ([0.70, 0.98], f"{IGS2GS} igs2gs/igs2gs_pipeline.py:53-56"),
        "editor.guidance_scale": (12.5, f"{IGS2GS} igs2gs/igs2gs_pipeline.py:45"),
        "editor.image_guidance_scale": (1.5, f"{IGS2GS} igs2gs/igs2gs_pipeline.py:47"),
        "editor.diffusion_steps": (20, f"{IGS2GS} igs2gs/igs2gs_pipeline.py:51"),
        "editor.dtype": ("float16", f"{IGS2GS} igs2gs/igs2gs_pipeline.py:59; igs2gs/ip2p.py:72"),
        "editor.offload": (True, f"{IGS2GS} igs2gs/ip2p.py:90-97 enable_model_cpu_offload"),
        "loss.l1": (0.8, f"{IGS2GS} igs2gs/igs2gs.py:51-89 (override commented out) -> {SPLATFACTO}:855-871"),
        "loss.dssim": (0.2, f"{SPLATFACTO}:125 ssim_lambda=0.2"),
        "loss.lpips": (0.0, f"{IGS2GS} igs2gs/igs2gs.py:51-89: the LPIPS override is a string, not code"),
        "density_control": ("cull", f"{SPLATFACTO}:97,101,127,465: past stop_split_at, culling continues"),
        "random_background": (True, f"{SPLATFACTO} background_color='random'"),
    },
}

# What the tiny edit overrides on the command line (everything else must be the preset's own value).
OVERRIDES = {"steps": "3", "edit_rate": "1", "editor.diffusion_steps": "2"}


def field(settings: dict, dotted: str):
    for part in dotted.split("."):
        settings = settings[part]
    return settings


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return write_demo_scene(tmp_path_factory.mktemp("presets"), DemoConfig(n_views=8, image_size=32, n_points=300))


def test_the_table_covers_every_preset():
    assert set(REFERENCE) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_run_json_of_a_tiny_edit_holds_the_reference_values(name, scene, tiny_ip2p_folder, tmp_path):
    from splat2splat.edit.lpips_loss import load_lpips

    output = tmp_path / "run"
    overrides = [arg for key, value in OVERRIDES.items() for arg in (f"--idu.{key.replace('_', '-')}", value)]
    args = ["--preset", name, "--data", str(scene), "--prompt", "make it autumn", "--output", str(output),
            "--model", str(tiny_ip2p_folder), "--device", "cpu", "--init-steps", "5", *overrides,
            "--gaussians.strategy.kind", "none", "--checkpoint-every", "0", "--eval-every", "0",
            "--turntable-frames", "0"]
    lpips = load_lpips("alex", random_backbone=True) if PRESETS[name].loss.lpips > 0 else None
    run_edit(parse_edit_args(args), lpips=lpips)

    record = read_json(output / "run.json")
    assert record["preset"] == name
    preset_settings, used = record["preset_settings"], record["command"]["idu"]
    assert preset_settings["preset"] == name
    departed = record["departures_from_preset"]  # preset_settings are the settings used; the preset's beside them

    def as_preset(key: str):
        flag = f"--idu.{key.replace('_', '-')}"
        return departed[flag]["preset"] if flag in departed else field(preset_settings, key)

    for key, (value, source) in REFERENCE[name].items():
        assert as_preset(key) == pytest.approx(value), f"{name}.{key} differs from {source}"
        if key not in OVERRIDES and f"--idu.{key.replace('_', '-')}" not in departed:
            assert field(used, key) == field(preset_settings, key), f"{name}.{key} was not used as set"
    if PRESETS[name].editor.dtype == "float16":  # on this CPU: float32, recorded with the reason
        assert departed["--idu.editor.dtype"] == {"preset": "float16", "used": "float32", "why": CPU_FLOAT32}
    assert set(departed) == {f"--idu.{key.replace('_', '-')}" for key in OVERRIDES} | {"--idu.editor.model"} | \
        ({"--idu.editor.dtype"} if PRESETS[name].editor.dtype == "float16" else set())  # --model: the tiny model
    for key, value in OVERRIDES.items():
        assert str(field(used, key)) == value
    assert record["steps"] == 3
    views = sorted(record["edit_order"])
    assert len(views) == record["views"] == len(set(views))  # every training view once
    if PRESETS[name].edit_order == "dataset":
        assert record["edit_order"] == views
    else:  # the permutation of --idu.seed 0, not the dataset's order
        assert record["edit_order"] != views
        permutation = torch.randperm(len(views), generator=torch.Generator().manual_seed(0))
        assert record["edit_order"] == [views[i] for i in permutation.tolist()]


def test_on_the_cpu_a_half_precision_preset_runs_in_float32_unless_asked():
    from splat2splat.commands.edit import parse as parse_edit
    from splat2splat.edit.presets import CPU_FLOAT32, departures, preset_on

    assert preset_on("in2n-small", "cpu").editor.dtype == "float32"
    assert preset_on("in2n-small", "cuda").editor.dtype == "float16"
    assert preset_on("in2n", "cpu").editor.dtype == "autocast"  # not a half-precision preset
    base = ["--data", "d", "--prompt", "p", "--device", "cpu", "--preset", "igs2gs"]
    chosen = parse_edit(base)
    assert chosen.idu.editor.dtype == "float32"
    asked = parse_edit([*base, "--idu.editor.dtype", "float16"])
    assert asked.idu.editor.dtype == "float16"
    # run.json's record: the departure, why the program made it, and nothing where the preset was followed.
    used = dataclasses.replace(chosen.idu, editor=dataclasses.replace(chosen.idu.editor, device="cpu"))
    assert departures("igs2gs", used) == {"--idu.editor.dtype": {"preset": "float16", "used": "float32",
                                                                  "why": CPU_FLOAT32}}
    kept = dataclasses.replace(asked.idu, steps=10, editor=dataclasses.replace(asked.idu.editor, device="cpu"))
    assert departures("igs2gs", kept) == {"--idu.steps": {"preset": 7500, "used": 10}}
