"""The margin study: the paper's ablation (Yi et al., arXiv 2502.13516, Table 4 and Figure 2)
as one command, on shared trees, with training seeds and paired statistics.

From one starting model, one set of step trees is sampled once (or taken from an existing
run), values and pairs are built once per value estimator, and then every **arm** is trained
from the same start on the same data and evaluated on the same held-out problems:

* ``sft``: rejection-sampling SFT on τ+ (correct complete paths);
* ``dpo``: sentence-level DPO on (τ+, τ−);
* ``step_dpo``: step pairs, margin 0 (Step-DPO);
* ``fixed``: step pairs, one constant margin (default: the mean of γ·Δv at ``train.gamma``);
* ``dynamic_g<γ>``: SPPD, margin γ·Δv, for each γ of the grid;
* any arm of the user's (phases and train overrides, e.g. ``[sft, sppd]``).

Each arm runs once per training seed (data order and LoRA initialisation). The study
directory (``studies/<study_id>/``) is laid out as::

    study.yaml                          the resolved config (a rerun must match it)
    trees.jsonl.gz                      the shared trees, as sampled
    start/eval.parquet                  the starting model's evaluation
    values/<estimator>/                 valued trees, pairs.parquet, sft.parquet, dpo.parquet,
                                        pairs_summary.json (and prm/ for an own PRM)
    <arm>/seed_<s>/train/, eval.parquet, arm.json (written last: the arm × seed is done;
                                        it records the sha256 of the data it trained on)
    study.parquet                       one row per arm × seed × benchmark × metric
    arms.parquet, comparisons.parquet   per-arm intervals and paired comparisons
                                        (``sppd_lib.study_results`` reads and computes them)

Every artifact is written atomically and skipped when present, so rerunning a killed study
finishes the rest and ends with the same tables.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sppd_lib.config import (
    ConfigError,
    EvalConfig,
    config_from_dict,
    config_to_dict,
    load_yaml,
    option,
)
from sppd_lib.files import write_parquet_atomic, write_text_atomic
from sppd_lib.loop import DataConfig, RunConfig, apply_overrides, migrate_margin_keys
from sppd_lib.pairs import PairConfig
from sppd_lib.sampler import SamplerConfig
from sppd_lib.trainer import TrainConfig

__all__ = ["ArmConfig", "StudyConfig", "load_study_config", "resolve_arms", "run_study"]

logger = logging.getLogger(__name__)

#: Names the study directory uses itself, so no arm may take them.
RESERVED = {"start", "values", "report"}
BASELINES = ("sft", "dpo", "step_dpo", "fixed")
START = "start"  # the untrained starting model, as an arm of the tables


@dataclass
class ArmConfig:
    """One arm of a study: how to train from the start on the shared data."""

    name: str = option("", "Arm name (letters, digits, '_', '.', '-'): its directory.")
    phases: list[str] = option(["sppd"], "Training phases in order, e.g. [sft, sppd].")
    values: str | None = option(
        None, "Value estimator whose pairs it trains on (a key of `values`); null: the first."
    )
    train: dict[str, Any] = option(
        {}, "Overrides of the study's train config, e.g. {margin: fixed, fixed_margin: 0.8}."
    )


@dataclass
class StudyConfig:
    """A margin study: arms × seeds trained from one start on the same trees and pairs.

    The run-config sections (``model`` ... ``eval``) mean what they mean in a run config
    (``sppd_lib.loop.RunConfig``) for its first iteration: ``data`` gives the training
    prompts of the one set of trees, ``eval`` the held-out problems every arm is scored on.
    """

    study_id: str = option("study", "Name of the study; its directory is studies/<study_id>.")
    model: str = option("smollm2-135m-instruct", "Starting policy, sampler and reference.")
    device: str | None = option(None, "cpu or cuda (default: cuda if present).")
    engine: str = option("transformers", "Sampling engine: 'transformers' or 'vllm'.")
    sft_per_problem: int = option(4, "τ+ paths per problem for sft phases.")
    phase_train: dict[str, dict[str, Any]] = option(
        {}, "Train settings per phase over `train`, e.g. {sft: {learning_rate: 1e-4}}."
    )
    data: DataConfig = field(
        default_factory=DataConfig, metadata={"help": "Training prompts of the shared trees."}
    )
    sampler: SamplerConfig = field(default_factory=SamplerConfig, metadata={"help": "Sampler."})
    pairs: PairConfig = field(
        default_factory=PairConfig,
        metadata={"help": "The first value estimator and the Δv filter."},
    )
    train: TrainConfig = field(
        default_factory=TrainConfig,
        metadata={"help": "Train settings of every arm (arms override some of them)."},
    )
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Held-out evaluation."})
    values: dict[str, dict[str, Any]] = option(
        {},
        "Value estimators, name -> overrides of `pairs`, e.g. {mc: {}, prm_own: {value: prm, "
        "prm_model: own}}; empty: one estimator 'main' = `pairs`. prm_model 'own' trains a "
        "PRM (prm.train_prm, from `model`) on the trees' Monte-Carlo labels, for users "
        "without a published PRM (the paper used one).",
    )
    seeds: list[int] = option([0, 1, 2], "Training seeds of every arm (data order, LoRA init).")
    gammas: list[float] = option(
        [0.1, 0.5, 1.0, 2.0, 5.0], "γ grid of the dynamic arms (the paper's: 0.1, 0.5, 1, 2, 5)."
    )
    baselines: list[str] = option(
        list(BASELINES),
        "Standard arms: sft (τ+), dpo (τ+ vs τ−), step_dpo (margin none), fixed (one margin, "
        "by default the mean of γ·Δv at train.gamma: the same mean margin as dynamic).",
    )
    arms: list[dict[str, Any]] = option(
        [], "Arms of your own: a list of {name, phases, values, train} (ArmConfig)."
    )
    compare: list[str] = option(
        [],
        "Two arms whose flipped problems the report lists; default: dynamic at train.gamma "
        "vs step_dpo.",
    )
    keep_models: bool = option(
        False, "Keep every arm's merged weights (SmolLM2 fp32: 540 MB each); adapters are kept."
    )
    report: bool = option(True, "`sppd study` ends by writing the HTML report.")

    def __post_init__(self) -> None:
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise ConfigError(f"baselines: unknown {unknown} (choose from {list(BASELINES)})")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct and at least one, got {self.seeds}")
        if any(g < 0 for g in self.gammas):
            raise ConfigError(f"gammas must be >= 0, got {self.gammas}")
        for name in self.values:
            _check_name(name, "values")
        self.run_config(["sppd"])  # the shared sections are valid as a run config
        arms = resolve_arms(self)
        names = [arm.name for arm in arms]
        if len(set(names)) != len(names):
            raise ConfigError(f"arm names must be unique, got {names}")
        for arm in arms:
            self.run_config(arm.phases, arm.train, arm.name)  # every arm's train config is valid
        if self.compare and (len(self.compare) != 2 or not set(self.compare) <= {*names, START}):
            raise ConfigError(f"compare names two arms of {[*names, START]}, got {self.compare}")

    @property
    def estimators(self) -> dict[str, PairConfig]:
        """Value estimator name -> its pair config, in order (the first is the default)."""
        specs = self.values or {"main": {}}
        return {
            name: config_from_dict(
                PairConfig, {**config_to_dict(self.pairs), **overrides}, f"values.{name}."
            )
            for name, overrides in specs.items()
        }

    @property
    def headline_arm(self) -> str:
        return _dynamic_name(self.train.gamma)

    def run_config(
        self, phases: list[str], train: dict[str, Any] | None = None, name: str = "study"
    ) -> RunConfig:
        """The run config of one arm (its first iteration): what the loop's phases read."""
        settings = {
            "run_id": self.study_id,
            "model": self.model,
            "device": self.device,
            "iterations": 1,
            "phases": list(phases),
            "phase_train": self.phase_train,
            "engine": self.engine,
            "sft_per_problem": self.sft_per_problem,
            "report": False,
            "data": config_to_dict(self.data),
            "sampler": config_to_dict(self.sampler),
            "pairs": config_to_dict(self.pairs),
            "train": {**config_to_dict(self.train), **(train or {})},
            "eval": config_to_dict(self.eval),
        }
        where = "" if name == "study" else f"arm {name}: "
        try:
            return config_from_dict(RunConfig, settings)
        except ValueError as exc:
            raise ConfigError(f"{where}{exc}") from None


def _check_name(name: str, what: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in RESERVED:
        raise ConfigError(
            f"{what}: {name!r} is not a usable name (letters, digits, '_', '.', '-'; "
            f"not {sorted(RESERVED)})"
        )


def _dynamic_name(gamma: float) -> str:
    return f"dynamic_g{gamma:g}"


def resolve_arms(config: StudyConfig) -> list[ArmConfig]:
    """The arms of a study, in table order: baselines, the γ grid, then the user's arms."""
    gamma = config.train.gamma
    standard = {
        "sft": ArmConfig("sft", ["sft"]),
        "dpo": ArmConfig("dpo", ["dpo"]),
        "step_dpo": ArmConfig("step_dpo", ["sppd"], train={"margin": "none"}),
        "fixed": ArmConfig("fixed", ["sppd"], train={"margin": "fixed", "gamma": gamma}),
    }
    arms = [standard[name] for name in BASELINES if name in config.baselines]
    gammas = sorted({*config.gammas, gamma}) if config.gammas else []
    arms += [
        ArmConfig(_dynamic_name(g), ["sppd"], train={"margin": "dynamic", "gamma": g})
        for g in gammas
    ]
    for index, spec in enumerate(config.arms):
        arm = config_from_dict(ArmConfig, spec, f"arms[{index}].")
        _check_name(arm.name, f"arms[{index}].name")
        arms.append(arm)
    estimators = list(config.values or {"main": {}})
    for arm in arms:
        arm.values = arm.values or estimators[0]
        if arm.values not in estimators:
            raise ConfigError(f"arm {arm.name}: unknown values {arm.values!r} (have {estimators})")
    return arms


def load_study_config(
    path: str | os.PathLike[str], overrides: list[str] | None = None
) -> StudyConfig:
    """A :class:`StudyConfig` from YAML with ``key.sub=value`` overrides (values as YAML)."""
    data = apply_overrides(load_yaml(path), overrides or [])
    migrate_margin_keys(data, str(path))
    try:
        return config_from_dict(StudyConfig, data)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# ---------------------------------------------------------------------------------------
# The study directory
# ---------------------------------------------------------------------------------------

#: Keys a rerun may change: they add or drop arms, never alter a finished one.
_GROWABLE = {"seeds", "gammas", "baselines", "arms", "compare", "report", "keep_models"}


def _start_study_dir(config: StudyConfig, root: Path) -> None:
    import yaml

    from sppd_lib.loop import _changed_keys

    saved = root / "study.yaml"
    wanted = config_to_dict(config)
    if saved.exists():
        previous = load_yaml(saved)
        changed = sorted(
            k for k in _changed_keys(previous, wanted) if k.split(".")[0] not in _GROWABLE
        )
        if changed:
            raise ConfigError(
                f"{root} holds a study with another config (changed: {', '.join(changed)}); "
                "use another study_id / --study-dir (seeds, gammas and arms may change)"
            )
        logger.info("resuming study %s", root)
    root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(saved, yaml.safe_dump(wanted, sort_keys=False, allow_unicode=True))


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _take_trees(config: StudyConfig, root: Path, from_run: Path) -> None:
    """Copy iteration 1's trees of an existing run (sampled by the same starting model)."""
    source = from_run / "iter_1" / "trees.jsonl.gz"
    if not source.is_file():
        raise ConfigError(f"--from-run {from_run}: no iter_1/trees.jsonl.gz there")
    run_config = load_yaml(from_run / "config.yaml") if (from_run / "config.yaml").is_file() else {}
    if run_config.get("model") != config.model:
        raise ConfigError(
            f"--from-run {from_run} sampled with model {run_config.get('model')!r}, the study "
            f"starts from {config.model!r}: the trees must come from the starting model"
        )
    shutil.copyfile(source, root / "trees.jsonl.gz.tmp")
    os.replace(root / "trees.jsonl.gz.tmp", root / "trees.jsonl.gz")
    write_text_atomic(root / "trees_source.json", json.dumps({"run": str(from_run)}))


def _build_values(
    config: StudyConfig, name: str, pair_config: PairConfig, root: Path, engine_for: Any
) -> None:
    """Values, step pairs, τ+ and (τ+, τ−) of the shared trees for one estimator."""
    from sppd_lib.loop import add_rollouts
    from sppd_lib.pairs import (
        build_pairs,
        build_sentence_pairs,
        build_sft_examples,
        summarize_pairs,
        write_pairs,
    )
    from sppd_lib.tree import read_trees, write_trees

    out = root / "values" / name
    if (out / "pairs.parquet").exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    trees = list(read_trees(root / "trees.jsonl.gz"))
    if pair_config.rollouts:
        engine, _ = engine_for()
        try:
            run_config = dataclasses.replace(config.run_config(["sppd"]), pairs=pair_config)
            sampled = add_rollouts(run_config, trees, engine, config.sampler.seed)
        finally:
            if hasattr(engine, "close"):
                engine.close()
        logger.info("values %s: %d MC rollouts under thin steps", name, sampled)
    if pair_config.value == "prm" and pair_config.prm_model == "own":
        pair_config = dataclasses.replace(pair_config, prm_model=str(_own_prm(config, trees, out)))
    pairs, reasons = build_pairs(trees, pair_config)
    write_parquet_atomic(
        build_sft_examples(trees, pair_config, config.sft_per_problem), out / "sft.parquet"
    )
    write_parquet_atomic(build_sentence_pairs(trees, pair_config), out / "dpo.parquet")
    write_trees(out / "trees.jsonl.gz", trees)
    summary = {
        **summarize_pairs(pairs, len(trees)),
        "trees_without_pairs": dict(reasons),
        "value": pair_config.value,
        "prm_model": pair_config.prm_model,
    }
    write_text_atomic(out / "pairs_summary.json", json.dumps(summary, indent=1))
    write_pairs(pairs, out / "pairs.parquet")  # the estimator's done-marker, written last
    logger.info("values %s: %d pairs from %d trees", name, len(pairs), len(trees))


def _own_prm(config: StudyConfig, trees: list[Any], out: Path) -> Path:
    """A PRM trained on the trees' own Monte-Carlo labels (kept in ``out/prm``)."""
    from sppd_lib.models import resolve_model
    from sppd_lib.pairs import stepwise_records
    from sppd_lib.prm import train_prm
    from sppd_lib.tree import StepTree
    from sppd_lib.values import mc_values

    prm_dir = out / "prm"
    if (prm_dir / "config.json").is_file():
        return prm_dir
    labelled = [mc_values(StepTree.from_dict(tree.to_dict())) for tree in trees]
    records = stepwise_records(labelled)
    logger.info("training an own PRM on %d paths' MC labels", len(records))
    partial = out / "prm.partial"
    shutil.rmtree(partial, ignore_errors=True)
    train_prm(records, resolve_model(config.model), partial, seed=0, device=config.device)
    os.replace(partial, prm_dir)
    return prm_dir


def _phase_file(root: Path, values: str, phase: str) -> Path:
    return root / "values" / values / {"sppd": "pairs", "sft": "sft", "dpo": "dpo"}[phase]


def _run_arm(
    config: StudyConfig, arm: ArmConfig, seed: int, root: Path, model_path: str, policy: Any
) -> None:
    from sppd_lib.loop import _eval_phase, _train_phase

    arm_dir = root / arm.name / f"seed_{seed}"
    if (arm_dir / "arm.json").exists():
        return
    arm_dir.mkdir(parents=True, exist_ok=True)
    run_config = config.run_config(arm.phases, {**arm.train, "seed": seed}, arm.name)
    files = {
        phase: _phase_file(root, arm.values or "main", phase).with_suffix(".parquet")
        for phase in arm.phases
    }
    logger.info(
        "arm %s, seed %d: %s on values %s", arm.name, seed, "+".join(arm.phases), arm.values
    )
    started = time.perf_counter()
    final = _train_phase(
        run_config, model_path, arm_dir, 1, lambda phase: pd.read_parquet(files[phase])
    )
    trained = time.perf_counter()
    _eval_phase(run_config, policy, final, arm_dir, 1)
    record = {
        "arm": arm.name,
        "seed": seed,
        "phases": arm.phases,
        "values": arm.values,
        "train": config_to_dict(run_config.train),
        "data_sha256": {phase: sha256_file(path) for phase, path in files.items()},
        "trees_sha256": sha256_file(root / "trees.jsonl.gz"),
        "train_seconds": trained - started,
        "eval_seconds": time.perf_counter() - trained,
    }
    record["trained_phases"] = [
        phase for phase in arm.phases if (arm_dir / "train" / phase / "log.jsonl").is_file()
    ]
    if record["trained_phases"] != arm.phases:
        logger.warning(
            "arm %s, seed %d: trained %s of %s (no data for the rest)",
            arm.name,
            seed,
            record["trained_phases"],
            arm.phases,
        )
    if not config.keep_models:  # merged weights we wrote; the adapters stay
        for model_dir in (arm_dir / "train").glob("*/model"):
            shutil.rmtree(model_dir)
    write_text_atomic(arm_dir / "arm.json", json.dumps(record, indent=1))


def run_study(
    config: StudyConfig,
    study_dir: str | os.PathLike[str] | None = None,
    *,
    from_run: str | os.PathLike[str] | None = None,
) -> Any:
    """Run (or resume) a study; returns its :class:`~sppd_lib.study_results.Study` with the
    tables (also written as parquet)."""
    from sppd_lib.files import RunLock
    from sppd_lib.loop import _engine, _eval_phase, _Policy, _sample_phase, check_run
    from sppd_lib.models import resolve_model
    from sppd_lib.study_results import load_study

    root = Path(study_dir) if study_dir is not None else Path("studies") / config.study_id
    base = config.run_config(["sppd"])
    check_run(base, root)  # model, PRMs, data, writable: before anything is written
    for pair_config in config.estimators.values():
        if pair_config.value == "prm" and pair_config.prm_model != "own":
            resolve_model(pair_config.prm_model)  # type: ignore[arg-type]
    if from_run is not None and not (Path(from_run) / "iter_1" / "trees.jsonl.gz").is_file():
        raise ConfigError(f"--from-run {from_run}: no iter_1/trees.jsonl.gz there")
    model_path = resolve_model(config.model)
    with RunLock(root, f"study directory {root}"):
        _start_study_dir(config, root)
        policy = _Policy(config.device)
        started = time.perf_counter()
        if not (root / "trees.jsonl.gz").exists():
            if from_run is not None:
                _take_trees(config, root, Path(from_run))
            else:
                _sample_phase(base, policy, model_path, root, 1)
        (root / START).mkdir(exist_ok=True)
        _eval_phase(base, policy, model_path, root / START, 0)
        estimators = config.estimators
        engine_for = lambda: _engine(base, policy, model_path)  # noqa: E731
        arms = resolve_arms(config)
        # An estimator is built when its first arm needs it; the others (only shown in the
        # report's Δv figure) after every arm, so they never hold the arms up.
        needed = list(dict.fromkeys(arm.values for arm in arms))
        # Seed by seed, so a study stopped early has compared every arm on the first seeds.
        for seed in config.seeds:
            for arm in arms:
                _build_values(config, arm.values, estimators[arm.values], root, engine_for)
                _run_arm(config, arm, seed, root, model_path, policy)
        for name in [n for n in estimators if n not in needed]:
            _build_values(config, name, estimators[name], root, engine_for)
        study = load_study(root)
        write_parquet_atomic(study.table, root / "study.parquet")
        write_parquet_atomic(study.arms, root / "arms.parquet")
        write_parquet_atomic(study.comparisons, root / "comparisons.parquet")
    logger.info("study %s done in %.1f min", root, (time.perf_counter() - started) / 60)
    return study
