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

__all__ = ["check_run", "run", "start_run_dir", "training_problems"]

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


def _loop(config: RunConfig, directory: RunDir) -> pd.DataFrame:
    from sppd_lib.models import resolve_model

    model_path = resolve_model(config.model)
    started = time.perf_counter()
    # One engine (or one pool of Ray actors) for the whole run, given each new policy.
    with Policy.for_run(config, model_path) as policy:
        for iteration in range(config.iterations + 1):
            out = directory.iteration(iteration)
            if iteration > 0 and not out.train.done.exists():
                _check_model_present(model_path, directory, f"iteration {iteration} starts from it")
            out.path.mkdir(parents=True, exist_ok=True)
            if iteration > 0:
                if not out.trees.exists():  # the prompts are loaded only to sample them
                    problems = training_problems(config, iteration)
                    sample_phase(config, policy, model_path, out, iteration, problems)

                def engine_for(path: str = model_path) -> tuple:
                    # The model that sampled the trees rolls out under them.
                    return policy.engine(path)

                pairs_phase(config, out, iteration, engine_for)
                policy.make_room_for_training()
                model_path = train_phase(config, model_path, out, iteration)
                if not out.evaluated(with_samples=bool(config.eval.num_samples)):
                    _check_model_present(
                        model_path, directory, f"iteration {iteration} is evaluated with it"
                    )
            eval_phase(config, policy, model_path, out, iteration)
            summary = directory.summary_table()
            directory.write_summary(summary)
            minutes = (time.perf_counter() - started) / 60
            table = accuracy_by_iteration(summary).to_string(float_format=lambda x: f"{x:.3f}")
            logger.info("pass@1 after iteration %d (%.1f min):\n%s", iteration, minutes, table)
    directory.write_final_model(model_path)
    return summary
