"""Seeded mutation fuzzing of file readers: every mutated input must end in an InputError or a valid result.

A reader is fuzzed by writing a valid input, mutating it ``cases()`` times (bytes, text tokens or JSON
values, always from ``random.Random(seed + case)``, so a failing case number reproduces), and calling the
reader on each mutant under a memory cap and a time limit. Anything but :class:`InputError` (a traceback
the user would see), a case over the time limit (a hang) or a MemoryError (an allocation sized from the
file) is a failure, reported with its case number and the exception.

``SPLAT2SPLAT_FUZZ_CASES`` sets the number of cases per reader (default: a CI-sized few hundred).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import resource
import signal
import struct
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from splat2splat.errors import InputError

DEFAULT_CASES = 300
CASE_SECONDS = 10  # a case over this is a hang (the largest valid input here reads in milliseconds)
MEMORY_HEADROOM = 2 << 30  # address space a case may add to the process: far above any valid input here

# Values that break readers: zero, negatives, type limits, beyond-float and beyond-int64 numbers, NaN.
INTERESTING_INTS = [0, 1, -1, 2, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32, 2**40, 2**53 + 1, 2**63 - 1,
                    2**63, 2**64 - 1, 2**64, 10**30, 10**400]
INTERESTING_FLOATS = [0.0, -0.0, 0.5, -1.0, 1e-300, 1e38, 3.5e38, 1e308, math.inf, -math.inf, math.nan]
INTERESTING_TEXT = ["0", "-1", "1", "nan", "inf", "-inf", "1e999", "1e308", "3.5e38", "99999999999999999999999",
                    str(2**63), str(2**64), "0x10", "", "abc", "../../../etc/passwd", "/etc/passwd", "\x00",
                    "1" * 5000, "é", "PINHOLE", "OPENCV_FISHEYE", "-0", "+5", "1_000"]
INTERESTING_JSON: list[Any] = [None, True, False, 0, -1, 1, 2**63, 10**30, 10**400, 1e308, -1e308, math.nan,
                               math.inf, "", "abc", "../../../etc/passwd", "/etc/passwd", [], {}, [[1, 0], [0, 1]],
                               [0] * 16, [[0] * 4] * 4, [1.0, 2.0, 3.0], {"a": 1}, "x" * 1000, [[[[[[[[]]]]]]]]]


def cases(default: int = DEFAULT_CASES) -> int:
    """Number of fuzz cases per reader: ``SPLAT2SPLAT_FUZZ_CASES`` or the CI-sized default."""
    return int(os.environ.get("SPLAT2SPLAT_FUZZ_CASES", default))


# ----------------------------------------------------------------------------------------------- mutators


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """One to four random byte-level edits: flips, interesting integers, insertions, deletions, truncation."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(7)
        at = rng.randrange(len(out) + 1)
        if kind == 0 and out:  # flip bits in one byte
            at = min(at, len(out) - 1)
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 1:  # an interesting integer over 1, 2, 4 or 8 bytes, either byte order
            size = rng.choice([1, 2, 4, 8])
            value = rng.choice(INTERESTING_INTS) % (1 << (8 * size))
            out[at:at + size] = value.to_bytes(size, rng.choice(["little", "big"]))
        elif kind == 2:  # random bytes inserted
            out[at:at] = rng.randbytes(rng.randint(1, 16))
        elif kind == 3:  # a range deleted
            del out[at:at + rng.randint(1, 64)]
        elif kind == 4:  # truncated
            del out[at:]
        elif kind == 5 and out:  # a range duplicated
            end = min(len(out), at + rng.randint(1, 64))
            out[at:at] = out[at:end]
        else:  # an interesting double
            out[at:at + 8] = struct.pack(rng.choice(["<d", ">d"]), rng.choice(INTERESTING_FLOATS))
    return bytes(out)


def mutate_text(text: str, rng: random.Random) -> str:
    """One to four line / token edits (numbers swapped for interesting ones, lines dropped or doubled, ...)."""
    lines = text.split("\n")
    for _ in range(rng.randint(1, 4)):
        k = rng.randrange(len(lines)) if lines else 0
        kind = rng.randrange(8)
        if not lines or kind == 0:
            lines.insert(k, rng.choice(["", "#", " ".join(rng.choice(INTERESTING_TEXT) for _ in range(rng.randint(1, 12)))]))
        elif kind == 1:
            del lines[k]
        elif kind == 2:
            lines.insert(k, lines[k])
        elif kind == 3:
            j = rng.randrange(len(lines))
            lines[k], lines[j] = lines[j], lines[k]
        else:
            tokens = lines[k].split(" ")
            t = rng.randrange(len(tokens))
            if kind == 4:
                del tokens[t]
            elif kind == 5:
                tokens.insert(t, rng.choice(INTERESTING_TEXT))
            else:
                tokens[t] = rng.choice(INTERESTING_TEXT)
            lines[k] = " ".join(tokens)
    return "\n".join(lines)


def mutate_json(value: Any, rng: random.Random) -> str:
    """One to three edits of a parsed JSON document (values replaced, keys dropped or added), dumped again;
    sometimes the dumped text is byte-mutated on top. ``value`` itself is left as it is."""
    value = copy.deepcopy(value)
    for _ in range(rng.randint(1, 3)):
        value = _mutate_node(value, rng)
    text = json.dumps(value) if not _has_huge_int(value) else json.dumps(_cap_huge_ints(value))
    if rng.random() < 0.15:
        text = mutate_bytes(text.encode(), rng).decode("utf-8", errors="replace")
    return text


def _mutate_node(value: Any, rng: random.Random) -> Any:
    """``value`` with one random node below it replaced, dropped or extended."""
    if isinstance(value, (dict, list)) and value and rng.random() < 0.8:
        keys = list(value) if isinstance(value, dict) else list(range(len(value)))
        key = rng.choice(keys)
        roll = rng.random()
        if roll < 0.1:
            del value[key]
        elif roll < 0.15 and isinstance(value, dict):
            value[rng.choice(["unknown", "w", "fl_x", "ply_file_path", "mask_path", "frames"])] = _interesting_json(rng)
        elif roll < 0.2 and isinstance(value, list):
            value.insert(key, json.loads(json.dumps(value[key])))  # a duplicated entry
        else:
            value[key] = _mutate_node(value[key], rng)
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 1e300 and rng.random() < 0.3:
        return value * rng.choice([-1, 0, 2, 1e-9, 1e9, 1 + 1e-2])
    return _interesting_json(rng) if rng.random() < 0.9 else copy.deepcopy(INTERESTING_JSON)


def _interesting_json(rng: random.Random) -> Any:
    """A fresh copy: a shared list must not be mutated later (or end up inside itself)."""
    return copy.deepcopy(rng.choice(INTERESTING_JSON))


def _has_huge_int(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_huge_int(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_huge_int(v) for v in value)
    return isinstance(value, int) and value.bit_length() > 14_000


def _cap_huge_ints(value: Any) -> Any:
    """json.dumps cannot write integers of more than 4300 digits: keep them at 4000 digits."""
    if isinstance(value, dict):
        return {k: _cap_huge_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cap_huge_ints(v) for v in value]
    return 10**4000 if isinstance(value, int) and value.bit_length() > 14_000 else value


# ------------------------------------------------------------------------------------------------- runner


@dataclass
class FuzzReport:
    """Outcome counts of one fuzz run and the failures (case number, what happened)."""

    name: str
    valid: int = 0
    input_errors: int = 0
    failures: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0
    slowest: float = 0.0

    def summary(self) -> str:
        total = self.valid + self.input_errors + len(self.failures)
        return (f"{self.name}: {total} cases, {self.valid} valid, {self.input_errors} InputError, "
                f"{len(self.failures)} other, {self.seconds:.1f} s (slowest case {self.slowest * 1000:.0f} ms)")

    def assert_clean(self) -> None:
        print(self.summary())
        if self.failures:
            shown = "\n\n".join(f"case {k}: {what[:3000]}" for k, what in self.failures[:5])
            raise AssertionError(f"{self.summary()}\nfirst failures:\n{shown}")


def fuzz(name: str, n_cases: int, seed: int, run_case: Callable[[random.Random], Any],
         check_valid: Callable[[Any], None] | None = None) -> FuzzReport:
    """Run ``run_case(rng)`` for ``n_cases`` seeded generators; it mutates and reads one input.

    ``check_valid(result)`` may assert on what a reader returned without raising.
    """
    report = FuzzReport(name)
    started = time.perf_counter()
    with memory_cap(MEMORY_HEADROOM):
        for case in range(n_cases):
            rng = random.Random(seed * 1_000_003 + case)
            case_started = time.perf_counter()
            try:
                with time_limit(CASE_SECONDS):
                    result = run_case(rng)
                    if check_valid is not None:
                        check_valid(result)
                report.valid += 1
            except InputError as exc:
                if "\n" in str(exc):
                    report.failures.append((case, f"multi-line InputError: {exc!r}"))
                else:
                    report.input_errors += 1
            except (Exception, MemoryError) as exc:  # noqa: BLE001 - everything else is what we look for
                report.failures.append((case, "".join(traceback.format_exception(exc, limit=-4))))
            report.slowest = max(report.slowest, time.perf_counter() - case_started)
    report.seconds = time.perf_counter() - started
    return report


class CaseTimeout(Exception):
    """A fuzz case ran past :data:`CASE_SECONDS`."""


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise :class:`CaseTimeout` in the block after ``seconds`` (SIGALRM: main thread, POSIX only)."""
    def expire(signum, frame):
        raise CaseTimeout(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def memory_cap(headroom: int) -> Iterator[None]:
    """Limit the process's address space to its current size + ``headroom`` in the block (Linux), so an
    allocation sized from a file's claim fails as MemoryError instead of swapping the machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    try:
        with open("/proc/self/status") as status:
            size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    except (OSError, StopIteration):
        yield
        return
    cap = size + headroom if hard == resource.RLIM_INFINITY else min(size + headroom, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
