"""HF ``generate`` behind the engine protocol: greedy whole responses, as evaluation's pass@1
decodes them (measured faster here than the step engine, which is built for short tree
steps). Prompts of similar length share a left-padded batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sppd_lib.engines import Continuation, SamplingSettings
from sppd_lib.models import eos_token_ids

__all__ = ["GenerateEngine"]


class GenerateEngine:
    """Greedy decoding with ``model.generate``: ``n = 1``, temperature 0, no stop string.

    One :meth:`sample` call sorts its prefixes by length and decodes them ``batch_size`` at a
    time. A continuation that ended at EOS carries that EOS token (so its length counts it,
    as the other engines' do); ``logprobs`` is empty (``generate`` does not score greedily).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        batch_size: int = 16,
        progress: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.progress = batch_size, progress
        self.eos_ids = set(eos_token_ids(model, tokenizer))

    @torch.inference_mode()
    def sample(
        self, prefixes: Sequence[Sequence[int]], n: int, settings: SamplingSettings
    ) -> list[list[Continuation]]:
        if n != 1 or settings.temperature != 0 or settings.stop is not None:
            raise ValueError("GenerateEngine decodes greedily: n = 1, temperature 0, no stop")
        tokenizer = self.tokenizer
        tokenizer.padding_side = "left"
        order = sorted(range(len(prefixes)), key=lambda i: len(prefixes[i]))
        results: list[list[Continuation]] = [[] for _ in prefixes]
        bar = tqdm(total=len(prefixes), desc="generate", unit="prompt", disable=not self.progress)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            inputs = tokenizer.pad(
                {"input_ids": [list(prefixes[i]) for i in batch]}, padding=True, return_tensors="pt"
            ).to(self.model.device)
            output = self.model.generate(
                **inputs,
                max_new_tokens=settings.max_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=sorted(self.eos_ids),
            )
            new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
            for index, tokens in zip(batch, new_tokens, strict=True):
                results[index] = [self._continuation(tokens)]
            bar.update(len(batch))
        bar.close()
        return results

    def _continuation(self, tokens: list[int]) -> Continuation:
        stop = next((k for k, t in enumerate(tokens) if t in self.eos_ids), None)
        kept = tokens if stop is None else tokens[: stop + 1]
        text = self.tokenizer.decode(kept if stop is None else kept[:-1], skip_special_tokens=True)
        return Continuation(kept, text, [], "length" if stop is None else "eos")
