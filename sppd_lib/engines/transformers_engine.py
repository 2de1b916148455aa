"""The transformers engine: batched step sampling that never recomputes a tree's shared prefix.

Two levels of reuse:

* Within a call, each prefix is prepared once and its KV cache repeated for its ``n``
  children (``DynamicCache.batch_repeat_interleave``).
* Across calls, the KV of every generated step is kept as a *segment* keyed by the token
  sequence it ends (an LRU bounded by ``kv_cache_tokens``). A tree expansion asks for
  ``prompt + steps on the path``; that key's segment chain (prompt, step 1, step 2, ...) is
  concatenated instead of running the model over the prefix again. This is the tree
  counterpart of vLLM's prefix caching.

A segment for sequence ``S`` holds the KV of ``S[:-1]`` beyond its parent's segment; the last
token of ``S`` is always fed in the decode loop, which yields the logits of the first new
token. Rows that finish (delimiter, EOS, length) leave the batch at once. Sampling draws from
one seeded ``torch.Generator``: the same calls with the same seed give the same tokens.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sppd_lib.engines import Continuation, FinishReason, SamplingSettings
from sppd_lib.models import eos_token_ids

__all__ = ["TransformersEngine"]

Key = tuple[int, ...]


@dataclass
class _Segment:
    """KV of some tokens of a sequence, per layer ``(heads, tokens, head_dim)``."""

    parent: Key | None
    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        return self.keys[0].shape[1] if self.keys else 0


class TransformersEngine:
    """Samples step continuations with a Hugging Face causal LM (any device, any dtype)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_batch_rows: int = 64,
        kv_cache_tokens: int = 100_000,
    ) -> None:
        """
        Args:
            max_batch_rows: prefixes x n decoded together (memory vs speed).
            kv_cache_tokens: tokens of step KV kept for later expansions (0 turns reuse off).
                SmolLM2-135M in fp32 needs 46 KB per token: 100,000 tokens are 4.6 GB.
                Build a new engine (or call ``clear_cache``) after the weights change.
        """
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_rows = max_batch_rows
        self.kv_cache_tokens = kv_cache_tokens
        eos = eos_token_ids(model, tokenizer)
        self.eos_ids = frozenset(eos)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
        self._may_complete: dict[str, list[bool]] = {}
        self._segments: OrderedDict[Key, _Segment] = OrderedDict()
        self._cached_tokens = 0
        #: Counters of the last ``sample`` call (for throughput measurements).
        self.tokens_generated = 0
        self.prefix_tokens_computed = 0
        self.prefix_tokens_reused = 0

    # -- the KV segment store -----------------------------------------------------------

    def clear_cache(self) -> None:
        self._segments.clear()
        self._cached_tokens = 0

    def _store(self, key: Key, segment: _Segment) -> None:
        if self.kv_cache_tokens <= 0 or key in self._segments:
            return
        self._segments[key] = segment
        self._cached_tokens += segment.length
        while self._cached_tokens > self.kv_cache_tokens and self._segments:
            _, evicted = self._segments.popitem(last=False)
            self._cached_tokens -= evicted.length

    def _chain(self, key: Key) -> list[_Segment] | None:
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

    # -- sampling -----------------------------------------------------------------------

    def _may_complete_stop(self, stop: str) -> list[bool]:
        """Per vocabulary id: can this token complete ``stop``? (Decode only when it can.)"""
        if stop not in self._may_complete:
            last = stop[-1]
            pieces = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
            self._may_complete[stop] = [last in piece for piece in pieces]
        return self._may_complete[stop]

    @torch.inference_mode()
    def sample(
        self, prefixes: Sequence[Sequence[int]], n: int, settings: SamplingSettings
    ) -> list[list[Continuation]]:
        if n < 1 or settings.max_tokens < 1:
            raise ValueError("n and max_tokens must be >= 1")
        if any(len(prefix) == 0 for prefix in prefixes):
            raise ValueError("every prefix needs at least one token")
        generator = torch.Generator(device=self.model.device).manual_seed(settings.seed)
        per_chunk = max(1, self.max_batch_rows // n)
        self.tokens_generated = self.prefix_tokens_computed = self.prefix_tokens_reused = 0
        results: list[list[Continuation]] = []
        for start in range(0, len(prefixes), per_chunk):
            chunk = [tuple(p) for p in prefixes[start : start + per_chunk]]
            results.extend(self._sample_chunk(chunk, n, settings, generator))
        return results

    def _draw(
        self, logits: torch.Tensor, settings: SamplingSettings, generator: torch.Generator
    ) -> torch.Tensor:
        """Next tokens ``(rows,)`` from ``logits (rows, vocab)`` with temperature and top-p."""
        if settings.temperature <= 0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / settings.temperature, dim=-1)
        if settings.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            outside = sorted_probs.cumsum(dim=-1) - sorted_probs > settings.top_p
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    def _prefill(self, prefixes: list[Key]) -> list[_Segment]:
        """Run the model over ``prefix[:-1]`` of each (left-padded); one root segment each."""
        device = self.model.device
        lengths = [len(p) - 1 for p in prefixes]
        width = max(lengths)
        if width == 0:
            return [_Segment(None, [], []) for _ in prefixes]
        input_ids = torch.full((len(prefixes), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prefixes), width), dtype=torch.long)
        for row, (prefix, length) in enumerate(zip(prefixes, lengths, strict=True)):
            if length:
                input_ids[row, width - length :] = torch.tensor(prefix[:-1])
                mask[row, width - length :] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            past_key_values=DynamicCache(),
            use_cache=True,
            logits_to_keep=1,
        )
        layers = out.past_key_values.layers
        self.prefix_tokens_computed += sum(lengths)
        return [
            _Segment(
                None,
                [layer.keys[row, :, width - length :].clone() for layer in layers],
                [layer.values[row, :, width - length :].clone() for layer in layers],
            )
            for row, length in enumerate(lengths)
        ]

    def _prefix_cache(self, prefixes: list[Key]) -> tuple[DynamicCache, torch.Tensor]:
        """A left-padded cache of every ``prefix[:-1]`` and its attention mask ``(B, W)``."""
        chains: list[list[_Segment] | None] = [self._chain(p) for p in prefixes]
        missing = [i for i, chain in enumerate(chains) if chain is None]
        if missing:
            for i, segment in zip(
                missing, self._prefill([prefixes[i] for i in missing]), strict=True
            ):
                chains[i] = [segment]
                self._store(prefixes[i], segment)
        self.prefix_tokens_reused += sum(
            len(p) - 1 for i, p in enumerate(prefixes) if i not in missing
        )
        width = max(len(p) - 1 for p in prefixes)
        mask = torch.zeros((len(prefixes), width), dtype=torch.long, device=self.model.device)
        cache = DynamicCache()
        if width == 0:
            return cache, mask
        reference = next(s for chain in chains for s in chain if s.length)  # type: ignore[union-attr]
        for layer in range(len(reference.keys)):
            heads, _, dim = reference.keys[layer].shape
            keys = reference.keys[layer].new_zeros((len(prefixes), heads, width, dim))
            values = torch.zeros_like(keys)
            for row, chain in enumerate(chains):
                parts = [s for s in chain if s.length]  # type: ignore[union-attr]
                if not parts:
                    continue
                row_keys = torch.cat([s.keys[layer] for s in parts], dim=1)
                keys[row, :, width - row_keys.shape[1] :] = row_keys
                values[row, :, width - row_keys.shape[1] :] = torch.cat(
                    [s.values[layer] for s in parts], dim=1
                )
            cache.update(keys, values, layer)
        for row, prefix in enumerate(prefixes):
            mask[row, width - (len(prefix) - 1) :] = 1
        return cache, mask

    def _sample_chunk(
        self,
        prefixes: list[Key],
        n: int,
        settings: SamplingSettings,
        generator: torch.Generator,
    ) -> list[list[Continuation]]:
        device = self.model.device
        cache, attention_mask = self._prefix_cache(prefixes)
        width = attention_mask.shape[1]
        cache.batch_repeat_interleave(n)
        attention_mask = attention_mask.repeat_interleave(n, dim=0)
        rows = len(prefixes) * n
        owner = [prefixes[row // n] for row in range(rows)]
        # The first input of every row is the last prefix token, at position len - 1.
        inputs = torch.tensor([p[-1] for p in owner], device=device)
        positions = torch.tensor([len(p) - 1 for p in owner], device=device)

        tokens: list[list[int]] = [[] for _ in range(rows)]
        logprobs: list[list[float]] = [[] for _ in range(rows)]
        finish: list[FinishReason] = ["length"] * rows
        active = list(range(rows))
        may_complete = self._may_complete_stop(settings.stop) if settings.stop else None
        for step in range(settings.max_tokens):
            attention_mask = torch.cat(
                [attention_mask, attention_mask.new_ones((len(active), 1))], dim=1
            )
            out = self.model(
                input_ids=inputs[:, None],
                attention_mask=attention_mask,
                position_ids=positions[:, None],
                past_key_values=cache,
                use_cache=True,
            )
            cache, logits = out.past_key_values, out.logits[:, -1, :].float()
            raw_logprobs = torch.log_softmax(logits, dim=-1)  # before temperature / top-p
            next_tokens = self._draw(logits, settings, generator)
            chosen = raw_logprobs.gather(1, next_tokens[:, None]).squeeze(1).tolist()
            self.tokens_generated += len(active)
            keep = []
            for j, (row, token) in enumerate(zip(active, next_tokens.tolist(), strict=True)):
                tokens[row].append(token)
                logprobs[row].append(chosen[j])
                if token in self.eos_ids:
                    finish[row] = "eos"
                elif (
                    may_complete is not None
                    and may_complete[token]
                    and settings.stop in (self.tokenizer.decode(tokens[row]))
                ):
                    finish[row] = "delimiter"
                elif len(tokens[row]) < settings.max_tokens:
                    keep.append(j)
                    continue
                if self.kv_cache_tokens <= 0:
                    continue
                # Finished: keep the KV of the tokens fed for this row (last prefix token
                # and every new token but the last) for a later expansion of this step.
                layers = cache.layers
                self._store(
                    owner[row] + tuple(tokens[row]),
                    _Segment(
                        owner[row],
                        [layer.keys[j, :, width : width + step + 1].clone() for layer in layers],
                        [layer.values[j, :, width : width + step + 1].clone() for layer in layers],
                    ),
                )
            if not keep:
                break
            if len(keep) < len(active):  # finished rows leave the batch
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                attention_mask, positions = attention_mask[index], positions[index]
                next_tokens = next_tokens[index]
                active = [active[j] for j in keep]
            inputs, positions = next_tokens, positions + 1

        continuations = [
            Continuation(
                token_ids=tokens[row],
                text=self.tokenizer.decode(tokens[row], skip_special_tokens=True),
                logprobs=logprobs[row],
                finish_reason=finish[row],
            )
            for row in range(rows)
        ]
        return [continuations[i * n : (i + 1) * n] for i in range(len(prefixes))]
