"""A sortable, filterable HTML table that works offline: the rows travel as JSON inside the
page and a few lines of plain JavaScript (no CDN, no library) draw them.

Used for the pairs as text and the gained / lost responses. Click a header to sort, type in
the box to filter on any text, pick a value in a column's menu; only the first ``page_size``
matching rows are drawn (a "show more" button adds more), so a table of 10k rows stays quick.
Another script on the page can narrow a table with ``sppdTables[id].where(key, value)`` (the
offline tree explorer shows the pairs of the tree it draws this way).
"""

from __future__ import annotations

import html
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Cell", "Column", "HTMLBlock", "interactive_table", "text_cell"]

_ids = itertools.count()


@dataclass(frozen=True)
class Column:
    """One column: ``key`` (for :meth:`where`), header ``label``, ``menu`` adds a select
    filter of the column's distinct values, ``help`` is the header's tooltip; a ``hidden``
    column is not drawn but can still be matched by :meth:`where`."""

    key: str
    label: str
    menu: bool = False
    help: str = ""
    numeric: bool = False
    hidden: bool = False


@dataclass(frozen=True)
class Cell:
    """``html`` is shown; ``sort`` orders the column (a number or text); ``value`` is what a
    menu filter or :meth:`where` matches (the plain text of the cell by default)."""

    html: str
    sort: Any = None
    value: str | None = None


class HTMLBlock:
    """HTML that a notebook displays as is (``_repr_html_``) and a test can read (``.html``)."""

    def __init__(self, markup: str) -> None:
        self.html = markup

    def _repr_html_(self) -> str:
        return self.html

    def __str__(self) -> str:
        return self.html


def text_cell(value: Any, digits: int = 3) -> Cell:
    """A plain cell: numbers rounded to ``digits`` significant digits, ``None`` as a dash."""
    if value is None or (isinstance(value, float) and value != value):
        return Cell("–", None, "")
    if isinstance(value, bool):
        return Cell("yes" if value else "no", int(value), "yes" if value else "no")
    if isinstance(value, (int, float)):
        text = f"{value:.{digits}g}" if isinstance(value, float) else str(value)
        return Cell(text, float(value), text)
    text = str(value)
    return Cell(html.escape(text), text, text)


# `!important` where JupyterLab's own table style (fixed layout, right-aligned cells, which
# nbconvert pages inherit) would otherwise win and make the step texts overlap.
_CSS = """
.sppd-table { font: 13px/1.4 system-ui, sans-serif; margin: 0.5em 0 1.5em; }
.sppd-table .controls { display: flex; gap: 0.8em; flex-wrap: wrap; align-items: center;
  margin-bottom: 0.4em; }
.sppd-table .controls input[type=search] { width: 18em; }
.sppd-table .count { color: #555; }
.sppd-table .scroll { max-height: 75vh; overflow: auto; border: 1px solid #ddd; }
.sppd-table table { border-collapse: collapse; width: 100%; table-layout: auto !important;
  margin: 0 !important; }
.sppd-table th { position: sticky; top: 0; background: #f3f3f3; cursor: pointer;
  text-align: left !important; padding: 4px 6px; border-bottom: 1px solid #bbb;
  white-space: nowrap; z-index: 1; }
.sppd-table td { vertical-align: top !important; text-align: left !important;
  padding: 4px 6px !important; border-bottom: 1px solid #eee; }
.sppd-table td pre { white-space: pre-wrap !important; word-break: break-word; margin: 0;
  padding: 0 !important; background: none !important; overflow: visible !important;
  font: 12px/1.35 ui-monospace, monospace; min-width: 14em; max-width: 36em; }
.sppd-table td.num { text-align: right !important; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
.sppd-table mark { background: #ffe08a; padding: 0 2px; }
.sppd-table mark.right { background: #b9dcf5; } .sppd-table mark.wrong { background: #f7c9a9; }
.sppd-table details summary { cursor: pointer; color: #0b5394; }
.sppd-table details { max-width: 18em; } .sppd-table details[open] { max-width: 40em; }
.sppd-table details pre { min-width: 24em; }
"""

# Plain JavaScript, defined once per page; each table calls sppdTable(id) on its own data.
_JS = r"""
if (!window.sppdTable) {
  window.sppdTables = {};
  window.sppdTable = function (id) {
    var root = document.getElementById(id);
    var spec = JSON.parse(root.querySelector('script[type="application/json"]').textContent);
    var cols = spec.columns, rows = spec.rows, state = {sort: spec.sort, dir: spec.dir,
      text: '', menus: {}, where: {}, shown: spec.page};
    var div = document.createElement('div');
    rows.forEach(function (r) { div.innerHTML = r.map(function (c) { return c[0]; }).join(' ');
      r.text = div.textContent.toLowerCase(); });
    var controls = root.querySelector('.controls'), count = root.querySelector('.count');
    var search = root.querySelector('input[type=search]');
    search.addEventListener('input', function () { state.text = search.value.toLowerCase();
      state.shown = spec.page; draw(); });
    cols.forEach(function (c, i) {
      if (!c.menu) return;
      var values = Array.from(new Set(rows.map(function (r) { return r[i][2]; }))).sort();
      var select = document.createElement('select');
      select.innerHTML = '<option value="">' + c.label + ': all</option>' + values.map(
        function (v) { var e = document.createElement('option'); e.value = v; e.textContent =
          c.label + ': ' + v; return e.outerHTML; }).join('');
      select.addEventListener('change', function () { state.menus[i] = select.value;
        state.shown = spec.page; draw(); });
      controls.insertBefore(select, count);
    });
    var head = root.querySelector('thead tr');
    head.innerHTML = '';  // the page's static header and first rows are redrawn live
    cols.forEach(function (c, i) {
      if (c.hidden) return;
      var th = document.createElement('th'); th.dataset.col = i; th.textContent = c.label;
      th.title = (c.help ? c.help + ' · ' : '') + 'click to sort';
      th.addEventListener('click', function () { state.dir = state.sort === i ? -state.dir :
        (c.numeric ? -1 : 1); state.sort = i; draw(); });
      head.appendChild(th);
    });
    var more = root.querySelector('button.more');
    more.addEventListener('click', function () { state.shown += spec.page; draw(); });
    function keep(r) {
      if (state.text && r.text.indexOf(state.text) < 0) return false;
      for (var i in state.menus) if (state.menus[i] && r[i][2] !== state.menus[i]) return false;
      for (var k in state.where) { var j = cols.findIndex(function (c) { return c.key === k; });
        if (j >= 0 && r[j][2] !== state.where[k]) return false; }
      return true;
    }
    function compare(a, b) {
      var x = a[state.sort][1], y = b[state.sort][1];
      if (x === y) return 0; if (x === null) return 1; if (y === null) return -1;
      return (x < y ? -1 : 1) * state.dir;
    }
    function draw() {
      var found = rows.filter(keep);
      if (state.sort !== null) found.sort(compare);
      var body = root.querySelector('tbody');
      body.innerHTML = found.slice(0, state.shown).map(function (r) { return '<tr>' +
        r.map(function (c, i) { return cols[i].hidden ? '' : '<td' + (cols[i].numeric ?
          ' class="num"' : '') + '>' + c[0] + '</td>'; }).join('') + '</tr>'; }).join('');
      head.querySelectorAll('th').forEach(function (th) { var i = +th.dataset.col;
        th.textContent = cols[i].label +
        (state.sort === i ? (state.dir > 0 ? ' ▲' : ' ▼') : ''); });
      count.textContent = Math.min(state.shown, found.length) + ' of ' + found.length +
        ' rows shown' + (found.length < rows.length ? ' (' + rows.length + ' in all)' : '');
      more.style.display = found.length > state.shown ? '' : 'none';
    }
    window.sppdTables[id] = {where: function (key, value) {
      if (value === null) delete state.where[key]; else state.where[key] = value;
      state.shown = spec.page; draw(); }, draw: draw};
    draw();
  };
}
"""


def _json_script(data: Any) -> str:
    # `</` inside a <script> would end it early: escape it (JSON allows `<\/`).
    return json.dumps(data, ensure_ascii=False, default=str).replace("</", "<\\/")


NUM_TD = '<td class="num">'


def _sort_key(index: int, descending: bool) -> Any:
    """Python's order of the JavaScript one: missing values last, numbers by value."""

    def key(row: Sequence[Cell]) -> tuple[int, Any]:
        value = row[index].sort
        if value is None:
            return (1, 0)
        if isinstance(value, (int, float)):
            return (0, -value if descending else value)
        return (0, value)

    return key


def interactive_table(
    columns: Sequence[Column],
    rows: Sequence[Sequence[Cell]],
    *,
    title: str | None = None,
    note: str | None = None,
    sort: str | None = None,
    descending: bool = False,
    page_size: int = 100,
    table_id: str | None = None,
    empty: str = "No rows.",
) -> HTMLBlock:
    """An offline sortable, filterable table of ``rows`` (one :class:`Cell` per column);
    ``sort`` names the column sorted first. ``table_id`` lets other scripts reach it."""
    table_id = table_id or f"sppd-table-{next(_ids)}"
    heading = f"<h4>{html.escape(title)}</h4>" if title else ""
    note_html = f'<p class="note">{note}</p>' if note else ""
    if not rows:
        return HTMLBlock(f'<div class="sppd-table">{heading}{note_html}<p>{empty}</p></div>')
    keys = [c.key for c in columns]
    spec = {
        "columns": [
            {
                "key": c.key,
                "label": c.label,
                "menu": c.menu,
                "help": c.help,
                "numeric": c.numeric,
                "hidden": c.hidden,
            }
            for c in columns
        ],
        "rows": [
            [[c.html, c.sort, c.value if c.value is not None else ""] for c in r] for r in rows
        ],
        "sort": keys.index(sort) if sort in keys else None,
        "dir": -1 if descending else 1,
        "page": page_size,
    }
    # The header and the first page of rows are in the HTML itself, so the table reads even
    # where scripts do not run (an untrusted notebook); the script then redraws it live.
    shown = [(i, c) for i, c in enumerate(columns) if not c.hidden]
    first = sorted(rows, key=_sort_key(keys.index(sort), descending)) if sort in keys else rows
    header = "".join(f"<th>{html.escape(c.label)}</th>" for _, c in shown)
    body = "".join(
        "<tr>"
        + "".join(f"{NUM_TD if c.numeric else '<td>'}{r[i].html}</td>" for i, c in shown)
        + "</tr>"
        for r in first[:page_size]
    )
    markup = (
        f"<style>{_CSS}</style>"
        f'<div class="sppd-table" id="{table_id}">{heading}{note_html}'
        '<div class="controls"><input type="search" placeholder="filter rows (any text)">'
        f'<span class="count">{min(page_size, len(rows))} of {len(rows)} rows shown</span></div>'
        f'<div class="scroll"><table><thead><tr>{header}</tr></thead><tbody>{body}</tbody>'
        "</table></div>"
        '<button class="more" type="button">show more</button>'
        f'<script type="application/json">{_json_script(spec)}</script>'
        f"<script>{_JS}\nsppdTable({json.dumps(table_id)});</script></div>"
    )
    return HTMLBlock(markup)
