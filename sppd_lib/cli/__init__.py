"""The ``sppd`` command. Each subcommand is a thin layer over the library: the phase commands
(``cli.phase_commands``: eval, sample, merge-trees, pairs, train) and the run commands
(``cli.run_commands``: run, study, report, sweep).

Config flags are generated from the dataclass configs (``sppd_lib.config.flags``), so every
knob has its help text, default and choices in ``--help``. One override rule for every
command: defaults < ``--config FILE`` (YAML) < ``--set key=value`` (repeatable, YAML values)
< explicit flags (``--k 16`` on a phase command, ``--sampler.k 16`` on ``run`` / ``study``).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from sppd_lib.cli import phase_commands, run_commands
from sppd_lib.config import ConfigError
from sppd_lib.data import DataError
from sppd_lib.logs import configure_logging

__all__ = ["build_parser", "main"]

logger = logging.getLogger("sppd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sppd",
        description="SPPD workbench: step-level self-training of LLM math reasoners.",
    )
    _global_flags(parser, False)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    phase, runs = phase_commands, run_commands
    for add in (phase.add_eval, phase.add_sample, phase.add_merge, phase.add_pairs,
                runs.add_report, runs.add_sweep, phase.add_train, runs.add_run,
                runs.add_study):  # fmt: skip
        add(subparsers)
    # The global flags work after the command too (`sppd run ... -v`).
    for sub in subparsers.choices.values():
        _global_flags(sub, argparse.SUPPRESS)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sppd-workbench")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def _global_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="debug logging, every "
        "third-party log line (vLLM, transformers, papermill) and, on an error, the traceback"
    )  # fmt: skip
    parser.add_argument(
        "--allow-download",
        action="store_true",
        default=default,
        help="let hub ids be downloaded from the Hugging Face hub (default: offline, a hub id "
        "must be in the local cache; HF_HUB_OFFLINE=0 does the same)",
    )


#: What an interrupted command keeps, for the hint printed after Ctrl-C.
_RESUME_HINTS = {
    "run": "finished phases are kept: rerun the same command to resume",
    "sample": "finished batches are kept in <out>.partial.jsonl: rerun the same command to resume",
    "train": "nothing was written to --out: rerun the same command to start the phase again",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM (what ``timeout``, Slurm and Kubernetes send) taken like Ctrl-C: the same
    unwinding (locks released, partial files kept) and the same resume hint, exit 143."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    try:  # only the main thread may handle signals; elsewhere SIGTERM keeps its default
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:
        return _main(argv)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    # Before anything imports vLLM or transformers: they read their levels from the environment.
    configure_logging(args.verbose)
    if args.allow_download:
        os.environ["SPPD_ALLOW_DOWNLOAD"] = "1"  # read by models / data; children inherit it
    from safetensors import SafetensorError

    from sppd_lib.files import LockedError, disk_full_message
    from sppd_lib.models import ModelError

    prefix = f"sppd {args.command}"
    try:
        return args.run(args)
    except (ConfigError, DataError, ModelError, LockedError, OSError) as exc:
        # A user's error (a key, a file, a model, a busy or unwritable directory): one line.
        if args.verbose:
            traceback.print_exc()
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            exc = disk_full_message(exc.filename)  # "[Errno 28]" alone names no file
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return 2
    except SafetensorError as exc:  # a weights file: damaged on disk, or the disk is full
        if args.verbose:
            traceback.print_exc()
        message = str(exc).splitlines()[0] if str(exc) else ""
        if "No space left on device" in message or "os error 28" in message:
            print(f"{prefix}: error: {disk_full_message(None)}", file=sys.stderr)
        else:
            print(
                f"{prefix}: error: a .safetensors weights file could not be read or written "
                f"({message}): delete the damaged model directory and rerun the same command",
                file=sys.stderr,
            )
        return 2
    except KeyboardInterrupt as exc:
        hint = _RESUME_HINTS.get(args.command, "outputs are written atomically, none is half-made")
        how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"\n{prefix}: {how}; {hint}", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except Exception as exc:  # a bug of ours: still one line, the traceback behind -v
        if args.verbose:
            traceback.print_exc()
        message = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"{prefix}: unexpected error: {type(exc).__name__}: {message} (rerun with -v for "
            "the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1
