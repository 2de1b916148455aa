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
