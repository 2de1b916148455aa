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

__all__ = [
    "ConfigError",
    "EvalConfig",
    "check_ranges",
    "config_from_dict",
    "config_to_dict",
    "load_yaml",
    "parse_yaml",
]

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
        check_ranges(
            self,
            "",
            {
                "max_new_tokens": (self.max_new_tokens >= 1, ">= 1"),
                "batch_size": (self.batch_size >= 1, ">= 1"),
                "limit": (self.limit is None or self.limit >= 0, ">= 0 or null"),
                "num_samples": (self.num_samples >= 0, ">= 0"),
                "sample_temperature": (self.sample_temperature > 0, "> 0"),
                "sample_top_p": (0 < self.sample_top_p <= 1, "in (0, 1]"),
                "benchmarks": (bool(self.benchmarks), "a non-empty list"),
            },
        )
        names = [b.partition("=")[0] if "=" in b else Path(b).stem for b in self.benchmarks]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            raise ConfigError(
                f"benchmarks names {duplicate!r} twice: give each one a distinct name "
                "(name=FILE.jsonl)"
            )
        for name, limit in self.limits.items():
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
                raise ConfigError(f"limits.{name} must be an integer >= 0, got {limit!r}")


def check_ranges(config: Any, where: str, rules: dict[str, tuple[bool, str]]) -> None:
    """Raise :class:`ConfigError` for the first ``key: (ok, rule)`` that is not ok, naming
    ``where.key``, the rule and the value (a NaN fails every comparison, so it is caught)."""
    for key, (ok, rule) in rules.items():
        if not ok:
            raise ConfigError(f"{where}{key} must be {rule}, got {getattr(config, key)!r}")


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
    try:
        return cls(**values)
    except ValueError as exc:  # a range check of __post_init__: name the section too
        message = str(exc)
        section = where.rstrip(".").rpartition(".")[2]
        if where and not message.startswith((where, f"{section}.")):
            message = where + message
        raise ConfigError(message) from None


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


class _StrictLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses a key given twice in one mapping (YAML keeps the last one
    silently, so a second ``k:`` further down would override the first unseen)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            try:
                hash(key)
            except TypeError:
                continue  # SafeLoader itself reports an unhashable key
            if key in seen:
                raise ConfigError(
                    f"line {line}: duplicate key {key!r} (first on line {seen[key]}); "
                    "keep only one of them"
                )
            seen[key] = line
        return super().construct_mapping(node, deep)


def parse_yaml(text: str) -> Any:
    """YAML text to Python, refusing duplicate keys (``ConfigError`` naming the line)."""
    return yaml.load(text, Loader=_StrictLoader)


def load_yaml(path: str | Path, *, allow_empty: bool = False) -> dict[str, Any]:
    """Read a YAML mapping. A missing, unreadable, empty (unless ``allow_empty``) or
    non-UTF-8 file, bad YAML or a duplicate key raises :class:`ConfigError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    if data is None:
        if allow_empty:
            return {}
        raise ConfigError(
            f"{path} is empty: write the keys you want (see configs/smoke.yaml), or leave "
            "out --config to use the defaults"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data
