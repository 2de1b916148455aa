"""Command-line flags generated from the dataclass configs: one ``--field-name`` per field,
its help text and default from the field, its choices from the ``Literal`` annotation."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any

from sppd_lib.config.loading import choices_of, parse_yaml

__all__ = ["add_config_flags", "yaml_mapping"]


def yaml_mapping(text: str) -> dict[str, Any]:
    """A mapping flag written as YAML, e.g. ``--arith '{max_terms: 3}'``."""
    try:
        value = parse_yaml(text)
    except Exception:  # yaml.YAMLError or a duplicate key
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a mapping like '{{key: value}}', got {text!r}")
    return value


def _flag_type(annotation: Any) -> tuple[Any, dict[str, Any]]:
    """argparse ``type`` and extra options for a dataclass field annotation."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # X | None
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is list:
        item_type, options = _flag_type(typing.get_args(annotation)[0])
        return item_type, {**options, "nargs": "+"}
    choices = choices_of(annotation)
    if choices is not None:
        # Shown, not enforced by argparse: the config check names the key and the choices
        # the same way for a flag, a --config file and a --set.
        return type(choices[0]), {"metavar": "{" + ",".join(map(str, choices)) + "}"}
    if annotation is bool:
        return None, {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(annotation) is dict:
        return yaml_mapping, {}
    return annotation, {}


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
