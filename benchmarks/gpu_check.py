"""The GPU check: what a CUDA machine shows about the project, in one run of at most 8 minutes.

Parts, each a subprocess with its own time limit (a slow part cannot eat the others' time),
run in the order ``eval, trees, tests, smoke, demo`` (the figures first):

1. ``tests``: the fast tests that touch CUDA (``-k cuda`` of ``tests/test_decode_graphs.py``:
   the CUDA-graph decode against the eager one, token for token; the ``device=cuda`` start-up
   check).
2. ``smoke``: ``sppd run --config configs/smoke.yaml`` (the whole loop, tiny random models).
3. ``eval``: ``benchmarks/bench_eval.py`` on the demo's first 40 held-out prompts at batch 40,
   greedy, 192 new tokens: the static path without graphs, then with them (tokens/s, fraction of
   the memory-bandwidth limit, share of identical responses).
4. ``trees``: tree sampling of the demo's 40 training prompts of iteration 1 (its sampler
   settings) on the transformers engine: seconds.
5. ``demo``: ``sppd run --config configs/demo.yaml`` on the transformers engine, reduced to one
   iteration and stopped at its time limit (the record says how far it got).

Prints one JSON line as its last line and writes it to ``--out`` when given. Goals on an H200
(issue 25): greedy >= 5,000 tok/s at batch 40, the 40 trees in <= 10 s.

    python benchmarks/gpu_check.py --out /tmp/gpu_check.json
    python benchmarks/gpu_check.py --device cpu --model tiny-llama --prompts 4   # a dry run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Seconds per part unless set with ``--limit PART=SECONDS``; together under 8 minutes. Run
#: in this order: the figures first, so that a machine taken back early still gave them.
LIMITS = {"eval": 120, "trees": 90, "tests": 75, "smoke": 60, "demo": 120}
GOALS = {"greedy_tokens_per_s": 5000.0, "trees_seconds": 10.0}
CUDA_TESTS = [
    "tests/test_decode_graphs.py",
    "tests/test_reliability.py::test_5_cuda_without_a_gpu_fails_at_start",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run of the script"
    )
    parser.add_argument("--model", default=None, help="instead of the demo's SmolLM2-135M")
    parser.add_argument("--prompts", type=int, default=40, help="eval prompts and trees")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for all parts")
    parser.add_argument(
        "--limit", action="append", default=[], help="PART=SECONDS, e.g. demo=60 (repeatable)"
    )
    parser.add_argument("--only", default=",".join(LIMITS), help="comma-separated parts")
    parser.add_argument("--bandwidth-tb-s", type=float, default=4.8, help="H200: 4.8")
    parser.add_argument("--part-trees", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    limits = dict(LIMITS)
    for item in args.limit:
        name, _, seconds = item.partition("=")
        if name not in LIMITS or not seconds.replace(".", "", 1).isdigit():
            parser.error(f"--limit takes PART=SECONDS with PART one of {', '.join(LIMITS)}")
        limits[name] = float(seconds)
    args.limits = limits
    args.parts = [p for p in args.only.split(",") if p]
    unknown = sorted(set(args.parts) - set(LIMITS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; parts: {', '.join(LIMITS)}")
    if args.prompts < 1 or args.budget <= 0:
        parser.error("--prompts and --budget must be positive")
    return args


def last_json(text: str) -> dict | None:
    """The last line of ``text`` that is a JSON object, if any."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def run_part(command: list[str], limit: float, env: dict[str, str] | None = None) -> dict:
    """Run ``command`` for at most ``limit`` seconds: exit code, seconds, its last JSON line
    (``result``) and the tail of its output; ``timed_out`` if it was stopped."""
    started = time.perf_counter()
    record: dict = {"command": " ".join(command), "limit_s": round(limit)}
    # Its own process group, so that stopping it also stops what it started.
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=limit)
        record["rc"], record["timed_out"] = process.returncode, False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        record["rc"], record["timed_out"] = None, True
    record["seconds"] = round(time.perf_counter() - started, 1)
    record["result"] = last_json(output)
    record["tail"] = [line[-300:] for line in output.strip().splitlines()[-6:]]
    return record


def trees_part(args: argparse.Namespace) -> None:
    """(In a subprocess.) Sample the demo's first iteration's trees; print one JSON line."""
    import torch

    from sppd_lib.config import RunConfig, load_config
    from sppd_lib.engines.transformers_engine import TransformersEngine
    from sppd_lib.loop import training_problems
    from sppd_lib.models import load_model
    from sppd_lib.sampler import sample_trees

    run = load_config(RunConfig, ROOT / "configs/demo.yaml")
    run.data.prompts_per_iteration = args.prompts
    problems = training_problems(run, 1)
    model, tokenizer = load_model(args.model or run.model, device=args.device)
    engine = TransformersEngine(model, tokenizer)
    started = time.perf_counter()
    trees = list(sample_trees(engine, tokenizer, problems, run.sampler, progress=False))
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    nodes = sum(len(tree.nodes) for tree in trees)
    tokens = sum(len(node.token_ids) for tree in trees for node in tree.nodes)
    print(
        json.dumps(
            {
                "trees": len(trees),
                "seconds": round(seconds, 2),
                "step_nodes": nodes,
                "tokens": tokens,
                "tokens_per_s": round(tokens / seconds, 1),
                "decode_graphs": engine.decode_graphs,
                "sampler": {"k": run.sampler.k, "c": run.sampler.c},
            }
        )
    )


def commands(args: argparse.Namespace, scratch: Path) -> dict[str, list[str]]:
    python = sys.executable
    model = ["--model", args.model] if args.model else []
    demo_set = ["--set", "engine=transformers", "--set", "iterations=1"]
    if args.model:
        demo_set += ["--set", f"model={args.model}"]
    return {
        "tests": [
            python,
            "-m",
            "pytest",
            *CUDA_TESTS,
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "cuda",
        ],
        "smoke": [
            python,
            "-m",
            "sppd_lib.cli",
            "run",
            "--config",
            "configs/smoke.yaml",
            "--run-dir",
            str(scratch / "smoke"),
            "--set",
            f"device={args.device}",
        ],
        "eval": [
            python,
            "benchmarks/bench_eval.py",
            "--config",
            "configs/demo.yaml",
            "--prompts",
            str(args.prompts),
            "--engines",
            "transformers-eager,transformers",
            "--bandwidth-tb-s",
            str(args.bandwidth_tb_s),
            *model,
        ],
        "trees": [
            python,
            __file__,
            "--part-trees",
            "--device",
            args.device,
            "--prompts",
            str(args.prompts),
            *model,
        ],
        "demo": [
            python,
            "-m",
            "sppd_lib.cli",
            "run",
            "--config",
            "configs/demo.yaml",
            "--run-dir",
            str(scratch / "demo"),
            "--set",
            f"device={args.device}",
            *demo_set,
        ],
    }


def goals(parts: dict) -> dict:
    """Each goal with what was measured (``None`` if that part gave no figure)."""
    eval_result = (parts.get("eval") or {}).get("result") or {}
    greedy = (eval_result.get("transformers") or {}).get("tokens_per_s")
    trees = ((parts.get("trees") or {}).get("result") or {}).get("seconds")
    return {
        "greedy_tokens_per_s": {
            "goal_at_least": GOALS["greedy_tokens_per_s"],
            "measured": greedy,
            "met": greedy is not None and greedy >= GOALS["greedy_tokens_per_s"],
        },
        "trees_seconds": {
            "goal_at_most": GOALS["trees_seconds"],
            "measured": trees,
            "met": trees is not None and trees <= GOALS["trees_seconds"],
        },
    }


def machine(device: str) -> dict:
    import torch
    import transformers

    info = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpus": os.cpu_count(),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30)
    return info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device here (torch.cuda.is_available() is False); "
            "use --device cpu for a dry run of the script",
            file=sys.stderr,
        )
        return 2
    if args.part_trees:
        trees_part(args)
        return 0
    started = time.perf_counter()
    summary: dict = {
        "benchmark": "gpu_check",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": args.device,
        "machine": machine(args.device),
        "prompts": args.prompts,
        "parts": {},
    }
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        planned = commands(args, Path(scratch))
        for name in args.parts:
            left = args.budget - (time.perf_counter() - started)
            if left < 5:
                summary["parts"][name] = {"skipped": "the budget was spent"}
                continue
            record = run_part(planned[name], min(args.limits[name], left), env)
            summary["parts"][name] = record
            print(name, json.dumps(record), flush=True)
    summary["goals"] = goals(summary["parts"])
    summary["seconds"] = round(time.perf_counter() - started, 1)
    line = json.dumps(summary)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
