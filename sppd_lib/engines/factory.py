"""The one place that knows the engine kinds: builds an engine from the ``engine:`` section.

Adding an engine = its module in ``sppd_lib.engines``, one branch of :func:`build_engine` (and
of :func:`check_available` if it is an optional install) and one value of
``sppd_lib.config.EngineKind``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from sppd_lib.config import ConfigError, EngineConfig
from sppd_lib.engines import Engine

__all__ = ["LoadWeights", "build_engine", "check_available", "load_policy_weights"]

#: ``path -> (model, tokenizer)``: how an engine that samples from loaded weights gets them
#: (the serving policy passes its cache, so the weights are loaded once per model).
LoadWeights = Callable[[str], tuple[Any, Any]]


def check_available(config: EngineConfig) -> None:
    """Raise :class:`ConfigError` when the engine of ``config`` is not installed (before a
    run writes anything)."""
    if config.kind == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "engine is 'vllm' but vllm is not installed: make setup installs it "
            "(or --set engine=transformers)"
        )


def load_policy_weights(config: EngineConfig) -> LoadWeights:
    """Loads a policy's ``(model, tokenizer)`` on the engine's device and dtype."""

    def load(path: str) -> tuple[Any, Any]:
        import torch

        from sppd_lib.models import load_model

        dtype = None if config.dtype == "auto" else getattr(torch, config.dtype)
        return load_model(path, device=config.device, dtype=dtype)

    return load


def build_engine(
    config: EngineConfig,
    model: str,
    *,
    seed: int = 0,
    lora: str | None = None,
    load_weights: LoadWeights | None = None,
) -> tuple[Engine, Any]:
    """``(engine, tokenizer)`` sampling from ``model`` (a resolved path or anything
    ``sppd_lib.models.resolve_model`` takes). ``seed`` seeds vLLM; ``lora`` is an adapter
    directory vLLM applies; ``load_weights`` gives the transformers engine its weights
    (default: :func:`load_policy_weights`)."""
    if config.kind == "vllm":
        from sppd_lib.engines.vllm_engine import VLLMEngine

        options = dict(config.vllm_args)
        if config.dtype != "auto":
            options["dtype"] = config.dtype
        if config.gpu_memory_utilization is not None:
            options["gpu_memory_utilization"] = config.gpu_memory_utilization
        engine = VLLMEngine(
            model,
            lora_path=lora,
            tensor_parallel_size=config.tensor_parallel_size,
            max_model_len=config.max_model_len,
            seed=seed,
            block_size=config.block_size,
            sleep_level=config.sleep_level if config.enable_sleep_mode else None,
            **options,
        )
        return engine, engine.tokenizer
    from sppd_lib.engines.transformers_engine import TransformersEngine

    if lora:
        raise ConfigError("--lora is for the vLLM engine; merge it or pass its directory")
    loaded, tokenizer = (load_weights or load_policy_weights(config))(model)
    return TransformersEngine(loaded, tokenizer, max_batch_rows=config.max_batch_rows), tokenizer
