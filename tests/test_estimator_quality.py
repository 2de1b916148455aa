"""Value estimators measured against the exact step checker."""

from __future__ import annotations

import itertools
import math

import pytest

from sppd_lib.config import PairConfig
from sppd_lib.estimator_quality import auc, estimator_quality, format_quality_table
from tests.test_process_pairs import duplicate_tree, process_tree


def brute_auc(values: list[float], labels: list[bool]) -> float:
    pos = [v for v, t in zip(values, labels, strict=True) if t]
    neg = [v for v, t in zip(values, labels, strict=True) if not t]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_is_the_mann_whitney_probability() -> None:
    assert auc([0.9, 0.8, 0.1], [True, True, False]) == 1.0
    assert auc([0.1, 0.8, 0.9], [True, False, False]) == 0.0
    assert auc([0.5, 0.5], [True, False]) == 0.5
    assert math.isnan(auc([0.5, 0.5], [True, True]))
    values = [0.0, 0.25, 0.5, 0.5, 1.0, 1.0, 0.75, 0.0]
    labels = [False, True, True, False, True, False, True, False]
    assert auc(values, labels) == pytest.approx(brute_auc(values, labels))


def test_estimator_quality_on_known_trees() -> None:
    trees = [process_tree(), duplicate_tree()]
    summary, calibration = estimator_quality(trees, ("mc", "bellman_max", "bellman_mean"))
    assert list(summary["estimator"]) == ["mc", "bellman_max", "bellman_mean"]
    mc = summary.set_index("estimator").loc["mc"]
    # Labelled steps (merged duplicates count once): process_tree "2 * 7 = 14" (true, 2/3),
    # "2 * 7 = 12" (false, 0), "14 + -7 = 7. ..." (true, 1), "12 + -7 = 5. ..." (true, 0),
    # "14 + -7 = 8" (false, 1); duplicate_tree "2 * 7 = 14" (true, 2/4), "2 * 7 = 15"
    # (false, 0), "14 + -7 = 7." (true, 1), "14 + -7 = 21." (false, 0), "15 + -7 = 8."
    # (true, 0).
    values = [2 / 3, 0, 1, 0, 1, 0.5, 0, 1, 0, 0]
    labels = [True, False, True, True, False, True, False, True, False, True]
    assert mc["steps"] == len(values)
    assert mc["auc"] == pytest.approx(brute_auc(values, labels))
    assert mc["true_share"] == pytest.approx(sum(labels) / len(labels))
    # mc pairs at threshold 0.5: process_tree 3 (one chosen false), duplicate_tree:
    # "2 * 7 = 14" (0.5) vs "2 * 7 = 15" (0) is not above 0.5; "14 + -7 = 7." (1) vs
    # "14 + -7 = 21." (0): 1 pair. So 1 of 4 chosen steps is false.
    assert mc["pairs"] == 4 and mc["chosen_false"] == pytest.approx(0.25)
    assert set(calibration["estimator"]) == {"mc", "bellman_max", "bellman_mean"}
    mc_bins = calibration[calibration["estimator"] == "mc"]
    assert mc_bins["steps"].sum() == len(values)
    top = mc_bins[mc_bins["bin"] == "(0.8, 1.0]"].iloc[0]
    assert top["steps"] == 3 and top["true_share"] == pytest.approx(2 / 3)
    assert "bellman_max" in format_quality_table(summary)


def test_process_check_removes_false_chosen_steps() -> None:
    summary, _ = estimator_quality(
        [process_tree(), duplicate_tree()], ("mc",), PairConfig(process_check=True)
    )
    assert summary.loc[0, "chosen_false"] == 0.0


def test_unknown_estimator_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown estimator"):
        estimator_quality([process_tree()], ("mc_max",))
    with pytest.raises(ValueError, match="PRMScorer"):
        estimator_quality([process_tree()], ("prm",))


def test_study_table_reads_valued_trees_and_adds_missing_estimators(tmp_path, capsys) -> None:
    import pandas as pd

    from sppd_lib.config import StudyConfig
    from sppd_lib.pairs import value_trees
    from sppd_lib.rundir import StudyDir
    from sppd_lib.study_results import Study, estimator_quality_table
    from sppd_lib.tree import write_trees

    config = StudyConfig(model="tiny-llama", baselines=[], gammas=[], seeds=[0])
    directory = StudyDir(tmp_path)
    write_trees(directory.trees, [process_tree(), duplicate_tree()])
    (name, pair_config), *_ = config.estimators.items()
    directory.values(name).path.mkdir(parents=True)
    valued = list(value_trees([process_tree(), duplicate_tree()], pair_config))
    write_trees(directory.values(name).trees, valued)
    study = Study(tmp_path, config, [], pd.DataFrame(), {})
    summary, calibration = estimator_quality_table(study)
    assert list(summary["estimator"]) == [name, "bellman_max", "bellman_mean"]
    direct, _ = estimator_quality([process_tree(), duplicate_tree()], ("mc",), pair_config)
    assert summary.loc[0, "auc"] == pytest.approx(direct.loc[0, "auc"])
    assert set(calibration["estimator"]) == {name, "bellman_max", "bellman_mean"}
    from sppd_lib.cli.run_commands import _print_estimator_quality

    _print_estimator_quality(study)
    printed = capsys.readouterr().out
    assert "value estimators against the exact step checker" in printed
    assert "bellman_mean" in printed and "calibration" in printed


def test_calibration_figure_has_one_line_per_estimator() -> None:
    from sppd_lib.viz.estimators import estimator_calibration_figure
    from sppd_lib.viz.style import is_empty_figure

    summary, calibration = estimator_quality(
        [process_tree(), duplicate_tree()], ("mc", "bellman_max")
    )
    figure = estimator_calibration_figure(summary, calibration)
    names = [trace.name for trace in figure.data]
    assert names[0] == "calibrated" and len(names) == 3
    assert names[1].startswith("mc (AUC ") and "chosen false 25%" in names[1]
    mc_points = calibration[calibration["estimator"] == "mc"]
    assert len(figure.data[1].x) == len(mc_points)
    empty = estimator_calibration_figure(summary.iloc[:0], calibration.iloc[:0])
    assert is_empty_figure(empty)
