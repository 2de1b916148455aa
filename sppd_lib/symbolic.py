"""Math-Verify in a child process, so a comparison can be stopped after a hard time limit.

Math-Verify's own timeout uses ``signal.alarm``: it raises outside the main thread, and no
Python-level timer (signal or thread) can interrupt sympy while it is inside one long C call
(``9^{9^{9^{9}}}`` computes a power with hundreds of millions of digits). A child process can
always be killed. One child per parent process, started on first use, shared by its threads
(calls are serialized; each costs ~0.1 ms of IPC on top of the comparison) and restarted
after a timeout. It is started with ``subprocess``, so it also works inside daemonic
multiprocessing workers, which may not fork children of their own.

Protocol: one JSON line ``[gold, pred]`` in, one JSON line with a status out.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import select
import subprocess
import sys
import threading
from typing import Any, Literal

__all__ = ["SymbolicTimeout", "compare"]

Status = Literal["correct", "wrong", "invalid_gold", "unparsable"]


class SymbolicTimeout(Exception):
    """The comparison ran past its time limit; the child was killed."""


class _Worker:
    #: Extra seconds the first request may take: the child imports sympy and Math-Verify.
    STARTUP_SECONDS = 30.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._owner_pid = os.getpid()
        self._warm = False

    def _start(self) -> subprocess.Popen[bytes]:
        if self._owner_pid != os.getpid():  # forked: that child belongs to our parent
            self._process, self._owner_pid = None, os.getpid()
        if self._process is None or self._process.poll() is not None:
            self._warm = False
            self._process = subprocess.Popen(
                [sys.executable, "-m", "sppd_lib.symbolic"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in the terminal goes to the parent only
            )
        return self._process

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def close(self) -> None:
        """End the child: closing its stdin ends its read loop (killed if it lingers)."""
        if self._process is None or self._owner_pid != os.getpid():
            return
        try:
            self._process.stdin.close()  # type: ignore[union-attr]
            self._process.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            self._process.kill()
            self._process.wait()
        self._process.stdout.close()  # type: ignore[union-attr]
        self._process = None

    def _send(self, request: bytes) -> subprocess.Popen[bytes]:
        for attempt in range(2):
            process = self._start()
            try:
                process.stdin.write(request)  # type: ignore[union-attr]
                process.stdin.flush()  # type: ignore[union-attr]
                return process
            except BrokenPipeError:  # the child died between calls: start a new one
                self._kill()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def compare(self, gold: str, pred: str, time_limit: float) -> Status:
        request = (json.dumps([gold, pred]) + "\n").encode()
        with self._lock:
            process = self._send(request)
            wait = time_limit + (0.0 if self._warm else self.STARTUP_SECONDS)
            ready, _, _ = select.select([process.stdout], [], [], wait)
            if not ready:
                self._kill()
                raise SymbolicTimeout(f"symbolic comparison exceeded {time_limit} s")
            line = process.stdout.readline()  # type: ignore[union-attr]
            if not line:
                self._kill()
                raise RuntimeError("the symbolic grading process exited")
            self._warm = True
            return json.loads(line)


_worker = _Worker()
atexit.register(_worker.close)  # a clean exit, not a child left to the GC


def compare(gold: str, pred: str, time_limit: float = 5.0) -> Status:
    """Math-Verify's ``verify(parse(gold), parse(pred))`` with a hard time limit.

    Raises:
        SymbolicTimeout: past ``time_limit`` seconds (the child is killed and restarted).
    """
    return _worker.compare(gold, pred, time_limit)


# ---------------------------------------------------------------------------------------
# The child process
# ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8192)
def _parse(answer: str) -> tuple[Any, ...]:
    from math_verify import parse

    return tuple(parse(f"${answer}$", parsing_timeout=None))  # type: ignore[arg-type]


def _compare_here(gold: str, pred: str) -> Status:
    from math_verify import verify

    try:
        parsed_gold = _parse(gold)
        if not parsed_gold:
            return "invalid_gold"
        parsed_pred = _parse(pred)
        if not parsed_pred:
            return "unparsable"
        ok = verify(list(parsed_gold), list(parsed_pred), timeout_seconds=None)
        return "correct" if ok else "wrong"
    except Exception:
        return "unparsable"


def _serve() -> None:
    # Math-Verify warns on every call that its timeout is off: we enforce our own.
    logging.disable(logging.WARNING)
    for line in sys.stdin:
        gold, pred = json.loads(line)
        sys.stdout.write(json.dumps(_compare_here(gold, pred)) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve()
