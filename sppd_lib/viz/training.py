"""Figures of pairs, margins and training: Δv and margin histograms, pairs by depth, β·h against
the value margin, training curves of every phase, tree statistics per iteration."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sppd_lib.viz.overview import learned_by_iteration
from sppd_lib.viz.run import Run
from sppd_lib.viz.style import (
    TRAINING_PANELS,
    empty_figure,
    note_panel,
    series_colour,
    single_value_note,
    style_figure,
    subsample,
)

__all__ = [
    "margin_histograms",
    "pairs_by_depth",
    "reward_vs_value_margin",
    "training_curves",
    "tree_stats_figure",
]


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
    panels = ((1, pairs, "delta_value", "Δv"), (2, margins, "value_margin", "margin"))
    if _margin_is_delta_value(margins):  # γ = 1 dynamic: a second, identical histogram
        note_panel(figure, _wrap(_SAME_AS_DV), 1, 2)
        panels = panels[:1]
    for col, frame, column, what in panels:
        if frame is None or not len(frame):
            note_panel(figure, "not trained yet (no pair_log.parquet)", 1, col)
            continue
        single = single_value_note(frame[column], what)
        if single:  # one bar says nothing: say it in words
            note_panel(figure, _wrap(single + _why_single(what)), 1, col)
            continue
        for index, (k, group) in enumerate(frame.groupby("iteration")):
            figure.add_trace(
                go.Histogram(
                    x=group[column],
                    name=f"iteration {k} ({len(group)} pairs)",
                    legendgroup=str(k),
                    showlegend=col == 1,
                    marker_color=series_colour(index),
                    # 0.05 bins for the usual Δv in (0.5, 1]; automatic for tiny gaps
                    xbins={"size": 0.05} if np.ptp(frame[column]) > 0.2 else None,
                ),
                row=1,
                col=col,
            )
        figure.update_xaxes(title_text=what, row=1, col=col)
        figure.update_yaxes(title_text="pairs", row=1, col=col)
    figure.update_layout(barmode="group", bargap=0.1)
    return style_figure(figure, title)


_SAME_AS_DV = (
    "every trained pair's loss margin equals its Δv (dynamic margin with γ = 1): the "
    "histogram on the left is the margin's too"
)


def _margin_is_delta_value(margins: pd.DataFrame | None) -> bool:
    """The loss margin of every trained pair is its Δv (γ = 1, dynamic)."""
    if margins is None or not len(margins) or "delta_value" not in margins.columns:
        return False
    gap = (margins["value_margin"] - margins["delta_value"]).abs()
    return bool(gap.max() <= 1e-6 * max(1.0, float(margins["delta_value"].abs().max())))


def _why_single(what: str) -> str:
    if what == "Δv":
        return " (0/1 values, e.g. bellman or mc with one rollout, make every gap 1)"
    return " (the margin of every pair is the same: fixed, none, or γ·Δv of one Δv)"


def _wrap(text: str, width: int = 48) -> str:
    """Plotly annotations do not wrap: break a sentence into ``<br>``-joined lines."""
    import textwrap

    return "<br>".join(textwrap.wrap(text, width))


def pairs_by_depth(run: Run) -> go.Figure:
    """Pairs per depth of the branching step, one bar group per iteration, and their mean Δv."""
    pairs = run.stacked("pairs")
    title = "Pairs by depth of the branching step"
    if pairs is None:
        return empty_figure(title, f"Run {run.run_id} has no pairs yet (no pairs.parquet).")
    figure = make_subplots(rows=1, cols=2, subplot_titles=("pairs", "mean Δv"))
    single = single_value_note(pairs["delta_value"], "Δv")
    for index, (k, group) in enumerate(pairs.groupby("iteration")):
        by_depth = group.groupby("depth")["delta_value"].agg(["size", "mean"]).reset_index()
        common = {"legendgroup": str(k), "marker_color": series_colour(index)}
        figure.add_trace(
            go.Bar(x=by_depth["depth"], y=by_depth["size"], name=f"iteration {k}", **common),
            row=1,
            col=1,
        )
        if not single:
            figure.add_trace(
                go.Bar(x=by_depth["depth"], y=by_depth["mean"], showlegend=False, **common),
                row=1,
                col=2,
            )
    if single:  # a flat line of one value at every depth says nothing
        note_panel(figure, _wrap(f"{single}, so its mean is the same at every depth"), 1, 2)
    else:
        figure.update_xaxes(title_text="depth of the branching step", dtick=1, row=1, col=2)
        figure.update_yaxes(title_text="mean Δv", row=1, col=2)
    figure.update_xaxes(title_text="depth of the branching step", dtick=1, row=1, col=1)
    figure.update_yaxes(title_text="pairs", row=1, col=1)
    figure.update_layout(barmode="group")
    return style_figure(figure, title)


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
    learned = learned_by_iteration(run)
    if len(learned):
        figure.update_layout(
            title_subtitle_text="learned (β·h > margin the last time trained): "
            + "; ".join(
                f"iteration {r.iteration}: {r.learned}/{r.trained}, β·h {r.bh_min:.3g}–"
                f"{r.bh_max:.3g} against margins {r.margin_min:.3g}–{r.margin_max:.3g}"
                for r in learned.itertuples()
            )
        )
    return style_figure(figure, title, height=460)


def _pair_scatter(figure: go.Figure, pair_log: pd.DataFrame | None) -> None:
    if pair_log is None:
        note_panel(figure, "no pair_log.parquet", 1, 1)
        return
    points = subsample(pair_log)
    for index, (k, group) in enumerate(points.groupby("iteration")):
        figure.add_trace(
            go.Scatter(
                x=group["value_margin"],
                y=group["reward_margin"],
                mode="markers",
                name=f"iteration {k} pairs",
                marker={"color": series_colour(index), "size": 5, "opacity": 0.5},
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
    single = single_value_note(points["value_margin"], "margin", "pair rows")
    if single:  # the points form a vertical stripe: say why
        figure.add_annotation(
            text=_wrap(f"{single}: the points differ only in β·h", 60),
            xref="x domain",
            yref="y domain",
            x=0.02,
            y=0.98,
            showarrow=False,
            xanchor="left",
            yanchor="top",
            align="left",
            font={"color": "#555"},
            bgcolor="rgba(255,255,255,0.8)",
        )


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
        note_panel(figure, "no reward margins in log.jsonl", 1, 2)
        return
    log = _training_x(log)
    log = log[log["phase"] != "sft"]
    iterations = sorted(log["iteration"].unique())
    for column, name, dash in (
        ("reward_margin", "β·h (solid)", "solid"),
        ("value_margin", "margin (dotted)", "dot"),
    ):
        for (k, phase), group in log.groupby(["iteration", "phase"], sort=False):
            figure.add_trace(
                go.Scatter(
                    x=group["x"],
                    y=group[column],
                    mode="lines",
                    name=f"{name} · iter {k} {phase}",
                    line={"color": series_colour(iterations.index(k)), "dash": dash},
                ),
                row=1,
                col=2,
            )
    figure.update_xaxes(title_text="optimizer step (run-wide)", row=1, col=2)
    figure.update_yaxes(title_text="batch mean", row=1, col=2)


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
    iterations = sorted(log["iteration"].unique())
    seen: set[str] = set()
    for index, (panel, columns) in enumerate(TRAINING_PANELS):
        row, col = divmod(index, 3)
        present = [c for c in columns if c in log.columns and log[c].notna().any()]
        if not present:
            note_panel(figure, "not logged", row + 1, col + 1)
            continue
        # Colour = iteration; dash = which of the panel's two columns (its title says).
        for column, dash in zip(present, ("solid", "dot"), strict=False):
            for (k, phase), group in log.groupby(["iteration", "phase"], sort=False):
                name = f"iteration {k}"
                figure.add_trace(
                    go.Scatter(
                        x=group["x"],
                        y=group[column],
                        mode="lines",
                        name=name,
                        legendgroup=name,
                        showlegend=name not in seen,
                        line={"color": series_colour(iterations.index(k)), "dash": dash},
                        hovertemplate=f"{column}: %{{y:.4g}}<br>iteration {k} {phase} "
                        "step %{x}<extra></extra>",
                    ),
                    row=row + 1,
                    col=col + 1,
                )
                seen.add(name)
        figure.update_xaxes(title_text="optimizer step (run-wide)", row=row + 1, col=col + 1)
        figure.update_yaxes(title_text=_Y_TITLES.get(panel, panel), row=row + 1, col=col + 1)
    # Grey dotted lines start each (iteration, phase) segment; its name is written on top.
    for (k, phase), group in log.groupby(["iteration", "phase"], sort=False):
        start = group["x"].min() - 0.5
        figure.add_vline(x=start, line={"color": "#bbb", "dash": "dot"})
        figure.add_annotation(
            x=start,
            y=0.0,
            xref="x",
            yref="y domain",
            text=f"{k}·{phase}",
            showarrow=False,
            xanchor="left",
            yanchor="bottom",
            font={"size": 10, "color": "#666"},
        )
    figure.update_layout(
        title_subtitle_text="colour: iteration · grey dotted lines: a new iteration·phase "
        "starts (named at the foot of the loss panel) · two lines in a panel: solid and "
        "dotted as titled"
    )
    return style_figure(figure, title, height=680)


_Y_TITLES = {  # panel title -> y axis title (the panel titles explain the line styles)
    "reward accuracy": "share of pairs with β·h > 0",
    "β·h (solid) and loss margin (dotted)": "β·h, margin",
    "chosen (solid) / rejected (dotted) reward": "reward",
    "gradient norm": "norm",
}


def tree_stats_figure(run: Run) -> go.Figure:
    """Per iteration: how many trees have 0, 1, 2, ... correct complete paths (the
    distribution, not a mean that hides the trees without any), pairs and trees with pairs,
    and tokens generated by the tree sampler against a flat sampler for the same paths."""
    title = "Self-sampled trees per iteration"
    iterations = run.tree_iterations()
    stats = {k: run.tree_stats(k) for k in iterations}
    stats = {k: s for k, s in stats.items() if len(s)}
    if not stats:
        return empty_figure(title, f"Run {run.run_id} has no trees yet (trees.jsonl.gz).")
    figure = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=(
            "trees by correct complete paths",
            "pairs and trees with pairs",
            "tokens (tree vs flat sampling)",
        ),
    )
    x = [f"iter {k}" for k in stats]
    none = []
    for index, (k, table) in enumerate(stats.items()):
        counts = table["correct_paths"].value_counts().sort_index()
        figure.add_trace(
            go.Bar(
                x=counts.index,
                y=counts.to_numpy(),
                name=f"iteration {k} ({len(table)} trees)",
                marker_color=series_colour(index),
                hovertemplate=f"iteration {k}: %{{y}} trees with %{{x}} correct paths"
                "<extra></extra>",
            ),
            row=1,
            col=1,
        )
        none.append(f"iter {k}: {int((table['correct_paths'] == 0).sum())} of {len(table)}")
    totals = pd.DataFrame(
        {
            "pairs": [int(t["pairs"].sum()) for t in stats.values()],
            "trees with pairs": [int((t["pairs"] > 0).sum()) for t in stats.values()],
            "tree tokens": [int(t["tokens_generated"].sum()) for t in stats.values()],
            "flat tokens": [int(t["flat_tokens"].sum()) for t in stats.values()],
        }
    )
    for col, column, colour, pattern in (
        # Neutral greys and browns, none of the iteration colours of the first panel, and
        # four distinct legend swatches (a pattern alone hardly shows in a swatch).
        (2, "pairs", "#555555", ""),
        (2, "trees with pairs", "#bbbbbb", ""),
        (3, "tree tokens", "#8c6d31", ""),
        (3, "flat tokens", "#e0c98f", "/"),
    ):
        figure.add_trace(
            go.Bar(
                x=x,
                y=totals[column],
                name=column,
                marker_color=colour,
                marker_pattern_shape=pattern,
            ),
            row=1,
            col=col,
        )
    figure.update_xaxes(title_text="correct complete paths in a tree", dtick=1, row=1, col=1)
    figure.update_yaxes(title_text="trees", row=1, col=1)
    figure.update_xaxes(title_text="iteration", row=1, col=2)
    figure.update_yaxes(title_text="count", row=1, col=2)
    figure.update_xaxes(title_text="iteration", row=1, col=3)
    figure.update_yaxes(title_text="tokens generated", row=1, col=3)
    figure.update_layout(
        barmode="group",
        title_subtitle_text="trees without any correct path: " + "; ".join(none),
    )
    return style_figure(figure, title, height=440)
