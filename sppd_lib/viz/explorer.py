"""The interactive tree explorer: iteration / problem dropdowns and depth / value filters
driving a ``go.FigureWidget`` (ipywidgets is imported only when one is built)."""

from __future__ import annotations

import html
from typing import Any

import plotly.graph_objects as go

from sppd_lib.tree import StepTree
from sppd_lib.viz.pairs import pairs_table
from sppd_lib.viz.run import Run
from sppd_lib.viz.style import empty_figure, natural_key
from sppd_lib.viz.trees import tree_figure

__all__ = ["SORTS", "TreeExplorer", "explorer_view", "problem_list"]


#: Orders of the problem list: (label, tree_stats column, descending).
SORTS = {
    "most pairs": ("pairs", True),
    "most correct paths": ("correct_paths", True),
    "fewest correct paths": ("correct_paths", False),
    "problem id": ("problem_id", False),
}
#: Problems listed in the dropdown at most (search narrows the rest): a 10k-item dropdown
#: is unusable and slow to send to the browser.
MAX_OPTIONS = 500


def problem_list(
    run: Run, iteration: int, search: str = "", sort: str = "most pairs"
) -> tuple[list[tuple[str, str]], int]:
    """(label, problem id) of the iteration's trees matching ``search`` (in the id or the
    question, any case), ordered by ``sort`` (a key of :data:`SORTS`), at most
    :data:`MAX_OPTIONS`; and how many matched."""
    stats = run.tree_stats(iteration)
    if not len(stats):
        return [], 0
    questions = {t.problem.id: t.problem.question for t in run.trees(iteration)}
    stats = stats.assign(question=[questions.get(p, "") for p in stats["problem_id"]])
    if search.strip():
        needle = search.strip().lower()
        hit = stats["problem_id"].str.lower().str.contains(needle, regex=False)
        hit |= stats["question"].str.lower().str.contains(needle, regex=False)
        stats = stats[hit]
    column, descending = SORTS.get(sort, SORTS["most pairs"])
    key = (lambda ids: ids.map(natural_key)) if column == "problem_id" else None
    stats = stats.sort_values(column, ascending=not descending, kind="stable", key=key)
    options = [
        (
            f"{r.problem_id} · {r.pairs} pairs · {r.correct_paths}/{r.complete_paths} correct"
            f" · {r.question[:50]}",
            r.problem_id,
        )
        for r in stats.head(MAX_OPTIONS).itertuples()
    ]
    return options, len(stats)


class TreeExplorer:
    """Iteration / problem dropdowns, a problem search and sort, and depth / value filters
    driving a ``go.FigureWidget``, with the selected tree's pairs as text below it.

    ``explorer.widget`` is the whole control (display it in Jupyter); :meth:`update` changes
    any control programmatically and redraws, so tests and scripts can drive it. The depth
    filter keeps a value the user set when the problem changes (clipped to the new tree).
    """

    def __init__(self, run: Run, iteration: int | None = None, problem: str | None = None) -> None:
        import ipywidgets as widgets

        self.run = run
        iterations = run.tree_iterations()
        self.iteration = widgets.Dropdown(
            options=[(f"iteration {k}", k) for k in iterations],
            value=(iterations[-1] if iteration is None else iteration) if iterations else None,
            description="iteration",
        )
        self.search = widgets.Text(
            description="search",
            placeholder="id or words of the question",
            continuous_update=False,
        )
        self.sort = widgets.Dropdown(options=list(SORTS), value="most pairs", description="sort")
        self.problem = widgets.Dropdown(description="problem", layout={"width": "640px"})
        self.matches = widgets.HTML()
        self.max_depth = widgets.IntSlider(value=1, min=1, max=1, description="max depth")
        self.min_value = widgets.FloatSlider(
            value=0.0, min=0.0, max=1.0, step=0.05, description="min value"
        )
        self.figure = go.FigureWidget()
        self.pairs_output = widgets.Output()
        self._busy = False
        self._depth_set = False  # True once the user moved the depth slider below the maximum
        self._refresh_problems(problem)
        self._draw()
        for control in (self.iteration, self.problem, self.max_depth, self.min_value):
            control.observe(self._on_change, names="value")
        for control in (self.search, self.sort):
            control.observe(self._on_list_change, names="value")
        # The figure scrolls inside a box instead of being squeezed to a capped height.
        scroll = widgets.Box(
            [self.figure], layout={"max_height": "900px", "overflow": "auto", "width": "100%"}
        )
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.iteration, self.search, self.sort]),
                widgets.HBox([self.problem, self.matches]),
                widgets.HBox([self.max_depth, self.min_value]),
                scroll,
                self.pairs_output,
            ],
            layout={"width": "100%"},
        )

    def _refresh_problems(self, problem: str | None = None) -> None:
        if self.iteration.value is None:
            options, found = [], 0
        else:
            options, found = problem_list(
                self.run, self.iteration.value, self.search.value, self.sort.value
            )
        self.problem.options = options
        total = len(self.run.trees(self.iteration.value)) if self.iteration.value is not None else 0
        self.matches.value = (
            f"{min(found, len(options))} listed of {found} matching ({total} trees)"
        )
        ids = [value for _, value in options]
        if ids:
            self.problem.value = problem if problem in ids else ids[0]
        tree = self.current_tree()
        deepest = max((n.depth for n in tree.nodes), default=1) if tree else 1
        kept = self.max_depth.value
        self.max_depth.max = max(deepest, 1)
        self.max_depth.value = (
            min(kept, self.max_depth.max) if self._depth_set else self.max_depth.max
        )

    def current_tree(self) -> StepTree | None:
        if self.iteration.value is None or self.problem.value is None:
            return None
        return self.run.tree(self.iteration.value, self.problem.value)

    def _nothing_shown(self) -> str:
        """Why no tree is drawn: no trees at all, or a search that matches none."""
        if self.iteration.value is None:
            return f"No iteration of run {self.run.run_id} has trees."
        return (
            f"No problem of iteration {self.iteration.value} matches the search "
            f"{self.search.value!r}: change or clear it."
        )

    def _figure(self) -> go.Figure:
        tree = self.current_tree()
        if tree is None:
            return empty_figure("Step tree", self._nothing_shown())
        min_value = self.min_value.value or None
        pairs = self.run.pairs(self.iteration.value)
        return tree_figure(tree, pairs, self.max_depth.value, min_value)

    def _draw(self) -> None:
        new = self._figure()
        self.figure.data = ()
        self.figure.layout = {}
        self.figure.add_traces(list(new.data))
        self.figure.layout = new.layout
        # No fixed width: the figure takes the cell's width, colour bar included.
        self.figure.layout.autosize = True
        self._draw_pairs()

    def pairs_html(self) -> str:
        """The selected tree's pairs as a sortable table (what is shown below the figure)."""
        tree = self.current_tree()
        if tree is None:  # never the pairs of a tree no longer shown
            return f"<p><i>No tree shown, so no pairs: {html.escape(self._nothing_shown())}</i></p>"
        # The pairs of the steps drawn: the depth filter applies to both.
        return pairs_table(
            self.run, self.iteration.value, tree.problem.id, max_depth=self.max_depth.value
        ).html

    def _draw_pairs(self) -> None:
        from IPython.display import HTML, display

        self.pairs_output.clear_output(wait=True)
        with self.pairs_output:
            display(HTML(self.pairs_html()))

    def _on_change(self, change: dict[str, Any]) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            if change["owner"] is self.max_depth:
                self._depth_set = self.max_depth.value < self.max_depth.max
            if change["owner"] is self.iteration or change["owner"] is self.problem:
                self._refresh_problems(self.problem.value)
            self._draw()
        finally:
            self._busy = False

    def _on_list_change(self, change: dict[str, Any]) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            self._refresh_problems(self.problem.value)
            self._draw()
        finally:
            self._busy = False

    def update(
        self,
        iteration: int | None = None,
        problem: str | None = None,
        max_depth: int | None = None,
        min_value: float | None = None,
        search: str | None = None,
        sort: str | None = None,
    ) -> go.FigureWidget:
        """Set any of the controls (``None`` keeps it) and redraw; returns the figure."""
        self._busy = True
        try:
            if search is not None:
                self.search.value = search
            if sort is not None:
                self.sort.value = sort
            if iteration is not None:
                self.iteration.value = iteration
            if problem is not None:
                self.problem.value = problem
            if iteration is not None or problem is not None or search is not None or sort:
                self._refresh_problems(problem or self.problem.value)
            if max_depth is not None:
                self.max_depth.value = max_depth
                self._depth_set = max_depth < self.max_depth.max
            if min_value is not None:
                self.min_value.value = min_value
            self._draw()
        finally:
            self._busy = False
        return self.figure


def explorer_view(run: Run, iteration: int | None = None, interactive: bool = True) -> Any:
    """A :class:`TreeExplorer` widget, or for a static HTML export (where widgets cannot run,
    and whose notebook would store the widget's 5 MB of JavaScript) the offline explorer of
    :func:`sppd_lib.viz.explorer_html.offline_explorer`: every tree behind a selector."""
    if interactive:
        return TreeExplorer(run, iteration).widget
    from sppd_lib.viz.explorer_html import offline_explorer

    return offline_explorer(run, iteration)
