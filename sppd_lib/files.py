"""Atomic file writes, output-path checks and the advisory lock of a run directory.

Atomic writes go to a temporary name in the same folder, then are renamed: a reader (or a
resumed run) never sees half a file, either the old one or the new one.

This module alone decides whether an output path may be written (:func:`check_writable`):
a path may be written if it is new, or if sppd made the file there and marked it so (a key
in a parquet file's schema metadata, a generator tag in an HTML page, a papermill notebook,
or a gzip trees file, whose format is its own mark). Nothing else is ever replaced.
"""

from __future__ import annotations

import errno
import fcntl
import gzip
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
    "made_by_sppd",
    "staging_dir",
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


def staging_dir(parent: str | os.PathLike[str], name: str) -> Path:
    """A new, uniquely named hidden directory in ``parent`` to build ``name`` in before it is
    renamed into place, with the mode of any directory made here (``tempfile.mkdtemp`` makes
    it 0700, so the renamed result would be the one private directory of a run)."""
    path = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}-"))
    umask = os.umask(0o022)
    os.umask(umask)
    path.chmod(0o777 & ~umask)
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


#: Key of the schema metadata of every parquet file sppd writes: its mark of ownership.
PARQUET_MARK = b"sppd"
#: Tag in the ``<head>`` of every HTML page sppd writes: its mark of ownership.
HTML_MARK = '<meta name="generator" content="sppd">'


def write_parquet_atomic(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """``frame`` as parquet (no index), marked as made by sppd (:data:`PARQUET_MARK`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), PARQUET_MARK: b"1"})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def made_by_sppd(path: str | os.PathLike[str]) -> bool:
    """Whether the file ``path`` carries the mark of a file sppd wrote (see the module doc);
    an unreadable or foreign file is not."""
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            return PARQUET_MARK in (pq.read_schema(path).metadata or {})
        if name.endswith((".html", ".htm")):
            with path.open("rb") as handle:
                return HTML_MARK.encode() in handle.read(1 << 16)
        if name.endswith(".ipynb"):
            notebook = json.loads(path.read_text(encoding="utf-8"))
            return "papermill" in notebook.get("metadata", {})
        if name.endswith(".gz"):  # a trees file: every line is a tree
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                first = handle.readline()
            if not first:
                return True  # an empty gzip stream: nothing to lose
            return {"problem", "prompt_ids", "nodes", "meta"} <= set(json.loads(first))
    except Exception:  # not the format its name says: a user's file, not ours
        return False
    return False


def check_writable(path: str | os.PathLike[str], *, directory: bool = False) -> Path:
    """Fail now, before any work, if ``path`` (a file, or a folder with ``directory``) cannot
    be written later. Creates nothing: the nearest existing ancestor gets a probe file that is
    removed at once (``os.access`` is no use: it says yes to root on a read-only mount).
    A file that exists may be replaced only if sppd made it (:func:`made_by_sppd`).

    Raises:
        NotWritableError: naming the path and the reason.
    """
    path = Path(path)
    if path.exists():
        if directory and not path.is_dir():
            raise NotWritableError(f"{path} exists and is not a directory; choose another path")
        if not directory and path.is_dir():
            raise NotWritableError(f"{path} is a directory; give a file name")
        if not directory and not made_by_sppd(path):
            raise NotWritableError(
                f"{path} exists and was not written by sppd, so it is not replaced; choose "
                "another path, or delete or move that file first"
            )
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
