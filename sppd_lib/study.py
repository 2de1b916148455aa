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

The config is ``sppd_lib.config.StudyConfig``. Each arm runs once per training seed (data
order and LoRA initialisation). The study directory (``studies/<study_id>/``, whose files
``sppd_lib.rundir.StudyDir`` names) is laid out as::

    study.yaml                          the resolved config (a rerun must match it)
    trees.jsonl.gz                      the shared trees, as sampled
    start/eval.parquet                  the starting model's evaluation
    values/<estimator>/                 valued trees, pairs.parquet, sft.parquet, dpo.parquet,
                                        pairs_summary.json (and prm/ for an own PRM)
    <arm>/seed_<s>/train/, eval.parquet, arm.json (written last: the arm × seed is done;
                                        it records the sha256 of the data it trained on,
                                        and a new arm must match them: no mixed tables)
    study.parquet                       one row per arm × seed × benchmark × metric
    arms.parquet, comparisons.parquet   per-arm intervals and paired comparisons
                                        (``sppd_lib.study_results`` reads and computes them)

Every artifact is written atomically and skipped when present, so rerunning a killed study
finishes the rest and ends with the same tables.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from sppd_lib.config import (
    START,
    ArmConfig,
    ConfigError,
    PairConfig,
    StudyConfig,
    config_to_dict,
    resolve_arms,
)
from sppd_lib.files import write_parquet_atomic
from sppd_lib.rundir import PhaseDir, RunDir, StudyDir, write_json

__all__ = ["run_study", "sha256_file"]

logger = logging.getLogger(__name__)

#: Keys a rerun may change: they add or drop arms, never alter a finished one.
_GROWABLE = {"seeds", "gammas", "baselines", "arms", "compare", "report", "keep_models"}


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _finished_arms(study: StudyDir) -> list[tuple[Path, dict[str, Any]]]:
    """``(arm.json, record)`` of every finished arm × seed, in a stable order."""
    import json

    found = []
    for path in sorted(study.path.glob("*/seed_*/arm.json")):
        try:
            found.append((path, json.loads(path.read_text(encoding="utf-8"))))
        except ValueError:
            raise ConfigError(f"{path} is not valid JSON: delete it to redo that arm") from None
    return found


def _mixed(what: Path, current: str, record: Path, recorded: str) -> ConfigError:
    return ConfigError(
        f"{what} has sha256 {current[:16]}, but the finished arm {record} was trained on "
        f"sha256 {recorded[:16]}: the study's shared data changed, and a new arm would not "
        "be comparable. Restore the file, or start a new study (another study_id / "
        "--study-dir)"
    )


def _check_shared_trees(study: StudyDir, finished: list[tuple[Path, dict[str, Any]]]) -> None:
    """Every finished arm was trained on the trees the study holds now.

    Raises:
        ConfigError: naming the trees file, the arm record and both hashes.
    """
    if not finished or not study.trees.is_file():
        return
    current = sha256_file(study.trees)
    for path, record in finished:
        recorded = record.get("trees_sha256")
        if recorded is not None and recorded != current:
            raise _mixed(study.trees, current, path, recorded)


def _check_shared_values(
    files: dict[str, Path],
    estimator: str,
    finished: list[tuple[Path, dict[str, Any]]],
) -> dict[str, str]:
    """The sha256 of an arm's data ``files`` (by phase), checked equal to those of every
    finished arm on the same value estimator; returns them.

    Raises:
        ConfigError: naming the data file, the arm record and both hashes.
    """
    hashes = {phase: sha256_file(path) for phase, path in files.items()}
    for path, record in finished:
        if record.get("values") != estimator:
            continue
        for phase, recorded in (record.get("data_sha256") or {}).items():
            if phase in hashes and recorded != hashes[phase]:
                raise _mixed(files[phase], hashes[phase], path, recorded)
    return hashes


def _take_trees(config: StudyConfig, study: StudyDir, from_run: RunDir) -> None:
    """Copy iteration 1's trees of an existing run (sampled by the same starting model)."""
    source = from_run.iteration(1).trees
    if not source.is_file():
        raise ConfigError(f"--from-run {from_run.path}: no {source} there")
    model = from_run.read_config().get("model")
    if model != config.model:
        raise ConfigError(
            f"--from-run {from_run.path} sampled with model {model!r}, the study "
            f"starts from {config.model!r}: the trees must come from the starting model"
        )
    partial = study.trees.with_name(study.trees.name + ".tmp")
    shutil.copyfile(source, partial)
    os.replace(partial, study.trees)
    write_json(study.trees_source, {"run": str(from_run.path)}, indent=None)


def _build_values(
    config: StudyConfig, name: str, pair_config: PairConfig, study: StudyDir, engine_for: Any
) -> None:
    """Values, step pairs, τ+ and (τ+, τ−) of the shared trees for one estimator (the values
    are computed once, then every builder reads them)."""
    from sppd_lib.pairs import (
        build_pairs,
        build_sentence_pairs,
        build_sft_examples,
        summarize_pairs,
        write_pairs,
    )
    from sppd_lib.phases import add_rollouts
    from sppd_lib.tree import read_trees, write_trees

    out = study.values(name)
    if out.pairs.exists():
        return
    out.path.mkdir(parents=True, exist_ok=True)
    trees = list(read_trees(study.trees))
    if pair_config.rollouts:
        run_config = dataclasses.replace(config.run_config(["sppd"]), pairs=pair_config)
        sampled = add_rollouts(run_config, trees, engine_for()[0], config.sampler.seed)
        logger.info("values %s: %d MC rollouts under thin steps", name, sampled)
    if pair_config.value == "prm" and pair_config.prm_model == "own":
        pair_config = dataclasses.replace(pair_config, prm_model=str(_own_prm(config, trees, out)))
    pairs, reasons = build_pairs(trees, pair_config)  # values every tree
    sft = build_sft_examples(trees, pair_config, config.sft_per_problem, valued=True)
    write_parquet_atomic(sft, out.sft_data)
    write_parquet_atomic(build_sentence_pairs(trees, pair_config, valued=True), out.dpo_data)
    write_trees(out.trees, trees)
    summary = {
        **summarize_pairs(pairs, len(trees), reasons),
        "value": pair_config.value,
        "prm_model": pair_config.prm_model,
    }
    write_json(out.pairs_summary, summary)
    write_pairs(pairs, out.pairs)  # the estimator's done-marker, written last
    logger.info("values %s: %d pairs from %d trees", name, len(pairs), len(trees))


def _own_prm(config: StudyConfig, trees: list[Any], out: PhaseDir) -> Path:
    """A PRM trained on the trees' own Monte-Carlo labels (kept in ``out.prm``)."""
    from sppd_lib.models import is_saved_model, resolve_model
    from sppd_lib.pairs import stepwise_records
    from sppd_lib.prm import train_prm
    from sppd_lib.tree import StepTree
    from sppd_lib.values import mc_values

    if is_saved_model(out.prm):
        return out.prm
    labelled = [mc_values(StepTree.from_dict(tree.to_dict())) for tree in trees]
    records = stepwise_records(labelled)
    logger.info("training an own PRM on %d paths' MC labels", len(records))
    partial = out.prm.with_name(out.prm.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    train_prm(records, resolve_model(config.model), partial, seed=0, device=config.device)
    os.replace(partial, out.prm)
    return out.prm


def _run_arm(
    config: StudyConfig,
    arm: ArmConfig,
    seed: int,
    study: StudyDir,
    model_path: str,
    policy: Any,
) -> None:
    from sppd_lib.phases import eval_phase, train_phase

    arm_dir = study.arm(arm.name, seed)
    if arm_dir.arm_record.exists() and arm_dir.eval.exists():
        return
    arm_dir.arm_record.unlink(missing_ok=True)  # its eval.parquet was lost: not done
    run_config = config.run_config(arm.phases, {**arm.train, "seed": seed}, arm.name)
    estimator = arm.values or "main"
    values = study.values(estimator)
    files = {phase: values.phase_data(phase) for phase in arm.phases}
    # Before anything of the arm is made: its data is the data the finished arms had.
    data_sha256 = _check_shared_values(files, estimator, _finished_arms(study))
    arm_dir.path.mkdir(parents=True, exist_ok=True)
    logger.info(
        "arm %s, seed %d: %s on values %s", arm.name, seed, "+".join(arm.phases), arm.values
    )
    started = time.perf_counter()
    policy.make_room_for_training()
    final = train_phase(
        run_config, model_path, arm_dir, 1, lambda phase: pd.read_parquet(files[phase])
    )
    trained = time.perf_counter()
    eval_phase(run_config, policy, final, arm_dir, 1)
    record = {
        "arm": arm.name,
        "seed": seed,
        "phases": arm.phases,
        "values": arm.values,
        "train": config_to_dict(run_config.train),
        "data_sha256": data_sha256,
        "trees_sha256": sha256_file(study.trees),
        "train_seconds": trained - started,
        "eval_seconds": time.perf_counter() - trained,
    }
    record["trained_phases"] = [
        phase for phase in arm.phases if arm_dir.train.phase(phase).log.is_file()
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
        for phase in arm.phases:
            shutil.rmtree(arm_dir.train.phase(phase).model, ignore_errors=True)
    write_json(arm_dir.arm_record, record)


def run_study(
    config: StudyConfig,
    study_dir: str | os.PathLike[str] | None = None,
    *,
    from_run: str | os.PathLike[str] | None = None,
) -> Any:
    """Run (or resume) a study; returns its :class:`~sppd_lib.study_results.Study` with the
    tables (also written as parquet)."""
    from sppd_lib.engines.serving import Policy
    from sppd_lib.files import RunLock
    from sppd_lib.loop import check_run, training_problems
    from sppd_lib.models import resolve_model
    from sppd_lib.phases import eval_phase, sample_phase
    from sppd_lib.study_results import load_study

    root = Path(study_dir) if study_dir is not None else Path("studies") / config.study_id
    study = StudyDir(root)
    base = config.run_config(["sppd"])
    check_run(base, root)  # model, PRMs, data, writable: before anything is written
    for pair_config in config.estimators.values():
        if pair_config.value == "prm" and pair_config.prm_model != "own":
            resolve_model(pair_config.prm_model)  # type: ignore[arg-type]
    source = RunDir(from_run) if from_run is not None else None
    if source is not None and not source.iteration(1).trees.is_file():
        raise ConfigError(f"--from-run {from_run}: no {source.iteration(1).trees} there")
    model_path = resolve_model(config.model)
    # One engine for the whole study (see loop.run).
    with (
        RunLock(root, f"study directory {root}"),
        Policy.for_run(base, model_path) as policy,
    ):
        study.start(config_to_dict(config), _GROWABLE)
        started = time.perf_counter()
        if not study.trees.exists():
            if source is not None:
                _take_trees(config, study, source)
            else:
                sample_phase(base, policy, model_path, study.root, 1, training_problems(base, 1))
        _check_shared_trees(study, _finished_arms(study))
        start = study.start_dir(START)
        start.path.mkdir(exist_ok=True)
        eval_phase(base, policy, model_path, start, 0)
        estimators = config.estimators

        def engine_for() -> tuple[Any, Any]:
            return policy.engine(model_path)  # the model that sampled the trees

        arms = resolve_arms(config)
        # An estimator is built when its first arm needs it; the others (only shown in the
        # report's Δv figure) after every arm, so they never hold the arms up.
        needed = list(dict.fromkeys(arm.values for arm in arms))
        # Seed by seed, so a study stopped early has compared every arm on the first seeds.
        for seed in config.seeds:
            for arm in arms:
                _build_values(config, arm.values, estimators[arm.values], study, engine_for)
                _run_arm(config, arm, seed, study, model_path, policy)
        for name in [n for n in estimators if n not in needed]:
            _build_values(config, name, estimators[name], study, engine_for)
        results = load_study(root)
        write_parquet_atomic(results.table, study.table)
        write_parquet_atomic(results.arms, study.arms)
        write_parquet_atomic(results.comparisons, study.comparisons)
    logger.info("study %s done in %.1f min", root, (time.perf_counter() - started) / 60)
    return results
