"""Experiment tracking: the loop's per-iteration metrics (and the trainer's loss curves) in
TensorBoard, Weights & Biases or MLflow (``train.report_to``).

The trainer reports through transformers' own callbacks; the loop opens one tracker run named
after the run (``run_id``) before training, so transformers' wandb and mlflow callbacks log into
that same run, and logs its own metrics with ``step = iteration``. TensorBoard works offline:
event files go into the run directory (:attr:`sppd_lib.rundir.RunDir.tensorboard`), the
trainer's into each phase's ``train/<phase>/tensorboard/``.

wandb and mlflow are optional and imported only when asked for.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from sppd_lib.config import ConfigError

__all__ = ["RunTracker", "check_trackers", "iteration_metrics", "trackers_of"]

#: The module each tracker needs, and how to install it.
_MODULES = {
    "tensorboard": ("tensorboard", "pip install -e '.[tracking]'"),
    "wandb": ("wandb", "pip install wandb"),
    "mlflow": ("mlflow", "pip install mlflow"),
}


def trackers_of(report_to: Sequence[str]) -> list[str]:
    """The trackers asked for (``none`` dropped, order kept, no repeats)."""
    return [t for t in dict.fromkeys(report_to) if t != "none"]


def check_trackers(report_to: Sequence[str]) -> None:
    """Every tracker asked for is installed (checked before a run starts).

    Raises:
        ConfigError: naming the tracker and how to install it.
    """
    for tracker in trackers_of(report_to):
        module, install = _MODULES[tracker]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"train.report_to: {tracker} is not installed ({install}), or remove it"
            )


def iteration_metrics(
    summary: pd.DataFrame,
    pairs: dict[str, Any] | None,
    delta_values: pd.Series | None,
    phase_times: pd.DataFrame | None,
) -> dict[str, float]:
    """The loop's metrics of one iteration as flat ``tag: value`` pairs.

    Args:
        summary: the iteration's summary rows (``benchmark``, ``metric``, ``value``,
            ``ci95_low``, ``ci95_high``, ``n``), see :func:`sppd_lib.rundir.summary_rows`.
        pairs: the iteration's ``pairs_summary.json`` (``None`` for iteration 0).
        delta_values: Δv of the iteration's pairs (``None`` for iteration 0).
        phase_times: the iteration's ``phase_times.jsonl`` rows (``phase``, ``seconds``).
    """
    metrics: dict[str, float] = {}
    for row in summary.itertuples(index=False):
        tag = f"eval/{row.benchmark}/{row.metric}"
        metrics[tag] = float(row.value)
        metrics[f"{tag}/ci_low"] = float(row.ci95_low)
        metrics[f"{tag}/ci_high"] = float(row.ci95_high)
    for key, value in (pairs or {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            metrics[f"pairs/{key}"] = float(value)
    if delta_values is not None and len(delta_values):
        metrics["pairs/delta_value/mean"] = float(delta_values.mean())
        metrics["pairs/delta_value/median"] = float(delta_values.median())
        metrics["pairs/delta_value/min"] = float(delta_values.min())
        metrics["pairs/delta_value/max"] = float(delta_values.max())
    if phase_times is not None and len(phase_times):
        for phase, seconds in phase_times.groupby("phase")["seconds"].sum().items():
            metrics[f"time/{phase}_seconds"] = float(seconds)
    return {k: v for k, v in metrics.items() if math.isfinite(v)}


class RunTracker:
    """One tracker run per ``sppd run``, logging to every tracker of ``report_to``.

    Opened before the first training phase so that transformers' wandb / mlflow callbacks
    log into the same run; closed at the end of the loop (also on an error).
    """

    def __init__(self, report_to: Sequence[str], run_name: str, log_dir: str | os.PathLike[str]):
        check_trackers(report_to)
        self.trackers = trackers_of(report_to)
        self._writer: Any = None
        self._wandb: Any = None
        self._mlflow: Any = None
        if "tensorboard" in self.trackers:
            from torch.utils.tensorboard import SummaryWriter

            Path(log_dir).mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(log_dir=str(log_dir))
        if "wandb" in self.trackers:
            import wandb

            self._wandb = wandb
            if wandb.run is None:
                wandb.init(name=run_name, job_type="sppd-run")
        if "mlflow" in self.trackers:
            import mlflow

            self._mlflow = mlflow
            if mlflow.active_run() is None:
                mlflow.start_run(run_name=run_name)

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Log ``metrics`` at ``step`` (the iteration) to every tracker."""
        if not metrics:
            return
        if self._writer is not None:
            for tag, value in metrics.items():
                self._writer.add_scalar(tag, value, global_step=step)
            self._writer.flush()
        if self._wandb is not None:
            self._wandb.log({**metrics, "iteration": step})
        if self._mlflow is not None:
            # MLflow keys may not hold '@'.
            self._mlflow.log_metrics(
                {k.replace("@", "_at_"): v for k, v in metrics.items()}, step=step
            )

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._wandb is not None and self._wandb.run is not None:
            self._wandb.finish()
        if self._mlflow is not None and self._mlflow.active_run() is not None:
            self._mlflow.end_run()

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
