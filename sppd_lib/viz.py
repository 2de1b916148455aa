"""Plotly figures of a run directory: step trees, pairs and margins, training curves, accuracy.

The notebooks in ``notebooks/`` only call these builders, so every figure can be tested and
reused. A builder never raises on a missing or empty file (a run still going, an iteration
without pairs, an SFT-only phase): it returns :func:`empty_figure`, a figure whose only content
is a note saying what is missing.

Run directory (``runs/<run_id>/``, written by the self-training loop)::

    config.yaml  summary.parquet  iter_0/eval.parquet
    iter_<k>/trees.jsonl.gz  pairs.parquet  eval.parquet  eval_samples.parquet
    iter_<k>/train/log.jsonl  train/pair_log.parquet
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import yaml
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from sppd_lib.metrics import wilson_interval
from sppd_lib.tree import StepNode, StepTree, read_trees

__all__ = [
    "Run",
    "RunNotFoundError",
    "TreeExplorer",
    "accuracy_figure",
    "change_table",
    "compare_runs_figure",
    "config_diff_table",
    "empty_figure",
    "explorer_view",
    "featured_tree_figures",
    "featured_trees",
    "final_scores_table",
    "final_scores_view",
    "is_empty_figure",
    "load_run",
    "margin_histograms",
    "pairs_by_depth",
    "resolve_run_dir",
    "reward_vs_value_margin",
    "setup_notebook",
    "summary_table",
    "training_curves",
    "tree_figure",
    "tree_stats_figure",
]

SUMMARY_COLUMNS = [
    "iteration", "benchmark", "metric", "value", "n", "correct", "ci95_low", "ci95_high",
]  # fmt: skip
METRIC_ORDER = ["pass@1", "maj@8", "vote@8", "best@8"]
PHASE_COLOURS = {"sft": "#636efa", "dpo": "#ab63fa", "sppd": "#00a08a"}
CHOSEN_COLOUR, REJECTED_COLOUR = "#1a9850", "#d73027"
COLOURS = qualitative.Plotly
TEMPLATE = "plotly_white"
#: Points drawn at most in a scatter of per-pair rows (a deterministic subsample beyond).
MAX_POINTS = 4000


class RunNotFoundError(FileNotFoundError):
    """A run directory is missing or holds none of the files of a run."""


# ---------------------------------------------------------------------------------------
# Loading a run
# ---------------------------------------------------------------------------------------


def _read_parquet(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.is_file() else None


def _read_jsonl(path: Path) -> pd.DataFrame | None:
    """Rows of a JSONL log; a torn last line (a run still writing) is skipped."""
    if not path.is_file():
        return None
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return pd.DataFrame(rows)


def _step_rows(log: pd.DataFrame | None) -> pd.DataFrame | None:
    """Rows that log at least one training metric (not the trainer's final summary row)."""
    if log is None:
        return None
    metrics = [c for _, columns in TRAINING_PANELS for c in columns if c in log.columns]
    return log.dropna(subset=metrics, how="all").reset_index(drop=True) if metrics else log


@dataclass
class Run:
    """One run directory, read lazily; every reader returns ``None`` for a missing file."""

    path: Path
    run_id: str
    config: dict[str, Any]
    #: One row per (iteration, benchmark, metric); empty when nothing was evaluated yet.
    summary: pd.DataFrame
    #: The ``iter_<k>`` folders found, in order.
    iterations: list[int]
    _cache: dict[tuple[str, int], Any] = field(default_factory=dict, repr=False)

    def iter_dir(self, iteration: int) -> Path:
        return self.path / f"iter_{iteration}"

    def _cached(self, kind: str, iteration: int, load: Any) -> Any:
        key = (kind, iteration)
        if key not in self._cache:
            self._cache[key] = load()
        return self._cache[key]

    def trees(self, iteration: int) -> list[StepTree]:
        """The iteration's step trees (valued, see :func:`_ensure_values`); [] when missing."""
        path = self.iter_dir(iteration) / "trees.jsonl.gz"

        def load() -> list[StepTree]:
            if not path.is_file():
                return []
            return [_ensure_values(t, self.config) for t in read_trees(path)]

        return self._cached("trees", iteration, load)

    def tree(self, iteration: int, problem_id: str) -> StepTree | None:
        return next((t for t in self.trees(iteration) if t.problem.id == problem_id), None)

    def pairs(self, iteration: int) -> pd.DataFrame | None:
        path = self.iter_dir(iteration) / "pairs.parquet"
        return self._cached("pairs", iteration, lambda: _read_parquet(path))

    def train_log(self, iteration: int) -> pd.DataFrame | None:
        """Optimizer-step rows of ``train/log.jsonl`` (end-of-training summaries dropped)."""
        path = self.iter_dir(iteration) / "train" / "log.jsonl"
        return self._cached("log", iteration, lambda: _step_rows(_read_jsonl(path)))

    def pair_log(self, iteration: int) -> pd.DataFrame | None:
        path = self.iter_dir(iteration) / "train" / "pair_log.parquet"
        return self._cached("pair_log", iteration, lambda: _read_parquet(path))

    def eval(self, iteration: int) -> pd.DataFrame | None:
        path = self.iter_dir(iteration) / "eval.parquet"
        return self._cached("eval", iteration, lambda: _read_parquet(path))

    def eval_samples(self, iteration: int) -> pd.DataFrame | None:
        path = self.iter_dir(iteration) / "eval_samples.parquet"
        return self._cached("eval_samples", iteration, lambda: _read_parquet(path))

    def tree_iterations(self) -> list[int]:
        """Iterations whose trees file exists."""
        return [k for k in self.iterations if (self.iter_dir(k) / "trees.jsonl.gz").is_file()]

    def tree_stats(self, iteration: int) -> pd.DataFrame:
        """One row per tree: problem_id, nodes, complete/correct paths, tokens, pairs."""
        pairs = self.pairs(iteration)
        per_tree = pairs.groupby("tree_id").size() if pairs is not None and len(pairs) else {}
        rows = []
        for tree in self.trees(iteration):
            stats = tree.stats()
            rows.append(
                {
                    "problem_id": tree.problem.id,
                    "nodes": stats.nodes,
                    "complete_paths": stats.complete_paths,
                    "correct_paths": stats.correct_paths,
                    "tokens_generated": stats.tokens_generated,
                    "flat_tokens": stats.flat_tokens,
                    "max_depth": max((n.depth for n in tree.nodes), default=0),
                    "pairs": int(per_tree.get(tree.problem.id, 0)),
                }
            )
        return pd.DataFrame(rows)

    def stacked(self, kind: str) -> pd.DataFrame | None:
        """``pairs``, ``train_log`` or ``pair_log`` of every iteration with an ``iteration``
        column; ``None`` when no iteration has the file."""
        reader = {"pairs": self.pairs, "train_log": self.train_log, "pair_log": self.pair_log}
        frames = []
        for k in self.iterations:
            frame = reader[kind](k)
            if frame is not None and len(frame):
                frames.append(frame.assign(iteration=k))
        return pd.concat(frames, ignore_index=True) if frames else None


def _ensure_values(tree: StepTree, config: dict[str, Any]) -> StepTree:
    """Trees are written by the sampler before the value backup: when no node has a value,
    apply the run's ``mc`` or ``bellman`` estimator (``pairs:`` section of config.yaml) so the
    figures can colour by value. PRM values are never recomputed here."""
    if any(node.value is not None for node in tree.nodes):
        return tree
    from sppd_lib.values import bellman_values, mc_values

    pairs_config = config.get("pairs") or {}
    estimator = pairs_config.get("value", "mc")
    if estimator == "mc":
        return mc_values(tree)
    if estimator == "bellman":
        aggregate = pairs_config.get("bellman_aggregate", "max")
        return bellman_values(tree, aggregate, pairs_config.get("bellman_discount", 1.0))
    return tree


def _iterations(path: Path) -> list[int]:
    found = []
    for child in path.iterdir():
        match = re.fullmatch(r"iter_(\d+)", child.name)
        if match and child.is_dir():
            found.append(int(match.group(1)))
    return sorted(found)


def summary_from_evals(run_path: Path, iterations: Iterable[int]) -> pd.DataFrame:
    """pass@1 rows from each ``iter_<k>/eval.parquet``: the summary of a run still going."""
    rows = []
    for k in iterations:
        evals = _read_parquet(run_path / f"iter_{k}" / "eval.parquet")
        if evals is None or not len(evals):
            continue
        for benchmark, group in evals.groupby("benchmark", sort=False):
            correct, total = int(group["correct"].sum()), len(group)
            low, high = wilson_interval(correct, total)
            rows.append([k, benchmark, "pass@1", correct / total, total, correct, low, high])
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def resolve_run_dir(run_dir: str | os.PathLike[str] | None) -> Path:
    """``run_dir`` itself, or for ``None`` the most recently changed run under ``runs/`` or
    ``../runs/`` (so a notebook opened in ``notebooks/`` finds the latest run)."""
    if run_dir is not None:
        return Path(run_dir)
    for root in (Path("runs"), Path("../runs")):
        if root.is_dir():
            candidates = [p for p in root.iterdir() if (p / "config.yaml").is_file()]
            if candidates:
                return max(candidates, key=lambda p: p.stat().st_mtime)
    raise RunNotFoundError("no run directory given and none with a config.yaml under runs/")


def load_run(run_dir: str | os.PathLike[str] | None) -> Run:
    """Read a run directory's config and summary; the rest is read on demand.

    Raises :class:`RunNotFoundError` when the directory is missing or holds no run file.
    The summary falls back to pass@1 of the ``eval.parquet`` files while ``summary.parquet``
    is not written yet.
    """
    path = resolve_run_dir(run_dir)
    if not path.is_dir():
        raise RunNotFoundError(f"run directory not found: {path}")
    iterations = _iterations(path)
    config_path, summary_path = path / "config.yaml", path / "summary.parquet"
    if not (iterations or config_path.is_file() or summary_path.is_file()):
        raise RunNotFoundError(
            f"{path} is not a run directory (no config.yaml, summary.parquet or iter_<k>/)"
        )
    config = (yaml.safe_load(config_path.read_text()) or {}) if config_path.is_file() else {}
    summary = _read_parquet(summary_path)
    if summary is None:
        summary = summary_from_evals(path, iterations)
    iterations = sorted(set(iterations) | {int(k) for k in summary["iteration"]})
    run_id = str(config.get("run_id") or path.resolve().name)
    return Run(path, run_id, config, summary, iterations)


# ---------------------------------------------------------------------------------------
# Shared figure helpers
# ---------------------------------------------------------------------------------------


def empty_figure(title: str, message: str, height: int = 260) -> go.Figure:
    """A figure without traces that says why there is nothing to draw."""
    figure = go.Figure()
    figure.add_annotation(
        text=message,
        x=0.5,
        y=0.5,
        xref="paper",
        yref="paper",
        showarrow=False,
        font={"size": 14, "color": "#555"},
    )
    figure.update_layout(
        title=title,
        template=TEMPLATE,
        height=height,
        xaxis={"visible": False},
        yaxis={"visible": False},
        meta={"empty": True},
    )
    return figure


def is_empty_figure(figure: go.Figure) -> bool:
    """True for a figure made by :func:`empty_figure`."""
    return isinstance(figure.layout.meta, dict) and bool(figure.layout.meta.get("empty"))


def _style(figure: go.Figure, title: str, height: int = 420) -> go.Figure:
    figure.update_layout(
        title=title,
        template=TEMPLATE,
        height=height,
        margin={"l": 60, "r": 30, "t": 80, "b": 50},
        hoverlabel={"align": "left"},
    )
    return figure


def _note(figure: go.Figure, text: str, row: int, col: int) -> None:
    """A 'no data' note in the middle of one empty subplot."""
    figure.add_annotation(
        text=text, showarrow=False, row=row, col=col, x=0.5, y=0.5, font={"color": "#777"}
    )
    figure.update_xaxes(range=[0, 1], visible=False, row=row, col=col)
    figure.update_yaxes(range=[0, 1], visible=False, row=row, col=col)


def _colour(index: int) -> str:
    return COLOURS[index % len(COLOURS)]


def _hover(text: str, limit: int = 400, width: int = 80) -> str:
    """Plain text as hover HTML: truncated, escaped, wrapped (plotly does not wrap)."""
    text = text.strip()
    text = text if len(text) <= limit else text[:limit] + " …"
    lines = []
    for line in text.splitlines() or [""]:
        lines.extend(textwrap.wrap(line, width) or [""])
    return "<br>".join(html.escape(line) for line in lines)


def _subsample(frame: pd.DataFrame, limit: int = MAX_POINTS) -> pd.DataFrame:
    return frame if len(frame) <= limit else frame.sample(limit, random_state=0)


# ---------------------------------------------------------------------------------------
# One step tree
# ---------------------------------------------------------------------------------------


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
        lines += [f"problem {html.escape(tree.problem.id)}", _hover(tree.problem.question)]
        lines.append(f"gold: {html.escape(tree.problem.answer)}")
    else:
        lines.append(
            f"mean log-prob {node.mean_logprob:.3f} · {len(node.token_ids)} tokens"
            f" · ends: {node.terminal_reason or node.finish_reason}"
        )
        if "mc_total" in node.info:
            lines.append(f"mc: {node.info['mc_correct']}/{node.info['mc_total']} correct leaves")
        if node.terminal:
            lines.append(f"answer: {html.escape(str(node.answer))} · correct: {node.correct}")
        lines.append(_hover(node.text))
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
    for column, name, colour in (
        ("chosen_node", "chosen step", CHOSEN_COLOUR),
        ("rejected_node", "rejected step", REJECTED_COLOUR),
    ):
        edges = [
            (int(parent), int(node))
            for parent, node in zip(pairs["parent_node"], pairs[column], strict=True)
            if int(node) in shown
        ]
        if edges:
            traces.append(
                _edge_trace(layout, sorted(set(edges)), name, skip=1, color=colour, width=3.5)
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
        answers = [str(n.answer)[:12] if n.is_complete else "" for n in nodes]
        traces.append(
            go.Scatter(
                x=[layout.x[n.id] for n in nodes],
                y=[layout.y[n.id] for n in nodes],
                mode="markers+text" if any(answers) else "markers",
                text=answers,
                textposition="middle right",
                textfont={"size": 10, "color": "#555"},
                name=kind if valued else f"{kind} (no value)",
                marker=marker,
                hovertext=[_node_hover(tree, n, roles.get(n.id, [])) for n in nodes],
                hoverinfo="text",
            )
        )
    return traces


def _tree_title(tree: StepTree, pairs: pd.DataFrame | None) -> tuple[str, str]:
    stats = tree.stats()
    question = tree.problem.question.replace("\n", " ")
    question = question if len(question) <= 90 else question[:90] + " …"
    subtitle = (
        f"{stats.nodes} steps · {stats.complete_paths} complete paths "
        f"({stats.correct_paths} correct) · {0 if pairs is None else len(pairs)} pairs "
        f"· gold {tree.problem.answer}"
    )
    return f"{html.escape(tree.problem.id)}: {html.escape(question)}", html.escape(subtitle)


def tree_figure(
    tree: StepTree,
    pairs_df: pd.DataFrame | None = None,
    max_depth: int | None = None,
    min_value: float | None = None,
) -> go.Figure:
    """One problem's step tree: x = depth, y = leaf order.

    Node colour is the value; the symbol tells the kind (diamond problem, circle step, star
    correct answer, x wrong answer, square a path that ended without an answer); the hover
    shows the step text, mean log-prob, value and the pairs the step is in. Edges from a
    prefix to the chosen / rejected step of a pair are green / red. ``pairs_df`` may hold the
    pairs of many trees (those of this tree are picked); ``max_depth`` and ``min_value`` hide
    deeper steps and steps (with their subtrees) of lower value.
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
    title, subtitle = _tree_title(tree, pairs_df)
    _style(figure, title, height=int(min(2000, max(420, 24 * layout.leaves + 200))))
    figure.update_layout(
        title={"text": title, "subtitle": {"text": subtitle}},
        coloraxis={
            "colorscale": "Viridis",
            "cmin": 0.0,
            "cmax": 1.0,
            "colorbar": {"title": {"text": "value"}, "thickness": 14, "len": 0.8},
        },
        xaxis={"title": {"text": "depth (step)"}, "dtick": 1, "zeroline": False},
        yaxis={"visible": False, "autorange": "reversed"},
        title_y=0.98,
        title_yanchor="top",
        title_yref="container",
        legend={"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"},
        margin={"t": 120, "b": 50},
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
        figure = tree_figure(tree, run.pairs(k))
        subtitle = f"iteration {k}, {why} · {figure.layout.title.subtitle.text}"
        figure.update_layout(title_subtitle_text=subtitle)
        figures.append(figure)
    return figures


# ---------------------------------------------------------------------------------------
# The interactive explorer
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# Pairs and margins
# ---------------------------------------------------------------------------------------


def margin_histograms(run: Run) -> go.Figure:
    """Histograms of Δv = v_w − v_l of the pairs and of the loss margin the trainer used
    (γ·Δv, fixed or 0: a training setting, read from ``pair_log.parquet``) per iteration."""
    pairs = run.stacked("pairs")
    title = "Value gap and margin of the pairs"
    if pairs is None:
        return empty_figure(title, f"Run {run.run_id} has no pairs yet (no pairs.parquet).")
    figure = make_subplots(
        rows=1, cols=2, subplot_titles=("Δv = v(chosen) − v(rejected)", "loss margin (trained)")
    )
    pair_log = run.stacked("pair_log")
    margins = None
    if pair_log is not None and "value_margin" in pair_log.columns:
        trained = pair_log[pair_log.get("phase", "sppd") == "sppd"]
        margins = trained.drop_duplicates(["iteration", "pair_index"])
    panels = ((1, pairs, "delta_value"), (2, margins, "value_margin"))
    for col, frame, column in panels:
        if frame is None or not len(frame):
            _note(figure, "not trained yet (no pair_log.parquet)", 1, col)
            continue
        for index, (k, group) in enumerate(frame.groupby("iteration")):
            figure.add_trace(
                go.Histogram(
                    x=group[column],
                    name=f"iteration {k} ({len(group)} pairs)",
                    legendgroup=str(k),
                    showlegend=col == 1,
                    marker_color=_colour(index),
                    # 0.05 bins for the usual Δv in (0.5, 1]; automatic for tiny gaps
                    xbins={"size": 0.05} if np.ptp(frame[column]) > 0.2 else None,
                ),
                row=1,
                col=col,
            )
    figure.update_layout(barmode="group", bargap=0.1)
    figure.update_yaxes(title_text="pairs", col=1)
    return _style(figure, title)


def pairs_by_depth(run: Run) -> go.Figure:
    """Pairs per depth of the branching step, one bar group per iteration, and their mean Δv."""
    pairs = run.stacked("pairs")
    title = "Pairs by depth of the branching step"
    if pairs is None:
        return empty_figure(title, f"Run {run.run_id} has no pairs yet (no pairs.parquet).")
    figure = make_subplots(rows=1, cols=2, subplot_titles=("pairs", "mean Δv"))
    for index, (k, group) in enumerate(pairs.groupby("iteration")):
        by_depth = group.groupby("depth")["delta_value"].agg(["size", "mean"]).reset_index()
        common = {"legendgroup": str(k), "marker_color": _colour(index)}
        figure.add_trace(
            go.Bar(x=by_depth["depth"], y=by_depth["size"], name=f"iteration {k}", **common),
            row=1,
            col=1,
        )
        figure.add_trace(
            go.Bar(x=by_depth["depth"], y=by_depth["mean"], showlegend=False, **common),
            row=1,
            col=2,
        )
    figure.update_xaxes(title_text="depth", dtick=1)
    figure.update_layout(barmode="group")
    return _style(figure, title)


def reward_vs_value_margin(run: Run) -> go.Figure:
    """Left: per trained pair, the implicit reward margin β·h against the loss margin; a pair
    above the diagonal has a positive loss argument. Right: both margins (means over the
    batch) over the optimizer steps of the training log."""
    title = "Implicit reward margin β·h against the value margin"
    pair_log, log = run.stacked("pair_log"), run.stacked("train_log")
    if pair_log is None and log is None:
        return empty_figure(title, f"Run {run.run_id} has no training log yet.")
    figure = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("per pair (every time it was trained on)", "batch means over steps"),
        horizontal_spacing=0.12,
    )
    _pair_scatter(figure, pair_log)
    _margin_lines(figure, log)
    return _style(figure, title, height=460)


def _pair_scatter(figure: go.Figure, pair_log: pd.DataFrame | None) -> None:
    if pair_log is None:
        _note(figure, "no pair_log.parquet", 1, 1)
        return
    points = _subsample(pair_log)
    for index, (k, group) in enumerate(points.groupby("iteration")):
        figure.add_trace(
            go.Scatter(
                x=group["value_margin"],
                y=group["reward_margin"],
                mode="markers",
                name=f"iteration {k} pairs",
                marker={"color": _colour(index), "size": 5, "opacity": 0.5},
                customdata=group[["step", "pair_index", "delta_value"]].to_numpy(),
                hovertemplate="step %{customdata[0]} · pair %{customdata[1]}<br>"
                "Δv %{customdata[2]:.2f}<br>value margin %{x:.3f}<br>β·h %{y:.3f}<extra></extra>",
            ),
            row=1,
            col=1,
        )
    low = float(min(points["value_margin"].min(), points["reward_margin"].min(), 0.0))
    high = float(max(points["value_margin"].max(), points["reward_margin"].max(), 0.0))
    figure.add_trace(
        go.Scatter(
            x=[low, high],
            y=[low, high],
            mode="lines",
            name="β·h = margin",
            line={"color": "#999", "dash": "dot"},
            hoverinfo="skip",
        ),
        row=1,
        col=1,
    )
    figure.update_xaxes(title_text="value margin (loss margin)", row=1, col=1)
    figure.update_yaxes(title_text="β·h", row=1, col=1)


def _training_x(log: pd.DataFrame) -> pd.DataFrame:
    """A run-wide x: steps of each consecutive (iteration, phase) segment laid end to end."""
    log = log.copy()
    segment = (log[["iteration", "phase"]] != log[["iteration", "phase"]].shift()).any(axis=1)
    log["segment"] = segment.cumsum()
    offset, x = 0.0, []
    for _, group in log.groupby("segment", sort=True):
        steps = group["step"].astype(float)
        x.extend(offset + steps - steps.min() + 1)
        offset += steps.max() - steps.min() + 1
    log["x"] = x
    return log


def _margin_lines(figure: go.Figure, log: pd.DataFrame | None) -> None:
    columns = {"reward_margin", "value_margin"}
    if log is None or not columns <= set(log.columns) or log[list(columns)].isna().all().all():
        _note(figure, "no reward margins in log.jsonl", 1, 2)
        return
    log = _training_x(log)
    log = log[log["phase"] != "sft"]
    for column, name, dash in (
        ("reward_margin", "β·h", "solid"),
        ("value_margin", "margin", "dot"),
    ):
        for (k, phase), group in log.groupby(["iteration", "phase"], sort=False):
            figure.add_trace(
                go.Scatter(
                    x=group["x"],
                    y=group[column],
                    mode="lines",
                    name=f"{name} · iter {k} {phase}",
                    line={"color": PHASE_COLOURS.get(phase, "#444"), "dash": dash},
                ),
                row=1,
                col=2,
            )
    figure.update_xaxes(title_text="optimizer step (run-wide)", row=1, col=2)


# ---------------------------------------------------------------------------------------
# Training curves and tree statistics
# ---------------------------------------------------------------------------------------

TRAINING_PANELS = [  # (title, columns)
    ("loss", ["loss"]),
    ("reward accuracy", ["reward_accuracy"]),
    ("margins: β·h and loss margin", ["reward_margin", "value_margin"]),
    ("chosen / rejected reward", ["chosen_reward", "rejected_reward"]),
    ("gradient norm", ["grad_norm"]),
    ("learning rate", ["learning_rate"]),
]


def training_curves(run: Run) -> go.Figure:
    """Loss, reward accuracy, margins, rewards, gradient norm and learning rate over the
    optimizer steps of every iteration and phase (SFT, DPO, SPPD), laid end to end."""
    title = "Training curves"
    log = run.stacked("train_log")
    if log is None or "step" not in log.columns:
        return empty_figure(title, f"Run {run.run_id} has no training log yet (train/log.jsonl).")
    if "phase" not in log.columns:
        log["phase"] = "train"
    log = _training_x(log)
    figure = make_subplots(
        rows=2, cols=3, subplot_titles=[t for t, _ in TRAINING_PANELS], vertical_spacing=0.16
    )
    seen: set[str] = set()
    for index, (_, columns) in enumerate(TRAINING_PANELS):
        row, col = divmod(index, 3)
        present = [c for c in columns if c in log.columns and log[c].notna().any()]
        if not present:
            _note(figure, "not logged", row + 1, col + 1)
        for column, dash in zip(present, ("solid", "dot"), strict=False):
            for (k, phase), group in log.groupby(["iteration", "phase"], sort=False):
                name = f"iter {k} {phase}"
                figure.add_trace(
                    go.Scatter(
                        x=group["x"],
                        y=group[column],
                        mode="lines",
                        name=name,
                        legendgroup=name,
                        showlegend=name not in seen,
                        line={"color": PHASE_COLOURS.get(phase, "#444"), "dash": dash},
                        hovertemplate=f"{column}: %{{y:.4g}}<br>{name} step %{{x}}<extra></extra>",
                    ),
                    row=row + 1,
                    col=col + 1,
                )
                seen.add(name)
    for _, group in log.groupby("iteration"):
        figure.add_vline(x=group["x"].min() - 0.5, line={"color": "#ccc", "dash": "dot"})
    return _style(figure, title, height=620)


def tree_stats_figure(run: Run) -> go.Figure:
    """Per iteration: complete paths per tree (correct and wrong), pairs and trees with pairs,
    and tokens generated by the tree sampler against a flat sampler for the same paths."""
    title = "Self-sampled trees per iteration"
    rows = []
    for k in run.tree_iterations():
        stats = run.tree_stats(k)
        rows.append(
            {
                "iteration": k,
                "trees": len(stats),
                "correct paths": stats["correct_paths"].sum() / max(len(stats), 1),
                "wrong paths": (stats["complete_paths"] - stats["correct_paths"]).sum()
                / max(len(stats), 1),
                "pairs": int(stats["pairs"].sum()),
                "trees with pairs": int((stats["pairs"] > 0).sum()),
                "tree tokens": int(stats["tokens_generated"].sum()),
                "flat tokens": int(stats["flat_tokens"].sum()),
            }
        )
    if not rows:
        return empty_figure(title, f"Run {run.run_id} has no trees yet (trees.jsonl.gz).")
    table = pd.DataFrame(rows)
    x = [f"iter {k}" for k in table["iteration"]]
    figure = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=("complete paths per tree", "pairs", "tokens (tree vs flat sampling)"),
    )
    bars = [
        (1, "correct paths", CHOSEN_COLOUR),
        (1, "wrong paths", REJECTED_COLOUR),
        (2, "pairs", _colour(0)),
        (2, "trees with pairs", _colour(1)),
        (3, "tree tokens", _colour(2)),
        (3, "flat tokens", _colour(4)),
    ]
    for col, column, colour in bars:
        figure.add_trace(
            go.Bar(x=x, y=table[column], name=column, marker_color=colour), row=1, col=col
        )
    figure.update_layout(barmode="group")
    figure.update_traces(selector={"name": "correct paths"}, offsetgroup="paths")
    figure.update_traces(
        selector={"name": "wrong paths"}, offsetgroup="paths", base=table["correct paths"]
    )
    return _style(figure, title)


# ---------------------------------------------------------------------------------------
# Accuracy and comparisons
# ---------------------------------------------------------------------------------------


def _metric_order(metrics: Iterable[str]) -> list[str]:
    """pass, maj, vote, best (any N), then the others, alphabetically."""
    kinds = [m.split("@")[0] for m in METRIC_ORDER]

    def rank(metric: str) -> tuple[int, str]:
        kind = metric.split("@")[0]
        return (kinds.index(kind) if kind in kinds else len(kinds), metric)

    return sorted(set(metrics), key=rank)


def _facets(benchmarks: Sequence[str], height: int = 380) -> tuple[go.Figure, int]:
    cols = min(3, len(benchmarks))
    rows = math.ceil(len(benchmarks) / cols)
    figure = make_subplots(rows=rows, cols=cols, subplot_titles=list(benchmarks), shared_yaxes=True)
    return figure, rows * height


def _dodge(index: int, count: int, width: float = 0.06) -> float:
    """x offset of line ``index`` of ``count`` so error bars at one iteration do not overlap."""
    return (index - (count - 1) / 2) * width


def _accuracy_trace(
    frame: pd.DataFrame, name: str, colour: str, show: bool, offset: float = 0.0
) -> go.Scatter:
    frame = frame.sort_values("iteration")
    return go.Scatter(
        x=frame["iteration"] + offset,
        y=frame["value"],
        mode="lines+markers",
        name=name,
        legendgroup=name,
        showlegend=show,
        line={"color": colour},
        error_y={
            "type": "data",
            "symmetric": False,
            "array": (frame["ci95_high"] - frame["value"]).clip(lower=0),
            "arrayminus": (frame["value"] - frame["ci95_low"]).clip(lower=0),
            "thickness": 1,
            "width": 3,
        },
        customdata=frame[["iteration", "correct", "n"]].to_numpy(),
        hovertemplate=f"{name}<br>iteration %{{customdata[0]}}: %{{y:.1%}} "
        "(%{customdata[1]}/%{customdata[2]})<extra></extra>",
    )


def accuracy_figure(run_or_summary: Run | pd.DataFrame) -> go.Figure:
    """Accuracy per iteration, one panel per benchmark and one line per metric (pass@1,
    maj@8, vote@8, best@8), with 95% Wilson intervals."""
    summary = run_or_summary.summary if isinstance(run_or_summary, Run) else run_or_summary
    title = "Accuracy per iteration (95% CI)"
    if summary is None or not len(summary):
        return empty_figure(title, "Nothing evaluated yet (no summary.parquet or eval.parquet).")
    return _accuracy_lines(summary, "metric", _metric_order(summary["metric"]), title)


def _accuracy_lines(
    summary: pd.DataFrame, line_column: str, lines: Sequence[str], title: str
) -> go.Figure:
    """One panel per benchmark, one line per value of ``line_column`` (a metric or a run)."""
    benchmarks = list(dict.fromkeys(summary["benchmark"]))
    figure, height = _facets(benchmarks)
    for b_index, benchmark in enumerate(benchmarks):
        row, col = divmod(b_index, min(3, len(benchmarks)))
        for l_index, line in enumerate(lines):
            frame = summary[(summary["benchmark"] == benchmark) & (summary[line_column] == line)]
            if len(frame):
                offset = _dodge(l_index, len(lines))
                trace = _accuracy_trace(frame, line, _colour(l_index), b_index == 0, offset)
                figure.add_trace(trace, row=row + 1, col=col + 1)
    figure.update_yaxes(tickformat=".0%", rangemode="tozero")
    figure.update_xaxes(dtick=1, title_text="iteration")
    return _style(figure, title, height=height + 60)


def summary_table(run: Run) -> pd.DataFrame:
    """The summary as text: one row per (benchmark, metric), one column per iteration, cells
    like ``"31.2% [22–42] 25/80"`` (accuracy, 95% interval, correct / problems)."""
    summary = run.summary
    if not len(summary):
        return pd.DataFrame({"note": ["nothing evaluated yet"]}, index=[""])
    cells = summary.assign(
        cell=[
            f"{r.value:.1%} [{100 * r.ci95_low:.0f}–{100 * r.ci95_high:.0f}] {r.correct}/{r.n}"
            for r in summary.itertuples()
        ],
        column=[f"iteration {k}" for k in summary["iteration"]],
    )
    table = cells.pivot_table(
        index=["benchmark", "metric"], columns="column", values="cell", aggfunc="first"
    )
    order = _metric_order(summary["metric"])
    rows = sorted(table.index, key=lambda key: (key[0], order.index(key[1])))
    columns = sorted(table.columns, key=lambda c: int(c.split()[-1]))
    table = table.reindex(index=rows, columns=columns)
    table.columns.name = None
    return table


def change_table(run: Run) -> pd.DataFrame:
    """pass@1 of the last evaluated iteration against iteration 0, problem by problem: per
    benchmark the accuracies, problems gained (wrong -> right) and lost (right -> wrong) and
    the exact McNemar p-value (:func:`sppd_lib.loop.change_since_start`)."""
    from sppd_lib.loop import change_since_start  # loads transformers: only when asked

    change = change_since_start(run.path)
    if not len(change):
        return pd.DataFrame({"note": ["needs iteration 0 and a later evaluation"]}, index=[""])
    return pd.DataFrame(
        {
            "iterations": [f"0 → {k}" for k in change["iteration"]],
            "problems": change["problems"].to_numpy(),
            "pass@1": [
                f"{a:.1%} → {b:.1%}" for a, b in zip(change["before"], change["after"], strict=True)
            ],
            "gained": change["gained"].to_numpy(),
            "lost": change["lost"].to_numpy(),
            "McNemar p": [f"{p:.3g}" for p in change["p_value"]],
        },
        index=change["benchmark"].to_numpy(),
    )


def compare_runs_figure(runs: Sequence[Run], metric: str = "pass@1") -> go.Figure:
    """``metric`` per iteration of several runs: one panel per benchmark, one line per run."""
    title = f"{metric} per iteration, by run (95% CI)"
    frames = [r.summary[r.summary["metric"] == metric].assign(run=r.run_id) for r in runs]
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_figure(title, f"No run has {metric} results yet.")
    summary = pd.concat(frames, ignore_index=True)
    return _accuracy_lines(summary, "run", list(dict.fromkeys(summary["run"])), title)


def final_scores_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Per run, benchmark and metric: the first and last evaluated iteration's score and the
    change, with the last one's 95% interval."""
    rows = []
    for run in runs:
        for (benchmark, metric), group in run.summary.groupby(["benchmark", "metric"]):
            group = group.sort_values("iteration")
            first, last = group.iloc[0], group.iloc[-1]
            rows.append(
                {
                    "run": run.run_id,
                    "benchmark": benchmark,
                    "metric": metric,
                    "start": first["value"],
                    "final": last["value"],
                    "change": last["value"] - first["value"],
                    "final iteration": int(last["iteration"]),
                    "ci95": f"{last['ci95_low']:.1%}–{last['ci95_high']:.1%}",
                    "n": int(last["n"]),
                }
            )
    columns = ["run", "benchmark", "metric", "start", "final", "change", "final iteration"]
    if not rows:
        return pd.DataFrame(columns=[*columns, "ci95", "n"])
    table = pd.DataFrame(rows)
    table["metric_rank"] = [_metric_order(table["metric"]).index(m) for m in table["metric"]]
    table = table.sort_values(["benchmark", "metric_rank", "run"]).drop(columns="metric_rank")
    return table.reset_index(drop=True)


def final_scores_view(runs: Sequence[Run]) -> Any:
    """:func:`final_scores_table` for display: percentages, signed changes, no index."""
    table = final_scores_table(runs)
    formats = {"start": "{:.1%}", "final": "{:.1%}", "change": "{:+.1%}"}
    return table.style.format(formats).hide(axis="index")


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_diff_table(runs: Sequence[Run]) -> pd.DataFrame:
    """The config keys (dotted, e.g. ``pairs.gamma``) whose values differ between runs."""
    flat = {run.run_id: _flatten(run.config) for run in runs}
    keys = sorted({key for values in flat.values() for key in values} - {"run_id"})
    table = pd.DataFrame(
        {run_id: [repr(values.get(key, "–")) for key in keys] for run_id, values in flat.items()},
        index=pd.Index(keys, name="config key"),
    )
    if not len(table):
        return table
    return table[table.nunique(axis=1) > 1]


# ---------------------------------------------------------------------------------------
# Notebook setup
# ---------------------------------------------------------------------------------------


class _OfflineRenderer(pio.base_renderers.MimetypeRenderer):
    """The plotly mimetype (for JupyterLab) plus ``text/html`` that draws with the plotly.js
    embedded by :func:`setup_notebook`: no CDN, no MathJax, so exports render offline."""

    def to_mimebundle(self, fig_dict: dict[str, Any]) -> dict[str, Any]:
        bundle = pio.base_renderers.PlotlyRenderer(config={"displaylogo": False})
        html_snippet = pio.to_html(
            fig_dict,
            config={"displaylogo": False},
            include_plotlyjs=False,
            include_mathjax=False,
            full_html=False,
            default_width="100%",
            validate=False,
        )
        return {**bundle.to_mimebundle(fig_dict), "text/html": html_snippet}


def setup_notebook() -> None:
    """Make figures render in JupyterLab and in offline HTML exports of the notebook.

    Registers the ``sppd`` plotly renderer as the default and outputs plotly.js once (an
    invisible ``<script>``), so nbconvert's HTML holds everything it needs.
    """
    from IPython.display import HTML, display
    from plotly.offline import get_plotlyjs

    pio.renderers["sppd"] = _OfflineRenderer()
    pio.renderers.default = "sppd"
    pio.templates.default = TEMPLATE
    script = "window.PlotlyConfig = {MathJaxConfig: 'local'};\n" + get_plotlyjs()
    display(HTML(f'<script type="text/javascript">{script}</script>'))
