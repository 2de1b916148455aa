"""Greedy pass@1 evaluation: generate, extract, grade, and keep every response for regrading."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sppd_lib.config import EvalConfig
from sppd_lib.data import Problem, load_problems
from sppd_lib.grading import grade
from sppd_lib.models import eos_token_ids
from sppd_lib.prompts import build_prompt

__all__ = ["Generation", "accuracy_table", "evaluate", "evaluate_problems", "generate_greedy"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    """One generated response."""

    text: str
    num_tokens: int
    finish_reason: str  # "stop" (EOS) or "length" (ran out of max_new_tokens)


@torch.inference_mode()
def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 512,
    batch_size: int = 16,
    progress: bool = True,
) -> list[Generation]:
    """Greedy-decode each prompt (left-padded batches, similar lengths together)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tokenizer.padding_side = "left"
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    results: list[Generation | None] = [None] * len(prompts)
    eos_ids = set(eos_token_ids(model, tokenizer))
    bar = tqdm(total=len(prompts), desc="generate", unit="prompt", disable=not progress)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        inputs = tokenizer.pad(
            {"input_ids": [encoded[i] for i in batch]}, padding=True, return_tensors="pt"
        ).to(model.device)
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=sorted(eos_ids),
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
        for index, tokens in zip(batch, new_tokens, strict=True):
            stop = next((k for k, t in enumerate(tokens) if t in eos_ids), None)
            kept = tokens if stop is None else tokens[:stop]
            results[index] = Generation(
                text=tokenizer.decode(kept, skip_special_tokens=True),
                num_tokens=len(kept) + (stop is not None),
                finish_reason="length" if stop is None else "stop",
            )
        bar.update(len(batch))
    bar.close()
    return [r for r in results if r is not None]


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: EvalConfig,
    *,
    progress: bool = True,
) -> pd.DataFrame:
    """Greedy pass@1 on every benchmark of ``config``: one row per (benchmark, problem).

    Columns: benchmark, problem_id, question, gold, response, pred, correct, status,
    num_tokens, finish_reason, seconds (generation time of the benchmark, per problem).
    """
    frames = []
    for benchmark in config.benchmarks:
        options = {"seed": config.arith_seed} if benchmark == "arith" else {}
        problems = load_problems(benchmark, config.split, config.limit, **options)
        frames.append(evaluate_problems(model, tokenizer, problems, config, progress=progress))
        accuracy = frames[-1]["correct"].mean() if len(frames[-1]) else float("nan")
        logger.info("%s: pass@1 %.3f on %d problems", benchmark, accuracy, len(problems))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def evaluate_problems(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    config: EvalConfig,
    *,
    progress: bool = True,
) -> pd.DataFrame:
    prompts = [build_prompt(tokenizer, p.question, config.system_prompt) for p in problems]
    started = time.perf_counter()
    generations = generate_greedy(
        model,
        tokenizer,
        prompts,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        progress=progress,
    )
    seconds = (time.perf_counter() - started) / max(len(problems), 1)
    rows = []
    for problem, generation in zip(problems, generations, strict=True):
        result = grade(generation.text, problem.answer)
        rows.append(
            {
                "benchmark": problem.source,
                "problem_id": problem.id,
                "question": problem.question,
                "gold": problem.answer,
                "response": generation.text,
                "pred": result.pred,
                "correct": result.correct,
                "status": result.status,
                "num_tokens": generation.num_tokens,
                "finish_reason": generation.finish_reason,
                "seconds": seconds,
            }
        )
    return pd.DataFrame(rows)


def _wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    if total == 0:
        return (float("nan"), float("nan"))
    p = correct / total
    denominator = 1 + z**2 / total
    centre = (p + z**2 / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z**2 / (4 * total**2)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per benchmark: problems, correct, pass@1 with a 95% Wilson interval, unanswered share."""
    rows = []
    for benchmark, group in results.groupby("benchmark", sort=False):
        correct, total = int(group["correct"].sum()), len(group)
        low, high = _wilson_interval(correct, total)
        rows.append(
            {
                "benchmark": benchmark,
                "problems": total,
                "correct": correct,
                "pass@1": correct / total,
                "ci95_low": low,
                "ci95_high": high,
                "no_answer": float((group["status"] == "no_answer").mean()),
                "truncated": float((group["finish_reason"] == "length").mean()),
                "mean_tokens": float(group["num_tokens"].mean()),
            }
        )
    return pd.DataFrame(rows)
