"""Train on the step-pair export (``pairs.trl.parquet``) with TRL's ``DPOTrainer``.

Two things of TRL's ``DPOTrainer`` (checked against TRL 1.16.0, ``trl/trainer/dpo_trainer.py``)
would make a step pair teach the wrong thing or cost a reference pass:

* it appends EOS to every non-conversational ``chosen`` and ``rejected`` that does not end in
  it, so a pair of inner steps would teach the model to stop mid-solution. The export says
  which steps end the solution (``chosen_final`` / ``rejected_final``) and
  :class:`step collator <_StepPairCollator>` removes the EOS TRL appended after the others;
* it reads reference log-probs from ``ref_chosen_logps`` / ``ref_rejected_logps`` only with
  ``precompute_ref_log_probs=True``, and then computes them again. The export holds the
  sampler's (the SPPD reference); :func:`load_step_pairs` keeps them when TRL's tokenization
  reproduces the sampled tokens of every pair, and the trainer of :func:`step_dpo_trainer`
  uses them instead of its reference pass (else TRL computes them once, before training).

TRL is not a dependency of the workbench: it is imported here only when called
(``pip install trl``; the dev extra pins the version the test runs).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pandas as pd

__all__ = ["load_step_pairs", "step_dpo_trainer", "trl_completion_ids"]

logger = logging.getLogger(__name__)

REF_COLUMNS = ["ref_chosen_logps", "ref_rejected_logps"]


def _common_prefix(a: list[int], b: list[int]) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


def trl_completion_ids(tokenizer: Any, prompt: str, completions: list[str]) -> list[list[int]]:
    """The completion tokens TRL's ``DPOTrainer`` trains for ``prompt`` + each completion
    (non-conversational text): both tokenized whole, the completion starting where the
    tokenized prompt and every prompt + completion first differ."""
    prompt_ids = tokenizer(text=prompt)["input_ids"]
    full = [tokenizer(text=prompt + c)["input_ids"] for c in completions]
    start = min(_common_prefix(prompt_ids, ids) for ids in full)
    return [ids[start:] for ids in full]


def load_step_pairs(path: str | os.PathLike[str], tokenizer: Any) -> Any:
    """The export at ``path`` as a ``datasets.Dataset`` for :func:`step_dpo_trainer`.

    The reference log-prob columns are kept only when, for every pair, TRL's tokens of the
    chosen and rejected step (EOS appended after a final step) are the sampled tokens they
    were recorded for; otherwise they are dropped (TRL then computes them) and the count of
    pairs that retokenize differently is logged.
    """
    from datasets import Dataset

    frame = pd.read_parquet(path)
    eos = tokenizer.eos_token or ""
    mismatched = 0
    for row in frame.itertuples(index=False):
        texts = [
            _with_eos(row.chosen, row.chosen_final, eos),
            _with_eos(row.rejected, row.rejected_final, eos),
        ]
        chosen, rejected = trl_completion_ids(tokenizer, row.prompt, texts)
        if not row.chosen_final and chosen[-1:] == [tokenizer.eos_token_id]:
            chosen = chosen[:-1]
        sampled = (list(row.sampled_chosen_ids), list(row.sampled_rejected_ids))
        mismatched += (chosen, rejected) != sampled
    if mismatched:
        logger.warning(
            "%d of %d pairs retokenize differently from the sampled tokens: their stored "
            "reference log-probs do not apply, so TRL computes them before training",
            mismatched,
            len(frame),
        )
        frame = frame.drop(columns=REF_COLUMNS)
    return Dataset.from_pandas(frame.drop(columns=["sampled_chosen_ids", "sampled_rejected_ids"]))


def _with_eos(text: str, final: bool, eos: str) -> str:
    """What TRL tokenizes for a completion: EOS appended unless it ends in it (for a final
    step that is what we want; an inner step's EOS is removed by the collator)."""
    return text if text.endswith(eos) else text + eos


def step_dpo_trainer(
    model: Any, tokenizer: Any, path: str | os.PathLike[str], args: Any, **kwargs: Any
) -> Any:
    """A TRL ``DPOTrainer`` on the step pairs of ``path`` (a ``pairs.trl.parquet``).

    ``args`` is a ``trl.DPOConfig``; ``remove_unused_columns`` is set to ``False`` (the
    collator reads ``chosen_final`` / ``rejected_final``) and ``precompute_ref_log_probs``
    to ``True`` (the stored reference log-probs, or TRL's computed once). Other keyword
    arguments go to ``DPOTrainer`` (e.g. ``peft_config``).
    """
    from trl import DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    class _StepPairCollator(DataCollatorForPreference):
        """TRL's preference collator, without the EOS TRL appended after an inner step."""

        eos_token_id: int | None = None

        def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
            trimmed = []
            for example in examples:
                example = dict(example)
                for side in ("chosen", "rejected"):
                    ids = list(example[f"{side}_ids"])
                    if not example[f"{side}_final"] and ids[-1:] == [self.eos_token_id]:
                        example[f"{side}_ids"] = ids[:-1]
                trimmed.append(example)
            return super().torch_call(trimmed)

    class _StepDPOTrainer(DPOTrainer):
        """Takes the stored reference log-probs instead of computing them again."""

        def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int) -> Any:
            if set(REF_COLUMNS) <= set(dataset.column_names):
                return dataset
            return super()._precompute_ref_logps(dataset, name, batch_size)

    args.remove_unused_columns = False
    args.precompute_ref_log_probs = True
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    collator = _StepPairCollator(
        pad_token_id=pad_id,
        max_length=args.max_length,
        truncation_mode=args.truncation_mode,
        pad_to_multiple_of=args.pad_to_multiple_of,
    )
    collator.eos_token_id = tokenizer.eos_token_id
    return _StepDPOTrainer(
        model=model,
        args=args,
        train_dataset=load_step_pairs(path, tokenizer),
        processing_class=tokenizer,
        data_collator=collator,
        **kwargs,
    )
