"""The SPPD self-training loop (SPPD_METHOD.md §5, DESIGN.md §3).

A run is a sequence of iterations. Iteration 0 evaluates the starting model. Iteration k ≥ 1
samples step trees with the current policy, backs up values, builds pairs, trains (the phases
of the curriculum), evaluates, and hands the trained model on as the next sampler and
reference. Every phase writes one artifact atomically into ``runs/<run_id>/iter_<k>/``; a
phase whose artifact exists is skipped, so rerunning the same command resumes a killed run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sppd_lib.config import (
    ConfigError,
    EvalConfig,
    check_ranges,
    config_from_dict,
    config_to_dict,
    load_yaml,
    option,
    parse_yaml,
)
from sppd_lib.data import (
    GENERATED,
    DataError,
    Problem,
    check_data_name,
    load_problems,
    parse_data_spec,
)
from sppd_lib.files import (
    NotWritableError,
    RunLock,
    check_writable,
    write_parquet_atomic,
    write_text_atomic,
)
from sppd_lib.pairs import PairConfig
from sppd_lib.sampler import SamplerConfig
from sppd_lib.trainer import PHASES, TrainConfig

__all__ = ["DataConfig", "RunConfig", "load_run_config", "run", "summary_table"]

logger = logging.getLogger(__name__)

_DEVICE = re.compile(r"cpu|cuda(:\d+)?|mps")
#: Keys that only decide what happens after the run (reports), not what the run computes.
_NOT_RUN_KEYS = {"report", "report_dir"}


@dataclass
class DataConfig:
    """Training prompts of the loop."""

    name: str = option("arith", "Data set of the training prompts: arith, gsm8k, math, ...")
    split: str = option("train", "Split of the training prompts.")
    prompts_per_iteration: int = option(32, "Problems sampled into trees per iteration.")
    fresh_prompts: bool = option(
        True, "Each iteration takes the next prompts (true) or reuses the same ones (false)."
    )
    mix: dict[str, float] = option(
        {}, "Mix of data sets by share, e.g. {gsm8k: 0.4, math: 0.6} (the paper); overrides name."
    )
    arith: dict[str, Any] = option(
        {}, "Options of generated arithmetic (data.generate_arithmetic): max_terms, digits, ..."
    )
    arith_seed: int = option(0, "Seed of the generated arithmetic training problems.")

    def __post_init__(self) -> None:
        check_ranges(
            self, "data.", {"prompts_per_iteration": (self.prompts_per_iteration >= 1, ">= 1")}
        )
        for name, share in self.mix.items():
            if not (isinstance(share, int | float) and 0 < share < math.inf):
                raise ConfigError(f"data.mix.{name} must be a share > 0, got {share!r}")


@dataclass
class RunConfig:
    """A whole SPPD run: model, curriculum and the config of every phase."""

    run_id: str = option("sppd", "Name of the run; its directory is runs/<run_id>.")
    model: str = option(
        "smollm2-135m-instruct", "Starting policy (alias, directory, .gguf, hub id)."
    )
    device: str | None = option(None, "cpu or cuda (default: cuda if present).")
    iterations: int = option(2, "Self-training iterations after iteration 0 (evaluation only).")
    phases: list[str] = option(["sppd"], "Training phases of every iteration, in order.")
    first_phases: list[str] | None = option(
        None, "Phases of iteration 1 if different, e.g. [sft, dpo, sppd] for a base model."
    )
    phase_train: dict[str, dict[str, Any]] = option(
        {}, "Train settings per phase over `train`, e.g. {sft: {optimizer: adamw, ...}}."
    )
    engine: str = option("transformers", "Sampling engine: 'transformers' or 'vllm'.")
    sft_per_problem: int = option(4, "τ+ paths per problem for the sft phase.")
    report: bool = option(True, "`sppd run` ends by writing HTML reports (see report_dir).")
    report_dir: str | None = option(
        None, "Where `sppd run` writes its reports; null: <run_dir>/../reports/<run_dir name>."
    )
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Training prompts."})
    sampler: SamplerConfig = field(default_factory=SamplerConfig, metadata={"help": "Sampler."})
    pairs: PairConfig = field(default_factory=PairConfig, metadata={"help": "Values, pairs."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "Training."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Evaluation."})

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ConfigError(f"iterations must be >= 0, got {self.iterations}")
        if self.sft_per_problem < 1:
            raise ConfigError(f"sft_per_problem must be >= 1, got {self.sft_per_problem}")
        if self.device is not None and not _DEVICE.fullmatch(self.device):
            raise ConfigError(f"device must be cpu, cuda, cuda:N, mps or null, not {self.device!r}")
        for key in ("phases", "first_phases"):
            for phase in getattr(self, key) or []:
                if phase not in PHASES:
                    raise ConfigError(f"{key}: unknown phase {phase!r} (choose from {PHASES})")
        if not self.phases:
            raise ConfigError("phases must name at least one phase")
        for phase, settings in self.phase_train.items():
            if phase not in PHASES:
                raise ConfigError(f"phase_train: unknown phase {phase!r} (choose from {PHASES})")
            settings = {**config_to_dict(self.train), **settings, "phase": phase}
            config_from_dict(TrainConfig, settings, f"phase_train.{phase}.")
        if self.engine not in ("transformers", "vllm"):
            raise ConfigError(f"engine must be 'transformers' or 'vllm', not {self.engine!r}")
        for key, names in (
            ("eval.benchmarks", self.eval.benchmarks),
            ("data.name", [] if self.data.mix else [self.data.name]),
            ("data.mix", list(self.data.mix)),
        ):
            for name in names:
                try:
                    check_data_name(name)
                except DataError as exc:
                    raise ConfigError(f"{key}: {exc}") from None

    def phases_of(self, iteration: int) -> list[str]:
        return list(self.first_phases or self.phases) if iteration == 1 else list(self.phases)


def load_run_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> RunConfig:
    """A ``RunConfig`` from YAML, with ``key.sub=value`` overrides (values parsed as YAML).

    Raises:
        ConfigError: missing file, unknown key or wrong type, naming the key.
    """
    data = apply_overrides(load_yaml(path), overrides or [])
    migrate_margin_keys(data, str(path))
    try:
        return config_from_dict(RunConfig, data)
    except ValueError as exc:  # __post_init__ checks of the nested configs
        raise ConfigError(f"{path}: {exc}") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a config mapping in place."""
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set wants key=value, got {override!r}")
        target = data
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ConfigError(f"--set {key}: {parent} is not a section")
        try:
            target[leaf] = parse_yaml(raw)
        except Exception as exc:  # yaml.YAMLError or a duplicate key
            raise ConfigError(f"--set {override}: not a YAML value ({exc})") from None
    return data


#: Keys that moved from the ``pairs`` section to ``train`` when the margin became a training
#: setting (so one pairs file serves every margin variant).
MOVED_MARGIN_KEYS = ("margin", "gamma", "fixed_margin")


def migrate_margin_keys(data: dict[str, Any], where: str) -> None:
    """Move ``pairs.margin`` / ``gamma`` / ``fixed_margin`` of an older config to ``train``
    (in place), with a warning; a key given in both sections is an error."""
    pairs = data.get("pairs")
    if not isinstance(pairs, dict):
        return
    moved = [key for key in MOVED_MARGIN_KEYS if key in pairs]
    if not moved:
        return
    train = data.setdefault("train", {})
    if not isinstance(train, dict):
        return
    for key in moved:
        if key in train:
            raise ConfigError(f"{where}: pairs.{key} and train.{key} both given; keep train.{key}")
        train[key] = pairs.pop(key)
    logger.warning(
        "%s: pairs.%s moved to train.%s (the margin is a training setting now)",
        where,
        "/".join(moved),
        "/".join(moved),
    )


# ---------------------------------------------------------------------------------------
# Run directory
# ---------------------------------------------------------------------------------------


def iteration_dir(run_dir: Path, iteration: int) -> Path:
    return run_dir / f"iter_{iteration}"


def _data_files(config: RunConfig) -> dict[str, str]:
    """sha256 of every data file the run reads (``NAME=FILE.jsonl`` specs), by spec."""
    specs = [*config.eval.benchmarks, *(config.data.mix or [config.data.name])]
    files = {}
    for spec in specs:
        _, path = parse_data_spec(spec)
        if path is not None:
            files[spec] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def _has_artifacts(run_dir: Path) -> bool:
    return any(p.is_file() for d in run_dir.glob("iter_*") for p in d.rglob("*"))


def _start_run_dir(config: RunConfig, run_dir: Path, read_only: bool = False) -> None:
    """Create the run directory, or check that a resumed run has the same config.

    Only ``iterations`` may change, and only grow: that extends a run. A directory whose
    config was written but that holds no artifact yet gets the new config. Data files must
    be unchanged (their sha256 is kept in ``inputs.json``).
    """
    import yaml

    saved, inputs = run_dir / "config.yaml", run_dir / "inputs.json"
    wanted = config_to_dict(config)
    files = _data_files(config)
    if saved.exists():
        previous = load_yaml(saved)
        changed = sorted(set(_changed_keys(previous, wanted)) - _NOT_RUN_KEYS)
        old_iterations = previous.get("iterations")
        extends = (
            changed == ["iterations"]
            and isinstance(old_iterations, int)
            and config.iterations > old_iterations
        )
        if changed and not extends and _has_artifacts(run_dir):
            hint = ""
            if "iterations" in changed and isinstance(old_iterations, int):
                hint = f" (iterations may only grow: it was {old_iterations})"
            raise ConfigError(
                f"{run_dir} holds a run with another config (changed: {', '.join(changed)})"
                f"{hint}; use another run_id / --run-dir, or delete the directory"
            )
        if inputs.exists():
            stored = json.loads(inputs.read_text()).get("data_files", {})
            for spec, digest in stored.items():
                if files.get(spec) != digest:
                    raise ConfigError(
                        f"data file of {spec!r} changed since {run_dir} started (sha256 "
                        f"{digest[:12]}...): restore it, or start another run"
                    )
        if not changed:
            logger.info("resuming run %s", run_dir)
            return
        if read_only:
            raise NotWritableError(f"{run_dir} is read-only: it cannot take a changed config")
        if extends:
            logger.info("extending run %s: %s -> %d iterations", run_dir, old_iterations,
                        config.iterations)  # fmt: skip
        else:  # config.yaml of a start that failed before any artifact
            logger.warning("%s held no artifact yet: its config is replaced", run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # inputs.json first: config.yaml is what marks the directory as a run.
    write_text_atomic(inputs, json.dumps({"data_files": files}, indent=1))
    write_text_atomic(saved, yaml.safe_dump(wanted, sort_keys=False, allow_unicode=True))


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = set(old) | set(new)
        return [
            k for key in keys for k in _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        ]
    return [] if old == new else [prefix.rstrip(".")]


# ---------------------------------------------------------------------------------------
# Phases
# ---------------------------------------------------------------------------------------


class _Policy:
    """The current policy, loaded once and shared by sampling and evaluation."""

    def __init__(self, device: str | None) -> None:
        self.device, self.path, self.model, self.tokenizer = device, None, None, None

    def load(self, path: str) -> tuple[Any, Any]:
        if self.path != path:
            from sppd_lib.models import load_model

            self.model = self.tokenizer = None  # free the old weights first
            self.model, self.tokenizer = load_model(path, device=self.device)
            self.path = path
        return self.model, self.tokenizer


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
        options = {"seed": data.arith_seed, **data.arith} if name in GENERATED else {}
        loaded = load_problems(name, data.split, offset + wanted, **options)
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


def _engine(config: RunConfig, policy: _Policy, model_path: str) -> tuple[Any, Any]:
    if config.engine == "vllm":
        from sppd_lib.engines.vllm_engine import VLLMEngine

        engine = VLLMEngine(model_path, seed=config.sampler.seed)
        return engine, engine.tokenizer
    from sppd_lib.engines.transformers_engine import TransformersEngine

    model, tokenizer = policy.load(model_path)
    return TransformersEngine(model, tokenizer), tokenizer


def _sample_phase(
    config: RunConfig, policy: _Policy, model_path: str, out_dir: Path, k: int
) -> None:
    from sppd_lib.sampler import sample_to_file

    trees_file = out_dir / "trees.jsonl.gz"
    if trees_file.exists():
        return
    problems = training_problems(config, k)
    logger.info("iteration %d: sampling trees for %d problems", k, len(problems))
    sampler = SamplerConfig(**{**vars(config.sampler), "seed": config.sampler.seed + k})
    engine, tokenizer = _engine(config, policy, model_path)
    try:
        sample_to_file(engine, tokenizer, problems, sampler, trees_file, meta={"iteration": k})
    finally:
        if hasattr(engine, "close"):
            engine.close()


def add_rollouts(config: RunConfig, trees: list[Any], engine: Any, seed: int) -> int:
    """``pairs.rollouts`` extra MC rollouts under thinly sampled steps of every tree (with
    the model that sampled them); returns how many were sampled. Seeded per tree."""
    from sppd_lib.values import add_mc_rollouts

    sampled = 0
    for index, tree in enumerate(trees):
        sampled += add_mc_rollouts(
            tree,
            engine,
            min_leaves=config.pairs.rollouts,
            max_tokens=config.sampler.max_total_tokens,
            temperature=config.sampler.temperature,
            seed=seed * 100_003 + index,
        )
    return sampled


def _pairs_phase(
    config: RunConfig,
    out_dir: Path,
    k: int,
    engine_for: Any = None,
) -> None:
    """Values and step pairs of the iteration's trees. ``engine_for()`` gives the sampling
    engine, needed only for ``pairs.rollouts``."""
    from sppd_lib.pairs import build_pairs, summarize_pairs, write_pairs
    from sppd_lib.tree import read_trees, write_trees

    pairs_file = out_dir / "pairs.parquet"
    if pairs_file.exists():
        return
    trees = list(read_trees(out_dir / "trees.jsonl.gz"))
    if config.pairs.rollouts:
        engine, _ = engine_for()
        try:
            # Nodes that already have enough outcomes (a resumed phase) get none.
            sampled = add_rollouts(config, trees, engine, config.sampler.seed + k)
        finally:
            if hasattr(engine, "close"):
                engine.close()
        logger.info("iteration %d: %d MC rollouts under thin steps", k, sampled)
    pairs, reasons = build_pairs(trees, config.pairs)
    # Values live on the nodes too, for the notebooks; the pairs file marks the phase done.
    write_trees(out_dir / "trees.jsonl.gz", trees)
    summary = {**summarize_pairs(pairs, len(trees)), "trees_without_pairs": dict(reasons)}
    write_text_atomic(out_dir / "pairs_summary.json", json.dumps(summary, indent=1))
    write_pairs(pairs, pairs_file)
    stats = [t.stats() for t in trees]
    logger.info(
        "iteration %d: %d trees, %d complete paths (%d correct), %d pairs",
        k,
        len(trees),
        sum(s.complete_paths for s in stats),
        sum(s.correct_paths for s in stats),
        len(pairs),
    )


def _phase_data(config: RunConfig, phase: str, out_dir: Path) -> pd.DataFrame:
    from sppd_lib.pairs import phase_data
    from sppd_lib.tree import read_trees

    if phase == "sppd":  # built and stored by the pairs phase
        return pd.read_parquet(out_dir / "pairs.parquet")
    trees = read_trees(out_dir / "trees.jsonl.gz")
    return phase_data(phase, trees, config.pairs, config.sft_per_problem)


def _train_phase(
    config: RunConfig,
    model_path: str,
    out_dir: Path,
    k: int,
    data_of: Any = None,
) -> str:
    """Train the iteration's phases in turn; returns the next policy's directory.

    ``data_of(phase)`` gives a phase's training data (default: from ``out_dir``'s pairs and
    trees); the margin study passes the data it built once for all its arms."""
    from sppd_lib.models import load_model
    from sppd_lib.trainer import read_log, train

    train_dir = out_dir / "train"
    done = train_dir / "done.json"
    if done.exists():
        record = json.loads(done.read_text())
        # Relative to the run, so a run moved or opened from elsewhere still finds it.
        return str(train_dir / record["model_dir"]) if "model_dir" in record else record["model"]
    current = model_path
    logs, pair_logs = [], []
    for index, phase in enumerate(config.phases_of(k)):
        phase_dir = train_dir / phase
        data = data_of(phase) if data_of is not None else _phase_data(config, phase, out_dir)
        if len(data) == 0:
            logger.warning("iteration %d: no %s data, phase skipped", k, phase)
            continue
        if not (phase_dir / "model").exists():
            logger.info("iteration %d: %s on %d examples", k, phase, len(data))
            # Only the first phase trains the sampler itself; later ones recompute the
            # reference as the model they start from (e.g. DPO after SFT).
            settings = TrainConfig(
                **{**vars(config.train), **config.phase_train.get(phase, {}), "phase": phase}
            )
            if index > 0:
                settings.reference = "recompute"
            settings.save_merged = True  # the next phase and the next iteration load it
            model, tokenizer = load_model(current, device=config.device)
            train(model, tokenizer, data, settings, phase_dir)
            del model
        current = str(phase_dir / "model")
        logs.append(read_log(phase_dir))
        pair_log = phase_dir / "pair_log.parquet"
        if pair_log.exists():
            pair_logs.append(pd.read_parquet(pair_log))
    train_dir.mkdir(parents=True, exist_ok=True)
    if logs:
        lines = pd.concat(logs, ignore_index=True).to_json(orient="records", lines=True)
        write_text_atomic(train_dir / "log.jsonl", lines)
    if pair_logs:
        write_parquet_atomic(
            pd.concat(pair_logs, ignore_index=True), train_dir / "pair_log.parquet"
        )
    record: dict[str, Any] = {"model": current, "phases": config.phases_of(k)}
    if Path(current).parent.parent == train_dir:
        record["model_dir"] = str(Path(current).relative_to(train_dir))
    write_text_atomic(done, json.dumps(record))
    return current


def _eval_phase(config: RunConfig, policy: _Policy, model_path: str, out_dir: Path, k: int) -> None:
    """Greedy pass@1 (and sampled metrics if ``eval.num_samples``) with the run's engine."""
    from sppd_lib.evaluate import evaluate, evaluate_samples

    eval_file = out_dir / "eval.parquet"
    samples_file = out_dir / "eval_samples.parquet"
    if eval_file.exists() and (samples_file.exists() or not config.eval.num_samples):
        return
    logger.info("iteration %d: evaluating %s", k, ", ".join(config.eval.benchmarks))
    engine, tokenizer = _engine(config, policy, model_path)
    try:
        if config.eval.num_samples and not samples_file.exists():
            write_parquet_atomic(evaluate_samples(engine, tokenizer, config.eval), samples_file)
        if not eval_file.exists():
            # Greedy: vLLM through its engine, transformers through `generate` (measured
            # faster here than our step engine, which is built for short tree steps).
            model = None if config.engine == "vllm" else policy.load(model_path)[0]
            greedy = evaluate(
                model, tokenizer, config.eval, engine=engine if model is None else None
            )
            write_parquet_atomic(greedy, eval_file)
    finally:
        if hasattr(engine, "close"):
            engine.close()


def _evaluated_iterations(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(iteration, its directory) of every iteration with a greedy evaluation, in order."""
    directories = ((int(d.name[5:]), d) for d in Path(run_dir).glob("iter_*"))
    return sorted((k, d) for k, d in directories if (d / "eval.parquet").exists())


def summary_table(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per (iteration, benchmark, metric) from the stored evaluations (regradable)."""
    from sppd_lib.evaluate import SUMMARY_COLUMNS, summary_rows

    frames = []
    for iteration, directory in _evaluated_iterations(run_dir):
        samples = directory / "eval_samples.parquet"
        frames.append(
            summary_rows(
                pd.read_parquet(directory / "eval.parquet"),
                pd.read_parquet(samples) if samples.exists() else None,
                iteration,
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SUMMARY_COLUMNS)


def accuracy_by_iteration(summary: pd.DataFrame, metric: str = "pass@1") -> pd.DataFrame:
    """Accuracy table: one row per iteration, one column per benchmark."""
    rows = summary[summary["metric"] == metric]
    return rows.pivot(index="iteration", columns="benchmark", values="value").rename_axis(
        None, axis=1
    )


def change_since_start(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Greedy pass@1 of the last evaluated iteration against iteration 0, problem by problem
    (:func:`sppd_lib.metrics.paired_change`); adds the ``iteration`` compared. Empty before
    two iterations are evaluated."""
    from sppd_lib.metrics import paired_change

    evaluated = _evaluated_iterations(run_dir)
    if len(evaluated) < 2 or evaluated[0][0] != 0:
        return pd.DataFrame()
    (_, first), (last, last_dir) = evaluated[0], evaluated[-1]
    change = paired_change(
        pd.read_parquet(first / "eval.parquet"), pd.read_parquet(last_dir / "eval.parquet")
    )
    return change.assign(iteration=last)


# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------


def check_run(config: RunConfig, run_dir: str | os.PathLike[str]) -> None:
    """Everything a run needs, checked before its first artifact: the device, the starting
    model, every PRM and reference model it will load, every data set it will read, and that
    the run directory can be written (or, if it exists, is not a file).

    Raises:
        ConfigError, DataError, ModelError, NotWritableError: naming the key, file or value.
    """
    from sppd_lib.models import ModelError, check_device, resolve_model

    check_device(config.device)
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


def _finished(config: RunConfig, run_dir: Path) -> bool:
    last = iteration_dir(run_dir, config.iterations)
    return (run_dir / "final_model.txt").is_file() and (last / "eval.parquet").is_file()


def _write_if_changed(summary: pd.DataFrame, path: Path) -> None:
    """Rewrite ``summary.parquet`` only when it changed, so reopening a finished run writes
    nothing (it may sit on read-only storage)."""
    if path.is_file():
        try:
            pd.testing.assert_frame_equal(pd.read_parquet(path), summary, check_dtype=False)
            return
        except (AssertionError, OSError, ValueError):
            pass
    write_parquet_atomic(summary, path)


def run(config: RunConfig, run_dir: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Run (or resume, or extend) the loop; returns the summary table (also
    ``summary.parquet``).

    Everything is checked (:func:`check_run`) before anything is written; one process at a
    time may write a run directory (:class:`sppd_lib.files.RunLock`, :class:`LockedError`
    otherwise). A finished run on read-only storage reopens without writing.
    """
    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / config.run_id
    check_run(config, run_dir)
    with RunLock(run_dir) as lock:
        if lock.read_only and not _finished(config, run_dir):
            raise NotWritableError(
                f"{run_dir} is not writable and its run is not finished: copy it to writable "
                "storage to resume it"
            )
        _start_run_dir(config, run_dir, read_only=lock.read_only)
        return _loop(config, run_dir)


def _loop(config: RunConfig, run_dir: Path) -> pd.DataFrame:
    from sppd_lib.models import resolve_model

    model_path = resolve_model(config.model)
    policy = _Policy(config.device)
    started = time.perf_counter()
    for k in range(config.iterations + 1):
        out_dir = iteration_dir(run_dir, k)
        out_dir.mkdir(parents=True, exist_ok=True)
        if k > 0:
            _sample_phase(config, policy, model_path, out_dir, k)
            sampler_path = model_path  # the model that sampled the trees rolls out
            _pairs_phase(config, out_dir, k, lambda p=sampler_path: _engine(config, policy, p))
            model_path = _train_phase(config, model_path, out_dir, k)
        _eval_phase(config, policy, model_path, out_dir, k)
        summary = summary_table(run_dir)
        _write_if_changed(summary, run_dir / "summary.parquet")
        minutes = (time.perf_counter() - started) / 60
        table = accuracy_by_iteration(summary).to_string(float_format=lambda x: f"{x:.3f}")
        logger.info("pass@1 after iteration %d (%.1f min):\n%s", k, minutes, table)
    # Relative to the run dir when the model is in it, so a moved run (or a copy on
    # read-only storage) reopens without rewriting it.
    inside = Path(model_path).is_relative_to(run_dir)
    text = str(Path(model_path).relative_to(run_dir)) if inside else model_path
    final = run_dir / "final_model.txt"
    if not final.is_file() or final.read_text() != text + "\n":
        write_text_atomic(final, text + "\n")
    return summary
