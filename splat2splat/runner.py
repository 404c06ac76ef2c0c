"""Drive a step-wise loop (scene training or the Iterative Dataset Update) with checkpoints and resume.

A loop is anything with a ``step`` counter, a ``run_step()`` that advances it by one, ``evaluate()`` and
``state_dict()``. :func:`drive` runs it to ``total_steps`` behind a rich progress bar, evaluates and
checkpoints on a schedule, and turns Ctrl-C into "finish the current step, save, stop": a checkpoint never
holds a half-done step, so a resumed run continues exactly where the interrupted one stopped. A second
Ctrl-C stops at once (the last periodic checkpoint stays valid).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class SteppedLoop(Protocol):
    step: int

    def run_step(self) -> dict[str, float]: ...

    def evaluate(self) -> dict[str, float]: ...

    def progress_info(self, stats: dict[str, float]) -> str: ...


class Interrupted(Exception):
    """Raised by :func:`drive` after Ctrl-C, once the checkpoint of the last finished step is saved."""

    def __init__(self, step: int):
        super().__init__(f"interrupted after step {step}; the checkpoint is saved, continue with --resume")
        self.step = step


@dataclass
class LoopReport:
    """What :func:`drive` observed: evaluations by step and the wall time spent in each activity."""

    evaluations: list[dict[str, float]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: {"steps": 0.0, "eval": 0.0, "checkpoint": 0.0})
    last_stats: dict[str, float] = field(default_factory=dict)


def rng_state() -> dict:
    """The global torch RNG states: gsplat's strategies draw from them (split positions, relocation)."""
    state = {"cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def load_rng_state(state: dict) -> None:
    torch.random.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[Callable[[], bool]]:
    """Within the block the first SIGINT only sets a flag (queried by the yielded function); a second one
    raises KeyboardInterrupt as usual. The previous handler is restored afterwards."""
    requested = False

    def handler(signum, frame):
        nonlocal requested
        if requested:
            raise KeyboardInterrupt
        requested = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave Ctrl-C alone
        yield lambda: False
        return
    try:
        yield lambda: requested
    finally:
        signal.signal(signal.SIGINT, previous)


# When stdout is not a terminal (a redirected or nohup'ed run) rich draws nothing until the end; a plain line
# is printed instead after the first step, then at most every this many seconds, and after the last step.
PLAIN_PROGRESS_SECONDS = 30.0


def plain_progress_line(description: str, step: int, total: int, info: str, rate: float) -> str:
    eta = (total - step) / rate if rate > 0 else float("nan")
    eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta == eta else "?"
    return f"{description}: step {step}/{total} ({100 * step / max(total, 1):.0f}%) {info} {rate:.2f} it/s, eta {eta_text}"


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("{task.fields[info]}"), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                    TimeRemainingColumn())


def drive(loop: SteppedLoop, total_steps: int, save_checkpoint: Callable[[], None], checkpoint_every: int,
          eval_every: int, description: str, on_step: Callable[[int], None] | None = None) -> LoopReport:
    """Run ``loop`` until ``loop.step == total_steps``; returns evaluations and timings.

    ``checkpoint_every``/``eval_every``: 0 disables the periodic action (a final checkpoint is always saved).
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

    with progress_bar() as progress, deferred_interrupt() as interrupt_requested:
        task = progress.add_task(description, total=total_steps, completed=loop.step, info="", rate="")
        first_step, started = loop.step, time.perf_counter()
        while loop.step < total_steps:
            report.last_stats = timed("steps", loop.run_step)
            if eval_every and loop.step % eval_every == 0:
                metrics = timed("eval", loop.evaluate)
                report.evaluations.append({"step": loop.step, **metrics})
                progress.console.print(f"step {loop.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
            if checkpoint_every and loop.step % checkpoint_every == 0:
                timed("checkpoint", save_checkpoint)
            rate = (loop.step - first_step) / max(time.perf_counter() - started, 1e-9)
            info = loop.progress_info(report.last_stats)
            progress.update(task, completed=loop.step, info=info, rate=f"{rate:.2f} it/s")
            now = time.perf_counter()
            if plain and (now - last_line >= PLAIN_PROGRESS_SECONDS or loop.step == total_steps):
                print(plain_progress_line(description, loop.step, total_steps, info, rate), flush=True)
                last_line = now
            if on_step is not None:
                on_step(loop.step)
            if interrupt_requested():
                timed("checkpoint", save_checkpoint)
                raise Interrupted(loop.step)
    timed("checkpoint", save_checkpoint)
    return report
