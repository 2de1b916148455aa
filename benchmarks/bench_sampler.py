"""Tree sampling vs flat sampling of the same number of complete solutions, per engine.

For each engine (transformers always; vLLM when importable, i.e. run from .venv-vllm):
(a) the SPPD tree sampler, (b) flat sampling of whole solutions (`generate` with
`num_return_sequences` for transformers, `SamplingParams(n=...)` for vLLM) with as many samples
per problem as the trees have complete paths on average. Same model (SmolLM2-135M-Instruct,
fp32, CPU), same problems, same temperature and token budget, in one process.
Prints one JSON line as its last line.

    .venv-vllm/bin/python benchmarks/bench_sampler.py --problems 16 --k 16 --passes-per-round 4
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from sppd_lib.config import SamplerConfig
from sppd_lib.data import load_problems
from sppd_lib.engines.transformers_engine import TransformersEngine
from sppd_lib.grading import extract_answer
from sppd_lib.models import load_model
from sppd_lib.prompts import has_final_answer, prompt_token_ids
from sppd_lib.sampler import sample_trees


def smollm2_config(k: int, problems: int, passes_per_round: int) -> SamplerConfig:
    """Tree settings under which SmolLM2-135M gets both right and wrong paths (those of
    tests/conftest.py ``smollm2_sampler_config``), with K and the batch chosen by the caller."""
    return SamplerConfig(
        k=k,
        c=2,
        temperature=0.7,
        max_step_tokens=96,
        max_total_tokens=320,
        answer_format="any",
        problems_per_batch=problems,
        passes_per_round=passes_per_round,
    )


def is_complete(text: str, finished_at_eos: bool, config: SamplerConfig) -> bool:
    """The flat counterpart of a complete tree path (same rule as the sampler)."""
    if has_final_answer(text):
        return True
    return config.answer_format == "any" and finished_at_eos and extract_answer(text) is not None


def run_tree(engine, tokenizer, problems, config) -> dict:
    started = time.perf_counter()
    trees = list(sample_trees(engine, tokenizer, problems, config, progress=False))
    seconds = time.perf_counter() - started
    stats = [t.stats() for t in trees]
    complete = sum(s.complete_paths for s in stats)
    tokens = sum(s.tokens_generated for s in stats)
    return {
        "seconds": seconds,
        "tokens": tokens,
        "complete_paths": complete,
        "flat_tokens_same_paths": sum(s.flat_tokens for s in stats),
        "correct_paths": sum(s.correct_paths for s in stats),
    }


def run_flat_transformers(model, tokenizer, prompts, per_problem, config) -> dict:
    started = time.perf_counter()
    tokens = complete = 0
    eos = tokenizer.eos_token_id
    for start in range(0, len(prompts), max(1, 64 // per_problem)):
        batch = prompts[start : start + max(1, 64 // per_problem)]
        inputs = tokenizer.pad({"input_ids": batch}, padding=True, return_tensors="pt")
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                do_sample=True,
                temperature=config.temperature,
                top_p=config.top_p,
                top_k=0,
                max_new_tokens=config.max_total_tokens,
                num_return_sequences=per_problem,
                pad_token_id=tokenizer.pad_token_id,
            )
        for row in output[:, inputs["input_ids"].shape[1] :].tolist():
            ended = eos in row
            row = row[: row.index(eos) + 1] if ended else row
            tokens += len(row)
            complete += is_complete(tokenizer.decode(row, skip_special_tokens=True), ended, config)
    return {"seconds": time.perf_counter() - started, "tokens": tokens, "complete_paths": complete}


def run_flat_vllm(engine, prompts, per_problem, config) -> dict:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(
        n=per_problem,
        temperature=config.temperature,
        top_p=config.top_p,
        max_tokens=config.max_total_tokens,
        seed=0,
    )
    started = time.perf_counter()
    outputs = engine.llm.generate(
        [TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False
    )
    seconds = time.perf_counter() - started
    samples = [s for o in outputs for s in o.outputs]
    complete = sum(is_complete(s.text, s.finish_reason == "stop", config) for s in samples)
    tokens = sum(len(s.token_ids) for s in samples)
    return {"seconds": seconds, "tokens": tokens, "complete_paths": complete}


def summarize(tree: dict, flat: dict) -> dict:
    def per_path(figures: dict, key: str) -> float:
        return figures[key] / figures["complete_paths"] if figures["complete_paths"] else math.nan

    tree_tokens, flat_tokens = per_path(tree, "tokens"), per_path(flat, "tokens")
    tree_seconds, flat_seconds = per_path(tree, "seconds"), per_path(flat, "seconds")
    return {
        "tree": {**tree, "tokens_per_s": tree["tokens"] / tree["seconds"]},
        "flat": {**flat, "tokens_per_s": flat["tokens"] / flat["seconds"]},
        "tokens_per_complete_path": {"tree": tree_tokens, "flat": flat_tokens},
        "token_ratio_tree_vs_flat": tree_tokens / flat_tokens,
        "seconds_per_complete_path": {"tree": tree_seconds, "flat": flat_seconds},
        "speedup_tree_vs_flat": flat_seconds / tree_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--passes-per-round", type=int, default=4)
    parser.add_argument("--engines", default="transformers,vllm")
    args = parser.parse_args()

    config = smollm2_config(args.k, args.problems, args.passes_per_round)
    problems = load_problems("arith", "train", limit=args.problems)
    model, tokenizer = load_model("smollm2-135m-instruct", device="cpu")
    prompts = [prompt_token_ids(tokenizer, p.question) for p in problems]
    figures: dict = {
        "problems": len(problems),
        "k": config.k,
        "c": config.c,
        "passes_per_round": config.passes_per_round,
    }

    engines = args.engines.split(",")
    if "transformers" in engines:
        engine = TransformersEngine(model, tokenizer)
        tree = run_tree(engine, tokenizer, problems, config)
        per_problem = max(1, round(tree["complete_paths"] / len(problems)))
        flat = run_flat_transformers(model, tokenizer, prompts, per_problem, config)
        figures["transformers"] = summarize(tree, flat)
        print("transformers:", json.dumps(figures["transformers"]))
        del engine
    if "vllm" in engines:
        try:
            from sppd_lib.engines.vllm_engine import VLLMEngine
        except ImportError:
            print("vllm is not installed here: run from .venv-vllm to include it")
        else:
            engine = VLLMEngine("smollm2-135m-instruct", max_model_len=2048)
            tree = run_tree(engine, tokenizer, problems, config)
            per_problem = max(1, round(tree["complete_paths"] / len(problems)))
            flat = run_flat_vllm(engine, prompts, per_problem, config)
            figures["vllm"] = summarize(tree, flat)
            print("vllm:", json.dumps(figures["vllm"]))
            engine.close()
    if "transformers" in figures and "vllm" in figures:
        figures["transformers_tree_tok_s_vs_vllm_flat_tok_s"] = (
            figures["transformers"]["tree"]["tokens_per_s"]
            / figures["vllm"]["flat"]["tokens_per_s"]
        )
        figures["vllm_tree_tok_s_vs_transformers_tree_tok_s"] = (
            figures["vllm"]["tree"]["tokens_per_s"]
            / figures["transformers"]["tree"]["tokens_per_s"]
        )
    print(json.dumps({"benchmark": "sampler", **figures}))


if __name__ == "__main__":
    main()
