"""Shared fixtures. Fast tests use tiny random models; `slow` tests load the real SmolLM2."""

from __future__ import annotations

import pytest

from sppd_lib.models import build_tiny_model


@pytest.fixture(scope="session")
def tiny_llama():
    """(model, tokenizer): a random ~3M-parameter Llama with the SmolLM2 tokenizer."""
    return build_tiny_model("llama", seed=0)


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of the real SmolLM2-135M-Instruct, fp32 on CPU."""
    from sppd_lib.models import load_model

    return load_model("smollm2-135m-instruct", device="cpu")


@pytest.fixture(scope="session")
def smollm2_sampler_config():
    """Tree sampling settings under which SmolLM2-135M gets both right and wrong paths."""
    from sppd_lib.config import SamplerConfig

    return SamplerConfig(
        k=12,
        c=2,
        temperature=0.7,
        max_step_tokens=96,
        max_total_tokens=320,
        answer_format="any",
        problems_per_batch=12,
        passes_per_round=2,
    )


@pytest.fixture(scope="session")
def smollm2_trees(smollm2, smollm2_sampler_config):
    """Step trees of the real model on 12 training arithmetic problems, and their config."""
    from sppd_lib.data import load_problems
    from sppd_lib.engines.transformers_engine import TransformersEngine
    from sppd_lib.sampler import sample_trees

    model, tokenizer = smollm2
    problems = load_problems("arith", "train", limit=12)
    engine = TransformersEngine(model, tokenizer)
    trees = sample_trees(engine, tokenizer, problems, smollm2_sampler_config, progress=False)
    return list(trees), smollm2_sampler_config
