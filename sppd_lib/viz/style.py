"""Style shared by every figure family: colours, template, empty figures and notes, hover text,
the order of metrics."""

from __future__ import annotations

import html
import re
import textwrap
from collections.abc import Iterable

import pandas as pd
import plotly.graph_objects as go

__all__ = [
    "CHOSEN_COLOUR",
    "PHASE_COLOURS",
    "REJECTED_COLOUR",
    "TEMPLATE",
    "TRAINING_PANELS",
    "empty_figure",
    "hover_html",
    "is_empty_figure",
    "metric_order",
    "natural_key",
    "note_panel",
    "series_colour",
    "series_symbol",
    "single_value_note",
    "style_figure",
    "subsample",
]

METRIC_ORDER = ["pass@1", "maj@8", "vote@8", "best@8"]
#: Okabe & Ito's colour-blind-safe palette (Color Universal Design): distinct under the common
#: colour-vision deficiencies, so iterations and metrics stay apart for every reader.
COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#F0E442"]
PHASE_COLOURS = {"sft": "#56B4E9", "dpo": "#CC79A7", "sppd": "#009E73"}
#: Chosen blue, rejected vermillion (not green vs red); figures add a shape or dash as well.
CHOSEN_COLOUR, REJECTED_COLOUR = "#0072B2", "#D55E00"
#: Marker symbols cycled with the colours, so a series is told apart without colour too.
SYMBOLS = ["circle", "square", "diamond", "triangle-up", "cross", "x", "star", "hexagon"]
TEMPLATE = "plotly_white"
#: Points drawn at most in a scatter of per-pair rows (a deterministic subsample beyond).
MAX_POINTS = 4000


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


def style_figure(figure: go.Figure, title: str, height: int = 420) -> go.Figure:
    """The common layout: title, template, margins, left-aligned hover labels."""
    figure.update_layout(
        title_text=title,  # not title=: that would drop a subtitle set before
        template=TEMPLATE,
        height=height,
        margin={
            "l": 60,
            "r": 30,
            "t": 80 if figure.layout.title.subtitle.text is None else 115,
            "b": 50,
        },
        hoverlabel={"align": "left"},
    )
    return figure


def note_panel(figure: go.Figure, text: str, row: int, col: int) -> None:
    """A 'no data' note in the middle of one empty subplot."""
    figure.add_annotation(
        text=text, showarrow=False, row=row, col=col, x=0.5, y=0.5, font={"color": "#777"}
    )
    figure.update_xaxes(range=[0, 1], visible=False, row=row, col=col)
    figure.update_yaxes(range=[0, 1], visible=False, row=row, col=col)


def series_colour(index: int) -> str:
    """The ``index``-th colour of the qualitative palette (cycled)."""
    return COLOURS[index % len(COLOURS)]


def series_symbol(index: int) -> str:
    """The ``index``-th marker symbol (cycled), paired with :func:`series_colour`."""
    return SYMBOLS[index % len(SYMBOLS)]


def single_value_note(values: pd.Series, what: str, unit: str = "pairs") -> str | None:
    """A sentence for a distribution that holds one value (``None`` otherwise): one bar says
    nothing, so the figure says it in words instead (e.g. Δv of 0/1 values is always 1)."""
    values = pd.Series(values).dropna()
    if not len(values) or values.nunique() > 1:
        return None
    return f"all {len(values)} {unit} have {what} = {values.iloc[0]:.3g}: a single value"


def hover_html(text: str, limit: int = 400, width: int = 80) -> str:
    """Plain text as hover HTML: truncated, escaped, wrapped (plotly does not wrap)."""
    text = text.strip()
    text = text if len(text) <= limit else text[:limit] + " …"
    lines = []
    for line in text.splitlines() or [""]:
        lines.extend(textwrap.wrap(line, width) or [""])
    return "<br>".join(html.escape(line) for line in lines)


def subsample(frame: pd.DataFrame, limit: int = MAX_POINTS) -> pd.DataFrame:
    """At most ``limit`` rows, a seeded sample beyond (scatter plots of per-pair rows)."""
    return frame if len(frame) <= limit else frame.sample(limit, random_state=0)


def natural_key(text: str) -> str:
    """``text`` with every number zero-padded, so that ids sort as numbers within text
    (``arith/test/2`` before ``arith/test/10``) wherever strings are compared."""
    return re.sub(r"\d+", lambda m: m.group().zfill(12), str(text))


def metric_order(metrics: Iterable[str]) -> list[str]:
    """pass, maj, vote, best (any N), then the others, alphabetically."""
    kinds = [m.split("@")[0] for m in METRIC_ORDER]

    def rank(metric: str) -> tuple[int, str]:
        kind = metric.split("@")[0]
        return (kinds.index(kind) if kind in kinds else len(kinds), metric)

    return sorted(set(metrics), key=rank)


#: Panels of the training curves, (title, log columns); a log row with none of these columns
#: is the trainer's end-of-training summary, not a step.
TRAINING_PANELS = [
    ("loss", ["loss"]),
    ("reward accuracy", ["reward_accuracy"]),
    ("β·h (solid) and loss margin (dotted)", ["reward_margin", "value_margin"]),
    ("chosen (solid) / rejected (dotted) reward", ["chosen_reward", "rejected_reward"]),
    ("gradient norm", ["grad_norm"]),
    ("learning rate", ["learning_rate"]),
]
