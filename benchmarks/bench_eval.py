"""Greedy evaluation per engine on the demo's held-out arithmetic prompts, in one process.

Engines: HF ``generate`` (:class:`GenerateEngine`, the baseline), the transformers step engine
(:class:`TransformersEngine`, temperature 0; ``transformers-dynamic`` forces its
``DynamicCache`` path, the engine before the static KV buffers) and, when vLLM is importable,
the vLLM engine (its start-up timed separately): ``vllm`` gets every prompt in one call, as the
loop's greedy evaluation does, ``vllm-batched`` one call per batch, as before (one engine,
prefix cache emptied before each). All decode the same prompts of ``configs/demo.yaml``'s
``eval`` section (SmolLM2-135M-Instruct, fp32, CPU) with the demo's ``max_new_tokens`` and
batch size. Prints one JSON line as its last line: seconds, generated tokens/s (also as a
fraction of this CPU's ≈670 tok/s limit for a 135M model in fp32), pass@1, the share of
responses identical to the first engine's and the load average at the start.

    .venv/bin/python benchmarks/bench_eval.py --prompts 200
    .venv/bin/python benchmarks/bench_eval.py --engines vllm-batched,vllm
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time

import torch

from sppd_lib.config import RunConfig, load_config
from sppd_lib.engines.generate import GenerateEngine
from sppd_lib.engines.transformers_engine import TransformersEngine
from sppd_lib.evaluate import benchmark_problems, evaluate_problems
from sppd_lib.models import load_model

#: Generated tokens/s a 135M fp32 model can reach on this 2-core CPU (180 GFLOP/s measured).
CPU_LIMIT_TOKENS_PER_SECOND = 670.0


def measure(name: str, engine, tokenizer, problems, config) -> tuple[dict, list[str]]:
    started = time.perf_counter()
    rows = evaluate_problems(None, tokenizer, problems, config, engine=engine, progress=False)
    seconds = time.perf_counter() - started
    tokens = int(rows["num_tokens"].sum())
    line = {
        "seconds": round(seconds, 1),
        "tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 1),
        "of_cpu_limit": round(tokens / seconds / CPU_LIMIT_TOKENS_PER_SECOND, 3),
        "pass_at_1": round(float(rows["correct"].mean()), 4),
    }
    print(name, line, flush=True)
    return line, list(rows["response"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--prompts", type=int, default=200, help="held-out arith prompts")
    parser.add_argument("--engines", default="generate,transformers,vllm")
    args = parser.parse_args()
    torch.manual_seed(0)
    run = load_config(RunConfig, args.config)
    config = run.eval
    config.limits = {**config.limits, "arith": args.prompts}
    problems = benchmark_problems(config, "arith")
    model, tokenizer = load_model(run.model)
    engines = args.engines.split(",")
    if importlib.util.find_spec("vllm") is None:
        engines = [name for name in engines if not name.startswith("vllm")]
    if not engines:
        raise SystemExit("no engine to measure (vllm is not installed here)")
    result: dict = {
        "benchmark": "eval_greedy",
        "prompts": len(problems),
        "max_new_tokens": config.max_new_tokens,
        "batch_size": config.batch_size,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
    }
    responses: dict[str, list[str]] = {}
    vllm = None
    for name in engines:
        if name == "generate":
            engine = GenerateEngine(model, tokenizer, batch_size=config.batch_size, progress=False)
        elif name == "transformers":
            engine = TransformersEngine(model, tokenizer, max_batch_rows=config.batch_size)
        elif name == "transformers-dynamic":
            engine = TransformersEngine(
                model, tokenizer, max_batch_rows=config.batch_size, static_cache=False
            )
        else:  # vllm: all prompts in one call; vllm-batched: batch_size per call, as before
            if vllm is None:
                from sppd_lib.engines.vllm_engine import VLLMEngine

                started = time.perf_counter()
                vllm = VLLMEngine(run.model, max_model_len=2048)
                result["vllm_start_seconds"] = round(time.perf_counter() - started, 1)
            engine = vllm
            engine.schedules_own_batch = name == "vllm"
            engine.llm.reset_prefix_cache()  # each measurement from an empty cache
        result[name], responses[name] = measure(name, engine, tokenizer, problems, config)
    if vllm is not None:
        vllm.close()
    baseline = engines[0]
    for name in engines:
        same = sum(a == b for a, b in zip(responses[name], responses[baseline], strict=True))
        result[name]["same_response_as_" + baseline] = round(same / len(problems), 3)
        result[name]["speedup_vs_" + baseline] = round(
            result[baseline]["seconds"] / result[name]["seconds"], 2
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
