"""The step pairs as text: one row per (iteration, pair) with the prefix, the chosen and the
rejected step, their values, Δv, the margin the trainer used, β·h when the pair was first and
last trained on, and whether it was learned; as a frame and as an offline sortable table."""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd

from sppd_lib.viz.run import Run
from sppd_lib.viz.style import natural_key
from sppd_lib.viz.table import Cell, Column, HTMLBlock, interactive_table, text_cell

__all__ = [
    "PAIR_COLUMNS",
    "identical_steps",
    "no_pair_reasons",
    "pairs_frame",
    "pairs_table",
    "train_settings",
]

#: Columns of :func:`pairs_frame`.
PAIR_COLUMNS = [
    "iteration",
    "problem_id",
    "question",
    "depth",
    "prefix",
    "chosen",
    "rejected",
    "value_chosen",
    "value_rejected",
    "delta_value",
    "margin",
    "bh_before",
    "bh_after",
    "learned",
    "identical",
    "pair_index",
    "parent_node",
    "chosen_node",
    "rejected_node",
]

#: Rows drawn into one static page at most (the rest stay in pairs.parquet and in Lab).
MAX_HTML_ROWS = 3000


_MARGIN_KEYS = ("margin", "gamma", "fixed_margin")


def train_settings(run: Run, phase: str = "sppd") -> dict[str, Any]:
    """The run's train config for ``phase``: the ``train`` section with ``phase_train``'s
    overrides, as the loop applies them (margin mode, γ, fixed margin, β)."""
    config = run.config
    # Runs made before the margin moved to the train config keep it under pairs:.
    legacy = {k: v for k, v in (config.get("pairs") or {}).items() if k in _MARGIN_KEYS}
    train = config.get("train") or {}
    phase_train = (config.get("phase_train") or {}).get(phase) or {}
    return {**legacy, **train, **phase_train}


def _margins(delta_value: pd.Series, settings: dict[str, Any]) -> np.ndarray:
    """The margin of every pair of one phase, by the trainer's own rule
    (:func:`sppd_lib.loss.value_margin`; torch is imported only here)."""
    import torch

    from sppd_lib.loss import value_margin

    if not len(delta_value):
        return np.zeros(0)
    margins = value_margin(
        torch.tensor(delta_value.to_numpy(dtype=float)),
        str(settings.get("margin", "dynamic")),
        float(settings.get("gamma", 1.0)),
        settings.get("fixed_margin"),
    )
    return margins.numpy()


def identical_steps(pairs: pd.DataFrame) -> pd.Series:
    """Per pair: the chosen and the rejected step have the same text (up to surrounding
    white space). With the same tokens such a pair has h = 0 whatever the policy: its loss
    is a constant that teaches nothing. It is trained on all the same; the pages flag it."""
    chosen = pairs["chosen"].astype(str).str.strip()
    return chosen == pairs["rejected"].astype(str).str.strip()


def _prefix(run: Run, iteration: int, tree_id: str, parent: int) -> tuple[str, str]:
    """(question, steps before the branching step) of a pair, from its tree."""
    tree = run.tree(iteration, tree_id)
    if tree is None:
        return "", ""
    steps = [node.text for node in tree.path(parent) if node.parent_id is not None]
    return tree.problem.question, "".join(steps)


def _trained(pair_log: pd.DataFrame | None) -> pd.DataFrame:
    """pair_index -> β·h the first and the last time the SPPD phase trained on the pair."""
    if pair_log is None or not len(pair_log):
        return pd.DataFrame(columns=["bh_before", "bh_after"])
    log = pair_log
    if "phase" in log.columns:
        log = log[log["phase"] == "sppd"]
    log = log.sort_values("step", kind="stable").groupby("pair_index")["reward_margin"]
    return pd.DataFrame({"bh_before": log.first(), "bh_after": log.last()})


def pairs_frame(
    run: Run,
    iteration: int | None = None,
    tree_id: str | None = None,
    max_depth: int | None = None,
) -> pd.DataFrame:
    """The pairs of one iteration (``None``: all) as :data:`PAIR_COLUMNS`.

    ``margin`` comes from the train config (margin mode, γ, fixed margin) and Δv; ``bh_before``
    / ``bh_after`` are β·h the first / last time the pair was in a training batch (measured
    before that batch's update, so "after" is the start of the last epoch); ``learned`` is
    β·h > margin at that last time (loss below log 2), missing when the pair was not trained;
    ``identical``: chosen and rejected text are the same (:func:`identical_steps`).
    ``max_depth`` keeps the pairs whose sibling steps are at most that deep.
    """
    iterations = run.tree_iterations() if iteration is None else [iteration]
    settings = train_settings(run)
    frames = []
    for k in iterations:
        pairs = run.pairs(k)
        if pairs is None or not len(pairs):
            continue
        pairs = pairs.reset_index(drop=True).assign(pair_index=lambda f: f.index)
        pairs["margin"] = _margins(pairs["delta_value"], settings)
        if tree_id is not None:
            pairs = pairs[pairs["tree_id"] == tree_id]
        if max_depth is not None:  # the tree explorer's depth filter
            pairs = pairs[pairs["depth"] <= max_depth]
        trained = _trained(run.pair_log(k))
        pairs = pairs.join(trained, on="pair_index")
        parents = zip(pairs["tree_id"], pairs["parent_node"], strict=True)
        texts = [_prefix(run, k, t, int(p)) for t, p in parents]
        pairs["question"] = [q for q, _ in texts]
        pairs["prefix"] = [p for _, p in texts]
        after = pairs["bh_after"].astype(float)
        pairs["learned"] = [
            None if np.isnan(a) else bool(a > m)
            for a, m in zip(after, pairs["margin"], strict=True)
        ]
        pairs["identical"] = identical_steps(pairs)
        frames.append(pairs.assign(iteration=k, problem_id=pairs["tree_id"]))
    if not frames:
        return pd.DataFrame(columns=PAIR_COLUMNS)
    return pd.concat(frames, ignore_index=True)[PAIR_COLUMNS]


def _step_cell(text: str, limit: int = 600) -> Cell:
    shown = text if len(text) <= limit else text[:limit] + " …"
    return Cell(f"<pre>{html.escape(shown)}</pre>", text, text)


def _prefix_cell(question: str, prefix: str) -> Cell:
    """The last line of the prefix, the whole prefix (and question) one click away."""
    tail = prefix.strip().splitlines()[-1] if prefix.strip() else "(first step)"
    tail = tail if len(tail) <= 60 else "…" + tail[-60:]
    full = f"Question: {question}\n\n{prefix}" if question else prefix
    return Cell(
        f"<details><summary>{html.escape(tail)}</summary><pre>{html.escape(full)}</pre></details>",
        len(prefix),
        prefix,
    )


_TABLE_COLUMNS = [
    Column("iteration", "iteration", menu=True, numeric=True),
    Column("problem", "problem", help="the tree's problem id; hover the prefix for the question"),
    Column("depth", "depth", menu=True, numeric=True, help="depth of the two sibling steps"),
    Column("prefix", "prefix", help="the steps they share (click for all of it)"),
    Column("chosen", "chosen step", help="the sibling of higher value"),
    Column("rejected", "rejected step", help="the sibling of lower value"),
    Column("value_chosen", "v chosen", numeric=True),
    Column("value_rejected", "v rejected", numeric=True),
    Column("delta_value", "Δv", numeric=True, help="v(chosen) − v(rejected)"),
    Column("margin", "margin", numeric=True, help="the loss margin (train config and Δv)"),
    Column("bh_before", "β·h before", numeric=True, help="β·h the first time it was trained"),
    Column("bh_after", "β·h after", numeric=True, help="β·h the last time it was trained"),
    Column("learned", "learned", menu=True, help="β·h > margin the last time it was trained"),
    Column(
        "identical",
        "identical",
        menu=True,
        help="chosen and rejected steps have the same text: h = 0, nothing to learn",
    ),
    Column("tree", "tree", hidden=True),  # iteration/problem: the explorer narrows by it
]


def pairs_table(
    run: Run,
    iteration: int | None = None,
    tree_id: str | None = None,
    table_id: str | None = None,
    limit: int = MAX_HTML_ROWS,
    max_depth: int | None = None,
) -> HTMLBlock:
    """:func:`pairs_frame` as an offline sortable, filterable table (largest Δv first); at
    most ``limit`` rows are put in the page, and the note says so."""
    frame = pairs_frame(run, iteration, tree_id, max_depth)
    total = len(frame)
    if total > limit:
        frame = frame.sort_values("delta_value", ascending=False, kind="stable").head(limit)
    settings = train_settings(run)
    mode = settings.get("margin", "dynamic")
    rule = {"dynamic": f"γ·Δv with γ = {settings.get('gamma', 1.0)}", "none": "0 (Step-DPO)"}
    rule["fixed"] = (
        f"fixed at {settings['fixed_margin']}"
        if settings.get("fixed_margin") is not None
        else "fixed at the mean of γ·Δv of the iteration's pairs"
    )
    note = (
        f"{total} pairs{' of this tree' if tree_id else ''}"
        f"{f' up to depth {max_depth}' if max_depth is not None else ''}. "
        f"Margin: {html.escape(rule.get(mode, str(mode)))} (train config). "
        "β·h before / after: the implicit reward margin the first and the last time the "
        "pair was in a training batch (before that batch's update); learned: β·h > margin "
        "then. A dash: the pair was not trained on (no pair_log.parquet, or held out by "
        "train.heldout_trees)."
    )
    identical = int(frame["identical"].sum()) if total else 0
    if identical:
        note += (
            f" {identical} pair(s) have identical chosen and rejected text (flagged ⚠): "
            "h = 0 for them, so training cannot learn them."
        )
    if total > limit:
        note += f" Only the {limit} pairs of largest Δv are in this page; all are in pairs.parquet."
    rows = []
    for r in frame.itertuples():
        learned = text_cell(r.learned) if r.learned is not None else Cell("–", None, "not trained")
        rows.append(
            [
                text_cell(int(r.iteration)),
                Cell(
                    f'<span title="{html.escape(r.question)}">{html.escape(r.problem_id)}</span>',
                    natural_key(r.problem_id),
                    r.problem_id,
                ),
                text_cell(int(r.depth)),
                _prefix_cell(r.question, r.prefix),
                _step_cell(r.chosen),
                _step_cell(r.rejected),
                text_cell(float(r.value_chosen)),
                text_cell(float(r.value_rejected)),
                text_cell(float(r.delta_value)),
                text_cell(float(r.margin)),
                text_cell(float(r.bh_before)),
                text_cell(float(r.bh_after)),
                learned,
                Cell("⚠ identical", 1, "yes") if r.identical else Cell("", 0, "no"),
                Cell(
                    f"{int(r.iteration)}/{html.escape(r.problem_id)}",
                    None,
                    f"{int(r.iteration)}/{r.problem_id}",
                ),
            ]
        )
    return interactive_table(
        _TABLE_COLUMNS,
        rows,
        note=note,
        sort="delta_value",
        descending=True,
        table_id=table_id,
        empty=f"Run {html.escape(run.run_id)} has no pairs yet (no pairs.parquet).",
    )


def no_pair_reasons(run: Run) -> pd.DataFrame:
    """Per iteration (``pairs_summary.json``): trees, trees with pairs, pairs, and how many
    trees gave no pair for each reason (e.g. "no sibling gap above 0.5")."""
    rows = []
    for k in run.tree_iterations():
        summary = run.pairs_summary(k)
        if summary is None:
            continue
        row: dict[str, Any] = {
            "iteration": k,
            "trees": summary.get("trees"),
            "trees with pairs": summary.get("trees_with_pairs"),
            "pairs": summary.get("pairs"),
        }
        for reason, count in (summary.get("trees_without_pairs") or {}).items():
            row[f"no pair: {reason}"] = count
        rows.append(row)
    if not rows:
        return pd.DataFrame({"note": ["no pairs_summary.json yet"]}, index=[""])
    return pd.DataFrame(rows).set_index("iteration").fillna(0).astype(int)
