"""How good is a value estimator? Measured against exact process truth (generated arithmetic).

On generated arithmetic every claim of a step can be checked exactly (:mod:`sppd_lib.checker`),
so each step whose claims all hold (``true``) or one of which is wrong (``false``) is a
labelled example for the values an estimator gave it. For every estimator, on the same
trees:

* ``auc``: the probability that a random ``true`` step is valued above a random ``false``
  one (ties count half; 0.5 is chance);
* calibration by value bin: the share of ``true`` steps among the steps whose value falls in
  each bin (a calibrated estimator's share matches the bin);
* ``chosen_false``: the share of step pairs (built with the given pair config) whose chosen
  side is ``false``: noise the loss is trained on.

Steps without a claim carry no label and are left out. An estimator is given by name
(``mc``, ``bellman_max``, ``bellman_mean``; ``prm`` with a scorer) and values copies of
the trees, or the trees already carry its values (:func:`valued_tree_quality`, e.g. a
study's ``values/<name>/trees.jsonl.gz``, where ``mc`` may include rollouts).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from sppd_lib.checker import step_verdict
from sppd_lib.config import PairConfig
from sppd_lib.data import GENERATED
from sppd_lib.pairs import step_pairs, value_trees
from sppd_lib.tree import ROOT, StepTree

if TYPE_CHECKING:
    from sppd_lib.prm import PRMScorer

__all__ = [
    "CALIBRATION_BINS",
    "auc",
    "estimator_quality",
    "format_quality_table",
    "labelled_values",
    "valued_tree_quality",
]

#: Upper edges of the calibration bins over [0, 1] (the first bin holds exactly 0 too).
CALIBRATION_BINS = (0.2, 0.4, 0.6, 0.8, 1.0)


def auc(values: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve of ``values`` separating ``labels`` (Mann-Whitney, ties
    half); NaN without both classes."""
    frame = pd.DataFrame({"value": values, "label": labels})
    positives, negatives = int(frame["label"].sum()), int((~frame["label"]).sum())
    if not positives or not negatives:
        return float("nan")
    ranks = frame["value"].rank(method="average")
    rank_sum = float(ranks[frame["label"]].sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def labelled_values(trees: Iterable[StepTree]) -> pd.DataFrame:
    """``tree_id``, ``node``, ``value`` and ``true`` (the checker's label) of every valued step
    with a claim in the generated-arithmetic trees."""
    rows = []
    for tree in trees:
        if tree.problem.source not in GENERATED:
            continue
        for node in tree.nodes:
            if node.id == ROOT or node.value is None:
                continue
            verdict = step_verdict(node.text)
            if verdict != "no_claim":
                rows.append(
                    {
                        "tree_id": tree.problem.id,
                        "node": node.id,
                        "value": float(node.value),
                        "true": verdict == "true",
                    }
                )
    return pd.DataFrame(rows, columns=["tree_id", "node", "value", "true"])


def _bin_label(value: float) -> str:
    lower = 0.0
    for upper in CALIBRATION_BINS:
        if value <= upper + 1e-12:
            return f"[{lower:.1f}, {upper:.1f}]" if lower == 0 else f"({lower:.1f}, {upper:.1f}]"
        lower = upper
    return f"({lower:.1f}, …]"


def valued_tree_quality(
    name: str, trees: list[StepTree], pair_config: PairConfig
) -> tuple[dict[str, Any], pd.DataFrame]:
    """The quality row and calibration rows of trees that already carry one estimator's
    values (pairs are built from them with ``pair_config``, which is not used to revalue)."""
    labelled = labelled_values(trees)
    pairs = [row for tree in trees for row in step_pairs(tree, pair_config)[0]]
    checked = [row for row in pairs if row.get("chosen_check") is not None]
    chosen_false = sum(row["chosen_check"] == "false" for row in checked)
    small_gap = sum(row["delta_value"] < 1 for row in pairs)
    summary = {
        "estimator": name,
        "steps": len(labelled),
        "true_share": float(labelled["true"].mean()) if len(labelled) else float("nan"),
        "auc": auc(labelled["value"].tolist(), labelled["true"].tolist()),
        "pairs": len(pairs),
        "chosen_false": chosen_false / len(checked) if checked else float("nan"),
        "gap_below_1": small_gap / len(pairs) if pairs else float("nan"),
    }
    calibration = (
        labelled.assign(bin=labelled["value"].map(_bin_label))
        .groupby("bin", sort=True)
        .agg(steps=("true", "size"), mean_value=("value", "mean"), true_share=("true", "mean"))
        .reset_index()
        .assign(estimator=name)
    )
    return summary, calibration[["estimator", "bin", "steps", "mean_value", "true_share"]]


def estimator_quality(
    trees: Sequence[StepTree],
    estimators: Sequence[str] = ("mc", "bellman_max", "bellman_mean"),
    pair_config: PairConfig | None = None,
    scorer: PRMScorer | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every estimator's values on copies of ``trees`` against the checker: a summary table
    (``estimator``, ``steps``, ``true_share``, ``auc``, ``pairs``, ``chosen_false``,
    ``gap_below_1``) and the calibration table (``estimator``, ``bin``, ``steps``,
    ``mean_value``, ``true_share``). ``pair_config`` (default: the paper's) sets leaf grading,
    merging and the pair filter; its ``value`` is replaced by each estimator. ``prm`` needs
    ``scorer``."""
    base = pair_config or PairConfig()
    summaries, calibrations = [], []
    for name in estimators:
        if name == "prm":
            if scorer is None:
                raise ValueError("estimator 'prm' needs a PRMScorer")
            from sppd_lib.prm import prm_values  # torch, only when asked for

            config = dataclasses.replace(base, value="mc")  # merging and grading as configured
            valued = [prm_values(t, scorer) for t in value_trees(copy.deepcopy(trees), config)]
        else:
            estimator, _, aggregate = name.partition("_")
            if estimator not in ("mc", "bellman") or (aggregate and estimator != "bellman"):
                raise ValueError(f"unknown estimator {name!r} (mc, bellman_max, bellman_mean, prm)")
            config = dataclasses.replace(
                base,
                value=estimator,  # type: ignore[arg-type]
                bellman_aggregate=aggregate or base.bellman_aggregate,  # type: ignore[arg-type]
            )
            valued = list(value_trees(copy.deepcopy(list(trees)), config))
        summary, calibration = valued_tree_quality(name, valued, config)
        summaries.append(summary)
        calibrations.append(calibration)
    return pd.DataFrame(summaries), pd.concat(calibrations, ignore_index=True)


def format_quality_table(summary: pd.DataFrame) -> str:
    """The summary table as text, shares in percent."""
    shown = summary.copy()
    for column in ("true_share", "chosen_false", "gap_below_1"):
        shown[column] = shown[column].map(lambda x: "–" if pd.isna(x) else f"{100 * x:.0f}%")
    shown["auc"] = shown["auc"].map(lambda x: "–" if pd.isna(x) else f"{x:.3f}")
    return shown.to_string(index=False)
