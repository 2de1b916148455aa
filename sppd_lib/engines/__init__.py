"""Sampling engines: one protocol, two implementations (transformers, vLLM).

Contract: given prefixes (token ids), sample ``n`` continuations of each that stop at the step
delimiter or EOS, and return for every continuation its token ids, text, finish reason and the
RAW per-token log-probs of the model (before temperature and top-p). Raw log-probs are the
reference log-probs of SPPD's loss (arXiv 2502.13516), so training needs no reference pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "Call",
    "Continuation",
    "Engine",
    "EnginePoolLike",
    "HasContextLength",
    "SamplingSettings",
    "sample_calls",
]

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


@runtime_checkable
class HasContextLength(Protocol):
    """An engine that knows the longest sequence (prompt and generation) it can hold."""

    max_model_len: int


#: One ``Engine.sample`` call: ``(prefixes, n, settings)``.
Call = tuple[Sequence[Sequence[int]], int, SamplingSettings]


@runtime_checkable
class EnginePoolLike(Protocol):
    """An engine that can run independent calls at once (engines on Ray actors); each call's
    result is what one ``sample`` call with those arguments returns."""

    def sample(
        self, prefixes: Sequence[Sequence[int]], n: int, settings: SamplingSettings
    ) -> list[list[Continuation]]: ...

    def sample_calls(self, calls: Sequence[Call]) -> Iterator[list[list[Continuation]]]:
        """The results of ``calls``, in call order (run concurrently)."""
        ...


def sample_calls(engine: Engine, calls: Iterable[Call]) -> Iterator[list[list[Continuation]]]:
    """The result of every call, in order: one after the other, or all at once on a pool."""
    if isinstance(engine, EnginePoolLike):
        yield from engine.sample_calls(list(calls))
    else:
        for call in calls:
            yield engine.sample(*call)
