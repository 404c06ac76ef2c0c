"""`splat2splat edit` end to end on the demo scene: tiny InstructPix2Pix, both backends, Ctrl-C and --resume."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import pytest
import torch

from splat2splat.cli import entrypoint
from splat2splat.data.demo import DemoConfig, write_demo_scene
from splat2splat.edit.presets import PRESETS
from splat2splat.commands.edit import parse as parse_edit_args, run as run_edit
from splat2splat.checkpoint import load_checkpoint_file
from splat2splat.io import load_image, read_json
from splat2splat.runner import Interrupted
from tests.cli_args import for_backend

# Small and fast: 16 views at 32 px, 30 initial steps, an edit every step for 16 steps.
NERF_TINY = ["--nerf.rays-per-batch", "256", "--nerf.samples-per-ray", "16", "--nerf.no-unbounded",
             "--nerf.plane-resolutions", "16", "32", "--nerf.plane-features", "4", "--nerf.hidden-dim", "16",
             "--nerf.appearance-dim", "4", "--nerf.occupancy-resolution", "16", "--nerf.render-chunk", "2048"]


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory) -> Path:
    return write_demo_scene(tmp_path_factory.mktemp("edit-demo"), DemoConfig(n_views=16, image_size=32, n_points=800))


def edit_args(data: Path, output: Path, model: Path, *extra: str, steps: int = 16) -> list[str]:
    return for_backend(["--preset", "in2n-tiny", "--data", str(data), "--prompt", "make it autumn", "--output",
                        str(output), "--model", str(model), "--device", "cpu", "--init-steps", "30", "--idu.steps",
                        str(steps), "--idu.edit-rate", "1", "--idu.editor.dtype", "float32",
                        "--idu.editor.diffusion-steps", "3", "--gaussians.strategy.kind", "none", "--checkpoint-every",
                        "5", "--eval-every", "8", "--turntable-frames", "4", "--video-format", "gif", *extra])


def file_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("backend", ["gaussian", "nerf"])
def test_edit_end_to_end_with_the_tiny_model(small_scene, tiny_ip2p_folder, tmp_path, backend):
    """The same command drives either backend: every view is edited, outputs exist and load, inputs untouched."""
    inputs_before = file_digests(small_scene)
    output = tmp_path / "run"
    extra = ["--backend", backend, *(NERF_TINY if backend == "nerf" else [])]
    entrypoint(["edit", *edit_args(small_scene, output, tiny_ip2p_folder, *extra)])

    record = read_json(output / "run.json")
    assert record["backend"] == backend and record["prompt"] == "make it autumn" and record["preset"] == "in2n-tiny"
    assert record["views_edited"] == record["views"] == 14 and record["edits"] == 16
    assert set(record["seconds"]) >= {"render", "edit", "train", "outputs"}
    assert (output / "before_after.png").is_file() and (output / "turntable.gif").is_file()
    edited = sorted((output / "edited").glob("*.png"))
    assert len(edited) == 14 and load_image(edited[0]).shape == (32, 32, 3)
    checkpoint = load_checkpoint_file(output / "checkpoint.pt")
    assert checkpoint["backend"] == backend and checkpoint["idu"]["step"] == 16
    assert checkpoint["backend_state"]["step"] == 30 + 16  # initial training, then the edit's steps
    if backend == "gaussian":
        from splat2splat.data.readers import load_dataset
        from splat2splat.gaussians.ply import load_ply

        splats = load_ply(output / "scene.ply", load_dataset(small_scene).normalization)
        assert len(splats["means"]) == 800
        # The edited images are the editor's, not the originals.
        original = load_image(small_scene / "images" / edited[0].name)
        assert not (load_image(edited[0]) == original).all()
    else:
        assert (output / "points.ply").is_file() or any(output.glob("*.ply"))
    assert file_digests(small_scene) == inputs_before


def test_a_short_edit_keeps_only_edited_views_and_a_plain_log_of_the_run(small_scene, tiny_ip2p_folder, tmp_path):
    """edited/ holds the views the edit changed (3 of 14 here); run.log and metrics.jsonl record the run."""
    output = tmp_path / "run"
    entrypoint(["edit", *edit_args(small_scene, output, tiny_ip2p_folder, steps=3)])
    record = read_json(output / "run.json")
    assert record["views_edited"] == 3 and len(list((output / "edited").glob("*.png"))) == 3
    assert record["preset_settings"]["preset"] == "in2n-tiny" and record["preset_settings"]["steps"] == 3
    assert record["departures_from_preset"]["--idu.steps"] == {"preset": 30000, "used": 3}
    log = (output / "run.log").read_text()
    assert "initial scene: step 30/30" in log and "edit: make it autumn: step 3/3" in log and "edit finished" in log
    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    steps = [(line["phase"], line["step"]) for line in lines if line["kind"] == "step"]
    assert steps == [("initial scene", k) for k in range(1, 31)] + [("edit", k) for k in (1, 2, 3)]
    assert all(isinstance(line["loss"], float) for line in lines if line["kind"] == "step")


def test_logger_tensorboard_without_its_extra_is_refused_before_any_work(small_scene, tiny_ip2p_folder, tmp_path,
                                                                          capsys):
    try:
        import tensorboard  # noqa: F401
        pytest.skip("tensorboard is installed here")
    except ImportError:
        pass
    output = tmp_path / "run"
    with pytest.raises(SystemExit):
        entrypoint(["edit", *edit_args(small_scene, output, tiny_ip2p_folder, "--logger", "tensorboard")])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'splat2splat[tensorboard]'" in err
    assert not output.exists()


def test_interrupted_edit_resumes_to_the_uninterrupted_result(small_scene, tiny_ip2p_folder, tmp_path):
    reference = tmp_path / "reference"
    run_edit(parse_edit_args(edit_args(small_scene, reference, tiny_ip2p_folder)))

    interrupted = tmp_path / "interrupted"

    def press_ctrl_c(step: int) -> None:
        if step == 7:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        run_edit(parse_edit_args(edit_args(small_scene, interrupted, tiny_ip2p_folder)), on_step=press_ctrl_c)
    saved = load_checkpoint_file(interrupted / "checkpoint.pt")
    assert saved["idu"]["step"] == 7 and not (interrupted / "run.json").exists()

    # --resume needs nothing but the folder: data, prompt and settings come from the checkpoint.
    run_edit(parse_edit_args(["--output", str(interrupted), "--resume"]))
    a, b = load_checkpoint_file(reference / "checkpoint.pt"), load_checkpoint_file(interrupted / "checkpoint.pt")
    for key, value in a["backend_state"]["splats"].items():
        assert torch.equal(value, b["backend_state"]["splats"][key]), key
    for x, y in zip(a["dataset_edits"]["current"], b["dataset_edits"]["current"]):
        assert torch.equal(x, y)
    assert (reference / "scene.ply").read_bytes() == (interrupted / "scene.ply").read_bytes()


def test_interrupted_initial_training_resumes(small_scene, tiny_ip2p_folder, tmp_path):
    output = tmp_path / "run"

    def press_ctrl_c(step: int) -> None:
        if step == 10:
            os.kill(os.getpid(), signal.SIGINT)

    cmd = parse_edit_args(edit_args(small_scene, output, tiny_ip2p_folder, steps=2))
    import splat2splat.edit.job as run_module

    original_train_scene = run_module.train_scene
    run_module.train_scene = lambda *a, **k: original_train_scene(*a, **{**k, "on_step": press_ctrl_c})
    try:
        with pytest.raises(Interrupted):
            run_edit(cmd)
    finally:
        run_module.train_scene = original_train_scene
    assert load_checkpoint_file(output / "initial" / "checkpoint.pt")["backend_state"]["step"] == 10
    record = run_edit(parse_edit_args(["--output", str(output), "--resume"]))
    assert record["scene_steps"] == 30 + 2


def test_every_preset_parses_and_fields_override(tmp_path):
    from splat2splat.devices import resolve_device
    from splat2splat.edit.presets import preset_on

    for name in PRESETS:
        cmd = parse_edit_args(["--preset", name, "--data", "x", "--prompt", "p"])
        assert cmd.preset == name and cmd.idu == preset_on(name, resolve_device("auto").type)
    cmd = parse_edit_args(["--preset", "in2n", "--data", "x", "--prompt", "p", "--idu.loss.lpips", "0.5",
                           "--idu.editor.guidance-scale", "9"])
    assert cmd.idu.loss.lpips == 0.5 and cmd.idu.editor.guidance_scale == 9
    assert cmd.idu.editor.dtype == "autocast" and PRESETS["in2n"].loss.lpips == 1.0  # the preset itself is untouched


@pytest.mark.parametrize("args, message", [
    (["--prompt", "p"], "--data is required"),
    (["--data", "{data}"], "--prompt is required"),
    (["--data", "{data}", "--prompt", "p", "--preset", "nope"], "unknown preset"),
    (["--output", "{tmp}/nothing", "--resume"], "no interrupted edit"),
    (["--data", "{tmp}/missing", "--prompt", "p", "--output", "{tmp}/o"], "missing"),
])
def test_bad_edit_input_is_one_clear_line(small_scene, tmp_path, capsys, args, message):
    args = [a.format(data=small_scene, tmp=tmp_path) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["edit", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_lpips_preset_without_backbone_weights_fails_clearly(small_scene, tiny_ip2p_folder, tmp_path, capsys,
                                                             monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    args = edit_args(small_scene, tmp_path / "run", tiny_ip2p_folder)
    args[args.index("in2n-tiny")] = "in2n"
    with pytest.raises(SystemExit):
        entrypoint(["edit", *args])
    err = capsys.readouterr().err
    assert "LPIPS" in err or "lpips" in err
    assert not (tmp_path / "run" / "initial").exists()  # failed before training the initial scene


def test_existing_run_is_not_overwritten(small_scene, tiny_ip2p_folder, tmp_path, capsys):
    output = tmp_path / "run"
    output.mkdir()
    (output / "command.json").write_text("{}")
    with pytest.raises(SystemExit):
        entrypoint(["edit", *edit_args(small_scene, output, tiny_ip2p_folder)])
    assert "--resume" in capsys.readouterr().err and (output / "command.json").read_text() == "{}"


@pytest.mark.parametrize("backend", ["gaussian", "nerf"])
def test_lpips_presets_train_with_an_explicitly_random_backbone(small_scene, tiny_ip2p_folder, tmp_path, backend):
    """in2n's L1 + LPIPS loss runs on both backends (NeRF on in2n's 32x32 patches); weights random in tests."""
    from splat2splat.edit.lpips_loss import load_lpips

    extra = ["--backend", backend]
    if backend == "nerf":
        extra += [*NERF_TINY, "--nerf.rays-per-batch", "1024"]  # one 32x32 patch per step
    args = edit_args(small_scene, tmp_path / "run", tiny_ip2p_folder, *extra, steps=3)
    args[args.index("in2n-tiny")] = "in2n"
    record = run_edit(parse_edit_args(args), lpips=load_lpips("alex", random_backbone=True))
    assert record["steps"] == 3 and record["last_step"]["lpips"] > 0 and record["last_step"]["l1"] > 0
    checkpoint = load_checkpoint_file(tmp_path / "run" / "checkpoint.pt")
    if backend == "nerf":
        assert checkpoint["backend_state"]["config"]["patch_size"] == 32


def lpips_edit_args(scene: Path, output: Path, model: Path, *extra: str, steps: int = 16) -> list[str]:
    """in2n-tiny with in2n's LPIPS term on 16 px patches (VGG takes them; AlexNet needs 31 px) of 32 px views."""
    return edit_args(scene, output, model, "--idu.loss.lpips", "1", "--idu.lpips-net", "vgg",
                     "--idu.lpips-patch-size", "16", "--idu.lpips-patches", "3", *extra, steps=steps)


@pytest.mark.parametrize("throughput", [[], ["--idu.edit-batch", "2", "--idu.edit-lag", "2"]])
def test_interrupted_patch_lpips_edit_resumes_to_the_uninterrupted_result(small_scene, tiny_ip2p_folder, tmp_path,
                                                                         throughput):
    """The patch positions come from the scene's generator, which the checkpoint holds: a resumed run draws the
    same patches as the uninterrupted one, serial or batched and lagged (and patches and whole images give
    different scenes)."""
    from splat2splat.edit.lpips_loss import load_lpips

    torch.manual_seed(0)
    lpips = load_lpips("vgg", random_backbone=True)
    reference, interrupted, whole = tmp_path / "reference", tmp_path / "interrupted", tmp_path / "whole"
    record = run_edit(parse_edit_args(lpips_edit_args(small_scene, reference, tiny_ip2p_folder, *throughput,
                                                      steps=10)), lpips=lpips)
    assert record["command"]["idu"]["lpips_on"] == "patches" and record["last_step"]["lpips"] > 0

    def press_ctrl_c(step: int) -> None:
        if step == 6:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        run_edit(parse_edit_args(lpips_edit_args(small_scene, interrupted, tiny_ip2p_folder, *throughput, steps=10)),
                 lpips=lpips, on_step=press_ctrl_c)
    run_edit(parse_edit_args(["--output", str(interrupted), "--resume"]), lpips=lpips)
    run_edit(parse_edit_args(lpips_edit_args(small_scene, whole, tiny_ip2p_folder, *throughput, "--idu.lpips-on",
                                             "image", steps=10)), lpips=lpips)
    a, b, c = (load_checkpoint_file(run / "checkpoint.pt")["backend_state"] for run in (reference, interrupted, whole))
    for key, value in a["splats"].items():
        assert torch.equal(value, b["splats"][key]), key
    assert torch.equal(a["generator"], b["generator"])
    assert not torch.equal(a["splats"]["sh0"], c["splats"]["sh0"])


@pytest.mark.parametrize("args, message", [
    (["--backend", "nerf", *NERF_TINY, "--idu.lpips-on", "image"], "trains on ray patches"),
    (["--idu.lpips-patch-size", "8"], "needs patches of at least 16 px"),
    (["--idu.lpips-patch-size", "40"], "smaller than the 40x40 LPIPS patches"),
    (["--backend", "nerf", *NERF_TINY], "holds no 16x16 LPIPS patch"),
])
def test_lpips_settings_the_scene_cannot_honour_are_one_line_before_any_work(small_scene, tiny_ip2p_folder, tmp_path,
                                                                            capsys, args, message):
    output = tmp_path / "run"
    args = lpips_edit_args(small_scene, output, tiny_ip2p_folder, *args)
    if "nerf" in args:
        args += ["--nerf.rays-per-batch", "1024" if "image" in args else "200"]
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["edit", *args])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (output / "initial").exists()


def test_edit_with_the_live_viewer(small_scene, tiny_ip2p_folder, tmp_path):
    pytest.importorskip("viser", reason="viser is not installed")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    record = run_edit(parse_edit_args(edit_args(small_scene, tmp_path / "run", tiny_ip2p_folder, "--viewer",
                                                "--viewer-port", str(port), "--viewer-every", "2", steps=4)))
    assert record["steps"] == 4


def test_viewer_without_its_extra_is_refused_before_any_work(small_scene, tiny_ip2p_folder, tmp_path, capsys,
                                                             monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "viser", None)  # `import viser` fails as when the extra is not installed
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["edit", *edit_args(small_scene, tmp_path / "run", tiny_ip2p_folder, "--viewer")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --viewer needs") and "pip install -e .[viewer]" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()  # no command.json, nothing trained or loaded


@pytest.fixture(scope="module")
def trained_run(small_scene, tmp_path_factory) -> Path:
    from splat2splat.gaussians.backend import GaussianConfig, StrategyConfig
    from splat2splat.commands.train import TrainCommand, run as run_train

    output = tmp_path_factory.mktemp("trained") / "run"
    run_train(TrainCommand(data=small_scene, output=output, steps=20, eval_every=0,
                    scene=GaussianConfig(sh_degree=1, sh_degree_interval=5, strategy=StrategyConfig(kind="none"))))
    return output


def test_edit_starts_from_a_train_checkpoint(small_scene, tiny_ip2p_folder, trained_run, tmp_path):
    output = tmp_path / "run"
    record = run_edit(parse_edit_args(edit_args(small_scene, output, tiny_ip2p_folder, "--init",
                                                str(trained_run / "checkpoint.pt"), steps=2)))
    assert record["scene_steps"] == 20 + 2 and not (output / "initial").exists()


def test_edit_starts_from_an_inria_ply_in_the_original_frame(small_scene, tiny_ip2p_folder, trained_run, tmp_path):
    from splat2splat.data.readers import load_dataset
    from splat2splat.scene_loading import load_scene

    dataset = load_dataset(small_scene)
    imported = load_scene(trained_run / "scene.ply", dataset)
    trained = load_scene(trained_run / "checkpoint.pt", dataset)
    assert imported.active_sh_degree == 1  # the file's degree, not a restarted SH schedule
    camera = dataset.cameras[[dataset.eval_indices[0]]]
    assert torch.allclose(imported.render(camera)[0], trained.render(camera)[0], atol=1e-5)

    record = run_edit(parse_edit_args(edit_args(small_scene, tmp_path / "run", tiny_ip2p_folder, "--init",
                                                str(trained_run / "scene.ply"), steps=2)))
    # A PLY counts as converged: the edit continues the scene's schedules from their ends (30000 steps).
    assert record["scene_steps"] == 30_000 + 2 and record["views_edited"] == 2


def test_a_ply_cannot_start_the_nerf_backend(small_scene, tiny_ip2p_folder, trained_run, tmp_path, capsys):
    with pytest.raises(SystemExit):
        entrypoint(["edit", *edit_args(small_scene, tmp_path / "run", tiny_ip2p_folder, "--backend", "nerf",
                                       "--init", str(trained_run / "scene.ply"))])
    assert "cannot start --backend nerf" in capsys.readouterr().err
