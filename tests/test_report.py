"""Reports: the notebooks, papermill execution, offline HTML export, and a Chromium check."""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("papermill")  # the notebooks extra (absent from the vLLM virtualenv)
pytest.importorskip("plotly")

import jupytext
import nbformat

from sppd_lib import report
from sppd_lib.cli import main
from tests.browser import browser_check, find_chromium
from tests.run_fixture import smoke_runs

NOTEBOOKS = sorted(report.NOTEBOOKS_DIR.glob("*.ipynb"))


@pytest.fixture(scope="session")
def run_dirs(tmp_path_factory):
    """Real smoke runs of the loop: the notebooks run on what `sppd run` writes."""
    return smoke_runs(tmp_path_factory.getbasetemp() / "smoke_runs")


# -- fast -------------------------------------------------------------------------------


def test_every_notebook_is_paired_and_parameterized() -> None:
    assert {p.stem for p in NOTEBOOKS} == {
        "accuracy",
        "compare_runs",
        "margins",
        "pairs",
        "study",
        "tree_explorer",
    }
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        paired = jupytext.read(path.with_suffix(".py"))
        code = [c.source for c in notebook.cells if c.cell_type == "code"]
        assert code == [c.source for c in paired.cells if c.cell_type == "code"], path.name
        tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, path.name
        assert notebook.metadata.kernelspec.name == report.KERNEL_NAME
        assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code")


def test_parse_grid() -> None:
    grid = report.parse_grid(["gamma=0,0.5,1", "run_dir=runs/a,runs/b", "iteration=null"])
    assert grid == {"gamma": [0, 0.5, 1], "run_dir": ["runs/a", "runs/b"], "iteration": [None]}
    with pytest.raises(report.ReportError, match="key=value"):
        report.parse_grid(["gamma"])


def test_find_notebook() -> None:
    assert report.find_notebook("margins") == report.NOTEBOOKS_DIR / "margins.ipynb"
    with pytest.raises(report.ReportError, match="notebook not found"):
        report.find_notebook("nope")


def test_cli_errors_are_clear(tmp_path, capsys) -> None:
    assert main(["report", "--run-dir", str(tmp_path / "missing")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    assert main(["report", "--compare", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["sweep", "--notebook", "nope", "--param", "a=1"]) == 1
    assert "notebook not found" in capsys.readouterr().err


def test_run_index_links_the_comparisons_that_include_the_run(tmp_path) -> None:
    from sppd_lib import viz
    from tests.run_fixture import fixture_runs

    first, second = fixture_runs(tmp_path / "runs")
    run = viz.load_run(first)
    reports = tmp_path / "reports"
    out = reports / "fixture"
    out.mkdir(parents=True)
    assert report._comparisons_html(run, out) == ""
    for name, runs in (("ab", [first, second]), ("b-only", [second])):
        (reports / name).mkdir()
        manifest = {"runs": [str(p.resolve()) for p in runs]}
        (reports / name / report.COMPARE_MANIFEST).write_text(json.dumps(manifest))
    (reports / "torn").mkdir()
    (reports / "torn" / report.COMPARE_MANIFEST).write_text("{not json")
    links = report._comparisons_html(run, out)
    assert 'href="../ab/index.html"' in links and "fixture, step-dpo" in links
    assert "b-only" not in links and "torn" not in links


def test_kernel_runs_this_interpreter() -> None:
    import sys

    from jupyter_client.kernelspec import KernelSpecManager

    name = report.ensure_kernel()
    spec = KernelSpecManager().get_kernel_spec(name)
    assert report._same_file(spec.argv[0], sys.executable)


# -- slow: execute every notebook ----------------------------------------------------------


def plotly_outputs(notebook_path) -> int:
    """Figures in an executed notebook (outputs drawn with plotly)."""
    notebook = nbformat.read(notebook_path, as_version=4)
    return sum(
        "plotly-graph-div" in output.get("data", {}).get("text/html", "")
        for cell in notebook.cells
        for output in cell.get("outputs", [])
    )


@pytest.fixture(scope="module")
def rendered(run_dirs, tmp_path_factory):
    """Every report kind, rendered once: run, comparison (by the CLI) and a sweep."""
    out = tmp_path_factory.mktemp("reports")
    run_report = report.render_run_report(run_dirs[0], out / "run", keep_notebooks=True)
    runs = [str(p) for p in run_dirs]
    compare_out = str(out / "compare")
    assert main(["report", "--compare", *runs, "--out", compare_out, "--keep-notebooks"]) == 0
    assert (
        "Comparisons with other runs"
        in report.render_run_report(
            run_dirs[0], out / "run-after-compare", notebooks=["pairs"]
        ).index.read_text()
    )
    compare = report.Report(
        out / "compare",
        out / "compare" / "index.html",
        [out / "compare" / "compare_runs.ipynb"],
        [out / "compare" / "compare_runs.html"],
    )
    swept = report.sweep("accuracy", {"run_dir": runs}, out / "sweep", keep_notebooks=True)
    return run_report, compare, swept


@pytest.mark.slow
def test_run_report(rendered, run_dirs) -> None:
    run_report, _, _ = rendered
    assert not run_report.failed
    assert sorted(p.name for p in run_report.html) == [
        "accuracy.html",
        "margins.html",
        "pairs.html",
        "tree_explorer.html",
    ]
    index = run_report.index.read_text()
    assert all(f'href="{p.name}"' in index for p in run_report.html) and "pass@1" in index
    assert "final 95% CI" in index and "model tiny-llama" in index
    # the overview: every iteration with its pairs, learned rate, pass@1 counts and seconds
    assert "Overview: one row per iteration" in index and "learned (β·h &gt; margin)" in index
    assert re.search(
        r"<td><span>\d+/4 = \d+% \[\d+–\d+\]</span><br><span>vs 0: \+\d+ −\d+, p = ", index
    )
    phases = "".join(
        rf"<br><span>{phase} \d+</span>" for phase in ("sample", "pairs", "sppd", "eval")
    )
    assert re.search(rf"<td><span>\d+ s</span>{phases}</td>", index)
    assert "McNemar p" in index
    assert "step_delimiter: &quot;\\n\\n&quot;" in index  # not a quote broken over lines
    shared = run_report.out_dir / report.plotly_js_name()
    assert shared.stat().st_size > 1_000_000  # one plotly.js for the folder
    for notebook, page in zip(run_report.notebooks, run_report.html, strict=True):
        expected = plotly_outputs(notebook)
        assert expected >= (0 if page.stem == "pairs" else 1)
        text = page.read_text()
        assert (
            text.count('class="plotly-graph-div"') + text.count("class='plotly-graph-div'")
            == expected
        )
        assert not re.search(r"<script[^>]+src=\"https?:", text)  # nothing from a CDN
        assert f'src="{shared.name}"' in text and "window.PlotlyConfig" in text
        assert page.stat().st_size < 1_500_000  # plotly.js is not embedded again
        assert "run_dir" not in text  # inputs hidden
        assert "Traceback" not in text
        # every page says which run it shows and links back to the index
        assert "run <b>smoke</b>" in text and str(run_dirs[0].resolve()) in text
        assert 'href="index.html"' in text
    pages = {p.stem: p.read_text() for p in run_report.html}
    assert "Problems gained and lost" in pages["accuracy"] and "no_answer" in pages["accuracy"]
    assert "Response length" in pages["accuracy"]
    assert "Why trees gave no pair" in pages["margins"]
    assert "sppdTable(" in pages["pairs"] and "β·h after" in pages["pairs"]
    assert "sppd-explorer" in pages["tree_explorer"]
    assert "Pick an iteration and a problem" not in pages["tree_explorer"]  # no dead text
    nb = nbformat.read(run_report.out_dir / "tree_explorer.ipynb", as_version=4)
    assert "widgets" not in nb.metadata  # no widget state (5 MB of JavaScript) in exports


@pytest.mark.slow
def test_executed_notebooks_are_optional(run_dirs, tmp_path) -> None:
    written = report.render_run_report(run_dirs[0], tmp_path / "out", notebooks=["pairs"])
    assert written.notebooks == [] and not list((tmp_path / "out").glob("*.ipynb"))
    assert [p.name for p in written.html] == ["pairs.html"]


@pytest.mark.slow
def test_compare_report_and_sweep(rendered) -> None:
    _, compare, swept = rendered
    assert plotly_outputs(compare.notebooks[0]) == 1 and compare.index.is_file()
    html = compare.html[0].read_text()
    assert "smoke-step-dpo" in html and "train.margin" in html
    assert [p.name for p in swept.html] == [
        "accuracy-run_dir=smoke.html",
        "accuracy-run_dir=smoke-step-dpo.html",
    ]
    assert "accuracy-run_dir=smoke-step-dpo.html" in swept.index.read_text()


@pytest.mark.slow
def test_failed_notebook_is_reported(tmp_path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("run_id: broken\n")
    notebook = nbformat.v4.new_notebook()
    notebook.metadata.kernelspec = {"name": "sppd", "language": "python", "display_name": "x"}
    notebook.cells = [nbformat.v4.new_code_cell("raise ValueError('boom')")]
    nbformat.write(notebook, tmp_path / "broken.ipynb")
    with pytest.raises(report.ReportError, match="ValueError: boom"):
        report.sweep(tmp_path / "broken.ipynb", {"x": [1]}, tmp_path / "out")
    assert (tmp_path / "out" / "broken-x=1.html").is_file()


#: JavaScript run in Chromium after the figures are drawn: what a reader would do.
PROBES = {
    # the pairs table drew its rows, and sorting by a header works
    "pairs": "(() => { const t = document.querySelector('.sppd-table');"
    " t.querySelectorAll('th')[1].click(); return t.querySelectorAll('tbody tr').length; })()",
    # pick another tree in the offline explorer: the figure and the pairs below follow it
    "tree_explorer": "(() => { const l = document.querySelector('select.problem');"
    " const before = document.querySelector('.sppd-explorer .plotly-graph-div').layout.title.text;"
    " l.selectedIndex = 1; l.dispatchEvent(new Event('change'));"
    " const after = document.querySelector('.sppd-explorer .plotly-graph-div').layout.title.text;"
    " return [l.options.length, before !== after,"
    " document.querySelectorAll('.sppd-explorer .sppd-table tbody tr').length]; })()",
}


@pytest.mark.slow
def test_pages_render_in_chromium(rendered, tmp_path) -> None:
    if find_chromium() is None:
        pytest.skip("Chromium not installed (CI installs it: apt-get install chromium)")
    run_report, compare, swept = rendered
    pages = [*zip(run_report.notebooks, run_report.html, strict=True)]
    pages += [(compare.notebooks[0], compare.html[0]), (swept.notebooks[0], swept.html[0])]
    for notebook, page in pages:
        shot = tmp_path / f"{page.parent.name}-{page.stem}.png"
        probe = PROBES.get(page.stem) if page.parent == run_report.out_dir else None
        check = browser_check(page, shot, probe=probe)
        expected = plotly_outputs(notebook)
        assert check.errors == [], (page.name, check.errors)
        assert not [w for w in check.warnings if "Invalid color" in w], page.name
        assert check.figures == check.rendered == expected, page.name
        assert shot.stat().st_size > 10_000
        if page.stem == "pairs" and probe:
            assert check.probe > 0
        if page.stem == "tree_explorer" and probe:
            options, redrawn, pair_rows = check.probe
            assert options == 4 and redrawn  # every tree of the smoke run offered
            assert pair_rows >= 0
    check = browser_check(run_report.index)
    assert check.errors == [] and check.figures == 0
    print(json.dumps({"screenshots": str(tmp_path)}))


@pytest.mark.slow
def test_report_of_a_run_that_just_started(tmp_path) -> None:
    (tmp_path / "run" / "iter_0").mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text("run_id: fresh\n")
    fresh = report.render_run_report(tmp_path / "run", tmp_path / "out")
    assert not fresh.failed and len(fresh.html) == 4
    assert "no pairs yet" in (tmp_path / "out" / "margins.html").read_text()


@pytest.mark.slow
def test_explorer_widgets_update_in_a_real_kernel(run_dirs) -> None:
    """The tree explorer in a live IPython kernel: moving its controls redraws the figure."""
    from jupyter_client.manager import start_new_kernel

    code = f"""
import json
from sppd_lib import viz
explorer = viz.TreeExplorer(viz.load_run({str(run_dirs[0])!r}))
display(explorer.widget)
nodes = lambda: sum(len(t.x) for t in explorer.figure.data if t.mode and "markers" in t.mode)
seen = [explorer.figure.layout.title.text, nodes()]
explorer.problem.value = explorer.problem.options[1][1]
seen.append(explorer.figure.layout.title.text)
explorer.max_depth.value = 1
seen.append(nodes())
print(json.dumps({{"seen": seen, "second": explorer.problem.options[1][1]}}))
"""
    outputs: list[dict] = []
    manager, client = start_new_kernel(kernel_name=report.ensure_kernel())
    try:
        reply = client.execute_interactive(code, timeout=120, output_hook=outputs.append)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    assert reply["content"]["status"] == "ok", reply["content"]
    printed = [m["content"]["text"] for m in outputs if m["msg_type"] == "stream"]
    views = [m["content"]["data"] for m in outputs if m["msg_type"] == "display_data"]
    assert any("application/vnd.jupyter.widget-view+json" in data for data in views)
    result = json.loads(printed[-1])
    first_title, first_nodes, second_title, shallow_nodes = result["seen"]
    assert second_title != first_title and result["second"] in second_title
    assert shallow_nodes < first_nodes


@pytest.mark.slow
def test_study_report_renders_in_chromium(tmp_path) -> None:
    from sppd_lib.config import load_study_config
    from sppd_lib.study import run_study

    config = load_study_config(report.NOTEBOOKS_DIR.parent / "configs" / "study_smoke.yaml")
    study_dir = tmp_path / "studies" / "study_smoke"
    run_study(config, study_dir)
    assert main(["report", "--study-dir", str(study_dir), "--keep-notebooks"]) == 0
    out = tmp_path / "studies" / "reports" / "study_smoke"  # beside the study, one rule
    page, notebook = out / "study.html", out / "study.ipynb"
    text = page.read_text()
    assert "Traceback" not in text and "dynamic_g1" in text and "Table 4" in text
    assert "dynamic_g1" in (out / "index.html").read_text()
    if find_chromium() is None:
        pytest.skip("Chromium not installed (CI installs it: apt-get install chromium)")
    check = browser_check(page, tmp_path / "study.png")
    assert check.errors == []
    assert check.figures == check.rendered == plotly_outputs(notebook) == 3
