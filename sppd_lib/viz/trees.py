"""One step tree as a figure (x = depth, y = leaf order, colour = value) and the trees a static
report features."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from sppd_lib.tree import StepNode, StepTree
from sppd_lib.viz.run import Run
from sppd_lib.viz.style import (
    CHOSEN_COLOUR,
    REJECTED_COLOUR,
    empty_figure,
    hover_html,
    style_figure,
)

__all__ = ["NODE_STYLE", "featured_tree_figures", "featured_trees", "tree_figure"]

#: Pixels per leaf row and above the plot (title, subtitle, a two-line legend).
ROW_PX, TOP_PX = 22, 130


@dataclass
class _Layout:
    """Visible nodes of a tree and their positions: x = depth, y = leaf order."""

    nodes: list[StepNode]
    x: dict[int, float]
    y: dict[int, float]
    leaves: int


def _visible(
    tree: StepTree, node: StepNode, max_depth: int | None, min_value: float | None
) -> bool:
    if node.parent_id is None:
        return True
    if max_depth is not None and node.depth > max_depth:
        return False
    return min_value is None or node.value is None or node.value >= min_value


def _tree_layout(tree: StepTree, max_depth: int | None, min_value: float | None) -> _Layout:
    """Pre-order walk over visible nodes (a hidden node hides its subtree)."""
    order: list[StepNode] = []
    kids: dict[int, list[int]] = {}
    stack = [tree.root]
    while stack:
        node = stack.pop()
        order.append(node)
        children = [c for c in tree.children(node.id) if _visible(tree, c, max_depth, min_value)]
        kids[node.id] = [c.id for c in children]
        stack.extend(reversed(children))
    y: dict[int, float] = {}
    leaf_count = 0
    for node in order:  # leaves in pre-order get 0, 1, 2, ...
        if not kids[node.id]:
            y[node.id] = float(leaf_count)
            leaf_count += 1
    for node in reversed(order):  # parents after their children
        if kids[node.id]:
            y[node.id] = (y[kids[node.id][0]] + y[kids[node.id][-1]]) / 2
    return _Layout(order, {n.id: float(n.depth) for n in order}, y, leaf_count)


def _node_kind(node: StepNode) -> str:
    if node.parent_id is None:
        return "problem"
    if node.is_complete:
        return "correct answer" if node.correct else "wrong answer"
    if node.terminal:
        return "ended without answer"
    return "step"


NODE_STYLE = {  # kind -> marker symbol, size, outline colour, outline width
    "problem": ("diamond", 16, "#333", 1.5),
    "step": ("circle", 10, "#444", 0.8),
    "correct answer": ("star", 17, CHOSEN_COLOUR, 2.0),
    "wrong answer": ("x", 13, REJECTED_COLOUR, 1.5),
    "ended without answer": ("square", 9, "#888", 1.0),
}


def _pair_roles(pairs: pd.DataFrame | None) -> dict[int, list[str]]:
    """node id -> hover lines about the pairs it belongs to."""
    roles: dict[int, list[str]] = {}
    if pairs is None:
        return roles
    for row in pairs.itertuples():
        info = f"Δv {row.delta_value:.2f}"
        roles.setdefault(int(row.chosen_node), []).append(
            f"chosen over node {row.rejected_node} ({info})"
        )
        roles.setdefault(int(row.rejected_node), []).append(
            f"rejected for node {row.chosen_node} ({info})"
        )
    return roles


def _node_hover(tree: StepTree, node: StepNode, roles: list[str]) -> str:
    value = "–" if node.value is None else f"{node.value:.3f}"
    lines = [f"<b>node {node.id}</b> · depth {node.depth} · value {value}"]
    if node.parent_id is None:
        lines += [f"problem {html.escape(tree.problem.id)}", hover_html(tree.problem.question)]
        lines.append(f"gold: {html.escape(tree.problem.answer)}")
    else:
        lines.append(
            f"mean log-prob {node.mean_logprob:.3f} · {len(node.token_ids)} tokens"
            f" · ends: {node.terminal_reason or node.finish_reason}"
        )
        if node.mc_total is not None:
            lines.append(f"mc: {node.mc_correct}/{node.mc_total} correct leaves")
        if node.terminal:
            lines.append(f"answer: {html.escape(str(node.answer))} · correct: {node.correct}")
        lines.append(hover_html(node.text))
    lines += [html.escape(role) for role in roles]
    return "<br>".join(lines)


def _edge_path(
    layout: _Layout, parent: int, child: int
) -> tuple[list[float | None], list[float | None]]:
    """Elbow connector parent -> child as x and y lists (ended by None)."""
    xp, yp, xc, yc = layout.x[parent], layout.y[parent], layout.x[child], layout.y[child]
    mid = xp + 0.5
    return [xp, mid, mid, xc, None], [yp, yp, yc, yc, None]


def _edge_trace(
    layout: _Layout, edges: list[tuple[int, int]], name: str, skip: int = 0, **line: Any
) -> go.Scatter:
    """One line trace of elbow edges; ``skip=1`` leaves out the parent's stem."""
    xs: list[float | None] = []
    ys: list[float | None] = []
    for parent, child in edges:
        x, y = _edge_path(layout, parent, child)
        xs.extend(x[skip:])
        ys.extend(y[skip:])
    return go.Scatter(
        x=xs, y=ys, mode="lines", name=name, hoverinfo="skip", line=line, showlegend=bool(line)
    )


def _pair_edges(tree: StepTree, pairs: pd.DataFrame | None, layout: _Layout) -> list[go.Scatter]:
    if pairs is None or not len(pairs):
        return []
    shown = {n.id for n in layout.nodes}
    traces = []
    # Colour and dash both tell chosen from rejected (colour-blind safe): blue solid, orange
    # dashed. An edge is drawn only when both its ends are shown.
    for column, name, colour, dash in (
        ("chosen_node", "chosen step (solid)", CHOSEN_COLOUR, "solid"),
        ("rejected_node", "rejected step (dashed)", REJECTED_COLOUR, "dash"),
    ):
        edges = [
            (int(parent), int(node))
            for parent, node in zip(pairs["parent_node"], pairs[column], strict=True)
            if int(node) in shown and int(parent) in shown
        ]
        if edges:
            traces.append(
                _edge_trace(
                    layout, sorted(set(edges)), name, skip=1, color=colour, width=3.5, dash=dash
                )
            )
    return traces


def _node_traces(tree: StepTree, layout: _Layout, roles: dict[int, list[str]]) -> list[go.Scatter]:
    groups: dict[tuple[str, bool], list[StepNode]] = {}
    for node in layout.nodes:
        groups.setdefault((_node_kind(node), node.value is not None), []).append(node)
    traces = []
    for (kind, valued), nodes in sorted(
        groups.items(), key=lambda g: list(NODE_STYLE).index(g[0][0])
    ):
        symbol, size, outline, width = NODE_STYLE[kind]
        marker: dict[str, Any] = {
            "symbol": symbol,
            "size": size,
            "line": {"color": outline, "width": width},
        }
        if valued:
            marker.update(color=[n.value for n in nodes], coloraxis="coloraxis")
        else:
            marker["color"] = "#cccccc"
        answers = [_answer_label(n) for n in nodes]
        name = kind if valued else f"{kind} (no value)"
        traces.append(
            go.Scatter(
                x=[layout.x[n.id] for n in nodes],
                y=[layout.y[n.id] for n in nodes],
                mode="markers+text" if any(answers) else "markers",
                text=answers,
                textposition="middle right",
                textfont={"size": 10, "color": "#555"},
                cliponaxis=False,  # answer labels right of the deepest leaves stay whole
                name=name,
                legendgroup=name,
                # plotly.js draws a legend symbol of value-coloured markers black and warns
                # "Invalid color specifier" for each: a proxy below stands in the legend.
                showlegend=not valued,
                marker=marker,
                hovertext=[_node_hover(tree, n, roles.get(n.id, [])) for n in nodes],
                hoverinfo="text",
            )
        )
        if valued:
            traces.append(_legend_proxy(name, {**marker, "color": "#9ecae1"}))
    return traces


def _legend_proxy(name: str, marker: dict[str, Any]) -> go.Scatter:
    """A trace without points that shows ``marker`` in the legend under ``name`` (and toggles
    the nodes of the same legend group)."""
    return go.Scatter(
        x=[None], y=[None], mode="markers", name=name, legendgroup=name, marker=marker,
        hoverinfo="skip",
    )  # fmt: skip


def _answer_label(node: StepNode) -> str:
    if not node.is_complete:
        return ""
    answer = "no answer" if node.answer is None else str(node.answer)
    return answer if len(answer) <= 14 else answer[:13] + "…"


def _tree_title(
    tree: StepTree, pairs: pd.DataFrame | None, shown: int | None = None
) -> tuple[str, str]:
    stats = tree.stats()
    question = tree.problem.question.replace("\n", " ")
    question = question if len(question) <= 90 else question[:90] + " …"
    steps = (
        f"{stats.nodes} steps"
        if shown in (None, stats.nodes)
        else (f"{shown} of {stats.nodes} steps shown")
    )
    subtitle = (
        f"{steps} · {stats.complete_paths} complete paths "
        f"({stats.correct_paths} correct) · {0 if pairs is None else len(pairs)} pairs "
        f"· gold {tree.problem.answer}"
    )
    return f"{html.escape(tree.problem.id)}: {html.escape(question)}", html.escape(subtitle)


def tree_figure(
    tree: StepTree,
    pairs_df: pd.DataFrame | None = None,
    max_depth: int | None = None,
    min_value: float | None = None,
    note: str | None = None,
) -> go.Figure:
    """One problem's step tree: x = depth, y = leaf order.

    Node colour is the value; the symbol tells the kind (diamond problem, circle step, star
    correct answer, x wrong answer, square a path that ended without an answer); the hover
    shows the step text, mean log-prob, value and the pairs the step is in. Edges from a
    prefix to the chosen / rejected step of a pair are blue solid / orange dashed.
    ``pairs_df`` may hold the pairs of many trees (those of this tree are picked);
    ``max_depth`` and ``min_value`` hide deeper steps and steps (with their subtrees) of lower
    value; the subtitle (the title's second line, after ``note``) says how many steps are
    shown.
    """
    if pairs_df is not None and len(pairs_df):
        pairs_df = pairs_df[pairs_df["tree_id"] == tree.problem.id]
    layout = _tree_layout(tree, max_depth, min_value)
    edges = [(n.parent_id, n.id) for n in layout.nodes if n.parent_id is not None]
    figure = go.Figure(
        [
            _edge_trace(layout, edges, "edges", color="#bbbbbb", width=1.2),
            *_pair_edges(tree, pairs_df, layout),
            *_node_traces(tree, layout, _pair_roles(pairs_df)),
        ]
    )
    figure.data[0].showlegend = False
    title, subtitle = _tree_title(tree, pairs_df, len(layout.nodes) - 1)  # without the root
    if note:
        subtitle = f"{html.escape(note)} · {subtitle}"
    # The subtitle is a second line of the title, not plotly's subtitle: plotly.js places a
    # subtitle by measuring the title, which is 0 px tall in a widget drawn before it is
    # shown (JupyterLab), and the two overlapped on first render.
    title = f"{title}<br><span style='font-size:12px;color:#555'>{subtitle}</span>"
    # No height cap: a tree of 512 steps gets the rows it needs and the page scrolls. The
    # title, subtitle and legend are placed in pixels from the top, so they never overlap
    # whatever the height (fractions of the height moved with it).
    height = max(420, ROW_PX * layout.leaves + TOP_PX + 60)
    deepest = max((layout.x[n.id] for n in layout.nodes), default=0.0)
    style_figure(figure, title, height=int(height))
    figure.update_layout(
        title={
            "text": title,
            "x": 0.01,
            "xanchor": "left",
            "yref": "container",
            "y": 1 - 12 / height,
            "yanchor": "top",
        },
        coloraxis={
            "colorscale": "Viridis",
            "cmin": 0.0,
            "cmax": 1.0,
            "colorbar": {
                "title": {"text": "value"},
                "thickness": 14,
                "len": min(1.0, 400 / height),
                "y": 1.0,
                "yanchor": "top",
            },
        },
        xaxis={
            "title": {"text": "depth (step)"},
            "dtick": 1,
            "zeroline": False,
            "range": [-0.3, deepest + 0.9],  # room for the answer labels
        },
        yaxis={"visible": False, "autorange": "reversed"},
        legend={
            "orientation": "h",
            "x": 0,
            "xanchor": "left",
            "yref": "container",
            "y": 1 - 62 / height,
            "yanchor": "top",
        },
        margin={"t": TOP_PX, "b": 50, "r": 90},
    )
    return figure


def featured_trees(
    run: Run, iteration: int | None = None, first: int = 3, most_pairs: int = 3
) -> list[tuple[int, StepTree, str]]:
    """``(iteration, tree, why picked)`` for the first ``first`` trees of an iteration and the
    ``most_pairs`` trees with the most pairs (no tree twice). ``iteration`` None: the last one
    with trees."""
    iterations = run.tree_iterations()
    if not iterations:
        return []
    k = iterations[-1] if iteration is None else iteration
    trees = run.trees(k)
    picked = [(k, t, f"problem {i + 1} of {len(trees)}") for i, t in enumerate(trees[:first])]
    seen = {t.problem.id for _, t, _ in picked}
    stats = run.tree_stats(k)
    ranked = stats.sort_values("pairs", ascending=False, kind="stable") if len(stats) else stats
    for row in ranked.itertuples():
        if len(picked) >= first + most_pairs or row.pairs == 0:
            break
        if row.problem_id not in seen:
            tree = run.tree(k, row.problem_id)
            if tree is not None:
                picked.append((k, tree, f"one of the most pairs ({row.pairs})"))
                seen.add(row.problem_id)
    return picked


def featured_tree_figures(
    run: Run, iteration: int | None = None, first: int = 3, most_pairs: int = 3
) -> list[go.Figure]:
    """:func:`tree_figure` of each of :func:`featured_trees` (for static reports)."""
    picked = featured_trees(run, iteration, first, most_pairs)
    if not picked:
        return [empty_figure("Step trees", f"No iteration of run {run.run_id} has trees yet.")]
    figures = []
    for k, tree, why in picked:
        figures.append(tree_figure(tree, run.pairs(k), note=f"iteration {k}, {why}"))
    return figures
