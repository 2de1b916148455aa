"""Batches of (prefix, step) sequences for the trainer: shared-prefix packing or padding.

A preference pair is two sequences, ``prefix + chosen`` and ``prefix + rejected``; step pairs
of one tree also share most of their prefixes. Packing inserts every sequence of a batch into a
token trie and forwards the trie as ONE row: each token attends to its ancestors only (a block
attention mask) and sits at its depth (position ids), so it sees exactly the context it has in
its own sequence and every shared token is forwarded once. Logits are needed only at the
parents of step tokens, so only those rows of hidden states reach the LM head.

Both layouts give the same targets: ``target_tokens[i]`` is predicted by logit row
``target_logit_row[i]`` and belongs to sequence ``target_sequence[i]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Batch", "pack_sequences", "pad_sequences", "sequence_logps"]


@dataclass
class Batch:
    """Model inputs and loss targets of a batch of ``S`` sequences (``T`` step tokens).

    ``input_ids`` / ``position_ids``: ``(rows, length)``; ``attention_mask``: ``(1, 1, L, L)`` bool
    for a packed row or ``(rows, length)`` for padding; ``logit_positions``: ``(K,)`` flat indices
    into ``rows * length`` whose logits are needed; ``target_*``: ``(T,)``.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    logit_positions: torch.Tensor
    target_tokens: torch.Tensor
    target_logit_row: torch.Tensor
    target_sequence: torch.Tensor

    @property
    def tokens_forwarded(self) -> int:
        """Tokens the model runs on (padding included): the cost of the forward pass."""
        return int(self.input_ids.numel())


def _targets(
    step_token_positions: list[list[int]],
    step_tokens: Sequence[Sequence[int]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flatten per-sequence (predicting position, token) lists; dedupe predicting positions."""
    positions = sorted({p for per_sequence in step_token_positions for p in per_sequence})
    row_of = {p: i for i, p in enumerate(positions)}
    rows, tokens, sequences = [], [], []
    for s, (predictors, steps) in enumerate(zip(step_token_positions, step_tokens, strict=True)):
        rows.extend(row_of[p] for p in predictors)
        tokens.extend(steps)
        sequences.extend([s] * len(steps))
    as_long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    return as_long(positions), as_long(tokens), as_long(rows), as_long(sequences)


def pack_sequences(prefixes: Sequence[Sequence[int]], steps: Sequence[Sequence[int]]) -> Batch:
    """Pack ``prefix + step`` sequences into one trie row (see module docstring).

    Every prefix must be non-empty (the first step token needs a token to predict it from).
    """
    tokens: list[int] = []
    parents: list[int] = []
    depths: list[int] = []
    children: list[dict[int, int]] = [{}]  # children[0] belongs to the virtual root
    predictors: list[list[int]] = []
    for prefix, step in zip(prefixes, steps, strict=True):
        if not prefix:
            raise ValueError("every sequence needs a non-empty prefix (the prompt)")
        node, path = -1, []
        for token in [*prefix, *step]:
            child = children[node + 1].get(token)
            if child is None:
                child = len(tokens)
                children[node + 1][token] = child
                tokens.append(token)
                parents.append(node)
                depths.append(depths[node] + 1 if node >= 0 else 0)
                children.append({})
            node = child
            path.append(node)
        # Step token i (at path index len(prefix) + i) is predicted by the node before it.
        predictors.append(path[len(prefix) - 1 : len(path) - 1])
    length = len(tokens)
    mask = torch.zeros(length, length, dtype=torch.bool)
    for i, parent in enumerate(parents):  # parents come first: a row extends its parent's
        if parent >= 0:
            mask[i] = mask[parent]
        mask[i, i] = True
    positions, target_tokens, target_rows, target_sequences = _targets(predictors, steps)
    return Batch(
        input_ids=torch.tensor([tokens], dtype=torch.long),
        position_ids=torch.tensor([depths], dtype=torch.long),
        attention_mask=mask[None, None],
        logit_positions=positions,
        target_tokens=target_tokens,
        target_logit_row=target_rows,
        target_sequence=target_sequences,
    )


def pad_sequences(
    prefixes: Sequence[Sequence[int]], steps: Sequence[Sequence[int]], pad_id: int = 0
) -> Batch:
    """One right-padded row per ``prefix + step`` sequence, logits everywhere (the baseline)."""
    sequences = [[*prefix, *step] for prefix, step in zip(prefixes, steps, strict=True)]
    if any(not prefix for prefix in prefixes):
        raise ValueError("every sequence needs a non-empty prefix (the prompt)")
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    predictors = []
    for row, (sequence, prefix) in enumerate(zip(sequences, prefixes, strict=True)):
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
        attention_mask[row, : len(sequence)] = 1
        predictors.append([row * width + p for p in range(len(prefix) - 1, len(sequence) - 1)])
    positions, target_tokens, target_rows, target_sequences = _targets(predictors, steps)
    return Batch(
        input_ids=input_ids,
        position_ids=torch.arange(width).expand(len(sequences), width).clone(),
        attention_mask=attention_mask,
        logit_positions=positions,
        target_tokens=target_tokens,
        target_logit_row=target_rows,
        target_sequence=target_sequences,
    )


def sequence_logps(
    model: torch.nn.Module, batch: Batch, num_sequences: int, attention: str = "sdpa"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed step log-probs per sequence ``(S,)`` and per step token ``(T,)``.

    Packed rows pass the needed positions as ``logits_to_keep`` so the LM head (the largest
    matrix of a small model) runs on step tokens only; padded rows compute every logit.
    ``attention`` is the model's attention implementation (``config._attn_implementation``;
    the model may be wrapped, e.g. by DDP, so it is passed in).
    """
    packed = batch.attention_mask.dim() == 4
    attention_mask = batch.attention_mask
    if packed and attention == "eager":
        # Eager attention adds the mask to the scores; sdpa takes booleans.
        attention_mask = torch.zeros(attention_mask.shape, device=attention_mask.device)
        attention_mask = attention_mask.masked_fill(
            ~batch.attention_mask, torch.finfo(torch.float32).min
        )
    outputs = model(
        input_ids=batch.input_ids,
        attention_mask=attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=batch.logit_positions if packed else 0,
        use_cache=False,
    )
    logits = (  # (K, vocab)
        outputs.logits[0] if packed else outputs.logits.flatten(0, 1)[batch.logit_positions]
    )
    # log_softmax in fp32 (bf16 loses the small differences DPO depends on).
    logps = torch.log_softmax(logits.float(), dim=-1)
    token_logps = logps[batch.target_logit_row, batch.target_tokens]  # (T,)
    totals = token_logps.new_zeros(num_sequences).index_add(0, batch.target_sequence, token_logps)
    return totals, token_logps
