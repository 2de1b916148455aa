"""The SPPD self-training loop (the recipe of arXiv 2502.13516).

A run is a sequence of iterations. Iteration 0 evaluates the starting model. Iteration k ≥ 1
samples step trees with the current policy, backs up values, builds pairs, trains (the phases
of the curriculum), evaluates, and hands the trained model on as the next sampler and
reference. Every phase (``sppd_lib.phases``) writes its artifacts atomically into
``runs/<run_id>/iter_<k>/`` (``sppd_lib.rundir``); a phase whose artifact exists is skipped,
so rerunning the same command resumes a killed run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
import os
import time
from pathlib import Path

import pandas as pd

from sppd_lib.config import ConfigError, RayConfig, RunConfig, config_to_dict
from sppd_lib.config.engine import LAYOUT_KEYS
from sppd_lib.data import DataError, Problem, load_problems, parse_data_spec
from sppd_lib.engines.factory import check_available
from sppd_lib.engines.serving import Policy
from sppd_lib.files import NotWritableError, RunLock, check_writable
from sppd_lib.metrics import accuracy_by_iteration
from sppd_lib.phases import eval_phase, pairs_phase, sample_phase, train_phase
from sppd_lib.rundir import RunDir
from sppd_lib.tracking import RunTracker, check_trackers, iteration_metrics

__all__ = ["RunProgress", "check_run", "run", "start_run_dir", "training_problems"]

logger = logging.getLogger(__name__)

#: Keys that do not decide what the run computes: the reports after it, and where it runs
#: (the Ray layout, see ``sppd_lib.ray_sampling``, and the engine's device layout), so a run may
#: resume on another cluster or GPU count.
_NOT_RUN_KEYS = {
    "report",
    "report_dir",
    "ray",
    *(f"ray.{f.name}" for f in dataclasses.fields(RayConfig)),
    *(f"engine.{key}" for key in LAYOUT_KEYS),
    "train.report_to",
}


def training_problems(config: RunConfig, iteration: int) -> list[Problem]:
    """The prompts of ``iteration`` (1-based): the next slice of the data (or the same one)."""
    data = config.data
    count = data.prompts_per_iteration
    start = (iteration - 1) * count if data.fresh_prompts else 0
    mix = data.mix or {data.name: 1.0}
    total = sum(mix.values())
    problems: list[Problem] = []
    for name, share in mix.items():
        wanted = round(count * share / total)
        offset = round(start * share / total)
        loaded = load_problems(name, data.split, offset + wanted, **data.problem_options(name))
        if len(loaded) < offset + wanted:
            raise DataError(
                f"{name} {data.split} has {len(loaded)} problems, iteration {iteration} needs "
                f"{offset + wanted} (lower prompts_per_iteration or set fresh_prompts: false)"
            )
        problems.extend(loaded[offset:])
    return problems


def _check_data(config: RunConfig) -> None:
    """Load every data set the run will need, so a missing one fails at the start."""
    from sppd_lib.evaluate import benchmark_problems

    if config.iterations:
        training_problems(config, config.iterations)  # the last iteration reaches furthest
    for benchmark in config.eval.benchmarks:
        benchmark_problems(config.eval, benchmark)


def _data_files(config: RunConfig) -> dict[str, str]:
    """sha256 of every data file the run reads (``NAME=FILE.jsonl`` specs), by spec."""
    specs = [*config.eval.benchmarks, *(config.data.mix or [config.data.name])]
    files = {}
    for spec in specs:
        _, path = parse_data_spec(spec)
        if path is not None:
            files[spec] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def check_run(config: RunConfig, run_dir: str | os.PathLike[str]) -> None:
    """Everything a run needs, checked before its first artifact: the device, the starting
    model, every PRM and reference model it will load, every data set it will read, and that
    the run directory can be written (or, if it exists, is not a file).

    Raises:
        ConfigError, DataError, ModelError, NotWritableError: naming the key, file or value.
    """
    from sppd_lib.models import ModelError, check_device, resolve_model

    check_device(config.device)
    check_trackers(config.train.report_to)
    if config.ray.address is not None and importlib.util.find_spec("ray") is None:
        raise ConfigError(
            f"ray.address is {config.ray.address!r} but ray is not installed: "
            "pip install -e '.[ray]' (or set ray.address: null)"
        )
    check_available(config.engine)
    models = {"model": config.model}
    if config.pairs.value == "prm":
        models["pairs.prm_model"] = config.pairs.prm_model
    if config.eval.num_samples and config.eval.prm_model:
        models["eval.prm_model"] = config.eval.prm_model
    if config.train.reference_model:
        models["train.reference_model"] = config.train.reference_model
    for phase, settings in config.phase_train.items():
        if settings.get("reference_model"):
            models[f"phase_train.{phase}.reference_model"] = settings["reference_model"]
    for key, name in models.items():
        try:
            resolve_model(name)  # type: ignore[arg-type]
        except ModelError as exc:
            raise ModelError(f"{key}: {exc}") from None
    _check_data(config)
    run_dir = Path(run_dir)
    if not run_dir.exists():
        check_writable(run_dir, directory=True)
    elif not run_dir.is_dir():
        raise NotWritableError(f"--run-dir {run_dir} is a file, not a directory")


def start_run_dir(
    config: RunConfig, run_dir: str | os.PathLike[str], read_only: bool = False
) -> None:
    """Create the run directory, or check that a resumed run has the same config
    (:meth:`sppd_lib.rundir.RunDir.start`; the report keys may change)."""
    RunDir(run_dir).start(
        config_to_dict(config), _data_files(config), ignore=_NOT_RUN_KEYS, read_only=read_only
    )


def run(config: RunConfig, run_dir: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Run (or resume, or extend) the loop; returns the summary table (also
    ``summary.parquet``).

    Everything is checked (:func:`check_run`) before anything is written; one process at a
    time may write a run directory (:class:`sppd_lib.files.RunLock`, :class:`LockedError`
    otherwise). A finished run on read-only storage reopens without writing.
    """
    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / config.run_id
    check_run(config, run_dir)
    directory = RunDir(run_dir)
    with RunLock(run_dir) as lock:
        if lock.read_only and not directory.finished(config.iterations):
            raise NotWritableError(
                f"{run_dir} is not writable and its run is not finished: copy it to writable "
                "storage to resume it"
            )
        start_run_dir(config, run_dir, read_only=lock.read_only)
        return _loop(config, directory)


def _check_model_present(model_path: str, directory: RunDir, needed_for: str) -> None:
    """A trained model of the run that is still needed (``needed_for``: "iteration 2 starts
    from it") is still there: checked before the iteration's directory is made, so a run
    extended after that model was deleted fails at once and leaves nothing behind.

    Raises:
        DataError: naming the missing directory and what to do.
    """
    from sppd_lib.data import DataError

    path = Path(model_path)
    inside = directory.path.resolve() in path.resolve().parents
    if inside and not (path / "config.json").is_file():
        raise DataError(
            f"the trained model {path} is missing ({needed_for}); restore that directory, or "
            "start a new run (another --run-dir) to train again"
        )


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"


class RunProgress:
    """The run-level progress line, one per phase that runs: ``iteration k/N · phase ·
    elapsed · ETA``. The ETA is the mean time of the training iterations this process ran
    (iteration 0 only evaluates), times the iterations left, less the current one's time."""

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations
        self.started = time.perf_counter()
        self.iteration = 0
        self.iteration_started = self.started
        self.ran = False
        self.durations: list[float] = []

    def start_iteration(self, iteration: int) -> None:
        self.iteration, self.iteration_started, self.ran = iteration, time.perf_counter(), False

    def phase(self, name: str) -> None:
        self.ran = True
        now = time.perf_counter()
        eta = ""
        if self.durations and self.iteration > 0:
            mean = sum(self.durations) / len(self.durations)
            left = mean * (self.iterations - self.iteration + 1) - (now - self.iteration_started)
            eta = f" · ETA {_clock(max(left, 0.0))}"
        logger.info(
            "iteration %d/%d · %s · %s elapsed%s",
            self.iteration,
            self.iterations,
            name,
            _clock(now - self.started),
            eta,
        )

    def end_iteration(self) -> None:
        if self.ran and self.iteration > 0:  # a resumed iteration's time says nothing
            self.durations.append(time.perf_counter() - self.iteration_started)


def _tracked_metrics(directory: RunDir, summary: pd.DataFrame, iteration: int) -> dict[str, float]:
    """The metrics of ``iteration`` a tracker gets (:func:`sppd_lib.tracking.iteration_metrics`)."""
    out = directory.iteration(iteration)
    pairs = out.read_pairs() if iteration > 0 else None
    return iteration_metrics(
        summary[summary["iteration"] == iteration],
        out.read_pairs_summary() if iteration > 0 else None,
        pairs["delta_value"] if pairs is not None and len(pairs) else None,
        out.read_phase_times(),
    )


def _update_model_card(
    config: RunConfig, model_path: str, summary: pd.DataFrame, iteration: int
) -> None:
    """The trained policy's card (and its adapter's) with the iteration and its evaluation."""
    from sppd_lib.model_card import CardInfo, base_model_id, write_model_card
    from sppd_lib.rundir import TrainDir, read_json

    train_dir = TrainDir(Path(model_path).parent)
    settings, metrics = read_json(train_dir.config), read_json(train_dir.metrics)
    if settings is None or metrics is None:  # not a directory our trainer wrote
        return
    card = CardInfo(
        base_model=base_model_id(model_path) or config.model,
        phase=settings["phase"],
        settings=settings,
        examples=int(metrics["examples"]),
        iteration=iteration,
        run_id=config.run_id,
        evaluation=summary[summary["iteration"] == iteration],
        data=(
            ", ".join(f"{name} ({share:g})" for name, share in config.data.mix.items())
            if config.data.mix
            else config.data.name
        )
        + f", {config.data.split} split, {config.data.prompts_per_iteration} prompts per "
        "iteration",
    )
    for directory, library in ((train_dir.adapter, "peft"), (train_dir.model, "transformers")):
        if directory.is_dir():
            write_model_card(directory, dataclasses.replace(card, library_name=library))


def _loop(config: RunConfig, directory: RunDir) -> pd.DataFrame:
    from sppd_lib.models import resolve_model

    model_path = resolve_model(config.model)
    started = time.perf_counter()
    tracker = RunTracker(config.train.report_to, config.run_id, directory.tensorboard)
    # One engine (or one pool of Ray actors) for the whole run, given each new policy.
    progress = RunProgress(config.iterations)
    with tracker, Policy.for_run(config, model_path) as policy:
        for iteration in range(config.iterations + 1):
            out = directory.iteration(iteration)
            if iteration > 0 and not out.train.done.exists():
                _check_model_present(model_path, directory, f"iteration {iteration} starts from it")
            out.path.mkdir(parents=True, exist_ok=True)
            progress.start_iteration(iteration)
            if iteration > 0:
                if not out.trees.exists():  # the prompts are loaded only to sample them
                    progress.phase("sampling")
                    problems = training_problems(config, iteration)
                    sample_phase(config, policy, model_path, out, iteration, problems)

                def engine_for(path: str = model_path) -> tuple:
                    # The model that sampled the trees rolls out under them.
                    return policy.engine(path)

                if not out.pairs.exists():
                    progress.phase("values and pairs")
                pairs_phase(config, out, iteration, engine_for)
                policy.make_room_for_training()
                if not out.train.done.exists():
                    progress.phase("training")
                model_path = train_phase(config, model_path, out, iteration)
                if not out.evaluated(with_samples=bool(config.eval.num_samples)):
                    _check_model_present(
                        model_path, directory, f"iteration {iteration} is evaluated with it"
                    )
            if not out.evaluated(with_samples=bool(config.eval.num_samples)):
                progress.phase("evaluating")
            eval_phase(config, policy, model_path, out, iteration)
            progress.end_iteration()
            summary = directory.summary_table()
            directory.write_summary(summary)
            minutes = (time.perf_counter() - started) / 60
            table = accuracy_by_iteration(summary).to_string(float_format=lambda x: f"{x:.3f}")
            logger.info("pass@1 after iteration %d (%.1f min):\n%s", iteration, minutes, table)
            tracker.log(_tracked_metrics(directory, summary, iteration), step=iteration)
            if iteration > 0:
                _update_model_card(config, model_path, summary, iteration)
    directory.write_final_model(model_path)
    return summary
