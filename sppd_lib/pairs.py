"""Preference pairs from valued step trees (arXiv 2502.13516).

Step level: two sibling steps under the same prefix whose values differ by more than
``threshold`` (Δv = v_w - v_l > 0.5 in the paper) become a pair. Each pair carries both
values and Δv, and the raw sampler log-probs of both steps (the reference log-probs of the
loss). The margin is not stored: training computes it from Δv (``TrainConfig.margin``,
``gamma``, ``fixed_margin``), so every margin variant trains on the same pairs file.

Sentence level: τ+ (correct complete paths, best first) for SFT, and (τ+, τ−) pairs of the
same problem for sentence-level DPO.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import pandas as pd

from sppd_lib.checker import Verdict, step_verdict
from sppd_lib.config import PairConfig
from sppd_lib.data import GENERATED
from sppd_lib.files import write_parquet_atomic
from sppd_lib.rundir import trl_pairs_path
from sppd_lib.tree import StepNode, StepTree, merge_identical_siblings
from sppd_lib.values import apply_values, grade_leaves, outcome_counts

__all__ = [
    "build_pairs",
    "build_sentence_pairs",
    "build_sft_examples",
    "path_pairs",
    "phase_data",
    "positive_paths",
    "step_pairs",
    "stepwise_records",
    "summarize_pairs",
    "to_trl_preference",
    "value_trees",
    "write_pairs",
]

logger = logging.getLogger(__name__)


def value_trees(trees: Iterable[StepTree], config: PairConfig) -> Iterator[StepTree]:
    """Each tree, its identical siblings merged (``config.merge_siblings``), its leaves graded
    by ``config.leaf_answer`` and every node valued by ``config``'s estimator (in place; a
    PRM is loaded once)."""
    from sppd_lib.prm import load_scorer

    scorer = load_scorer(config.prm_model) if config.value == "prm" else None
    for tree in trees:
        if config.merge_siblings:
            merge_identical_siblings(tree)
        if tree.meta.get("leaf_answer", "last_number") != config.leaf_answer:
            grade_leaves(tree, config.leaf_answer)  # graded by another rule when sampled
        yield apply_values(
            tree,
            config.value,
            bellman_aggregate=config.bellman_aggregate,
            bellman_discount=config.bellman_discount,
            scorer=scorer,
        )


def _valued(trees: Iterable[StepTree], config: PairConfig, valued: bool) -> Iterable[StepTree]:
    return trees if valued else value_trees(trees, config)


def _has_evidence(node: StepNode, config: PairConfig) -> bool:
    return config.value != "mc" or (node.mc_total or 0) >= config.min_leaves


def _skip_reason(tree: StepTree, config: PairConfig) -> str | None:
    if not tree.problem.answer.strip():
        return "missing gold answer"
    # Outcome-based values need a graded path; a PRM scores unfinished steps too.
    if config.value != "prm" and not tree.complete_leaves():
        return "no complete path"
    if all(len(tree.children(n.id)) < 2 for n in tree.nodes):
        return "no sibling steps"
    return None


def _same_step(a: StepNode, b: StepNode) -> bool:
    return a.text.split() == b.text.split()


def _is_generated(tree: StepTree) -> bool:
    return tree.problem.source in GENERATED


class _ProcessTruth:
    """The checker's verdicts on a tree's steps, computed once each (generated arithmetic)."""

    def __init__(self, tree: StepTree) -> None:
        self.tree = tree
        self._verdicts: dict[int, Verdict] = {}
        self._counts: dict[int, tuple[int, int]] | None = None

    def verdict(self, node: StepNode) -> Verdict:
        if node.id not in self._verdicts:
            self._verdicts[node.id] = step_verdict(node.text)
        return self._verdicts[node.id]

    def sound_chosen(self, node: StepNode) -> bool:
        """Every claim holds, or it is a correct final answer after a prefix with no false claim."""
        verdict = self.verdict(node)
        if verdict == "true":
            return True
        return (
            verdict == "no_claim"
            and node.is_complete
            and bool(node.correct)
            and all(self.verdict(step) != "false" for step in self.tree.path(node.id))
        )

    def wrong_rejected(self, node: StepNode) -> bool:
        """A false claim, or only wrong complete outcomes below it."""
        if self.verdict(node) == "false":
            return True
        if self._counts is None:
            self._counts = outcome_counts(self.tree)
        correct, total = self._counts[node.id]
        return total > 0 and correct == 0


def _pair_row(
    tree: StepTree,
    parent: StepNode,
    win: StepNode,
    lose: StepNode,
    config: PairConfig,
    truth: _ProcessTruth | None = None,
) -> dict[str, Any]:
    if _same_step(win, lose):  # step_pairs never pairs them; a pair of equal sides is a bug
        raise ValueError(f"{tree.problem.id}: pair of equal steps {win.id}, {lose.id}")
    delta = win.value - lose.value  # type: ignore[operator]
    prefix = tree.path(parent.id)
    return {
        "tree_id": tree.problem.id,
        "problem_id": tree.problem.id,
        "gold": tree.problem.answer,
        "prompt": tree.prompt_text + "".join(s.text for s in prefix),
        "prompt_ids": tree.prefix_ids(parent.id),
        "chosen": win.text,
        "rejected": lose.text,
        "chosen_ids": win.token_ids,
        "rejected_ids": lose.token_ids,
        "chosen_ref_logps": win.logprobs,
        "rejected_ref_logps": lose.logprobs,
        "chosen_ref_logp": float(sum(win.logprobs)),
        "rejected_ref_logp": float(sum(lose.logprobs)),
        "value_chosen": float(win.value),  # type: ignore[arg-type]
        "value_rejected": float(lose.value),  # type: ignore[arg-type]
        "delta_value": float(delta),
        "depth": win.depth,
        "parent_node": parent.id,
        "chosen_node": win.id,
        "rejected_node": lose.id,
        "chosen_terminal": win.terminal,
        "rejected_terminal": lose.terminal,
        # The step ends the solution (an answer or EOS), so EOS belongs after it.
        "chosen_final": win.terminal_reason in ("answer", "eos"),
        "rejected_final": lose.terminal_reason in ("answer", "eos"),
        "value_source": win.value_source,
        # The exact step checker's verdicts (generated arithmetic; None elsewhere).
        "chosen_check": truth.verdict(win) if truth else None,
        "rejected_check": truth.verdict(lose) if truth else None,
    }


def step_pairs(tree: StepTree, config: PairConfig) -> tuple[list[dict[str, Any]], str | None]:
    """Sibling step pairs of one valued tree, and why there are none (``None`` if there are)."""
    reason = _skip_reason(tree, config)
    if reason is not None:
        return [], reason
    rows = []
    truth = _ProcessTruth(tree) if _is_generated(tree) else None
    for parent in tree.nodes:
        siblings = [c for c in tree.children(parent.id) if _has_evidence(c, config)]
        siblings.sort(key=lambda c: c.value, reverse=True)  # type: ignore[arg-type, return-value]
        if len(siblings) < 2:
            continue
        if config.pairing == "best_worst":
            couples = [(siblings[0], siblings[-1])]
        else:
            couples = list(itertools.combinations(siblings, 2))
        for win, lose in couples:
            if not win.value - lose.value > config.threshold:  # type: ignore[operator]
                continue
            if _same_step(win, lose):  # unmerged trees (merge_siblings false): nothing to learn
                continue
            checked = config.process_check and truth is not None
            if checked and not (truth.sound_chosen(win) and truth.wrong_rejected(lose)):  # type: ignore[union-attr]
                continue
            rows.append(_pair_row(tree, parent, win, lose, config, truth))
    return rows, None if rows else f"no sibling gap above {config.threshold}"


def _path_score(path: list[StepNode], rule: str) -> float:
    values = [float(step.value or 0.0) for step in path]
    if rule == "final":
        return values[-1]
    return sum(values) / len(values) if rule == "mean" else min(values)


def positive_paths(tree: StepTree, config: PairConfig) -> list[list[StepNode]]:
    """τ+: correct complete paths, best first by ``config.path_rule``."""
    correct = [p for p in tree.complete_paths() if p[-1].correct]
    return sorted(correct, key=lambda p: _path_score(p, config.path_rule), reverse=True)


def path_pairs(tree: StepTree, config: PairConfig) -> list[dict[str, Any]]:
    """(τ+, τ−) pairs of one problem: best correct with worst wrong, second with second, ..."""
    winners = positive_paths(tree, config)
    losers = sorted(
        (p for p in tree.complete_paths() if not p[-1].correct),
        key=lambda p: _path_score(p, config.path_rule),
    )
    prompt = tree.prompt_text
    return [
        {
            "tree_id": tree.problem.id,
            "prompt": prompt,
            "prompt_ids": list(tree.prompt_ids),
            "chosen": "".join(s.text for s in win),
            "rejected": "".join(s.text for s in lose),
            "chosen_ids": [t for s in win for t in s.token_ids],
            "rejected_ids": [t for s in lose for t in s.token_ids],
            "chosen_ref_logp": float(sum(sum(s.logprobs) for s in win)),
            "rejected_ref_logp": float(sum(sum(s.logprobs) for s in lose)),
            "score_chosen": _path_score(win, config.path_rule),
            "score_rejected": _path_score(lose, config.path_rule),
        }
        for win, lose in zip(winners, losers, strict=False)  # as many as the shorter list
    ]


def build_pairs(
    trees: Iterable[StepTree], config: PairConfig, *, valued: bool = False
) -> tuple[pd.DataFrame, Counter[str]]:
    """Value every tree (unless ``valued``: they carry ``config``'s values already), then
    collect step pairs; returns the pairs and why trees gave none."""
    rows: list[dict[str, Any]] = []
    reasons: Counter[str] = Counter()
    for tree in _valued(trees, config, valued):
        tree_rows, reason = step_pairs(tree, config)
        rows.extend(tree_rows)
        if reason is not None:
            reasons[reason] += 1
            logger.debug("%s: no pairs (%s)", tree.problem.id, reason)
    if reasons:
        logger.info("trees without pairs: %s", dict(reasons))
    # Columns come from the rows; the list only names them when there is no row at all.
    return (pd.DataFrame(rows) if rows else pd.DataFrame(columns=_COLUMNS)), reasons


_COLUMNS = [  # the keys of _pair_row, for an empty result
    "tree_id", "problem_id", "gold", "prompt", "prompt_ids", "chosen", "rejected", "chosen_ids",
    "rejected_ids", "chosen_ref_logps", "rejected_ref_logps", "chosen_ref_logp",
    "rejected_ref_logp", "value_chosen", "value_rejected", "delta_value", "depth",
    "parent_node", "chosen_node", "rejected_node", "chosen_terminal", "rejected_terminal",
    "chosen_final", "rejected_final", "value_source", "chosen_check", "rejected_check",
]  # fmt: skip


def build_sentence_pairs(
    trees: Iterable[StepTree], config: PairConfig, *, valued: bool = False
) -> pd.DataFrame:
    """(τ+, τ−) pairs of every tree for sentence-level DPO (margin 0), trainer-ready
    (``valued``: as in :func:`build_pairs`)."""
    rows = []
    for tree in _valued(trees, config, valued):
        rows.extend({**row, "delta_value": 0.0} for row in path_pairs(tree, config))
    columns = ["tree_id", "prompt", "prompt_ids", "chosen", "rejected", "chosen_ids"]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)


def build_sft_examples(
    trees: Iterable[StepTree], config: PairConfig, per_problem: int = 4, *, valued: bool = False
) -> pd.DataFrame:
    """τ+ for SFT: up to ``per_problem`` distinct correct complete paths of each tree, best
    first (a cap, so easy problems with many correct paths do not dominate; ``valued``: as in
    :func:`build_pairs`)."""
    rows = []
    for tree in _valued(trees, config, valued):
        seen: set[tuple[int, ...]] = set()
        for path in positive_paths(tree, config):
            ids = tuple(t for step in path for t in step.token_ids)
            if ids in seen or len(seen) >= per_problem:
                continue
            seen.add(ids)
            rows.append(
                {
                    "tree_id": tree.problem.id,
                    "prompt": tree.prompt_text,
                    "prompt_ids": list(tree.prompt_ids),
                    "chosen": "".join(step.text for step in path),
                    "chosen_ids": list(ids),
                }
            )
    columns = ["tree_id", "prompt", "prompt_ids", "chosen", "chosen_ids"]
    return pd.DataFrame(rows, columns=columns)


def phase_data(
    phase: str,
    trees: Iterable[StepTree],
    config: PairConfig,
    sft_per_problem: int = 4,
    *,
    valued: bool = False,
) -> pd.DataFrame:
    """The training data of one phase from sampled trees: step pairs (``sppd``), sentence
    pairs (``dpo``) or correct paths (``sft``); ``valued`` as in :func:`build_pairs`."""
    if phase == "sft":
        return build_sft_examples(trees, config, sft_per_problem, valued=valued)
    if phase == "dpo":
        return build_sentence_pairs(trees, config, valued=valued)
    return build_pairs(trees, config, valued=valued)[0]


#: Columns of the TRL export (``<stem>.trl.parquet``); see :mod:`sppd_lib.trl_export`.
TRL_COLUMNS = [
    "prompt", "chosen", "rejected", "ref_chosen_logps", "ref_rejected_logps",
    "chosen_final", "rejected_final", "sampled_chosen_ids", "sampled_rejected_ids",
    "delta_value", "value_chosen", "value_rejected",
]  # fmt: skip


def to_trl_preference(pairs: pd.DataFrame) -> pd.DataFrame:
    """TRL's preference format for ``DPOTrainer``: ``prompt`` (the chat prompt and the steps
    before the pair), ``chosen``, ``rejected`` (one step each) and, per TRL's names, the
    reference log-probs ``ref_chosen_logps`` / ``ref_rejected_logps`` (the sampler's, summed
    over the step's tokens: the reference of SPPD is the policy that sampled).

    ``chosen_final`` / ``rejected_final`` say whether a step ends the solution: TRL appends
    EOS to every completion, which only a final step should get; ``sampled_*_ids`` are the
    sampled tokens the reference log-probs belong to. :func:`sppd_lib.trl_export.step_dpo_trainer`
    uses both. Δv and the values ride along (a margin for TRL is γ·Δv for your γ).
    """
    out = pairs.rename(
        columns={
            "chosen_ref_logp": "ref_chosen_logps",
            "rejected_ref_logp": "ref_rejected_logps",
            "chosen_ids": "sampled_chosen_ids",
            "rejected_ids": "sampled_rejected_ids",
        }
    )
    for side in ("chosen", "rejected"):
        if f"{side}_final" not in out:  # whole-solution pairs: every completion ends
            out[f"{side}_final"] = True
    return out[TRL_COLUMNS].copy()


def stepwise_records(trees: Iterable[StepTree], threshold: float | None = None) -> pd.DataFrame:
    """TRL's stepwise format per complete path: ``prompt``, ``completions`` (steps) and
    ``labels``: each step's value (soft, e.g. ``mc`` values in [0, 1]), or with
    ``threshold`` hard labels (value >= threshold).

    TRL's PRM trainer casts every label with ``int()``, which truncates: a soft 0.9 becomes
    0, so only hard labels (or a threshold) keep their meaning there.
    """
    rows = []
    for tree in trees:
        for path in tree.complete_paths():
            values = [float(s.value or 0.0) for s in path]
            labels = values if threshold is None else [v >= threshold for v in values]
            rows.append(
                {
                    "prompt": tree.prompt_text or tree.problem.question,
                    "completions": [s.text for s in path],
                    "labels": labels,
                }
            )
    return pd.DataFrame(rows, columns=["prompt", "completions", "labels"])


def write_pairs(pairs: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """``path`` (parquet, every column) and ``<stem>.trl.parquet`` beside it (TRL format).

    ``path`` is written last: the loop takes it as the mark of a finished pairs phase, so a
    kill in between must not leave it without its TRL export. Pairs with a non-finite number
    (a NaN value from a PRM, say) are refused (:class:`~sppd_lib.data.DataError`) before
    anything is written, so no finished pairs phase holds them.
    """
    from sppd_lib.train_data import check_finite_rows

    check_finite_rows(
        pairs, f"pairs for {path}", "check the values of the trees (the PRM's scores)"
    )
    write_parquet_atomic(to_trl_preference(pairs), trl_pairs_path(path))
    write_parquet_atomic(pairs, path)


def summarize_pairs(
    pairs: pd.DataFrame, trees: int, reasons: Counter[str] | None = None
) -> dict[str, Any]:
    """Pairs per tree, the Δv histogram (0.1 bins), pairs by depth and, given the
    ``reasons`` of :func:`build_pairs`, the trees without pairs by reason (the summary that
    ``pairs_summary.json`` and ``sppd pairs`` show)."""

    def histogram(column: str) -> dict[str, int]:
        bins = ((pairs[column] * 10 + 1e-9) // 1 / 10).round(1)  # 1.0 // 0.1 is 9.0 in floats
        return {f"{b:.1f}": int(c) for b, c in sorted(Counter(bins).items())}

    return {
        "pairs": len(pairs),
        "trees": trees,
        "trees_with_pairs": int(pairs["tree_id"].nunique()) if len(pairs) else 0,
        "pairs_per_tree": len(pairs) / trees if trees else 0.0,
        "delta_value_histogram": histogram("delta_value") if len(pairs) else {},
        "pairs_by_depth": {int(d): int(c) for d, c in sorted(Counter(pairs["depth"]).items())},
        **({} if reasons is None else {"trees_without_pairs": dict(reasons)}),
    }
