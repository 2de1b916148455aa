"""Evaluation (as in arXiv 2502.13516): greedy pass@1 and, from N sampled responses per problem,
maj@N, vote@N and best@N; every response is kept with its answer and grade for regrading.

* pass@1: the greedy response's answer.
* maj@N: the answer given by most samples (equivalent forms such as ``0.5`` and ``1/2``
  count as one answer; samples without an answer do not vote).
* vote@N: the answer whose samples have the largest total weight (the paper's ORM_VOTE@N).
* best@N: the answer of the single highest-weighted sample that has one (ORM_MAX@N).

A sample's weight is the last-step score of a PRM (``EvalConfig.prm_model``) or, without one,
the policy's own confidence ``exp(mean token log-prob)``: a self-confidence weight, not a PRM.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sppd_lib.config import EvalConfig
from sppd_lib.data import DataError, Problem, load_problems, parse_data_spec
from sppd_lib.engines import (
    Engine,
    HasContextLength,
    SamplingSettings,
    sample_calls,
    schedules_own_batch,
)
from sppd_lib.engines.generate import GenerateEngine
from sppd_lib.grading import grade
from sppd_lib.prm import PRMScorer, load_scorer
from sppd_lib.prompts import (
    build_prompt,
    context_length,
    overlong_prompts,
    prompt_token_limit,
    split_steps,
)

__all__ = [
    "Generation",
    "evaluate",
    "evaluate_problems",
    "evaluate_samples",
    "generate_greedy",
    "generate_with_engine",
    "graded_row",
    "regrade",
    "sample_responses",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    """One generated response."""

    text: str
    num_tokens: int
    finish_reason: str  # "stop" (EOS) or "length" (ran out of max_new_tokens)
    #: Mean raw log-prob of the generated tokens (NaN where the generator does not report it).
    mean_logprob: float = math.nan


# ---------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------


def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 512,
    batch_size: int = 16,
    progress: bool = True,
) -> list[Generation]:
    """Greedy-decode each prompt with ``model.generate`` (:class:`GenerateEngine`:
    left-padded batches, similar lengths together)."""
    engine = GenerateEngine(model, tokenizer, batch_size=batch_size, progress=progress)
    # One call: the engine batches by length itself, as left-padded `generate` wants.
    return [g[0] for g in _greedy(engine, tokenizer, prompts, max_new_tokens, len(prompts))]


def _greedy(
    engine: Engine,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
    progress: bool = False,
) -> list[list[Generation]]:
    settings = SamplingSettings(max_tokens=max_new_tokens, temperature=0.0, top_p=1.0, stop=None)
    if schedules_own_batch(engine):  # vLLM: one call, no batch barriers
        batch_size = len(prompts)
    return generate_with_engine(
        engine, tokenizer, prompts, 1, settings, batch_size=max(batch_size, 1), progress=progress
    )


def generate_with_engine(
    engine: Engine,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    n: int,
    settings: SamplingSettings,
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> list[list[Generation]]:
    """``n`` complete responses per prompt through any :class:`~sppd_lib.engines.Engine`.

    ``settings.stop`` should be ``None`` (whole responses, not steps). Prompts go to the
    engine ``batch_size`` at a time; each call's seed is ``settings.seed`` plus the index of
    its first prompt, so different prompts never share a random stream and a rerun with the
    same seed and batch size draws the same responses. A pool of engines
    (:class:`~sppd_lib.engines.EnginePoolLike`) runs the calls at once, with the same results.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prefixes = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    results: list[list[Generation]] = []
    bar = tqdm(total=len(prompts), desc="generate", unit="prompt", disable=not progress)
    calls = [
        (
            prefixes[start : start + batch_size],
            n,
            SamplingSettings(
                max_tokens=settings.max_tokens,
                temperature=settings.temperature,
                top_p=settings.top_p,
                stop=settings.stop,
                seed=settings.seed + start,
            ),
        )
        for start in range(0, len(prefixes), batch_size)
    ]
    # One call after the other, or all at once on a pool of engines (same results).
    for (chunk, _, _), outputs in zip(calls, sample_calls(engine, calls), strict=True):
        for continuations in outputs:
            results.append(
                [
                    Generation(
                        text=c.text,
                        num_tokens=len(c.token_ids),  # the EOS counts, as in generate_greedy
                        finish_reason="length" if c.finish_reason == "length" else "stop",
                        mean_logprob=sum(c.logprobs) / len(c.logprobs) if c.logprobs else math.nan,
                    )
                    for c in continuations
                ]
            )
        bar.update(len(chunk))
    bar.close()
    return results


def benchmark_problems(config: EvalConfig, benchmark: str) -> list[Problem]:
    """The problems of one ``benchmarks`` entry: a name, or ``NAME=FILE.jsonl``."""
    name, path = parse_data_spec(benchmark)
    options = config.problem_options(name) if path is None else {}
    limit = config.limits.get(name, config.limit)
    return load_problems(name, config.split, limit, path=path, **options)


def check_prompt_lengths(
    problems: Sequence[Problem],
    tokenizer: PreTrainedTokenizerBase,
    config: EvalConfig,
    model: PreTrainedModel | None = None,
    engine: Engine | None = None,
) -> None:
    """Refuse a problem whose prompt leaves no room for ``max_new_tokens``, before any
    generation (a 10 MB question would otherwise ask the model for terabytes).

    Raises:
        DataError: naming the first such problem's id, its length and the limit.
    """
    if isinstance(engine, HasContextLength):
        context = engine.max_model_len
    else:
        context = context_length(tokenizer, model)
    limit = prompt_token_limit(config.max_prompt_tokens, context, config.max_new_tokens)
    prompts = [build_prompt(tokenizer, p.question, config.system_prompt) for p in problems]
    overlong = overlong_prompts(tokenizer, prompts, limit)
    if overlong:
        index, count = overlong[0]
        where = problems[index].meta.get("line")
        raise DataError(
            f"problem {problems[index].id!r}"
            + (f" (line {where})" if where else "")
            + f": its prompt has {count} tokens, more than max_prompt_tokens={limit}"
            + (
                f" (context {context} - max_new_tokens {config.max_new_tokens})"
                if config.max_prompt_tokens is None
                else ""
            )
            + (f"; {len(overlong) - 1} more problems are as long" if len(overlong) > 1 else "")
            + ": shorten or drop it, or raise max_prompt_tokens"
        )


# ---------------------------------------------------------------------------------------
# Greedy pass@1
# ---------------------------------------------------------------------------------------


def evaluate(
    model: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    config: EvalConfig,
    *,
    engine: Engine | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Greedy pass@1 on every benchmark of ``config``: one row per (benchmark, problem).

    Decodes with ``model.generate`` by default, or with ``engine`` (temperature 0, e.g. the
    vLLM engine; ``model`` may then be ``None``). An engine that schedules its own batch
    (vLLM) gets every benchmark's prompts in one call. Columns: benchmark, problem_id,
    question, gold, response, pred, correct, status, num_tokens, finish_reason, seconds
    (generation time per problem: of its benchmark, or of the one call).
    """
    problem_sets = [benchmark_problems(config, benchmark) for benchmark in config.benchmarks]
    check_prompt_lengths(
        [p for problems in problem_sets for p in problems], tokenizer, config, model, engine
    )
    if schedules_own_batch(engine):
        # Short arithmetic answers and long GSM8K ones share one batch, no tail per benchmark.
        every = [problem for problems in problem_sets for problem in problems]
        rows = evaluate_problems(model, tokenizer, every, config, engine=engine, progress=progress)
        ends = itertools.accumulate((len(problems) for problems in problem_sets), initial=0)
        frames = [
            rows.iloc[start:end].reset_index(drop=True) for start, end in itertools.pairwise(ends)
        ]
    else:
        frames = [
            evaluate_problems(model, tokenizer, problems, config, engine=engine, progress=progress)
            for problems in problem_sets
        ]
    for benchmark, frame in zip(config.benchmarks, frames, strict=True):
        accuracy = frame["correct"].mean() if len(frame) else float("nan")
        logger.info("%s: pass@1 %.3f on %d problems", benchmark, accuracy, len(frame))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def evaluate_problems(
    model: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    config: EvalConfig,
    *,
    engine: Engine | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Greedy pass@1 on ``problems``; the rows of :func:`evaluate`."""
    prompts = [build_prompt(tokenizer, p.question, config.system_prompt) for p in problems]
    started = time.perf_counter()
    if engine is not None:
        generations = _greedy(
            engine, tokenizer, prompts, config.max_new_tokens, config.batch_size, progress
        )
    elif model is not None:
        generations = [
            [g]
            for g in generate_greedy(
                model,
                tokenizer,
                prompts,
                max_new_tokens=config.max_new_tokens,
                batch_size=config.batch_size,
                progress=progress,
            )
        ]
    else:
        raise ValueError("evaluate needs a model or an engine")
    seconds = (time.perf_counter() - started) / max(len(problems), 1)
    rows = [
        graded_row(problem, generation[0], {"question": problem.question}, {"seconds": seconds})
        for problem, generation in zip(problems, generations, strict=True)
    ]
    return pd.DataFrame(rows)


def graded_row(
    problem: Problem,
    generation: Generation,
    head: dict[str, Any] | None = None,
    tail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One stored response: benchmark, problem_id, ``head``, gold, response, pred, correct,
    status, num_tokens, finish_reason, ``tail`` (greedy and sampled rows alike)."""
    result = grade(generation.text, problem.answer)
    return {
        "benchmark": problem.source,
        "problem_id": problem.id,
        **(head or {}),
        "gold": problem.answer,
        "response": generation.text,
        "pred": result.pred,
        "correct": result.correct,
        "status": result.status,
        "num_tokens": generation.num_tokens,
        "finish_reason": generation.finish_reason,
        **(tail or {}),
    }


# ---------------------------------------------------------------------------------------
# Sampled responses
# ---------------------------------------------------------------------------------------


def _prm_weights(scorer: PRMScorer, prompt: str, responses: Sequence[str]) -> list[float]:
    """The PRM's score of each response's last step (its judgement of the whole solution)."""
    paths = [split_steps(r) for r in responses]
    scored = iter(scorer.score(prompt, [p for p in paths if p]))
    # An empty response has no step to score: weight 0.
    return [next(scored)[-1] if path else 0.0 for path in paths]


def sample_responses(
    engine: Engine,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    config: EvalConfig,
    *,
    scorer: PRMScorer | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """``config.num_samples`` sampled responses per problem, graded and weighted.

    One row per (benchmark, problem_id, sample) with columns benchmark, problem_id, sample,
    gold, response, pred, correct, status, num_tokens, finish_reason, mean_logprob (mean raw
    token log-prob) and weight: the last-step score of ``scorer`` (or of a PRM loaded from
    ``config.prm_model``), else ``exp(mean_logprob)``, a self-confidence weight.
    """
    if config.num_samples < 1:
        raise ValueError(f"num_samples must be >= 1 to sample, got {config.num_samples}")
    scorer = scorer or load_scorer(config.prm_model)
    settings = SamplingSettings(
        max_tokens=config.max_new_tokens,
        temperature=config.sample_temperature,
        top_p=config.sample_top_p,
        stop=None,
        seed=config.seed,
    )
    prompts = [build_prompt(tokenizer, p.question, config.system_prompt) for p in problems]
    generations = generate_with_engine(
        engine,
        tokenizer,
        prompts,
        config.num_samples,
        settings,
        batch_size=config.batch_size,
        progress=progress,
    )
    rows = []
    for problem, prompt, samples in zip(problems, prompts, generations, strict=True):
        if scorer is not None:
            weights = _prm_weights(scorer, prompt, [g.text for g in samples])
        else:
            weights = [math.exp(g.mean_logprob) for g in samples]
        for index, (generation, weight) in enumerate(zip(samples, weights, strict=True)):
            tail = {"mean_logprob": generation.mean_logprob, "weight": float(weight)}
            rows.append(graded_row(problem, generation, {"sample": index}, tail))
    return pd.DataFrame(rows)


def evaluate_samples(
    engine: Engine,
    tokenizer: PreTrainedTokenizerBase,
    config: EvalConfig,
    *,
    scorer: PRMScorer | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """:func:`sample_responses` on every benchmark of ``config`` (the PRM is loaded once)."""
    problem_sets = [benchmark_problems(config, benchmark) for benchmark in config.benchmarks]
    check_prompt_lengths(
        [p for problems in problem_sets for p in problems], tokenizer, config, engine=engine
    )
    scorer = scorer or load_scorer(config.prm_model)
    frames = [
        sample_responses(engine, tokenizer, problems, config, scorer=scorer, progress=progress)
        for problems in problem_sets
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def regrade(results: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``results`` with pred, correct and status recomputed from response and gold.

    Works on greedy rows and sample rows alike; on unchanged grading code it reproduces the
    stored columns, so a grading fix can be applied to old runs without generating again.
    """
    grades = [grade(r, g) for r, g in zip(results["response"], results["gold"], strict=True)]
    out = results.copy()
    out["pred"] = [g.pred for g in grades]
    out["correct"] = [g.correct for g in grades]
    out["status"] = [g.status for g in grades]
    return out
