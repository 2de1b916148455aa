"""Accuracy figures and tables: accuracy per iteration with 95% intervals, the summary as text,
the change since iteration 0, several runs side by side and their config differences."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sppd_lib.metrics import paired_change
from sppd_lib.viz.run import Run
from sppd_lib.viz.style import (
    empty_figure,
    metric_order,
    series_colour,
    series_symbol,
    style_figure,
)

__all__ = [
    "accuracy_figure",
    "change_table",
    "compare_runs_figure",
    "config_diff_table",
    "final_scores_table",
    "final_scores_view",
    "summary_table",
]


def _facets(
    benchmarks: Sequence[str], height: int = 380, titles: Sequence[str] | None = None
) -> tuple[go.Figure, int]:
    cols = min(3, len(benchmarks))
    rows = math.ceil(len(benchmarks) / cols)
    figure = make_subplots(
        rows=rows, cols=cols, subplot_titles=list(titles or benchmarks), shared_yaxes=True
    )
    return figure, rows * height


def _panel_title(summary: pd.DataFrame, benchmark: str) -> str:
    """``gsm8k (n = 8)``: the problems behind the panel (a range if iterations differ)."""
    n = summary.loc[summary["benchmark"] == benchmark, "n"]
    if not len(n):
        return benchmark
    low, high = int(n.min()), int(n.max())
    return f"{benchmark} (n = {low})" if low == high else f"{benchmark} (n = {low}–{high})"


def _dodge(index: int, count: int, width: float = 0.06) -> float:
    """x offset of line ``index`` of ``count`` so error bars at one iteration do not overlap."""
    return (index - (count - 1) / 2) * width


def _accuracy_trace(
    frame: pd.DataFrame,
    name: str,
    colour: str,
    show: bool,
    offset: float = 0.0,
    symbol: str = "circle",
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
        marker={"symbol": symbol, "size": 8},
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
    return _accuracy_lines(summary, "metric", metric_order(summary["metric"]), title)


def _accuracy_lines(
    summary: pd.DataFrame, line_column: str, lines: Sequence[str], title: str
) -> go.Figure:
    """One panel per benchmark, one line per value of ``line_column`` (a metric or a run)."""
    benchmarks = list(dict.fromkeys(summary["benchmark"]))
    figure, height = _facets(benchmarks, titles=[_panel_title(summary, b) for b in benchmarks])
    for b_index, benchmark in enumerate(benchmarks):
        row, col = divmod(b_index, min(3, len(benchmarks)))
        for l_index, line in enumerate(lines):
            frame = summary[(summary["benchmark"] == benchmark) & (summary[line_column] == line)]
            if len(frame):
                offset = _dodge(l_index, len(lines))
                trace = _accuracy_trace(
                    frame,
                    line,
                    series_colour(l_index),
                    b_index == 0,
                    offset,
                    series_symbol(l_index),
                )
                figure.add_trace(trace, row=row + 1, col=col + 1)
    figure.update_yaxes(tickformat=".0%", rangemode="tozero")
    figure.update_yaxes(title_text="accuracy", col=1)
    figure.update_xaxes(dtick=1, title_text="iteration")
    return style_figure(figure, title, height=height + 60)


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
    order = metric_order(summary["metric"])
    rows = sorted(table.index, key=lambda key: (key[0], order.index(key[1])))
    columns = sorted(table.columns, key=lambda c: int(c.split()[-1]))
    table = table.reindex(index=rows, columns=columns)
    table.columns.name = None
    return table


def change_table(run: Run) -> pd.DataFrame:
    """pass@1 of the last evaluated iteration against iteration 0, problem by problem: per
    benchmark the accuracies, problems gained (wrong -> right) and lost (right -> wrong) and
    the exact McNemar p-value (:meth:`Run.change_since_start`)."""
    change = run.change_since_start()
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
    change, with the counts behind both (``start correct``, ``final correct``: k/n), the 95%
    interval of the last one (``final iteration``) and, for greedy pass@1, the problems gained
    and lost and the exact McNemar p of the change (a tiny benchmark's "+12.5%" is one
    problem, and its p says so)."""
    rows = []
    for run in runs:
        for (benchmark, metric), group in run.summary.groupby(["benchmark", "metric"]):
            group = group.sort_values("iteration")
            first, last = group.iloc[0], group.iloc[-1]
            gained, lost, p_value = _paired(run, int(first["iteration"]), int(last["iteration"]),
                                            str(benchmark), str(metric))  # fmt: skip
            rows.append(
                {
                    "run": run.run_id,
                    "benchmark": benchmark,
                    "metric": metric,
                    "start": first["value"],
                    "final": last["value"],
                    "change": last["value"] - first["value"],
                    "final iteration": int(last["iteration"]),
                    "start correct": f"{int(first['correct'])}/{int(first['n'])}",
                    "final correct": f"{int(last['correct'])}/{int(last['n'])}",
                    "final 95% CI": f"iteration {int(last['iteration'])}: "
                    f"{last['ci95_low']:.1%}–{last['ci95_high']:.1%}",
                    "gained / lost": "–" if gained is None else f"+{gained} −{lost}",
                    "McNemar p": p_value,
                    "n": int(last["n"]),
                }
            )
    columns = ["run", "benchmark", "metric", "start", "final", "change", "final iteration"]
    extra = ["start correct", "final correct", "final 95% CI", "gained / lost", "McNemar p", "n"]
    if not rows:
        return pd.DataFrame(columns=[*columns, *extra])
    table = pd.DataFrame(rows)
    table["metric_rank"] = [metric_order(table["metric"]).index(m) for m in table["metric"]]
    table = table.sort_values(["benchmark", "metric_rank", "run"]).drop(columns="metric_rank")
    return table.reset_index(drop=True)


def _paired(
    run: Run, first: int, last: int, benchmark: str, metric: str
) -> tuple[int | None, int | None, float]:
    """Greedy pass@1 problems gained and lost between two iterations and the exact McNemar
    p, from their ``eval.parquet`` (``None, None, NaN`` for other metrics or without both)."""
    before, after = run.eval(first), run.eval(last)
    if metric != "pass@1" or first == last or before is None or after is None:
        return None, None, float("nan")
    change = paired_change(before, after).set_index("benchmark")
    if benchmark not in change.index:
        return None, None, float("nan")
    row = change.loc[benchmark]
    return int(row["gained"]), int(row["lost"]), float(row["p_value"])


def final_scores_view(runs: Sequence[Run]) -> Any:
    """:func:`final_scores_table` for display: percentages, signed changes, no index."""
    table = final_scores_table(runs)
    formats = {"start": "{:.1%}", "final": "{:.1%}", "change": "{:+.1%}", "McNemar p": "{:.2g}"}
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
