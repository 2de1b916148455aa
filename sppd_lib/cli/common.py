"""What the subcommands share: config files overridden by flags, the policy flags, output
checks and reading trees."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from sppd_lib.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    config_from_dict,
    load_yaml,
    migrate_engine_keys,
)
from sppd_lib.data import DataError

__all__ = [
    "DEFAULT_MODEL",
    "check_out",
    "config_from_args",
    "model_flags",
    "model_of",
    "override_flags",
    "read_trees",
    "set_flag",
]

DEFAULT_MODEL = RunConfig().model
#: Top-level keys of any config file that name the policy rather than a section's field.
_MODEL_KEYS = ("model", "device")


def _config_file(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--config`` file read once per command (``{}`` without one)."""
    if getattr(args, "config", None) is None:
        return {}
    if not hasattr(args, "_config_data"):
        args._config_data = load_yaml(args.config)
        migrate_engine_keys(args._config_data, str(args.config))
    return args._config_data


def config_from_args(cls: type, args: argparse.Namespace, section: str) -> Any:
    """``cls`` from ``--config`` overridden by the flags.

    The file may hold the fields at the top level or under ``section`` (``eval:``,
    ``sampler:``), so one run config can serve several commands: a run config (it has
    sections, or a key of ``RunConfig`` that ``cls`` lacks) is validated whole, then its
    ``section`` is used. Top-level ``model`` / ``device`` are the policy (:func:`model_of`).
    """
    section_name = section
    data = {k: v for k, v in _config_file(args).items() if k not in _MODEL_KEYS}
    own = {f.name for f in dataclasses.fields(cls)}
    run_keys = {f.name for f in dataclasses.fields(RunConfig)} - own - set(_MODEL_KEYS)
    if section in data or set(data) & run_keys:
        try:
            config_from_dict(RunConfig, _config_file(args))
        except ValueError as exc:  # ConfigError, or a DataError of a data spec
            raise ConfigError(f"{args.config}: {exc}") from None
        data = dict(data.get(section) or {})
    else:
        section = None
    apply_overrides(data, _set_overrides(args, cls, section_name))
    for field in dataclasses.fields(cls):
        value = getattr(args, field.name, None)
        if value is not None:
            data[field.name] = value
    where = f"{args.config}: " if getattr(args, "config", None) else ""
    try:
        return config_from_dict(cls, data, f"{section}." if section else "")
    except ValueError as exc:  # __post_init__ checks
        raise ConfigError(where + str(exc)) from None


def _set_overrides(args: argparse.Namespace, cls: type, section: str) -> list[str]:
    """The ``--set`` overrides of ``section`` (``section.key=value`` or a bare ``key=value``
    of a field of ``cls``), section prefix removed; a key of no section of this command is a
    :class:`ConfigError` naming the keys it takes."""
    sections: dict[str, type] = getattr(args, "set_sections", {section: cls})
    mine = []
    for override in getattr(args, "set", None) or []:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set wants key=value, got {override!r}")
        head, dot, rest = key.partition(".")
        if dot and head in sections:
            if head == section:
                mine.append(f"{rest}={value}")
            continue
        owners = [name for name, owner in sections.items() if _has_field(owner, head)]
        if not dot and owners:
            if section == owners[0]:
                mine.append(override)
            continue
        raise ConfigError(
            f"--set {key}: not a key of this command (its keys: {', '.join(sections)} "
            "fields, as key=value or section.key=value)"
        )
    return mine


def _has_field(cls: type, name: str) -> bool:
    return any(f.name == name for f in dataclasses.fields(cls))


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


def check_out(path: Path | None, flag: str = "--out") -> None:
    """An output file is writable: checked before the work, not after it."""
    from sppd_lib.files import check_writable

    if path is not None:
        try:
            check_writable(path)
        except OSError as exc:
            raise ConfigError(f"{flag}: {exc}") from None


def model_flags(parser: argparse.ArgumentParser) -> None:
    """``--model`` and ``--device``."""
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


def override_flags(
    parser: argparse.ArgumentParser, sections: dict[str, type], example: str
) -> None:
    """``--config FILE`` and ``--set KEY=VALUE`` of a phase command whose config sections are
    ``sections`` (``{"train": TrainConfig, ...}``): the same override rule as ``sppd run``
    (defaults < --config < --set < explicit flags)."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML file of config fields (at the top level, or a run config's sections)",
    )
    set_flag(parser, example)
    parser.set_defaults(set_sections=sections)


def set_flag(parser: argparse.ArgumentParser, example: str) -> None:
    """``--set KEY=VALUE`` (repeatable): config overrides, parsed as YAML."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config value (YAML), e.g. {example}; order: defaults < --config < "
        "--set < explicit flags",
    )


def read_trees(path: Path) -> list:
    """Every tree of ``path``; a broken or empty file is a :class:`DataError` naming it."""
    from sppd_lib.tree import read_trees as read

    try:
        trees = list(read(path))
    except ValueError as exc:
        raise DataError(str(exc)) from None
    if not trees:
        raise DataError(f"{path} holds no trees: sample some first (sppd sample)")
    return trees
