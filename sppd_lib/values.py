"""Leaf grading and value backup over step trees (arXiv 2502.13516 used PRM scores; the
Monte-Carlo and Bellman backups are our generalisation).

Every estimator fills ``node.value`` in [0, 1] for every node (the root too) and records
itself in ``node.value_source``, so the Δv > 0.5 filter and the γ margin keep their meaning.

* ``mc``: the fraction of correct complete leaves in the node's subtree (Math-Shepherd style);
  ``node.mc_correct`` / ``node.mc_total`` hold the counts behind it. A subtree without a
  complete leaf gets 0 with ``mc_total = 0``; pair building can require evidence.
* ``bellman``: a complete leaf gets its outcome reward (1 correct, 0 wrong), any other leaf 0;
  an inner node gets the ``max`` (Bellman optimality) or ``mean`` (on-policy) of its
  children, times ``discount`` per level.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from sppd_lib.checker import final_claim_value
from sppd_lib.data import GENERATED
from sppd_lib.engines import Engine, SamplingSettings
from sppd_lib.grading import Grade, extract_answer, grade, last_boxed
from sppd_lib.prompts import has_final_answer
from sppd_lib.tree import ROOT, StepNode, StepTree

if TYPE_CHECKING:
    from sppd_lib.prm import PRMScorer

__all__ = [
    "LeafAnswer",
    "add_mc_rollouts",
    "apply_values",
    "bellman_values",
    "grade_leaf",
    "grade_leaves",
    "mc_values",
    "outcome_counts",
    "stated_answer",
]

#: How a complete leaf's answer is read: ``stated`` (only an answer the text states: a
#: ``\boxed{}``, "the answer is N", or ``= N`` ending its last equation), ``last_number``
#: (also the last number of the text, the general extraction) or ``auto`` (``stated`` for
#: generated arithmetic, ``last_number`` elsewhere).
LeafAnswer = Literal["auto", "stated", "last_number"]

_ANSWER_PHRASE = re.compile(r"answer\s*(?:is|:|=)", re.IGNORECASE)
_PLAIN_NUMBER = re.compile(r"\(?\s*-?\s*\d+(?:\.\d+)?(?:\s*/\s*\d+)?\s*\)?")
_MINUS = str.maketrans({"−": "-", "–": "-"})


def stated_answer(text: str, *, number_only: bool = False) -> str | None:
    """The final answer ``text`` states: its last ``\\boxed{}`` or "the answer is ..."
    phrase, else the result of its last equation when that is a bare number ("(9 * 4) = 36.
    This is 9 by 4." states 36); never a number that merely comes last. ``number_only``
    (generated arithmetic, whose answers are numbers): a stated expression is no answer, so
    "the final answer is -2 + 0 - (-5)", the question restated, answers nothing."""
    text = text.translate(_MINUS)
    if last_boxed(text) is not None or _ANSWER_PHRASE.search(text):
        answer = extract_answer(text, last_number_fallback=False)
        if answer is None or (number_only and not _PLAIN_NUMBER.fullmatch(answer.strip())):
            return None
        return answer
    value = final_claim_value(text)
    if value is None:
        return None
    return str(value.numerator) if value.denominator == 1 else str(value)


def _stated(rule: LeafAnswer, tree: StepTree) -> bool:
    return rule == "stated" or (rule == "auto" and tree.problem.source in GENERATED)


def grade_leaf(text: str, tree: StepTree, rule: LeafAnswer = "auto") -> Grade:
    """The grade of a solution ``text`` of ``tree``'s problem under ``rule`` (LeafAnswer)."""
    if not _stated(rule, tree):
        return grade(text, tree.problem.answer)
    answer = stated_answer(text, number_only=tree.problem.source in GENERATED)
    if answer is None:
        return Grade(pred=None, correct=False, status="no_answer")
    return grade(answer, tree.problem.answer)


def grade_leaves(tree: StepTree, rule: LeafAnswer = "auto") -> None:
    """Record the answer and its correctness on every terminal node (``rule``: LeafAnswer),
    and the rule in ``tree.meta["leaf_answer"]`` (trees without it were graded by
    ``last_number``, the only rule before)."""
    for node in tree.nodes:
        if node.terminal:
            result = grade_leaf(tree.path_text(node.id), tree, rule)
            node.answer, node.correct = result.pred, result.correct
    tree.meta["leaf_answer"] = rule


def _post_order(tree: StepTree) -> list[int]:
    """Node ids, children before parents (iterative: deep trees do not hit recursion limits)."""
    order, stack = [], [ROOT]
    while stack:
        node_id = stack.pop()
        order.append(node_id)
        stack.extend(child.id for child in tree.children(node_id))
    return order[::-1]


def outcome_counts(tree: StepTree) -> dict[int, tuple[int, int]]:
    """``(correct, complete)`` outcomes below every node: its complete leaves, rollouts and
    merged copies (the evidence behind a Monte-Carlo value), without touching the values."""
    counts: dict[int, tuple[int, int]] = {}
    for node_id in _post_order(tree):
        node = tree.nodes[node_id]
        correct, total = (int(bool(node.correct)), 1) if node.is_complete else (0, 0)
        for child in tree.children(node_id):
            child_correct, child_total = counts[child.id]
            correct, total = correct + child_correct, total + child_total
        correct += node.info.get("rollout_correct", 0) + node.info.get("merged_correct", 0)
        total += node.info.get("rollout_total", 0) + node.info.get("merged_total", 0)
        counts[node_id] = (correct, total)
    return counts


def mc_values(tree: StepTree) -> StepTree:
    """Monte-Carlo values: correct complete leaves / complete leaves below each node (extra
    rollouts from a node, ``add_mc_rollouts``, and complete copies merged into it,
    ``tree.merge_identical_siblings``, count as its leaves)."""
    for node_id, (correct, total) in outcome_counts(tree).items():
        node = tree.nodes[node_id]
        node.value = correct / total if total else 0.0
        node.value_source = "mc"
        node.set_mc_counts(correct, total)
    return tree


def bellman_values(tree: StepTree, aggregate: str = "max", discount: float = 1.0) -> StepTree:
    """Bellman backup of outcome rewards: ``v(s) = discount * agg(v(children))``."""
    if aggregate not in ("max", "mean"):
        raise ValueError(f"aggregate must be 'max' or 'mean', not {aggregate!r}")
    if not 0.0 <= discount <= 1.0:
        raise ValueError(f"discount must be in [0, 1], got {discount}")
    combine: Callable[[list[float]], float] = (
        max if aggregate == "max" else (lambda values: sum(values) / len(values))
    )
    for node_id in _post_order(tree):
        node = tree.nodes[node_id]
        children = tree.children(node_id)
        # Complete copies of the step merged into it are leaves of it (one value each).
        merged_correct = node.info.get("merged_correct", 0)
        merged = [1.0] * merged_correct + [0.0] * (
            node.info.get("merged_total", 0) - merged_correct
        )
        if children:
            values = [child.value for child in children] + merged
            node.value = discount * combine(values)  # type: ignore[arg-type]
        else:
            own = 1.0 if node.is_complete and node.correct else 0.0
            node.value = combine([own, *merged]) if node.is_complete else own
        node.value_source = f"bellman_{aggregate}"
    return tree


def apply_values(
    tree: StepTree,
    estimator: str,
    *,
    bellman_aggregate: str = "max",
    bellman_discount: float = 1.0,
    scorer: PRMScorer | None = None,
) -> StepTree:
    """Fill every node's value with ``estimator``: ``mc``, ``bellman`` (with its aggregate
    and discount) or ``prm`` (``scorer`` scores every step; torch is imported only then)."""
    if estimator == "mc":
        return mc_values(tree)
    if estimator == "bellman":
        return bellman_values(tree, bellman_aggregate, bellman_discount)
    if estimator == "prm":
        if scorer is None:
            raise ValueError("value='prm' needs a PRMScorer")
        from sppd_lib.prm import prm_values

        return prm_values(tree, scorer)
    raise ValueError(f"unknown value estimator {estimator!r} (mc, bellman or prm)")


def add_mc_rollouts(
    tree: StepTree,
    engine: Engine,
    *,
    min_leaves: int,
    max_tokens: int = 512,
    temperature: float = 0.7,
    seed: int = 0,
    leaf_answer: LeafAnswer = "auto",
) -> int:
    """Roll out whole solutions from inner nodes with fewer than ``min_leaves`` complete leaves.

    The outcomes are counted in ``node.info`` (``rollout_correct`` / ``rollout_total``) and
    enter :func:`mc_values` of the node and its ancestors; the tree's nodes are unchanged.
    A rollout is graded as a leaf (``leaf_answer``). Returns the number of rollouts sampled.
    """
    mc_values(tree)
    answer_format = tree.meta.get("sampler", {}).get("answer_format", "boxed")
    by_need: dict[int, list[StepNode]] = {}
    for node in tree.nodes:
        need = min_leaves - (node.mc_total or 0)
        if not node.terminal and need > 0:
            by_need.setdefault(need, []).append(node)
    sampled = 0
    settings = SamplingSettings(
        max_tokens=max_tokens, temperature=temperature, stop=None, seed=seed
    )
    for need, nodes in sorted(by_need.items()):
        prefixes = [tree.prefix_ids(node.id) for node in nodes]
        for node, rollouts in zip(nodes, engine.sample(prefixes, need, settings), strict=True):
            for rollout in rollouts:
                text = tree.path_text(node.id) + rollout.text
                complete = has_final_answer(rollout.text) or (
                    answer_format == "any" and rollout.finish_reason == "eos"
                )
                if complete:
                    node.info["rollout_total"] = node.info.get("rollout_total", 0) + 1
                    node.info["rollout_correct"] = node.info.get("rollout_correct", 0) + int(
                        grade_leaf(text, tree, leaf_answer).correct
                    )
            sampled += len(rollouts)
    mc_values(tree)
    return sampled
