"""The interactive tree explorer: iteration / problem dropdowns and depth / value filters
driving a ``go.FigureWidget`` (ipywidgets is imported only when one is built)."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from sppd_lib.tree import StepTree
from sppd_lib.viz.run import Run
from sppd_lib.viz.style import empty_figure
from sppd_lib.viz.trees import tree_figure

__all__ = ["TreeExplorer", "explorer_view"]


class TreeExplorer:
    """Iteration / problem dropdowns and depth / value filters driving a ``go.FigureWidget``.

    ``explorer.widget`` is the whole control (display it in Jupyter); :meth:`update` changes
    any control programmatically and redraws, so tests and scripts can drive it.
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
        self.problem = widgets.Dropdown(description="problem", layout={"width": "460px"})
        self.max_depth = widgets.IntSlider(value=1, min=1, max=1, description="max depth")
        self.min_value = widgets.FloatSlider(
            value=0.0, min=0.0, max=1.0, step=0.05, description="min value"
        )
        self.figure = go.FigureWidget()
        self._busy = False
        self._refresh_problems(problem)
        self._draw()
        for control in (self.iteration, self.problem, self.max_depth, self.min_value):
            control.observe(self._on_change, names="value")
        controls = widgets.HBox([self.iteration, self.problem])
        filters = widgets.HBox([self.max_depth, self.min_value])
        self.widget = widgets.VBox([controls, filters, self.figure])

    def _problem_options(self) -> list[tuple[str, str]]:
        if self.iteration.value is None:
            return []
        stats = self.run.tree_stats(self.iteration.value)
        return [
            (
                f"{r.problem_id} · {r.pairs} pairs · {r.correct_paths}/{r.complete_paths} correct",
                r.problem_id,
            )
            for r in stats.itertuples()
        ]

    def _refresh_problems(self, problem: str | None = None) -> None:
        options = self._problem_options()
        self.problem.options = options
        ids = [value for _, value in options]
        if ids:
            self.problem.value = problem if problem in ids else ids[0]
        tree = self.current_tree()
        deepest = max((n.depth for n in tree.nodes), default=1) if tree else 1
        self.max_depth.max = max(deepest, 1)
        self.max_depth.value = self.max_depth.max

    def current_tree(self) -> StepTree | None:
        if self.iteration.value is None or self.problem.value is None:
            return None
        return self.run.tree(self.iteration.value, self.problem.value)

    def _figure(self) -> go.Figure:
        tree = self.current_tree()
        if tree is None:
            return empty_figure("Step tree", f"No iteration of run {self.run.run_id} has trees.")
        min_value = self.min_value.value or None
        pairs = self.run.pairs(self.iteration.value)
        return tree_figure(tree, pairs, self.max_depth.value, min_value)

    def _draw(self) -> None:
        new = self._figure()
        self.figure.data = ()
        self.figure.layout = {}
        self.figure.add_traces(list(new.data))
        self.figure.layout = new.layout

    def _on_change(self, change: dict[str, Any]) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            if change["owner"] is self.iteration or change["owner"] is self.problem:
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
    ) -> go.FigureWidget:
        """Set any of the controls (``None`` keeps it) and redraw; returns the figure."""
        self._busy = True
        try:
            if iteration is not None:
                self.iteration.value = iteration
                self._refresh_problems(problem or self.problem.value)
            elif problem is not None:
                self.problem.value = problem
                self._refresh_problems(problem)
            if max_depth is not None:
                self.max_depth.value = max_depth
            if min_value is not None:
                self.min_value.value = min_value
            self._draw()
        finally:
            self._busy = False
        return self.figure


def explorer_view(run: Run, iteration: int | None = None, interactive: bool = True) -> Any:
    """A :class:`TreeExplorer` widget, or for a static HTML export (where widgets cannot run,
    and whose notebook would store the widget's 5 MB of JavaScript) a short note."""
    if interactive:
        return TreeExplorer(run, iteration).widget
    from IPython.display import Markdown

    return Markdown(
        "*The interactive explorer (iteration, problem, depth and value controls) runs when "
        "this notebook is opened in Jupyter (`make lab`); below, a selection of trees.*"
    )
