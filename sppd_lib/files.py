"""Atomic file writes, output-path checks and the advisory lock of a run directory.

Atomic writes go to a temporary name in the same folder, then are renamed: a reader (or a
resumed run) never sees half a file, either the old one or the new one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "DiskFullError",
    "LockedError",
    "NotWritableError",
    "RunLock",
    "atomic_path",
    "check_writable",
    "lock_holder",
    "write_parquet_atomic",
    "write_text_atomic",
]


class NotWritableError(OSError):
    """An output path cannot be written; the message names it and says why."""


class DiskFullError(NotWritableError):
    """The disk filled up while a file was written; the message names the file."""


def disk_full_message(path: str | os.PathLike[str] | None) -> str:
    """What a user reads when the disk is full: the file, and that a rerun resumes."""
    where = f" while writing {path}" if path else ""
    return (
        f"no space left on device{where}: free some space and rerun the same command (finished "
        "phases and batches are kept, the file is written again)"
    )


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno == errno.ENOSPC
    # safetensors (Rust) reports a failed write as its own error type, with the OS message.
    text = str(exc)
    return "No space left on device" in text or "os error 28" in text


@contextmanager
def reporting_disk_full(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a full disk while ``path`` is written into a :class:`DiskFullError` naming it."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as exc:
        if _is_disk_full(exc):
            raise DiskFullError(disk_full_message(path)) from exc
        raise


class LockedError(RuntimeError):
    """Another process holds the lock of a run directory (or output)."""


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with reporting_disk_full(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_parquet_atomic(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(path)


def check_writable(path: str | os.PathLike[str], *, directory: bool = False) -> Path:
    """Fail now, before any work, if ``path`` (a file, or a folder with ``directory``) cannot
    be written later. Creates nothing: the nearest existing ancestor gets a probe file that is
    removed at once (``os.access`` is no use: it says yes to root on a read-only mount).

    Raises:
        NotWritableError: naming the path and the reason.
    """
    path = Path(path)
    if path.exists():
        if directory and not path.is_dir():
            raise NotWritableError(f"{path} exists and is not a directory; choose another path")
        if not directory and path.is_dir():
            raise NotWritableError(f"{path} is a directory; give a file name")
    probe_dir = path if directory and path.is_dir() else path.parent
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise NotWritableError(
            f"cannot write {path}: {probe_dir} is a file, not a directory; choose another path"
        )
    try:
        with tempfile.TemporaryFile(dir=probe_dir, prefix=".sppd-probe-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise NotWritableError(
            f"cannot write {path}: {probe_dir} is not writable ({reason}); "
            "choose a writable location"
        ) from None
    return path


def _read_owner(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def lock_holder(directory: str | os.PathLike[str], name: str = ".lock") -> dict[str, Any] | None:
    """Who holds the :class:`RunLock` of ``directory`` now (pid, host, started, command), or
    ``None`` when no live process does. Read-only: a stale file of a killed run is no holder.

    A shared ``flock`` probe fails while the holder's exclusive lock is held; it is dropped
    at once, so it cannot keep a run from starting (but for that instant).
    """
    path = Path(directory) / name
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file: nothing runs there
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_owner(path) or {"pid": "?"}
    finally:
        os.close(fd)  # closing drops the probe's own lock
    return None


class RunLock:
    """One writer per run directory: an advisory ``flock`` on ``<dir>/.lock``.

    The kernel drops the lock when its process ends, however it ends (``kill -9`` too), so a
    lock left by a crashed run is stale by construction and the next run takes it over; the
    file only records who holds it, for the error message. Use as a context manager.
    """

    def __init__(
        self, directory: str | os.PathLike[str], what: str | None = None, name: str = ".lock"
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / name
        self.what = what or f"run directory {self.directory}"
        self._fd: int | None = None
        #: The directory is on read-only storage: nothing can be written, so no lock needed.
        self.read_only = False

    def acquire(self) -> RunLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                    self.read_only = True
                    return self
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                owner = _read_owner(self.path)
                who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}"
                since = owner.get("started", "?")
                raise LockedError(
                    f"{self.what} is in use by another sppd process ({who}, since {since}: "
                    f"{owner.get('command', '?')}); wait for it to finish or stop it (one "
                    "writer at a time)"
                ) from None
            # The holder we waited for may have removed the file: lock the file that is there.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(owner).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlink while still holding the lock, so no one locks a file about to vanish.
        self.path.unlink(missing_ok=True)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
