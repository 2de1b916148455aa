"""The phases of one self-training iteration, each on a :class:`~sppd_lib.rundir.PhaseDir`:
sampling trees, values and pairs, training, evaluation. The engine they sample with is the
run's :class:`~sppd_lib.engines.serving.Policy`.

The loop (``loop``), the margin study (``study``) and the subcommands (``cli``) call these.
Each phase writes its artifacts atomically, its done-marker last, and is skipped when that
marker exists, so a killed run resumes after its last finished phase.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from sppd_lib.config import ConfigError, SamplerConfig, TrainConfig
from sppd_lib.engines.serving import Policy
from sppd_lib.files import write_parquet_atomic, write_text_atomic
from sppd_lib.rundir import PhaseDir, TrainDir, read_json, write_json

if TYPE_CHECKING:
    from sppd_lib.config import RunConfig
    from sppd_lib.data import Problem
    from sppd_lib.tree import StepTree

__all__ = [
    "add_rollouts",
    "eval_phase",
    "pairs_phase",
    "sample_phase",
    "train_phase",
]

logger = logging.getLogger(__name__)


@contextmanager
def _timed(out: PhaseDir, phase: str, policy: Policy | None = None) -> Iterator[None]:
    """Record how long ``phase`` took in ``out`` (and, with ``policy``, how much of it went
    to starting the engine or loading the policy into it)."""
    started = time.perf_counter()
    engine_before = policy.engine_seconds if policy is not None else 0.0
    yield
    record: dict[str, Any] = {"phase": phase, "seconds": round(time.perf_counter() - started, 2)}
    if policy is not None:
        record["engine"] = policy.engine_kind
        record["engine_start_seconds"] = round(policy.engine_seconds - engine_before, 2)
    out.record_phase_time(record)


def sample_phase(
    config: RunConfig,
    policy: Policy,
    model_path: str,
    out: PhaseDir,
    iteration: int,
    problems: list[Problem],
) -> None:
    """Step trees of ``problems`` sampled by ``model_path`` into ``out.trees``."""
    from sppd_lib.sampler import sample_to_file

    if out.trees.exists():
        return
    logger.info("iteration %d: sampling trees for %d problems", iteration, len(problems))
    # Each iteration draws its own random stream.
    sampler = SamplerConfig(**{**vars(config.sampler), "seed": config.sampler.seed + iteration})
    meta = {"iteration": iteration}
    with _timed(out, "sample", policy):
        if policy.pool is not None:  # the same trees, batches spread over the actors
            from sppd_lib.ray_sampling import sample_to_file_on_pool

            policy.pool.load(model_path)
            sample_to_file_on_pool(policy.pool, problems, sampler, out.trees, meta=meta)
            return
        engine, tokenizer = policy.engine(model_path)
        sample_to_file(engine, tokenizer, problems, sampler, out.trees, meta=meta)


def add_rollouts(config: RunConfig, trees: list[StepTree], engine: Any, seed: int) -> int:
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
            leaf_answer=config.pairs.leaf_answer,
        )
    return sampled


def pairs_phase(
    config: RunConfig,
    out: PhaseDir,
    iteration: int,
    engine_for: Callable[[], tuple[Any, Any]] | None = None,
) -> None:
    """Values and step pairs of ``out``'s trees. ``engine_for()`` gives ``(engine,
    tokenizer)`` of the model that sampled them, needed only for ``pairs.rollouts``."""
    from sppd_lib.pairs import build_pairs, summarize_pairs, write_pairs
    from sppd_lib.tree import read_trees, write_trees

    if out.pairs.exists():
        return
    with _timed(out, "pairs"):
        trees = list(read_trees(out.trees))
        if config.pairs.rollouts:
            if engine_for is None:
                raise ConfigError("pairs.rollouts needs the engine of the model that sampled")
            # Nodes that already have enough outcomes (a resumed phase) get none.
            engine, _ = engine_for()
            sampled = add_rollouts(config, trees, engine, config.sampler.seed + iteration)
            logger.info("iteration %d: %d MC rollouts under thin steps", iteration, sampled)
        pairs, reasons = build_pairs(trees, config.pairs)
        # Values live on the nodes too, for the notebooks; the pairs file marks the phase done.
        write_trees(out.trees, trees)
        write_json(out.pairs_summary, summarize_pairs(pairs, len(trees), reasons))
        write_pairs(pairs, out.pairs)
        stats = [t.stats() for t in trees]
        logger.info(
            "iteration %d: %d trees, %d complete paths (%d correct), %d pairs",
            iteration,
            len(trees),
            sum(s.complete_paths for s in stats),
            sum(s.correct_paths for s in stats),
            len(pairs),
        )


def _phase_data(config: RunConfig, phase: str, out: PhaseDir) -> pd.DataFrame:
    from sppd_lib.pairs import phase_data
    from sppd_lib.tree import read_trees

    if phase == "sppd":  # built and stored by the pairs phase
        from sppd_lib.train_data import check_finite_rows

        pairs = pd.read_parquet(out.pairs)
        check_finite_rows(pairs, str(out.pairs))
        return pairs
    # The pairs phase stored the trees with this config's values: no second backup.
    trees = read_trees(out.trees)
    return phase_data(phase, trees, config.pairs, config.sft_per_problem, valued=True)


def phase_train_config(config: RunConfig, phase: str, index: int) -> TrainConfig:
    """The train config of the ``index``-th phase of an iteration: ``train`` with
    ``phase_train[phase]`` over it, and the two settings the loop must impose (logged when
    they override the config): a later phase recomputes its reference as the model it
    starts from (e.g. DPO after SFT), and every phase saves merged weights (the next phase
    and the next iteration load them)."""
    settings = TrainConfig(
        **{**vars(config.train), **config.phase_train.get(phase, {}), "phase": phase}
    )
    if index > 0 and settings.reference != "recompute":
        logger.info(
            "%s: reference %r -> 'recompute' (phase %d starts from the previous phase's model)",
            phase,
            settings.reference,
            index + 1,
        )
        settings.reference = "recompute"
    if not settings.save_merged:
        logger.info("%s: save_merged false -> true (the next phase and iteration load it)", phase)
        settings.save_merged = True
    return settings


def train_phase(
    config: RunConfig,
    model_path: str,
    out: PhaseDir,
    iteration: int,
    data_of: Callable[[str], pd.DataFrame] | None = None,
) -> str:
    """Train the iteration's phases in turn; returns the next policy's directory.

    ``data_of(phase)`` gives a phase's training data (default: from ``out``'s pairs and
    trees); the margin study passes the data it built once for all its arms."""
    from sppd_lib.models import load_model
    from sppd_lib.trainer import train

    train_dir = out.train
    record = read_json(train_dir.done)
    if record is not None:
        # Relative to the run, so a run moved or opened from elsewhere still finds it.
        if "model_dir" in record:
            return str(train_dir.path / record["model_dir"])
        return record["model"]
    current = model_path
    logs, pair_logs = [], []
    for index, phase in enumerate(config.phases_of(iteration)):
        phase_dir = train_dir.phase(phase)
        data = data_of(phase) if data_of is not None else _phase_data(config, phase, out)
        if len(data) == 0:
            logger.warning("iteration %d: no %s data, phase skipped", iteration, phase)
            continue
        if not phase_dir.model.exists():
            logger.info("iteration %d: %s on %d examples", iteration, phase, len(data))
            settings = phase_train_config(config, phase, index)
            with _timed(out, f"train_{phase}"):
                model, tokenizer = load_model(current, device=config.device)
                train(model, tokenizer, data, settings, phase_dir.path)
                del model
        current = str(phase_dir.model)
        logs.append(phase_dir.read_log())
        pair_log = phase_dir.read_pair_log()
        if pair_log is not None:
            pair_logs.append(pair_log)
    _join_logs(train_dir, logs, pair_logs)
    record = {"model": current, "phases": config.phases_of(iteration)}
    if Path(current).parent.parent == train_dir.path:
        record["model_dir"] = str(Path(current).relative_to(train_dir.path))
    write_json(train_dir.done, record, indent=None)
    return current


def _join_logs(
    train_dir: TrainDir, logs: list[pd.DataFrame | None], pair_logs: list[pd.DataFrame]
) -> None:
    """The iteration's ``train/log.jsonl`` and ``pair_log.parquet``: every phase's, in order."""
    train_dir.path.mkdir(parents=True, exist_ok=True)
    logs = [log for log in logs if log is not None]
    if logs:
        lines = pd.concat(logs, ignore_index=True).to_json(orient="records", lines=True)
        write_text_atomic(train_dir.log, lines)
    if pair_logs:
        write_parquet_atomic(pd.concat(pair_logs, ignore_index=True), train_dir.pair_log)


def eval_phase(
    config: RunConfig, policy: Policy, model_path: str, out: PhaseDir, iteration: int
) -> None:
    """Greedy pass@1 (and sampled metrics if ``eval.num_samples``) with the run's engine."""
    from sppd_lib.evaluate import evaluate, evaluate_samples

    if out.evaluated(with_samples=bool(config.eval.num_samples)):
        return
    logger.info("iteration %d: evaluating %s", iteration, ", ".join(config.eval.benchmarks))
    with _timed(out, "eval", policy):
        engine, tokenizer = policy.engine(model_path)
        if config.eval.num_samples and not out.eval_samples.exists():
            samples = evaluate_samples(engine, tokenizer, config.eval)
            write_parquet_atomic(samples, out.eval_samples)
        if not out.eval.exists():
            greedy = evaluate(None, tokenizer, config.eval, engine=engine)
            write_parquet_atomic(greedy, out.eval)
