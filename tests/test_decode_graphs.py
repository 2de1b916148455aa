"""The fixed-slot decode (CUDA graphs on a GPU) gives the tokens of the eager static path.

CPU tests run the fixed-slot bookkeeping eagerly (``decode_graphs=True`` off CUDA); the CUDA
tests capture real graphs and skip without a GPU. Both compare token for token.
"""

from __future__ import annotations

import pytest
import torch

from sppd_lib.engines import SamplingSettings
from sppd_lib.engines.transformers_engine import TransformersEngine
from sppd_lib.models import build_tiny_model
from sppd_lib.prompts import prompt_token_ids

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SETTINGS = (
    SamplingSettings(max_tokens=16, temperature=1.0, stop="e", seed=3),
    SamplingSettings(max_tokens=12, temperature=0.7, top_p=0.9, seed=4),
    SamplingSettings(max_tokens=16, temperature=0.0, stop=None),
)


def _same(a, b, atol: float = 1e-4) -> None:
    flat = [[c for cs in groups for c in cs] for groups in (a, b)]
    assert len(flat[0]) == len(flat[1])
    for x, y in zip(*flat, strict=True):
        assert x.token_ids == y.token_ids and x.finish_reason == y.finish_reason
        assert torch.allclose(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=atol)


def _prefixes(tokenizer) -> list[list[int]]:
    questions = ("2+2?", "What is 13*7 plus 5?", "x", "1+2?")
    return [prompt_token_ids(tokenizer, q) for q in questions]


def _compare(model, tokenizer, *, expect_graphs: bool) -> None:
    prefixes = _prefixes(tokenizer)
    for settings in SETTINGS:
        slots = TransformersEngine(model, tokenizer, decode_graphs=True)
        eager = TransformersEngine(model, tokenizer, decode_graphs=False)
        for n in (1, 3):
            _same(slots.sample(prefixes, n, settings), eager.sample(prefixes, n, settings))
        assert slots._steps and all(
            (step.graph is not None) == expect_graphs for step in slots._steps.values()
        )
    # Rows finished at different steps (finished slots stay, fed padding).
    lengths = {len(c.token_ids) for cs in slots.sample(prefixes, 3, SETTINGS[0]) for c in cs}
    assert len(lengths) > 2, lengths


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_fixed_slots_give_the_eager_tokens_on_cpu(arch) -> None:
    model, tokenizer = build_tiny_model(arch, seed=0)
    _compare(model, tokenizer, expect_graphs=False)


def test_decode_steps_are_reused_across_calls(tiny_llama) -> None:
    model, tokenizer = tiny_llama
    engine = TransformersEngine(model, tokenizer, decode_graphs=True)
    prefixes = _prefixes(tokenizer)
    settings = SamplingSettings(max_tokens=10, temperature=1.0, seed=1)
    first = engine.sample(prefixes, 2, settings)
    step = next(iter(engine._steps.values()))
    assert (step.rows, step.max_len) == (16, 256)  # 4 prompts x 2 = 8 rows round up to 16
    engine.sample(prefixes, 5, settings)  # 20 rows: a larger step
    again = engine.sample(prefixes, 2, settings)  # the first step again, its stale KV zeroed
    assert engine._steps[(step.rows, step.max_len)] is step
    _same(first, again)
    engine.clear_cache()
    assert not engine._steps


def test_decode_graphs_default_off_on_cpu(tiny_llama) -> None:
    model, tokenizer = tiny_llama
    assert not TransformersEngine(model, tokenizer).decode_graphs  # the CPU path as before
    assert not TransformersEngine(
        model, tokenizer, static_cache=False, decode_graphs=True
    ).decode_graphs


@needs_cuda
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_cuda_graphs_give_the_eager_tokens(arch) -> None:
    model, tokenizer = build_tiny_model(arch, seed=0)
    model = model.to("cuda")
    assert TransformersEngine(model, tokenizer).decode_graphs  # on by default on CUDA
    _compare(model, tokenizer, expect_graphs=True)
