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

from collections.abc import Callable
from typing import TYPE_CHECKING

from sppd_lib.engines import Engine, SamplingSettings
from sppd_lib.grading import grade
from sppd_lib.prompts import has_final_answer
from sppd_lib.tree import ROOT, StepNode, StepTree

if TYPE_CHECKING:
    from sppd_lib.prm import PRMScorer

__all__ = ["add_mc_rollouts", "apply_values", "bellman_values", "grade_leaves", "mc_values"]


def grade_leaves(tree: StepTree) -> None:
    """Record the extracted answer and its correctness on every terminal node."""
    for node in tree.nodes:
        if node.terminal:
            result = grade(tree.path_text(node.id), tree.problem.answer)
            node.answer, node.correct = result.pred, result.correct


def _post_order(tree: StepTree) -> list[int]:
    """Node ids, children before parents (iterative: deep trees do not hit recursion limits)."""
    order, stack = [], [ROOT]
    while stack:
        node_id = stack.pop()
        order.append(node_id)
        stack.extend(child.id for child in tree.children(node_id))
    return order[::-1]


def mc_values(tree: StepTree) -> StepTree:
    """Monte-Carlo values: correct complete leaves / complete leaves below each node."""
    counts: dict[int, tuple[int, int]] = {}
    for node_id in _post_order(tree):
        node = tree.nodes[node_id]
        correct, total = (int(bool(node.correct)), 1) if node.is_complete else (0, 0)
        for child in tree.children(node_id):
            child_correct, child_total = counts[child.id]
            correct, total = correct + child_correct, total + child_total
        # Extra rollouts from this node (``add_mc_rollouts``) count as leaves of its subtree.
        correct += node.info.get("rollout_correct", 0)
        total += node.info.get("rollout_total", 0)
        counts[node_id] = (correct, total)
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
        if children:
            node.value = discount * combine([child.value for child in children])  # type: ignore[misc]
        else:
            node.value = 1.0 if node.is_complete and node.correct else 0.0
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
) -> int:
    """Roll out whole solutions from inner nodes with fewer than ``min_leaves`` complete leaves.

    The outcomes are counted in ``node.info`` (``rollout_correct`` / ``rollout_total``) and
    enter :func:`mc_values` of the node and its ancestors; the tree's nodes are unchanged.
    Returns the number of rollouts sampled.
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
                        grade(text, tree.problem.answer).correct
                    )
            sampled += len(rollouts)
    mc_values(tree)
    return sampled
