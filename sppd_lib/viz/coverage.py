"""Coverage: pass@k against k per iteration, from the trees (the training prompts) and from the
sampled evaluation when it ran (``eval_samples.parquet``), so a reader sees whether training
sharpens pass@1 at the cost of pass@k.

pass@k is the unbiased estimator of :func:`sppd_lib.metrics.pass_at_k` averaged over problems;
a problem with fewer than k samples is left out of that k (the hover gives the problems
counted). The paths of one tree share prefixes, so they are not independent draws: the tree
curve measures what the sampler's tree found, and is a coverage of the tree, not of k fresh
samples.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sppd_lib.metrics import pass_at_k
from sppd_lib.viz.run import Run
from sppd_lib.viz.style import empty_figure, series_colour, series_symbol, style_figure

__all__ = ["COVERAGE_COLUMNS", "coverage_frame", "pass_at_k_figure"]

#: Columns of :func:`coverage_frame`.
COVERAGE_COLUMNS = ["source", "iteration", "k", "pass_at_k", "problems", "samples"]

TREES = "trees (training prompts)"


def _ks(most: int) -> list[int]:
    """1, 2, 4, ... up to ``most``, and ``most`` itself."""
    ks, k = [], 1
    while k < most:
        ks.append(k)
        k *= 2
    return [*ks, most] if most >= 1 else []


def _curve(counts: pd.DataFrame, source: str, iteration: int) -> list[dict[str, object]]:
    """``counts``: one row per problem with ``n`` samples and ``c`` correct."""
    rows: list[dict[str, object]] = []
    if not len(counts):
        return rows
    for k in _ks(int(counts["n"].max())):
        eligible = counts[counts["n"] >= k]
        values = [
            pass_at_k(int(n), int(c), k) for n, c in zip(eligible["n"], eligible["c"], strict=True)
        ]
        rows.append(
            {
                "source": source,
                "iteration": iteration,
                "k": k,
                "pass_at_k": float(sum(values) / len(values)),
                "problems": len(values),
                "samples": int(eligible["n"].sum()),
            }
        )
    return rows


def _tree_counts(run: Run, iteration: int) -> pd.DataFrame:
    """Per tree: ``n`` finished paths (leaves that ended: an answer, EOS or a limit) and
    ``c`` of them graded correct. Leaves never expanded to an end are not samples."""
    rows = []
    for tree in run.trees(iteration):
        ended = [leaf for leaf in tree.leaves() if leaf.terminal]
        rows.append({"n": len(ended), "c": sum(bool(leaf.correct) for leaf in ended)})
    frame = pd.DataFrame(rows, columns=["n", "c"])
    return frame[frame["n"] > 0]


def coverage_frame(run: Run) -> pd.DataFrame:
    """pass@k per (source, iteration, k): ``source`` is :data:`TREES` or an evaluation
    benchmark (``<benchmark> (eval samples)``); ``problems`` the problems with at least k
    samples, ``samples`` their samples. Columns :data:`COVERAGE_COLUMNS`."""
    rows: list[dict[str, object]] = []
    for k in run.tree_iterations():
        rows += _curve(_tree_counts(run, k), TREES, k)
    for k in run.iterations:
        samples = run.eval_samples(k)
        if samples is None or not len(samples):
            continue
        for benchmark, group in samples.groupby("benchmark", sort=True):
            per_problem = group.groupby("problem_id")["correct"].agg(["size", "sum"])
            counts = per_problem.rename(columns={"size": "n", "sum": "c"})
            rows += _curve(counts, f"{benchmark} (eval samples)", k)
    return pd.DataFrame(rows, columns=COVERAGE_COLUMNS)


def pass_at_k_figure(run: Run) -> go.Figure:
    """pass@k against k (log scale), one panel per source (the trees, then each benchmark of
    the sampled evaluation), one line per iteration."""
    title = "Coverage: pass@k per iteration"
    frame = coverage_frame(run)
    if not len(frame):
        return empty_figure(
            title,
            f"Run {run.run_id} has no trees and no sampled evaluation yet "
            "(eval.num_samples > 0 writes eval_samples.parquet).",
        )
    sources = list(dict.fromkeys(frame["source"]))
    figure = make_subplots(rows=1, cols=len(sources), subplot_titles=sources, shared_yaxes=True)
    iterations = sorted(frame["iteration"].unique())
    shown: set[int] = set()
    for col, source in enumerate(sources, start=1):
        for k, group in frame[frame["source"] == source].groupby("iteration"):
            index = iterations.index(k)
            figure.add_trace(
                go.Scatter(
                    x=group["k"],
                    y=group["pass_at_k"],
                    mode="lines+markers",
                    name=f"iteration {k}",
                    legendgroup=str(k),
                    legendrank=int(k),
                    showlegend=k not in shown,
                    line={"color": series_colour(index)},
                    marker={"symbol": series_symbol(index), "size": 8},
                    customdata=group[["problems", "samples"]].to_numpy(),
                    hovertemplate=f"iteration {k}<br>pass@%{{x}} = %{{y:.1%}}<br>"
                    "%{customdata[0]} problems, %{customdata[1]} samples<extra></extra>",
                ),
                row=1,
                col=col,
            )
            shown.add(k)
        figure.update_xaxes(title_text="k", type="log", dtick=0.30103, row=1, col=col)
    figure.update_yaxes(range=[-0.02, 1.02], tickformat=".0%")
    figure.update_yaxes(title_text="pass@k (mean over problems)", row=1, col=1)
    counts = "; ".join(
        f"{source}: {int(group['problems'].max())} problems"
        for source, group in frame.groupby("source", sort=False)
    )
    figure.update_layout(
        title_subtitle_text=f"unbiased estimator, problems with ≥ k samples · {counts}"
    )
    return style_figure(figure, title, height=420)
