"""The subcommands of one phase: ``sppd eval``, ``sample``, ``merge-trees``, ``pairs`` and
``train``; each runs the library function its phase of the loop runs, on files given as flags."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from sppd_lib.cli.common import (
    _config_file,
    _set_overrides,
    check_out,
    config_from_args,
    model_flags,
    model_of,
    override_flags,
    read_trees,
)
from sppd_lib.config import (
    ENGINE_KINDS,
    ConfigError,
    EngineConfig,
    EvalConfig,
    PairConfig,
    SamplerConfig,
    TrainConfig,
    add_config_flags,
    apply_overrides,
    config_from_dict,
    generator_options,
)
from sppd_lib.data import DataError
from sppd_lib.engines import ReloadingEngine

__all__ = ["add_eval", "add_merge", "add_pairs", "add_sample", "add_train"]

#: Pair settings that need the sampling model (not loaded by `sppd pairs` / `sppd train`).
NEEDS_MODEL = ("rollouts",)


def engine_flags(parser: argparse.ArgumentParser) -> None:
    """The engine that decodes (``sppd sample``, ``sppd eval``): the ``engine:`` section of
    ``--config`` (a run config's) overridden by these flags, generated from
    :class:`~sppd_lib.config.EngineConfig`."""
    parser.add_argument(
        "--engine",
        dest="kind",
        choices=ENGINE_KINDS,
        default=None,
        help="decoding engine, engine.kind (default: --config's, else transformers)",
    )
    parser.add_argument("--lora", default=None, help="LoRA adapter dir (vLLM engine)")
    add_config_flags(parser, EngineConfig, skip=("kind", "device"))


def engine_config(args: argparse.Namespace, device: str | None) -> EngineConfig:
    """The ``engine:`` section of ``--config`` (if any) overridden by the engine flags; the
    engine runs on ``engine.device``, else ``device`` (the policy's)."""
    where = f"{args.config}: " if getattr(args, "config", None) else ""
    section = _config_file(args).get("engine") or {}  # `engine: KIND` is a mapping by now
    if not isinstance(section, dict):
        raise ConfigError(f"{where}engine must be a mapping or an engine name, got {section!r}")
    data = dict(section)
    apply_overrides(data, _set_overrides(args, EngineConfig, "engine"))
    for field in dataclasses.fields(EngineConfig):
        value = getattr(args, field.name, None)
        if value is not None and field.name != "device":
            data[field.name] = value
    try:
        config = config_from_dict(EngineConfig, data, "engine.")
    except ValueError as exc:
        raise ConfigError(where + str(exc)) from None
    return dataclasses.replace(config, device=config.device or device)


def _engine_of(args: argparse.Namespace, name: str, device: str | None) -> tuple:
    from sppd_lib.engines.factory import build_engine, check_available

    config = engine_config(args, device)
    check_available(config)
    return build_engine(config, name, lora=args.lora)


def add_eval(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model on benchmarks (greedy pass@1; maj/vote/best@N with num_samples)",
        description=(
            "Evaluate a model on benchmarks: greedy pass@1 and, with --num-samples N, maj@N, "
            "vote@N and best@N (a PRM scores best@N); writes one row per response."
        ),
    )
    model_flags(parser)
    override_flags(parser, {"eval": EvalConfig, "engine": EngineConfig}, "--set eval.limit=50")
    parser.add_argument(
        "--out", type=Path, default=None, help="parquet file for the responses (default: none)"
    )
    engine_flags(parser)
    add_config_flags(parser, EvalConfig)
    parser.set_defaults(run=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from sppd_lib.evaluate import benchmark_problems, evaluate
    from sppd_lib.files import write_parquet_atomic
    from sppd_lib.metrics import accuracy_table

    config = config_from_args(EvalConfig, args, section="eval")
    name, device = model_of(args)
    for benchmark in config.benchmarks:  # every data file is read before the model loads
        benchmark_problems(config, benchmark)
    check_out(args.out)
    started = time.perf_counter()
    engine, tokenizer = _engine_of(args, name, device)
    try:
        results = evaluate(None, tokenizer, config, engine=engine)
    finally:
        if isinstance(engine, ReloadingEngine):  # an engine with processes of its own
            engine.close()
    if args.out is not None:
        write_parquet_atomic(results, args.out)
        print(f"responses written to {args.out}")
    table = accuracy_table(results)
    print(f"\nmodel: {name}   ({time.perf_counter() - started:.0f} s)")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return 0


def add_sample(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sample",
        help="sample SPPD step trees from a policy",
        description=(
            "Tree-based self-sampling (arXiv 2502.13516): K passes per problem, each "
            "expanding a childless node with C sampled steps. Resumes after a crash; --shard "
            "i/n samples every n-th problem so n processes (one per GPU) can share a data set, "
            "and `sppd merge-trees` joins their files."
        ),
    )
    model_flags(parser)
    override_flags(parser, {"sampler": SamplerConfig, "engine": EngineConfig}, "--set sampler.k=16")
    parser.add_argument(
        "--dataset",
        default="arith",
        help="data set name (gsm8k, math, arith, ...), FILE.jsonl or NAME=FILE.jsonl of "
        '{"question", "answer"} rows (UTF-8)',
    )
    parser.add_argument("--split", default="train", help="split of the data set")
    parser.add_argument("--limit", type=int, default=None, help="first N problems")
    parser.add_argument("--arith-seed", type=int, default=0, help="seed of generated problems")
    parser.add_argument("--out", type=Path, required=True, help="trees file (.jsonl.gz)")
    parser.add_argument("--shard", default=None, help="i/n: sample shard i of n")
    engine_flags(parser)
    add_config_flags(parser, SamplerConfig)
    parser.set_defaults(run=_run_sample)


def _run_sample(args: argparse.Namespace) -> int:
    from sppd_lib.data import load_problems
    from sppd_lib.rundir import file_lock
    from sppd_lib.sampler import sample_to_file, shard

    config = config_from_args(SamplerConfig, args, section="sampler")
    name, device = model_of(args)
    options = generator_options(args.dataset, args.arith_seed, {})
    try:
        problems = shard(load_problems(args.dataset, args.split, args.limit, **options), args.shard)
    except DataError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not problems:
        raise DataError(f"--dataset {args.dataset} gives no problems to sample (--limit, --shard?)")
    check_out(args.out)
    meta = {"model": name, "engine": engine_config(args, device).kind, "shard": args.shard}
    with file_lock(args.out, "trees file"):
        engine, tokenizer = _engine_of(args, name, device)
        started = time.perf_counter()
        sample_to_file(engine, tokenizer, problems, config, args.out, meta=meta)
    _print_tree_summary(read_trees(args.out), time.perf_counter() - started)
    return 0


def _print_tree_summary(trees: list, seconds: float) -> None:
    stats = [t.stats() for t in trees]
    complete = sum(s.complete_paths for s in stats)
    correct = sum(s.correct_paths for s in stats)
    generated = sum(s.tokens_generated for s in stats)
    flat = sum(s.flat_tokens for s in stats)
    print(
        f"{len(trees)} trees, {sum(s.nodes for s in stats)} steps, {complete} complete paths "
        f"({correct} correct, {correct / max(complete, 1):.1%}); "
        f"{sum(bool(s.correct_paths) for s in stats)} trees with a correct path, "
        f"{sum(0 < s.correct_paths < s.complete_paths for s in stats)} with correct and wrong; "
        f"tokens: {generated} generated vs {flat} flat ({generated / max(flat, 1):.2f}x); "
        f"{seconds:.0f} s"
    )


def add_merge(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge-trees",
        help="merge shard tree files into one",
        description="Merge tree files written by `sppd sample --shard i/n` into one file.",
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="shard files")
    parser.add_argument("--out", type=Path, required=True, help="merged trees file")
    parser.set_defaults(run=_run_merge)


def _run_merge(args: argparse.Namespace) -> int:
    from sppd_lib.sampler import merge_tree_files

    check_out(args.out)
    try:
        count = merge_tree_files(args.inputs, args.out)
    except ValueError as exc:  # two shards hold the same problem, or a file is not trees
        raise DataError(str(exc)) from None
    print(f"{count} trees written to {args.out}")
    return 0


def add_pairs(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pairs",
        help="value step trees and build preference pairs",
        description=(
            "Back up values over sampled trees (mc, bellman or a PRM) and write sibling step "
            "pairs with Δv above the threshold (parquet; the margin γ·Δv is a training "
            "setting), plus <out>.trl.parquet for TRL's DPOTrainer (reference log-probs, "
            "which steps end the solution). --stepwise also writes TRL stepwise records."
        ),
    )
    parser.add_argument("--trees", type=Path, required=True, help="trees file (.jsonl.gz)")
    parser.add_argument("--out", type=Path, required=True, help="pairs file (.parquet)")
    parser.add_argument(
        "--stepwise",
        type=Path,
        default=None,
        help="also write TRL stepwise records (prompt, completions, labels) for PRM training",
    )
    parser.add_argument(
        "--stepwise-threshold",
        type=float,
        default=None,
        help="hard 0/1 stepwise labels (value >= this); default: soft labels (the values), "
        "which TRL's PRM trainer would truncate to 0 with int()",
    )
    override_flags(parser, {"pairs": PairConfig}, "--set pairs.threshold=0.3")
    # Rollouts need the model that sampled the trees: `sppd run` / `sppd study` only.
    add_config_flags(parser, PairConfig, skip=NEEDS_MODEL)
    parser.set_defaults(run=_run_pairs)


def _run_pairs(args: argparse.Namespace) -> int:
    import json

    from sppd_lib.files import write_parquet_atomic
    from sppd_lib.models import ModelError, resolve_model
    from sppd_lib.pairs import (
        build_pairs,
        stepwise_records,
        summarize_pairs,
        trl_pairs_path,
        write_pairs,
    )

    config = config_from_args(PairConfig, args, section="pairs")
    if config.rollouts:
        raise ConfigError(
            "pairs.rollouts needs the model that sampled the trees: use it in `sppd run` or "
            "`sppd study`, or add_mc_rollouts in Python (sppd pairs loads no model)"
        )
    if config.value == "prm":
        try:
            resolve_model(config.prm_model)  # type: ignore[arg-type]
        except ModelError as exc:
            raise ModelError(f"pairs.prm_model: {exc}") from None
    check_out(args.out)
    check_out(trl_pairs_path(args.out), "--out (its TRL export)")
    check_out(args.stepwise, "--stepwise")
    trees = read_trees(args.trees)
    pairs, reasons = build_pairs(trees, config)
    write_pairs(pairs, args.out)
    if args.stepwise is not None:
        if args.stepwise_threshold is None:
            print(
                "note: --stepwise labels are soft values; TRL's PRM trainer casts labels with "
                "int() (every value below 1 becomes 0): pass --stepwise-threshold for hard labels",
                file=sys.stderr,
            )
        write_parquet_atomic(stepwise_records(trees, args.stepwise_threshold), args.stepwise)
    print(json.dumps(summarize_pairs(pairs, len(trees), reasons), indent=1))
    return 0


def add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a policy on step pairs (sppd), sentence pairs (dpo) or correct paths (sft)",
        description=(
            "One training phase on transformers.Trainer (so `accelerate launch` gives DDP, "
            "FSDP or DeepSpeed). --pairs takes a pairs.parquet (sppd, or dpo pairs); --trees "
            "builds the phase's data from sampled trees with the pairs flags. Writes log.jsonl, "
            "pair_log.parquet, adapter/ and model/ (merged weights) into --out."
        ),
    )
    model_flags(parser)
    override_flags(parser, {"train": TrainConfig, "pairs": PairConfig}, "--set train.beta=0.2")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--pairs", type=Path, help="pairs file (.parquet) from `sppd pairs`")
    data.add_argument("--trees", type=Path, help="trees file (.jsonl.gz) from `sppd sample`")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--sft-per-problem", type=int, default=4, help="τ+ paths per problem")
    add_config_flags(parser, TrainConfig)
    add_config_flags(parser, PairConfig, skip=NEEDS_MODEL)
    parser.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import json

    import pandas as pd

    from sppd_lib.models import load_model
    from sppd_lib.pairs import phase_data
    from sppd_lib.train_data import check_finite_rows
    from sppd_lib.trainer import check_train_out, train

    config = config_from_args(TrainConfig, args, section="train")
    name, device = model_of(args)
    # An existing --out is never replaced; checked before any work. The work dir belongs to
    # the main process of `accelerate launch` (rank 0), the others would race its creation.
    check_train_out(args.out, work_dir=os.environ.get("RANK", "0") == "0")
    if args.pairs is not None:
        if not args.pairs.is_file():
            raise DataError(f"pairs file {args.pairs} does not exist")
        try:
            data = pd.read_parquet(args.pairs)
        except Exception as exc:  # pyarrow's ArrowInvalid and friends: not a parquet file
            raise DataError(
                f"{args.pairs} is not a pairs parquet file ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''})"
            ) from None
        if len(data) == 0:
            raise DataError(f"{args.pairs} holds no pairs: nothing to train on")
        check_finite_rows(data, str(args.pairs))
    else:
        pair_config = config_from_args(PairConfig, args, section="pairs")
        trees = read_trees(args.trees)
        data = phase_data(config.phase, trees, pair_config, args.sft_per_problem)
    model, tokenizer = load_model(name, device=device)
    result = train(model, tokenizer, data, config, args.out)
    if result.model_dir is not None or result.adapter_dir is not None:  # the main process
        summary = {"out": str(result.out_dir), "examples": result.examples}
        print(json.dumps({**summary, "steps": result.steps, "seconds": round(result.seconds, 1)}))
    return 0
