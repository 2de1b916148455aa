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
token. Sampling draws from one seeded ``torch.Generator``: the same calls with the same seed
give the same tokens.

Decoding has two paths with the same results (to float rounding):

* Llama-style models (Llama, Qwen2 without sliding windows) decode through :meth:`_forward_static`,
  which runs the model's own modules but keeps the KV in one preallocated buffer per layer
  ``(rows, kv_heads, max_len, head_dim)``, left-aligned so that a row's cache index is its
  position. A step writes one column per row; nothing is concatenated or re-padded, and HF's
  cache and mask machinery is skipped (profiled: ``DynamicCache`` concatenation, row
  selection and mask building were ~10% of a greedy evaluation). Finished rows leave the
  buffers at once (a copy of the KV written so far); greedy decoding waits until an eighth of
  the batch has finished (its steps are cheap per row; the copies are not).
  A call's prefixes that share a prefix (the system prompt) compute it once. Greedy calls
  also verify prompt-lookup drafts while the batch is small (:meth:`_greedy_chunk_static`):
  a step costs about the same for 2 rows as for 18 tokens, and the tail of a greedy
  evaluation batch is a few long, often repetitive, responses.
* Any other causal LM decodes through ``model(...)`` with a ``DynamicCache``; finished rows
  leave the batch at once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sppd_lib.engines import Continuation, FinishReason, SamplingSettings
from sppd_lib.models import eos_token_ids
from sppd_lib.prompts import context_length

__all__ = ["TransformersEngine"]

Key = tuple[int, ...]

#: Query tokens per step (rows plus drafted tokens) up to which greedy decoding drafts. A
#: decode step's cost is mostly streaming the weights while the batch is small (measured on
#: SmolLM2-135M, 2-core CPU: 2 rows x 9 tokens cost 1.1x 2 rows x 1 token; 40 rows cost 2.4x
#: 8 rows), so drafting pays while the batch is small, i.e. in the tail of long responses.
DRAFT_BUDGET = 32

#: Model types whose decoder layers :meth:`TransformersEngine._forward_static` reproduces.
STATIC_MODEL_TYPES = frozenset({"llama", "qwen2"})


def supports_static_cache(model: PreTrainedModel) -> bool:
    """Does ``model`` have the plain pre-norm Llama layer (no sliding window, no q/k norm)?"""
    config = model.config
    return (
        config.model_type in STATIC_MODEL_TYPES
        and not getattr(config, "use_sliding_window", False)
        and not hasattr(model.model.layers[0].self_attn, "q_norm")
    )


@dataclass
class _Segment:
    """KV of some tokens of a sequence, per layer ``(heads, tokens, head_dim)``."""

    parent: Key | None
    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        return self.keys[0].shape[1] if self.keys else 0


def _compact(buffers: list[torch.Tensor], index: torch.Tensor, length: int) -> list[torch.Tensor]:
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
        """
        self.model = model.eval()
        self.tokenizer = tokenizer
        #: Longest prompt plus generation, in tokens (prompt-length checks read it).
        self.max_model_len = context_length(tokenizer, model)
        self.max_batch_rows = max_batch_rows
        self.kv_cache_tokens = kv_cache_tokens
        supported = supports_static_cache(model)
        if static_cache and not supported:
            raise ValueError(f"no static-cache path for model type {model.config.model_type!r}")
        self.static_cache = supported if static_cache is None else static_cache
        self.draft_tokens = draft_tokens
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
        self.draft_tokens_proposed = 0
        self.draft_tokens_accepted = 0

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

    def _chains(self, prefixes: list[Key]) -> list[list[_Segment]]:
        """The stored segments covering every ``prefix[:-1]``; missing ones are prefilled."""
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
        """Run ``q`` tokens per row; logits ``(B, q, vocab)`` (``None`` if not ``logits``).

        ``input_ids`` and ``positions`` are ``(B, q)``; row ``b``'s token ``i`` is written to
        cache index ``positions[b, i]`` of ``keys[layer]`` / ``values[layer]`` ``(B, kv_heads,
        max_len, head_dim)`` and attends to indices ``0..positions[b, i]``. ``length`` is at
        least ``max(positions) + 1``: attention reads only that much of the buffers. Indices
        past a row's last written one may hold stale KV; they stay masked until overwritten.
        """
        base = self.model.model
        batch, width = input_ids.shape
        rows = torch.arange(batch, device=input_ids.device)[:, None]
        hidden = base.embed_tokens(input_ids)  # (B, q, hidden)
        cos, sin = base.rotary_emb(hidden, position_ids=positions)
        kv_heads = keys[0].shape[1]
        group = self.model.config.num_attention_heads // kv_heads
        visible = torch.arange(length, device=input_ids.device) <= positions[:, :, None]
        # (B, 1, group * q, length): SDPA's boolean mask for the grouped queries below (one
        # token: (B, 1, 1, length), the same for the whole group).
        visible = visible[:, None].repeat(1, 1, group, 1) if width > 1 else visible[:, None]
        for layer, block in enumerate(base.layers):
            attention = block.self_attn
            shape = (batch, width, -1, attention.head_dim)
            x = block.input_layernorm(hidden)
            query = attention.q_proj(x).view(shape).transpose(1, 2)  # (B, heads, q, dim)
            key = attention.k_proj(x).view(shape).transpose(1, 2)  # (B, kv_heads, q, dim)
            value = attention.v_proj(x).view(shape).transpose(1, 2)
            query, key = apply_rotary_pos_emb(query, key, cos, sin)
            keys[layer][rows, :, positions] = key.transpose(1, 2)  # (B, q, kv_heads, dim)
            values[layer][rows, :, positions] = value.transpose(1, 2)
            # The query heads of one KV head attend as one longer query (HF's pack_gqa): no
            # repeated KV, and SDPA's fused CPU kernel (enable_gqa with a mask is slower).
            out = F.scaled_dot_product_attention(
                query.reshape(batch, kv_heads, group * width, -1),
                keys[layer][:, :, :length],
                values[layer][:, :, :length],
                attn_mask=visible,
                scale=attention.scaling,
            )  # (B, kv_heads, group * q, dim)
            out = out.view(batch, -1, width, out.shape[-1]).transpose(1, 2)  # (B, q, heads, dim)
            hidden = hidden + attention.o_proj(out.reshape(batch, width, -1))
            hidden = hidden + block.mlp(block.post_attention_layernorm(hidden))
        return self.model.lm_head(base.norm(hidden)) if logits else None

    def _new_buffers(
        self, rows: int, max_len: int
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Zeroed per-layer KV buffers ``(rows, kv_heads, max_len, head_dim)``."""
        config = self.model.config
        attention = self.model.model.layers[0].self_attn
        shape = (rows, config.num_key_value_heads, max_len, attention.head_dim)
        weight = attention.k_proj.weight
        keys = [weight.new_zeros(shape) for _ in range(config.num_hidden_layers)]
        return keys, [torch.zeros_like(k) for k in keys]

    def _prefill_static(self, prefixes: list[Key]) -> list[list[_Segment]]:
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
        keys, values = self._new_buffers(len(prefixes), max(width, 1))
        root = self._chain(root_key) if root_key is not None else None
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
            segment = _Segment(
                None,
                [k[0, :, :shared].clone() for k in keys],
                [v[0, :, :shared].clone() for v in values],
            )
            self._store(root_key, segment)  # type: ignore[arg-type]
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
            segment = _Segment(
                root_key if shared else None,
                [k[row, :, own].clone() for k in keys],
                [v[row, :, own].clone() for v in values],
            )
            if prefix != root_key:
                self._store(prefix, segment)
            chains.append([*(root or []), segment])
        return chains

    def _static_buffers(
        self, prefixes: list[Key], n: int, max_len: int
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-layer KV buffers ``(len(prefixes) * n, kv_heads, max_len, head_dim)`` holding
        each prefix's KV (``prefix[:-1]``) at indices ``0..len - 2`` of its ``n`` rows."""
        chains: list[list[_Segment] | None] = [self._chain(p) for p in prefixes]
        missing = [i for i, chain in enumerate(chains) if chain is None]
        self.prefix_tokens_reused += sum(
            len(p) - 1 for i, p in enumerate(prefixes) if i not in missing
        )
        if missing:
            computed = self._prefill_static([prefixes[i] for i in missing])
            for i, chain in zip(missing, computed, strict=True):
                chains[i] = chain
        keys, values = self._new_buffers(len(prefixes) * n, max_len)
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
                keys, values = _compact(keys, index, length), _compact(values, index, length)
                next_tokens, positions = next_tokens[index], positions[index]
                batch, live = [batch[j] for j in live], list(range(len(live)))
            inputs, positions = next_tokens, positions + 1
        return grown.continuations()

    # -- greedy decoding with prompt-lookup drafts ----------------------------------------

    @staticmethod
    def _draft(context: list[int], limit: int) -> list[int]:
        """Up to ``limit`` tokens that followed the latest earlier occurrence of the context's
        last 3 (else 2) tokens: a free guess of the greedy continuation (prompt lookup)."""
        if limit <= 0:
            return []
        for size in (3, 2):
            if len(context) <= size:
                continue
            tail = context[-size:]
            for i in range(len(context) - size - 1, -1, -1):
                if context[i : i + size] == tail:
                    return context[i + size : i + size + limit]
        return []

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
                keys, values = _compact(keys, index, length), _compact(values, index, length)
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
        self._store(
            parent + tuple(new_tokens),
            _Segment(
                parent,
                [key[slot, :, fed].clone() for key in keys],
                [value[slot, :, fed].clone() for value in values],
            ),
        )
