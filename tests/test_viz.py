"""Figure builders, run loading and the tree explorer, on a small real run directory."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("plotly")  # the notebooks extra (absent from the vLLM virtualenv)
pytest.importorskip("ipywidgets")

import pandas as pd
import plotly.graph_objects as go
import yaml

from sppd_lib import viz
from sppd_lib.data import Problem
from sppd_lib.tree import StepTree
from sppd_lib.viz.notebook import _OfflineRenderer
from tests.run_fixture import fixture_runs

RUN_FIGURES = [
    viz.margin_histograms,
    viz.pairs_by_depth,
    viz.reward_vs_value_margin,
    viz.accuracy_figure,
    viz.training_curves,
    viz.tree_stats_figure,
]


@pytest.fixture(scope="session")
def run_dirs(tmp_path_factory):
    return fixture_runs(tmp_path_factory.getbasetemp() / "sppd_runs")


@pytest.fixture(scope="module")
def run(run_dirs):
    return viz.load_run(run_dirs[0])


@pytest.fixture
def partial_run(run_dirs, tmp_path):
    """A run still going: iteration 0 evaluated, iteration 1 sampled, nothing else."""
    path = tmp_path / "partial"
    (path / "iter_0").mkdir(parents=True)
    (path / "iter_1").mkdir()
    shutil.copy(run_dirs[0] / "config.yaml", path)
    shutil.copy(run_dirs[0] / "iter_0" / "eval.parquet", path / "iter_0")
    shutil.copy(run_dirs[0] / "iter_1" / "trees.jsonl.gz", path / "iter_1")
    return viz.load_run(path)


@pytest.fixture
def bare_run(tmp_path):
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.yaml").write_text("run_id: bare\n")
    return viz.load_run(tmp_path / "bare")


def node_count(figure: go.Figure) -> int:
    return sum(
        len(t.x) for t in figure.data if t.mode and "markers" in t.mode and t.hoverinfo != "skip"
    )


# -- loading ------------------------------------------------------------------------------


def test_load_run(run) -> None:
    assert run.run_id == "fixture"
    assert run.iterations == [0, 1, 2]
    assert run.tree_iterations() == [1, 2]
    assert set(run.summary["metric"]) == {"pass@1", "maj@8", "vote@8", "best@8"}
    assert run.config["train"]["gamma"] == 1.0
    assert len(run.trees(1)) == 4 and run.pairs(1) is not None
    assert run.train_log(1)["phase"].tolist()[0] == "sft"
    assert run.pair_log(0) is None and run.eval_samples(2) is not None
    stacked = run.stacked("pairs")
    assert set(stacked["iteration"]) == {1, 2}


def test_missing_run_dir_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(viz.RunNotFoundError, match="run directory not found"):
        viz.load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(viz.RunNotFoundError, match="not a run directory"):
        viz.load_run(tmp_path / "empty")


def test_trees_stored_without_values_get_the_configured_values(run) -> None:
    # iter_2 of the fixture stores the trees as sampled; the run's estimator (mc) fills them.
    tree = run.trees(2)[0]
    assert all(node.value is not None and node.value_source == "mc" for node in tree.nodes)


def test_summary_falls_back_to_eval_files(partial_run) -> None:
    summary = partial_run.summary
    assert set(summary["metric"]) == {"pass@1"} and set(summary["iteration"]) == {0}
    assert (summary["ci95_low"] <= summary["value"]).all()


def test_torn_log_line_is_skipped(run_dirs, tmp_path) -> None:
    path = tmp_path / "torn"
    shutil.copytree(run_dirs[0], path)
    log = path / "iter_1" / "train" / "log.jsonl"
    log.write_text(log.read_text() + '{"step": 99, "lo')
    assert len(viz.load_run(path).train_log(1)) == len(viz.load_run(run_dirs[0]).train_log(1))


# -- the tree figure ----------------------------------------------------------------------


def test_tree_figure_shows_nodes_values_and_pairs(run) -> None:
    pairs = run.pairs(1)
    tree = next(t for t in run.trees(1) if t.problem.id in set(pairs["tree_id"]))
    figure = viz.tree_figure(tree, pairs)
    names = {trace.name for trace in figure.data}
    assert {"chosen step (solid)", "rejected step (dashed)", "problem", "step"} <= names
    assert node_count(figure) == len(tree.nodes)
    chosen = next(t for t in figure.data if t.name.startswith("chosen step"))
    tree_pairs = pairs[pairs["tree_id"] == tree.problem.id]
    assert (
        list(chosen.x).count(None)
        == tree_pairs[["parent_node", "chosen_node"]].drop_duplicates().shape[0]
    )
    assert figure.layout.coloraxis.cmin == 0 and figure.layout.coloraxis.cmax == 1
    hover = "".join("".join(t.hovertext) for t in figure.data if t.hovertext)
    assert "mean log-prob" in hover and "chosen over node" in hover


def test_tree_figure_filters_depth_and_value(run) -> None:
    tree = run.trees(1)[0]
    full = node_count(viz.tree_figure(tree))
    shallow = viz.tree_figure(tree, max_depth=1)
    assert node_count(shallow) == 1 + len(tree.children(0)) < full
    high = viz.tree_figure(tree, min_value=0.99)
    visible = [t for t in high.data if t.marker is not None and t.marker.color is not None]
    assert node_count(high) < full and visible


def test_tree_hover_is_escaped_and_truncated() -> None:
    tree = StepTree(Problem("p<1>", "Is 1 < 2?", "yes", "test"), prompt_ids=[1])
    tree.add_child(0, text="<script>alert(1)</script> " + "x" * 2000, token_ids=[1], logprobs=[-1])
    hover = "".join("".join(t.hovertext) for t in viz.tree_figure(tree).data if t.hovertext)
    assert "<script>" not in hover and "&lt;script&gt;" in hover
    assert "x" * 500 not in hover and "value –" in hover  # no value: drawn grey


def test_featured_trees(run) -> None:
    picked = viz.featured_trees(run, first=1, most_pairs=2)
    assert [k for k, _, _ in picked] == [2, 2, 2]
    assert len({tree.problem.id for _, tree, _ in picked}) == 3
    figures = viz.featured_tree_figures(run, first=1, most_pairs=2)
    assert len(figures) == 3 and "most pairs" in figures[-1].layout.title.text


# -- run figures --------------------------------------------------------------------------


@pytest.mark.parametrize("builder", RUN_FIGURES, ids=lambda b: b.__name__)
def test_run_figures_have_traces(run, builder) -> None:
    figure = builder(run)
    assert isinstance(figure, go.Figure) and not viz.is_empty_figure(figure)
    assert len(figure.data) >= 2 and figure.layout.title.text


@pytest.mark.parametrize(
    "builder", [*RUN_FIGURES, viz.featured_tree_figures], ids=lambda b: b.__name__
)
def test_run_without_files_gives_explanatory_figures(bare_run, builder) -> None:
    figure = builder(bare_run)
    figure = figure[0] if isinstance(figure, list) else figure
    assert viz.is_empty_figure(figure) and not figure.data
    assert figure.layout.annotations[0].text


def test_run_still_going(partial_run) -> None:
    assert viz.is_empty_figure(viz.margin_histograms(partial_run))
    assert "no pairs" in viz.pairs_by_depth(partial_run).layout.annotations[0].text
    assert "training log" in viz.training_curves(partial_run).layout.annotations[0].text
    assert viz.is_empty_figure(viz.reward_vs_value_margin(partial_run))
    assert not viz.is_empty_figure(viz.tree_stats_figure(partial_run))
    assert not viz.is_empty_figure(viz.accuracy_figure(partial_run))
    assert len(viz.featured_tree_figures(partial_run)) == 3  # no pairs: the first three


def test_sft_only_log_notes_the_missing_margins(run_dirs, tmp_path) -> None:
    path = tmp_path / "sft"
    shutil.copytree(run_dirs[0], path)
    for k in (1, 2):
        (path / f"iter_{k}" / "train" / "pair_log.parquet").unlink()
        log = pd.read_json(path / f"iter_{k}" / "train" / "log.jsonl", lines=True)
        log[log["phase"] == "sft"].to_json(
            path / f"iter_{k}" / "train" / "log.jsonl", orient="records", lines=True
        )
    run = viz.load_run(path)
    figure = viz.reward_vs_value_margin(run)
    notes = [a.text for a in figure.layout.annotations]
    assert "no pair_log.parquet" in notes and "no reward margins in log.jsonl" in notes
    assert "not logged" in [a.text for a in viz.training_curves(run).layout.annotations]


def test_accuracy_figure_takes_a_summary_frame(run) -> None:
    figure = viz.accuracy_figure(run.summary)
    assert {t.name for t in figure.data} == {"pass@1", "maj@8", "vote@8", "best@8"}
    assert len(figure.data) == 8  # 4 metrics x 2 benchmarks
    assert viz.is_empty_figure(viz.accuracy_figure(run.summary.iloc[:0]))


def test_summary_table(run) -> None:
    table = viz.summary_table(run)
    assert list(table.columns) == ["iteration 0", "iteration 1", "iteration 2"]
    assert table.index[0] == ("arith", "pass@1") and "%" in table.iloc[0, 0]


def test_change_table(run, partial_run) -> None:
    table = viz.change_table(run)
    first, last = run.eval(0), run.eval(2)
    for benchmark, row in table.iterrows():
        was = first[first.benchmark == benchmark].set_index("problem_id")["correct"]
        now = last[last.benchmark == benchmark].set_index("problem_id")["correct"]
        assert row["iterations"] == "0 → 2" and row["problems"] == len(was)
        assert row["gained"] - row["lost"] == now.sum() - was.sum()
    assert list(viz.change_table(partial_run).columns) == ["note"]  # one evaluation only


# -- comparing runs -----------------------------------------------------------------------


def test_compare_runs(run_dirs) -> None:
    runs = [viz.load_run(path) for path in run_dirs]
    figure = viz.compare_runs_figure(runs)
    assert {t.name for t in figure.data} == {"fixture", "step-dpo"}
    table = viz.final_scores_table(runs)
    assert len(table) == 2 * 2 * 4  # runs x benchmarks x metrics
    final = table.set_index(["run", "benchmark", "metric"])["final"]
    assert final["fixture", "arith", "pass@1"] > final["step-dpo", "arith", "pass@1"]
    diff = viz.config_diff_table(runs)
    assert list(diff.index) == ["train.gamma"]
    assert viz.is_empty_figure(viz.compare_runs_figure(runs, metric="nope@1"))
    assert viz.final_scores_table([]).empty


# -- the explorer -------------------------------------------------------------------------


def test_tree_explorer_is_driven_by_its_controls(run) -> None:
    pytest.importorskip("anywidget")
    explorer = viz.TreeExplorer(run)
    assert explorer.iteration.value == 2 and len(explorer.problem.options) == 4
    first = explorer.figure.layout.title.text
    assert node_count(explorer.figure) == len(explorer.current_tree().nodes)

    second_id = explorer.problem.options[1][1]
    explorer.update(problem=second_id)
    assert explorer.figure.layout.title.text != first
    assert second_id in explorer.figure.layout.title.text

    explorer.update(iteration=1)
    assert "iteration" not in explorer.figure.layout.title.text  # plain tree figure
    assert explorer.current_tree() is run.tree(1, second_id)

    full = node_count(explorer.figure)
    explorer.update(max_depth=1)
    assert node_count(explorer.figure) < full
    explorer.update(max_depth=explorer.max_depth.max, min_value=0.99)
    assert node_count(explorer.figure) < full

    explorer.problem.value = explorer.problem.options[2][1]  # as a user would
    assert explorer.problem.options[2][1] in explorer.figure.layout.title.text
    assert explorer.min_value.value == 0.99
    assert explorer.figure in explorer.widget.children[3].children  # in its scroll box


def test_explorer_view_is_the_offline_explorer_for_static_exports(run, bare_run) -> None:
    assert "sppd-explorer" in viz.explorer_view(run, interactive=False).html
    pytest.importorskip("anywidget")
    explorer = viz.TreeExplorer(bare_run)
    assert viz.is_empty_figure(explorer.figure) and explorer.problem.options == ()


def test_offline_renderer(capsys) -> None:
    viz.setup_notebook()
    bundle = _OfflineRenderer().to_mimebundle(viz.empty_figure("t", "m").to_dict())
    assert "application/vnd.plotly.v1+json" in bundle
    assert "plotly-graph-div" in bundle["text/html"] and "cdn" not in bundle["text/html"]
    assert len(capsys.readouterr().out) < 1000  # outside IPython: only the repr is printed


def test_run_config_without_run_id(run_dirs, tmp_path) -> None:
    path = tmp_path / "my-run"
    shutil.copytree(run_dirs[0], path)
    (path / "config.yaml").write_text(yaml.safe_dump({"pairs": {"value": "mc"}}))
    assert viz.load_run(path).run_id == "my-run"
