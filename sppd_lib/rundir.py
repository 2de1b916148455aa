"""The run directory (DESIGN.md §3) and the study directory: the one place that names their
files. Every other module asks these classes for a path.

::

    runs/<run_id>/config.yaml  inputs.json  summary.parquet  final_model.txt  .lock
                  tensorboard/             (train.report_to: [tensorboard])
    runs/<run_id>/iter_<k>/trees.jsonl.gz  pairs.parquet  pairs.trl.parquet  pairs_summary.json
                           eval.parquet  eval_samples.parquet  phase_times.jsonl
                           train/log.jsonl  train/pair_log.parquet  train/done.json
                           train/<phase>/   (a TrainDir: log.jsonl, pair_log.parquet,
                                             config.json, metrics.json, heldout.parquet,
                                             adapter/, model/, README.md (model card),
                                             tensorboard/)

    studies/<study_id>/study.yaml  trees.jsonl.gz  trees_source.json
                       start/                   (a PhaseDir: the starting model's eval)
                       values/<estimator>/      (a PhaseDir + sft.parquet, dpo.parquet, prm/)
                       <arm>/seed_<s>/          (a PhaseDir + arm.json, written last)
                       study.parquet  arms.parquet  comparisons.parquet

Readers are tolerant (a missing file gives ``None``, a torn last JSONL line is skipped, so a
run still going can be read); writers are atomic (``sppd_lib.files``). The resume checks
(:meth:`RunDir.start`, :meth:`StudyDir.start`) compare a stored config with a new one.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from sppd_lib.config import ConfigError, load_yaml, upgrade_engine_section
from sppd_lib.data import DataError
from sppd_lib.files import NotWritableError, RunLock, write_parquet_atomic, write_text_atomic
from sppd_lib.metrics import SUMMARY_COLUMNS, paired_change, summary_rows

__all__ = [
    "PhaseDir",
    "RunDir",
    "StudyDir",
    "TrainDir",
    "changed_keys",
    "file_lock",
    "partial_trees_path",
    "read_json",
    "read_jsonl",
    "read_parquet",
    "run_report_dir",
    "trl_pairs_path",
]

logger = logging.getLogger(__name__)

_ITERATION = re.compile(r"iter_(\d+)")


# ---------------------------------------------------------------------------------------
# Tolerant readers
# ---------------------------------------------------------------------------------------


def damaged(path: Path, reason: str) -> DataError:
    """The error for a file of ours that cannot be read: its name and the fix."""
    return DataError(
        f"{path} is damaged ({reason}): delete it and rerun the same command; the phase that "
        "writes it runs again, finished ones are kept"
    )


def read_parquet(path: Path) -> pd.DataFrame | None:
    """The frame at ``path``; ``None`` when the file is missing.

    Raises:
        DataError: the file is truncated or not parquet, naming it and the fix.
    """
    if not path.is_file():
        return None
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise damaged(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


def read_jsonl(path: Path) -> pd.DataFrame | None:
    """Rows of a JSONL log; a torn line (a run still writing) is skipped; ``None`` if missing."""
    if not path.is_file():
        return None
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return pd.DataFrame(rows)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object at ``path``; ``None`` when the file is missing.

    Raises:
        DataError: the file is truncated or not JSON, naming it and the fix.
    """
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise damaged(path, f"not valid JSON: {exc}") from None


def write_json(path: Path, data: dict[str, Any], indent: int | None = 1) -> Path:
    """``data`` as JSON at ``path``, atomically."""
    return write_text_atomic(path, json.dumps(data, indent=indent))


# ---------------------------------------------------------------------------------------
# Names derived from another file's name
# ---------------------------------------------------------------------------------------


def trl_pairs_path(pairs_path: str | os.PathLike[str]) -> Path:
    """``<stem>.trl.parquet`` beside a pairs file: its export in TRL's preference format."""
    name = os.fspath(pairs_path)
    stem = name[: -len(".parquet")] if name.endswith(".parquet") else name
    return Path(stem + ".trl.parquet")


def partial_trees_path(trees_path: str | os.PathLike[str]) -> Path:
    """``<trees>.partial.jsonl``: the finished batches of a trees file still being sampled."""
    path = Path(trees_path)
    return path.with_name(path.name + ".partial.jsonl")


def file_lock(path: str | os.PathLike[str], what: str) -> RunLock:
    """One writer per file (``.<name>.lock`` beside it), e.g. a trees file being sampled: two
    samplers appending to one partial file would mix. A directory's lock is ``RunLock(dir)``."""
    path = Path(path)
    return RunLock(path.parent, f"{what} {path}", f".{path.name}.lock")


# ---------------------------------------------------------------------------------------
# Training output, one phase's artifacts
# ---------------------------------------------------------------------------------------


class TrainDir:
    """The output directory of one training phase (``sppd train --out``), or an iteration's
    ``train/`` folder that joins its phases' logs."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.log = self.path / "log.jsonl"
        self.pair_log = self.path / "pair_log.parquet"
        self.config = self.path / "config.json"
        self.metrics = self.path / "metrics.json"
        #: Pairs of held-out trees scored after training (``train.heldout_trees``).
        self.heldout = self.path / "heldout.parquet"
        self.adapter = self.path / "adapter"
        self.model = self.path / "model"
        #: Written last by the loop: every phase of the iteration is trained.
        self.done = self.path / "done.json"
        #: Where ``train`` builds the directory before renaming it into place, with its mark.
        self.work = self.path.with_name(self.path.name + ".partial")
        self.work_mark = self.work / ".sppd-train-work"
        self.checkpoints = self.path / "checkpoints"
        #: TensorBoard event files of the trainer's log (train.report_to: [tensorboard]).
        self.tensorboard = self.path / "tensorboard"

    def phase(self, phase: str) -> TrainDir:
        return TrainDir(self.path / phase)

    def read_log(self) -> pd.DataFrame | None:
        return read_jsonl(self.log)

    def read_pair_log(self) -> pd.DataFrame | None:
        return read_parquet(self.pair_log)

    def read_heldout(self) -> pd.DataFrame | None:
        return read_parquet(self.heldout)


class PhaseDir:
    """A directory of phase artifacts: a run's ``iter_<k>/``, or a study's start, value
    estimator or arm × seed directory (they share the loop's phase functions)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.trees = self.path / "trees.jsonl.gz"
        self.pairs = self.path / "pairs.parquet"
        self.pairs_trl = trl_pairs_path(self.pairs)
        self.pairs_summary = self.path / "pairs_summary.json"
        self.sft_data = self.path / "sft.parquet"
        self.dpo_data = self.path / "dpo.parquet"
        self.eval = self.path / "eval.parquet"
        self.eval_samples = self.path / "eval_samples.parquet"
        self.train = TrainDir(self.path / "train")
        #: A study's own PRM, trained on this estimator's trees.
        self.prm = self.path / "prm"
        #: A study's arm × seed record, written last.
        self.arm_record = self.path / "arm.json"
        #: One line per phase that ran here: phase, seconds, engine, engine start seconds.
        self.phase_times = self.path / "phase_times.jsonl"

    def phase_data(self, phase: str) -> Path:
        """The stored training data of ``phase``: step pairs, τ+ paths or sentence pairs."""
        return {"sppd": self.pairs, "sft": self.sft_data, "dpo": self.dpo_data}[phase]

    def read_eval(self) -> pd.DataFrame | None:
        return read_parquet(self.eval)

    def read_eval_samples(self) -> pd.DataFrame | None:
        return read_parquet(self.eval_samples)

    def read_pairs(self) -> pd.DataFrame | None:
        return read_parquet(self.pairs)

    def read_pairs_summary(self) -> dict[str, Any] | None:
        return read_json(self.pairs_summary)

    def record_phase_time(self, record: dict[str, Any]) -> None:
        """Append one phase's timing (a resumed phase appends again: both runs took time)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with self.phase_times.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def read_phase_times(self) -> pd.DataFrame | None:
        return read_jsonl(self.phase_times)

    def evaluated(self, with_samples: bool) -> bool:
        """The evaluation is done (and its samples, when ``with_samples``)."""
        return self.eval.exists() and (self.eval_samples.exists() or not with_samples)

    def summary_rows(self, iteration: int) -> pd.DataFrame:
        """This directory's rows of the summary table (pass@1, and maj/vote/best@N)."""
        return summary_rows(self.read_eval(), self.read_eval_samples(), iteration)


# ---------------------------------------------------------------------------------------
# Config comparison for resume checks
# ---------------------------------------------------------------------------------------


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = set(old) | set(new)
        return [
            k for key in keys for k in changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        ]
    return [] if old == new else [prefix.rstrip(".")]


def _value_at(data: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        data = data.get(key) if isinstance(data, dict) else None
    return data


def describe_changes(old: dict[str, Any], new: dict[str, Any], keys: Collection[str]) -> str:
    """``key: old -> new`` for each changed key (long values shortened), comma-separated."""

    def short(value: Any) -> str:
        text = json.dumps(value, default=str)
        return text if len(text) <= 60 else text[:57] + "..."

    return ", ".join(
        f"{key}: {short(_value_at(old, key))} -> {short(_value_at(new, key))}" for key in keys
    )


def _dump_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------------------------------
# A run
# ---------------------------------------------------------------------------------------


class RunDir:
    """``runs/<run_id>/``: paths, iteration discovery, the summary table, the resume check."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        #: sha256 of every data file the run reads, checked on resume.
        self.inputs = self.path / "inputs.json"
        self.summary = self.path / "summary.parquet"
        #: Written last: the run is finished; holds the final policy's directory.
        self.final_model = self.path / "final_model.txt"
        #: TensorBoard event files of the loop's metrics (train.report_to: [tensorboard]).
        self.tensorboard = self.path / "tensorboard"

    def iteration(self, iteration: int) -> PhaseDir:
        return PhaseDir(self.path / f"iter_{iteration}")

    def iterations(self) -> list[int]:
        """The ``iter_<k>`` folders present, in order."""
        if not self.path.is_dir():
            return []
        found = (_ITERATION.fullmatch(child.name) for child in self.path.iterdir())
        return sorted(int(m.group(1)) for m in found if m and (self.path / m.group(0)).is_dir())

    def evaluated_iterations(self) -> list[int]:
        """Iterations with a greedy evaluation, in order."""
        return [k for k in self.iterations() if self.iteration(k).eval.is_file()]

    def has_artifacts(self) -> bool:
        """Some iteration holds a file: the run has started computing."""
        return any(
            p.is_file() for k in self.iterations() for p in self.iteration(k).path.rglob("*")
        )

    def phase_times(self) -> pd.DataFrame:
        """Every iteration's phase timings, with an ``iteration`` column (empty if none)."""
        frames = []
        for iteration in self.iterations():
            times = self.iteration(iteration).read_phase_times()
            if times is not None:
                frames.append(times.assign(iteration=iteration))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def read_config(self) -> dict[str, Any]:
        """The stored config as a mapping; ``{}`` when there is none."""
        return (yaml.safe_load(self.config.read_text()) or {}) if self.config.is_file() else {}

    def read_summary(self) -> pd.DataFrame | None:
        return read_parquet(self.summary)

    def summary_table(self) -> pd.DataFrame:
        """One row per (iteration, benchmark, metric) from the stored evaluations (so it
        follows a regrade); columns :data:`sppd_lib.metrics.SUMMARY_COLUMNS`."""
        frames = [self.iteration(k).summary_rows(k) for k in self.evaluated_iterations()]
        return (
            pd.concat(frames, ignore_index=True)
            if frames
            else pd.DataFrame(columns=SUMMARY_COLUMNS)
        )

    def change_since_start(self) -> pd.DataFrame:
        """Greedy pass@1 of the last evaluated iteration against iteration 0, problem by
        problem (:func:`sppd_lib.metrics.paired_change`), with the ``iteration`` compared.
        Empty before two iterations are evaluated."""
        evaluated = self.evaluated_iterations()
        if len(evaluated) < 2 or evaluated[0] != 0:
            return pd.DataFrame()
        last = evaluated[-1]
        before, after = self.iteration(0).read_eval(), self.iteration(last).read_eval()
        return paired_change(before, after).assign(iteration=last)  # type: ignore[arg-type]

    def finished(self, iterations: int) -> bool:
        """The run of ``iterations`` iterations has ended (its final marker is written)."""
        return self.final_model.is_file() and self.iteration(iterations).eval.is_file()

    def write_summary(self, summary: pd.DataFrame) -> None:
        """Rewrite ``summary.parquet`` only when it changed, so reopening a finished run
        writes nothing (it may sit on read-only storage)."""
        if self.summary.is_file():
            try:
                stored = pd.read_parquet(self.summary)
                pd.testing.assert_frame_equal(stored, summary, check_dtype=False)
                return
            except (AssertionError, OSError, ValueError):
                pass
        write_parquet_atomic(summary, self.summary)

    def write_final_model(self, model_path: str) -> None:
        """Record the final policy, relative to the run when it is inside it (so a moved run,
        or a copy on read-only storage, reopens without rewriting it)."""
        inside = Path(model_path).is_relative_to(self.path)
        text = (str(Path(model_path).relative_to(self.path)) if inside else model_path) + "\n"
        if not self.final_model.is_file() or self.final_model.read_text() != text:
            write_text_atomic(self.final_model, text)

    def start(
        self,
        wanted: dict[str, Any],
        data_files: dict[str, str],
        *,
        ignore: Collection[str] = (),
        read_only: bool = False,
    ) -> None:
        """Create the directory, or check that a resumed run has the same config.

        Only ``iterations`` may change, and only grow: that extends a run. A directory whose
        config was written but that holds no artifact yet takes the new config. Data files
        (``data_files``: spec -> sha256) must be unchanged. Keys in ``ignore`` may differ.

        Raises:
            ConfigError: another config, or a changed data file.
            NotWritableError: a read-only directory that would need a new config.
        """
        if self.config.exists():
            previous = load_yaml(self.config)
            upgrade_engine_section(previous, str(self.config))
            changed = sorted(set(changed_keys(previous, wanted)) - set(ignore))
            old_iterations = previous.get("iterations")
            new_iterations = wanted.get("iterations")
            extends = (
                changed == ["iterations"]
                and isinstance(old_iterations, int)
                and isinstance(new_iterations, int)
                and new_iterations > old_iterations
            )
            if changed and not extends and self.has_artifacts():
                hint = ""
                if "iterations" in changed and isinstance(old_iterations, int):
                    hint = f" (iterations may only grow: it was {old_iterations})"
                raise ConfigError(
                    f"{self.path} holds a run with another config (changed: "
                    f"{describe_changes(previous, wanted, changed)}){hint}; use another run_id "
                    "/ --run-dir, or delete the directory"
                )
            stored = (read_json(self.inputs) or {}).get("data_files", {})
            for spec, digest in stored.items():
                if data_files.get(spec) != digest:
                    raise ConfigError(
                        f"data file of {spec!r} changed since {self.path} started (sha256 "
                        f"{digest[:12]}...): restore it, or start another run"
                    )
            if not changed:
                logger.info("resuming run %s", self.path)
                return
            if read_only:
                raise NotWritableError(f"{self.path} is read-only: it cannot take a changed config")
            if extends:
                logger.info("extending run %s: %s -> %d iterations", self.path, old_iterations,
                            new_iterations)  # fmt: skip
            else:  # config.yaml of a start that failed before any artifact
                logger.warning("%s held no artifact yet: its config is replaced", self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        # inputs.json first: config.yaml is what marks the directory as a run.
        write_json(self.inputs, {"data_files": data_files})
        write_text_atomic(self.config, _dump_yaml(wanted))


# ---------------------------------------------------------------------------------------
# A margin study
# ---------------------------------------------------------------------------------------


class StudyDir:
    """``studies/<study_id>/``: shared trees, the start, value estimators, arms × seeds."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.config = self.path / "study.yaml"
        #: The shared trees, as sampled (the root is the study's sampling phase directory).
        self.root = PhaseDir(self.path)
        self.trees = self.root.trees
        self.trees_source = self.path / "trees_source.json"
        self.table = self.path / "study.parquet"
        self.arms = self.path / "arms.parquet"
        self.comparisons = self.path / "comparisons.parquet"

    def start_dir(self, name: str = "start") -> PhaseDir:
        """The starting model's evaluation (``name``: the start arm's name)."""
        return PhaseDir(self.path / name)

    def values(self, estimator: str) -> PhaseDir:
        return PhaseDir(self.path / "values" / estimator)

    def arm(self, arm: str, seed: int) -> PhaseDir:
        return PhaseDir(self.path / arm / f"seed_{seed}")

    def start(self, wanted: dict[str, Any], growable: Collection[str]) -> None:
        """Create the directory, or check that a resumed study has the same config except
        for top-level keys in ``growable`` (they add or drop arms, never alter one)."""
        if self.config.exists():
            previous = load_yaml(self.config)
            upgrade_engine_section(previous, str(self.config))
            changed = sorted(
                k for k in changed_keys(previous, wanted) if k.split(".")[0] not in growable
            )
            if changed:
                raise ConfigError(
                    f"{self.path} holds a study with another config (changed: "
                    f"{describe_changes(previous, wanted, changed)}); use another study_id / "
                    "--study-dir (seeds, gammas and arms may change)"
                )
            logger.info("resuming study %s", self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.config, _dump_yaml(wanted))


def run_report_dir(
    run_dir: str | os.PathLike[str], report_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Where the reports of ``run_dir`` go: ``report_dir`` (a run config's key) if given, else
    ``<run_dir>/../reports/<run_dir name>`` (``runs/demo`` -> ``runs/reports/demo``). One rule
    from the run directory, so runs in different directories never share a report folder."""
    if report_dir is not None:
        return Path(report_dir)
    run_dir = Path(os.path.abspath(run_dir))  # `runs/demo/.` names demo, not "."
    return run_dir.parent / "reports" / run_dir.name
