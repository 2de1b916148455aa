"""Plotly figures of a run directory, by family: step trees (:mod:`.trees`), the interactive
explorer (:mod:`.explorer`), pairs, margins and training (:mod:`.training`), accuracy and run
comparisons (:mod:`.accuracy`), the run overview (:mod:`.overview`), pass@k coverage
(:mod:`.coverage`), the pairs as text (:mod:`.pairs`), responses gained and lost
(:mod:`.responses`), the run header (:mod:`.identity`), the explorer of static pages
(:mod:`.explorer_html`), notebook setup (:mod:`.notebook`); runs are read by :mod:`.run`,
styled by :mod:`.style`, tables drawn by :mod:`.table`.

The notebooks in ``notebooks/`` only call these builders, so every figure can be tested and
reused. A builder never raises on a missing or empty file (a run still going, an iteration
without pairs, an SFT-only phase): it returns :func:`empty_figure`, a figure whose only content
is a note saying what is missing. Nothing here imports the loop or the trainer; torch only
when the pairs table computes margins with the trainer's own rule.
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
from sppd_lib.viz.coverage import coverage_frame, pass_at_k_figure
from sppd_lib.viz.explorer import TreeExplorer, explorer_view, problem_list
from sppd_lib.viz.explorer_html import offline_explorer
from sppd_lib.viz.identity import run_header, runs_header
from sppd_lib.viz.notebook import setup_notebook
from sppd_lib.viz.overview import (
    heldout_table,
    learned_table,
    overview_html,
    pass1_by_iteration,
    phase_seconds,
    run_overview,
)
from sppd_lib.viz.pairs import no_pair_reasons, pairs_frame, pairs_table
from sppd_lib.viz.responses import (
    ResponsesExplorer,
    changes_table,
    gained_lost,
    gained_lost_table,
    grader_status_table,
    response_length_figure,
    responses_view,
)
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
    "ResponsesExplorer",
    "Run",
    "RunNotFoundError",
    "TreeExplorer",
    "accuracy_figure",
    "change_table",
    "changes_table",
    "compare_runs_figure",
    "config_diff_table",
    "coverage_frame",
    "empty_figure",
    "explorer_view",
    "featured_tree_figures",
    "featured_trees",
    "final_scores_table",
    "final_scores_view",
    "gained_lost",
    "gained_lost_table",
    "grader_status_table",
    "heldout_table",
    "is_empty_figure",
    "learned_table",
    "load_run",
    "margin_histograms",
    "no_pair_reasons",
    "offline_explorer",
    "overview_html",
    "pairs_by_depth",
    "pairs_frame",
    "pairs_table",
    "pass1_by_iteration",
    "pass_at_k_figure",
    "phase_seconds",
    "problem_list",
    "resolve_run_dir",
    "response_length_figure",
    "responses_view",
    "reward_vs_value_margin",
    "run_header",
    "run_overview",
    "runs_header",
    "setup_notebook",
    "summary_table",
    "training_curves",
    "tree_figure",
    "tree_stats_figure",
]
