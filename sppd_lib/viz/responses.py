"""The responses behind the accuracy: pass@1 changes between iterations (first → last and
each consecutive step), the problems gained and lost with the gold answer and both responses
side by side (extracted answers highlighted), response length per iteration and the grader's
status counts, all read from each iteration's ``eval.parquet``."""

from __future__ import annotations

import html
import itertools
import math
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sppd_lib.metrics import paired_change
from sppd_lib.viz.run import Run
from sppd_lib.viz.style import empty_figure, series_colour, style_figure
from sppd_lib.viz.table import Cell, Column, HTMLBlock, interactive_table, text_cell

__all__ = [
    "ResponsesExplorer",
    "changes_table",
    "compared_steps",
    "evaluated_iterations",
    "gained_lost",
    "gained_lost_table",
    "grader_status_table",
    "response_length_figure",
    "responses_view",
]


def evaluated_iterations(run: Run) -> list[int]:
    """Iterations with an ``eval.parquet``."""
    return [k for k in run.iterations if run.eval(k) is not None and len(run.eval(k))]


def compared_steps(run: Run) -> list[tuple[int, int]]:
    """The comparisons a static page shows: first → last, then each consecutive step (once)."""
    done = evaluated_iterations(run)
    if len(done) < 2:
        return []
    steps = [(done[0], done[-1])]
    steps += [(a, b) for a, b in itertools.pairwise(done) if (a, b) != steps[0]]
    return steps


def changes_table(run: Run) -> pd.DataFrame:
    """pass@1 problem by problem between the iterations of :func:`compared_steps`: per
    benchmark the problems both evaluated, the accuracies, gained (wrong → right), lost
    (right → wrong) and the exact McNemar p."""
    rows = []
    for a, b in compared_steps(run):
        change = paired_change(run.eval(a), run.eval(b))
        for r in change.itertuples():
            rows.append(
                {
                    "iterations": f"{a} → {b}",
                    "benchmark": r.benchmark,
                    "problems": r.problems,
                    "pass@1": f"{r.before:.1%} → {r.after:.1%}",
                    "gained": r.gained,
                    "lost": r.lost,
                    "McNemar p": f"{r.p_value:.3g}",
                }
            )
    if not rows:
        return pd.DataFrame({"note": ["needs two evaluated iterations"]}, index=[""])
    return pd.DataFrame(rows).set_index(["iterations", "benchmark"])


def gained_lost(run: Run, before: int, after: int, benchmark: str | None = None) -> pd.DataFrame:
    """Problems whose greedy answer changed correctness between two iterations: benchmark,
    problem_id, change (``gained`` / ``lost``), question, gold and, per iteration, response,
    pred, status, num_tokens and finish_reason (suffixes ``_before`` / ``_after``)."""
    a, b = run.eval(before), run.eval(after)
    columns = ["benchmark", "problem_id", "change", "question", "gold"]
    if a is None or b is None:
        return pd.DataFrame(columns=columns)
    keys = ["benchmark", "problem_id"]
    kept = [
        c
        for c in ("response", "pred", "correct", "status", "num_tokens", "finish_reason")
        if c in a.columns and c in b.columns
    ]
    both = a[[*keys, "question", "gold", *kept]].merge(
        b[[*keys, *kept]], on=keys, suffixes=("_before", "_after")
    )
    was, now = both["correct_before"].astype(bool), both["correct_after"].astype(bool)
    both = both[was != now].assign(
        change=lambda f: f["correct_after"].map({True: "gained", False: "lost"})
    )
    if benchmark is not None:
        both = both[both["benchmark"] == benchmark]
    rest = [c for c in both.columns if c not in columns]
    return both[[*columns, *rest]].reset_index(drop=True)


def _highlight(
    response: Any, pred: Any, correct: bool, finish_reason: Any = None, tokens: Any = None
) -> str:
    """The response as escaped HTML with the extracted answer (its last occurrence) marked,
    and under it the answer the grader extracted and, for a response cut by the token limit,
    a warning: a "lost" problem may be an extraction artefact (the last number of a cut or
    oddly formatted response), which the reader can then see for themselves."""
    text = "" if response is None else str(response)
    answer = "" if pred is None or (isinstance(pred, float) and math.isnan(pred)) else str(pred)
    kind = "right" if correct else "wrong"
    found = f"<mark class='{kind}'>{html.escape(answer)}</mark>" if answer else "none"
    footer = f"extracted answer: {found}"
    if finish_reason == "length":
        count = f" ({int(tokens)} tokens)" if tokens is not None and tokens == tokens else ""
        footer = f"<b class='cut'>✂ cut by the token limit{count}</b> · " + footer
    at = text.rfind(answer) if answer else -1
    if at < 0:
        return f"<pre>{html.escape(text)}</pre><small>{footer}</small>"
    marked = (
        html.escape(text[:at])
        + f"<mark class='{kind}'>{html.escape(answer)}</mark>"
        + html.escape(text[at + len(answer) :])
    )
    return f"<pre>{marked}</pre><small>{footer}</small>"


_COLUMNS = [
    Column("benchmark", "benchmark", menu=True),
    Column("change", "change", menu=True, help="gained: wrong → right; lost: right → wrong"),
    Column("problem", "problem"),
    Column("gold", "gold"),
    Column("before", "response before"),
    Column("after", "response after"),
]


def _response_cell(row: Any, when: str) -> Cell:
    """One side of a gained / lost row; its filter value says "cut" for a truncated one."""
    finish = getattr(row, f"finish_reason_{when}", None)
    markup = _highlight(
        getattr(row, f"response_{when}"),
        getattr(row, f"pred_{when}"),
        getattr(row, f"correct_{when}"),
        finish,
        getattr(row, f"num_tokens_{when}", None),
    )
    return Cell(markup, None, "cut by the token limit" if finish == "length" else "")


def gained_lost_table(run: Run, before: int, after: int) -> HTMLBlock:
    """:func:`gained_lost` as an offline table: the question and gold answer, both responses
    side by side, the extracted answer marked (blue right, orange wrong)."""
    frame = gained_lost(run, before, after)
    gained = int((frame["change"] == "gained").sum())
    cut = sum(
        int((frame[f"finish_reason_{w}"] == "length").sum())
        for w in ("before", "after")
        if f"finish_reason_{w}" in frame.columns
    )
    rows = []
    for r in frame.itertuples():
        rows.append(
            [
                text_cell(r.benchmark),
                text_cell(r.change),
                Cell(
                    f"<b>{html.escape(r.problem_id)}</b><pre>{html.escape(str(r.question))}</pre>",
                    r.problem_id,
                    r.problem_id,
                ),
                text_cell(str(r.gold)),
                _response_cell(r, "before"),
                _response_cell(r, "after"),
            ]
        )
    return interactive_table(
        _COLUMNS,
        rows,
        title=f"Iteration {before} → {after}: {gained} gained, {len(frame) - gained} lost"
        + (f" ({cut} of the responses shown were cut by the token limit: ✂)" if cut else ""),
        empty=f"No problem changed between iterations {before} and {after}.",
        page_size=50,
    )


def response_length_figure(run: Run) -> go.Figure:
    """Greedy response length (tokens) per iteration, one panel per benchmark: a box per
    iteration with its mean, so a shrinking or growing response shows at once."""
    title = "Response length per iteration (greedy, tokens)"
    frames = [run.eval(k).assign(iteration=k) for k in evaluated_iterations(run)]
    frames = [f for f in frames if "num_tokens" in f.columns]
    if not frames:
        return empty_figure(title, "No evaluation with token counts yet (eval.parquet).")
    evals = pd.concat(frames, ignore_index=True)
    benchmarks = list(dict.fromkeys(evals["benchmark"]))
    cols = min(3, len(benchmarks))
    rows = math.ceil(len(benchmarks) / cols)
    figure = make_subplots(rows=rows, cols=cols, subplot_titles=benchmarks, shared_yaxes=True)
    for b_index, benchmark in enumerate(benchmarks):
        row, col = divmod(b_index, cols)
        for i_index, (k, group) in enumerate(
            evals[evals["benchmark"] == benchmark].groupby("iteration")
        ):
            figure.add_trace(
                go.Box(
                    y=group["num_tokens"],
                    name=f"iter {k}",
                    legendgroup=str(k),
                    showlegend=b_index == 0,
                    marker_color=series_colour(i_index),
                    boxmean=True,
                    hovertemplate=f"iteration {k}: %{{y}} tokens<extra></extra>",
                ),
                row=row + 1,
                col=col + 1,
            )
        figure.update_yaxes(title_text="tokens", row=row + 1, col=1)
        figure.update_xaxes(title_text="iteration", row=row + 1, col=col + 1)
    means = evals.groupby(["benchmark", "iteration"])["num_tokens"].mean().round(0).astype(int)
    summary = "; ".join(
        f"{b}: " + " → ".join(str(means[b][k]) for k in means[b].index) for b in benchmarks
    )
    figure.update_layout(title_subtitle_text=f"mean tokens {summary} (dashed line in each box)")
    return style_figure(figure, title, height=380 * rows + 60)


def grader_status_table(run: Run) -> pd.DataFrame:
    """How the grader saw each greedy response: per benchmark and status (``correct``,
    ``wrong``, ``no_answer``, ``unparsable``, ``timeout``, ``error``...) the count per
    iteration."""
    frames = [run.eval(k).assign(iteration=k) for k in evaluated_iterations(run)]
    frames = [f for f in frames if "status" in f.columns]
    if not frames:
        return pd.DataFrame({"note": ["no grader status yet (eval.parquet)"]}, index=[""])
    evals = pd.concat(frames, ignore_index=True)
    table = evals.pivot_table(
        index=["benchmark", "status"],
        columns="iteration",
        values="problem_id",
        aggfunc="count",
        fill_value=0,
    )
    table.columns = [f"iteration {k}" for k in table.columns]
    return table


class ResponsesExplorer:
    """Two iteration dropdowns and the gained / lost table between them (JupyterLab)."""

    def __init__(self, run: Run) -> None:
        import ipywidgets as widgets
        from IPython.display import display

        self.run = run
        self._display = display
        done = evaluated_iterations(run)
        options = [(f"iteration {k}", k) for k in done]
        self.before = widgets.Dropdown(
            options=options, value=done[0] if done else None, description="before"
        )
        self.after = widgets.Dropdown(
            options=options, value=done[-1] if done else None, description="after"
        )
        self.output = widgets.Output()
        for control in (self.before, self.after):
            control.observe(lambda _: self._draw(), names="value")
        self.widget = widgets.VBox([widgets.HBox([self.before, self.after]), self.output])
        self._draw()

    def table(self) -> HTMLBlock:
        if self.before.value is None:
            return HTMLBlock("<p>No evaluated iteration yet.</p>")
        return gained_lost_table(self.run, self.before.value, self.after.value)

    def _draw(self) -> None:
        from IPython.display import HTML

        self.output.clear_output(wait=True)
        with self.output:
            self._display(HTML(self.table().html))


def responses_view(run: Run, interactive: bool = True) -> Any:
    """In Lab a :class:`ResponsesExplorer` (any two iterations); in a static page the tables
    of :func:`compared_steps` (first → last, then each consecutive step)."""
    if interactive:
        return ResponsesExplorer(run).widget
    steps = compared_steps(run)
    if not steps:
        return HTMLBlock("<p>Needs two evaluated iterations.</p>")
    return HTMLBlock("".join(gained_lost_table(run, a, b).html for a, b in steps))
