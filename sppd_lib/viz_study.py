"""Plotly figures and tables of a margin study (``sppd_lib.study``), read through
:func:`sppd_lib.study_results.load_study`: the Table-4-style arm table, the Figure-2-style γ
curve, training curves per arm, the Δv distribution of every value estimator, and the
problems that flip between two arms."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sppd_lib.config import START
from sppd_lib.study_results import Study, flipped_problems, format_arm_table, load_study
from sppd_lib.viz.style import empty_figure, note_panel, series_colour, style_figure

__all__ = [
    "arm_table",
    "comparison_table",
    "delta_value_figure",
    "flip_table",
    "gamma_figure",
    "load_study",
    "open_study",
    "training_figure",
]

#: Arms drawn as horizontal reference lines in the γ figure.
_REFERENCES = (START, "sft", "dpo", "fixed")


def _first_benchmark(study: Study) -> str | None:
    return str(study.arms["benchmark"].iloc[0]) if len(study.arms) else None


def arm_table(study: Study, metric: str = "pass@1") -> pd.DataFrame:
    """Arms × benchmarks: mean over seeds [95% t interval across seeds], Δ vs step_dpo."""
    return format_arm_table(study.arms, metric)


def gamma_figure(study: Study, benchmark: str | None = None) -> go.Figure:
    """Greedy pass@1 against γ of the dynamic margin (step_dpo is γ = 0), mean over seeds
    with its 95% t interval; the other arms as horizontal lines."""
    benchmark = benchmark or _first_benchmark(study)
    title = f"pass@1 against γ ({benchmark}, mean over seeds, 95% interval)"
    arms = study.arms[(study.arms["benchmark"] == benchmark) & (study.arms["metric"] == "pass@1")]
    records = {name: arm for name, arm in zip(arms["arm"], arms.itertuples(), strict=True)}
    points = []
    for name, arm in records.items():
        if name == "step_dpo":
            points.append((0.0, arm))
        elif name.startswith("dynamic_g"):
            try:
                points.append((float(name.removeprefix("dynamic_g")), arm))
            except ValueError:  # a user arm whose name merely starts like one
                continue
    if not points:
        return empty_figure(title, "No dynamic or step_dpo arm evaluated yet.")
    points.sort(key=lambda p: p[0])
    gammas = [g for g, _ in points]
    means = np.array([a.mean for _, a in points])
    low = np.array([a.seed_ci_low for _, a in points])
    high = np.array([a.seed_ci_high for _, a in points])
    figure = go.Figure(
        go.Scatter(
            x=gammas,
            y=means,
            mode="lines+markers",
            name="dynamic margin γ·Δv (γ = 0: step_dpo)",
            error_y={"type": "data", "array": high - means, "arrayminus": means - low},
            marker={"size": 10, "color": series_colour(0)},
        )
    )
    for index, name in enumerate(_REFERENCES):
        if name in records:
            arm = records[name]
            figure.add_hline(
                y=arm.mean,
                line={"dash": "dot", "color": series_colour(index + 1)},
                annotation_text=f"{name} {arm.mean:.1%}",
                annotation_position="top left",
            )
    # Positive γ on a log axis would hide γ = 0; a linear axis with the grid as ticks.
    figure.update_xaxes(title_text="γ", tickvals=gammas)
    figure.update_yaxes(title_text="greedy pass@1", tickformat=".0%")
    return style_figure(figure, title)


def training_figure(study: Study) -> go.Figure:
    """Per arm (mean over seeds, by optimiser step): loss, reward accuracy, and the implicit
    reward margin β·h against the value margin the loss subtracts."""
    title = "Training per arm (mean over seeds)"
    frames = []
    for (arm, seed), _ in study.records.items():
        log = study.train_log(arm, seed)
        if log is not None and "loss" in log.columns:
            frames.append(log.dropna(subset=["loss"]).assign(arm=arm, seed=seed))
    if not frames:
        return empty_figure(title, "No arm has trained yet.")
    logs = pd.concat(frames, ignore_index=True)
    panels = (("loss", "loss"), ("reward_accuracy", "reward accuracy"), ("reward_margin", "β·h"))
    figure = make_subplots(rows=1, cols=4, subplot_titles=[p[1] for p in panels] + ["value margin"])
    for index, (arm, group) in enumerate(logs.groupby("arm", sort=False)):
        for phase, steps in group.groupby("phase", sort=False):
            mean = steps.groupby("step").mean(numeric_only=True).reset_index()
            style = {"color": series_colour(index), "dash": "solid" if phase == "sppd" else "dot"}
            columns = [c for c, _ in panels] + ["value_margin"]
            for col, column in enumerate(columns, start=1):
                if column not in mean.columns or mean[column].isna().all():
                    continue
                figure.add_trace(
                    go.Scatter(
                        x=mean["step"],
                        y=mean[column],
                        mode="lines",
                        name=f"{arm} ({phase})",
                        legendgroup=f"{arm}{phase}",
                        showlegend=col == 1,
                        line=style,
                    ),
                    row=1,
                    col=col,
                )
    figure.update_xaxes(title_text="optimiser step")
    return style_figure(figure, title + " — solid: sppd phase, dotted: sft / dpo", height=430)


def delta_value_figure(study: Study) -> go.Figure:
    """Δv = v(chosen) − v(rejected) of the pairs of every value estimator. A dynamic margin
    differs from a fixed one only where Δv varies, so this says what the study can test."""
    names = list(study.config.estimators)
    title = "Δv of the step pairs, per value estimator"
    figure = make_subplots(rows=1, cols=len(names), subplot_titles=names)
    any_pairs = False
    for col, name in enumerate(names, start=1):
        pairs = study.pairs(name)
        if pairs is None or not len(pairs):
            note_panel(figure, "no pairs", 1, col)
            continue
        any_pairs = True
        delta = pairs["delta_value"]
        below = int((delta < 0.999).sum())
        figure.add_trace(
            go.Histogram(
                x=delta,
                # 0.05 bins over (0.5, 1] for the usual threshold; automatic below it
                xbins={"start": 0.5, "end": 1.0001, "size": 0.05} if delta.min() >= 0.5 else None,
                marker_color=series_colour(col - 1),
                name=name,
                showlegend=False,
            ),
            row=1,
            col=col,
        )
        figure.layout.annotations[col - 1].text = (
            f"{name}: {len(pairs)} pairs<br>{below} with Δv < 1"
            + (" (one value: dynamic = fixed)" if delta.nunique() == 1 else "")
        )
        shown = [0.5, 1.02] if delta.min() >= 0.5 else None
        figure.update_xaxes(title_text="Δv", range=shown, row=1, col=col)
    figure.update_yaxes(title_text="pairs", col=1)
    if not any_pairs:
        return empty_figure(title, "No estimator produced pairs.")
    figure = style_figure(figure, title, height=380)
    figure.update_layout(margin={"t": 110})  # room for the two-line panel titles
    return figure


def comparison_table(study: Study, include_start: bool = False) -> pd.DataFrame:
    """The paired comparisons, formatted: difference [bootstrap 95%], flips, McNemar p."""
    table = study.comparisons
    if not include_start:
        table = table[table["other"] != START]
    if not len(table):
        return pd.DataFrame()
    return pd.DataFrame(
        {
            "arm": table["arm"],
            "vs": table["other"],
            "benchmark": table["benchmark"],
            "problems": table["problems"],
            "accuracy": table["accuracy"].map("{:.1%}".format),
            "vs accuracy": table["other_accuracy"].map("{:.1%}".format),
            "difference [95% bootstrap]": [
                f"{d:+.1%} [{lo:+.1%}, {hi:+.1%}]"
                for d, lo, hi in zip(
                    table["difference"], table["ci95_low"], table["ci95_high"], strict=True
                )
            ],
            "gained / lost (majority)": [
                f"{g} / {lo}" for g, lo in zip(table["gained"], table["lost"], strict=True)
            ],
            "McNemar p": table["p_value"].map("{:.3f}".format),
        }
    ).reset_index(drop=True)


def flip_table(
    study: Study, arm: str | None = None, other: str | None = None, benchmark: str | None = None
) -> pd.DataFrame:
    """Problems that flip between two arms (default: ``compare`` of the config, else the
    headline dynamic arm vs step_dpo), with both arms' answers and first-seed responses."""
    arm, other = (
        (study.config.compare or [study.config.headline_arm, "step_dpo"])[:2]
        if (arm is None or other is None)
        else (arm, other)
    )
    benchmark = benchmark or _first_benchmark(study)
    present = set(study.evals["arm"]) if len(study.evals) else set()
    if arm not in present or other not in present or benchmark is None:
        return pd.DataFrame({"note": [f"{arm} or {other} has not been evaluated"]})
    flips = flipped_problems(study, arm, other, benchmark)
    if not len(flips):
        return pd.DataFrame({"note": [f"no problem flips between {arm} and {other}"]})
    return flips


def open_study(study_dir: str | os.PathLike[str]) -> Study:
    """:func:`load_study`, printing the resolved directory (notebooks show what they read)."""
    study = load_study(study_dir)
    print(f"study {study.study_id}: {study.path.resolve()}")
    return study
