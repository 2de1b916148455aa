"""Statistics of evaluations: intervals, paired tests and bootstrap (no torch import).

Used by ``evaluate`` (per-benchmark accuracy), the loop (change since iteration 0) and the
margin study (``study``: arms trained with several seeds on the same problems).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = [
    "mcnemar_exact",
    "paired_bootstrap",
    "paired_change",
    "seed_interval",
    "t_quantile_975",
    "wilson_interval",
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
