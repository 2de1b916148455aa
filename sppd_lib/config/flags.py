"""Command-line flags generated from the dataclass configs: one ``--field-name`` per field,
its help text and default from the field, its choices from the ``Literal`` annotation."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Sequence
from typing import Any

from sppd_lib.config.loading import choices_of, parse_yaml

__all__ = ["add_config_flags", "flag_overrides", "yaml_mapping"]


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


def add_config_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    skip: Sequence[str] = (),
    *,
    sections: bool = False,
    prefix: str = "",
) -> None:
    """One ``--field-name`` flag per field of dataclass ``cls`` (default: not given).

    With ``sections``, a field that is itself a dataclass (a section of a run or study config)
    gets one ``--section.field-name`` flag per field instead, named like its ``--set
    section.field=...`` key, so any new section gets its flags without code here. ``skip``
    names fields (dotted for a section's) that no flag is made for.
    """
    hints = typing.get_type_hints(cls)
    title = f"{prefix.rstrip('.') or cls.__name__} (also settable in --config)"
    group = parser.add_argument_group(title)
    nested = []
    for field in dataclasses.fields(cls):
        key = prefix + field.name
        if key in skip:
            continue
        if sections and dataclasses.is_dataclass(hints[field.name]):
            nested.append((hints[field.name], key + "."))
            continue
        flag_type, options = _flag_type(hints[field.name])
        has_default = field.default is not dataclasses.MISSING
        default = field.default if has_default else field.default_factory()  # type: ignore[misc]
        if flag_type is not None:
            options["type"] = flag_type
            options.setdefault("metavar", field.name.upper())
        group.add_argument(
            "--" + prefix + field.name.replace("_", "-"),
            dest=key,
            default=None,
            # argparse formats help with %: a literal "62%" in a help text must be escaped.
            help=f"{field.metadata['help']} (default: {default!r})".replace("%", "%%"),
            **options,
        )
    for section, section_prefix in nested:
        add_config_flags(parser, section, skip, sections=True, prefix=section_prefix)


def flag_overrides(args: argparse.Namespace, cls: type, prefix: str = "") -> list[str]:
    """The config flags given on the command line as ``key=value`` overrides (``--set``'s
    form; values written as JSON, which YAML reads back), sections included."""
    hints = typing.get_type_hints(cls)
    found = []
    for field in dataclasses.fields(cls):
        key = prefix + field.name
        if dataclasses.is_dataclass(hints[field.name]):
            found += flag_overrides(args, hints[field.name], key + ".")
            continue
        value = getattr(args, key, None)
        if value is not None:
            found.append(f"{key}={json.dumps(value)}")
    return found
