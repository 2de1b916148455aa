"""Dataclass configs (one per phase, every field with help text) and strict YAML/dict loading.

Unknown keys and values of the wrong type fail at load time with the dotted key named, so a
typo in a config file never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from sppd_lib.prompts import SYSTEM_PROMPT

__all__ = ["ConfigError", "EvalConfig", "config_from_dict", "config_to_dict", "load_yaml"]

_C = TypeVar("_C")


class ConfigError(ValueError):
    """A config file or value is invalid; the message names the key."""


def option(default: Any, help: str) -> Any:
    """A dataclass field with help text (shown by ``--help`` and in the docs), TRL style."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class EvalConfig:
    """Evaluation of a model on benchmarks (SPPD_METHOD.md §6).

    Greedy pass@1 always; with ``num_samples`` N > 0 also N sampled responses per problem,
    scored as maj@N (plain majority), vote@N (weight-summed vote) and best@N (the answer of
    the highest-weighted response).
    """

    benchmarks: list[str] = option(
        ["gsm8k"], "Benchmarks to evaluate: gsm8k, math500, math, ocw, arith, svamp, ..."
    )
    split: str = option("test", "Split of each benchmark.")
    limit: int | None = option(32, "Problems per benchmark (the first N); null for all.")
    limits: dict[str, int] = option({}, "Per-benchmark limits overriding limit, e.g. {arith: 100}.")
    max_new_tokens: int = option(
        512, "Generation budget per response (the paper uses 2048 on GPUs)."
    )
    batch_size: int = option(
        16, "Prompts generated together (HF generate: one left-padded batch; engine: one call)."
    )
    system_prompt: str = option(SYSTEM_PROMPT, "System message of the chat prompt.")
    arith_seed: int = option(0, "Seed of the generated arithmetic problems.")
    arith: dict[str, Any] = option(
        {},
        "Options of the generated arithmetic problems (data.generate_arithmetic): max_terms, ...",
    )
    num_samples: int = option(
        0,
        "Sampled responses per problem for maj@N, vote@N and best@N (paper: 64); 0 = greedy only.",
    )
    sample_temperature: float = option(0.7, "Temperature of the sampled responses (> 0).")
    sample_top_p: float = option(1.0, "Top-p of the sampled responses, in (0, 1].")
    seed: int = option(0, "Seed of the sampled responses.")
    prm_model: str | None = option(
        None,
        "PRM (hub id or directory) whose last-step score weights vote@N and best@N; null: "
        "the policy's own confidence exp(mean token log-prob) (a self-confidence weight, "
        "not a PRM).",
    )

    def __post_init__(self) -> None:
        # config_from_dict has checked the types; these are the value ranges.
        rules = {
            "max_new_tokens": (self.max_new_tokens >= 1, ">= 1"),
            "batch_size": (self.batch_size >= 1, ">= 1"),
            "limit": (self.limit is None or self.limit >= 0, ">= 0 or null"),
            "num_samples": (self.num_samples >= 0, ">= 0"),
            "sample_temperature": (self.sample_temperature > 0, "> 0"),
            "sample_top_p": (0 < self.sample_top_p <= 1, "in (0, 1]"),
        }
        for key, (ok, rule) in rules.items():
            if not ok:
                raise ConfigError(f"{key} must be {rule}, got {getattr(self, key)!r}")


def _type_matches(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (list, tuple):
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        return isinstance(value, list | tuple) and all(_type_matches(v, item_type) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def config_from_dict(cls: type[_C], data: dict[str, Any] | None, where: str = "") -> _C:
    """Build dataclass ``cls`` from ``data``, recursing into nested dataclass fields.

    Raises:
        ConfigError: an unknown key or a value of the wrong type, naming ``where.key``.
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key {where}{unknown[0]!s}; valid keys: {', '.join(sorted(fields))}"
        )
    values = {}
    for name, value in data.items():
        annotation = hints[name]
        key = f"{where}{name}"
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise ConfigError(f"{key} must be a mapping, got {type(value).__name__}")
            values[name] = config_from_dict(annotation, value, f"{key}.")  # type: ignore[arg-type]
            continue
        if not _type_matches(value, annotation):
            shown = getattr(annotation, "__name__", str(annotation))
            raise ConfigError(f"{key} must be {shown}, got {value!r} ({type(value).__name__})")
        values[name] = float(value) if annotation is float else value
    return cls(**values)


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or bad YAML raises :class:`ConfigError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data
