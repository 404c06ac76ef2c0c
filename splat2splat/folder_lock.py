"""One run per output folder: a run claims its ``--output`` with a lock file before any work, so two runs
started into one folder at once cannot interleave their files (the second is refused in one line).

The lock file (``splat2splat.lock``) is created atomically (``O_EXCL``) and names its owner: host, pid and
the process's start time. A lock whose owner is gone (same host, no such process, or a reused pid of a
later process) is stale and taken over; one from another host is respected, since its owner cannot be
checked from here. A process's own lock is re-entrant; it is removed when the run ends or the process exits.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import time
from pathlib import Path

from splat2splat.errors import InputError

LOCK_FILE = "splat2splat.lock"
UNREADABLE_LOCK_SECONDS = 60.0  # a lock without a readable owner is being written, unless it is older than this
_held: set[Path] = set()


def process_start_time(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def this_process() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": process_start_time(os.getpid()),
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def owner_alive(owner: dict) -> bool:
    """Whether the process that wrote ``owner`` may still run (one on another host always may)."""
    if owner.get("host") != socket.gethostname():
        return True
    pid = owner.get("pid")
    if type(pid) is not int or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user: it exists
        pass
    except OverflowError:
        return False
    started = process_start_time(pid)
    return started is None or owner.get("started") in (None, started)  # a different start time: a reused pid


def read_owner(lock: Path) -> tuple[str, dict | None]:
    try:
        text = lock.read_text()
    except (OSError, UnicodeDecodeError):
        return "", None
    try:
        owner = json.loads(text)
    except ValueError:
        return text, None
    return text, owner if isinstance(owner, dict) else None


def claim_output_folder(folder: str | Path, option: str = "--output") -> None:
    """Claim ``folder`` (which exists) for this process, or raise InputError when another live run holds it."""
    lock = Path(folder) / LOCK_FILE
    me = this_process()
    for _ in range(5):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            text, owner = read_owner(lock)
            if owner is not None and (owner.get("host"), owner.get("pid"), owner.get("started")) == \
                    (me["host"], me["pid"], me["started"]):
                break  # this process's own claim (a run resumed in the same process)
            if owner is None and _age(lock) < UNREADABLE_LOCK_SECONDS:
                raise InputError(folder, f"another run is claiming this {option} folder right now; choose "
                                         f"another {option}") from None
            if owner is not None and owner_alive(owner):
                raise InputError(folder, f"another splat2splat run (pid {owner.get('pid')} on "
                                         f"{owner.get('host')}, since {owner.get('since')}) is writing into this "
                                         f"{option} folder: wait for it to end or choose another {option} (if that "
                                         f"run is gone, delete {lock})") from None
            _remove_stale(lock, text)
            continue
        except OSError as error:
            raise InputError(folder, f"{option} cannot be claimed: {error.strerror or error}") from None
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me) + "\n")
        break
    else:
        raise InputError(folder, f"another run keeps claiming this {option} folder; choose another {option}")
    _held.add(lock)


def release_output_folder(folder: str | Path) -> None:
    """End this process's claim on ``folder`` (nothing when it holds none)."""
    lock = Path(folder) / LOCK_FILE
    if lock not in _held:
        return
    _held.discard(lock)
    _, owner = read_owner(lock)
    if owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        with contextlib.suppress(OSError):
            lock.unlink()


def claim_moved(old_folder: str | Path, new_folder: str | Path) -> None:
    """This process's claim follows its folder, renamed from ``old_folder`` to ``new_folder`` (lock file and all)."""
    old = Path(old_folder) / LOCK_FILE
    if old in _held:
        _held.discard(old)
        _held.add(Path(new_folder) / LOCK_FILE)


def release_all() -> None:
    """End every claim of this process (at exit, and when a command ends)."""
    for lock in list(_held):
        release_output_folder(lock.parent)


def _age(lock: Path) -> float:
    try:
        return time.time() - lock.stat().st_mtime
    except OSError:
        return 0.0


def _remove_stale(lock: Path, stale_text: str) -> None:
    """Move the stale lock aside; if what was moved is not the stale lock (another process took the folder
    over in between), put it back."""
    aside = lock.with_name(f"{LOCK_FILE}.stale.{os.getpid()}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return
    try:
        moved, _ = read_owner(aside)
        if moved != stale_text:
            with contextlib.suppress(FileExistsError):
                os.link(aside, lock)
    finally:
        with contextlib.suppress(OSError):
            aside.unlink()


atexit.register(release_all)
