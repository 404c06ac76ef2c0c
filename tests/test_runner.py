"""The step driver: evaluation and checkpoint schedule, Ctrl-C handling."""

from __future__ import annotations

import os
import signal

import pytest

from splat2splat.runner import Interrupted, run_loop


class CountingLoop:
    def __init__(self, step: int = 0):
        self.step = step
        self.evaluated_at: list[int] = []

    def run_step(self):
        self.step += 1
        return {"loss": 1.0 / self.step}

    def evaluate(self):
        self.evaluated_at.append(self.step)
        return {"metric": float(self.step)}

    def progress_info(self, stats):
        return f"loss {stats['loss']:.3f}"


def test_drive_evaluates_and_checkpoints_on_schedule_and_at_the_end():
    loop, saved_at = CountingLoop(), []
    report = run_loop(loop, 10, lambda: saved_at.append(loop.step), checkpoint_every=4, eval_every=5, description="t")
    assert loop.step == 10
    assert loop.evaluated_at == [5, 10] and [e["step"] for e in report.evaluations] == [5, 10]
    assert saved_at == [4, 8, 10]
    assert report.last_stats == {"loss": 0.1}


def test_drive_continues_from_the_loops_step():
    loop = CountingLoop(step=6)
    run_loop(loop, 8, lambda: None, 0, 0, "t")
    assert loop.step == 8


def test_ctrl_c_finishes_the_step_saves_and_stops():
    loop, saved_at = CountingLoop(), []

    def press_ctrl_c(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted, match="--resume"):
        run_loop(loop, 10, lambda: saved_at.append(loop.step), 0, 0, "t", on_step=press_ctrl_c)
    assert loop.step == 3 and saved_at == [3]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_second_ctrl_c_stops_at_once():
    loop = CountingLoop()

    def press_twice(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        run_loop(loop, 10, lambda: None, 0, 0, "t", on_step=press_twice)
    assert loop.step == 2


def test_sigterm_is_handled_like_ctrl_c_with_its_own_exit_status():
    loop, saved_at = CountingLoop(), []
    previous = signal.getsignal(signal.SIGTERM)

    def terminate(step):
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted, match="SIGTERM") as stopped:
        run_loop(loop, 10, lambda: saved_at.append(loop.step), 0, 0, "t", on_step=terminate)
    assert loop.step == 4 and saved_at == [4]
    assert stopped.value.exit_status == 143
    assert signal.getsignal(signal.SIGTERM) is previous  # handler restored


def test_wall_time_checkpoints(monkeypatch):
    """With checkpoint_minutes, a checkpoint is written whenever that much time passed since the last one,
    whatever the step schedule says (a slow run stopped early still has a recent checkpoint)."""
    import splat2splat.runner as runner

    clock = iter(range(0, 10_000, 40))  # every call to the clock advances 40 s
    monkeypatch.setattr(runner.time, "monotonic", lambda: float(next(clock)))
    loop, saved_at = CountingLoop(), []
    run_loop(loop, 6, lambda: saved_at.append(loop.step), 0, 0, "t", checkpoint_minutes=1.0)
    # Clock reads: start 0; step 1 at 40 s (not due); step 2 at 80 s (due; saved, reference 120 s); step 3 at
    # 160 s (not due); step 4 at 200 s (due) ... and the final checkpoint after step 6.
    assert saved_at == [2, 4, 6, 6]
    saved_at.clear()
    run_loop(CountingLoop(), 6, lambda: saved_at.append(0), 0, 0, "t", checkpoint_minutes=0.0)
    assert saved_at == [0]  # off: only the final checkpoint


def test_plain_progress_lines_when_stdout_is_not_a_terminal(capsys, monkeypatch):
    """A redirected run prints a plain line after its first step, then every ~30 s, and after its last."""
    import splat2splat.runner as runner

    run_loop(CountingLoop(), 5, lambda: None, 0, 0, "train")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("train: step")]
    assert [line.split()[2] for line in lines] == ["1/5", "5/5"]
    assert "loss 1.000" in lines[0] and "it/s, eta" in lines[0]
    monkeypatch.setattr(runner, "PLAIN_PROGRESS_SECONDS", 0.0)
    run_loop(CountingLoop(), 3, lambda: None, 0, 0, "edit")
    assert sum(line.startswith("edit: step") for line in capsys.readouterr().out.splitlines()) == 3


def test_a_long_prompt_leaves_step_rate_and_time_left_on_an_80_column_bar():
    import io

    from rich.console import Console

    from splat2splat.runner import progress_bar

    console = Console(width=80, file=io.StringIO(), force_terminal=True, color_system=None)
    progress = progress_bar(console)
    progress.add_task("edit: " + "make it look like a watercolour painting of autumn " * 3, total=30000,
                      completed=1234, info="loss 0.1234", rate="2.94 it/s")
    console.print(progress.get_renderable())
    line = console.file.getvalue().rstrip("\n")
    assert "\n" not in line and "1234/30000" in line and "loss 0.1234" in line and "2.94 it/s" in line
    assert "-:--:--" in line  # the time left (unknown here: no step was timed)
    assert "edit: make it" in line and "…" in line


def test_a_second_sigterm_exits_143_in_one_line(capsys, monkeypatch, tmp_path):
    """The second signal stops at once with the exit status of that signal (128 + 15), not Ctrl-C's 130."""
    import splat2splat.commands.demo as demo
    from splat2splat.cli import entrypoint

    def terminated_twice(*args, **kwargs):
        def terminate(step):
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)

        run_loop(CountingLoop(), 10, lambda: None, 0, 0, "t", on_step=terminate)

    monkeypatch.setattr(demo, "write_demo_scene", terminated_twice)
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["demo", "--output", str(tmp_path / "demo")])
    assert exit_info.value.code == 143
    err = capsys.readouterr().err.strip()
    assert err.startswith("stopped:") and len(err.splitlines()) == 1


class DivergingLoop(CountingLoop):
    def run_step(self):
        self.step += 1
        return {"loss": 1.0 if self.step < 3 else float("nan")}


def test_the_first_non_finite_loss_stops_the_loop_with_its_step(tmp_path):
    from splat2splat.errors import InputError

    loop, saved_at = DivergingLoop(), []
    with pytest.raises(InputError, match="the loss became nan at step 3.*learning rate") as error:
        run_loop(loop, 100, lambda: saved_at.append(loop.step), checkpoint_every=2, eval_every=0, description="t")
    assert loop.step == 3 and saved_at == [2] and "\n" not in str(error.value)  # the NaN step is never saved
