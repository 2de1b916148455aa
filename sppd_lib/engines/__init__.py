"""Sampling engines: the capabilities as Protocols, two implementations (transformers, vLLM).

Capabilities (callers test them with ``isinstance``, never by probing attributes):
:class:`Engine` samples (every engine); :class:`StreamingEngine` also takes requests one by
one (``submit`` / ``collect`` / ``pending`` / ``abort``: vLLM's continuous batching);
:class:`ReloadingEngine` swaps in a new policy's weights and is stopped with ``close``;
:class:`SleepingEngine` frees its device memory while the policy trains;
:class:`EnginePoolLike` runs several calls at once; an engine that fills its own batch
declares ``schedules_own_batch`` (:func:`schedules_own_batch`). ``engines.factory`` builds
an engine from the ``engine:`` section, ``engines.serving`` owns the run's engine.

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
    "BatchScheduler",
    "Call",
    "Continuation",
    "Engine",
    "EnginePoolLike",
    "HasContextLength",
    "ReloadingEngine",
    "SamplingSettings",
    "SleepingEngine",
    "StreamingEngine",
    "sample_calls",
    "schedules_own_batch",
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


@runtime_checkable
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


@runtime_checkable
class StreamingEngine(Engine, Protocol):
    """An engine whose requests join its running batch as they come (no barrier across
    trees); the tree sampler streams on it (``sampler.sample_trees``)."""

    def submit(
        self, request_id: str, prefix: Sequence[int], n: int, settings: SamplingSettings
    ) -> None:
        """Queue ``n`` continuations of ``prefix``, seeded by ``settings.seed`` alone."""
        ...

    def collect(self) -> list[tuple[str, list[Continuation]]]:
        """Run until at least one pending request finished; every finished one, by id."""
        ...

    def pending(self) -> int:
        """Requests submitted and not yet collected."""
        ...

    def abort(self) -> None:
        """Drop every pending request."""
        ...


@runtime_checkable
class ReloadingEngine(Engine, Protocol):
    """An engine that lives longer than one policy: it is handed each new policy's weights
    (when it can take them exactly) and is stopped explicitly."""

    def can_load_weights(self, model: str) -> bool:
        """Can :meth:`load_weights` swap ``model`` in exactly (else build a new engine)?"""
        ...

    def load_weights(self, model: str) -> None:
        """Serve ``model`` (a directory) from now on; its cached prefixes are forgotten."""
        ...

    def close(self) -> None:
        """Stop the engine and free what it holds."""
        ...


@runtime_checkable
class SleepingEngine(ReloadingEngine, Protocol):
    """A reloading engine that can free its device memory while the policy trains and take
    it back after, much faster than a new engine starts. ``can_sleep`` is false where the
    backend has no sleep mode (then the engine stays up, or is closed to free a GPU)."""

    can_sleep: bool

    def sleep(self) -> None:
        """Free the device memory (KV cache; weights per the sleep level)."""
        ...

    def wake_up(self) -> None:
        """Take the memory back; the caller then loads the next policy's weights."""
        ...


@runtime_checkable
class BatchScheduler(Protocol):
    """An engine that keeps its own continuous batch full, so a caller should hand it all
    its prompts in one call rather than in batches that each wait for their longest response
    (greedy evaluation does: ``sppd_lib.evaluate``)."""

    schedules_own_batch: bool


def schedules_own_batch(engine: Engine) -> bool:
    """Does ``engine`` want every prompt in one call (:class:`BatchScheduler`)?"""
    return isinstance(engine, BatchScheduler) and engine.schedules_own_batch


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
