from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sppd_lib.data import load_problems
from sppd_lib.engines import SamplingSettings
from sppd_lib.engines.transformers_engine import TransformersEngine
from sppd_lib.prompts import has_final_answer, prompt_token_ids
from sppd_lib.sampler import SamplerConfig, sample_trees
from sppd_lib.tree import StepTree


@pytest.fixture(scope="module")
def engine(tiny_llama):
    model, tokenizer = tiny_llama
    return TransformersEngine(model, tokenizer)


@pytest.fixture(scope="module")
def problems():
    return load_problems("arith", "train", limit=3)


def check_invariants(tree: StepTree, config: SamplerConfig) -> None:
    for node in tree.nodes[1:]:
        parent = tree.nodes[node.parent_id]
        assert node.depth == parent.depth + 1 <= config.max_depth
        assert len(node.token_ids) == len(node.logprobs) <= config.max_step_tokens
        assert all(lp <= 0 for lp in node.logprobs)
        if node.terminal:
            assert tree.children(node.id) == []
        else:
            assert node.finish_reason != "eos"
    for parent in tree.nodes:
        kids = tree.children(parent.id)
        assert len(kids) in (0, config.c)
        for kid in kids:  # siblings share the prefix
            assert tree.prefix_ids(kid.id)[: -len(kid.token_ids) or None] == tree.prefix_ids(
                parent.id
            )
    for path in tree.complete_paths():
        assert path[-1].terminal_reason == "answer"
        if config.answer_format == "boxed":
            assert has_final_answer(path[-1].text)
        assert path[-1].correct is not None


def test_same_seed_same_tree(engine, tiny_llama, problems) -> None:
    _, tokenizer = tiny_llama
    config = SamplerConfig(k=4, c=2, max_step_tokens=6, max_depth=3, problems_per_batch=2)
    first = [t.to_dict() for t in sample_trees(engine, tokenizer, problems, config, progress=False)]
    again = [t.to_dict() for t in sample_trees(engine, tokenizer, problems, config, progress=False)]
    assert first == again
    other = SamplerConfig(**{**config.__dict__, "seed": 1})
    different = [
        t.to_dict() for t in sample_trees(engine, tokenizer, problems, other, progress=False)
    ]
    assert different != first
    assert [t["problem"]["id"] for t in first] == [p.id for p in problems]


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    k=st.integers(1, 5),
    c=st.integers(1, 3),
    max_step_tokens=st.integers(1, 6),
    max_depth=st.integers(1, 4),
    max_total_tokens=st.integers(1, 20),
    selection=st.sampled_from(["logprob", "uniform"]),
    skip_closed=st.booleans(),
    answer_format=st.sampled_from(["boxed", "any"]),
)
def test_structural_invariants(engine, tiny_llama, problems, **options) -> None:
    _, tokenizer = tiny_llama
    config = SamplerConfig(temperature=1.0, problems_per_batch=2, **options)
    for tree in sample_trees(engine, tokenizer, problems[:2], config, progress=False):
        check_invariants(tree, config)
        assert len(tree.nodes) - 1 <= config.k * config.c


def test_recorded_logprobs_equal_a_fresh_forward(engine, tiny_llama, problems) -> None:
    model, tokenizer = tiny_llama
    config = SamplerConfig(k=3, c=2, max_step_tokens=8, max_depth=3, temperature=1.0)
    for tree in sample_trees(engine, tokenizer, problems[:2], config, progress=False):
        for node in tree.nodes[1:]:
            ids = tree.prefix_ids(node.id)
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0].float()
            start = len(ids) - len(node.token_ids)
            fresh = torch.log_softmax(logits[start - 1 : -1], -1)
            fresh = fresh.gather(1, torch.tensor(node.token_ids)[:, None]).squeeze(1)
            assert torch.allclose(fresh, torch.tensor(node.logprobs), atol=1e-4)


def test_engine_stops_at_delimiter_and_eos(tiny_llama) -> None:
    model, tokenizer = tiny_llama
    engine = TransformersEngine(model, tokenizer)
    prefix = prompt_token_ids(tokenizer, "2+2?")
    # A random model rarely emits "\n\n"; a one-character delimiter it does emit is "e".
    out = engine.sample([prefix], 4, SamplingSettings(max_tokens=30, temperature=1.0, stop="e"))
    for continuation in out[0]:
        if continuation.finish_reason == "delimiter":
            assert "e" in continuation.text
            assert "e" not in tokenizer.decode(continuation.token_ids[:-1])  # stopped at once
        else:
            assert continuation.finish_reason == "length" and len(continuation.token_ids) == 30
    assert any(c.finish_reason == "delimiter" for c in out[0])
    greedy = engine.sample([prefix, prefix], 2, SamplingSettings(max_tokens=5, temperature=0))
    assert len({tuple(c.token_ids) for cs in greedy for c in cs}) == 1


def test_engine_reports_eos(tiny_llama) -> None:
    model, tokenizer = tiny_llama
    engine = TransformersEngine(model, tokenizer)
    engine.eos_ids = frozenset(range(len(tokenizer)))  # every token ends the sequence
    out = engine.sample([[1, 2, 3]], 2, SamplingSettings(max_tokens=5))
    assert all(c.finish_reason == "eos" and len(c.token_ids) == 1 for c in out[0])


def test_bad_sampler_config() -> None:
    with pytest.raises(ValueError, match=r"sampler\.k must be >= 1"):
        SamplerConfig(k=0)
    with pytest.raises(ValueError, match="answer_format"):
        SamplerConfig(answer_format="latex")
    with pytest.raises(ValueError, match="selection"):
        SamplerConfig(selection="greedy")
