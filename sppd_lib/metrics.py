"""Statistics of evaluations (no torch import): intervals, voting (maj@N, vote@N, best@N),
paired change and bootstrap, and the rows of the summary table.

Used by ``evaluate`` (per-benchmark accuracy), the run directory (``rundir``: the summary
table, the change since iteration 0), the figures and the margin study (arms trained with
several seeds on the same problems).

* maj@N: the answer given by most samples (equivalent forms such as ``0.5`` and ``1/2``
  count as one answer; samples without an answer do not vote).
* vote@N: the answer whose samples have the largest total weight (the paper's ORM_VOTE@N).
* best@N: the answer of the single highest-weighted sample that has one (ORM_MAX@N).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from sppd_lib.grading import group_equivalent

__all__ = [
    "SUMMARY_COLUMNS",
    "accuracy_by_iteration",
    "accuracy_table",
    "best_of_n",
    "gain_headline",
    "maj_at_n",
    "mcnemar_exact",
    "paired_bootstrap",
    "paired_change",
    "pass_at_k",
    "sampled_scores",
    "seed_interval",
    "summary_rows",
    "t_quantile_975",
    "vote_at_n",
    "wilson_interval",
]

#: Columns of ``summary.parquet`` (one row per iteration x benchmark x metric).
SUMMARY_COLUMNS = [
    "iteration",
    "benchmark",
    "metric",
    "value",
    "n",
    "correct",
    "ci95_low",
    "ci95_high",
]

# Two-sided 95% Student t quantiles t_{0.975, df}, df = 1..30 (beyond: the normal 1.96 is
# within 2%). A table, so this module needs no scipy.
_T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (``df >= 1``)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T_975[df - 1] if df <= len(_T_975) else 1.96


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``correct / total`` (NaN when empty)."""
    if total == 0:
        return (float("nan"), float("nan"))
    p = correct / total
    denominator = 1 + z**2 / total
    centre = (p + z**2 / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z**2 / (4 * total**2)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def seed_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean of per-seed accuracies and its 95% t interval across seeds.

    The interval describes training noise (data order, LoRA init) for fixed evaluation
    problems; one seed gives a NaN interval.
    """
    array = np.asarray(values, dtype=float)
    mean = float(array.mean()) if len(array) else float("nan")
    if len(array) < 2:
        return mean, float("nan"), float("nan")
    half = t_quantile_975(len(array) - 1) * float(array.std(ddof=1)) / math.sqrt(len(array))
    return mean, mean - half, mean + half


def mcnemar_exact(gained: int, lost: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of the discordant problems at 1/2."""
    n, k = gained + lost, min(gained, lost)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Accuracy difference of arm ``a`` minus arm ``b`` with a 95% paired bootstrap interval.

    Args:
        a, b: ``(problems, seeds)`` 0/1 correctness on the same problems, row-aligned (the
            seed counts may differ). An arm's accuracy is its mean over problems and seeds.
        resamples: bootstrap resamples of the problems (the same resample for both arms,
            which is what makes it paired).

    Returns:
        ``(difference, low, high)``: the observed difference and the 2.5% / 97.5% percentiles.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim == 1:
        a = a[:, None]
    if b.ndim == 1:
        b = b[:, None]
    if len(a) != len(b):
        raise ValueError(f"arms cover different problems: {len(a)} vs {len(b)}")
    per_problem = a.mean(axis=1) - b.mean(axis=1)  # (problems,)
    observed = float(per_problem.mean()) if len(per_problem) else float("nan")
    if not len(per_problem):
        return observed, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(per_problem), size=(resamples, len(per_problem)))
    means = per_problem[picks].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return observed, float(low), float(high)


def paired_change(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """How pass@1 changed between two greedy evaluations of the same problems.

    ``before`` and ``after`` are rows of :func:`evaluate`. Per benchmark, on the problems both
    hold: problems, accuracy before and after, gained (wrong -> right), lost (right -> wrong)
    and the exact McNemar p-value of the change, which uses the pairing and so tells a real
    change from a lucky draw better than two separate confidence intervals do.
    """
    keys = ["benchmark", "problem_id"]
    both = before[[*keys, "correct"]].merge(
        after[[*keys, "correct"]], on=keys, suffixes=("_before", "_after")
    )
    rows = []
    for benchmark, group in both.groupby("benchmark", sort=False):
        was, now = group["correct_before"].astype(bool), group["correct_after"].astype(bool)
        gained, lost = int((~was & now).sum()), int((was & ~now).sum())
        rows.append(
            {
                "benchmark": benchmark,
                "problems": len(group),
                "before": float(was.mean()),
                "after": float(now.mean()),
                "gained": gained,
                "lost": lost,
                "p_value": mcnemar_exact(gained, lost),
            }
        )
    columns = ["benchmark", "problems", "before", "after", "gained", "lost", "p_value"]
    return pd.DataFrame(rows, columns=columns)


def gain_headline(change: pd.DataFrame) -> str:
    """One line per benchmark of :func:`paired_change` (with its ``iteration``): the
    held-out gain of the last iteration against iteration 0 and its paired p-value, the last
    thing ``sppd run`` prints."""
    lines = []
    for row in change.itertuples(index=False):
        points = 100 * (row.after - row.before)
        lines.append(
            f"{row.benchmark}: {100 * row.before:.1f}% -> {100 * row.after:.1f}% "
            f"({points:+.1f} points on {row.problems} problems; {row.gained} gained, "
            f"{row.lost} lost; exact McNemar p = {row.p_value:.3g})"
        )
    iteration = int(change["iteration"].iloc[0]) if "iteration" in change and len(change) else 0
    return (
        f"held-out gain, iteration {iteration} against iteration 0 (greedy pass@1):\n  "
        + "\n  ".join(lines)
    )


def pass_at_k(samples: int, correct: int, k: int) -> float:
    """Unbiased pass@k of one problem from ``samples`` draws of which ``correct`` are right
    (Chen et al. 2021, eq. 1): ``1 − C(n−c, k) / C(n, k)``, the chance that ``k`` of the
    ``n`` draws, taken without replacement, hold a correct one. NaN when ``k > samples``."""
    if k < 1 or samples < 0 or not 0 <= correct <= samples:
        raise ValueError(f"pass@k needs 1 <= k and 0 <= correct <= samples, got {k=}, "
                         f"{samples=}, {correct=}")  # fmt: skip
    if k > samples:
        return float("nan")
    if samples - correct < k:
        return 1.0
    # The product form of the ratio of binomials: stable for large n.
    return 1.0 - float(np.prod(1.0 - k / np.arange(samples - correct + 1, samples + 1)))


def _vote_winner(groups: list[list[int]], weights: Sequence[float]) -> int | None:
    """First index of the group with the largest total weight; ties go to the group seen
    first (as in :func:`sppd_lib.grading.majority_vote`)."""
    best, best_score = None, -math.inf
    for group in groups:
        score = sum(weights[i] for i in group)
        if score > best_score:
            best, best_score = group[0], score
    return best


def sampled_scores(samples: pd.DataFrame) -> pd.DataFrame:
    """maj@N, vote@N and best@N of every problem (rows of :func:`sample_responses`).

    One row per (benchmark, problem_id): samples (N), and for each metric in ``maj``,
    ``vote``, ``best`` the chosen answer ``<metric>_pred`` and ``<metric>_correct``. The
    answer groups are computed once per problem and shared by maj and vote; a chosen
    answer is correct when the stored grade of the sample that stands for it is.
    """
    rows = []
    for (benchmark, problem_id), group in samples.groupby(["benchmark", "problem_id"], sort=False):
        if "sample" in group:
            group = group.sort_values("sample", kind="stable")  # ties: lowest sample first
        preds = [None if pd.isna(p) else str(p) for p in group["pred"]]
        correct = [bool(c) for c in group["correct"]]
        weights = [float(w) for w in group["weight"]]
        groups = group_equivalent(preds)  # answerless samples are left out: they never win
        # best@N: the highest weight among samples with an answer (ties: lowest sample).
        answered = [i for i, p in enumerate(preds) if p is not None and not math.isnan(weights[i])]
        chosen = {
            "maj": _vote_winner(groups, [1.0] * len(preds)),
            "vote": _vote_winner(groups, weights),
            "best": max(answered, key=lambda i: (weights[i], -i), default=None),
        }
        row = {"benchmark": benchmark, "problem_id": problem_id, "samples": len(preds)}
        for metric, index in chosen.items():
            row[f"{metric}_pred"] = None if index is None else preds[index]
            row[f"{metric}_correct"] = False if index is None else correct[index]
        rows.append(row)
    columns = ["benchmark", "problem_id", "samples"]
    columns += [f"{m}_{c}" for m in ("maj", "vote", "best") for c in ("pred", "correct")]
    return pd.DataFrame(rows, columns=columns)


def _one_metric(samples: pd.DataFrame, metric: str) -> pd.DataFrame:
    scores = sampled_scores(samples)
    return scores[["benchmark", "problem_id", f"{metric}_pred", f"{metric}_correct"]].rename(
        columns={f"{metric}_pred": "pred", f"{metric}_correct": "correct"}
    )


def maj_at_n(samples: pd.DataFrame) -> pd.DataFrame:
    """Per problem (benchmark, problem_id, pred, correct): the answer most samples give."""
    return _one_metric(samples, "maj")


def vote_at_n(samples: pd.DataFrame) -> pd.DataFrame:
    """Per problem (benchmark, problem_id, pred, correct): the answer of largest total weight."""
    return _one_metric(samples, "vote")


def best_of_n(samples: pd.DataFrame) -> pd.DataFrame:
    """Per problem (benchmark, problem_id, pred, correct): the answer of the highest-weighted
    sample that has an answer."""
    return _one_metric(samples, "best")


def summary_rows(
    greedy: pd.DataFrame | None, samples: pd.DataFrame | None, iteration: int
) -> pd.DataFrame:
    """This iteration's rows of ``summary.parquet``: one per benchmark x metric.

    Metrics: ``pass@1`` from the greedy rows (:func:`evaluate`) and, when ``samples``
    (:func:`sample_responses`) is given and not empty, ``maj@N``, ``vote@N`` and ``best@N``
    with N the samples per problem. Columns :data:`SUMMARY_COLUMNS`; value is the accuracy,
    n the problems, ci95_low/high its 95% Wilson interval.
    """
    per_benchmark: dict[str, list[tuple[str, pd.Series]]] = {}
    if greedy is not None and len(greedy):
        for benchmark, group in greedy.groupby("benchmark", sort=False):
            per_benchmark.setdefault(str(benchmark), []).append(("pass@1", group["correct"]))
    if samples is not None and len(samples):
        scores = sampled_scores(samples)
        n = int(scores["samples"].max())
        for benchmark, group in scores.groupby("benchmark", sort=False):
            for metric in ("maj", "vote", "best"):
                per_benchmark.setdefault(str(benchmark), []).append(
                    (f"{metric}@{n}", group[f"{metric}_correct"])
                )
    rows = []
    for benchmark, metrics in per_benchmark.items():
        for metric, correct_column in metrics:
            correct, total = int(correct_column.sum()), len(correct_column)
            low, high = wilson_interval(correct, total)
            rows.append(
                {
                    "iteration": int(iteration),
                    "benchmark": benchmark,
                    "metric": metric,
                    "value": correct / total,
                    "n": total,
                    "correct": correct,
                    "ci95_low": low,
                    "ci95_high": high,
                }
            )
    table = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    return table.astype(
        {
            "iteration": "int64",
            "benchmark": "object",
            "metric": "object",
            "value": "float64",
            "n": "int64",
            "correct": "int64",
            "ci95_low": "float64",
            "ci95_high": "float64",
        }
    )


def accuracy_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per benchmark: problems, correct, pass@1 with a 95% Wilson interval, unanswered share."""
    rows = []
    for benchmark, group in results.groupby("benchmark", sort=False):
        correct, total = int(group["correct"].sum()), len(group)
        low, high = wilson_interval(correct, total)
        rows.append(
            {
                "benchmark": benchmark,
                "problems": total,
                "correct": correct,
                "pass@1": correct / total,
                "ci95_low": low,
                "ci95_high": high,
                "no_answer": float((group["status"] == "no_answer").mean()),
                "truncated": float((group["finish_reason"] == "length").mean()),
                "mean_tokens": float(group["num_tokens"].mean()),
            }
        )
    return pd.DataFrame(rows)


def accuracy_by_iteration(summary: pd.DataFrame, metric: str = "pass@1") -> pd.DataFrame:
    """Accuracy table: one row per iteration, one column per benchmark."""
    rows = summary[summary["metric"] == metric]
    return rows.pivot(index="iteration", columns="benchmark", values="value").rename_axis(
        None, axis=1
    )
