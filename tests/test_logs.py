"""Logs a person reads: third-party loggers at WARNING unless -v, the benign vLLM warnings
left out (real vLLM logging config), the run-level progress line."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sppd_lib.logs import BenignVllmWarnings, configure_logging
from sppd_lib.loop import RunProgress

ROOT = Path(__file__).resolve().parents[1]
_ENV_KEYS = ("VLLM_LOGGING_LEVEL", "VLLM_LOGGING_CONFIG_PATH", "TRANSFORMERS_VERBOSITY")


@pytest.fixture
def clean_env(monkeypatch):
    for key in _ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    for name in ("papermill", "transformers"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)


def test_third_party_loggers_quiet_by_default(clean_env) -> None:
    configure_logging(verbose=False)
    assert logging.getLogger("papermill").getEffectiveLevel() == logging.WARNING
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "warning"
    assert os.environ["VLLM_LOGGING_LEVEL"] == "WARNING"
    assert Path(os.environ["VLLM_LOGGING_CONFIG_PATH"]).is_file()


def test_verbose_keeps_everything(clean_env) -> None:
    configure_logging(verbose=True)
    assert logging.getLogger("papermill").level == logging.NOTSET
    assert not any(key in os.environ for key in _ENV_KEYS)


def test_benign_filter_drops_only_the_two_warnings() -> None:
    def record(name: str, message: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.WARNING, __file__, 1, message, (), None)

    keep = BenignVllmWarnings().filter
    layerwise = "vllm.model_executor.model_loader.reload.layerwise"
    assert not keep(record(layerwise, "LlamaForCausalLM: Failed to load weights"))
    assert not keep(
        record("vllm.v1.utils", "[shutdown] Process manager: force killing remaining processes")
    )
    assert keep(record("vllm.v1.engine", "CUDA out of memory"))
    assert keep(record("sppd_lib.loop", "Failed to load weights"))  # not vLLM's: shown


@pytest.mark.vllm
def test_vllm_reads_our_logging_config() -> None:
    """vLLM configures its loggers from our file, as ``LLM(...)`` does in every process."""
    code = (
        "from sppd_lib.logs import configure_logging; configure_logging(False)\n"
        "import logging\n"
        "from vllm.config.logging import LoggingConfig\n"
        "from vllm.logger import configure_logging_if_needed\n"
        "configure_logging_if_needed(LoggingConfig())  # what LLM(...) calls\n"
        "logging.getLogger('vllm.model_executor.model_loader.reload.layerwise')"
        ".warning('%s: Failed to load weights', 'LMHead')\n"
        "logging.getLogger('vllm.v1.utils').warning('[shutdown] Process manager: force "
        "killing remaining processes count=1')\n"
        "logging.getLogger('vllm.v1.utils').warning('a real warning')\n"
        "logging.getLogger('vllm.v1.utils').info('an info line')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in _ENV_KEYS}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    assert "a real warning" in out
    assert "Failed to load weights" not in out and "force killing" not in out
    assert "an info line" not in out


def test_progress_line_counts_iterations_and_estimates(caplog, monkeypatch) -> None:
    now = [0.0]
    monkeypatch.setattr("sppd_lib.loop.time.perf_counter", lambda: now[0])

    def at(seconds: float) -> None:
        now[0] = seconds

    progress = RunProgress(iterations=3)
    with caplog.at_level(logging.INFO, logger="sppd_lib.loop"):
        progress.start_iteration(0)
        at(5)
        progress.phase("evaluating")
        progress.end_iteration()
        at(10)
        progress.start_iteration(1)
        at(40)
        progress.end_iteration()  # resumed: nothing ran, its 30 s say nothing
        progress.start_iteration(2)
        progress.phase("sampling")
        at(100)
        progress.end_iteration()  # 60 s for a training iteration
        progress.start_iteration(3)
        at(120)
        progress.phase("training")  # 60 s per iteration, 20 s into the last: 40 s left
    assert [r.getMessage() for r in caplog.records] == [
        "iteration 0/3 · evaluating · 0:00:05 elapsed",
        "iteration 2/3 · sampling · 0:00:40 elapsed",
        "iteration 3/3 · training · 0:02:00 elapsed · ETA 0:00:40",
    ]
