"""Reading a margin study's directory (``sppd_lib.study``) and its statistics.

Per arm: the mean accuracy over training seeds with a 95% t interval across seeds, and the
pooled interval over every (problem, seed) answer. Between arms, on the same problems: a
paired bootstrap of the accuracy difference and the exact McNemar test of the problems that
flip on the majority over seeds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sppd_lib.config import (
    START,
    ConfigError,
    StudyConfig,
    config_from_dict,
    load_yaml,
    resolve_arms,
)
from sppd_lib.data import DataError
from sppd_lib.metrics import (
    SUMMARY_COLUMNS,
    mcnemar_exact,
    paired_bootstrap,
    seed_interval,
    summary_rows,
    wilson_interval,
)
from sppd_lib.rundir import PhaseDir, StudyDir, read_json

__all__ = [
    "Study",
    "arm_summary",
    "compare_arms",
    "default_comparisons",
    "estimator_quality_table",
    "flipped_problems",
    "format_arm_table",
    "load_study",
    "study_table",
]


@dataclass
class Study:
    """A study directory, read: config, arms, evaluations and the tables built from them."""

    path: Path
    config: StudyConfig
    arm_names: list[str]
    evals: pd.DataFrame  # eval.parquet rows of every arm × seed (+ start), with arm and seed
    records: dict[tuple[str, int], dict[str, Any]]  # arm.json of every finished arm × seed
    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    arms: pd.DataFrame = field(default_factory=pd.DataFrame)
    comparisons: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def study_id(self) -> str:
        return self.config.study_id

    @property
    def directory(self) -> StudyDir:
        return StudyDir(self.path)

    def arm_dir(self, arm: str, seed: int) -> PhaseDir:
        """The directory of one arm × seed (the start's for ``START``)."""
        return self.directory.start_dir(START) if arm == START else self.directory.arm(arm, seed)

    def pairs(self, values: str | None = None) -> pd.DataFrame | None:
        """The step pairs of an estimator (default: the first)."""
        name = values or next(iter(self.config.estimators))
        return self.directory.values(name).read_pairs()

    def pair_log(self, arm: str, seed: int) -> pd.DataFrame | None:
        return self.directory.arm(arm, seed).train.read_pair_log()

    def train_log(self, arm: str, seed: int) -> pd.DataFrame | None:
        return self.directory.arm(arm, seed).train.read_log()

    def correctness(self, arm: str, benchmark: str) -> pd.DataFrame:
        """``(problems, seeds)`` 0/1 greedy correctness of one arm on one benchmark."""
        rows = self.evals[(self.evals["arm"] == arm) & (self.evals["benchmark"] == benchmark)]
        return rows.pivot(index="problem_id", columns="seed", values="correct").astype(float)


def load_study(study_dir: str | os.PathLike[str]) -> Study:
    """Read a study directory (finished or not) and compute its tables."""
    root = Path(study_dir)
    directory = StudyDir(root)
    if not directory.config.is_file():
        raise ConfigError(
            f"no study at {root} (no {directory.config.name}): run `sppd study --config FILE` "
            "first, or pass the directory it wrote (studies/<study_id>)"
        )
    config = config_from_dict(StudyConfig, load_yaml(directory.config))
    names = [arm.name for arm in resolve_arms(config)]
    frames, records = [], {}
    start = directory.start_dir(START).read_eval()
    if start is not None:
        frames.append(start.assign(arm=START, seed=0))
    for name in names:
        for seed in config.seeds:
            arm_dir = directory.arm(name, seed)
            record = read_json(arm_dir.arm_record)
            if record is not None:
                evaluation = arm_dir.read_eval()
                if evaluation is None:
                    raise DataError(
                        f"arm {name!r}, seed {seed} of the study at {root} has no "
                        f"{arm_dir.eval.name} ({arm_dir.eval} is missing): rerun the study "
                        "(the same sppd study command) to resume; it evaluates this arm again"
                    )
                records[(name, seed)] = record
                frames.append(evaluation.assign(arm=name, seed=seed))
    evals = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["arm", "seed", "benchmark", "problem_id", "correct"])
    )
    study = Study(root, config, names, evals, records)
    study.table = study_table(study)
    study.arms = arm_summary(study.table, study.evals)
    study.comparisons = compare_arms(study, default_comparisons(study))
    return study


#: Columns of ``study.parquet``: a summary row (metrics.SUMMARY_COLUMNS) per arm and seed.
STUDY_COLUMNS = ["arm", "seed", *SUMMARY_COLUMNS[1:]]


def study_table(study: Study) -> pd.DataFrame:
    """``study.parquet``: one row per arm × seed × benchmark × metric (greedy pass@1, and
    maj/vote/best@N when the evaluation sampled)."""
    rows = []
    for (arm, seed), group in study.evals.groupby(["arm", "seed"], sort=False):
        samples = study.arm_dir(arm, int(seed)).read_eval_samples()
        summary = summary_rows(group, samples, 0)
        rows.append(summary.drop(columns="iteration").assign(arm=arm, seed=int(seed)))
    if not rows:
        return pd.DataFrame(columns=STUDY_COLUMNS)
    return pd.concat(rows, ignore_index=True)[STUDY_COLUMNS]


def arm_summary(table: pd.DataFrame, evals: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per arm × benchmark × metric: the mean over seeds with its 95% t interval across seeds,
    the pooled interval over all (problem, seed) answers, and the change against
    ``step_dpo`` (the no-margin arm) when the study has it."""
    rows = []
    for (arm, benchmark, metric), group in table.groupby(
        ["arm", "benchmark", "metric"], sort=False
    ):
        mean, low, high = seed_interval(group["value"].tolist())
        correct, total = int(group["correct"].sum()), int(group["n"].sum())
        pooled_low, pooled_high = wilson_interval(correct, total)
        rows.append(
            {
                "arm": arm,
                "benchmark": benchmark,
                "metric": metric,
                "seeds": len(group),
                "problems": int(group["n"].iloc[0]),
                "mean": mean,
                "seed_ci_low": low,
                "seed_ci_high": high,
                "pooled_ci_low": pooled_low,
                "pooled_ci_high": pooled_high,
            }
        )
    summary = pd.DataFrame(rows)
    if len(summary):
        reference = summary[summary["arm"] == "step_dpo"].set_index(["benchmark", "metric"])["mean"]
        keys = list(zip(summary["benchmark"], summary["metric"], strict=True))
        summary["delta_vs_step_dpo"] = [reference.get(key, np.nan) for key in keys]
        summary["delta_vs_step_dpo"] = summary["mean"] - summary["delta_vs_step_dpo"]
    return summary


def default_comparisons(study: Study) -> list[tuple[str, str]]:
    """Pairs of arms the study compares: the headline dynamic arm against fixed, step_dpo,
    sft and dpo; fixed against step_dpo; the best dynamic arm against step_dpo and sft
    (chosen on these problems, so optimistic); every arm against the start."""
    present = set(study.evals["arm"]) if len(study.evals) else set()
    headline = study.config.headline_arm
    wanted = [(headline, other) for other in ("fixed", "step_dpo", "sft", "dpo")]
    wanted.append(("fixed", "step_dpo"))
    dynamic = study.arms[study.arms["arm"].str.startswith("dynamic_g")] if len(study.arms) else None
    if dynamic is not None and len(dynamic):
        first = dynamic[dynamic["metric"] == "pass@1"]
        first = first[first["benchmark"] == first["benchmark"].iloc[0]]
        best = str(first.sort_values("mean", ascending=False)["arm"].iloc[0])
        wanted += [(best, "step_dpo"), (best, "sft")]
    wanted += [(arm, START) for arm in study.arm_names]
    unique = list(dict.fromkeys((a, b) for a, b in wanted if a != b))
    return [(a, b) for a, b in unique if a in present and b in present]


def compare_arms(study: Study, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """Paired comparison of arms on the same problems, per benchmark (greedy pass@1).

    ``difference`` is mean accuracy (over problems and seeds) of ``arm`` minus ``other``,
    with a 95% paired bootstrap interval over problems; ``gained`` / ``lost`` count the
    problems that flip when each arm's answer is the majority over its seeds (correct on
    more than half of them), and ``p_value`` is the exact McNemar test of those flips.
    """
    rows = []
    benchmarks = list(dict.fromkeys(study.evals["benchmark"])) if len(study.evals) else []
    for arm, other in pairs:
        for benchmark in benchmarks:
            a, b = study.correctness(arm, benchmark), study.correctness(other, benchmark)
            a, b = a.align(b, join="inner", axis=0)
            if not len(a):
                continue
            difference, low, high = paired_bootstrap(a.to_numpy(), b.to_numpy())
            major_a, major_b = a.mean(axis=1) > 0.5, b.mean(axis=1) > 0.5
            gained, lost = int((major_a & ~major_b).sum()), int((~major_a & major_b).sum())
            rows.append(
                {
                    "arm": arm,
                    "other": other,
                    "benchmark": benchmark,
                    "problems": len(a),
                    "accuracy": float(a.to_numpy().mean()),
                    "other_accuracy": float(b.to_numpy().mean()),
                    "difference": difference,
                    "ci95_low": low,
                    "ci95_high": high,
                    "gained": gained,
                    "lost": lost,
                    "p_value": mcnemar_exact(gained, lost),
                }
            )
    columns = ["arm", "other", "benchmark", "problems", "accuracy", "other_accuracy",
               "difference", "ci95_low", "ci95_high", "gained", "lost", "p_value"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def flipped_problems(study: Study, arm: str, other: str, benchmark: str) -> pd.DataFrame:
    """Problems whose majority-over-seeds correctness differs between two arms, with the
    question, gold and each arm's first-seed response and answer."""
    a, b = study.correctness(arm, benchmark), study.correctness(other, benchmark)
    a, b = a.align(b, join="inner", axis=0)
    major_a, major_b = a.mean(axis=1) > 0.5, b.mean(axis=1) > 0.5
    flipped = a.index[major_a != major_b]
    evals = study.evals[study.evals["benchmark"] == benchmark]

    def first_seed(name: str) -> pd.DataFrame:
        rows = evals[evals["arm"] == name]
        rows = rows[rows["seed"] == rows["seed"].min()].set_index("problem_id")
        return rows.loc[rows.index.intersection(flipped)]

    mine, theirs = first_seed(arm), first_seed(other)
    table = pd.DataFrame(
        {
            "problem_id": flipped,
            "question": mine["question"].reindex(flipped).to_numpy(),
            "gold": mine["gold"].reindex(flipped).to_numpy(),
            "flip": np.where(major_a[flipped], f"{arm} right", f"{other} right"),
            f"{arm} (seeds right)": a.loc[flipped].sum(axis=1).astype(int).to_numpy(),
            f"{other} (seeds right)": b.loc[flipped].sum(axis=1).astype(int).to_numpy(),
            f"{arm} answer": mine["pred"].reindex(flipped).to_numpy(),
            f"{other} answer": theirs["pred"].reindex(flipped).to_numpy(),
            f"{arm} response": mine["response"].reindex(flipped).to_numpy(),
            f"{other} response": theirs["response"].reindex(flipped).to_numpy(),
        }
    )
    return table.reset_index(drop=True)


def format_arm_table(arms: pd.DataFrame, metric: str = "pass@1") -> pd.DataFrame:
    """Arms × benchmarks: 'mean [seed interval]' in percent, plus Δ vs step_dpo per benchmark."""
    rows = arms[arms["metric"] == metric]
    if not len(rows):
        return pd.DataFrame()

    def cell(row: pd.Series) -> str:
        if row["seeds"] < 2:
            return f"{row['mean']:.1%}"
        return f"{row['mean']:.1%} [{row['seed_ci_low']:.1%}, {row['seed_ci_high']:.1%}]"

    table = rows.assign(cell=rows.apply(cell, axis=1))
    wide = table.pivot(index="arm", columns="benchmark", values="cell")
    if rows["delta_vs_step_dpo"].notna().any():
        delta = table.pivot(index="arm", columns="benchmark", values="delta_vs_step_dpo")
        for benchmark in delta.columns:
            wide[f"{benchmark} Δ vs step_dpo"] = delta[benchmark].map(
                lambda d: "" if pd.isna(d) else f"{d:+.1%}"
            )
    order = list(dict.fromkeys(rows["arm"]))
    return wide.reindex(order).rename_axis(None, axis=1)


def estimator_quality_table(study: Study) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each value estimator of the study against the exact step checker on its generated
    arithmetic trees (``sppd_lib.estimator_quality``): the summary (AUC, share of pairs whose
    chosen step is false, ...) and the calibration by value bin. The study's estimators are
    read from their valued trees (rollouts and an own PRM included); ``mc``, ``bellman_max``
    and ``bellman_mean`` the study did not configure are computed on the shared trees. Empty
    tables when there are no valued trees or no arithmetic claims."""
    from sppd_lib.estimator_quality import estimator_quality, valued_tree_quality
    from sppd_lib.tree import read_trees

    summaries, calibrations = [], []
    covered = set()
    estimators = study.config.estimators
    for name, pair_config in estimators.items():
        trees_file = study.directory.values(name).trees
        if not trees_file.is_file():
            continue
        summary, calibration = valued_tree_quality(name, list(read_trees(trees_file)), pair_config)
        summaries.append(pd.DataFrame([summary]))
        calibrations.append(calibration)
        if not pair_config.rollouts and pair_config.value != "prm":
            covered.add(
                pair_config.value
                if pair_config.value == "mc"
                else f"bellman_{pair_config.bellman_aggregate}"
            )
    missing = [e for e in ("mc", "bellman_max", "bellman_mean") if e not in covered]
    if missing and study.directory.trees.is_file() and estimators:
        base = next(iter(estimators.values()))
        summary, calibration = estimator_quality(
            list(read_trees(study.directory.trees)), missing, base
        )
        summaries.append(summary)
        calibrations.append(calibration)
    if not summaries:
        return pd.DataFrame(), pd.DataFrame()
    summary = pd.concat(summaries, ignore_index=True)
    if not summary["steps"].sum():
        return pd.DataFrame(), pd.DataFrame()
    return summary, pd.concat(calibrations, ignore_index=True)
