"""Figure of value-estimator quality against the exact step checker
(:mod:`sppd_lib.estimator_quality`): a reliability diagram per estimator, and its AUC and
share of false chosen steps in the legend."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from sppd_lib.viz.style import empty_figure, series_colour, series_symbol, style_figure

__all__ = ["estimator_calibration_figure"]


def estimator_calibration_figure(summary: pd.DataFrame, calibration: pd.DataFrame) -> go.Figure:
    """Share of ``true`` steps against the mean value of each value bin, one line per
    estimator (a calibrated estimator lies on the diagonal); the legend carries each
    estimator's AUC and its share of pairs whose chosen step is false. ``summary`` and
    ``calibration`` are :func:`sppd_lib.estimator_quality.estimator_quality`'s tables."""
    title = "Value estimators against exact process truth"
    if summary.empty or calibration.empty:
        return empty_figure(title, "No step with an arithmetic claim: nothing to measure.")
    figure = go.Figure()
    figure.add_trace(
        go.Scatter(
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            line={"dash": "dot", "color": "#999999"},
            name="calibrated",
            hoverinfo="skip",
        )
    )
    for index, row in enumerate(summary.itertuples(index=False)):
        bins = calibration[calibration["estimator"] == row.estimator].sort_values("mean_value")
        auc = "–" if pd.isna(row.auc) else f"{row.auc:.2f}"
        false = "–" if pd.isna(row.chosen_false) else f"{100 * row.chosen_false:.0f}%"
        figure.add_trace(
            go.Scatter(
                x=bins["mean_value"],
                y=bins["true_share"],
                mode="lines+markers",
                marker={
                    "symbol": series_symbol(index),
                    "size": 6 + 14 * bins["steps"] / max(int(bins["steps"].max()), 1),
                },
                line={"color": series_colour(index)},
                name=f"{row.estimator} (AUC {auc}, chosen false {false})",
                customdata=bins[["bin", "steps"]],
                hovertemplate="value bin %{customdata[0]}: %{customdata[1]} steps, "
                "%{y:.0%} true<extra></extra>",
            )
        )
    figure.update_xaxes(title="mean value in the bin", range=[-0.02, 1.02])
    figure.update_yaxes(title="share of true steps (checker)", range=[-0.02, 1.02])
    return style_figure(figure, title)
