"""The run overview: one row per iteration with what it cost and how far to trust it — prompts,
trees with a correct leaf, pairs (and identical ones), the Δv spread, the learned rate, the
training loss and reward accuracy, greedy pass@1 per benchmark with its count, 95% interval and
McNemar p against iteration 0, and the seconds of every phase (``phase_times.jsonl``); and,
for the margins page, the learned pairs and the held-out preference metrics.

Every rate is printed with its count (``7/44``): a share of a handful of problems or pairs says
little, and the reader has to see how little.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd

from sppd_lib.metrics import paired_change, wilson_interval
from sppd_lib.viz.pairs import identical_steps
from sppd_lib.viz.run import Run

__all__ = [
    "final_pairs",
    "heldout_table",
    "learned_by_iteration",
    "learned_table",
    "overview_html",
    "pass1_by_iteration",
    "phase_seconds",
    "run_overview",
]

#: Order of the phases in the seconds column (others follow, alphabetically).
PHASE_ORDER = ["sample", "pairs", "train_sft", "train_dpo", "train_sppd", "eval"]


def _share(count: int, total: int) -> str:
    """``7/44 (16%)``; a dash when there is nothing to count."""
    return "–" if not total else f"{count}/{total} ({count / total:.0%})"


def _spread(values: pd.Series) -> str:
    """``0.62; [0.51–0.97]``: median and range, for a distribution in one cell."""
    values = pd.Series(values, dtype=float).dropna()
    if not len(values):
        return "–"
    return f"{values.median():.3g}; [{values.min():.3g}–{values.max():.3g}]"


def final_pairs(run: Run, iteration: int) -> pd.DataFrame | None:
    """One row per trained pair of the SPPD phase: the pair log's record the last time the
    pair was in a batch (β·h ``reward_margin``, the loss margin ``value_margin``, ``loss``),
    with ``learned`` (β·h > margin) and ``ranked`` (β·h > 0). β·h is measured before that
    batch's update, so it is the pair's state at the start of its last epoch. ``None``
    when the iteration has no pair log."""
    log = run.pair_log(iteration)
    if log is None or not len(log) or "reward_margin" not in log.columns:
        return None
    if "phase" in log.columns:
        log = log[log["phase"] == "sppd"]
    if not len(log):
        return None
    last = log.sort_values("step", kind="stable").groupby("pair_index").tail(1)
    last = last.sort_values("pair_index").reset_index(drop=True)
    return last.assign(
        learned=last["reward_margin"] > last["value_margin"], ranked=last["reward_margin"] > 0
    )


def learned_by_iteration(run: Run) -> pd.DataFrame:
    """Per iteration with a pair log: pairs trained, learned (β·h > margin), ranked (β·h > 0,
    the reward accuracy), the mean loss, and the median / min / max of β·h and of the margin,
    all from each pair's last record (:func:`final_pairs`)."""
    rows = []
    for k in run.iterations:
        last = final_pairs(run, k)
        if last is None:
            continue
        bh, margin = last["reward_margin"], last["value_margin"]
        rows.append(
            {
                "iteration": k,
                "trained": len(last),
                "learned": int(last["learned"].sum()),
                "ranked": int(last["ranked"].sum()),
                "loss": float(last["loss"].mean()) if "loss" in last else float("nan"),
                "bh_median": float(bh.median()),
                "bh_min": float(bh.min()),
                "bh_max": float(bh.max()),
                "margin_median": float(margin.median()),
                "margin_min": float(margin.min()),
                "margin_max": float(margin.max()),
            }
        )
    return pd.DataFrame(rows)


def learned_table(run: Run) -> pd.DataFrame:
    """:func:`learned_by_iteration` for reading: learned k/n, β·h > 0 k/n, and β·h against
    the margin asked, each as median [range]."""
    frame = learned_by_iteration(run)
    if not len(frame):
        return pd.DataFrame({"note": ["not trained yet (no pair_log.parquet)"]}, index=[""])
    return pd.DataFrame(
        {
            "pairs trained": frame["trained"].to_numpy(),
            "learned (β·h > margin)": [
                _share(a, n) for a, n in zip(frame["learned"], frame["trained"], strict=True)
            ],
            "reward accuracy (β·h > 0)": [
                _share(a, n) for a, n in zip(frame["ranked"], frame["trained"], strict=True)
            ],
            "β·h at the end: median [range]": [
                f"{m:.3g} [{lo:.3g}–{hi:.3g}]"
                for m, lo, hi in zip(
                    frame["bh_median"], frame["bh_min"], frame["bh_max"], strict=True
                )
            ],
            "margin asked: median [range]": [
                f"{m:.3g} [{lo:.3g}–{hi:.3g}]"
                for m, lo, hi in zip(
                    frame["margin_median"], frame["margin_min"], frame["margin_max"], strict=True
                )
            ],
            "mean loss": [f"{x:.3f}" for x in frame["loss"]],
        },
        index=pd.Index(frame["iteration"].to_numpy(), name="iteration"),
    )


def heldout_table(run: Run) -> pd.DataFrame:
    """Per iteration with ``heldout.parquet`` (``train.heldout_trees`` > 0): the pairs of
    trees kept out of training, scored after it. Reward accuracy and learned (k/n, β·h > 0
    and > margin; before training β·h is 0 for every pair), and the mean summed log-prob of
    the chosen and the rejected steps before (the reference) and after training with the
    pairs whose chosen step lost probability: both falling is likelihood displacement."""
    rows = {}
    for k in run.iterations:
        frame = run.heldout(k)
        if frame is None or not len(frame):
            continue
        n = len(frame)
        chosen = frame["chosen_after"] - frame["chosen_before"]
        rejected = frame["rejected_after"] - frame["rejected_before"]
        rows[k] = {
            "held-out pairs (trees)": f"{n} ({frame['tree_id'].nunique()})",
            "reward accuracy after (β·h > 0)": _share(int(frame["ranked"].sum()), n),
            "learned after (β·h > margin)": _share(int(frame["learned"].sum()), n),
            "log π(chosen): before → after": f"{frame['chosen_before'].mean():.2f} → "
            f"{frame['chosen_after'].mean():.2f} ({chosen.mean():+.2f})",
            "log π(rejected): before → after": f"{frame['rejected_before'].mean():.2f} → "
            f"{frame['rejected_after'].mean():.2f} ({rejected.mean():+.2f})",
            "chosen step less likely": _share(int((chosen < 0).sum()), n),
        }
    if not rows:
        return pd.DataFrame(
            {"note": ["no held-out pairs (set train.heldout_trees > 0 to hold some out)"]},
            index=[""],
        )
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("iteration")


def pass1_by_iteration(run: Run) -> pd.DataFrame:
    """Greedy pass@1 per (iteration, benchmark) from ``eval.parquet``: correct, n, the 95%
    Wilson interval, and against iteration 0 on the problems both evaluated: gained, lost and
    the exact McNemar p (NaN for iteration 0 or without it)."""
    start = run.eval(0)
    rows = []
    for k in run.iterations:
        evals = run.eval(k)
        if evals is None or not len(evals):
            continue
        change = (
            paired_change(start, evals).set_index("benchmark")
            if start is not None and k != 0
            else pd.DataFrame()
        )
        for benchmark, group in evals.groupby("benchmark", sort=False):
            correct, total = int(group["correct"].sum()), len(group)
            low, high = wilson_interval(correct, total)
            paired = change.loc[benchmark] if benchmark in change.index else None
            rows.append(
                {
                    "iteration": k,
                    "benchmark": str(benchmark),
                    "correct": correct,
                    "n": total,
                    "ci95_low": low,
                    "ci95_high": high,
                    "gained": int(paired["gained"]) if paired is not None else None,
                    "lost": int(paired["lost"]) if paired is not None else None,
                    "p_value": float(paired["p_value"]) if paired is not None else float("nan"),
                }
            )
    return pd.DataFrame(rows)


def phase_seconds(run: Run) -> pd.DataFrame:
    """Seconds per (iteration, phase) from ``phase_times.jsonl`` (a phase that ran twice, e.g.
    resumed after a crash, counts both times); one column per phase, in pipeline order."""
    times = run.directory.phase_times()
    if not len(times) or "seconds" not in times.columns:
        return pd.DataFrame()
    table = times.pivot_table(index="iteration", columns="phase", values="seconds", aggfunc="sum")
    order = [p for p in PHASE_ORDER if p in table.columns]
    order += sorted(c for c in table.columns if c not in order)
    return table[order]


def _seconds_cell(row: pd.Series) -> str:
    parts = [f"{phase.removeprefix('train_')} {s:.0f}" for phase, s in row.items() if s == s]
    total = float(np.nansum(row.to_numpy(dtype=float)))
    return f"{total:.0f} s; " + "; ".join(parts) if parts else "–"


def _pass1_cell(r: Any) -> str:
    interval = f"[{100 * r.ci95_low:.0f}–{100 * r.ci95_high:.0f}]"
    cell = f"{r.correct}/{r.n} = {r.correct / r.n:.0%} {interval}"
    if r.gained is not None and not pd.isna(r.gained):
        cell += f"; vs 0: +{int(r.gained)} −{int(r.lost)}, p = {r.p_value:.2g}"
    return cell


def run_overview(run: Run) -> pd.DataFrame:
    """One row per iteration, every number with its count (strings, for the index page):
    prompts (trees sampled), trees with a correct leaf, pairs (identical chosen and rejected
    steps counted), Δv median [range], learned and reward accuracy (k/n pairs), the mean
    loss, ``pass@1 <benchmark>`` (k/n = %, 95% interval, gained / lost and McNemar p against
    iteration 0) and seconds (total: per phase)."""
    learned = learned_by_iteration(run)
    learned = learned.set_index("iteration") if len(learned) else None
    scores = pass1_by_iteration(run)
    seconds = phase_seconds(run)
    rows = []
    for k in run.iterations:
        stats = run.tree_stats(k) if k in run.tree_iterations() else pd.DataFrame()
        pairs = run.pairs(k)
        row: dict[str, Any] = {"iteration": k}
        row["prompts"] = str(len(stats)) if len(stats) else "–"
        row["trees with a correct leaf"] = (
            _share(int((stats["correct_paths"] > 0).sum()), len(stats)) if len(stats) else "–"
        )
        if pairs is not None and len(pairs):
            same = int(identical_steps(pairs).sum())
            heldout = run.heldout(k)
            notes = [f"{same} identical"] if same else []
            notes += [f"{len(heldout)} held out"] if heldout is not None and len(heldout) else []
            row["pairs"] = "; ".join([str(len(pairs)), *notes])
            row["Δv median [range]"] = _spread(pairs["delta_value"])
        else:
            row["pairs"] = "0" if pairs is not None else "–"
            row["Δv median [range]"] = "–"
        if learned is not None and k in learned.index:
            r = learned.loc[k]
            row["learned (β·h > margin)"] = _share(int(r["learned"]), int(r["trained"]))
            row["reward accuracy (β·h > 0)"] = _share(int(r["ranked"]), int(r["trained"]))
            row["train loss"] = f"{r['loss']:.3f}"
        else:
            row["learned (β·h > margin)"] = row["reward accuracy (β·h > 0)"] = "–"
            row["train loss"] = "–"
        for r in scores[scores["iteration"] == k].itertuples() if len(scores) else []:
            row[f"pass@1 {r.benchmark}"] = _pass1_cell(r)
        row["seconds"] = _seconds_cell(seconds.loc[k]) if k in seconds.index else "–"
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows).set_index("iteration").fillna("–")
    return table[[c for c in table.columns if c != "seconds"] + ["seconds"]]


_HELP = {
    "prompts": "problems sampled as trees this iteration",
    "trees with a correct leaf": "trees with at least one complete path graded correct",
    "pairs": "sibling step pairs kept (identical: chosen and rejected steps have the same "
    "text; held out: pairs of trees kept out of training, train.heldout_trees)",
    "Δv median [range]": "value gap v(chosen) − v(rejected) of the pairs",
    "learned (β·h > margin)": "pairs whose implicit reward margin β·h exceeded the loss margin "
    "the last time they were trained on (loss below log 2)",
    "reward accuracy (β·h > 0)": "pairs ranked the right way the last time they were trained on",
    "train loss": "mean SPPD loss of the pairs the last time they were trained on",
    "seconds": "wall-clock seconds per phase (phase_times.jsonl): total, then sample, "
    "pairs, train, eval",
}


def _lines(cell: str) -> str:
    """A cell's parts (``; ``-separated) on lines of their own, so the table fits a page."""
    return "<br>".join(f"<span>{html.escape(part)}</span>" for part in cell.split("; "))


def overview_html(run: Run) -> str:
    """:func:`run_overview` as an HTML table with a tooltip on every header."""
    table = run_overview(run)
    if not len(table):
        return "<p>Nothing computed yet.</p>"

    def header(column: str) -> str:
        tip = _HELP.get(column)
        if tip is None and column.startswith("pass@1 "):
            tip = (
                "greedy pass@1: correct/problems = share [95% Wilson interval]; against "
                "iteration 0 on the same problems: gained, lost, exact McNemar p"
            )
        title = f' title="{html.escape(tip)}"' if tip else ""
        return f"<th{title}>{html.escape(column)}</th>"

    head = "<tr><th>iteration</th>" + "".join(header(c) for c in table.columns) + "</tr>"
    body = "".join(
        f"<tr><td>{k}</td>" + "".join(f"<td>{_lines(str(v))}</td>" for v in row) + "</tr>"
        for k, row in zip(table.index, table.to_numpy(), strict=True)
    )
    return f'<table class="overview">{head}{body}</table>'
