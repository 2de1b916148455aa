"""The ``sppd`` command. Each subcommand is a thin layer over one ``sppd_lib`` module."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sppd_lib.config import ConfigError, EvalConfig, config_from_dict, load_yaml

__all__ = ["main"]

logger = logging.getLogger("sppd")


def _help(config_cls: type, name: str) -> str:
    """A flag's help text, taken from the config field it sets, with its default."""
    field = next(f for f in dataclasses.fields(config_cls) if f.name == name)
    has_default = field.default is not dataclasses.MISSING
    default = field.default if has_default else field.default_factory()  # type: ignore[misc]
    return f"{field.metadata['help']} (default: {default})"


def _add_eval(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="greedy pass@1 of a model on benchmarks",
        description="Greedy pass@1 of a model on benchmarks; writes one row per response.",
    )
    parser.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="alias (smollm2-135m-instruct, tiny-llama, tiny-qwen2), model dir, .gguf or hub id",
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="YAML file of EvalConfig fields; flags override"
    )
    parser.add_argument(
        "--benchmark",
        dest="benchmarks",
        action="append",
        help=_help(EvalConfig, "benchmarks") + "; repeat for several",
    )
    parser.add_argument("--split", help=_help(EvalConfig, "split"))
    parser.add_argument("--limit", type=int, help=_help(EvalConfig, "limit"))
    parser.add_argument("--max-new-tokens", type=int, help=_help(EvalConfig, "max_new_tokens"))
    parser.add_argument("--batch-size", type=int, help=_help(EvalConfig, "batch_size"))
    parser.add_argument("--arith-seed", type=int, help=_help(EvalConfig, "arith_seed"))
    parser.add_argument(
        "--out", type=Path, default=None, help="parquet file for the responses (default: none)"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.set_defaults(run=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from sppd_lib.evaluate import accuracy_table, evaluate
    from sppd_lib.files import write_parquet_atomic
    from sppd_lib.models import load_model

    config = config_from_dict(EvalConfig, load_yaml(args.config) if args.config else {})
    for name in ("benchmarks", "split", "limit", "max_new_tokens", "batch_size", "arith_seed"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    started = time.perf_counter()
    model, tokenizer = load_model(args.model, device=args.device)
    results = evaluate(model, tokenizer, config)
    if args.out is not None:
        write_parquet_atomic(results, args.out)
        print(f"responses written to {args.out}")
    table = accuracy_table(results)
    print(f"\nmodel: {args.model}   ({time.perf_counter() - started:.0f} s)")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sppd",
        description="SPPD workbench: step-level self-training of LLM math reasoners.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_eval(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from sppd_lib.data import DataError
    from sppd_lib.models import ModelError

    try:
        return args.run(args)
    except (ConfigError, DataError, ModelError) as exc:
        print(f"sppd {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
