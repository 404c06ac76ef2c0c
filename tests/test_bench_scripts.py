"""Smoke tests of the benchmark scripts at toy sizes, and checks of the helpers their numbers rely on."""

from __future__ import annotations

import io
import json
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from rich.console import Console

from splat2splat.gaussians.rasterize import choose_rasterizer

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture
def scripts_on_path(monkeypatch):
    """The scripts import their shared helpers as a sibling module, like ``python scripts/bench_speed.py`` does."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    yield
    for name in ("bench_speed", "bench_common", "bench_editor_options", "bench_rasterizer", "bench_loss",
                 "bench_train_cli"):
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def tiny_model_folder(tmp_path_factory) -> Path:
    """Built once here (the main test builds it through --random-model-folder, the others reuse it)."""
    return tmp_path_factory.mktemp("bench") / "tiny-ip2p"


def test_bench_speed_main_writes_all_results_at_toy_sizes(scripts_on_path, tmp_path, tiny_model_folder):
    import bench_speed

    config = bench_speed.BenchSpeedConfig(
        device="cpu", output=tmp_path / "speed.json", markdown=True, random_model="tiny",
        random_model_folder=tiny_model_folder, image_size=32, steps=1, editor_repeats=2, gaussian_counts=(200,),
        train_image_sizes=(32,), train_steps=2, train_warmup=1)
    output = io.StringIO()
    results = bench_speed.main(config, command="python scripts/bench_speed.py --toy",
                               console=Console(file=output, width=200))

    assert json.loads((tmp_path / "speed.json").read_text()) == json.loads(json.dumps(results))
    record = results["record"]
    assert record["command"] == "python scripts/bench_speed.py --toy"
    assert record["device"]["type"] == "cpu" and record["machine"]["cpu"] and record["machine"]["cpu_cores"] >= 1
    assert record["versions"]["torch"] == torch.__version__
    assert record["versions"]["diffusers"] and record["versions"]["gsplat"] and record["date"]
    assert "commit" in record["code"] and "modified_files" in record["code"]

    editor = results["editor"]
    assert editor["unet_evaluations_per_edit"] == 1 and editor["image_size"] == 32 and editor["dtype"] == "float32"
    for name in ("ours", "stock"):
        assert len(editor[name]["seconds"]) == 2 and all(s > 0 for s in editor[name]["seconds"])
        assert len(editor[name]["cpu_seconds"]) == 2 and editor[name]["median_cpu_s"] > 0
        assert editor[name]["min_s"] <= editor[name]["median_s"] <= editor[name]["max_s"]
        assert editor[name]["peak_memory_bytes"] >= 0
    assert editor["latency_ratio_ours_over_stock"] == pytest.approx(editor["ours"]["median_s"] / editor["stock"]["median_s"])

    (row,) = results["train_step"]["rows"]
    assert (row["gaussians"], row["image_size"]) == (200, 32)
    assert row["rasterizer"] == choose_rasterizer("auto", torch.device("cpu"))  # cpp where a compiler is found
    assert len(row["seconds"]) == 2 and row["median_s"] > 0 and row["median_cpu_s"] > 0
    assert results["train_step"]["memory_method"] == results["editor"]["memory_method"]

    printed = output.getvalue()
    assert "| Gaussians | image px | median wall s/step" in printed and "| ours (in2n partial DDIM) | 32 | 1 |" in printed


def test_editor_options_are_timed_against_the_default_in_one_run(scripts_on_path, tmp_path, tiny_model_folder):
    import bench_speed

    config = bench_speed.BenchSpeedConfig(
        device="cpu", output=tmp_path / "options.json", skip_editor=True, skip_train=True, random_model="tiny",
        random_model_folder=tiny_model_folder, image_size=32, steps=2, editor_repeats=3,
        editor_options=("channels-last", "attention=math+batch=2", "attention=efficient", "dtype=bfloat16"))
    printed = io.StringIO()
    results = bench_speed.main(config, console=Console(file=printed, width=200))
    rows = results["editor_options"]["rows"]
    # No efficient-attention kernel on a CPU: reported as refused, and the rest still timed.
    (refusal,) = results["editor_options"]["refused"]
    assert refusal["option"] == "attention=efficient" and "PyTorch has no efficient attention" in refusal["refused"]
    assert "editor option attention=efficient refused: --idu.editor.attention efficient" in printed.getvalue()
    assert [row["option"] for row in rows] == ["default", "channels-last", "attention=math+batch=2", "dtype=bfloat16"]
    assert [row["views_per_call"] for row in rows] == [1, 1, 2, 1]
    for row in rows:
        assert len(row["seconds_per_view"]) == 3 and row["median_s_per_view"] > 0 and row["first_edit_s"] > 0
        assert row["speedup_over_default"] == pytest.approx(rows[0]["median_s_per_view"] / row["median_s_per_view"])
        assert row["held_bytes"] is None and row["peak_bytes"] >= 0  # held: GPU memory only
    # The same edit up to rounding; bfloat16 rounds far more (and is measured, not hidden).
    assert rows[0]["max_abs_difference"] == 0 and rows[1]["max_abs_difference"] < 1e-4
    assert rows[2]["max_abs_difference"] < 1e-4 and 1e-4 < rows[3]["max_abs_difference"] < 0.5


def test_unknown_editor_options_are_refused(scripts_on_path):
    import bench_editor_options

    from splat2splat.edit.ip2p import IP2PConfig

    option = bench_editor_options.parse_option("compile=inductor+channels-last+batch=3", IP2PConfig())
    assert (option.config.compile, option.config.channels_last, option.batch) == ("inductor", True, 3)
    for name in ("turbo", "batch=0", "compile="):
        with pytest.raises(SystemExit, match="unknown editor option"):
            bench_editor_options.parse_option(name, IP2PConfig())


def test_both_editors_evaluate_the_unet_equally_often(scripts_on_path, tiny_model_folder):
    """The fairness rule of the comparison: --steps UNet evaluations per edit, on a batch of 3, for each editor."""
    import bench_speed

    if not (tiny_model_folder / "model_index.json").exists():
        from splat2splat.testing.tiny_ip2p import build_tiny_ip2p

        build_tiny_ip2p(tiny_model_folder)
    config = bench_speed.BenchSpeedConfig(device="cpu", image_size=32, steps=3)
    images = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    runners = bench_speed.editor_runners(config, str(tiny_model_folder), torch.device("cpu"), images[0], images[1])
    batches: list[int] = []
    handle = runners.unet.register_forward_hook(lambda module, args, output: batches.append(len(args[0])))
    try:
        for name in ("ours", "stock"):
            batches.clear()
            runners.run(name, seed=0)
            assert batches == [3, 3, 3], name
    finally:
        handle.remove()


def test_device_defaults_fill_only_what_was_not_given(scripts_on_path):
    import bench_speed

    config = bench_speed.with_device_defaults(bench_speed.BenchSpeedConfig(steps=7), torch.device("cpu"))
    assert config.steps == 7 and config.image_size == 128 and config.editor_repeats == 3 and config.gaussian_counts == (1_000, 5_000, 20_000)
    gpu = bench_speed.with_device_defaults(bench_speed.BenchSpeedConfig(), torch.device("cuda"))
    assert gpu.steps == 20 and gpu.image_size == 512 and gpu.train_image_sizes == (256, 512, 1024)


def test_editors_alternate_which_runs_first(scripts_on_path):
    import bench_speed

    orders = [bench_speed.alternating_order(repeat) for repeat in range(4)]
    assert orders == [("ours", "stock"), ("stock", "ours")] * 2


def test_random_splat_sizes_match_the_nearest_neighbour_init(scripts_on_path):
    """The closed-form size stands in for init_splats' 3-nearest-neighbour distance; check it on real points."""
    import bench_speed

    from splat2splat.gaussians.model import knn_mean_distance

    splats = bench_speed.random_splats(4000, sh_degree=3, generator=torch.Generator().manual_seed(0))
    measured = knn_mean_distance(splats["means"].detach()).mean()
    assert float(torch.exp(splats["scales"][0, 0].detach())) == pytest.approx(float(measured), rel=0.1)
    assert splats["shN"].shape == (4000, 15, 3)


def test_peak_memory_sees_a_large_allocation(scripts_on_path):
    import bench_common

    device = torch.device("cpu")
    if bench_common.memory_method(device) != bench_common.CPU_HWM_METHOD:
        pytest.skip("the RSS high-water mark cannot be reset on this system")
    with bench_common.measure_peak_memory(device) as peak:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del block
    assert peak.bytes >= 48 * 2**20


def test_every_option_is_explained_in_help(scripts_on_path, capsys):
    import bench_speed
    import tyro

    with pytest.raises(SystemExit):
        tyro.cli(bench_speed.BenchSpeedConfig, args=["--help"])
    help_text = capsys.readouterr().out
    for field in fields(bench_speed.BenchSpeedConfig):
        assert f"--{field.name.replace('_', '-')}" in help_text
    assert "UNet evaluations per edit" in help_text


def test_bench_loss_times_the_kernel_and_the_reference_loss_side_by_side(scripts_on_path, tmp_path):
    from splat2splat.kernels.ssim import cpu_ssim_extension

    if cpu_ssim_extension() is None:
        pytest.skip("the C++ SSIM kernel does not build here")
    import bench_loss

    results = bench_loss.main(bench_loss.BenchLoss(sizes=(24,), rounds=1, calls=2, output=tmp_path / "loss.json"))
    (row,) = results["rows"]
    assert (row["size"], row["threads"]) == (24, 1)
    for path in ("kernel", "torch"):
        assert row[path]["forward_s"] > 0 and row[path]["backward_s"] > 0
    assert row["torch"]["max_diff_loss"] < 1e-6 and 0 < row["torch"]["max_rel_diff_grad"] < 1e-4
    assert json.loads((tmp_path / "loss.json").read_text())["rows"] == json.loads(json.dumps(results["rows"]))


def test_bench_rasterizer_times_both_cpu_rasterizers_side_by_side(scripts_on_path, tmp_path):
    if choose_rasterizer("auto", torch.device("cpu")) != "cpp":
        pytest.skip("the C++ rasterizer does not build here")
    import bench_rasterizer

    args = bench_rasterizer.BenchRasterizer(sizes=(32,), counts=(300,), threads=(1,), repeats=1, demo_size=24,
                                            demo_steps=1, baseline=True, output=tmp_path / "raster.json")
    results = bench_rasterizer.main(args)
    (demo,) = results["demo_rows"]  # the demo scene's train_step with each rasterizer
    assert (demo["size"], demo["threads"]) == (24, 1)
    assert all(demo[backend][key] > 0 for backend in ("torch", "cpp", "cpp-v2") for key in ("step_s", "cpu_s"))
    (row,) = results["rows"]
    assert (row["size"], row["gaussians"], row["threads"]) == (32, 300, 1) and row["pairs"] > 0
    for backend in ("torch", "cpp", "cpp-v2"):
        assert all(row[backend][key] > 0 for key in ("forward_s", "backward_s", "step_s", "step_cpu_s"))
    assert row["max_abs_diff_image"] < 1e-5 and row["max_rel_diff_grads"] < 1e-4
    assert json.loads((tmp_path / "raster.json").read_text())["rows"] == json.loads(json.dumps(results["rows"]))


def test_bench_train_cli_runs_the_train_command_with_both_rasterizers(scripts_on_path, tmp_path):
    if choose_rasterizer("auto", torch.device("cpu")) != "cpp":
        pytest.skip("the C++ rasterizer does not build here")
    import bench_train_cli

    args = bench_train_cli.BenchTrainCli(image_size=24, cpp_steps=3, torch_steps=2, rounds=1,
                                         output=tmp_path / "cli.json")
    (row,) = bench_train_cli.main(args)["rows"]
    assert row["round"] == 1 and row["cpp"] > 0 and row["torch"] > 0
    assert json.loads((tmp_path / "cli.json").read_text())["rows"] == [row]
