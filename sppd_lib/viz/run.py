"""Reading a run directory for the figures: :class:`Run`, loaded lazily and cached, through
:class:`sppd_lib.rundir.RunDir` (which names every file).

Every reader returns ``None`` (or ``[]``) for a missing file, so a figure of a run still going
shows a note instead of failing. Trees stored before the value backup get the run's ``mc`` or
``bellman`` values here, so they can be coloured by value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sppd_lib.rundir import PhaseDir, RunDir
from sppd_lib.tree import StepTree, read_trees
from sppd_lib.values import apply_values
from sppd_lib.viz.style import TRAINING_PANELS

__all__ = ["Run", "RunNotFoundError", "load_run", "resolve_run_dir"]


class RunNotFoundError(FileNotFoundError):
    """A run directory is missing or holds none of the files of a run."""


def _step_rows(log: pd.DataFrame | None) -> pd.DataFrame | None:
    """Rows that log at least one training metric (not the trainer's final summary row)."""
    if log is None:
        return None
    metrics = [c for _, columns in TRAINING_PANELS for c in columns if c in log.columns]
    return log.dropna(subset=metrics, how="all").reset_index(drop=True) if metrics else log


@dataclass
class Run:
    """One run directory, read lazily; every reader returns ``None`` for a missing file."""

    path: Path
    run_id: str
    config: dict[str, Any]
    #: One row per (iteration, benchmark, metric); empty when nothing was evaluated yet.
    summary: pd.DataFrame
    #: The ``iter_<k>`` folders found, in order.
    iterations: list[int]
    #: How the run was found when no ``run_dir`` was given (pages say it); "" when given.
    picked: str = ""
    _cache: dict[tuple[str, int], Any] = field(default_factory=dict, repr=False)

    @property
    def directory(self) -> RunDir:
        return RunDir(self.path)

    def iter_dir(self, iteration: int) -> PhaseDir:
        return self.directory.iteration(iteration)

    def _cached(self, kind: str, iteration: int, load: Any) -> Any:
        key = (kind, iteration)
        if key not in self._cache:
            self._cache[key] = load()
        return self._cache[key]

    def trees(self, iteration: int) -> list[StepTree]:
        """The iteration's step trees (valued, see :func:`_ensure_values`); [] when missing."""
        path = self.iter_dir(iteration).trees

        def load() -> list[StepTree]:
            if not path.is_file():
                return []
            return [_ensure_values(t, self.config) for t in read_trees(path)]

        return self._cached("trees", iteration, load)

    def tree(self, iteration: int, problem_id: str) -> StepTree | None:
        return next((t for t in self.trees(iteration) if t.problem.id == problem_id), None)

    def pairs(self, iteration: int) -> pd.DataFrame | None:
        return self._cached("pairs", iteration, self.iter_dir(iteration).read_pairs)

    def train_log(self, iteration: int) -> pd.DataFrame | None:
        """Optimizer-step rows of ``train/log.jsonl`` (end-of-training summaries dropped)."""
        train = self.iter_dir(iteration).train
        return self._cached("log", iteration, lambda: _step_rows(train.read_log()))

    def pair_log(self, iteration: int) -> pd.DataFrame | None:
        return self._cached("pair_log", iteration, self.iter_dir(iteration).train.read_pair_log)

    def heldout(self, iteration: int) -> pd.DataFrame | None:
        """Pairs of held-out trees scored after SPPD training (``train.heldout_trees``)."""
        sppd = self.iter_dir(iteration).train.phase("sppd")
        return self._cached("heldout", iteration, sppd.read_heldout)

    def eval(self, iteration: int) -> pd.DataFrame | None:
        return self._cached("eval", iteration, self.iter_dir(iteration).read_eval)

    def pairs_summary(self, iteration: int) -> dict[str, Any] | None:
        """``pairs_summary.json``: pair counts and why trees gave no pair (``None`` if absent)."""
        return self._cached("pairs_summary", iteration, self.iter_dir(iteration).read_pairs_summary)

    def eval_samples(self, iteration: int) -> pd.DataFrame | None:
        return self._cached("eval_samples", iteration, self.iter_dir(iteration).read_eval_samples)

    def tree_iterations(self) -> list[int]:
        """Iterations whose trees file exists."""
        return [k for k in self.iterations if self.iter_dir(k).trees.is_file()]

    def tree_stats(self, iteration: int) -> pd.DataFrame:
        """One row per tree: problem_id, nodes, complete/correct paths, tokens, pairs."""
        pairs = self.pairs(iteration)
        per_tree = pairs.groupby("tree_id").size() if pairs is not None and len(pairs) else {}
        rows = []
        for tree in self.trees(iteration):
            stats = tree.stats()
            rows.append(
                {
                    "problem_id": tree.problem.id,
                    "nodes": stats.nodes,
                    "complete_paths": stats.complete_paths,
                    "correct_paths": stats.correct_paths,
                    "tokens_generated": stats.tokens_generated,
                    "flat_tokens": stats.flat_tokens,
                    "max_depth": max((n.depth for n in tree.nodes), default=0),
                    "pairs": int(per_tree.get(tree.problem.id, 0)),
                }
            )
        return pd.DataFrame(rows)

    def stacked(self, kind: str) -> pd.DataFrame | None:
        """``pairs``, ``train_log`` or ``pair_log`` of every iteration with an ``iteration``
        column; ``None`` when no iteration has the file."""
        reader = {"pairs": self.pairs, "train_log": self.train_log, "pair_log": self.pair_log}
        frames = []
        for k in self.iterations:
            frame = reader[kind](k)
            if frame is not None and len(frame):
                frames.append(frame.assign(iteration=k))
        return pd.concat(frames, ignore_index=True) if frames else None

    def change_since_start(self) -> pd.DataFrame:
        """pass@1 of the last evaluated iteration against iteration 0, problem by problem
        (:meth:`sppd_lib.rundir.RunDir.change_since_start`)."""
        return self.directory.change_since_start()


def _ensure_values(tree: StepTree, config: dict[str, Any]) -> StepTree:
    """Trees are written by the sampler before the value backup: when no node has a value,
    apply the run's ``mc`` or ``bellman`` estimator (``pairs:`` section of config.yaml) so the
    figures can colour by value. PRM values are never recomputed here."""
    if any(node.value is not None for node in tree.nodes):
        return tree
    pairs_config = config.get("pairs") or {}
    estimator = pairs_config.get("value", "mc")
    if estimator not in ("mc", "bellman"):
        return tree
    return apply_values(
        tree,
        estimator,
        bellman_aggregate=pairs_config.get("bellman_aggregate", "max"),
        bellman_discount=pairs_config.get("bellman_discount", 1.0),
    )


#: How to choose a run, for every error that says none was found.
HOW_TO_SET = (
    "set run_dir in the notebook's parameters cell (the first code cell), e.g. "
    'run_dir = "/path/to/runs/<run_id>", or pass it: '
    "sppd report --run-dir DIR, papermill -p run_dir DIR"
)


def resolve_run_dir(run_dir: str | os.PathLike[str] | None) -> Path:
    """``run_dir`` itself, or for ``None`` the most recently changed run under ``runs/`` or
    ``../runs/`` (so a notebook opened in ``notebooks/`` finds the latest run); the page then
    says which run it picked (:attr:`Run.picked`)."""
    if run_dir is not None:
        return Path(run_dir)
    for root in (Path("runs"), Path("../runs")):
        if root.is_dir():
            candidates = [p for p in root.iterdir() if RunDir(p).config.is_file()]
            if candidates:
                return max(candidates, key=lambda p: p.stat().st_mtime)
    raise RunNotFoundError(
        f"run_dir is None and there is no run (a folder with config.yaml) under runs/ or "
        f"../runs/ of {Path.cwd()}: {HOW_TO_SET}"
    )


def load_run(run_dir: str | os.PathLike[str] | None) -> Run:
    """Read a run directory's config and summary; the rest is read on demand.

    Raises :class:`RunNotFoundError` when the directory is missing or holds no run file.
    The summary is built from the stored evaluations while ``summary.parquet`` is not
    written yet.
    """
    path = resolve_run_dir(run_dir)
    if not path.is_dir():
        raise RunNotFoundError(f"run directory not found: {path.absolute()}; {HOW_TO_SET}")
    directory = RunDir(path)
    iterations = directory.iterations()
    if not (iterations or directory.config.is_file() or directory.summary.is_file()):
        raise RunNotFoundError(
            f"{path} is not a run directory (no config.yaml, summary.parquet or iter_<k>/); "
            f"{HOW_TO_SET}"
        )
    config = directory.read_config()
    summary = directory.read_summary()
    if summary is None:
        summary = directory.summary_table()
    iterations = sorted(set(iterations) | {int(k) for k in summary["iteration"]})
    run_id = str(config.get("run_id") or path.resolve().name)
    picked = ""
    if run_dir is None:
        picked = (
            f"run_dir = None: showing the most recently changed run under "
            f"{path.parent.resolve()}; to choose another, {HOW_TO_SET}"
        )
        print(picked)  # a notebook must never silently show some run
    return Run(path, run_id, config, summary, iterations, picked=picked)
