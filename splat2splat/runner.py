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
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column


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


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[Callable[[], int | None]]:
    """Within the block the first SIGINT or SIGTERM only records its number (returned by the yielded function,
    None before any); a second one raises KeyboardInterrupt as usual. The previous handlers are restored."""
    received: list[int] = []

    def handler(signum, frame):
        if received:
            raise KeyboardInterrupt
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


def progress_bar(console: Console | None = None) -> Progress:
    description = TextColumn("{task.description}",
                             table_column=Column(max_width=DESCRIPTION_WIDTH, no_wrap=True, overflow="ellipsis"))
    return Progress(description, BarColumn(bar_width=None), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("{task.fields[info]}"), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console)


def run_loop(loop: SteppedLoop, total_steps: int, save_checkpoint: Callable[[], None], checkpoint_every: int,
             eval_every: int, description: str, on_step: Callable[[int], None] | None = None,
             checkpoint_minutes: float = 0.0) -> LoopReport:
    """Run ``loop`` until ``loop.step == total_steps``; returns evaluations and timings.

    ``checkpoint_every``/``eval_every``: 0 disables the periodic action (a final checkpoint is always saved).
    ``checkpoint_minutes``: also checkpoint when this much wall time passed since the last one (0: never).
    ``on_step`` is called after every finished step (tests use it to simulate Ctrl-C).
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
            if eval_every and loop.step % eval_every == 0:
                metrics = timed("eval", loop.evaluate)
                report.evaluations.append({"step": loop.step, **metrics})
                progress.console.print(f"step {loop.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
            due_by_time = checkpoint_minutes > 0 and time.monotonic() - last_saved >= 60 * checkpoint_minutes
            if (checkpoint_every and loop.step % checkpoint_every == 0) or due_by_time:
                checkpoint()
            rate = (loop.step - first_step) / max(time.perf_counter() - started, 1e-9)
            info = loop.progress_info(report.last_stats)
            progress.update(task, completed=loop.step, info=info, rate=f"{rate:.2f} it/s")
            now = time.perf_counter()
            if plain and (now - last_line >= PLAIN_PROGRESS_SECONDS or loop.step == total_steps):
                print(plain_progress_line(description, loop.step, total_steps, info, rate), flush=True)
                last_line = now
            if on_step is not None:
                on_step(loop.step)
            signum = received_signal()
            if signum is not None:
                checkpoint()
                raise Interrupted(loop.step, signum)
    checkpoint()
    return report
