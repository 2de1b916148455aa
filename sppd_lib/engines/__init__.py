"""Sampling engines: one protocol, two implementations (transformers, vLLM).

Contract: given prefixes (token ids), sample ``n`` continuations of each that stop at the step
delimiter or EOS, and return for every continuation its token ids, text, finish reason and the
RAW per-token log-probs of the model (before temperature and top-p). Raw log-probs are the
reference log-probs of SPPD's loss (arXiv 2502.13516), so training needs no reference pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["Continuation", "Engine", "SamplingSettings"]

FinishReason = Literal["delimiter", "eos", "length"]


@dataclass(frozen=True)
class SamplingSettings:
    """How one engine call samples."""

    max_tokens: int
    temperature: float = 0.7
    top_p: float = 1.0
    #: Stop once the generated text contains this string (kept in the output).
    stop: str | None = "\n\n"
    seed: int = 0


@dataclass(frozen=True)
class Continuation:
    """One sampled continuation; ``logprobs[i]`` is the raw log-prob of ``token_ids[i]``."""

    token_ids: list[int]
    text: str
    logprobs: list[float]
    finish_reason: FinishReason


class Engine(Protocol):
    """Anything that samples step continuations; see the module docstring for the contract."""

    def sample(
        self, prefixes: Sequence[Sequence[int]], n: int, settings: SamplingSettings
    ) -> list[list[Continuation]]:
        """``n`` continuations per prefix, in prefix order."""
        ...
