"""Static-KV decoding of Llama-style models: the model's own modules, our KV buffers.

Contract. :func:`forward_static` runs a Hugging Face ``LlamaForCausalLM`` or ``Qwen2ForCausalLM``
(no sliding window, no q/k norm: :func:`supports_static_cache`) through its own submodules
(``embed_tokens``, ``rotary_emb``, each layer's norms, projections and MLP, ``norm``,
``lm_head``) and ``apply_rotary_pos_emb``, but keeps the KV in one preallocated buffer per layer
``(rows, kv_heads, max_len, head_dim)``, left-aligned so that a row's cache index is its
position. It reproduces the logits of ``model(...)`` with a ``DynamicCache`` to float rounding
for transformers 5.17 to 5.19 (the versions this project has run: 5.17 on the GPU machine, 5.19
in the development venv). Proof: ``tests/test_sampler.py::
test_static_cache_path_matches_the_dynamic_cache_path`` (llama and qwen2, sampled and greedy,
token for token and log-probs to 1e-4) runs both paths on every test run; a transformers release
that changes the Llama layer (its attention scaling, rotary embedding or norms) fails it.

HF's cache and mask machinery is skipped (profiled: ``DynamicCache`` concatenation, row
selection and mask building were ~10% of a greedy evaluation on CPU).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

__all__ = [
    "STATIC_MODEL_TYPES",
    "DecodeStep",
    "forward_static",
    "new_kv_buffers",
    "supports_static_cache",
]

#: Model types whose decoder layers :func:`forward_static` reproduces.
STATIC_MODEL_TYPES = frozenset({"llama", "qwen2"})


def supports_static_cache(model: PreTrainedModel) -> bool:
    """Does ``model`` have the plain pre-norm Llama layer (no sliding window, no q/k norm)?"""
    config = model.config
    return (
        config.model_type in STATIC_MODEL_TYPES
        and not getattr(config, "use_sliding_window", False)
        and not hasattr(model.model.layers[0].self_attn, "q_norm")
    )


def new_kv_buffers(
    model: PreTrainedModel, rows: int, max_len: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Zeroed per-layer KV buffers ``(rows, kv_heads, max_len, head_dim)``."""
    config = model.config
    attention = model.model.layers[0].self_attn
    shape = (rows, config.num_key_value_heads, max_len, attention.head_dim)
    weight = attention.k_proj.weight
    keys = [weight.new_zeros(shape) for _ in range(config.num_hidden_layers)]
    return keys, [torch.zeros_like(k) for k in keys]


def forward_static(
    model: PreTrainedModel,
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
    Nothing here reads a tensor back to the host, so a CUDA graph can capture it.
    """
    base = model.model
    batch, width = input_ids.shape
    rows = torch.arange(batch, device=input_ids.device)[:, None]
    hidden = base.embed_tokens(input_ids)  # (B, q, hidden)
    cos, sin = base.rotary_emb(hidden, position_ids=positions)
    kv_heads = keys[0].shape[1]
    group = model.config.num_attention_heads // kv_heads
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
    return model.lm_head(base.norm(hidden)) if logits else None


class DecodeStep:
    """One-token decode steps of ``rows`` slots over fixed KV buffers, as one CUDA graph.

    The buffers ``(rows, kv_heads, max_len, head_dim)`` and the inputs live here, at fixed
    addresses, and attention always reads all ``max_len`` indices (masked past each row's
    position), so every step has the same shapes and one captured graph replays it: ~300
    kernel launches and their Python become one launch. With ``capture=False`` (any device;
    what CPU tests use) :meth:`step` runs :func:`forward_static` eagerly over the same buffers,
    so the slot bookkeeping around it is the same on both.
    """

    def __init__(self, model: PreTrainedModel, rows: int, max_len: int, capture: bool) -> None:
        device = model.lm_head.weight.device
        self.model, self.rows, self.max_len = model, rows, max_len
        self.keys, self.values = new_kv_buffers(model, rows, max_len)
        self.input_ids = torch.zeros((rows, 1), dtype=torch.long, device=device)
        self.positions = torch.zeros((rows, 1), dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        if capture:
            try:
                self._capture()
            except RuntimeError as exc:  # decode eagerly rather than not at all; say so
                self.graph = None
                warnings.warn(f"CUDA graph capture failed, decoding eagerly: {exc}", stacklevel=2)

    def _forward(self) -> torch.Tensor:
        logits = forward_static(
            self.model, self.input_ids, self.positions, self.keys, self.values, self.max_len
        )
        return logits[:, 0]  # type: ignore[index]

    def _capture(self) -> None:
        # Warm-up on a side stream first (lazy initialisation must not be captured).
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._forward()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._forward()  # (rows, vocab), rewritten by every replay

    def step(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Feed ``input_ids (rows,)`` at ``positions (rows,)``; logits ``(rows, vocab)``
        (on the graph path a view that the next step overwrites)."""
        self.input_ids[:, 0].copy_(input_ids)
        self.positions[:, 0].copy_(positions)
        if self.graph is None:
            return self._forward()
        self.graph.replay()
        return self.logits
