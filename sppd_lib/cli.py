"""The ``sppd`` command. Each subcommand is a thin layer over one ``sppd_lib`` module.

Config flags are generated from the dataclass configs, so every knob has its help text and
default in ``--help``; ``--config FILE`` loads a YAML file of the same fields and flags given
on the command line override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
import traceback
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sppd_lib.config import ConfigError, EvalConfig, config_from_dict, load_yaml
from sppd_lib.data import DataError
from sppd_lib.pairs import PairConfig
from sppd_lib.sampler import SamplerConfig

__all__ = ["build_parser", "main"]

logger = logging.getLogger("sppd")


# ---------------------------------------------------------------------------------------
# Config dataclass <-> flags
# ---------------------------------------------------------------------------------------


def _flag_type(annotation: Any) -> tuple[Any, dict[str, Any]]:
    """argparse ``type`` and extra options for a dataclass field annotation."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # X | None
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], {"nargs": "+"}
    if annotation is bool:
        return None, {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(annotation) is dict:
        return _yaml_mapping, {}
    return annotation, {}


def _yaml_mapping(text: str) -> dict:
    """A mapping flag written as YAML, e.g. ``--arith '{max_terms: 3}'``."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a mapping like '{{key: value}}', got {text!r}")
    return value


def add_config_flags(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """One ``--field-name`` flag per field of dataclass ``cls`` (default: not given)."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} (also settable in --config)")
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        flag_type, options = _flag_type(hints[field.name])
        has_default = field.default is not dataclasses.MISSING
        default = field.default if has_default else field.default_factory()  # type: ignore[misc]
        if flag_type is not None:
            options["type"] = flag_type
        group.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            default=None,
            help=f"{field.metadata['help']} (default: {default!r})",
            **options,
        )


#: Top-level keys of any config file that name the policy rather than a section's field.
_MODEL_KEYS = ("model", "device")


def _config_file(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--config`` file read once per command (``{}`` without one)."""
    if getattr(args, "config", None) is None:
        return {}
    if not hasattr(args, "_config_data"):
        args._config_data = load_yaml(args.config)
    return args._config_data


def config_from_args(cls: type, args: argparse.Namespace, section: str) -> Any:
    """``cls`` from ``--config`` overridden by the flags.

    The file may hold the fields at the top level or under ``section`` (``eval:``,
    ``sampler:``), so one run config can serve several commands: a run config (it has
    sections, or a key of ``RunConfig`` that ``cls`` lacks) is validated whole, then its
    ``section`` is used. Top-level ``model`` / ``device`` are the policy (:func:`model_of`).
    """
    from sppd_lib.loop import RunConfig

    data = {k: v for k, v in _config_file(args).items() if k not in _MODEL_KEYS}
    own = {f.name for f in dataclasses.fields(cls)}
    run_keys = {f.name for f in dataclasses.fields(RunConfig)} - own - set(_MODEL_KEYS)
    if section in data or set(data) & run_keys:
        try:
            config_from_dict(RunConfig, _config_file(args))
        except ValueError as exc:
            raise ConfigError(f"{args.config}: {exc}") from None
        data = dict(data.get(section) or {})
    else:
        section = None
    for field in dataclasses.fields(cls):
        value = getattr(args, field.name, None)
        if value is not None:
            data[field.name] = value
    where = f"{args.config}: " if getattr(args, "config", None) else ""
    try:
        return config_from_dict(cls, data, f"{section}." if section else "")
    except ValueError as exc:  # __post_init__ checks
        raise ConfigError(where + str(exc)) from None


DEFAULT_MODEL = "smollm2-135m-instruct"


def model_of(args: argparse.Namespace) -> tuple[str, str | None]:
    """``(model, device)``: the flags, else the config file's top-level ``model`` /
    ``device`` (a run config's starting policy), else the default model; both checked."""
    from sppd_lib.models import check_device, resolve_model

    data = _config_file(args)
    model = args.model or data.get("model") or DEFAULT_MODEL
    device = args.device or data.get("device")
    if not isinstance(model, str) or not (device is None or isinstance(device, str)):
        raise ConfigError(f"{args.config}: model and device must be strings")
    check_device(device, "--device" if args.device else "device")
    resolve_model(model)  # fails now, before data is read or outputs are made
    return model, device


def _check_out(path: Path | None, flag: str = "--out") -> None:
    """An output file is writable: checked before the work, not after it."""
    from sppd_lib.files import check_writable

    if path is not None:
        try:
            check_writable(path)
        except OSError as exc:
            raise ConfigError(f"{flag}: {exc}") from None


# ---------------------------------------------------------------------------------------
# sppd eval
# ---------------------------------------------------------------------------------------


def _model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="alias (smollm2-135m-instruct, tiny-llama, tiny-qwen2), model dir, .gguf or a hub "
        "id in the local cache (--allow-download to fetch one); default: the --config file's "
        f"`model`, else {DEFAULT_MODEL}",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="cpu, cuda or cuda:N (default: --config's, else cuda if present)",
    )
    parser.add_argument("--config", type=Path, default=None, help="YAML file of config fields")


def _add_eval(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="greedy pass@1 of a model on benchmarks",
        description="Greedy pass@1 of a model on benchmarks; writes one row per response.",
    )
    _model_flags(parser)
    parser.add_argument(
        "--out", type=Path, default=None, help="parquet file for the responses (default: none)"
    )
    add_config_flags(parser, EvalConfig)
    parser.set_defaults(run=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from sppd_lib.evaluate import accuracy_table, benchmark_problems, evaluate
    from sppd_lib.files import write_parquet_atomic
    from sppd_lib.models import load_model

    config = config_from_args(EvalConfig, args, section="eval")
    name, device = model_of(args)
    for benchmark in config.benchmarks:  # every data file is read before the model loads
        benchmark_problems(config, benchmark)
    _check_out(args.out)
    started = time.perf_counter()
    model, tokenizer = load_model(name, device=device)
    results = evaluate(model, tokenizer, config)
    if args.out is not None:
        write_parquet_atomic(results, args.out)
        print(f"responses written to {args.out}")
    table = accuracy_table(results)
    print(f"\nmodel: {name}   ({time.perf_counter() - started:.0f} s)")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return 0


# ---------------------------------------------------------------------------------------
# sppd sample / merge-trees
# ---------------------------------------------------------------------------------------


def _add_sample(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sample",
        help="sample SPPD step trees from a policy",
        description=(
            "Tree-based self-sampling (SPPD §3): K passes per problem, each expanding a "
            "childless node with C sampled steps. Resumes after a crash; --shard i/n samples "
            "every n-th problem so n processes (one per GPU) can share a data set, and "
            "`sppd merge-trees` joins their files."
        ),
    )
    _model_flags(parser)
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
    parser.add_argument(
        "--engine", choices=("transformers", "vllm"), default="transformers", help="sampler engine"
    )
    parser.add_argument("--lora", default=None, help="LoRA adapter dir (vLLM engine)")
    parser.add_argument(
        "--tensor-parallel-size", type=int, default=1, help="GPUs per model (vLLM engine)"
    )
    parser.add_argument(
        "--max-batch-rows", type=int, default=64, help="rows decoded together (transformers)"
    )
    add_config_flags(parser, SamplerConfig)
    parser.set_defaults(run=_run_sample)


def make_engine(
    args: argparse.Namespace, model: str | None = None, device: str | None = None
) -> tuple[Any, Any]:
    """``(engine, tokenizer)`` for the ``--engine`` flags (``model`` / ``device``: as resolved
    by :func:`model_of`, default the flags)."""
    model = model or args.model or DEFAULT_MODEL
    device = device or args.device
    if args.engine == "vllm":
        from sppd_lib.engines.vllm_engine import VLLMEngine

        engine = VLLMEngine(
            model, lora_path=args.lora, tensor_parallel_size=args.tensor_parallel_size
        )
        return engine, engine.tokenizer
    from sppd_lib.engines.transformers_engine import TransformersEngine
    from sppd_lib.models import load_model

    if args.lora:
        raise ConfigError("--lora is for the vLLM engine; merge it or pass its directory")
    loaded, tokenizer = load_model(model, device=device)
    return TransformersEngine(loaded, tokenizer, max_batch_rows=args.max_batch_rows), tokenizer


def _run_sample(args: argparse.Namespace) -> int:
    from sppd_lib.data import load_problems
    from sppd_lib.files import RunLock
    from sppd_lib.sampler import sample_to_file, shard
    from sppd_lib.tree import read_trees

    config = config_from_args(SamplerConfig, args, section="sampler")
    name, device = model_of(args)
    options = {"seed": args.arith_seed} if args.dataset == "arith" else {}
    try:
        problems = shard(load_problems(args.dataset, args.split, args.limit, **options), args.shard)
    except DataError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not problems:
        raise DataError(f"--dataset {args.dataset} gives no problems to sample (--limit, --shard?)")
    _check_out(args.out)
    meta = {"model": name, "engine": args.engine, "shard": args.shard}
    # One writer per trees file: two samplers appending to one partial file would mix.
    with RunLock(args.out.parent, f"trees file {args.out}", f".{args.out.name}.lock"):
        engine, tokenizer = make_engine(args, name, device)
        started = time.perf_counter()
        sample_to_file(engine, tokenizer, problems, config, args.out, meta=meta)
    _print_tree_summary(list(read_trees(args.out)), time.perf_counter() - started)
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


def _add_merge(subparsers: argparse._SubParsersAction) -> None:
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

    _check_out(args.out)
    try:
        count = merge_tree_files(args.inputs, args.out)
    except ValueError as exc:  # two shards hold the same problem, or a file is not trees
        raise DataError(str(exc)) from None
    print(f"{count} trees written to {args.out}")
    return 0


# ---------------------------------------------------------------------------------------
# sppd pairs
# ---------------------------------------------------------------------------------------


def _add_pairs(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pairs",
        help="value step trees and build preference pairs",
        description=(
            "Back up values over sampled trees (mc or bellman) and write sibling step pairs "
            "with Δv above the threshold and their margins (parquet, plus a TRL-format "
            "<out>.trl.parquet). --stepwise also writes TRL stepwise records (soft labels)."
        ),
    )
    parser.add_argument("--trees", type=Path, required=True, help="trees file (.jsonl.gz)")
    parser.add_argument("--out", type=Path, required=True, help="pairs file (.parquet)")
    parser.add_argument("--stepwise", type=Path, default=None, help="stepwise records (.parquet)")
    parser.add_argument("--config", type=Path, default=None, help="YAML file of config fields")
    add_config_flags(parser, PairConfig)
    parser.set_defaults(run=_run_pairs)


def _run_pairs(args: argparse.Namespace) -> int:
    import json

    from sppd_lib.files import write_parquet_atomic
    from sppd_lib.models import ModelError, resolve_model
    from sppd_lib.pairs import build_pairs, stepwise_records, summarize_pairs, write_pairs

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
    _check_out(args.out)
    _check_out(args.stepwise, "--stepwise")
    trees = _read_trees(args.trees)
    pairs, reasons = build_pairs(trees, config)
    write_pairs(pairs, args.out)
    if args.stepwise is not None:
        write_parquet_atomic(stepwise_records(trees), args.stepwise)
    summary = summarize_pairs(pairs, len(trees))
    print(json.dumps({**summary, "trees_without_pairs": dict(reasons)}, indent=1))
    return 0


def _read_trees(path: Path) -> list:
    """Every tree of ``path``; a broken or empty file is a :class:`DataError` naming it."""
    from sppd_lib.tree import read_trees

    try:
        trees = list(read_trees(path))
    except ValueError as exc:
        raise DataError(str(exc)) from None
    if not trees:
        raise DataError(f"{path} holds no trees: sample some first (sppd sample)")
    return trees


# ---------------------------------------------------------------------------------------
# sppd train
# ---------------------------------------------------------------------------------------


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    from sppd_lib.trainer import TrainConfig

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
    _model_flags(parser)
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--pairs", type=Path, help="pairs file (.parquet) from `sppd pairs`")
    data.add_argument("--trees", type=Path, help="trees file (.jsonl.gz) from `sppd sample`")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--sft-per-problem", type=int, default=4, help="τ+ paths per problem")
    add_config_flags(parser, TrainConfig)
    add_config_flags(parser, PairConfig)
    parser.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import json

    import pandas as pd

    from sppd_lib.models import load_model
    from sppd_lib.pairs import phase_data
    from sppd_lib.trainer import TrainConfig, check_train_out, train

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
    else:
        pair_config = config_from_args(PairConfig, args, section="pairs")
        trees = _read_trees(args.trees)
        data = phase_data(config.phase, trees, pair_config, args.sft_per_problem)
    model, tokenizer = load_model(name, device=device)
    result = train(model, tokenizer, data, config, args.out)
    if result.model_dir is not None or result.adapter_dir is not None:  # the main process
        summary = {"out": str(result.out_dir), "examples": result.examples}
        print(json.dumps({**summary, "steps": result.steps, "seconds": round(result.seconds, 1)}))
    return 0


# ---------------------------------------------------------------------------------------
# sppd report / sweep
# ---------------------------------------------------------------------------------------


KEEP_NOTEBOOKS_HELP = "also keep the executed .ipynb beside each page (about 5 MB each)"


def _add_report(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="HTML report of a run (or a comparison of runs)",
        description=(
            "Execute the notebooks of notebooks/ (papermill) against a run directory and "
            "export them as offline HTML with an index.html: the run's report_dir, else "
            "<run_dir>/../reports/<run_dir name>/ by default. "
            "--compare draws several runs side by side (reports/compare/ by default); "
            "--study-dir renders a margin study (<study_dir>/../reports/<study name>/)."
        ),
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--run-dir", type=Path, help="run directory (runs/<run_id>)")
    target.add_argument("--study-dir", type=Path, help="study directory (studies/<study_id>)")
    target.add_argument("--compare", type=Path, nargs="+", help="run directories to compare")
    parser.add_argument("--out", type=Path, default=None, help="output directory")
    parser.add_argument("--metric", default="pass@1", help="metric of the --compare figure")
    parser.add_argument("--keep-notebooks", action="store_true", help=KEEP_NOTEBOOKS_HELP)
    parser.set_defaults(run=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from sppd_lib.report import (
        ReportError,
        render_compare_report,
        render_run_report,
        render_study_report,
    )

    if args.out is not None:
        from sppd_lib.files import check_writable

        check_writable(args.out, directory=True)
    try:
        keep = args.keep_notebooks
        if args.compare:
            report = render_compare_report(args.compare, args.out, args.metric, keep)
        elif args.study_dir:
            report = render_study_report(args.study_dir, args.out, keep)
        else:
            report = render_run_report(args.run_dir, args.out, keep_notebooks=keep)
    except ReportError as exc:
        print(f"sppd report: error: {exc}", file=sys.stderr)
        return 1
    print(f"report written to {report.index} ({report.seconds:.0f} s)")
    return 0


def _add_sweep(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="execute a notebook over a grid of parameters",
        description=(
            "Execute one notebook (a path, or a name in notebooks/) once per combination of "
            "--param values, each as .ipynb and offline .html, with an index.html."
        ),
    )
    parser.add_argument("--notebook", required=True, help="notebook path or name (margins)")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a parameter and its values (repeatable; values read as YAML)",
    )
    parser.add_argument("--out", type=Path, default=Path("reports/sweep"), help="output dir")
    parser.add_argument("--keep-notebooks", action="store_true", help=KEEP_NOTEBOOKS_HELP)
    parser.set_defaults(run=_run_sweep)


def _run_sweep(args: argparse.Namespace) -> int:
    from sppd_lib.report import ReportError, parse_grid, sweep

    try:
        grid = parse_grid(args.param)
        report = sweep(args.notebook, grid, args.out, keep_notebooks=args.keep_notebooks)
    except ReportError as exc:
        print(f"sppd sweep: error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(report.html)} notebooks written, index: {report.index}")
    return 0


# ---------------------------------------------------------------------------------------
# sppd run
# ---------------------------------------------------------------------------------------


def _set_flag(parser: argparse.ArgumentParser, example: str) -> None:
    """``--set KEY=VALUE`` (repeatable): config overrides, parsed as YAML."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config value, e.g. {example}",
    )


def _add_run(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="the whole SPPD self-training loop (sample, values, pairs, train, eval; repeat)",
        description=(
            "Run the self-training loop of a run config (configs/demo.yaml, configs/smoke.yaml, "
            "configs/paper_qwen2.5_7b.yaml). Every phase writes its artifact into "
            "runs/<run_id>/iter_<k>/; rerunning the same command resumes after the last "
            "finished phase. Every field of sppd_lib.loop.RunConfig (and its sections data, "
            "sampler, pairs, train, eval) can be overridden with --set section.key=value."
        ),
    )
    parser.add_argument("--config", type=Path, required=True, help="run config (YAML)")
    parser.add_argument("--run-dir", type=Path, default=None, help="default: runs/<run_id>")
    _set_flag(parser, "--set sampler.k=16 --set iterations=3")
    parser.set_defaults(run=_run_run)


def _run_run(args: argparse.Namespace) -> int:
    from sppd_lib.files import check_writable
    from sppd_lib.loop import accuracy_by_iteration, change_since_start, load_run_config, run
    from sppd_lib.report import run_report_dir

    config = load_run_config(args.config, args.set)
    run_dir = args.run_dir or Path("runs") / config.run_id
    report_dir = run_report_dir(run_dir, config.report_dir)
    if config.report:  # a report that cannot be written should fail now, not after the run
        try:
            check_writable(report_dir, directory=True)
        except OSError as exc:
            raise ConfigError(f"report_dir: {exc} (or set report_dir, or report: false)") from None
    started = time.perf_counter()
    summary = run(config, run_dir)
    print(f"\nrun {run_dir} finished in {(time.perf_counter() - started) / 60:.1f} min")
    for metric in dict.fromkeys(summary["metric"]):
        table = accuracy_by_iteration(summary, metric)
        print(f"\n{metric} by iteration:\n" + table.to_string(float_format=lambda x: f"{x:.3f}"))
    change = change_since_start(run_dir)
    if len(change):
        print(
            f"\npass@1 change from iteration 0 to {change['iteration'].iloc[0]}, problem by problem"
            " (gained: wrong -> right, lost: right -> wrong; p: exact McNemar test):\n"
            + change.drop(columns="iteration").to_string(
                index=False, float_format=lambda x: f"{x:.3f}"
            )
        )
    if config.report:
        from sppd_lib.report import ReportError, render_run_report

        try:
            written = render_run_report(run_dir, report_dir)
        except ReportError as exc:  # the run itself is complete; only a page failed
            print(f"sppd run: report failed: {exc}", file=sys.stderr)
            return 1
        print(f"\nreports: {written.index}")
    return 0


# ---------------------------------------------------------------------------------------
# sppd study
# ---------------------------------------------------------------------------------------


def _add_study(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study",
        help="the margin study: arms (sft, dpo, step_dpo, fixed, dynamic × γ, yours) × seeds",
        description=(
            "Train every arm of a study config (configs/study_demo.yaml, configs/study_smoke."
            "yaml; fields: sppd_lib.study.StudyConfig) from one starting model on the same "
            "trees and pairs, with several training seeds, evaluate each on the same held-out "
            "problems, and print per-arm intervals and paired comparisons. Everything lands in "
            "studies/<study_id>/ (study.parquet, arms.parquet, comparisons.parquet); rerunning "
            "the same command resumes a killed study."
        ),
    )
    parser.add_argument("--config", type=Path, required=True, help="study config (YAML)")
    parser.add_argument("--study-dir", type=Path, default=None, help="default: studies/<id>")
    parser.add_argument(
        "--from-run",
        type=Path,
        default=None,
        help="take the trees of iteration 1 of this run (same starting model) instead of sampling",
    )
    _set_flag(parser, "--set seeds=[0,1] --set train.epochs=2")
    parser.set_defaults(run=_run_study)


def _run_study(args: argparse.Namespace) -> int:
    from sppd_lib.study import load_study_config, run_study
    from sppd_lib.study_results import format_arm_table

    config = load_study_config(args.config, args.set)
    study_dir = args.study_dir or Path("studies") / config.study_id
    started = time.perf_counter()
    study = run_study(config, study_dir, from_run=args.from_run)
    print(f"\nstudy {study_dir} finished in {(time.perf_counter() - started) / 60:.1f} min")
    seeds = ", ".join(map(str, config.seeds))
    print(f"\ngreedy pass@1 per arm, mean over seeds {seeds} [95% t interval across seeds]:")
    print(format_arm_table(study.arms).to_string())
    if len(study.comparisons):
        shown = study.comparisons[study.comparisons["other"] != "start"]
        print(
            "\npaired comparisons (difference of mean accuracy with a 95% paired bootstrap "
            "interval; gained/lost: problems that flip on the majority over seeds; p: exact "
            "McNemar):\n" + shown.to_string(index=False, float_format=lambda x: f"{x:.3f}")
        )
    if config.report:
        from sppd_lib.report import ReportError, render_study_report

        try:
            written = render_study_report(study_dir)
        except ReportError as exc:
            print(f"sppd study: report failed: {exc}", file=sys.stderr)
            return 1
        print(f"\nreport: {written.index}")
    return 0


# ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sppd",
        description="SPPD workbench: step-level self-training of LLM math reasoners.",
    )
    _global_flags(parser, False)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in (_add_eval, _add_sample, _add_merge, _add_pairs, _add_report, _add_sweep,
                _add_train, _add_run, _add_study):  # fmt: skip
        add(subparsers)
    # The global flags work after the command too (`sppd run ... -v`).
    for sub in subparsers.choices.values():
        _global_flags(sub, argparse.SUPPRESS)
    return parser


def _global_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="debug logging and, on an "
        "error, the traceback"
    )  # fmt: skip
    parser.add_argument(
        "--allow-download",
        action="store_true",
        default=default,
        help="let hub ids be downloaded from the Hugging Face hub (default: offline, a hub id "
        "must be in the local cache; HF_HUB_OFFLINE=0 does the same)",
    )


#: What an interrupted command keeps, for the hint printed after Ctrl-C.
_RESUME_HINTS = {
    "run": "finished phases are kept: rerun the same command to resume",
    "sample": "finished batches are kept in <out>.partial.jsonl: rerun the same command to resume",
    "train": "nothing was written to --out: rerun the same command to start the phase again",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.allow_download:
        os.environ["SPPD_ALLOW_DOWNLOAD"] = "1"  # read by models / data; children inherit it
    from sppd_lib.files import LockedError
    from sppd_lib.models import ModelError

    prefix = f"sppd {args.command}"
    try:
        return args.run(args)
    except (ConfigError, DataError, ModelError, LockedError, OSError) as exc:
        # A user's error (a key, a file, a model, a busy or unwritable directory): one line.
        if args.verbose:
            traceback.print_exc()
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = _RESUME_HINTS.get(args.command, "outputs are written atomically, none is half-made")
        print(f"\n{prefix}: interrupted; {hint}", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug of ours: still one line, the traceback behind -v
        if args.verbose:
            traceback.print_exc()
        message = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"{prefix}: unexpected error: {type(exc).__name__}: {message} (rerun with -v for "
            "the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
