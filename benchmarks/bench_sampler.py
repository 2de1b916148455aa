"""Tree sampling vs flat sampling of the same number of complete solutions, per engine.

For each engine (transformers always; vLLM when importable):
(a) the SPPD tree sampler under one or more tree settings (``--trees``; vLLM uses the
streaming driver, ``--sync`` adds its synchronous driver for comparison), (b) flat sampling of
whole solutions (`generate` with `num_return_sequences` for transformers, `SamplingParams(n=...)`
for vLLM) with as many samples per problem as the first tree setting has complete paths on
average. Same model (SmolLM2-135M-Instruct, fp32, CPU), same problems, temperature and token
budget, in one process. Every tokens/s is also given as a fraction of ``--tok-s-limit``, what
this CPU can generate at most for a 135M model (≈670 tok/s on the 2-core machine of
docs/results/benchmarks.md).
Prints one JSON line as its last line, with the load average before and after.

    .venv/bin/python benchmarks/bench_sampler.py --problems 16 --trees "k=16,ppr=4,c=2;k=32"
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import replace

import torch

from sppd_lib.config import EngineConfig, PairConfig, SamplerConfig
from sppd_lib.data import load_problems
from sppd_lib.engines.transformers_engine import TransformersEngine
from sppd_lib.grading import extract_answer
from sppd_lib.models import load_model
from sppd_lib.pairs import step_pairs, value_trees
from sppd_lib.prompts import has_final_answer, prompt_token_ids
from sppd_lib.sampler import sample_trees


def smollm2_config(
    problems: int,
    *,
    k: int = 16,
    passes_per_round: int = 4,
    c: int = 2,
    branch_surprisal: float | None = None,
):
    """Tree settings under which SmolLM2-135M gets both right and wrong paths (those of
    tests/conftest.py ``smollm2_sampler_config``), with K, c, passes per round, entropy-guided
    branching and the batch chosen by the caller."""
    return SamplerConfig(
        k=k,
        c=c,
        branch_surprisal=branch_surprisal,
        temperature=0.7,
        max_step_tokens=96,
        max_total_tokens=320,
        answer_format="any",
        problems_per_batch=problems,
        passes_per_round=passes_per_round,
    )


def parse_trees(spec: str, problems: int) -> list[SamplerConfig]:
    """``"k=16,ppr=4,c=2;k=32,ppr=8,c=2,bs=0.7"`` as sampler configs (missing keys: 16, 4,
    2, and no entropy-guided branching; ``bs`` is ``branch_surprisal``)."""
    configs = []
    for part in spec.split(";"):
        keys = dict(item.split("=") for item in part.split(",") if item)
        configs.append(
            smollm2_config(
                problems,
                k=int(keys.get("k", 16)),
                passes_per_round=int(keys.get("ppr", 4)),
                c=int(keys.get("c", 2)),
                branch_surprisal=float(keys["bs"]) if "bs" in keys else None,
            )
        )
    return configs


def is_complete(text: str, finished_at_eos: bool, config: SamplerConfig) -> bool:
    """The flat counterpart of a complete tree path (same rule as the sampler)."""
    if has_final_answer(text):
        return True
    return config.answer_format == "any" and finished_at_eos and extract_answer(text) is not None


PROGRESS = False


def run_tree(engine, tokenizer, problems, config, *, streaming=None) -> tuple[dict, list]:
    """Figures of one tree setting and its trees (as dicts, to compare runs)."""
    started = time.perf_counter()
    trees = list(
        sample_trees(engine, tokenizer, problems, config, progress=PROGRESS, streaming=streaming)
    )
    seconds = time.perf_counter() - started
    stats = [t.stats() for t in trees]
    distinct = [
        len({extract_answer(t.path_text(leaf.id)) for leaf in t.complete_leaves()} - {None})
        for t in trees
    ]
    # The demo's pair rule (Monte-Carlo values, gap > 0.5): the training signal a tree gives.
    pairs = [len(step_pairs(tree, PairConfig())[0]) for tree in value_trees(trees, PairConfig())]
    figures = {
        "k": config.k,
        "passes_per_round": config.passes_per_round,
        "c": config.c,
        "branch_surprisal": config.branch_surprisal,
        "seconds": seconds,
        "tokens": sum(s.tokens_generated for s in stats),
        "complete_paths": sum(s.complete_paths for s in stats),
        "flat_tokens_same_paths": sum(s.flat_tokens for s in stats),
        "correct_paths": sum(s.correct_paths for s in stats),
        "distinct_answers_per_tree": sum(distinct) / len(trees),
        "pairs_per_tree": sum(pairs) / len(trees),
    }
    return figures, [t.to_dict() for t in trees]


def flat_figures(seconds: float, texts: list[list[tuple[str, bool, int]]], config) -> dict:
    """``texts[problem]`` = (text, ended at EOS, tokens) per sample."""
    complete = [[t for t, eos, _ in samples if is_complete(t, eos, config)] for samples in texts]
    distinct = [len({extract_answer(t) for t in samples} - {None}) for samples in complete]
    return {
        "seconds": seconds,
        "tokens": sum(n for samples in texts for _, _, n in samples),
        "complete_paths": sum(map(len, complete)),
        "distinct_answers_per_problem": sum(distinct) / len(texts),
    }


def run_flat_transformers(model, tokenizer, prompts, per_problem, config) -> dict:
    started = time.perf_counter()
    eos = tokenizer.eos_token_id
    texts = []
    step = max(1, 64 // per_problem)
    for start in range(0, len(prompts), step):
        batch = prompts[start : start + step]
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
        rows = output[:, inputs["input_ids"].shape[1] :].tolist()
        for p in range(len(batch)):
            samples = []
            for row in rows[p * per_problem : (p + 1) * per_problem]:
                ended = eos in row
                row = row[: row.index(eos) + 1] if ended else row
                samples.append((tokenizer.decode(row, skip_special_tokens=True), ended, len(row)))
            texts.append(samples)
    return flat_figures(time.perf_counter() - started, texts, config)


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
    texts = [
        [(s.text, s.finish_reason == "stop", len(s.token_ids)) for s in o.outputs] for o in outputs
    ]
    return flat_figures(seconds, texts, config)


def per_path(figures: dict, key: str) -> float:
    return figures[key] / figures["complete_paths"] if figures["complete_paths"] else math.nan


def with_rates(figures: dict, limit: float) -> dict:
    tok_s = figures["tokens"] / figures["seconds"]
    return {
        **figures,
        "tokens_per_complete_path": per_path(figures, "tokens"),
        "seconds_per_complete_path": per_path(figures, "seconds"),
        "tokens_per_s": tok_s,
        "tok_s_fraction_of_limit": tok_s / limit,
    }


def compare(trees: list[dict], flat: dict, limit: float) -> dict:
    """The first tree setting against flat sampling; every setting listed."""
    flat = with_rates(flat, limit)
    trees = [with_rates(t, limit) for t in trees]
    for tree in trees:
        tree["token_ratio_vs_flat"] = (
            tree["tokens_per_complete_path"] / flat["tokens_per_complete_path"]
        )
        tree["speedup_vs_flat"] = (
            flat["seconds_per_complete_path"] / tree["seconds_per_complete_path"]
        )
    main = trees[0]
    return {
        "trees": trees,
        "flat": flat,
        "token_ratio_tree_vs_flat": main["token_ratio_vs_flat"],
        "speedup_tree_vs_flat": main["speedup_vs_flat"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument(
        "--trees",
        default="k=16,ppr=4,c=2",
        help="tree settings, ';'-separated (the first is compared with flat sampling)",
    )
    parser.add_argument("--engines", default="transformers,vllm")
    parser.add_argument(
        "--block-size",
        type=int,
        default=EngineConfig().block_size,
        help="vLLM KV block size (default: the vllm config's; 0: vLLM's own default)",
    )
    parser.add_argument("--sync", action="store_true", help="vLLM: also the synchronous driver")
    parser.add_argument(
        "--repeat", action="store_true", help="vLLM: sample the first setting twice, compare"
    )
    parser.add_argument("--tok-s-limit", type=float, default=670.0)
    parser.add_argument("--progress", action="store_true", help="progress bars on stderr")
    args = parser.parse_args()
    global PROGRESS
    PROGRESS = args.progress

    problems = load_problems("arith", "train", limit=args.problems)
    configs = parse_trees(args.trees, len(problems))
    first = configs[0]
    model, tokenizer = load_model("smollm2-135m-instruct", device="cpu")
    prompts = [prompt_token_ids(tokenizer, p.question) for p in problems]
    figures: dict = {"problems": len(problems), "load_before": os.getloadavg()}

    engines = args.engines.split(",")
    if "transformers" in engines:
        engine = TransformersEngine(model, tokenizer)
        trees = [run_tree(engine, tokenizer, problems, c)[0] for c in configs]
        per_problem = max(1, round(trees[0]["complete_paths"] / len(problems)))
        flat = run_flat_transformers(model, tokenizer, prompts, per_problem, first)
        figures["transformers"] = compare(trees, flat, args.tok_s_limit)
        print("transformers:", json.dumps(figures["transformers"]), flush=True)
        del engine
    if "vllm" in engines:
        try:
            from sppd_lib.engines.vllm_engine import VLLMEngine
        except ImportError:
            print("vllm is not installed here (make setup installs it): transformers only")
        else:
            engine = VLLMEngine(
                "smollm2-135m-instruct", max_model_len=2048, block_size=args.block_size or None
            )
            figures["vllm_block_size"] = engine.llm.llm_engine.vllm_config.cache_config.block_size
            figures["vllm_omp_threads_bind"] = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
            # Warm-up (the first requests pay for compilation and caches): not timed.
            warm = load_problems("arith", "test", limit=2)
            run_tree(engine, tokenizer, warm, replace(first, k=4, problems_per_batch=2))
            results = [run_tree(engine, tokenizer, problems, c) for c in configs]
            trees = [r[0] for r in results]
            per_problem = max(1, round(trees[0]["complete_paths"] / len(problems)))
            flat = run_flat_vllm(engine, prompts, per_problem, first)
            figures["vllm"] = compare(trees, flat, args.tok_s_limit)
            if args.sync:
                sync, _ = run_tree(engine, tokenizer, problems, first, streaming=False)
                figures["vllm"]["sync_tree"] = with_rates(sync, args.tok_s_limit)
            if args.repeat:
                _, again = run_tree(engine, tokenizer, problems, first)
                same = [a == b for a, b in zip(results[0][1], again, strict=True)]
                figures["vllm"]["repeat_identical_trees"] = f"{sum(same)}/{len(same)}"
            print("vllm:", json.dumps(figures["vllm"]), flush=True)
            engine.close()
    if "transformers" in figures and "vllm" in figures:
        figures["transformers_tree_tok_s_vs_vllm_flat_tok_s"] = (
            figures["transformers"]["trees"][0]["tokens_per_s"]
            / figures["vllm"]["flat"]["tokens_per_s"]
        )
    figures["load_after"] = os.getloadavg()
    print(json.dumps({"benchmark": "sampler", **figures}))


if __name__ == "__main__":
    main()
