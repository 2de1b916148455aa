"""Plotly figures of a run directory, by family: step trees (:mod:`.trees`), the interactive
explorer (:mod:`.explorer`), pairs, margins and training (:mod:`.training`), accuracy and run
comparisons (:mod:`.accuracy`), notebook setup (:mod:`.notebook`); runs are read by
:mod:`.run` and styled by :mod:`.style`.

The notebooks in ``notebooks/`` only call these builders, so every figure can be tested and
reused. A builder never raises on a missing or empty file (a run still going, an iteration
without pairs, an SFT-only phase): it returns :func:`empty_figure`, a figure whose only content
is a note saying what is missing. Nothing here imports the loop, the trainer or torch.
"""

from sppd_lib.viz.accuracy import (
    accuracy_figure,
    change_table,
    compare_runs_figure,
    config_diff_table,
    final_scores_table,
    final_scores_view,
    summary_table,
)
from sppd_lib.viz.explorer import TreeExplorer, explorer_view
from sppd_lib.viz.notebook import setup_notebook
from sppd_lib.viz.run import Run, RunNotFoundError, load_run, resolve_run_dir
from sppd_lib.viz.style import empty_figure, is_empty_figure
from sppd_lib.viz.training import (
    margin_histograms,
    pairs_by_depth,
    reward_vs_value_margin,
    training_curves,
    tree_stats_figure,
)
from sppd_lib.viz.trees import featured_tree_figures, featured_trees, tree_figure

__all__ = [
    "Run",
    "RunNotFoundError",
    "TreeExplorer",
    "accuracy_figure",
    "change_table",
    "compare_runs_figure",
    "config_diff_table",
    "empty_figure",
    "explorer_view",
    "featured_tree_figures",
    "featured_trees",
    "final_scores_table",
    "final_scores_view",
    "is_empty_figure",
    "load_run",
    "margin_histograms",
    "pairs_by_depth",
    "resolve_run_dir",
    "reward_vs_value_margin",
    "setup_notebook",
    "summary_table",
    "training_curves",
    "tree_figure",
    "tree_stats_figure",
]
