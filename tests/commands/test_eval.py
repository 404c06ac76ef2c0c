"""`splat2splat eval` end to end on a cheap edit run (tint editor, tiny random CLIP), and its one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from splat2splat.cli import entrypoint
from splat2splat.data.demo import DemoConfig, write_demo_scene
from splat2splat.commands.edit import parse as parse_edit_args, run as run_edit
from splat2splat.testing.editors import TintEditor
from splat2splat.errors import InputError
from splat2splat.io import load_image, read_json

SOURCE, TARGET = "a photo of a table", "a photo of an orange table"


def edit_args(data: Path, output: Path, *extra: str) -> list[str]:
    """A seconds-long edit: 16 views at 32 px, 30 initial steps, 8 edit steps, no turntable."""
    return ["--preset", "in2n-tiny", "--data", str(data), "--prompt", "make it orange", "--output", str(output),
            "--device", "cpu", "--init-steps", "30", "--idu.steps", "8", "--idu.edit-rate", "1",
            "--gaussians.strategy.kind", "none", "--turntable-frames", "0", "--checkpoint-every", "0",
            "--eval-every", "0", *extra]


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory) -> Path:
    return write_demo_scene(tmp_path_factory.mktemp("eval-demo"), DemoConfig(n_views=16, image_size=32, n_points=800))


@pytest.fixture(scope="module")
def edit_run(small_scene, tiny_clip_folder, tmp_path_factory) -> Path:
    """A finished edit whose run.json got the CLIP numbers through --eval.captions."""
    torch.set_num_threads(1)
    output = tmp_path_factory.mktemp("eval-run") / "run"
    run_edit(parse_edit_args(edit_args(small_scene, output, "--eval.captions", SOURCE, TARGET,
                                       "--eval.clip-model", str(tiny_clip_folder), "--eval.frames", "6")),
             editor=TintEditor())
    return output


def eval_args(tiny_clip_folder: Path, output: Path, *extra: str, frames: int = 6) -> list[str]:
    return ["--source-caption", SOURCE, "--target-caption", TARGET, "--clip-model", str(tiny_clip_folder),
            "--frames", str(frames), "--sheet-frames", "3", "--device", "cpu", "--output", str(output), *extra]


def test_edit_with_eval_captions_adds_the_numbers_to_run_json(edit_run, tiny_clip_folder, tmp_path):
    record = read_json(edit_run / "run.json")
    numbers = record["eval"]
    assert numbers["source_caption"] == SOURCE and numbers["target_caption"] == TARGET and numbers["frames"] == 6
    assert numbers["resize"] == "in2n" and set(numbers["clip"]) == {"direction_similarity", "direction_consistency",
                                                                     "edit_direction_consistency"}
    assert -1 <= numbers["clip"]["direction_similarity"] <= 1 and -1 <= numbers["clip"]["direction_consistency"] <= 1
    assert numbers["heldout"]["views"] == 2 and (edit_run / "eval" / "eval.md").is_file()
    assert record["metrics"]["views_edited"] == 8  # the rest of run.json is as the edit wrote it
    # The command computes the same numbers from the run folder.
    entrypoint(["eval", str(edit_run), *eval_args(tiny_clip_folder, tmp_path / "again")])
    again = read_json(tmp_path / "again" / "eval.json")
    for key, value in numbers["clip"].items():
        assert again["runs"][0]["clip"][key] == pytest.approx(value, abs=1e-5), key


def test_eval_compares_runs_in_one_report(edit_run, tiny_clip_folder, tmp_path):
    """The run, its edited checkpoint as a scene file, and the original scene against itself, in one table."""
    original = edit_run / "initial" / "checkpoint.pt"
    entrypoint(["eval", str(edit_run), str(edit_run / "checkpoint.pt"), str(original),
                *eval_args(tiny_clip_folder, tmp_path / "report", "--original", str(original), frames=7)])
    record = read_json(tmp_path / "report" / "eval.json")
    run, as_file, unedited = record["runs"]
    assert [r["name"] for r in record["runs"]] == ["run", "run-2", "initial"]
    assert record["clip_model"] == str(tiny_clip_folder) and record["source_caption"] == SOURCE
    assert record["preprocessing"]["resize"] == "in2n" and "transformers" in record["versions"]
    per_frame = run["clip"]["per_frame"]
    assert len(per_frame["direction_similarity"]) == 7 and len(per_frame["direction_consistency"]) == 6
    assert len(per_frame["edit_direction_consistency"]) == 6
    assert (run["path"]["frames"], run["path"]["width"], run["path"]["height"]) == (7, 32, 32)
    assert torch.tensor(run["path"]["camtoworlds"]).shape == (7, 4, 4)
    # One scene, two ways of naming it: the same numbers.
    assert as_file["clip"]["direction_similarity"] == pytest.approx(run["clip"]["direction_similarity"], abs=1e-6)
    # An unedited scene has no image change: every edit direction is the zero vector (cosine 0), not a
    # pseudo-score; and its frames step exactly as the original's do (in2n's consistency 1).
    assert unedited["clip"]["direction_similarity"] == 0.0 and unedited["clip"]["edit_direction_consistency"] == 0.0
    assert unedited["clip"]["direction_consistency"] == pytest.approx(1.0, abs=1e-5)
    assert unedited["heldout"]["edited_psnr"] == pytest.approx(unedited["heldout"]["original_psnr"])
    # The edit's own figures side by side: run.json's metrics, and our held-out PSNR agrees with its own.
    run_json = read_json(edit_run / "run.json")
    assert run["run_metrics"] == run_json["metrics"] and run["prompt"] == "make it orange"
    assert run["heldout"]["edited_psnr"] == pytest.approx(run_json["metrics"]["heldout_psnr_to_original"], abs=1e-3)
    # The report: a table row per run and the contact sheets it links.
    report = (tmp_path / "report" / "eval.md").read_text()
    rows = [line.split(" | ")[0] for line in report.splitlines() if line.startswith("| ") and TARGET in line]
    assert rows == ["| run", "| run-2", "| initial"]
    for name in ("run", "run-2", "initial"):
        assert f"sheets/{name}.png" in report and f"sheets/{name}-heldout.png" in report
    sheet = load_image(tmp_path / "report" / "sheets" / "run.png")
    comparison = load_image(tmp_path / "report" / "sheets" / "comparison.png")
    assert sheet.shape[0] > 3 * 32 and comparison.shape[1] > 4 * 32  # 3 frames; original + 3 runs


def test_eval_help_explains_the_runs(capsys):
    with pytest.raises(SystemExit):
        entrypoint(["eval", "--help"])
    text = capsys.readouterr().out
    assert "RUN [RUN ...]" in text and "Edit run folders" in text and "--source-caption" in text


def one_line_error(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(args)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1, error
    return error


def test_missing_caption_is_one_line(edit_run, tiny_clip_folder, capsys):
    error = one_line_error(["eval", str(edit_run), "--target-caption", TARGET, "--clip-model", str(tiny_clip_folder)],
                           capsys)
    assert "--source-caption is required" in error
    error = one_line_error(["eval", str(edit_run), "--source-caption", SOURCE], capsys)
    assert "--target-caption is required" in error


def test_run_folder_without_a_scene_is_one_line(tmp_path, tiny_clip_folder, capsys):
    (tmp_path / "not-a-run").mkdir()
    error = one_line_error(["eval", str(tmp_path / "not-a-run"), *eval_args(tiny_clip_folder, tmp_path / "out")], capsys)
    assert "no checkpoint.pt or scene.ply" in error and not (tmp_path / "out").exists()


def test_unreachable_model_is_one_line(edit_run, tmp_path, capsys):
    error = one_line_error(["eval", str(edit_run), "--source-caption", SOURCE, "--target-caption", TARGET,
                            "--clip-model", "splat2splat-tests/no-such-clip", "--output", str(tmp_path / "out")], capsys)
    assert "cannot load this CLIP model" in error and "--clip-model PATH" in error


def test_edit_with_an_unloadable_eval_model_fails_before_training(small_scene, tmp_path):
    output = tmp_path / "run"
    with pytest.raises(InputError, match="no such CLIP model folder"):
        run_edit(parse_edit_args(edit_args(small_scene, output, "--eval.captions", SOURCE, TARGET,
                                           "--eval.clip-model", str(tmp_path / "nowhere"))), editor=TintEditor())
    assert not (output / "command.json").exists() and not (output / "initial").exists()


def test_resumed_edit_keeps_its_eval_captions(small_scene, tiny_clip_folder, tmp_path):
    """--resume takes the captions from the saved command: the resumed run's run.json gets the numbers."""
    import os
    import signal

    from splat2splat.runner import Interrupted

    output = tmp_path / "run"

    def press_ctrl_c(step: int) -> None:
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    args = edit_args(small_scene, output, "--eval.captions", SOURCE, TARGET, "--eval.clip-model", str(tiny_clip_folder),
                     "--eval.frames", "3", "--eval.resize", "clip")
    with pytest.raises(Interrupted):
        run_edit(parse_edit_args(args), editor=TintEditor(), on_step=press_ctrl_c)
    assert not (output / "run.json").exists()
    record = run_edit(parse_edit_args(["--output", str(output), "--resume"]), editor=TintEditor())
    assert record["eval"]["target_caption"] == TARGET and record["eval"]["frames"] == 3
    # --eval.resize reached the evaluation (CLIP's crop instead of the default in2n squash).
    assert record["eval"]["resize"] == "clip" and read_json(output / "eval" / "eval.json")["preprocessing"]["resize"] == "clip"
    assert read_json(output / "run.json")["eval"] == record["eval"]


def test_eval_into_a_folder_another_run_holds_is_refused_before_any_work(edit_run, tmp_path, capsys):
    """Two runs into one report folder: the second is refused in one line before CLIP loads (the model named
    here does not exist, so getting further would be another error)."""
    from tests.commands.test_failure_paths import one_line_error
    from tests.test_folder_lock import holder

    output = tmp_path / "report"
    output.mkdir()
    process = holder(output)
    try:
        with pytest.raises(SystemExit) as exit_info:
            entrypoint(["eval", str(edit_run), *eval_args(tmp_path / "no-clip", output)])
        assert f"pid {process.pid}" in one_line_error(capsys, exit_info)
    finally:
        process.kill()
        process.wait()
    assert sorted(p.name for p in output.iterdir()) == ["splat2splat.lock"]


def test_an_eval_output_that_fails_is_one_line_and_the_others_land(edit_run, tiny_clip_folder, tmp_path, capsys,
                                                                   monkeypatch):
    import splat2splat.media as media

    sheet = media.contact_sheet

    def failing_heldout_sheet(rows, labels, columns):
        if "held-out photo" in columns:
            raise MemoryError()
        return sheet(rows, labels, columns)

    monkeypatch.setattr(media, "contact_sheet", failing_heldout_sheet)
    output = tmp_path / "report"
    entrypoint(["eval", str(edit_run), *eval_args(tiny_clip_folder, output)])
    err = capsys.readouterr().err
    assert "warning: sheets/run-heldout.png not written: MemoryError" in err and len(err.strip().splitlines()) == 1
    record = read_json(output / "eval.json")
    assert record["failed_outputs"] == {"sheets/run-heldout.png": "MemoryError"}
    assert record["runs"][0]["files"] == {"sheet": "sheets/run.png"} and record["runs"][0]["clip"]["per_frame"]
    report = (output / "eval.md").read_text()
    assert "sheets/run.png" in report and "heldout.png" not in report
    assert (output / "sheets" / "run.png").is_file() and not (output / "sheets" / "run-heldout.png").exists()
    assert not (output / "splat2splat.lock").exists()


def test_an_edit_s_own_evaluation_respects_an_eval_writing_into_its_folder(tmp_path):
    """`edit --eval.captions` writes RUN/eval as `eval RUN` does: while another run holds that folder, the
    edit's evaluation is refused (the edit reports it as one failed output) instead of interleaving files."""
    from types import SimpleNamespace

    from splat2splat.evaluation.evaluate import EditEvaluation
    from splat2splat.evaluation.report import add_eval_to_run
    from tests.test_folder_lock import holder

    (tmp_path / "eval").mkdir()
    process = holder(tmp_path / "eval")
    try:
        with pytest.raises(InputError, match=f"pid {process.pid}"):
            add_eval_to_run({}, SimpleNamespace(run_folder=tmp_path), EditEvaluation(captions=(SOURCE, TARGET)),
                            None, "cpu")
    finally:
        process.kill()
        process.wait()
