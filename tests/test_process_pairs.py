"""Strict leaves, merged identical siblings and process-checked pairs (issue 24)."""

from __future__ import annotations

import copy

import pandas as pd
import pytest

from sppd_lib.config import PairConfig
from sppd_lib.data import Problem
from sppd_lib.pairs import build_pairs, step_pairs, value_trees
from sppd_lib.tree import StepTree, merge_identical_siblings
from sppd_lib.values import bellman_values, grade_leaf, grade_leaves, mc_values, stated_answer


def arith_tree(answer: str = "7") -> StepTree:
    return StepTree(Problem("arith/train/0", "Calculate ( 2 * 7 ) + -7.", answer, "arith"), [1])


def add(tree: StepTree, parent: int, text: str, *, final: bool = False) -> int:
    return tree.add_child(
        parent,
        text=text if final else text + "\n\n",
        token_ids=[len(tree.nodes) + 10],
        logprobs=[-0.2],
        finish_reason="eos" if final else "delimiter",
        terminal=final,
        terminal_reason="answer" if final else None,
    ).id


# -- strict leaves --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "stated"),
    [
        ("2 * 7 = 14\n\n14 + -7 = 7\n\nThe answer is 7.", "7"),
        ("2 * 7 = 14, so the result is \\boxed{7}", "7"),
        ("(9 * 4) = 36. This is the product of 9 by 4.", "36"),  # the last equation's result
        ("We compute 2 * 7 and add -7 to get 7 in total.", None),  # 7 merely comes last
        ("So, the final answer is −2 + 0 − (−5).", None),  # the question restated
        ("Therefore the answer is −17.", "-17"),
        ("2 * 7 = 14 and then 14 + -7 =", None),  # last equation unfinished: not stated
    ],
)
def test_stated_answer_for_arithmetic(text: str, stated: str | None) -> None:
    assert stated_answer(text, number_only=True) == stated


def test_strict_leaves_change_grades_only_of_unstated_answers() -> None:
    tree = arith_tree()
    lucky = add(tree, 0, "We compute 2 * 7 and add -7 to get 7", final=True)
    stated = add(tree, 0, "2 * 7 = 14, 14 + -7 = 7.", final=True)
    restated = add(tree, 0, "So the final answer is 14 + -7", final=True)
    grade_leaves(tree, "last_number")
    old = {i: tree.nodes[i].correct for i in (lucky, stated, restated)}
    grade_leaves(tree, "auto")  # stated, for generated arithmetic
    new = {i: tree.nodes[i].correct for i in (lucky, stated, restated)}
    assert old == {lucky: True, stated: True, restated: True}
    assert new == {lucky: False, stated: True, restated: False}
    # Elsewhere 'auto' keeps the general extraction.
    other = StepTree(Problem("gsm8k/0", "q", "7", "gsm8k"), [1])
    assert grade_leaf("so we get 7", other, "auto").correct
    assert not grade_leaf("so we get 7", other, "stated").correct


# -- merged siblings ------------------------------------------------------------------------


def duplicate_tree() -> StepTree:
    """
    root ─ s1 "2 * 7 = 14"        ─ "14 + -7 = 7" (correct) ; "14 + -7 = 21" (wrong)
         ├ s2 "2 * 7 = 14" (copy) ─ "14 + -7 = 7" (copy, correct)
         ├ s3 "2  * 7 = 14" (copy, whitespace) : a complete leaf ending there, answer 14 (wrong)
         └ s4 "2 * 7 = 15"        ─ "15 + -7 = 8" (wrong)
    """
    tree = arith_tree()
    s1 = add(tree, 0, "2 * 7 = 14")
    s2 = add(tree, 0, "2 * 7 = 14")
    add(tree, 0, "2  * 7 = 14", final=True)
    s4 = add(tree, 0, "2 * 7 = 15")
    add(tree, s1, "14 + -7 = 7.", final=True)
    add(tree, s1, "14 + -7 = 21.", final=True)
    add(tree, s2, "14 + -7 = 7.", final=True)
    add(tree, s4, "15 + -7 = 8.", final=True)
    grade_leaves(tree)
    return tree


def test_merging_identical_siblings_keeps_every_other_value() -> None:
    before = mc_values(duplicate_tree())
    tree = duplicate_tree()
    assert merge_identical_siblings(tree) == 3  # s2, s3 and s2's child
    mc_values(tree)
    texts = [n.text.split() for n in tree.children(0)]
    assert len(texts) == len({tuple(t) for t in texts}) == 2  # no equal siblings left
    # The root's evidence and the other branch are untouched (verl-style invariance).
    assert (tree.root.mc_correct, tree.root.mc_total) == (before.root.mc_correct, 5)
    assert tree.root.value == before.root.value
    s4_before = next(n for n in before.children(0) if "15" in n.text)
    s4_after = next(n for n in tree.children(0) if "15" in n.text)
    assert (s4_after.value, s4_after.mc_total) == (s4_before.value, s4_before.mc_total)
    # The merged step sums its copies: 2 correct of 4 outcomes (two leaves under s1, one
    # under s2, and s3's own wrong answer).
    merged = next(n for n in tree.children(0) if "14" in n.text)
    assert (merged.mc_correct, merged.mc_total) == (2, 4)
    assert merged.info["merged_ids"] == [1, 2, 3]
    # Its children merged one level down: "14 + -7 = 7." twice is one node, 2 of 2.
    kids = {" ".join(c.text.split()): c for c in tree.children(merged.id)}
    assert (kids["14 + -7 = 7."].mc_correct, kids["14 + -7 = 7."].mc_total) == (2, 2)
    # Bellman max is unchanged for every node that was not merged.
    assert bellman_values(copy.deepcopy(tree)).root.value == bellman_values(before).root.value
    # Ids are 0..n-1, parents first, and the tree round-trips.
    assert all(n.id == i and (n.parent_id or 0) < max(i, 1) for i, n in enumerate(tree.nodes))
    assert StepTree.from_dict(tree.to_dict()).to_dict() == tree.to_dict()
    assert merge_identical_siblings(tree) == 0  # idempotent


def test_pairs_never_have_equal_sides() -> None:
    config = PairConfig(value="mc", threshold=0.0, merge_siblings=False)
    tree = arith_tree()
    a = add(tree, 0, "So, (7 + 4) = 11")
    b = add(tree, 0, "So, (7 + 4) = 11")
    add(tree, a, "The answer is 7.", final=True)
    add(tree, b, "The answer is 11.", final=True)
    grade_leaves(tree)
    unmerged, _ = build_pairs([copy.deepcopy(tree)], config)
    assert unmerged.empty  # the same text on both sides: skipped
    merged_config = PairConfig(value="mc", threshold=0.0)
    (valued,) = list(value_trees([tree], merged_config))
    assert len(valued.children(0)) == 1


# -- process-checked pairs ------------------------------------------------------------------


def process_tree() -> StepTree:
    """Two sibling groups: a false chosen step (lucky continuation) and a true one."""
    tree = arith_tree()
    true_step = add(tree, 0, "2 * 7 = 14")
    false_step = add(tree, 0, "2 * 7 = 12")
    add(tree, true_step, "14 + -7 = 7. The answer is 7.", final=True)
    add(tree, false_step, "12 + -7 = 5. The answer is 5.", final=True)
    lucky_false = add(tree, true_step, "14 + -7 = 8")
    add(tree, lucky_false, "The answer is 7.", final=True)  # right answer after a false step
    add(tree, true_step, "The answer is 21.", final=True)
    grade_leaves(tree)
    return tree


def test_pairs_carry_checker_verdicts_and_process_check_filters() -> None:
    rows, _ = step_pairs(mc_values(process_tree()), PairConfig(threshold=0.5))
    plain = pd.DataFrame(rows)
    # root: "2 * 7 = 14" (2/3) over "2 * 7 = 12" (0); under it, two steps valued 1 over
    # "The answer is 21." (0), one of them the false "14 + -7 = 8" that got lucky.
    assert sorted(plain["chosen_check"]) == ["false", "true", "true"]
    rows, _ = step_pairs(mc_values(process_tree()), PairConfig(process_check=True))
    checked = pd.DataFrame(rows)
    assert sorted(checked["chosen"].str.strip()) == ["14 + -7 = 7. The answer is 7.", "2 * 7 = 14"]
    assert list(checked["rejected_check"]).count("false") == 1  # "2 * 7 = 12"
    # The other rejected side states no claim but leads only to a wrong answer.
    assert (checked["value_rejected"] == 0.0).all()
    # Problems that are not generated arithmetic carry no verdict and are never filtered.
    tree = process_tree()
    tree.problem.source = "gsm8k"
    rows, _ = step_pairs(mc_values(tree), PairConfig(process_check=True))
    assert len(rows) == 3 and {row["chosen_check"] for row in rows} == {None}


def test_value_trees_regrade_only_trees_graded_by_another_rule() -> None:
    tree = arith_tree()
    lucky = add(tree, 0, "We compute 2 * 7 and add -7 to get 7", final=True)
    grade_leaves(tree, "last_number")  # as trees sampled before issue 24
    (valued,) = list(value_trees([copy.deepcopy(tree)], PairConfig()))
    assert valued.nodes[lucky].correct is False and valued.meta["leaf_answer"] == "auto"
    (kept,) = list(value_trees([copy.deepcopy(tree)], PairConfig(leaf_answer="last_number")))
    assert kept.nodes[lucky].correct is True
    del tree.meta["leaf_answer"]  # trees from before the rule was recorded: last_number
    (old,) = list(value_trees([tree], PairConfig()))
    assert old.nodes[lucky].correct is False
