"""Logs a person reads: our own lines at INFO, third-party libraries (vLLM, transformers,
papermill, ...) at WARNING unless ``-v``, and two benign vLLM warnings left out.

vLLM configures its loggers when it is imported, from environment variables, in every process
it starts (the engine core runs in a child process), so its level and our filter are set
through ``VLLM_LOGGING_LEVEL`` and ``VLLM_LOGGING_CONFIG_PATH`` before anything imports it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

__all__ = ["BenignVllmWarnings", "configure_logging"]

#: Third-party loggers held at WARNING by default (their INFO lines are for debugging).
QUIET_LOGGERS = (
    "transformers", "papermill", "datasets", "accelerate", "peft", "httpx", "urllib3",
    "filelock", "ray", "torch", "nbconvert", "traitlets", "huggingface_hub", "trl",
)  # fmt: skip

#: vLLM warnings that say nothing is wrong in our use (``-v`` shows them):
#: - "<Layer>: Failed to load weights" on every reload of a new policy into a running engine:
#:   a layer without weights of its own in the checkpoint (the LM head tied to the
#:   embeddings) keeps its tensors, which is what a reload wants;
#: - "[shutdown] ... force killing remaining process(es)": the engine's worker processes are
#:   stopped at close when they have not exited within vLLM's grace period; nothing is lost.
BENIGN_VLLM = ("Failed to load weights", "force killing remaining process")


class BenignVllmWarnings(logging.Filter):
    """Drops the vLLM warnings of :data:`BENIGN_VLLM`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("vllm"):
            return True
        message = record.getMessage()
        return not any(text in message for text in BENIGN_VLLM)


def _vllm_logging_config(level: str) -> dict:
    """vLLM's default logging config with :class:`BenignVllmWarnings` on its handler."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "vllm": {
                "()": "vllm.logging_utils.NewLineFormatter",
                "datefmt": "%H:%M:%S",
                "format": "%(levelname)s %(asctime)s vllm: %(message)s",
            }
        },
        "filters": {"benign": {"()": f"{__name__}.BenignVllmWarnings"}},
        "handlers": {
            "vllm": {
                "class": "logging.StreamHandler",
                "formatter": "vllm",
                "level": level,
                "stream": "ext://sys.stdout",
                "filters": ["benign"],
            }
        },
        "loggers": {"vllm": {"handlers": ["vllm"], "level": level, "propagate": False}},
    }


def configure_logging(verbose: bool) -> None:
    """Our loggers at INFO (DEBUG with ``verbose``), third-party ones at WARNING (everything
    with ``verbose``). Call before vLLM or transformers is imported; an environment variable
    the user set (``VLLM_LOGGING_LEVEL``, ``TRANSFORMERS_VERBOSITY``, ...) is kept."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if verbose:
        return
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "warning")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if "VLLM_LOGGING_CONFIG_PATH" not in os.environ:
        level = os.environ["VLLM_LOGGING_LEVEL"]
        path = Path(tempfile.gettempdir()) / f"sppd-vllm-logging-{os.getuid()}-{level}.json"
        path.write_text(json.dumps(_vllm_logging_config(level)))
        os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(path)
