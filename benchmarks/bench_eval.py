"""Greedy evaluation per engine on the demo's held-out arithmetic prompts, in one process.

Engines: HF ``generate`` (:class:`GenerateEngine`, the baseline), the transformers step engine
(:class:`TransformersEngine`, temperature 0; ``transformers-dynamic`` forces its
``DynamicCache`` path, the engine before the static KV buffers; ``transformers-eager`` its static
path without CUDA graphs, what ``transformers`` is on a CPU) and, when vLLM is importable,
the vLLM engine (its start-up timed separately): ``vllm`` gets every prompt in one call, as the
loop's greedy evaluation does, ``vllm-batched`` one call per batch, as before (one engine,
prefix cache emptied before each). All decode the same prompts of ``configs/demo.yaml``'s
``eval`` section (SmolLM2-135M-Instruct, fp32, CPU) with the demo's ``max_new_tokens`` and
batch size. Prints one JSON line as its last line: seconds, generated tokens/s, pass@1, the
share of responses identical to the first engine's and the load average at the start. Tokens/s
are also given as a fraction of a limit: on a CPU ``of_cpu_limit``, of this 2-core CPU's ≈670
tok/s for a 135M model in fp32; on CUDA ``of_bandwidth_limit``, of ``batch_size`` tokens per
time to stream the weights once at ``--bandwidth-tb-s`` (default 4.8 TB/s, an H200's HBM3e);
KV reads are left out, so the true limit is lower and the fraction an underestimate.

    .venv/bin/python benchmarks/bench_eval.py --prompts 200
    .venv/bin/python benchmarks/bench_eval.py --engines vllm-batched,vllm
    python benchmarks/bench_eval.py --prompts 40 --engines transformers-eager,transformers  # GPU
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


def bandwidth_limit(model: torch.nn.Module, batch_size: int, tb_per_s: float) -> float:
    """Tokens/s if every decode step of ``batch_size`` rows only streamed the weights once."""
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return batch_size * tb_per_s * 1e12 / weight_bytes


def measure(
    name: str, engine, tokenizer, problems, config, limit: tuple[str, float]
) -> tuple[dict, list[str]]:
    """Evaluate greedily; ``limit`` is ``(label, tokens/s)`` the speed is a fraction of."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    rows = evaluate_problems(None, tokenizer, problems, config, engine=engine, progress=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    tokens = int(rows["num_tokens"].sum())
    line = {
        "seconds": round(seconds, 2),
        "tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 1),
        limit[0]: round(tokens / seconds / limit[1], 4),
        "pass_at_1": round(float(rows["correct"].mean()), 4),
    }
    print(name, line, flush=True)
    return line, list(rows["response"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--prompts", type=int, default=200, help="held-out arith prompts")
    parser.add_argument("--engines", default="generate,transformers,vllm")
    parser.add_argument("--model", default=None, help="instead of the config's model")
    parser.add_argument(
        "--bandwidth-tb-s",
        type=float,
        default=4.8,
        help="the GPU's memory bandwidth in TB/s for of_bandwidth_limit (H200: 4.8)",
    )
    args = parser.parse_args()
    if args.prompts < 1 or args.bandwidth_tb_s <= 0:
        parser.error("--prompts and --bandwidth-tb-s must be positive")
    torch.manual_seed(0)
    run = load_config(RunConfig, args.config)
    config = run.eval
    config.limits = {**config.limits, "arith": args.prompts}
    problems = benchmark_problems(config, "arith")
    model, tokenizer = load_model(args.model or run.model)
    on_cuda = model.device.type == "cuda"
    if on_cuda:
        limit = (
            "of_bandwidth_limit",
            bandwidth_limit(model, config.batch_size, args.bandwidth_tb_s),
        )
    else:
        limit = ("of_cpu_limit", CPU_LIMIT_TOKENS_PER_SECOND)
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
        "device": torch.cuda.get_device_name() if on_cuda else "cpu",
        "dtype": str(model.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
    }
    if on_cuda:
        result["assumed_bandwidth_tb_s"] = args.bandwidth_tb_s
        result["bandwidth_limit_tokens_per_s"] = round(limit[1])
    responses: dict[str, list[str]] = {}
    vllm = None
    for name in engines:
        if name == "generate":
            engine = GenerateEngine(model, tokenizer, batch_size=config.batch_size, progress=False)
        elif name == "transformers":
            engine = TransformersEngine(model, tokenizer, max_batch_rows=config.batch_size)
        elif name == "transformers-eager":
            engine = TransformersEngine(
                model, tokenizer, max_batch_rows=config.batch_size, decode_graphs=False
            )
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
        result[name], responses[name] = measure(name, engine, tokenizer, problems, config, limit)
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
