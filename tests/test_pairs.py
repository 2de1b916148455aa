from __future__ import annotations

import random

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sppd_lib.config import PairConfig
from sppd_lib.data import Problem
from sppd_lib.pairs import (
    TRL_COLUMNS,
    build_pairs,
    path_pairs,
    positive_paths,
    step_pairs,
    stepwise_records,
    summarize_pairs,
    write_pairs,
)
from sppd_lib.tree import StepTree
from sppd_lib.values import bellman_values, grade_leaves, mc_values


def leaf(tree: StepTree, parent: int, answer: str) -> int:
    return tree.add_child(
        parent,
        text=f"So \\boxed{{{answer}}}",
        token_ids=[int(answer) + 100],
        logprobs=[-0.5],
        finish_reason="eos",
        terminal=True,
        terminal_reason="answer",
    ).id


def step(tree: StepTree, parent: int, text: str) -> int:
    return tree.add_child(
        parent,
        text=text + "\n\n",
        token_ids=[len(tree.nodes)],
        logprobs=[-0.1, -0.3][:1],
        finish_reason="delimiter",
    ).id


def known_tree() -> StepTree:
    """
    root ─ a ─ a1 (correct 4)
         │   └ a2 (wrong 5)
         └ b ─ b1 (wrong 6)
             └ b2 ─ b21 (wrong 7)
                  └ b22 (wrong 8)
    """
    tree = StepTree(Problem("t/0", "2+2?", "4", "test"), [1, 2], meta={"prompt_text": "Q: "})
    a, b = step(tree, 0, "A"), step(tree, 0, "B")
    leaf(tree, a, "4"), leaf(tree, a, "5")
    leaf(tree, b, "6")
    b2 = step(tree, b, "B2")
    leaf(tree, b2, "7"), leaf(tree, b2, "8")
    grade_leaves(tree)
    return tree


def values(tree: StepTree) -> list[float]:
    return [round(n.value, 6) for n in tree.nodes]  # type: ignore[arg-type]


def test_mc_values_are_exact() -> None:
    tree = mc_values(known_tree())
    # ids: 0 root, 1 a, 2 b, 3 a1, 4 a2, 5 b1, 6 b2, 7 b21, 8 b22
    assert values(tree) == [0.2, 0.5, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert tree.nodes[0].info == {"mc_correct": 1, "mc_total": 5}
    assert tree.nodes[2].info == {"mc_correct": 0, "mc_total": 3}
    assert {n.value_source for n in tree.nodes} == {"mc"}


def test_bellman_values_are_exact() -> None:
    assert values(bellman_values(known_tree(), "max")) == [1, 1, 0, 1, 0, 0, 0, 0, 0]
    assert values(bellman_values(known_tree(), "mean")) == [0.25, 0.5, 0, 1, 0, 0, 0, 0, 0]
    discounted = values(bellman_values(known_tree(), "max", discount=0.9))
    assert discounted == [0.81, 0.9, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="aggregate"):
        bellman_values(known_tree(), "min")


def test_mc_pairs_carry_values_not_margins() -> None:
    config = PairConfig(value="mc")
    tree = mc_values(known_tree())
    rows, reason = step_pairs(tree, config)
    assert reason is None
    # Only a1 (1.0) vs a2 (0.0) differs by more than 0.5; a (0.5) vs b (0.0) does not.
    assert [(r["chosen_node"], r["rejected_node"]) for r in rows] == [(3, 4)]
    row = rows[0]
    assert "margin" not in row  # the margin is a training setting (TrainConfig.margin)
    assert (row["value_chosen"], row["value_rejected"], row["delta_value"]) == (1.0, 0.0, 1.0)
    assert row["prompt"] == "Q: A\n\n" and row["prompt_ids"] == [1, 2, 1]
    assert row["chosen"] == "So \\boxed{4}" and row["chosen_ref_logps"] == [-0.5]
    assert row["depth"] == 2 and row["parent_node"] == 1


def test_bellman_pairs_and_threshold() -> None:
    config = PairConfig(value="bellman", threshold=0.5)
    rows, _ = step_pairs(bellman_values(known_tree()), config)
    assert sorted((r["chosen_node"], r["rejected_node"]) for r in rows) == [(1, 2), (3, 4)]
    assert all(r["delta_value"] == 1.0 for r in rows)
    strict = PairConfig(value="bellman", threshold=1.0)
    assert step_pairs(bellman_values(known_tree()), strict) == ([], "no sibling gap above 1.0")


def test_min_leaves_needs_evidence() -> None:
    tree = StepTree(Problem("t/1", "q", "4", "test"), [1])
    a = step(tree, 0, "A")
    step(tree, 0, "B")  # no complete leaf below: value 0 without evidence
    leaf(tree, a, "4")
    grade_leaves(tree)
    mc_values(tree)
    assert step_pairs(tree, PairConfig(min_leaves=1))[0] == []
    assert len(step_pairs(tree, PairConfig(min_leaves=0))[0]) == 1


def test_sentence_level_paths() -> None:
    tree = mc_values(known_tree())
    config = PairConfig(path_rule="mean")
    assert [[n.id for n in p] for p in positive_paths(tree, config)] == [[1, 3]]
    pairs = path_pairs(tree, config)
    assert len(pairs) == 1  # one correct path to pair
    assert pairs[0]["chosen"] == "A\n\nSo \\boxed{4}" and pairs[0]["score_rejected"] == 0.0


@pytest.mark.parametrize(
    ("tree_maker", "reason"),
    [
        (lambda: StepTree(Problem("e", "q", "4", "t"), [1]), "no complete path"),
        (lambda: _single_path(), "no sibling steps"),
        (lambda: _missing_gold(), "missing gold answer"),
    ],
)
def test_degenerate_trees_give_zero_pairs_with_a_reason(tree_maker, reason, caplog) -> None:
    pairs, reasons = build_pairs([tree_maker()], PairConfig())
    assert len(pairs) == 0 and reasons == {reason: 1}


def _single_path() -> StepTree:
    tree = StepTree(Problem("s", "q", "4", "t"), [1])
    leaf(tree, step(tree, 0, "A"), "4")
    grade_leaves(tree)
    return tree


def _missing_gold() -> StepTree:
    tree = known_tree()
    tree.problem.answer = ""
    return tree


def random_tree(seed: int) -> StepTree:
    rng = random.Random(seed)
    tree = StepTree(Problem(f"r/{seed}", "q", str(rng.randint(0, 3)), "t"), [1, 2])
    frontier = [0]
    while frontier and len(tree.nodes) < 40:
        parent = frontier.pop(rng.randrange(len(frontier)))
        for _ in range(rng.randint(1, 3)):
            kind = rng.random()
            if kind < 0.4 or tree.nodes[parent].depth >= 5:
                leaf(tree, parent, str(rng.randint(0, 3)))
            elif kind < 0.5:  # an unfinished leaf
                tree.add_child(
                    parent,
                    text="x",
                    token_ids=[9],
                    logprobs=[-1.0],
                    finish_reason="length",
                    terminal=True,
                    terminal_reason="max_depth",
                )
            else:
                frontier.append(step(tree, parent, "s"))
    grade_leaves(tree)
    return tree


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    value=st.sampled_from(["mc", "bellman"]),
    aggregate=st.sampled_from(["max", "mean"]),
    pairing=st.sampled_from(["all", "best_worst"]),
    threshold=st.floats(0.0, 0.9),
)
def test_pair_properties_on_random_trees(seed, value, aggregate, pairing, threshold) -> None:
    tree = random_tree(seed)
    config = PairConfig(
        value=value,
        bellman_aggregate=aggregate,
        pairing=pairing,
        threshold=threshold,
    )
    pairs, _ = build_pairs([tree], config)
    assert all(0.0 <= n.value <= 1.0 for n in tree.nodes)  # type: ignore[operator]
    for row in pairs.itertuples():
        chosen, rejected = tree.nodes[row.chosen_node], tree.nodes[row.rejected_node]
        assert chosen.parent_id == rejected.parent_id == row.parent_node
        assert row.delta_value == pytest.approx(chosen.value - rejected.value)
        assert row.delta_value > threshold and row.value_chosen > row.value_rejected
    if pairing == "best_worst":
        assert pairs["parent_node"].is_unique


def test_exports_load_back_unchanged(tmp_path) -> None:
    trees = [random_tree(s) for s in range(30)]
    pairs, _ = build_pairs(trees, PairConfig(value="bellman"))
    assert len(pairs) > 0
    path = tmp_path / "pairs.parquet"
    write_pairs(pairs, path)
    pd.testing.assert_frame_equal(pd.read_parquet(path), pairs)
    trl = pd.read_parquet(tmp_path / "pairs.trl.parquet")
    assert list(trl.columns) == TRL_COLUMNS
    assert trl["chosen"].tolist() == pairs["chosen"].tolist()
    assert trl["ref_chosen_logps"].tolist() == pairs["chosen_ref_logp"].tolist()
    stepwise = stepwise_records(trees)
    assert set(stepwise.columns) == {"prompt", "completions", "labels"}
    assert all(
        len(steps) == len(labels)
        for steps, labels in zip(stepwise["completions"], stepwise["labels"], strict=True)
    )
    summary = summarize_pairs(pairs, len(trees))
    assert summary["pairs"] == len(pairs) and sum(summary["pairs_by_depth"].values()) == len(pairs)
    assert sum(summary["delta_value_histogram"].values()) == len(pairs)


def test_bad_pair_config() -> None:
    with pytest.raises(ValueError, match=r"pairs\.pairing must be one of"):
        PairConfig(pairing="best")


def test_cli_pairs(tmp_path, capsys) -> None:
    import json

    from sppd_lib.cli import main
    from sppd_lib.tree import write_trees

    trees_file = tmp_path / "trees.jsonl.gz"
    write_trees(trees_file, [known_tree(), _single_path()])
    out = tmp_path / "pairs.parquet"
    argv = ["pairs", "--trees", str(trees_file), "--out", str(out), "--value", "bellman"]
    assert (
        main(
            [
                *argv,
                "--stepwise",
                str(tmp_path / "s.parquet"),
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["pairs"] == 2 and summary["trees_without_pairs"] == {"no sibling steps": 1}
    assert pd.read_parquet(out)["delta_value"].tolist() == [1.0, 1.0]
    assert len(pd.read_parquet(tmp_path / "s.parquet")) == 6  # complete paths of both trees
    assert main(["pairs", "--trees", str(tmp_path / "none.gz"), "--out", str(out)]) == 2
    assert "trees file not found" in capsys.readouterr().err
    assert main([*argv, "--pairing", "big"]) == 2
    assert "pairs.pairing must be one of" in capsys.readouterr().err
    # Rollouts need the sampling model: no --rollouts flag, and a --set of it is refused.
    assert main([*argv, "--value", "mc", "--set", "pairs.rollouts=2"]) == 2
    assert "pairs.rollouts needs the model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv, "--value", "mc", "--rollouts", "2"])


@pytest.mark.slow
@pytest.mark.parametrize("value", ["mc", "bellman"])
def test_real_model_trees_give_pairs(smollm2_trees, value: str) -> None:
    import copy

    trees = copy.deepcopy(smollm2_trees[0])
    pairs, reasons = build_pairs(trees, PairConfig(value=value))
    summary = summarize_pairs(pairs, len(trees))
    print(f"{value}: {summary} trees without pairs: {dict(reasons)}")
    assert len(pairs) > 0
    assert (pairs["delta_value"] > 0.5).all()


def test_mc_rollouts_add_evidence_below_thin_nodes(tiny_llama) -> None:
    from sppd_lib.engines.transformers_engine import TransformersEngine
    from sppd_lib.values import add_mc_rollouts

    model, tokenizer = tiny_llama
    tree = known_tree()
    tree.meta["sampler"] = {"answer_format": "any"}
    engine = TransformersEngine(model, tokenizer)
    engine.eos_ids = frozenset(range(len(tokenizer)))  # every rollout ends at its first token
    # Inner nodes: root (5 leaves), a (2), b (3), b2 (2): only a and b2 are below 3 leaves.
    sampled = add_mc_rollouts(tree, engine, min_leaves=3, max_tokens=4)
    assert sampled == 2
    assert tree.nodes[1].info["rollout_total"] == 1 and tree.nodes[6].info["rollout_total"] == 1
    assert tree.nodes[0].info["mc_total"] == 5 + 2  # rollouts count for the ancestors too
    assert len(tree.nodes) == 9  # the tree itself is unchanged


def test_histogram_bins_are_exact_at_edges() -> None:
    pairs = pd.DataFrame(
        {
            "delta_value": [1.0, 0.6, 0.65],
            "tree_id": ["a"] * 3,
            "depth": [1, 1, 2],
        }
    )
    summary = summarize_pairs(pairs, trees=2)
    assert summary["delta_value_histogram"] == {"0.6": 2, "1.0": 1}
    assert summary["pairs_per_tree"] == 1.5 and summary["pairs_by_depth"] == {1: 2, 2: 1}
