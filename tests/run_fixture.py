"""A small run directory for the viz and report tests (until a real smoke run replaces it).

The trees are real: a tiny random Llama samples them with the SPPD tree sampler on four
arithmetic problems, and ``build_pairs`` values them and builds the pairs. A random model never
writes a final answer, so the fixture grades the leaves itself (a seeded coin per leaf) before
the value backup; everything after the trees (training logs, evaluations, summary) is
synthetic but follows the run-directory contract. Kept apart from the library on purpose.
"""

from __future__ import annotations

import functools
import json
import math
import random
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from sppd_lib.config import PairConfig, SamplerConfig
from sppd_lib.data import load_problems
from sppd_lib.engines.transformers_engine import TransformersEngine
from sppd_lib.files import write_parquet_atomic
from sppd_lib.metrics import SUMMARY_COLUMNS, wilson_interval
from sppd_lib.models import build_tiny_model
from sppd_lib.pairs import build_pairs, write_pairs
from sppd_lib.rundir import RunDir
from sppd_lib.sampler import sample_trees
from sppd_lib.tree import StepTree, write_trees

__all__ = ["fixture_runs", "make_run_dir", "smoke_runs"]

BENCHMARKS = ("arith", "gsm8k")
METRICS = ("pass@1", "maj@8", "vote@8", "best@8")
BETA = 0.1


def _grade_leaves(trees: list[StepTree], rng: random.Random) -> None:
    """Stand in for a model that answers: most leaves state an answer, right or wrong."""
    for tree in trees:
        for leaf in tree.leaves():
            draw = rng.random()
            if draw < 0.8:
                correct = draw < 0.4
                leaf.terminal, leaf.terminal_reason = True, "answer"
                leaf.correct = correct
                leaf.answer = tree.problem.answer if correct else str(rng.randint(-99, 99))


@functools.cache
def _engine() -> tuple[TransformersEngine, Any]:
    model, tokenizer = build_tiny_model("llama", seed=0)
    return TransformersEngine(model, tokenizer), tokenizer


def _sample(problems: list, seed: int) -> list[StepTree]:
    engine, tokenizer = _engine()
    config = SamplerConfig(
        k=12,
        c=2,
        max_step_tokens=6,
        max_depth=6,
        max_total_tokens=64,
        passes_per_round=4,
        seed=seed,
    )
    return list(sample_trees(engine, tokenizer, problems, config, progress=False))


def _train_log(phases: dict[str, int], rng: random.Random) -> list[dict[str, Any]]:
    rows = []
    for phase, steps in phases.items():
        for step in range(1, steps + 1):
            progress = step / steps
            preference = phase != "sft"
            reward_margin = BETA * (4 * progress + rng.gauss(0, 0.3)) if preference else None
            rows.append(
                {
                    "step": step,
                    "epoch": round(2 * progress, 3),
                    "phase": phase,
                    "loss": 0.69 * math.exp(-1.5 * progress) + abs(rng.gauss(0, 0.03)),
                    "reward_accuracy": min(1.0, 0.5 + 0.45 * progress) if preference else None,
                    "reward_margin": reward_margin,
                    "value_margin": 0.7 + rng.gauss(0, 0.05) if phase == "sppd" else None,
                    "chosen_reward": reward_margin / 2 if preference else None,
                    "rejected_reward": -reward_margin / 2 if preference else None,
                    "grad_norm": 2.0 * math.exp(-progress) + abs(rng.gauss(0, 0.2)),
                    "learning_rate": 1e-5 * 0.5 * (1 + math.cos(math.pi * progress)),
                }
            )
    return rows


def _pair_log(pairs: pd.DataFrame, steps: int, gamma: float, rng: random.Random) -> pd.DataFrame:
    rows = []
    for step in range(1, steps + 1):
        for index, pair in pairs.iterrows():
            reward_margin = BETA * (6 * step / steps + rng.gauss(0, 1.5))
            margin = gamma * float(pair["delta_value"])
            argument = reward_margin - margin
            rows.append(
                {
                    "step": step,
                    "phase": "sppd",
                    "pair_index": int(index),
                    "reward_margin": reward_margin,
                    "value_margin": margin,
                    "delta_value": float(pair["delta_value"]),
                    "loss": math.log1p(math.exp(-argument)),
                }
            )
    return pd.DataFrame(rows)


def _eval_rows(iteration: int, accuracy: float, rng: random.Random) -> pd.DataFrame:
    rows = []
    for benchmark in BENCHMARKS:
        for index in range(40):
            gold = str(rng.randint(-50, 50))
            correct = rng.random() < accuracy * (0.6 if benchmark == "gsm8k" else 1.0)
            pred = gold if correct else str(int(gold) + rng.randint(1, 9))
            rows.append(
                {
                    "benchmark": benchmark,
                    "problem_id": f"{benchmark}/test/{index}",
                    "question": f"Problem {index} of {benchmark} (iteration {iteration}).",
                    "gold": gold,
                    "response": f"Step 1: compute.\n\nThe answer is \\boxed{{{pred}}}.",
                    "pred": pred,
                    "correct": correct,
                    "status": "correct" if correct else "wrong",
                    "num_tokens": rng.randint(20, 200),
                    "finish_reason": "stop",
                }
            )
    return pd.DataFrame(rows)


def _summary_rows(iteration: int, evals: pd.DataFrame, rng: random.Random) -> list[list[Any]]:
    rows = []
    for benchmark, group in evals.groupby("benchmark", sort=False):
        n, greedy = len(group), int(group["correct"].sum())
        for offset, metric in enumerate(METRICS):
            correct = min(n, greedy + offset * rng.randint(0, 3))
            low, high = wilson_interval(correct, n)
            rows.append([iteration, benchmark, metric, correct / n, n, correct, low, high])
    return rows


def make_run_dir(
    path: str | Path,
    *,
    run_id: str = "fixture",
    seed: int = 0,
    gamma: float = 1.0,
    accuracy_gain: float = 0.08,
) -> Path:
    """Write a two-iteration run directory at ``path`` (about 5 s on 2 CPU cores).

    iter_0: evaluation of the starting model. iter_1: trees stored with their values,
    SFT + DPO + SPPD logs. iter_2: trees stored as sampled (no values), SPPD only, and
    eval_samples.parquet.
    """
    path = Path(path)
    rng = random.Random(seed)
    problems = load_problems("arith", "train", limit=4)
    pair_config = PairConfig(value="mc")
    config = {
        "run_id": run_id,
        "iterations": 2,
        "model": "tiny-llama",
        "sampler": {"k": 12, "c": 2, "max_step_tokens": 6, "max_depth": 6},
        "pairs": {"value": "mc", "threshold": 0.5},
        "train": {"beta": BETA, "learning_rate": 1e-5, "margin": "dynamic", "gamma": gamma},
    }
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    summary: list[list[Any]] = []
    for iteration in range(3):
        folder = path / f"iter_{iteration}"
        folder.mkdir(exist_ok=True)
        if iteration >= 1:
            trees = _sample(problems, seed=seed * 10 + iteration)
            _grade_leaves(trees, rng)
            unvalued = [StepTree.from_dict(t.to_dict()) for t in trees]
            pairs, _ = build_pairs(trees, pair_config)
            write_trees(folder / "trees.jsonl.gz", trees if iteration == 1 else unvalued)
            write_pairs(pairs, folder / "pairs.parquet")
            phases = {"sft": 8, "dpo": 8, "sppd": 16} if iteration == 1 else {"sppd": 16}
            (folder / "train").mkdir(exist_ok=True)
            log = "\n".join(json.dumps(row) for row in _train_log(phases, rng))
            (folder / "train" / "log.jsonl").write_text(log + "\n")
            write_parquet_atomic(
                _pair_log(pairs, phases["sppd"], gamma, rng), folder / "train" / "pair_log.parquet"
            )
        phase_dir = RunDir(path).iteration(iteration)
        for phase in (["sample", "pairs", "train_sppd"] if iteration >= 1 else []) + ["eval"]:
            phase_dir.record_phase_time({"phase": phase, "seconds": round(rng.uniform(1, 60), 2)})
        evals = _eval_rows(iteration, 0.25 + accuracy_gain * iteration, rng)
        write_parquet_atomic(evals, folder / "eval.parquet")
        summary.extend(_summary_rows(iteration, evals, rng))
    samples = pd.DataFrame(
        [
            {"benchmark": "arith", "problem_id": f"arith/test/{i}", "sample": s}
            | {"response": "…", "pred": str(s), "correct": s == 0, "weight": rng.random()}
            for i in range(4)
            for s in range(8)
        ]
    )
    write_parquet_atomic(samples, path / "iter_2" / "eval_samples.parquet")
    write_parquet_atomic(pd.DataFrame(summary, columns=SUMMARY_COLUMNS), RunDir(path).summary)
    return path


def fixture_runs(root: str | Path) -> tuple[Path, Path]:
    """Two runs under ``root``, made once (reused when present): ``fixture`` from
    :func:`make_run_dir` and ``step-dpo``, its copy with γ = 0 and lower scores."""
    import shutil

    root = Path(root)
    first, second = root / "fixture", root / "step-dpo"
    if not (first / "summary.parquet").is_file():
        make_run_dir(first)
    if not (second / "summary.parquet").is_file():
        shutil.copytree(first, second, dirs_exist_ok=True)
        config = yaml.safe_load((second / "config.yaml").read_text())
        config["run_id"], config["train"]["gamma"] = "step-dpo", 0.0
        (second / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        summary = pd.read_parquet(second / "summary.parquet")
        later = summary["iteration"] > 0
        summary.loc[later, "value"] = (summary.loc[later, "value"] - 0.05).clip(lower=0)
        write_parquet_atomic(summary, second / "summary.parquet")
    return first, second


def smoke_runs(root: str | Path) -> tuple[Path, Path]:
    """Two real runs of ``configs/smoke.yaml`` under ``root`` (the loop end to end on the tiny
    model): ``smoke`` (dynamic margin) and ``smoke-step-dpo`` (margin none); reused if present."""
    from sppd_lib.config import load_run_config
    from sppd_lib.loop import run

    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
    root = Path(root)
    variants = {"smoke": [], "smoke-step-dpo": ["train.margin=none"]}
    for run_id, settings in variants.items():
        if not (root / run_id / "final_model.txt").is_file():
            run(load_run_config(smoke, [f"run_id={run_id}", *settings]), root / run_id)
    return root / "smoke", root / "smoke-step-dpo"
