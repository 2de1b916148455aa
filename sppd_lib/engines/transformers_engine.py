"""The transformers engine: batched step sampling that never recomputes a tree's shared prefix.

Two levels of reuse:

* Within a call, each prefix is prepared once and its KV cache repeated for its ``n``
  children (``DynamicCache.batch_repeat_interleave``).
* Across calls, the KV of every generated step is kept as a *segment* keyed by the token
  sequence it ends (:mod:`sppd_lib.engines.kv_segments`, an LRU bounded by
  ``kv_cache_tokens``): a tree expansion concatenates its path's segments instead of running
  the model over the prefix again.

Sampling draws from one seeded ``torch.Generator``: the same calls with the same seed
give the same tokens.

Decoding has two paths with the same results (to float rounding):

* Llama-style models (Llama, Qwen2 without sliding windows) decode through
  :func:`~sppd_lib.engines.static_llama.forward_static` (its contract is in that module),
  which keeps the KV in one preallocated buffer per layer ``(rows, kv_heads, max_len,
  head_dim)``. A step writes one column per row; nothing is concatenated or re-padded.
  Finished rows leave the buffers at once (a copy of the KV written so far); greedy decoding
  waits until an eighth of the batch has finished (its steps are cheap per row; the copies
  are not).
  A call's prefixes that share a prefix (the system prompt) compute it once. Greedy calls
  also verify prompt-lookup drafts (:mod:`sppd_lib.engines.drafting`) while the batch is
  small (:meth:`_greedy_chunk_static`):
  a step costs about the same for 2 rows as for 18 tokens, and the tail of a greedy
  evaluation batch is a few long, often repetitive, responses.
* Any other causal LM decodes through ``model(...)`` with a ``DynamicCache``; finished rows
  leave the batch at once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sppd_lib.engines import Continuation, FinishReason, SamplingSettings
from sppd_lib.engines.drafting import DRAFT_BUDGET, prompt_lookup_draft
from sppd_lib.engines.kv_segments import Key, Segment, SegmentStore, compact_slots
from sppd_lib.engines.static_llama import (
    DecodeStep,
    forward_static,
    new_kv_buffers,
    supports_static_cache,
)
from sppd_lib.models import eos_token_ids
from sppd_lib.prompts import context_length

__all__ = ["TransformersEngine", "supports_static_cache"]

#: Decode steps (each a CUDA graph with its KV buffers) an engine keeps: enough for the shapes
#: of a tree sampling run (slots in 16s up to 64, indices in 256s). SmolLM2-135M in bf16 needs
#: 0.75 GB for 64 slots x 512 indices.
MAX_DECODE_GRAPHS = 8


class _Rows:
    """The continuations one call grows: per row its owner prefix, new tokens, their raw
    log-probs and why it stopped. Every decode path appends through :meth:`add`, so the stop
    rules (EOS, the step delimiter, ``max_tokens``) live in one place."""

    def __init__(
        self, engine: TransformersEngine, prefixes: list[Key], n: int, settings: SamplingSettings
    ) -> None:
        self.owner = [prefix for prefix in prefixes for _ in range(n)]
        self.tokens: list[list[int]] = [[] for _ in self.owner]
        self.logprobs: list[list[float]] = [[] for _ in self.owner]
        self.finish: list[FinishReason] = ["length"] * len(self.owner)
        self._engine, self._settings, self._n = engine, settings, n
        self._may_complete = engine._may_complete_stop(settings.stop) if settings.stop else None

    def add(self, row: int, token: int, logprob: float) -> bool:
        """Append one token to ``row``; ``True`` if the row ends with it (reason recorded)."""
        tokens = self.tokens[row]
        tokens.append(token)
        self.logprobs[row].append(logprob)
        self._engine.tokens_generated += 1
        reason = self._engine._finish_reason(tokens, self._settings, self._may_complete)
        if reason is None:
            return False
        self.finish[row] = reason
        return True

    def continuations(self) -> list[list[Continuation]]:
        """Rows ``prefix * n + child`` grouped per prefix."""
        decode = self._engine.tokenizer.decode
        continuations = [
            Continuation(
                token_ids=tokens,
                text=decode(tokens, skip_special_tokens=True),
                logprobs=logprobs,
                finish_reason=finish,
            )
            for tokens, logprobs, finish in zip(
                self.tokens, self.logprobs, self.finish, strict=True
            )
        ]
        n = self._n
        return [continuations[i : i + n] for i in range(0, len(continuations), n)]


class TransformersEngine:
    """Samples step continuations with a Hugging Face causal LM (any device, any dtype)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_batch_rows: int = 64,
        kv_cache_tokens: int = 100_000,
        static_cache: bool | None = None,
        draft_tokens: int = 8,
        decode_graphs: bool | None = None,
    ) -> None:
        """
        Args:
            max_batch_rows: prefixes x n decoded together (memory vs speed).
            kv_cache_tokens: tokens of step KV kept for later expansions (0 turns reuse off).
                SmolLM2-135M in fp32 needs 46 KB per token: 100,000 tokens are 4.6 GB.
                Build a new engine (or call ``clear_cache``) after the weights change.
            static_cache: decode with the preallocated KV buffers of :meth:`_forward_static`
                (``None``: whenever the model supports it; ``False``: always ``DynamicCache``).
            draft_tokens: greedy calls on the static path verify up to this many drafted tokens
                per row and step (prompt lookup, :meth:`_greedy_chunk_static`); 0 turns it off.
            decode_graphs: decode the static path in fixed slots replayed as CUDA graphs
                (:meth:`_sample_chunk_graphed`; greedy calls then decode one token per step,
                without drafts). ``None``: on CUDA whenever the static path is used;
                ``True`` off CUDA runs the same slots eagerly (what CPU tests check).
        """
        self.model = model.eval()
        self.tokenizer = tokenizer
        #: Longest prompt plus generation, in tokens (prompt-length checks read it).
        self.max_model_len = context_length(tokenizer, model)
        self.max_batch_rows = max_batch_rows
        supported = supports_static_cache(model)
        if static_cache and not supported:
            raise ValueError(f"no static-cache path for model type {model.config.model_type!r}")
        self.static_cache = supported if static_cache is None else static_cache
        self.draft_tokens = draft_tokens
        on_cuda = model.device.type == "cuda"
        self.decode_graphs = self.static_cache and (
            on_cuda if decode_graphs is None else decode_graphs
        )
        self._capture = on_cuda
        #: Decode steps by (slots, max_len), least recently used first (each holds its buffers).
        self._steps: OrderedDict[tuple[int, int], DecodeStep] = OrderedDict()
        eos = eos_token_ids(model, tokenizer)
        self.eos_ids = frozenset(eos)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
        self._may_complete: dict[str, list[bool]] = {}
        self._kv = SegmentStore(kv_cache_tokens)
        #: Counters of the last ``sample`` call (for throughput measurements).
        self.tokens_generated = 0
        self.prefix_tokens_computed = 0
        self.prefix_tokens_reused = 0
        self.draft_tokens_proposed = 0
        self.draft_tokens_accepted = 0

    @property
    def kv_cache_tokens(self) -> int:
        """Tokens of step KV kept for later expansions (0: none)."""
        return self._kv.budget

    @kv_cache_tokens.setter
    def kv_cache_tokens(self, tokens: int) -> None:
        self._kv.budget = tokens

    def clear_cache(self) -> None:
        """Forget every stored segment and captured graph (call it after the weights change)."""
        self._kv.clear()
        self._steps.clear()

    # -- sampling -----------------------------------------------------------------------

    def _may_complete_stop(self, stop: str) -> list[bool]:
        """Per vocabulary id: can this token complete ``stop``? (Decode only when it can.)"""
        if stop not in self._may_complete:
            last = stop[-1]
            pieces = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
            self._may_complete[stop] = [last in piece for piece in pieces]
        return self._may_complete[stop]

    def _finish_reason(
        self, tokens: list[int], settings: SamplingSettings, may_complete: list[bool] | None
    ) -> FinishReason | None:
        """Why a row whose last new token is ``tokens[-1]`` ends now, or ``None``."""
        token = tokens[-1]
        if token in self.eos_ids:
            return "eos"
        if (
            may_complete is not None
            and may_complete[token]
            and settings.stop in self.tokenizer.decode(tokens)  # type: ignore[operator]
        ):
            return "delimiter"
        return "length" if len(tokens) >= settings.max_tokens else None

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
        self.draft_tokens_proposed = self.draft_tokens_accepted = 0
        results: list[list[Continuation]] = []
        for start in range(0, len(prefixes), per_chunk):
            chunk = [tuple(p) for p in prefixes[start : start + per_chunk]]
            if not self.static_cache:
                sample_chunk = self._sample_chunk
            elif self.decode_graphs:
                sample_chunk = self._sample_chunk_graphed
            elif settings.temperature <= 0 and self.draft_tokens > 0:
                sample_chunk = self._greedy_chunk_static
            else:
                sample_chunk = self._sample_chunk_static
            results.extend(sample_chunk(chunk, n, settings, generator))
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

    def _prefill(self, prefixes: list[Key]) -> list[Segment]:
        """Run the model over ``prefix[:-1]`` of each (left-padded); one root segment each."""
        device = self.model.device
        lengths = [len(p) - 1 for p in prefixes]
        width = max(lengths)
        if width == 0:
            return [Segment(None, [], []) for _ in prefixes]
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
            Segment(
                None,
                [layer.keys[row, :, width - length :].clone() for layer in layers],
                [layer.values[row, :, width - length :].clone() for layer in layers],
            )
            for row, length in enumerate(lengths)
        ]

    def _chains(self, prefixes: list[Key]) -> list[list[Segment]]:
        """The stored segments covering every ``prefix[:-1]``; missing ones are prefilled."""
        chains: list[list[Segment] | None] = [self._kv.chain(p) for p in prefixes]
        missing = [i for i, chain in enumerate(chains) if chain is None]
        if missing:
            for i, segment in zip(
                missing, self._prefill([prefixes[i] for i in missing]), strict=True
            ):
                chains[i] = [segment]
                self._kv.store(prefixes[i], segment)
        self.prefix_tokens_reused += sum(
            len(p) - 1 for i, p in enumerate(prefixes) if i not in missing
        )
        return chains  # type: ignore[return-value]

    def _prefix_cache(self, prefixes: list[Key]) -> tuple[DynamicCache, torch.Tensor]:
        """A left-padded cache of every ``prefix[:-1]`` and its attention mask ``(B, W)``."""
        chains = self._chains(prefixes)
        width = max(len(p) - 1 for p in prefixes)
        mask = torch.zeros((len(prefixes), width), dtype=torch.long, device=self.model.device)
        cache = DynamicCache()
        if width == 0:
            return cache, mask
        reference = next(s for chain in chains for s in chain if s.length)
        for layer in range(len(reference.keys)):
            heads, _, dim = reference.keys[layer].shape
            keys = reference.keys[layer].new_zeros((len(prefixes), heads, width, dim))
            values = torch.zeros_like(keys)
            for row, chain in enumerate(chains):
                parts = [s for s in chain if s.length]
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
        grown = _Rows(self, prefixes, n, settings)
        # The first input of every row is the last prefix token, at position len - 1.
        inputs = torch.tensor([p[-1] for p in grown.owner], device=device)
        positions = torch.tensor([len(p) - 1 for p in grown.owner], device=device)
        active = list(range(len(grown.owner)))
        for _ in range(settings.max_tokens):
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
            keep = []
            for j, (row, token) in enumerate(zip(active, next_tokens.tolist(), strict=True)):
                if not grown.add(row, token, chosen[j]):
                    keep.append(j)
                    continue
                layers = cache.layers
                keys = [layer.keys for layer in layers]
                self._store_row(grown, row, keys, [layer.values for layer in layers], j, width)
            if not keep:
                break
            if len(keep) < len(active):  # finished rows leave the batch
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                attention_mask, positions = attention_mask[index], positions[index]
                next_tokens = next_tokens[index]
                active = [active[j] for j in keep]
            inputs, positions = next_tokens, positions + 1
        return grown.continuations()

    # -- the static-cache path (Llama-style models) -------------------------------------

    def _forward_static(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        length: int,
        logits: bool = True,
    ) -> torch.Tensor | None:
        """:func:`~sppd_lib.engines.static_llama.forward_static` on this engine's model."""
        return forward_static(self.model, input_ids, positions, keys, values, length, logits)

    def _prefill_static(self, prefixes: list[Key]) -> list[list[Segment]]:
        """Compute and store the KV of every ``prefix[:-1]``; the chain of each.

        The prefixes' longest common prefix (an evaluation's system prompt, a batch's shared
        chat template) is computed once, or taken from the store, and becomes the parent
        segment of every prefix's own remainder.
        """
        device = self.model.device
        common = 0
        if len(prefixes) > 1:
            shortest = min(len(p) for p in prefixes)
            while common < shortest and len({p[common] for p in prefixes}) == 1:
                common += 1
        # The shared segment is keyed by the common prefix and holds its KV but its last token.
        shared = common - 1 if common >= 2 else 0
        root_key = prefixes[0][:common] if shared else None
        width = max(len(p) - 1 for p in prefixes)
        keys, values = new_kv_buffers(self.model, len(prefixes), max(width, 1))
        root = self._kv.chain(root_key) if root_key is not None else None
        if shared and root is not None:  # the store has it: copy it into every row
            for layer in range(len(keys)):
                keys[layer][:, :, :shared] = torch.cat([s.keys[layer] for s in root], dim=1)
                values[layer][:, :, :shared] = torch.cat([s.values[layer] for s in root], dim=1)
            self.prefix_tokens_reused += shared * len(prefixes)
        elif shared:
            ids = torch.tensor([prefixes[0][:shared]], device=device)
            first = ([k[:1] for k in keys], [v[:1] for v in values])  # views of row 0
            self._forward_static(
                ids, torch.arange(shared, device=device)[None], *first, shared, False
            )
            for layer in range(len(keys)):
                keys[layer][1:, :, :shared] = keys[layer][0, :, :shared]
                values[layer][1:, :, :shared] = values[layer][0, :, :shared]
            segment = Segment(
                None,
                [k[0, :, :shared].clone() for k in keys],
                [v[0, :, :shared].clone() for v in values],
            )
            self._kv.store(root_key, segment)  # type: ignore[arg-type]
            root = [segment]
            self.prefix_tokens_computed += shared  # once: within a call it is not "reused"
        rest = width - shared
        if rest > 0:  # every remainder, right-padded (padding writes masked, stale KV)
            ids = torch.full((len(prefixes), rest), self.pad_id, dtype=torch.long)
            for row, prefix in enumerate(prefixes):
                ids[row, : len(prefix) - 1 - shared] = torch.tensor(prefix[shared:-1])
            positions = torch.arange(shared, width, device=device).expand(len(prefixes), -1)
            self._forward_static(ids.to(device), positions, keys, values, width, False)
            self.prefix_tokens_computed += sum(len(p) - 1 - shared for p in prefixes)
        chains = []
        for row, prefix in enumerate(prefixes):
            own = slice(shared, len(prefix) - 1)
            segment = Segment(
                root_key if shared else None,
                [k[row, :, own].clone() for k in keys],
                [v[row, :, own].clone() for v in values],
            )
            if prefix != root_key:
                self._kv.store(prefix, segment)
            chains.append([*(root or []), segment])
        return chains

    def _static_buffers(
        self, prefixes: list[Key], n: int, max_len: int, into: DecodeStep | None = None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-layer KV buffers ``(len(prefixes) * n, kv_heads, max_len, head_dim)`` holding
        each prefix's KV (``prefix[:-1]``) at indices ``0..len - 2`` of its ``n`` rows (the
        buffers of ``into``, zeroed first, if given: it may have more slots and indices)."""
        chains: list[list[Segment] | None] = [self._kv.chain(p) for p in prefixes]
        missing = [i for i, chain in enumerate(chains) if chain is None]
        self.prefix_tokens_reused += sum(
            len(p) - 1 for i, p in enumerate(prefixes) if i not in missing
        )
        if missing:
            computed = self._prefill_static([prefixes[i] for i in missing])
            for i, chain in zip(missing, computed, strict=True):
                chains[i] = chain
        if into is None:
            keys, values = new_kv_buffers(self.model, len(prefixes) * n, max_len)
        else:
            keys, values = into.keys, into.values
            for buffer in (*keys, *values):
                buffer.zero_()
        for i, chain in enumerate(chains):
            parts = [s for s in chain if s.length]  # type: ignore[union-attr]
            if not parts:
                continue
            rows = slice(i * n, (i + 1) * n)
            for layer in range(len(keys)):
                layer_keys = torch.cat([s.keys[layer] for s in parts], dim=1)  # (kv_heads, t, dim)
                keys[layer][rows, :, : layer_keys.shape[1]] = layer_keys
                values[layer][rows, :, : layer_keys.shape[1]] = torch.cat(
                    [s.values[layer] for s in parts], dim=1
                )
        return keys, values

    def _sample_chunk_static(
        self,
        prefixes: list[Key],
        n: int,
        settings: SamplingSettings,
        generator: torch.Generator,
    ) -> list[list[Continuation]]:
        device = self.model.device
        start = [len(p) - 1 for p in prefixes for _ in range(n)]  # per row: its first position
        keys, values = self._static_buffers(prefixes, n, max(start) + settings.max_tokens)
        grown = _Rows(self, prefixes, n, settings)
        inputs = torch.tensor([p[-1] for p in grown.owner], device=device)
        positions = torch.tensor(start, device=device)
        # batch[j]: the row in buffer slot j, or None once it finished (its slot is dropped at
        # the end of that step). The generator sees the live rows only, in order, exactly as
        # on the DynamicCache path, so both paths draw the same samples.
        batch: list[int | None] = list(range(len(start)))
        live = list(range(len(start)))
        for step in range(settings.max_tokens):
            length = max(start[batch[j]] for j in live) + step + 1  # type: ignore[index]
            logits = self._forward_static(inputs[:, None], positions[:, None], keys, values, length)
            logits = logits[:, 0].float()  # type: ignore[index]
            live_index = torch.tensor(live, device=device)
            if len(live) < len(batch):
                logits = logits[live_index]
            raw_logprobs = torch.log_softmax(logits, dim=-1)  # before temperature / top-p
            drawn = self._draw(logits, settings, generator)
            chosen = raw_logprobs.gather(1, drawn[:, None]).squeeze(1).tolist()
            for k, (j, token) in enumerate(zip(live, drawn.tolist(), strict=True)):
                row: int = batch[j]  # type: ignore[assignment]
                if grown.add(row, token, chosen[k]):
                    batch[j] = None
                    self._store_row(grown, row, keys, values, j, start[row])
            next_tokens = inputs.new_full((len(batch),), self.pad_id)  # finished slots: padding
            next_tokens[live_index] = drawn
            live = [j for j, row in enumerate(batch) if row is not None]
            if not live:
                break
            if len(live) < len(batch):  # drop finished slots (as the DynamicCache path does)
                index = torch.tensor(live, device=device)
                keys, values = (
                    compact_slots(keys, index, length),
                    compact_slots(values, index, length),
                )
                next_tokens, positions = next_tokens[index], positions[index]
                batch, live = [batch[j] for j in live], list(range(len(live)))
            inputs, positions = next_tokens, positions + 1
        return grown.continuations()

    def _decode_step(self, rows: int, max_len: int) -> DecodeStep:
        """A decode step with at least ``rows`` slots and ``max_len`` indices, reused across
        calls: slots round up to 16 and indices to 256, so that a few graphs serve a run."""
        shape = (-(-rows // 16) * 16, -(-max_len // 256) * 256)
        step = self._steps.pop(shape, None)
        if step is None:
            if len(self._steps) >= MAX_DECODE_GRAPHS:
                self._steps.popitem(last=False)
            step = DecodeStep(self.model, *shape, capture=self._capture)
        self._steps[shape] = step
        return step

    def _sample_chunk_graphed(
        self,
        prefixes: list[Key],
        n: int,
        settings: SamplingSettings,
        generator: torch.Generator,
    ) -> list[list[Continuation]]:
        """:meth:`_sample_chunk_static` in fixed slots: finished rows keep their slot (fed
        padding at a frozen position) instead of leaving the buffers, and attention reads all
        indices, so every step has one shape and replays one CUDA graph. The generator sees
        the live rows only, in order, as on the other paths: the same samples."""
        device = self.model.device
        start = [len(p) - 1 for p in prefixes for _ in range(n)]  # per row: its first position
        step = self._decode_step(len(start), max(start) + settings.max_tokens)
        keys, values = self._static_buffers(prefixes, n, step.max_len, into=step)
        grown = _Rows(self, prefixes, n, settings)
        slots = step.rows  # rows past len(start) are idle padding at position 0
        inputs = torch.full((slots,), self.pad_id, dtype=torch.long)
        inputs[: len(start)] = torch.tensor([p[-1] for p in grown.owner])
        positions = torch.zeros(slots, dtype=torch.long)
        positions[: len(start)] = torch.tensor(start)
        inputs, positions = inputs.to(device), positions.to(device)
        live = list(range(len(start)))  # slot j holds row j
        for _ in range(settings.max_tokens):
            logits = step.step(inputs, positions)
            live_index = torch.tensor(live, device=device)
            logits = logits[live_index].float()
            raw_logprobs = torch.log_softmax(logits, dim=-1)  # before temperature / top-p
            drawn = self._draw(logits, settings, generator)
            chosen = raw_logprobs.gather(1, drawn[:, None]).squeeze(1).tolist()
            still = []
            for k, (row, token) in enumerate(zip(live, drawn.tolist(), strict=True)):
                if grown.add(row, token, chosen[k]):
                    self._store_row(grown, row, keys, values, row, start[row])
                else:
                    still.append(k)
            if not still:
                break
            kept = live_index[torch.tensor(still, device=device)]
            live = [live[k] for k in still]
            inputs = inputs.new_full((slots,), self.pad_id).index_copy_(0, kept, drawn[still])
            positions = positions.index_add(0, kept, torch.ones_like(kept))
        return grown.continuations()

    # -- greedy decoding with prompt-lookup drafts ----------------------------------------

    _draft = staticmethod(prompt_lookup_draft)

    def _greedy_chunk_static(
        self,
        prefixes: list[Key],
        n: int,
        settings: SamplingSettings,
        generator: torch.Generator,
    ) -> list[list[Continuation]]:
        """Greedy decoding that verifies drafted tokens in the same forward pass.

        Each live row feeds its last token and up to ``draft_tokens`` guesses (:meth:`_draft`);
        the guesses that match the model's argmax are kept, plus the argmax after the last
        kept one. The tokens are those of one-token greedy decoding (up to float rounding of
        the wider matrix products) and so are the raw log-probs, read from the same logits.
        Rejected guesses leave stale KV past the row's position, masked until overwritten.
        """
        del generator  # greedy: nothing is drawn
        device = self.model.device
        start = [len(p) - 1 for p in prefixes for _ in range(n)]  # per row: its first position
        max_len = max(start) + settings.max_tokens + self.draft_tokens
        keys, values = self._static_buffers(prefixes, n, max_len)
        grown = _Rows(self, prefixes, n, settings)
        tokens = grown.tokens
        batch: list[int | None] = list(range(len(start)))  # the row in each slot; None: finished
        position = list(start)  # per slot: where its next fed token goes
        fed = [p[-1] for p in grown.owner]  # per slot: that token
        while True:
            live = [j for j, row in enumerate(batch) if row is not None]
            if not live:
                break
            per_row = min(self.draft_tokens, max(0, DRAFT_BUDGET - len(live)) // len(live))
            drafts = []
            for j in live:
                row: int = batch[j]  # type: ignore[assignment]
                room = settings.max_tokens - len(tokens[row]) - 1
                context = [*grown.owner[row], *tokens[row]]
                drafts.append(self._draft(context, min(per_row, room)))
            width = 1 + max(len(d) for d in drafts)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            ids[:, 0] = torch.tensor(fed)
            for j, draft in zip(live, drafts, strict=True):
                ids[j, 1 : 1 + len(draft)] = torch.tensor(draft, dtype=torch.long)
            positions = torch.tensor(position)[:, None] + torch.arange(width)
            length = max(position[j] for j in live) + width
            logits = self._forward_static(
                ids.to(device), positions.to(device), keys, values, length
            )
            logits = logits[torch.tensor(live, device=device)].float()  # type: ignore[index]
            best = logits.argmax(dim=-1)  # (live, width)
            raw = torch.log_softmax(logits, dim=-1).gather(-1, best[..., None])[..., 0]
            for j, draft, best_row, raw_row in zip(
                live, drafts, best.tolist(), raw.tolist(), strict=True
            ):
                row = batch[j]  # type: ignore[assignment]
                kept = 0
                while kept < len(draft) and draft[kept] == best_row[kept]:
                    kept += 1
                self.draft_tokens_proposed += len(draft)
                self.draft_tokens_accepted += kept
                for token, logprob in zip(best_row[: kept + 1], raw_row[: kept + 1], strict=True):
                    if grown.add(row, token, logprob):
                        batch[j] = None
                        self._store_row(grown, row, keys, values, j, start[row])
                        break
                position[j], fed[j] = start[row] + len(tokens[row]), tokens[row][-1]
            finished = sum(row is None for row in batch)
            if finished == len(batch):
                break
            if finished and finished * 8 >= len(batch):  # drop finished slots
                keep = [j for j, row in enumerate(batch) if row is not None]
                index = torch.tensor(keep, device=device)
                keys, values = (
                    compact_slots(keys, index, length),
                    compact_slots(values, index, length),
                )
                batch = [batch[j] for j in keep]
                position, fed = [position[j] for j in keep], [fed[j] for j in keep]
        return grown.continuations()

    def _store_row(
        self,
        grown: _Rows,
        row: int,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        slot: int,
        start: int,
    ) -> None:
        """Store a finished row's step for later expansions: its KV at indices ``start..start
        + len - 1`` of ``slot`` (the last prefix token and every new token but the last)."""
        if self.kv_cache_tokens <= 0:
            return
        parent, new_tokens = grown.owner[row], grown.tokens[row]
        fed = slice(start, start + len(new_tokens))
        self._kv.store(
            parent + tuple(new_tokens),
            Segment(
                parent,
                [key[slot, :, fed].clone() for key in keys],
                [value[slot, :, fed].clone() for value in values],
            ),
        )
