"""The KV segment store: the KV of generated steps kept for later tree expansions.

The KV of every generated step is kept as a *segment* keyed by the token sequence it ends (an
LRU bounded by a token budget). A tree expansion asks for ``prompt + steps on the path``; that
key's segment chain (prompt, step 1, step 2, ...) is concatenated instead of running the model
over the prefix again: the tree counterpart of vLLM's prefix caching.

A segment for sequence ``S`` holds the KV of ``S[:-1]`` beyond its parent's segment; the last
token of ``S`` is always fed by the decoder, which yields the logits of the first new token.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

__all__ = ["Key", "Segment", "SegmentStore", "compact_slots"]

Key = tuple[int, ...]


@dataclass
class Segment:
    """KV of some tokens of a sequence, per layer ``(heads, tokens, head_dim)``."""

    parent: Key | None
    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        return self.keys[0].shape[1] if self.keys else 0


class SegmentStore:
    """Segments by the sequence they end, least recently used evicted past ``budget`` tokens."""

    def __init__(self, budget: int) -> None:
        """``budget``: tokens of KV kept (0 or less keeps nothing)."""
        self.budget = budget
        self._segments: OrderedDict[Key, Segment] = OrderedDict()
        self.tokens = 0

    def clear(self) -> None:
        self._segments.clear()
        self.tokens = 0

    def store(self, key: Key, segment: Segment) -> None:
        if self.budget <= 0 or key in self._segments:
            return
        self._segments[key] = segment
        self.tokens += segment.length
        while self.tokens > self.budget and self._segments:
            _, evicted = self._segments.popitem(last=False)
            self.tokens -= evicted.length

    def chain(self, key: Key) -> list[Segment] | None:
        """Segments covering ``key[:-1]``, root first; ``None`` if any link was evicted."""
        chain = []
        link: Key | None = key
        while link is not None:
            segment = self._segments.get(link)
            if segment is None:
                return None
            self._segments.move_to_end(link)
            chain.append(segment)
            link = segment.parent
        return chain[::-1]


def compact_slots(
    buffers: list[torch.Tensor], index: torch.Tensor, length: int
) -> list[torch.Tensor]:
    """The slots ``index`` of each KV buffer ``(slots, kv_heads, max_len, head_dim)``; only
    indices below ``length`` hold KV yet, the rest is zeroed (masked KV must stay finite:
    SDPA weighs it by 0, and 0 * NaN from uninitialised memory would not vanish)."""
    out = []
    for buffer in buffers:
        new = buffer.new_empty((len(index), *buffer.shape[1:]))
        new[:, :, :length] = buffer[index, :, :length]
        new[:, :, length:] = 0
        out.append(new)
    return out
