"""Prompt-lookup drafts: free guesses of a greedy continuation, verified by the decoder."""

from __future__ import annotations

__all__ = ["DRAFT_BUDGET", "prompt_lookup_draft"]

#: Query tokens per step (rows plus drafted tokens) up to which greedy decoding drafts. A
#: decode step's cost is mostly streaming the weights while the batch is small (measured on
#: SmolLM2-135M, 2-core CPU: 2 rows x 9 tokens cost 1.1x 2 rows x 1 token; 40 rows cost 2.4x
#: 8 rows), so drafting pays while the batch is small, i.e. in the tail of long responses.
DRAFT_BUDGET = 32


def prompt_lookup_draft(context: list[int], limit: int) -> list[int]:
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
