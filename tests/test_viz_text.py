"""The data behind the figures as text: pairs, responses gained and lost, the run header, the
offline explorer, honest single-value panels, the explorer at scale, and saved notebooks."""

from __future__ import annotations

import json
import re
import shutil

import pytest

pytest.importorskip("plotly")  # the notebooks extra (absent from the vLLM virtualenv)
pytest.importorskip("ipywidgets")

import pandas as pd
import yaml

from sppd_lib import nbstrip, report, viz
from sppd_lib.files import write_parquet_atomic
from sppd_lib.viz.responses import compared_steps
from tests.run_fixture import fixture_runs


@pytest.fixture(scope="session")
def run_dirs(tmp_path_factory):
    return fixture_runs(tmp_path_factory.getbasetemp() / "sppd_runs")


@pytest.fixture(scope="module")
def run(run_dirs):
    return viz.load_run(run_dirs[0])


def copy_run(run_dirs, tmp_path, name="copy"):
    path = tmp_path / name
    shutil.copytree(run_dirs[0], path)
    return path


def set_train(path, **settings):
    config = yaml.safe_load((path / "config.yaml").read_text())
    config["train"].update(settings)
    (path / "config.yaml").write_text(yaml.safe_dump(config))


# -- the run overview ----------------------------------------------------------------------


def test_run_overview_gives_every_number_with_its_count(run) -> None:
    table = viz.run_overview(run)
    assert list(table.index) == [0, 1, 2]
    frame = viz.pairs_frame(run)
    for k in (1, 2):
        mine = frame[frame["iteration"] == k]
        learned, trained = int(mine["learned"].sum()), int(mine["learned"].notna().sum())
        assert table.loc[k, "learned (β·h > margin)"].startswith(f"{learned}/{trained} (")
        stats = run.tree_stats(k)
        correct = int((stats["correct_paths"] > 0).sum())
        assert table.loc[k, "trees with a correct leaf"].startswith(f"{correct}/{len(stats)}")
        assert table.loc[k, "pairs"].split()[0] == str(len(run.pairs(k)))
        last = viz.overview.final_pairs(run, k)
        ranked = int((last["reward_margin"] > 0).sum())
        assert table.loc[k, "reward accuracy (β·h > 0)"].startswith(f"{ranked}/{trained}")
    # pass@1: count, interval and the paired test against iteration 0
    scores = viz.pass1_by_iteration(run)
    change = run.change_since_start().set_index("benchmark")
    row = scores[(scores["iteration"] == 2) & (scores["benchmark"] == "arith")].iloc[0]
    assert row["p_value"] == pytest.approx(change.loc["arith", "p_value"])
    cell = table.loc[2, "pass@1 arith"]
    assert cell.startswith(f"{row['correct']}/{row['n']} = ") and "p = " in cell
    assert "vs 0" not in table.loc[0, "pass@1 arith"]
    # seconds per phase, from phase_times.jsonl
    seconds = viz.phase_seconds(run)
    assert list(seconds.columns) == ["sample", "pairs", "train_sppd", "eval"]
    total = seconds.loc[1].sum()
    assert table.loc[1, "seconds"].startswith(f"{total:.0f} s; sample ")
    assert table.loc[0, "seconds"].startswith(f"{seconds.loc[0, 'eval']:.0f} s; eval")
    page = viz.overview_html(run)
    assert page.count("<tr>") == 4 and "title=" in page


def test_overview_of_a_run_that_just_started(partial_run_dir) -> None:
    table = viz.run_overview(viz.load_run(partial_run_dir))
    assert table.loc[1, "pairs"] == "–" and table.loc[1, "learned (β·h > margin)"] == "–"
    assert table.loc[1, "prompts"] != "–"


@pytest.fixture
def partial_run_dir(run_dirs, tmp_path):
    """iteration 0 evaluated, iteration 1 sampled, nothing else."""
    path = tmp_path / "partial"
    (path / "iter_0").mkdir(parents=True)
    (path / "iter_1").mkdir()
    shutil.copy(run_dirs[0] / "config.yaml", path)
    shutil.copy(run_dirs[0] / "iter_0" / "eval.parquet", path / "iter_0")
    shutil.copy(run_dirs[0] / "iter_1" / "trees.jsonl.gz", path / "iter_1")
    return path


def test_identical_pairs_are_flagged(run_dirs, tmp_path) -> None:
    path = copy_run(run_dirs, tmp_path)
    pairs = pd.read_parquet(path / "iter_1" / "pairs.parquet")
    pairs.loc[0, "rejected"] = pairs.loc[0, "chosen"] + " "
    write_parquet_atomic(pairs, path / "iter_1" / "pairs.parquet")
    run = viz.load_run(path)
    frame = viz.pairs_frame(run, 1)
    assert frame["identical"].tolist() == [True] + [False] * (len(frame) - 1)
    assert viz.run_overview(run).loc[1, "pairs"] == f"{len(frame)}; 1 identical"
    page = viz.pairs_table(run, 1).html
    assert "⚠ identical" in page and "1 pair(s) have identical chosen and rejected" in page


# -- pairs as text ------------------------------------------------------------------------


def test_pairs_frame_joins_values_margins_and_training(run) -> None:
    frame = viz.pairs_frame(run)
    assert list(frame.columns) == viz.pairs.PAIR_COLUMNS
    assert set(frame["iteration"]) == {1, 2}
    assert len(frame) == sum(len(run.pairs(k)) for k in (1, 2))
    # dynamic margin with γ = 1 (the fixture's train config): margin = Δv
    assert (frame["margin"] - frame["delta_value"]).abs().max() < 1e-9
    log = run.pair_log(1).sort_values("step", kind="stable")
    first = frame[frame["iteration"] == 1].iloc[0]
    rows = log[log["pair_index"] == first["pair_index"]]
    assert first["bh_before"] == rows["reward_margin"].iloc[0]
    assert first["bh_after"] == rows["reward_margin"].iloc[-1]
    assert first["learned"] == (first["bh_after"] > first["margin"])
    tree = run.tree(1, first["problem_id"])
    assert first["question"] == tree.problem.question
    steps = [n for n in tree.path(int(first["parent_node"])) if n.parent_id is not None]
    assert first["prefix"] == "".join(n.text for n in steps)
    one = viz.pairs_frame(run, 1, first["problem_id"])
    assert set(one["problem_id"]) == {first["problem_id"]} and set(one["iteration"]) == {1}


@pytest.mark.parametrize(
    ("settings", "expected"),
    [({"margin": "fixed", "fixed_margin": 0.3}, 0.3), ({"margin": "none"}, 0.0)],
)
def test_pairs_margin_follows_the_train_config(run_dirs, tmp_path, settings, expected) -> None:
    path = copy_run(run_dirs, tmp_path)
    set_train(path, **settings)
    margins = viz.pairs_frame(viz.load_run(path))["margin"]
    assert (margins - expected).abs().max() < 1e-6


def test_pairs_table_is_offline_html(run) -> None:
    table = viz.pairs_table(run)
    markup = table.html
    assert markup == table._repr_html_() and "sppdTable(" in markup
    assert "<details>" in markup and "β·h before" in markup and "γ·Δv with γ = 1.0" in markup
    assert not re.search(r"src=[\"']https?:", markup)  # nothing fetched
    spec = json.loads(re.search(r'type="application/json">(.*?)</script>', markup).group(1))
    assert len(spec["rows"]) == len(viz.pairs_frame(run))
    assert "pairs.parquet" in viz.pairs_table(run, limit=2).html  # says what was left out


def test_no_pair_reasons(run_dirs, tmp_path, run) -> None:
    assert list(viz.no_pair_reasons(run).columns) == ["note"]  # no pairs_summary.json
    path = copy_run(run_dirs, tmp_path)
    summary = {"pairs": 3, "trees": 40, "trees_with_pairs": 12}
    summary["trees_without_pairs"] = {"no sibling gap above 0.5": 28}
    (path / "iter_1" / "pairs_summary.json").write_text(json.dumps(summary))
    table = viz.no_pair_reasons(viz.load_run(path))
    assert table.loc[1, "no pair: no sibling gap above 0.5"] == 28
    assert table.loc[1, "trees"] == 40


# -- responses ----------------------------------------------------------------------------


def test_gained_and_lost_between_any_two_iterations(run) -> None:
    assert compared_steps(run) == [(0, 2), (0, 1), (1, 2)]
    changes = viz.changes_table(run)
    for a, b in compared_steps(run):
        lost_and_gained = viz.gained_lost(run, a, b)
        for benchmark, group in lost_and_gained.groupby("benchmark"):
            row = changes.loc[(f"{a} → {b}", benchmark)]
            assert (group["change"] == "gained").sum() == row["gained"]
            assert (group["change"] == "lost").sum() == row["lost"]
    frame = viz.gained_lost(run, 0, 2, "arith")
    assert set(frame["benchmark"]) == {"arith"}
    assert {"response_before", "response_after", "pred_before", "gold"} <= set(frame.columns)
    markup = viz.gained_lost_table(run, 0, 2).html
    assert "<mark class='right'>" in markup and "<mark class='wrong'>" in markup
    static = viz.responses_view(run, interactive=False).html
    assert all(f"Iteration {a} → {b}" in static for a, b in compared_steps(run))


def test_responses_explorer_picks_any_two(run) -> None:
    explorer = viz.ResponsesExplorer(run)
    assert (explorer.before.value, explorer.after.value) == (0, 2)
    explorer.before.value, explorer.after.value = 1, 2
    assert "Iteration 1 → 2" in explorer.table().html


def test_response_length_and_grader_status(run) -> None:
    figure = viz.response_length_figure(run)
    assert len(figure.data) == 3 * 2  # iterations x benchmarks
    assert "mean tokens" in figure.layout.title.subtitle.text
    table = viz.grader_status_table(run)
    assert table["iteration 0"].sum() == len(run.eval(0))
    assert {"correct", "wrong"} <= set(table.index.get_level_values("status"))


# -- honest panels --------------------------------------------------------------------------


def test_single_value_distributions_are_said_in_words(run_dirs, tmp_path) -> None:
    path = copy_run(run_dirs, tmp_path)
    for k in (1, 2):
        pairs = pd.read_parquet(path / f"iter_{k}" / "pairs.parquet").assign(delta_value=1.0)
        write_parquet_atomic(pairs, path / f"iter_{k}" / "pairs.parquet")
        log = pd.read_parquet(path / f"iter_{k}" / "train" / "pair_log.parquet")
        write_parquet_atomic(log.assign(value_margin=1.0), path / f"iter_{k}" / "train" /
                             "pair_log.parquet")  # fmt: skip
    flat = viz.load_run(path)
    notes = " ".join(a.text for a in viz.margin_histograms(flat).layout.annotations)
    assert "Δv = 1: a single value" in notes and "margin = 1: a single value" in notes
    assert not [t for t in viz.margin_histograms(flat).data]  # no single bar drawn
    by_depth = viz.pairs_by_depth(flat)
    assert "same at every depth" in " ".join(a.text for a in by_depth.layout.annotations)
    scatter = viz.reward_vs_value_margin(flat)
    assert "differ only in β·h" in " ".join(a.text for a in scatter.layout.annotations)


def test_correct_paths_are_a_distribution_and_iterations_have_colours(run) -> None:
    figure = viz.tree_stats_figure(run)
    bars = [t for t in figure.data if t.name.startswith("iteration")]
    assert len(bars) == 2 and bars[0].marker.color != bars[1].marker.color
    for bar, k in zip(bars, (1, 2), strict=True):
        assert sum(bar.y) == len(run.trees(k))  # trees per number of correct paths
    assert "without any correct path" in figure.layout.title.subtitle.text
    curves = viz.training_curves(run)
    colours = {t.name: t.line.color for t in curves.data if t.name}
    assert colours["iteration 1"] != colours["iteration 2"]
    titled = [a for a in curves.layout if a.startswith("yaxis") and curves.layout[a].title.text]
    assert len(titled) == 6  # every panel has a y title
    accuracy = viz.accuracy_figure(run)
    assert "(n = 40)" in accuracy.layout.annotations[0].text
    assert accuracy.layout.yaxis.title.text == "accuracy"


# -- run identity -----------------------------------------------------------------------------


def test_run_header_says_which_run(run, run_dirs, tmp_path, monkeypatch, capsys) -> None:
    header = viz.run_header(run, "Accuracy").html
    assert "fixture" in header and str(run_dirs[0].resolve()) in header
    assert "tiny-llama" in header and 'href="index.html"' in header
    assert "index.html" not in viz.run_header(run, "Accuracy", index_link=False).html
    monkeypatch.chdir(run_dirs[0].parent)  # holds no runs/ ...
    (tmp_path / "runs").mkdir()
    shutil.copytree(run_dirs[0], tmp_path / "runs" / "mine")
    monkeypatch.chdir(tmp_path)
    picked = viz.load_run(None)
    assert "run_dir = None" in capsys.readouterr().out
    assert "most recently changed run" in viz.run_header(picked, "x").html


def test_missing_run_says_how_to_set_run_dir(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(viz.RunNotFoundError, match="set run_dir in the notebook's parameters"):
        viz.load_run(None)
    with pytest.raises(viz.RunNotFoundError, match=r"run directory not found.*set run_dir"):
        viz.load_run(tmp_path / "nope")


def test_config_yaml_quotes_the_step_delimiter() -> None:
    text = report.config_yaml({"sampler": {"step_delimiter": "\n\n", "k": 12}, "run_id": "a"})
    assert 'step_delimiter: "\\n\\n"' in text and yaml.safe_load(text)["sampler"]["k"] == 12


def test_scores_say_which_iteration_the_interval_is_of(run) -> None:
    table = viz.final_scores_table([run])
    assert table["final 95% CI"].str.startswith("iteration 2: ").all()


# -- the explorer at scale ----------------------------------------------------------------------


def test_offline_explorer_offers_every_tree(run) -> None:
    markup = viz.offline_explorer(run).html
    data = json.loads(re.search(r"class='trees' type='application/json'>(.*?)</script>",
                                markup).group(1))  # fmt: skip
    keys = {t["key"] for t in data["trees"]}
    assert keys == {f"{k}/{t.problem.id}" for k in (1, 2) for t in run.trees(k)}
    assert all("template" not in t["figure"]["layout"] for t in data["trees"])  # one shared
    assert "plotly-graph-div" in markup and "sppdTables" in markup and data["left_out"] == 0
    few = json.loads(re.search(r"class='trees' type='application/json'>(.*?)</script>",
                               viz.offline_explorer(run, 1, limit=2).html).group(1))  # fmt: skip
    assert len(few["trees"]) == 2 and few["left_out"] == 6 and few["start"] == 1


def test_explorer_search_sort_and_depth_memory(run) -> None:
    pytest.importorskip("anywidget")
    explorer = viz.TreeExplorer(run)
    ids = [value for _, value in explorer.problem.options]
    stats = run.tree_stats(2).set_index("problem_id")
    assert list(stats.loc[ids, "pairs"]) == sorted(stats["pairs"], reverse=True)
    explorer.update(sort="problem id")
    assert [v for _, v in explorer.problem.options] == sorted(ids)
    explorer.update(search=ids[1])
    assert [v for _, v in explorer.problem.options] == [ids[1]]
    assert "1 listed of 1 matching" in explorer.matches.value
    explorer.update(search="")
    explorer.max_depth.value = 2  # as a user would
    explorer.problem.value = explorer.problem.options[1][1]
    assert explorer.max_depth.value == 2  # kept across problems
    subtitle = explorer.figure.layout.title.text
    assert re.search(r"\d+ of \d+ steps shown", subtitle)
    assert explorer.problem.value in explorer.pairs_html() or "no pairs" in explorer.pairs_html()


def test_tree_figure_edges_end_at_shown_nodes(run) -> None:
    pairs = run.pairs(1)
    tree = next(t for t in run.trees(1) if t.problem.id in set(pairs["tree_id"]))
    for min_value in (None, 0.3, 0.6, 0.9):
        figure = viz.tree_figure(tree, pairs, min_value=min_value)
        nodes = {(x, y) for t in figure.data if t.mode and "markers" in t.mode
                 for x, y in zip(t.x, t.y, strict=True)}  # fmt: skip
        for trace in figure.data:
            if trace.name and trace.name.startswith(("chosen", "rejected")):
                ends = [(x, y) for x, y, nxt in zip(trace.x, trace.y, [*trace.x[1:], None],
                        strict=True) if x is not None and nxt is None]  # fmt: skip
                assert set(ends) <= nodes  # no stub ending in the air
    assert figure.layout.height == max(420, 22 * figure_leaves(figure) + 190)


def figure_leaves(figure) -> int:
    ys = {y for t in figure.data if t.mode and "markers" in t.mode for y in t.y if y is not None}
    return int(max(ys)) + 1


# -- pages that stay small, notebooks saved clean ---------------------------------------------


def test_share_plotly_js(tmp_path) -> None:
    from sppd_lib.viz.notebook import plotly_script

    page = f"<html>{plotly_script()}<div>figure</div></html>"
    shared = report.share_plotly_js(page, tmp_path)
    name = report.plotly_js_name()
    assert (
        shared
        == f'<html><script type="text/javascript" src="{name}"></script><div>figure</div></html>'
    )
    assert (tmp_path / name).stat().st_size > 1_000_000
    assert report.share_plotly_js("<html>no plotly</html>", tmp_path) == "<html>no plotly</html>"


def test_notebooks_are_saved_without_outputs(tmp_path) -> None:
    import nbformat

    notebook = nbformat.read(report.NOTEBOOKS_DIR / "pairs.ipynb", as_version=4)
    notebook.cells[1].outputs = [nbformat.v4.new_output("stream", text="x")]
    notebook.cells[1].execution_count = 4
    notebook.metadata["widgets"] = {"state": {}}
    model = {"type": "notebook", "content": json.loads(nbformat.writes(notebook))}
    nbstrip.pre_save_hook(model, path="pairs.ipynb")
    cell = model["content"]["cells"][1]
    assert cell["outputs"] == [] and cell["execution_count"] is None
    assert "widgets" not in model["content"]["metadata"]
    mine = {"type": "notebook", "content": json.loads(nbformat.writes(notebook))}
    nbstrip.pre_save_hook(mine, path="my_analysis.ipynb")  # a user's copy keeps its outputs
    assert mine["content"]["cells"][1]["outputs"]
    path = tmp_path / "pairs.ipynb"
    nbformat.write(notebook, path)
    assert nbstrip.main(["--check", str(path)]) == 1
    assert nbstrip.main([str(path)]) == 0 and nbstrip.main(["--check", str(path)]) == 0
    shipped = sorted(report.NOTEBOOKS_DIR.glob("*.ipynb"))
    assert nbstrip.main(["--check", *map(str, shipped)]) == 0  # what git tracks is clean


# -- the explorer's defects (issue 27) ----------------------------------------------------------


def _page(markup: str, path) -> str:
    """A static page holding ``markup`` and plotly.js, as a report page loads it."""
    from plotly.offline import get_plotlyjs

    path.write_text(
        f"<html><head><meta charset='utf-8'><script>{get_plotlyjs()}</script></head>"
        f"<body>{markup}</body></html>",
        encoding="utf-8",
    )
    return path


def _chromium():
    from tests.browser import browser_check, find_chromium

    if find_chromium() is None:
        pytest.skip("Chromium not installed")
    return browser_check


_EMPTY_SEARCH = """(function () {
  var root = document.querySelector('.sppd-explorer');
  var rows = function () { return [...root.querySelectorAll('.sppd-table tbody tr')]
    .filter(function (r) { return r.offsetParent !== null; }).length; };
  var before = rows();
  var search = root.querySelector('input.search');
  search.value = 'no such problem'; search.dispatchEvent(new Event('input'));
  var empty = root.querySelector('.empty');
  var result = [before, rows(), empty.style.display, empty.textContent,
                !!root.querySelector('.plotly-graph-div .main-svg')];
  search.value = ''; search.dispatchEvent(new Event('input'));
  return result.concat([rows(), empty.style.display]);
})()"""


def test_offline_explorer_says_when_a_search_matches_nothing(run, tmp_path) -> None:
    check = _chromium()(
        _page(viz.offline_explorer(run).html, tmp_path / "explorer.html"), probe=_EMPTY_SEARCH
    )
    assert not check.errors
    before, after, shown, message, drawn, restored, hidden = check.probe
    assert before > 0 and after == 0  # the last tree's pairs are gone
    assert shown == "" and "matches" in message and "no such problem" in message
    assert not drawn
    assert restored == before and hidden == "none"


def test_offline_explorer_sorts_ids_as_numbers() -> None:
    from sppd_lib.viz.explorer_html import _JS
    from sppd_lib.viz.style import natural_key

    ids = ["arith/test/10", "arith/test/2", "arith/test/1", "gsm8k/test/0"]
    assert sorted(ids, key=natural_key) == [
        "arith/test/1",
        "arith/test/2",
        "arith/test/10",
        "gsm8k/test/0",
    ]
    assert "numeric: true" in _JS  # the page's sort agrees


def test_explorer_empty_search_and_depth_filter_reach_the_pairs(run) -> None:
    pytest.importorskip("anywidget")
    explorer = viz.TreeExplorer(run, iteration=1)
    explorer.update(sort="problem id")
    ids = [v for _, v in explorer.problem.options]
    assert ids == sorted(ids, key=viz.style.natural_key)
    explorer.update(search="no such problem")
    assert viz.is_empty_figure(explorer.figure) or not explorer.figure.data
    assert "matches the search" in explorer.figure.layout.annotations[0].text
    assert "No tree shown, so no pairs" in explorer.pairs_html()
    explorer.update(search="")
    pairs = run.pairs(1)
    busiest = pairs["tree_id"].value_counts().index[0]
    explorer.update(problem=busiest)
    depths = pairs[pairs["tree_id"] == busiest]["depth"]
    explorer.update(max_depth=int(depths.min()))
    kept = int((depths <= depths.min()).sum())
    assert f"{kept} pairs of this tree up to depth {int(depths.min())}" in explorer.pairs_html()
    assert explorer.figure.layout.width is None and explorer.figure.layout.autosize


def test_tree_figure_legend_and_title_draw_cleanly(run, tmp_path) -> None:
    pairs = run.pairs(1)
    tree = next(t for t in run.trees(1) if t.problem.id in set(pairs["tree_id"]))
    figure = viz.tree_figure(tree, pairs)
    # subtitle on the title's second line: nothing for plotly.js to measure and overlap
    assert "<br>" in figure.layout.title.text and figure.layout.title.subtitle.text is None
    shown = [t for t in figure.data if t.showlegend is not False and t.mode == "markers"]
    assert all(isinstance(t.marker.color, str) for t in shown)  # legend swatches: a colour
    page = tmp_path / "tree.html"
    figure.write_html(page, include_plotlyjs=True)
    check = _chromium()(page)
    assert check.rendered == 1 and not check.errors
    assert not [w for w in check.warnings if "Invalid color" in w]


def test_scores_table_gives_counts_and_the_paired_p(run) -> None:
    table = viz.final_scores_table([run]).set_index(["benchmark", "metric"])
    row = table.loc[("arith", "pass@1")]
    change = run.change_since_start().set_index("benchmark").loc["arith"]
    assert row["McNemar p"] == pytest.approx(change["p_value"])
    assert row["gained / lost"] == f"+{int(change['gained'])} −{int(change['lost'])}"
    assert row["final correct"].endswith(f"/{row['n']}")
    assert table.loc[("arith", "maj@8"), "gained / lost"] == "–"


# -- coverage: pass@k ------------------------------------------------------------------------


def test_pass_at_k_is_the_unbiased_estimator() -> None:
    from math import comb

    from sppd_lib.metrics import pass_at_k

    for n, c, k in [(10, 3, 1), (10, 3, 5), (64, 1, 8), (5, 0, 2), (5, 5, 5), (4, 2, 3)]:
        assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))
    assert pass_at_k(4, 1, 5) != pass_at_k(4, 1, 5)  # NaN: k beyond the samples
    with pytest.raises(ValueError, match="pass@k needs"):
        pass_at_k(4, 5, 1)


def test_coverage_from_trees_and_eval_samples(run) -> None:
    frame = viz.coverage_frame(run)
    trees = frame[(frame["source"] == viz.coverage.TREES) & (frame["iteration"] == 1)]
    ended = [[leaf for leaf in t.leaves() if leaf.terminal] for t in run.trees(1)]
    share = [sum(bool(leaf.correct) for leaf in e) / len(e) for e in ended if e]
    assert trees.set_index("k").loc[1, "pass_at_k"] == pytest.approx(sum(share) / len(share))
    assert trees["pass_at_k"].is_monotonic_increasing
    samples = frame[frame["source"] == "arith (eval samples)"].set_index("k")
    assert list(samples.index) == [1, 2, 4, 8] and samples.loc[1, "pass_at_k"] == 0.125
    assert samples.loc[8, "pass_at_k"] == 1.0  # every problem has its one correct sample
    figure = viz.pass_at_k_figure(run)
    assert len(figure.data) == 3 and "4 problems" in figure.layout.title.subtitle.text


def test_margin_histogram_is_not_drawn_twice_when_gamma_is_one(run, run_dirs, tmp_path) -> None:
    figure = viz.margin_histograms(run)  # the fixture: dynamic, γ = 1
    assert {t.xaxis for t in figure.data} == {"x"}  # Δv only
    assert any("equals its Δv" in a.text for a in figure.layout.annotations)
    path = copy_run(run_dirs, tmp_path)
    for k in (1, 2):  # a γ = 0.5 run: the margin panel is its own histogram
        log_path = path / f"iter_{k}" / "train" / "pair_log.parquet"
        log = pd.read_parquet(log_path)
        write_parquet_atomic(log.assign(value_margin=log["delta_value"] * 0.5), log_path)
    halved = viz.margin_histograms(viz.load_run(path))
    assert {t.xaxis for t in halved.data} == {"x", "x2"}


def test_tree_stats_legend_swatches_are_distinct(run) -> None:
    figure = viz.tree_stats_figure(run)
    swatches = [(t.marker.color, t.marker.pattern.shape) for t in figure.data]
    assert len(set(swatches)) == len(swatches)


def test_learned_table_and_reward_margin_subtitle(run) -> None:
    table = viz.learned_table(run)
    last = viz.overview.final_pairs(run, 1)
    learned = int((last["reward_margin"] > last["value_margin"]).sum())
    assert table.loc[1, "learned (β·h > margin)"].startswith(f"{learned}/{len(last)} (")
    subtitle = viz.reward_vs_value_margin(run).layout.title.subtitle.text
    assert f"iteration 1: {learned}/{len(last)}" in subtitle and "against margins" in subtitle


def test_gained_lost_marks_cut_responses_and_shows_the_extracted_answer(run_dirs, tmp_path) -> None:
    path = copy_run(run_dirs, tmp_path)
    run = viz.load_run(path)
    changed = viz.gained_lost(run, 0, 2)
    lost = changed[changed["change"] == "lost"].iloc[0]
    evals = pd.read_parquet(path / "iter_2" / "eval.parquet")
    evals.loc[evals["problem_id"] == lost["problem_id"], "finish_reason"] = "length"
    write_parquet_atomic(evals, path / "iter_2" / "eval.parquet")
    page = viz.gained_lost_table(viz.load_run(path), 0, 2).html
    assert page.count("✂ cut by the token limit") == 2  # the cell: in the HTML and the JSON rows
    assert "1 of the responses shown were cut" in page
    assert f"extracted answer: <mark class='wrong'>{lost['pred_after']}</mark>" in page
