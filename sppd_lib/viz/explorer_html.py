"""The tree explorer of a static HTML page: every tree of every iteration behind an offline
selector (iteration, search, sort, problem list), drawn by the page's plotly.js, with the
selected tree's pairs as text below. No widget and no kernel: the figures travel as JSON."""

from __future__ import annotations

import html
import itertools
import json
from typing import Any

import plotly.io as pio

from sppd_lib.viz.pairs import pairs_table
from sppd_lib.viz.run import Run
from sppd_lib.viz.style import TEMPLATE
from sppd_lib.viz.table import HTMLBlock
from sppd_lib.viz.trees import tree_figure

__all__ = ["MAX_TREES", "offline_explorer"]

#: Trees put in one page at most (those with the most pairs of each iteration first); at the
#: paper's 10k prompts a page of every tree would weigh gigabytes. Lab shows them all.
MAX_TREES = 400

_ids = itertools.count()

_JS = r"""
(function () {
  var root = document.getElementById(__ROOT__);
  var data = JSON.parse(root.querySelector('script.trees').textContent);
  var template = JSON.parse(root.querySelector('script.template').textContent);
  var it = root.querySelector('select.iteration'), search = root.querySelector('input.search');
  var sort = root.querySelector('select.sort'), list = root.querySelector('select.problem');
  var count = root.querySelector('.count'), plot = root.querySelector('.plotly-graph-div');
  var empty = root.querySelector('.empty');
  data.iterations.forEach(function (k) { var o = document.createElement('option');
    o.value = k; o.textContent = 'iteration ' + k; it.appendChild(o); });
  it.value = data.start;
  var orders = {pairs: function (a, b) { return b.pairs - a.pairs; },
    correct: function (a, b) { return b.correct - a.correct; },
    fewest: function (a, b) { return a.correct - b.correct; },
    id: function (a, b) { return a.id.localeCompare(b.id, 'en', {numeric: true}); }};
  function fill(keep) {
    var needle = search.value.toLowerCase();
    var found = data.trees.filter(function (t) { return String(t.iteration) === it.value &&
      (!needle || (t.id + ' ' + t.question).toLowerCase().indexOf(needle) >= 0); });
    found.sort(orders[sort.value]);
    list.innerHTML = '';
    found.forEach(function (t) { var o = document.createElement('option'); o.value = t.key;
      o.textContent = t.id + ' · ' + t.pairs + ' pairs · ' + t.correct + '/' + t.complete +
        ' correct · ' + t.question.slice(0, 60); list.appendChild(o); });
    var total = data.trees.filter(function (t) { return String(t.iteration) === it.value; });
    count.textContent = found.length + ' of ' + total.length + ' trees of iteration ' +
      it.value + (data.left_out ? ' (' + data.left_out + ' trees not in this page)' : '');
    if (found.some(function (t) { return t.key === keep; })) list.value = keep;
    else if (found.length) list.value = found[0].key;
    draw();
  }
  function draw() {
    var tree = data.trees.find(function (t) { return t.key === list.value; });
    var table = window.sppdTables && window.sppdTables[data.pairs];
    empty.style.display = tree ? 'none' : '';
    if (!tree) {  // nothing matches: say so, and never leave the last tree's pairs listed
      empty.textContent = 'No problem of iteration ' + it.value + ' matches "' +
        search.value + '": change or clear the search.';
      Plotly.purge(plot); plot.style.height = '0px';
      if (table) table.where('tree', '\u0000none');
      return;
    }
    var layout = Object.assign({}, tree.figure.layout, {template: template});
    plot.style.height = layout.height + 'px';  // the tree's own height; the box scrolls
    Plotly.react(plot, tree.figure.data, layout, {displaylogo: false});
    if (table) table.where('tree', tree.key);
  }
  [it, sort].forEach(function (e) { e.addEventListener('change', function () {
    fill(list.value); }); });
  search.addEventListener('input', function () { fill(list.value); });
  list.addEventListener('change', draw);
  fill(null);
})();
"""

_CSS = """
.sppd-explorer .controls { display: flex; gap: 0.8em; flex-wrap: wrap; align-items: center;
  font: 13px system-ui, sans-serif; margin: 0.4em 0; }
.sppd-explorer select.problem { width: 100%; font: 13px ui-monospace, monospace; }
.sppd-explorer .count { color: #555; }
.sppd-explorer .empty { color: #555; font: italic 14px system-ui, sans-serif; }
.sppd-explorer .tree-scroll { max-height: 85vh; overflow-y: auto; overflow-x: hidden;
  border: 1px solid #eee; }
"""


def _script_json(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False).replace("</", "<\\/")


def _tree_entries(run: Run, limit: int) -> tuple[list[dict[str, Any]], int]:
    """One entry per tree (figure without its template), the trees with most pairs first
    when more than ``limit`` would go in; and how many were left out."""
    iterations = run.tree_iterations()
    budget = limit // max(len(iterations), 1)
    entries, left_out = [], 0
    for k in iterations:
        stats = run.tree_stats(k).sort_values("pairs", ascending=False, kind="stable")
        kept = stats.head(budget)
        left_out += len(stats) - len(kept)
        pairs = run.pairs(k)
        for r in kept.itertuples():
            tree = run.tree(k, r.problem_id)
            figure = tree_figure(tree, pairs).to_plotly_json()
            figure["layout"].pop("template", None)  # one shared copy below
            entries.append(
                {
                    "key": f"{k}/{r.problem_id}",
                    "iteration": k,
                    "id": r.problem_id,
                    "question": tree.problem.question.replace("\n", " "),
                    "pairs": int(r.pairs),
                    "correct": int(r.correct_paths),
                    "complete": int(r.complete_paths),
                    "figure": json.loads(pio.to_json(figure, validate=False)),
                }
            )
    return entries, left_out


def offline_explorer(run: Run, iteration: int | None = None, limit: int = MAX_TREES) -> HTMLBlock:
    """The explorer of a static page: pick an iteration (``iteration`` first, else the last),
    search and sort the problems (by pairs, correct paths or id), pick one to draw its tree;
    its pairs are listed below."""
    entries, left_out = _tree_entries(run, limit)
    if not entries:
        return HTMLBlock(f"<p>Run {html.escape(run.run_id)} has no trees yet.</p>")
    uid = f"sppd-explorer-{next(_ids)}"
    pairs_id = f"{uid}-pairs"
    template = pio.templates[TEMPLATE].to_plotly_json()
    data = {
        "iterations": run.tree_iterations(),
        "start": iteration if iteration in run.tree_iterations() else run.tree_iterations()[-1],
        "trees": entries,
        "pairs": pairs_id,
        "left_out": left_out,
    }
    note = (
        f"<p>{len(entries)} trees; the {left_out} with the fewest pairs are left out of this "
        "page (all are in JupyterLab).</p>"
        if left_out
        else ""
    )
    markup = (
        f"<style>{_CSS}</style><div class='sppd-explorer' id='{uid}'>{note}"
        "<div class='controls'><select class='iteration'></select>"
        "<input class='search' type='search' placeholder='search id or question'>"
        "<label>sort <select class='sort'><option value='pairs'>most pairs</option>"
        "<option value='correct'>most correct paths</option>"
        "<option value='fewest'>fewest correct paths</option>"
        "<option value='id'>problem id</option></select></label>"
        "<span class='count'></span></div>"
        "<select class='problem' size='6'></select>"
        "<p class='empty' style='display:none'></p>"
        "<div class='tree-scroll'><div class='plotly-graph-div' style='width:100%'></div></div>"
        f"<script class='trees' type='application/json'>{_script_json(data)}</script>"
        f"<script class='template' type='application/json'>{_script_json(template)}</script>"
        "<h3>Pairs of this tree</h3>"
        f"{pairs_table(run, table_id=pairs_id).html}"
        f"<script>{_JS.replace('__ROOT__', json.dumps(uid))}</script></div>"
    )
    return HTMLBlock(markup)
