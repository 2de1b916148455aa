from __future__ import annotations

import pandas as pd
import pytest

from sppd_lib.config import PairConfig
from sppd_lib.models import build_tiny_prm
from sppd_lib.pairs import build_pairs, stepwise_records
from sppd_lib.prm import PRMScorer, prm_values, train_prm
from sppd_lib.values import mc_values

from .test_pairs import known_tree, random_tree


def save_tiny_prm(path, tokenizer, channels: int) -> str:
    """A random token-classification PRM: one channel (value head) or two (classifier)."""
    model, _ = build_tiny_prm(channels=channels, seed=channels)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("channels", [1, 2])
def test_scorer_reads_both_head_shapes(tmp_path, tiny_llama, channels: int) -> None:
    _, tokenizer = tiny_llama
    scorer = PRMScorer(save_tiny_prm(tmp_path / "prm", tokenizer, channels), batch_size=2)
    paths = [["Step one.", "Step two."], ["Other."], ["A", "B", "C"]]
    scores = scorer.score("Question?", paths)
    assert [len(s) for s in scores] == [2, 1, 3]
    assert all(0.0 <= v <= 1.0 for s in scores for v in s)
    # Causal model: a shared first step scores the same whatever follows, batched or not.
    alone = scorer.score("Question?", [["Step one."]])[0][0]
    assert alone == pytest.approx(scores[0][0], abs=1e-5)


def test_prm_values_fill_every_node(tmp_path, tiny_llama) -> None:
    _, tokenizer = tiny_llama
    scorer = PRMScorer(save_tiny_prm(tmp_path / "prm", tokenizer, 2))
    tree = prm_values(known_tree(), scorer)
    assert all(0.0 <= n.value <= 1.0 and n.value_source == "prm" for n in tree.nodes)
    pairs, _ = build_pairs(
        [known_tree()], PairConfig(value="prm", prm_model=str(tmp_path / "prm"), threshold=0.0)
    )
    assert len(pairs) > 0 and (pairs["value_source"] == "prm").all()


def test_train_prm_on_mc_labels_learns(tmp_path, tiny_llama) -> None:
    model, tokenizer = tiny_llama
    base = tmp_path / "base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    trees = [mc_values(random_tree(seed)) for seed in range(12)]
    records = stepwise_records(trees)
    losses = train_prm(records, base, tmp_path / "prm", epochs=4, learning_rate=3e-3)
    assert losses[-1] < losses[0]
    scores = PRMScorer(tmp_path / "prm").score("q", [["s\n\n", "So \\boxed{1}"]])
    assert all(0.0 <= v <= 1.0 for v in scores[0])
    with pytest.raises(ValueError, match="no stepwise records"):
        train_prm(pd.DataFrame(columns=["prompt", "completions", "labels"]), base, tmp_path / "x")


def test_prm_config_needs_a_model() -> None:
    with pytest.raises(ValueError, match=r"needs pairs\.prm_model"):
        PairConfig(value="prm")
