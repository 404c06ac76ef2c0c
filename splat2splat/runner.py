"""Drive a step-wise loop (scene training or the Iterative Dataset Update) with checkpoints and resume.

A loop is anything with a ``step`` counter, a ``run_step()`` that advances it by one, ``evaluate()`` and
``state_dict()``. :func:`run_loop` runs it to ``total_steps`` behind a rich progress bar, evaluates and
checkpoints on a schedule (every N steps, and every M minutes of wall time so a slow run never loses much),
and turns Ctrl-C or SIGTERM (job schedulers, ``docker stop``, ``timeout``) into "finish the current step, save,
stop": a checkpoint never holds a half-done step, so a resumed run continues exactly where the interrupted
one stopped. A second signal stops at once (the last checkpoint stays valid).
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal, Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column

from splat2splat.errors import InputError

from splat2splat.errors import InputError


class SteppedLoop(Protocol):
    step: int

    def run_step(self) -> dict[str, float]: ...

    def evaluate(self) -> dict[str, float]: ...

    def progress_info(self, stats: dict[str, float]) -> str: ...


class Interrupted(Exception):
    """Raised by :func:`run_loop` after Ctrl-C or SIGTERM, once the checkpoint of the last finished step is saved."""

    def __init__(self, step: int, signum: int = signal.SIGINT):
        name = signal.Signals(signum).name
        super().__init__(f"{name} after step {step}; the checkpoint is saved, continue with --resume")
        self.step, self.signum = step, signum

    @property
    def exit_status(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number (130 Ctrl-C, 143 SIGTERM)."""
        return 128 + self.signum


@dataclass
class LoopReport:
    """What :func:`run_loop` observed: evaluations by step and the wall time spent in each activity."""

    evaluations: list[dict[str, float]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: {"steps": 0.0, "eval": 0.0, "checkpoint": 0.0})
    last_stats: dict[str, float] = field(default_factory=dict)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SignalledStop(KeyboardInterrupt):
    """A second SIGINT or SIGTERM: stop at once (the last checkpoint stays valid); exits 128 + its number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.exit_status = 128 + signum


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[Callable[[], int | None]]:
    """Within the block the first SIGINT or SIGTERM only records its number (returned by the yielded function,
    None before any); a second one raises KeyboardInterrupt as usual. The previous handlers are restored."""
    received: list[int] = []

    def handler(signum, frame):
        if received:
            raise SignalledStop(signum)
        received.append(signum)

    try:
        previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    except ValueError:  # not the main thread: leave the signals alone
        yield lambda: None
        return
    try:
        yield lambda: received[0] if received else None
    finally:
        for signum, old_handler in previous.items():
            signal.signal(signum, old_handler)


def check_finite_loss(stats: dict[str, float], step: int, description: str) -> None:
    """Stop at the first non-finite loss (not at the end, with nothing left to write); the last checkpoint,
    saved before, stays as it was."""
    loss = stats.get("loss")
    if loss is not None and not math.isfinite(loss):
        raise InputError(None, f"{description}: the loss became {loss} at step {step}; a learning rate or "
                               f"scale that overflows is the likely cause (--gaussians.*-lr, --gaussians.init-scale, "
                               f"--nerf.lr, or an edit far off the images: --idu.editor.guidance-scale); the last "
                               f"checkpoint is from before, nothing of the diverged steps was saved")


# When stdout is not a terminal (a redirected or nohup'ed run) rich draws nothing until the end; a plain line
# is printed instead after the first step, then at most every this many seconds, and after the last step.
PLAIN_PROGRESS_SECONDS = 30.0


def plain_progress_line(description: str, step: int, total: int, info: str, rate: float) -> str:
    eta = (total - step) / rate if rate > 0 else float("nan")
    eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta == eta else "?"
    return f"{description}: step {step}/{total} ({100 * step / max(total, 1):.0f}%) {info} {rate:.2f} it/s, eta {eta_text}"


# The description (an edit's prompt) is cut to this width and the bar takes what is left, so on an 80-column
# terminal step, loss, rate and time left stay on the line.
DESCRIPTION_WIDTH = 24


Logger = Literal["none", "tensorboard"]
LOG_FILE, METRICS_FILE = "run.log", "metrics.jsonl"


def check_logger(logger: str) -> None:
    """``--logger tensorboard`` needs its optional extra: refused before any work when it is missing."""
    if logger == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise InputError(None, "--logger tensorboard needs the tensorboard package: pip install "
                                   "'splat2splat[tensorboard]'") from None


class RunLog:
    """What a run leaves beside its results: ``run.log`` (the progress, evaluations and stops the terminal showed,
    as plain timestamped lines), ``metrics.jsonl`` (one JSON object per step: phase, step, loss, ...) and, with
    ``--logger tensorboard``, TensorBoard event files in ``tensorboard/``. Lines are appended, so a resumed run
    continues the same files."""

    def __init__(self, folder: Path, logger: str = "none", phase: str = "train"):
        self.folder, self.phase = Path(folder), phase
        self.folder.mkdir(parents=True, exist_ok=True)
        self.writer = None
        if logger == "tensorboard":
            check_logger(logger)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.folder / "tensorboard"))

    def line(self, text: str) -> None:
        with open(self.folder / LOG_FILE, "a", encoding="utf-8") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def metrics(self, step: int, values: dict[str, float], kind: str = "step") -> None:
        """One line of metrics.jsonl: ``kind`` 'step' (a training step's loss...) or 'eval' (an evaluation)."""
        numbers = {key: float(value) for key, value in values.items() if isinstance(value, (int, float))}
        with open(self.folder / METRICS_FILE, "a", encoding="utf-8") as log:
            log.write(json.dumps({"phase": self.phase, "kind": kind, "step": step, **numbers}) + "\n")
        if self.writer is not None:
            for key, value in numbers.items():
                self.writer.add_scalar(f"{self.phase}/{kind}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def progress_bar(console: Console | None = None) -> Progress:
    description = TextColumn("{task.description}",
                             table_column=Column(max_width=DESCRIPTION_WIDTH, no_wrap=True, overflow="ellipsis"))
    return Progress(description, BarColumn(bar_width=None), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("{task.fields[info]}"), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console)


def run_loop(loop: SteppedLoop, total_steps: int, save_checkpoint: Callable[[], None], checkpoint_every: int,
             eval_every: int, description: str, on_step: Callable[[int], None] | None = None,
             checkpoint_minutes: float = 0.0, log: RunLog | None = None) -> LoopReport:
    """Run ``loop`` until ``loop.step == total_steps``; returns evaluations and timings.

    ``checkpoint_every``/``eval_every``: 0 disables the periodic action (a final checkpoint is always saved).
    ``checkpoint_minutes``: also checkpoint when this much wall time passed since the last one (0: never).
    ``on_step`` is called after every finished step (tests use it to simulate Ctrl-C).
    ``log``: where the plain progress lines, evaluations and per-step metrics are also written.
    """
    report = LoopReport()
    plain = not sys.stdout.isatty()
    last_line = float("-inf")

    def timed(activity: str, action: Callable[[], object]) -> object:
        start = time.perf_counter()
        result = action()
        report.seconds[activity] += time.perf_counter() - start
        return result

    last_saved = time.monotonic()

    def checkpoint() -> None:
        nonlocal last_saved
        timed("checkpoint", save_checkpoint)
        last_saved = time.monotonic()

    with progress_bar() as progress, deferred_interrupt() as received_signal:
        task = progress.add_task(description, total=total_steps, completed=loop.step, info="", rate="")
        first_step, started = loop.step, time.perf_counter()
        while loop.step < total_steps:
            report.last_stats = timed("steps", loop.run_step)
            check_finite_loss(report.last_stats, loop.step, description)
            if eval_every and loop.step % eval_every == 0:
                metrics = timed("eval", loop.evaluate)
                report.evaluations.append({"step": loop.step, **metrics})
                text = f"step {loop.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
                progress.console.print(text)
                if log is not None:
                    log.line(f"{description}: eval {text}")
                    log.metrics(loop.step, metrics, "eval")
            due_by_time = checkpoint_minutes > 0 and time.monotonic() - last_saved >= 60 * checkpoint_minutes
            if (checkpoint_every and loop.step % checkpoint_every == 0) or due_by_time:
                checkpoint()
            rate = (loop.step - first_step) / max(time.perf_counter() - started, 1e-9)
            info = loop.progress_info(report.last_stats)
            progress.update(task, completed=loop.step, info=info, rate=f"{rate:.2f} it/s")
            now = time.perf_counter()
            if now - last_line >= PLAIN_PROGRESS_SECONDS or loop.step == total_steps:
                line = plain_progress_line(description, loop.step, total_steps, info, rate)
                if plain:
                    print(line, flush=True)
                if log is not None:
                    log.line(line)
                last_line = now
            if log is not None:
                log.metrics(loop.step, report.last_stats)
            if on_step is not None:
                on_step(loop.step)
            signum = received_signal()
            if signum is not None:
                checkpoint()
                if log is not None:
                    log.line(f"{description}: stopped at step {loop.step} (signal {signum}); --resume continues")
                raise Interrupted(loop.step, signum)
    checkpoint()
    return report
