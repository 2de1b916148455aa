"""Math-Verify in a child process, so a comparison can be stopped after a hard time limit.

Math-Verify's own timeout uses ``signal.alarm``: it raises outside the main thread, and no
Python-level timer (signal or thread) can interrupt sympy while it is inside one long C call
(``9^{9^{9^{9}}}`` computes a power with hundreds of millions of digits). A child process can
always be killed. One child per parent process, started on first use, shared by its threads
(calls are serialized; each costs ~0.1 ms of IPC on top of the comparison) and restarted
after a timeout. It is started with ``subprocess``, so it also works inside daemonic
multiprocessing workers, which may not fork children of their own.

Protocol: the child writes one JSON line ``"ready"`` once it has imported Math-Verify; then
one JSON line ``[gold, pred]`` in, one JSON line with a status out.
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
import time
from typing import Any, Literal

__all__ = ["SymbolicTimeout", "compare"]

Status = Literal["correct", "wrong", "invalid_gold", "unparsable", "error"]


class SymbolicTimeout(Exception):
    """The comparison ran past its time limit; the child was killed."""


class _Worker:
    #: Extra seconds the first child of a process may take to import sympy and Math-Verify.
    #: Only the first: a replacement after a timeout is started at once in the background,
    #: and the next call waits for it within its own time limit (a hard expression in a row
    #: costs its time limit, not a fresh start-up allowance each time).
    STARTUP_SECONDS = 30.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._owner_pid = os.getpid()
        self._ready = False
        self._started_once = False
        self._buffer = b""

    def _start(self) -> subprocess.Popen[bytes]:
        if self._owner_pid != os.getpid():  # forked: that child belongs to our parent
            self._process, self._owner_pid, self._started_once = None, os.getpid(), False
        if self._process is None or self._process.poll() is not None:
            self._ready, self._buffer = False, b""
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
            self._process.stdout.close()  # type: ignore[union-attr]
            self._process.stdin.close()  # type: ignore[union-attr]
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

    def _read_line(self, deadline: float) -> bytes | None:
        """One line from the child, or ``None`` past ``deadline``; ``b""`` when it exited."""
        fd = self._process.stdout.fileno()  # type: ignore[union-attr]
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return b""
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def _wait_ready(self, deadline: float) -> float:
        """Start the child if needed and wait until it has imported Math-Verify.

        Returns the deadline for the answer: ``deadline``, moved back by the time a cold
        start took (the only start-up that does not count against a call's limit).
        """
        self._start()
        if self._ready:
            return deadline
        cold = not self._started_once
        started = time.monotonic()
        line = self._read_line(deadline + (self.STARTUP_SECONDS if cold else 0.0))
        if line is None:  # still importing: leave it running for the next call
            raise SymbolicTimeout("the symbolic grading process is still starting")
        if line != b'"ready"':
            self._kill()
            raise RuntimeError("the symbolic grading process did not start")
        self._ready = self._started_once = True
        return deadline + (time.monotonic() - started if cold else 0.0)

    def _send(self, request: bytes) -> None:
        process = self._process
        try:
            process.stdin.write(request)  # type: ignore[union-attr]
            process.stdin.flush()  # type: ignore[union-attr]
        except BrokenPipeError:  # the child died between calls
            self._kill()
            raise RuntimeError("the symbolic grading process exited") from None

    def compare(self, gold: str, pred: str, time_limit: float) -> Status:
        request = (json.dumps([gold, pred]) + "\n").encode()
        with self._lock:
            deadline = time.monotonic() + time_limit
            deadline = self._wait_ready(deadline)
            self._send(request)
            line = self._read_line(deadline)
            if line is None:
                self._kill()
                self._start()  # the replacement imports while the caller carries on
                raise SymbolicTimeout(f"symbolic comparison exceeded {time_limit} s")
            if not line:
                self._kill()
                raise RuntimeError("the symbolic grading process exited")
            return json.loads(line)


_worker = _Worker()
atexit.register(_worker.close)  # a clean exit, not a child left to the GC


def compare(gold: str, pred: str, time_limit: float = 5.0) -> Status:
    """Math-Verify's ``verify(parse(gold), parse(pred))`` with a hard time limit.

    ``gold`` and ``pred`` are LaTeX with their math delimiters (``"$x^2$"``). Returns
    ``"error"`` when Math-Verify raised inside a comparison and no other reading matched,
    so a failure is never reported as a plain ``"wrong"``.

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

    return tuple(parse(answer, parsing_timeout=None))  # type: ignore[arg-type]


def _numbers_agree(gold: Any, pred: Any) -> bool:
    """Relative check of two numbers Math-Verify called equal: it rounds to 6 decimal
    places, so 1e-7 and 2e-7 would be "equal". Anything but two plain numbers passes."""
    import sympy

    try:
        if not (isinstance(gold, sympy.Expr) and isinstance(pred, sympy.Expr)):
            return True
        if not (gold.is_number and pred.is_number):
            return True
        a, b = complex(sympy.N(gold, 30)), complex(sympy.N(pred, 30))
        return abs(a - b) <= 1e-6 * max(abs(a), abs(b))
    except Exception:  # not evaluable (infinities, ...): keep Math-Verify's verdict
        return True


def _compare_here(gold: str, pred: str) -> Status:
    from math_verify import verify

    try:
        parsed_gold = _parse(gold)
        if not parsed_gold:
            return "invalid_gold"
        parsed_pred = _parse(pred)
        if not parsed_pred:
            return "unparsable"
    except Exception:
        return "unparsable"
    failed = False
    # Each reading of the gold against each reading of the prediction (as verify() does),
    # but with errors raised, so "Can't evaluate nan or zoo" is an error, not "wrong".
    for g in parsed_gold:
        for p in parsed_pred:
            try:
                if verify(g, p, timeout_seconds=None, raise_on_error=True) and _numbers_agree(g, p):
                    return "correct"
            except Exception:
                failed = True
    return "error" if failed else "wrong"


def _serve() -> None:
    # Math-Verify warns on every call that its timeout is off: we enforce our own.
    logging.disable(logging.WARNING)
    _compare_here("$1$", "$1$")  # import sympy and Math-Verify before saying "ready"
    sys.stdout.write(json.dumps("ready") + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        gold, pred = json.loads(line)
        sys.stdout.write(json.dumps(_compare_here(gold, pred)) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve()
