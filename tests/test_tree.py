from __future__ import annotations

import gzip

import pytest

from sppd_lib.data import Problem
from sppd_lib.tree import StepNode, StepTree, read_trees, write_trees


def hand_built_tree() -> StepTree:
    """root -> a (-> a1 boxed correct, a2 boxed wrong), b (eos, no answer)."""
    tree = StepTree(Problem("p/0", "1+1?", "2", "test"), prompt_ids=[1, 2, 3])
    a = tree.add_child(
        0, text="A\n\n", token_ids=[10, 11], logprobs=[-0.1, -0.2], finish_reason="delimiter"
    )
    tree.add_child(
        0,
        text="B",
        token_ids=[20],
        logprobs=[-3.0],
        finish_reason="eos",
        terminal=True,
        terminal_reason="eos",
    )
    tree.add_child(
        a.id,
        text="\\boxed{2}",
        token_ids=[30, 31, 32],
        logprobs=[-0.5] * 3,
        finish_reason="eos",
        terminal=True,
        terminal_reason="answer",
        correct=True,
    )
    tree.add_child(
        a.id,
        text="\\boxed{3}",
        token_ids=[40],
        logprobs=[-1.0],
        finish_reason="eos",
        terminal=True,
        terminal_reason="answer",
        correct=False,
    )
    return tree


def test_traversal() -> None:
    tree = hand_built_tree()
    assert [n.id for n in tree.children(0)] == [1, 2]
    assert [n.id for n in tree.siblings(3)] == [4]
    assert tree.siblings(0) == []
    assert [n.id for n in tree.path(3)] == [1, 3]
    assert tree.prefix_ids(3) == [1, 2, 3, 10, 11, 30, 31, 32]
    assert tree.path_text(4) == "A\n\n\\boxed{3}"
    assert [n.id for n in tree.leaves()] == [2, 3, 4]
    assert [[n.id for n in p] for p in tree.complete_paths()] == [[1, 3], [1, 4]]
    assert tree.nodes[1].depth == 1 and tree.nodes[3].depth == 2
    assert tree.nodes[1].mean_logprob == pytest.approx(-0.15)
    assert tree.is_closed(0) and not StepTree(tree.problem, [1]).is_closed(0)


def test_stats() -> None:
    stats = hand_built_tree().stats()
    assert (stats.nodes, stats.leaves, stats.complete_paths, stats.correct_paths) == (4, 3, 2, 1)
    assert stats.tokens_generated == 2 + 1 + 3 + 1
    assert stats.flat_tokens == (2 + 3) + (2 + 1)  # each complete path written out
    assert stats.token_ratio == pytest.approx(7 / 8)
    assert stats.depth_histogram == {1: 1, 2: 2}
    assert stats.branching_histogram == {2: 2}


def test_round_trip_is_lossless(tmp_path) -> None:
    tree = hand_built_tree()
    tree.nodes[3].value, tree.nodes[3].info = 1.0, {"mc": [1, 1]}
    tree.meta = {"sampler": {"k": 4}}
    assert StepTree.from_dict(tree.to_dict()).to_dict() == tree.to_dict()
    path = tmp_path / "trees.jsonl.gz"
    assert write_trees(path, [tree, tree]) == 2
    loaded = list(read_trees(path))
    assert [t.to_dict() for t in loaded] == [tree.to_dict()] * 2
    assert [n.id for n in loaded[0].children(1)] == [3, 4]  # the child index is rebuilt


def test_bad_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="trees file not found"):
        list(read_trees(tmp_path / "missing.jsonl.gz"))
    bad = tmp_path / "bad.jsonl.gz"
    with gzip.open(bad, "wt") as handle:
        handle.write('{"problem": {}}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl\.gz:1: not a step tree"):
        list(read_trees(bad))


def test_node_ids_must_be_positional() -> None:
    data = hand_built_tree().to_dict()
    data["nodes"][2]["id"] = 7
    with pytest.raises(ValueError, match=r"node ids must be 0\.\.n-1"):
        StepTree.from_dict(data)


def test_node_round_trip() -> None:
    node = StepNode(id=3, parent_id=1, depth=2, text="x", token_ids=[1], logprobs=[-1.5])
    assert StepNode.from_dict(node.to_dict()) == node
