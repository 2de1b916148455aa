"""Step-pair training: our trainer (shared-prefix packing) vs TRL's ``DPOTrainer``, same pairs.

The pairs come from real SPPD step trees (SmolLM2-135M-Instruct, TransformersEngine, training
arithmetic): long shared prefixes, short steps. Every sibling couple of a tree (two children of
one node; the one with the higher Bellman value is "chosen", margin 0 so both sides optimise the
same DPO loss) is a candidate; at most ``--per-tree`` couples per tree are drawn, trees at random,
until ``--pairs``. All rows use the same model, LoRA (r 16, alpha 32, all-linear, same seed, so
the same initial adapter), β, batch size, optimiser, schedule, learning rate, one epoch, fp32 on
CPU, and the same batches in the same order (``sppd_lib.train_data.training_order``):

- ``ours``: ``sppd_lib.trainer.train`` with packing (each batch one token trie, logits only at
  step tokens), reference log-probs recorded by the sampler (no reference forward);
- ``ours_padded``: the same trainer and loss code with ``packing=False`` (right-padded rows,
  logits everywhere): isolates the gain of packing;
- ``trl``: ``trl.DPOTrainer`` on the same token ids (no re-tokenisation, no EOS appended), with
  the sampler's reference log-probs given as ``ref_chosen_logps`` / ``ref_rejected_logps``
  (``precompute_ref_log_probs=True`` whose precompute pass is replaced by those columns): no
  reference forward, the like-for-like baseline;
- ``trl_ref_forward``: TRL's default with a PEFT model: a no-grad reference forward (adapter
  disabled) of every batch;
- ``trl_compact_head``: ``trl`` with its LM head run on the completion positions only. TRL does
  that on CUDA/XPU (Triton) but scores every position on CPU; this row patches that one switch
  (``trl.trainer.utils._use_triton``, the tiles stay in torch) to show TRL as it would run on a GPU.

Each row runs in a fresh child process of this script (``--only``), so its peak RSS
(``ru_maxrss``) is its own. Times (wall and CPU) are of ``transformers.Trainer.train``, the same
wrapper for both trainers: no model load, no data preparation. Tokens forwarded count the
``input_ids`` of every forward of the backbone (policy and reference, padding included) through
a forward pre-hook. ``--resume FILE`` keeps each finished row in FILE and reuses it when the same
command runs again (for shared machines where a long run may be cut). Prints one JSON line as its
last line.

    .venv/bin/python benchmarks/bench_trainer.py --trees runs/bench/trees.jsonl.gz
    .venv/bin/python benchmarks/bench_trainer.py --quick        # tiny random model, ~2 minutes
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

ROWS = ("ours", "ours_padded", "trl", "trl_ref_forward", "trl_compact_head")
MODEL = "smollm2-135m-instruct"


# ---------------------------------------------------------------------------------------
# Pairs (parent process)
# ---------------------------------------------------------------------------------------


def sample(args: argparse.Namespace) -> list:
    """Step trees of the real model (or of the tiny random one with ``--quick``)."""
    from sppd_lib.config import SamplerConfig
    from sppd_lib.data import load_problems
    from sppd_lib.engines.transformers_engine import TransformersEngine
    from sppd_lib.models import build_tiny_model, load_model
    from sppd_lib.sampler import sample_trees

    if args.quick:
        model, tokenizer = build_tiny_model("llama", seed=0)
        config = SamplerConfig(k=12, c=2, max_step_tokens=12, max_depth=4, max_total_tokens=64)
    else:
        model, tokenizer = load_model(MODEL, device="cpu")
        from bench_sampler import smollm2_config  # benchmarks/ is on sys.path: run as a script

        config = smollm2_config(args.k, args.problems, passes_per_round=4)
    problems = load_problems("arith", "train", limit=args.problems)
    engine = TransformersEngine(model, tokenizer)
    return list(sample_trees(engine, tokenizer, problems, config, progress=False))


def sibling_pairs(trees: list, limit: int, per_tree: int, seed: int) -> pd.DataFrame:
    """At most ``per_tree`` sibling couples per tree, trees drawn at random, ``limit`` in all."""
    from sppd_lib.config import PairConfig
    from sppd_lib.pairs import value_trees

    rng = random.Random(seed)
    order = list(trees)
    rng.shuffle(order)
    rows: list[dict[str, Any]] = []
    for tree in order:
        tree = next(value_trees([tree], PairConfig(value="bellman")))
        couples = [
            (parent, *sorted(couple, key=lambda n: -(n.value or 0.0)))
            for parent in tree.nodes
            for couple in itertools.combinations(tree.children(parent.id), 2)
        ]
        for parent, win, lose in rng.sample(couples, min(per_tree, len(couples))):
            rows.append(
                {
                    "tree_id": tree.problem.id,
                    "prompt_ids": tree.prefix_ids(parent.id),
                    "chosen_ids": list(win.token_ids),
                    "rejected_ids": list(lose.token_ids),
                    "chosen_ref_logp": float(sum(win.logprobs)),
                    "rejected_ref_logp": float(sum(lose.logprobs)),
                    "margin": 0.0,
                    "delta_value": float((win.value or 0.0) - (lose.value or 0.0)),
                }
            )
        if len(rows) >= limit:
            break
    return pd.DataFrame(rows[:limit])


def pair_shape(pairs: pd.DataFrame) -> dict[str, Any]:
    prompt = pairs["prompt_ids"].map(len)
    steps = pd.concat([pairs["chosen_ids"].map(len), pairs["rejected_ids"].map(len)])
    return {
        "pairs": len(pairs),
        "trees": int(pairs["tree_id"].nunique()),
        "mean_prompt_tokens": round(float(prompt.mean()), 1),
        "mean_step_tokens": round(float(steps.mean()), 1),
        # prefix + chosen and prefix + rejected, unshared and unpadded
        "sequence_tokens_per_pair": round(float((2 * prompt).mean() + 2 * steps.mean()), 1),
    }


# ---------------------------------------------------------------------------------------
# One row (child process)
# ---------------------------------------------------------------------------------------


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def time_train_calls() -> dict[str, float]:
    """Wall and CPU (all threads) seconds of ``transformers.Trainer.train``, for both trainers."""
    from transformers import Trainer

    spent = {"seconds": 0.0, "cpu_seconds": 0.0}
    train = Trainer.train

    def timed(self, *args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return train(self, *args, **kwargs)
        finally:
            spent["seconds"] += time.perf_counter() - wall
            spent["cpu_seconds"] += time.process_time() - cpu

    Trainer.train = timed
    return spent


def count_tokens(model: torch.nn.Module) -> list[int]:
    """A counter of the ``input_ids`` (padding included) of every backbone forward."""
    counter = [0]

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        counter[0] += int(ids.numel())

    model.get_decoder().register_forward_pre_hook(hook, with_kwargs=True)
    return counter


def run_ours(model, tokenizer, pairs: pd.DataFrame, args: argparse.Namespace, packing: bool):
    from sppd_lib.config import TrainConfig
    from sppd_lib.trainer import train

    config = TrainConfig(
        phase="sppd",
        beta=args.beta,
        learning_rate=args.learning_rate,
        epochs=1,
        batch_size=args.batch_size,
        lora_r=16,
        lora_alpha=32,
        lora_target_modules="all-linear",
        packing=packing,
        logging_steps=1,
        seed=0,
        save_merged=False,
    )
    with tempfile.TemporaryDirectory() as work:
        result = train(model, tokenizer, pairs, config, Path(work) / "out", progress=False)
    return {
        "steps": result.steps,
        "train_loss": result.final_metrics.get("train_loss"),
        "tokens_forwarded_by_trainer": result.tokens_forwarded,
    }


def run_trl(model, tokenizer, pairs: pd.DataFrame, args: argparse.Namespace, ref_forward: bool):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from sppd_lib.models import attach_lora
    from sppd_lib.train_data import training_order

    class PretokenizedDPOTrainer(DPOTrainer):
        """Takes the token ids as they are (TRL would re-tokenize text and append EOS) and,
        with ``precompute_ref_log_probs``, the reference log-probs the data carries."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

        def _precompute_ref_logps(self, dataset, name, batch_size):
            return dataset

    # Exactly the batches of our trainer: its own order function with its seed.
    ordered = training_order(pairs, epochs=1, seed=0, group_by_tree=True)
    columns = {
        "prompt_ids": ordered["prompt_ids"].map(list).tolist(),
        "chosen_ids": ordered["chosen_ids"].map(list).tolist(),
        "rejected_ids": ordered["rejected_ids"].map(list).tolist(),
    }
    if not ref_forward:
        columns["ref_chosen_logps"] = ordered["chosen_ref_logp"].tolist()
        columns["ref_rejected_logps"] = ordered["rejected_ref_logp"].tolist()
    torch.manual_seed(0)  # the adapter initialisation of sppd_lib.trainer
    policy = attach_lora(model, r=16, alpha=32, dropout=0.0, target_modules="all-linear")
    with tempfile.TemporaryDirectory() as work:
        config = DPOConfig(
            output_dir=work,
            beta=args.beta,
            loss_type=["sigmoid"],
            per_device_train_batch_size=args.batch_size,
            num_train_epochs=1,
            learning_rate=args.learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            optim="adamw_torch",
            bf16=False,  # TRL's default is True; ours is off on CPU
            gradient_checkpointing=False,  # TRL's default is True; ours is off
            max_length=None,
            precompute_ref_log_probs=not ref_forward,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            train_sampling_strategy="sequential",
            seed=0,
            disable_tqdm=True,
            use_cpu=True,
        )
        trainer = PretokenizedDPOTrainer(
            model=policy,
            args=config,
            train_dataset=Dataset.from_dict(columns),
            processing_class=tokenizer,
        )
        output = trainer.train()
    return {"steps": output.global_step, "train_loss": output.training_loss}


def run_row(args: argparse.Namespace) -> None:
    from sppd_lib.models import build_tiny_model, load_model

    torch.manual_seed(0)
    if args.quick:
        model, tokenizer = build_tiny_model("llama", seed=0)
    else:
        model, tokenizer = load_model(MODEL, device="cpu")
    pairs = pd.read_parquet(args.pairs_file)
    counter = count_tokens(model)
    spent = time_train_calls()
    before = rss_mb()
    if args.only in ("ours", "ours_padded"):
        extra = run_ours(model, tokenizer, pairs, args, packing=args.only == "ours")
    else:
        if args.only == "trl_compact_head":
            import trl.trainer.utils

            trl.trainer.utils._use_triton = lambda device: True  # only decides what is scored
        extra = run_trl(model, tokenizer, pairs, args, ref_forward="ref" in args.only)
    n = len(pairs)
    row = {
        "row": args.only,
        "seconds": round(spent["seconds"], 2),
        "seconds_per_pair": round(spent["seconds"] / n, 3),
        "cpu_seconds_per_pair": round(spent["cpu_seconds"] / n, 3),
        "tokens_forwarded": counter[0],
        "tokens_forwarded_per_pair": round(counter[0] / n, 1),
        "rss_before_train_mb": round(before, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **extra,
    }
    print(json.dumps(row))


# ---------------------------------------------------------------------------------------
# Parent: pairs, one child per row, summary
# ---------------------------------------------------------------------------------------


def child(args: argparse.Namespace, row: str, pairs_file: Path) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--only",
        row,
        "--pairs-file",
        str(pairs_file),
        "--batch-size",
        str(args.batch_size),
        "--learning-rate",
        str(args.learning_rate),
        "--beta",
        str(args.beta),
        *(["--quick"] if args.quick else []),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"row {row} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest run of a row (the least disturbed by other load), with every run's time."""
    best = dict(min(runs, key=lambda r: r["seconds"]))
    if len(runs) > 1:
        best["seconds_runs"] = [r["seconds"] for r in runs]
        best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return best


def ratios(ours: dict[str, Any], other: dict[str, Any]) -> dict[str, float]:
    """Ours / other per pair (below 1: ours needs less), and the speedup other / ours."""
    ratio = lambda key: round(ours[key] / other[key], 3)  # noqa: E731
    return {
        "time_per_pair": ratio("seconds_per_pair"),
        "cpu_time_per_pair": ratio("cpu_seconds_per_pair"),
        "tokens_per_pair": ratio("tokens_forwarded_per_pair"),
        "peak_rss": ratio("peak_rss_mb"),
        "speedup": round(other["seconds_per_pair"] / ours["seconds_per_pair"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trees", type=Path, help="trees file: read it, or sample and write it")
    parser.add_argument("--problems", type=int, default=8, help="arith train problems to sample")
    parser.add_argument("--k", type=int, default=16, help="sampler passes per problem")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--per-tree", type=int, default=6, help="most sibling couples per tree")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per batch")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of rows")
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs per row, interleaved; the fastest counts"
    )
    parser.add_argument("--resume", type=Path, help="JSONL of finished rows: reuse and extend")
    parser.add_argument("--quick", action="store_true", help="tiny random model, 4 problems")
    parser.add_argument("--only", choices=ROWS, help=argparse.SUPPRESS)  # child: one row
    parser.add_argument("--pairs-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        run_row(args)
        return
    if args.quick and args.problems == parser.get_default("problems"):
        args.problems = 4
    if args.quick and args.pairs == parser.get_default("pairs"):
        args.pairs = 16
    rows = args.rows.split(",")
    if unknown := set(rows) - set(ROWS):
        parser.error(f"unknown rows {sorted(unknown)}; choose from {ROWS}")

    from sppd_lib.tree import read_trees, write_trees

    started = time.perf_counter()
    if args.trees is not None and args.trees.exists():
        trees = list(read_trees(args.trees))
    else:
        trees = sample(args)
        if args.trees is not None:
            args.trees.parent.mkdir(parents=True, exist_ok=True)
            write_trees(args.trees, trees)
    sampling_seconds = time.perf_counter() - started
    pairs = sibling_pairs(trees, args.pairs, args.per_tree, seed=0)
    if len(pairs) < args.pairs:
        print(f"only {len(pairs)} pairs in {len(trees)} trees (asked for {args.pairs})")
    figures: dict[str, Any] = {
        "benchmark": "trainer",
        "model": "tiny-llama (random)" if args.quick else MODEL,
        "trl_version": __import__("trl").__version__,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "beta": args.beta,
        "lora": "r16 alpha32 all-linear",
        "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "trees_sampled": len(trees),
        "tree_seconds": round(sampling_seconds, 1),
        **pair_shape(pairs),
    }
    print("pairs:", json.dumps(figures), flush=True)
    settings = [pairs.to_json(), args.batch_size, args.learning_rate, args.beta, args.quick]
    fingerprint = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
    done: dict[str, dict[str, Any]] = {}
    if args.resume is not None and args.resume.exists():
        for line in args.resume.read_text().splitlines():
            record = json.loads(line)
            done[record["key"]] = record["result"]
    runs: dict[str, list[dict[str, Any]]] = {row: [] for row in rows}
    with tempfile.TemporaryDirectory() as work:
        pairs_file = Path(work) / "pairs.parquet"
        pairs.to_parquet(pairs_file)
        for repeat in range(args.repeats):
            for row in rows:
                key = f"{fingerprint}/{row}/{repeat}"
                if key not in done:
                    done[key] = child(args, row, pairs_file)
                    if args.resume is not None:
                        with args.resume.open("a") as handle:
                            handle.write(json.dumps({"key": key, "result": done[key]}) + "\n")
                runs[row].append(done[key])
                print(f"{row}:", json.dumps(done[key]), flush=True)
    results = {row: best_of(row_runs) for row, row_runs in runs.items()}
    figures["rows"] = results
    if "ours" in results:
        for name, other in results.items():
            if name != "ours":
                figures[f"ours_vs_{name}"] = ratios(results["ours"], other)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
