"""Reports: the notebooks of ``notebooks/`` executed by papermill, exported to offline HTML.

``render_run_report(run_dir)`` writes the run's report directory (:func:`run_report_dir`:
``<run_dir>/../reports/<run_dir name>/`` unless the run sets ``report_dir``) with every run
notebook as an offline ``.html`` (inputs hidden, no CDN), one shared ``plotly-<version>.min.js``
the pages load from their own folder, and an ``index.html`` linking them; the executed
``.ipynb`` copies (5 MB each) are kept only with ``keep_notebooks=True``.
``render_compare_report`` does the same for several runs, and ``sweep`` executes one notebook
over a grid of parameters.

(About 430 lines: kernel, papermill execution, HTML export and the index page are one flow
that the run, comparison, study and sweep reports share.)
"""

from __future__ import annotations

import html
import itertools
import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from sppd_lib import viz
from sppd_lib.config import config_to_dict as config_dict
from sppd_lib.config import parse_yaml
from sppd_lib.files import HTML_MARK, check_writable
from sppd_lib.rundir import run_report_dir
from sppd_lib.viz.identity import run_started

__all__ = [
    "NOTEBOOKS_DIR",
    "RUN_NOTEBOOKS",
    "Report",
    "ReportError",
    "check_report_dir",
    "config_yaml",
    "ensure_kernel",
    "execute_notebook",
    "export_html",
    "find_notebook",
    "parse_grid",
    "plotly_js_name",
    "render_compare_report",
    "render_run_report",
    "render_study_report",
    "run_report_dir",
    "share_plotly_js",
    "study_progress_note",
    "sweep",
]

logger = logging.getLogger(__name__)

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL_NAME = "sppd"

#: Notebook stem -> (title, description, extra parameters) of a single-run report.
RUN_NOTEBOOKS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "accuracy": (
        "Accuracy",
        "accuracy per iteration and benchmark (95% CI), all scores, changes per step, the "
        "problems gained and lost with both responses, response length, grader status",
        {},
    ),
    "margins": (
        "Pairs, margins and training",
        "trees by correct paths, pairs and why trees gave none, Δv and margin histograms, "
        "pairs by depth, β·h against the value margin, training curves",
        {},
    ),
    "pairs": (
        "Pairs as text",
        "every step pair: prefix, chosen and rejected step, values, Δv, margin, β·h before and "
        "after training, learned or not (sortable, filterable)",
        {},
    ),
    "tree_explorer": (
        "Step trees",
        "every step tree of every iteration (search, sort), with its values and pairs",
        {},
    ),
}
#: Parameters every run notebook gets in a report: no widgets, a link back to the index.
STATIC_PARAMETERS = {"interactive": False}

# nbconvert's lab template without anything fetched from a CDN (require.js, MathJax,
# mermaid, the widget manager): the report must open offline.
_OFFLINE_TEMPLATE = (
    """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{% block extra_css %}"""
    + HTML_MARK
    + """<style>
  body { max-width: 1280px; margin: 0 auto; padding: 0 16px; }
</style>{% endblock extra_css %}
"""
)


class ReportError(RuntimeError):
    """A notebook could not be found or failed to execute."""


@dataclass
class Report:
    """What a render wrote: the executed notebooks, their HTML and the index page."""

    out_dir: Path
    index: Path
    notebooks: list[Path] = field(default_factory=list)
    html: list[Path] = field(default_factory=list)
    #: Notebook stem -> error message, for notebooks that raised (their HTML shows where).
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------
# Kernel, execution, export
# ---------------------------------------------------------------------------------------


def _same_file(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def ensure_kernel(name: str = KERNEL_NAME) -> str:
    """A Jupyter kernel spec ``name`` that runs this interpreter, installed (into
    ``sys.prefix``, else the user's folder) when missing or pointing elsewhere."""
    from ipykernel.kernelspec import install
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    def current() -> bool:
        try:
            spec = KernelSpecManager().get_kernel_spec(name)
        except NoSuchKernel:
            return False
        return _same_file(spec.argv[0], sys.executable)

    if current():
        return name
    display_name = "Python (sppd)"
    try:
        install(kernel_name=name, display_name=display_name, prefix=sys.prefix)
    except OSError:  # a read-only interpreter prefix
        install(kernel_name=name, display_name=display_name, user=True)
    if not current():
        raise ReportError(f"the Jupyter kernel {name!r} found does not run {sys.executable}")
    return name


def find_notebook(notebook: str | os.PathLike[str]) -> Path:
    """A notebook path, or the name of one in ``notebooks/`` (``margins``)."""
    path = Path(notebook)
    candidates = [path, NOTEBOOKS_DIR / path.name, NOTEBOOKS_DIR / f"{path.name}.ipynb"]
    for candidate in candidates:
        if candidate.is_file() and candidate.suffix == ".ipynb":
            return candidate
    raise ReportError(f"notebook not found: {notebook} (looked in {NOTEBOOKS_DIR})")


def execute_notebook(
    notebook: str | os.PathLike[str], out: str | os.PathLike[str], parameters: Mapping[str, Any]
) -> str | None:
    """Run ``notebook`` with ``parameters`` (papermill) into ``out``; returns ``None`` on
    success, else the error (the executed notebook is written either way)."""
    import papermill

    source = find_notebook(notebook)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    try:
        papermill.execute_notebook(
            str(source),
            str(out),
            parameters=dict(parameters),
            kernel_name=ensure_kernel(),
            cwd=str(source.parent),
            progress_bar=False,
        )
    except papermill.PapermillExecutionError as exc:
        return f"{exc.ename}: {exc.evalue}"
    return None


def export_html(
    notebook: str | os.PathLike[str], out: str | os.PathLike[str], title: str | None = None
) -> Path:
    """An executed notebook as one offline HTML file, inputs and prompts hidden."""
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(
        template_name="lab",
        extra_loaders=[DictLoader({"sppd_offline.html.j2": _OFFLINE_TEMPLATE})],
        template_file="sppd_offline.html.j2",
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
    )
    nb = nbformat.read(str(notebook), as_version=4)
    if title:
        nb.metadata["title"] = title
    body, _ = exporter.from_notebook_node(nb)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(share_plotly_js(body, out.parent), encoding="utf-8")
    return out


def plotly_js_name() -> str:
    """The shared plotly.js of a report folder, named by version (pages of two plotly
    versions in one folder each load their own)."""
    import plotly

    return f"plotly-{plotly.__version__}.min.js"


def share_plotly_js(page: str, folder: Path) -> str:
    """``page`` with the plotly.js that :func:`sppd_lib.viz.setup_notebook` embeds replaced
    by ``<script src="plotly-<version>.min.js">``, written once into ``folder``: every page of
    a report folder shares one 4.6 MB copy and still opens offline from the folder."""
    from sppd_lib.viz.notebook import plotly_script

    embedded = plotly_script()
    if embedded not in page:
        return page
    name = plotly_js_name()
    shared = folder / name
    if not shared.is_file():
        from plotly.offline import get_plotlyjs

        temporary = shared.with_suffix(".tmp")
        temporary.write_text(get_plotlyjs(), encoding="utf-8")
        temporary.replace(shared)  # atomic: a page never loads half a file
    return page.replace(embedded, f'<script type="text/javascript" src="{name}"></script>')


def _render(
    stem: str,
    parameters: Mapping[str, Any],
    out_dir: Path,
    title: str,
    report: Report,
    keep_notebooks: bool = False,
    source: str | os.PathLike[str] | None = None,
) -> None:
    """Execute one notebook and export it, recording the outcome in ``report``; the executed
    ``.ipynb`` is kept beside the HTML only with ``keep_notebooks``."""
    import tempfile

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sppd-report-") as scratch:
        notebook = (out_dir if keep_notebooks else Path(scratch)) / f"{stem}.ipynb"
        error = execute_notebook(source or stem, notebook, parameters)
        if keep_notebooks:
            report.notebooks.append(notebook)
        report.html.append(export_html(notebook, out_dir / f"{stem}.html", title))
    if error:
        report.failed[stem] = error
        logger.error("%s failed: %s", stem, error)
    logger.info("%s: %.1f s", stem, time.perf_counter() - started)


def check_report_dir(
    out_dir: str | os.PathLike[str], stems: Sequence[str], keep_notebooks: bool = False
) -> None:
    """Before any notebook runs: every page a report into ``out_dir`` writes (``index.html``
    and one page per stem) is new or an earlier report's, never a user's file.

    Raises:
        NotWritableError: naming the first such file (``sppd`` exits 2).
    """
    out = Path(out_dir)
    names = ["index.html", *(f"{stem}.html" for stem in stems)]
    names += [f"{stem}.ipynb" for stem in stems] if keep_notebooks else []
    check_writable(out, directory=True)
    for name in names:
        check_writable(out / name)


def _raise_if_failed(report: Report) -> None:
    if report.failed:
        details = "; ".join(f"{stem}: {error}" for stem, error in report.failed.items())
        raise ReportError(f"notebooks failed (see their HTML in {report.out_dir}): {details}")


# ---------------------------------------------------------------------------------------
# Index pages
# ---------------------------------------------------------------------------------------

_INDEX_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1280px; margin: 2em auto; padding: 0 1em;
       color: #222; }
h1 { margin-bottom: 0.2em; } .meta { color: #666; margin-top: 0; }
ul.reports li { margin: 0.5em 0; } .failed { color: #b00; }
table { border-collapse: collapse; font-size: 0.9em; margin: 1em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
table.overview { font-size: 0.85em; } table.overview th[title] { cursor: help; }
table.overview td { vertical-align: top; }
table.overview td span { white-space: nowrap; }
.overview-scroll { overflow-x: auto; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.85em; }
"""


def _links(report: Report, entries: Sequence[tuple[str, str, str]]) -> str:
    """``entries``: (stem, title, description)."""
    items = []
    for stem, title, description in entries:
        failed = report.failed.get(stem)
        note = f' <span class="failed">failed: {html.escape(failed)}</span>' if failed else ""
        items.append(
            f'<li><a href="{stem}.html">{html.escape(title)}</a>: '
            f"{html.escape(description)}{note}</li>"
        )
    return '<ul class="reports">' + "".join(items) + "</ul>"


def _write_index(out_dir: Path, title: str, meta: str, body: str) -> Path:
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{HTML_MARK}'
        f"<title>{html.escape(title)}</title><style>{_INDEX_CSS}</style></head><body>"
        f'<h1>{html.escape(title)}</h1><p class="meta">{meta}</p>{body}</body></html>'
    )
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def _scores_html(runs: Sequence[viz.Run]) -> str:
    table = viz.final_scores_table(runs)
    if not len(table):
        return "<p>Nothing evaluated yet.</p>"
    formats = {
        "start": "{:.1%}".format,
        "final": "{:.1%}".format,
        "change": "{:+.1%}".format,
        "McNemar p": lambda p: "–" if p != p else f"{p:.2g}",
    }
    return table.to_html(index=False, formatters=formats, border=0, na_rep="–")


_OVERVIEW_NOTE = (
    "What each iteration made, learned, scored and cost. Every share comes with its count "
    "(k/n); pass@1 cells read correct/problems = share [95% Wilson interval], then against "
    "iteration 0 on the same problems: problems gained and lost and the exact McNemar p (a "
    "small p: the change is unlikely to be chance). Learned: pairs with β·h above their loss "
    "margin the last time they were trained on. Hover a header for more."
)

#: Written into every comparison folder: the runs it compares (the run indexes link to it).
COMPARE_MANIFEST = "compare.json"


def _comparisons_html(run: viz.Run, out: Path) -> str:
    """Links to the ``sppd report --compare`` folders that include ``run``: those beside the
    run's report folder and under ``reports/`` of the current directory (the default)."""
    mine = str(run.path.resolve())
    found = []
    for root in dict.fromkeys([out.parent.resolve(), (Path("reports")).resolve()]):
        for manifest in sorted(root.glob(f"*/{COMPARE_MANIFEST}")):
            try:
                runs = json.loads(manifest.read_text(encoding="utf-8")).get("runs", [])
            except (OSError, ValueError, AttributeError):
                continue  # not ours or torn: no link rather than a broken page
            if mine in runs:
                found.append((manifest.parent, runs))
    if not found:
        return ""
    items = "".join(
        f'<li><a href="{html.escape(os.path.relpath(folder / "index.html", out.resolve()))}">'
        f"{html.escape(folder.name)}</a>: "
        f"{html.escape(', '.join(Path(r).name for r in runs))}</li>"
        for folder, runs in found
    )
    return f'<h2>Comparisons with other runs</h2><ul class="reports">{items}</ul>'


class _ConfigDumper(yaml.SafeDumper):
    """YAML for reading: a string with a newline or surrounding spaces (the step delimiter
    ``"\\n\\n"``) is written double-quoted with escapes, not as a quote broken over lines."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if ("\n" in value or value != value.strip()) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ConfigDumper.add_representer(str, _represent_str)


def config_yaml(config: Mapping[str, Any]) -> str:
    """A config as YAML for a page, in file order, special strings quoted and escaped."""
    return yaml.dump(
        dict(config), Dumper=_ConfigDumper, sort_keys=False, allow_unicode=True, width=100
    )


def _generated() -> str:
    return f"generated {datetime.now().isoformat(timespec='seconds')}"


# ---------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------


def render_run_report(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    notebooks: Sequence[str] | None = None,
    keep_notebooks: bool = False,
) -> Report:
    """Execute the run notebooks against ``run_dir`` into ``out_dir`` (default
    :func:`run_report_dir` of the run) as .html (and the executed .ipynb with
    ``keep_notebooks``), and write ``index.html``.

    Raises :class:`viz.RunNotFoundError` for a missing run directory and
    :class:`ReportError` when a notebook fails (after writing everything else).
    """
    started = time.perf_counter()
    run = viz.load_run(run_dir)
    out = (
        Path(out_dir)
        if out_dir is not None
        else run_report_dir(run.path, run.config.get("report_dir"))
    )
    stems = list(notebooks or RUN_NOTEBOOKS)
    check_report_dir(out, stems, keep_notebooks)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out_dir=out, index=out / "index.html")
    for stem in stems:
        title, _, extra = RUN_NOTEBOOKS.get(stem, (stem, "", {}))
        parameters = {"run_dir": str(run.path.resolve()), **STATIC_PARAMETERS, **extra}
        _render(stem, parameters, out, f"{run.run_id} · {title}", report, keep_notebooks)
    entries = [(s, *RUN_NOTEBOOKS.get(s, (s, "", {}))[:2]) for s in stems]
    config = html.escape(config_yaml(run.config))
    iterations = ", ".join(map(str, run.iterations)) or "none yet"
    body = (
        "<h2>Overview: one row per iteration</h2>"
        + f'<p class="meta">{_OVERVIEW_NOTE}</p>'
        + f'<div class="overview-scroll">{viz.overview_html(run)}</div>'
        + _links(report, entries)
        + _comparisons_html(run, out)
        + "<h2>Scores</h2>"
        + _scores_html([run])
        + f"<h2>Config</h2><pre>{config}</pre>"
    )
    run_start = run_started(run)
    meta = (
        f"run directory {html.escape(str(run.path.resolve()))} · model "
        f"{html.escape(str(run.config.get('model', 'unknown')))} · started "
        f"{run_start.isoformat(timespec='minutes') if run_start else 'unknown'} · iterations "
        f"{iterations} · {_generated()}"
    )
    _write_index(out, f"SPPD run {run.run_id}", meta, body)
    report.seconds = time.perf_counter() - started
    _raise_if_failed(report)
    return report


def render_compare_report(
    run_dirs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str] | None = None,
    metric: str = "pass@1",
    keep_notebooks: bool = False,
) -> Report:
    """Execute ``compare_runs`` over ``run_dirs`` into ``out_dir`` (default
    ``reports/compare``) with an ``index.html``."""
    started = time.perf_counter()
    runs = [viz.load_run(path) for path in run_dirs]  # fails early on a missing run
    out = Path(out_dir) if out_dir is not None else Path("reports") / "compare"
    check_report_dir(out, ["compare_runs"], keep_notebooks)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out_dir=out, index=out / "index.html")
    parameters = {
        "run_dirs": [str(r.path.resolve()) for r in runs],
        "metric": metric,
        **STATIC_PARAMETERS,
    }
    names = ", ".join(r.run_id for r in runs)
    manifest = {"runs": [str(r.path.resolve()) for r in runs]}
    (out / COMPARE_MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    _render("compare_runs", parameters, out, f"Comparing {names}", report, keep_notebooks)
    entries = [("compare_runs", "Comparing runs", f"{metric} per iteration, final scores")]
    body = _links(report, entries) + "<h2>Final scores</h2>" + _scores_html(runs)
    _write_index(out, f"SPPD runs: {names}", _generated(), body)
    report.seconds = time.perf_counter() - started
    _raise_if_failed(report)
    return report


def render_study_report(
    study_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    keep_notebooks: bool = False,
) -> Report:
    """Execute the ``study`` notebook against ``study_dir`` into ``out_dir`` (default
    ``<study_dir>/../reports/<study name>``, the rule of :func:`run_report_dir`) with an
    ``index.html`` holding the arm table. Raises :class:`ReportError` when it fails."""
    from sppd_lib.study_results import format_arm_table, load_study

    started = time.perf_counter()
    study = load_study(study_dir)  # fails early on a missing study
    out = Path(out_dir) if out_dir is not None else run_report_dir(study.path)
    check_report_dir(out, ["study"], keep_notebooks)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out_dir=out, index=out / "index.html")
    parameters = {"study_dir": str(study.path.resolve()), "compare": study.config.compare or None}
    _render("study", parameters, out, f"{study.study_id} · margin study", report, keep_notebooks)
    entries = [
        ("study", "The margin study", "arms × seeds, γ curve, paired comparisons, Δv, flips")
    ]
    table = format_arm_table(study.arms)
    scores = table.to_html(border=0) if len(table) else "<p>No arm evaluated yet.</p>"
    config = html.escape(config_yaml(config_dict(study.config)))
    progress = study_progress_note(study.path)
    body = (
        progress
        + _links(report, entries)
        + "<h2>Greedy pass@1 per arm (mean over seeds [95% interval])</h2>"
        + scores
        + f"<h2>Config</h2><pre>{config}</pre>"
    )
    meta = f"study directory {html.escape(str(study.path))} · {_generated()}"
    title = f"SPPD margin study {study.study_id}" + (" (in progress)" if progress else "")
    _write_index(out, title, meta, body)
    report.seconds = time.perf_counter() - started
    _raise_if_failed(report)
    return report


def study_progress_note(study_dir: str | os.PathLike[str]) -> str:
    """An "in progress" note (HTML) while a study process holds the directory's lock, else
    ``""``: a report of a running study shows the arms finished so far, not the result."""
    from sppd_lib.files import lock_holder

    holder = lock_holder(study_dir)
    if holder is None:
        return ""
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
    return (
        f'<p class="in-progress"><strong>In progress</strong>: the study is still running '
        f"({html.escape(who)}, since {html.escape(str(holder.get('started', '?')))}); the "
        "tables and figures show the arms finished so far. Render the report again when it "
        "ends.</p>"
    )


def _slug(parameters: Mapping[str, Any]) -> str:
    text = "-".join(f"{key}={Path(str(value)).name}" for key, value in parameters.items())
    return re.sub(r"[^A-Za-z0-9_.=@-]+", "_", text) or "default"


def sweep(
    notebook: str | os.PathLike[str],
    grid: Mapping[str, Sequence[Any]],
    out_dir: str | os.PathLike[str],
    parameters: Mapping[str, Any] | None = None,
    keep_notebooks: bool = False,
) -> Report:
    """Execute ``notebook`` once per combination of the ``grid`` values (plus the fixed
    ``parameters``), as ``<stem>-key=value-....html`` (and ``.ipynb`` with
    ``keep_notebooks``) with an ``index.html``."""
    started = time.perf_counter()
    source = find_notebook(notebook)
    out = Path(out_dir)
    keys = list(grid)
    combinations = [
        dict(zip(keys, v, strict=True)) for v in itertools.product(*(grid[k] for k in keys))
    ]
    stems = [f"{source.stem}-{_slug(combination)}" for combination in combinations]
    check_report_dir(out, stems, keep_notebooks)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out_dir=out, index=out / "index.html")
    entries = []
    for combination, stem in zip(combinations, stems, strict=True):
        label = ", ".join(f"{k} = {v}" for k, v in combination.items())
        merged = {**(parameters or {}), **combination}
        _render(stem, merged, out, label, report, keep_notebooks, source=source)
        entries.append((stem, label, ""))
    _write_index(out, f"Sweep of {source.name}", _generated(), _links(report, entries))
    report.seconds = time.perf_counter() - started
    _raise_if_failed(report)
    return report


def parse_grid(specs: Sequence[str]) -> dict[str, list[Any]]:
    """``["gamma=0,0.5,1", "run_dir=runs/a"]`` -> ``{"gamma": [0, 0.5, 1], ...}``; each
    value is read as YAML (numbers, ``null``, ``true``), else kept as text."""
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key.strip():
            raise ReportError(f"--param needs key=value[,value...], got {spec!r}")
        grid[key.strip()] = [_parse_value(v) for v in values.split(",")]
    return grid


def _parse_value(text: str) -> Any:
    try:
        value = parse_yaml(text)
    except Exception:  # yaml.YAMLError or a duplicate key: keep the text
        return text
    return text if isinstance(value, (dict, list)) else value
