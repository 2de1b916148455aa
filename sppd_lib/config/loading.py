"""Strict loading of the dataclass configs: YAML, ``--set`` overrides, dicts to dataclasses.

Unknown keys, values of the wrong type and values outside a ``Literal`` field's choices fail
at load time with the dotted key named, so a typo in a config file never silently falls back
to a default. The same ``Literal`` declaration gives the choices of the CLI flag
(``config.flags``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

__all__ = [
    "ConfigError",
    "apply_overrides",
    "check_choices",
    "check_finite",
    "check_plain_name",
    "check_ranges",
    "choices_of",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "load_yaml",
    "migrate_margin_keys",
    "option",
    "parse_yaml",
    "shorthand_overrides",
    "type_matches",
]

logger = logging.getLogger(__name__)

_C = TypeVar("_C")


class ConfigError(ValueError):
    """A config file or value is invalid; the message names the key."""


def option(default: Any, help: str) -> Any:
    """A dataclass field with help text (shown by ``--help`` and in the docs), TRL style."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def choices_of(annotation: Any) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal[...]`` (or ``Literal[...] | None``) annotation;
    ``None`` for any other annotation."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = choices_of(arg)
            if found is not None:
                return found
        return None
    return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else None


@functools.cache
def _field_choices(cls: type) -> dict[str, tuple[Any, ...]]:
    hints = typing.get_type_hints(cls)
    found = {f.name: choices_of(hints[f.name]) for f in dataclasses.fields(cls)}
    return {name: choices for name, choices in found.items() if choices is not None}


def check_choices(config: Any, where: str) -> None:
    """Raise :class:`ConfigError` for the first ``Literal`` field of ``config`` whose value
    is not one of its choices, naming ``where.key`` and the choices (``__post_init__`` calls
    it, so a dataclass built in Python is checked as one loaded from YAML). Every number is
    first checked finite (:func:`check_finite`)."""
    check_finite(config, where)
    for name, choices in _field_choices(type(config)).items():
        value = getattr(config, name)
        if value is not None and value not in choices:
            raise ConfigError(f"{where}{name} must be one of {choices}, not {value!r}")


def check_plain_name(value: str, key: str) -> None:
    """``value`` (a run or study name, which becomes a directory) is a plain name: letters,
    digits, ``_``, ``.``, ``-``, not starting with a dot, so ``runs/<name>`` stays in
    ``runs/`` (no ``../``, no ``/``, no hidden directory)."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", value):
        raise ConfigError(
            f"{key} must be a plain name (letters, digits, '_', '.', '-'; no '/', not starting "
            f"with '.'), got {value!r}; to put the run elsewhere, use --run-dir / --study-dir"
        )


def _non_finite(value: Any) -> str | None:
    """The path (``""``, ``".key"``, ``"[i]"``) of the first non-finite float in ``value``
    (a number, or one nested in lists and dicts); ``None`` when every number is finite."""
    if isinstance(value, float):
        return None if math.isfinite(value) else ""
    if isinstance(value, dict | list | tuple):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            found = _non_finite(item)
            if found is not None:
                return (f".{key}" if isinstance(value, dict) else f"[{key}]") + found
    return None


def check_finite(config: Any, where: str = "") -> None:
    """Raise :class:`ConfigError` for the first field of dataclass ``config`` holding a NaN
    or an infinity (alone, or in a list or dict), naming ``where.key``. Driven by the fields
    themselves, so no numeric setting of any section escapes it (a NaN passes every
    ``<=`` check of a range, an ``inf`` every ``> 0``); nested dataclasses are checked
    when they are built."""
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if dataclasses.is_dataclass(value):
            continue
        found = _non_finite(value)
        if found is not None:
            raise ConfigError(
                f"{where}{item.name}{found} must be a finite number, got {_at(value, found)!r}"
            )


def _at(value: Any, path: str) -> Any:
    """The item of ``value`` at a path of :func:`_non_finite`."""
    import re

    for key in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path):
        value = value[key[0]] if key[0] else value[int(key[1])]
    return value


def check_ranges(config: Any, where: str, rules: dict[str, tuple[bool, str]]) -> None:
    """Raise :class:`ConfigError` for the first ``key: (ok, rule)`` that is not ok, naming
    ``where.key``, the rule and the value (a NaN fails every comparison, so it is caught)."""
    for key, (ok, rule) in rules.items():
        if not ok:
            raise ConfigError(f"{where}{key} must be {rule}, got {getattr(config, key)!r}")


def type_matches(value: Any, annotation: Any, *, deep: bool = True) -> bool:
    """``value`` fits ``annotation`` (``X | None``, ``list[X]``, ``dict``, ``Literal``, scalar
    types; a bool is not an int). ``deep=False`` checks a list's type, not its items (fast,
    for big records such as tree nodes); a Literal's choices are checked with ``deep``."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin is Literal:
        choices = typing.get_args(annotation)
        if not deep:
            return value in choices
        # The loader names the choices itself (check_choices), with a better message.
        return any(isinstance(value, type(choice)) for choice in choices)
    if origin in (typing.Union, types.UnionType):
        return any(type_matches(value, arg, deep=deep) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (list, tuple):
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        if not isinstance(value, list | tuple):
            return False
        return not deep or all(type_matches(v, item_type) for v in value)
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
            shorthand = getattr(annotation, "shorthand", None)  # a section's ClassVar
            if shorthand is not None and isinstance(value, str):  # `engine: vllm`
                value = {shorthand: value}
            if not isinstance(value, dict):
                raise ConfigError(f"{key} must be a mapping, got {type(value).__name__}")
            values[name] = config_from_dict(annotation, value, f"{key}.")  # type: ignore[arg-type]
            continue
        if not type_matches(value, annotation):
            shown = getattr(annotation, "__name__", str(annotation))
            raise ConfigError(f"{key} must be {shown}, got {value!r} ({type(value).__name__})")
        values[name] = float(value) if annotation is float else value
        found = _non_finite(values[name])
        if found is not None:  # before __post_init__, whose range checks a NaN would pass
            raise ConfigError(
                f"{key}{found} must be a finite number, got {_at(values[name], found)!r}"
            )
    try:
        return cls(**values)
    except ConfigError as exc:  # a check of __post_init__: name the section too
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
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *defaults": its keys may be overridden, SafeLoader merges them
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


def yaml_error_line(source: str | Path, exc: yaml.YAMLError) -> str:
    """A YAML error on one line, ``file:line:col: invalid YAML: problem (context)``; PyYAML's
    own message spans 3-5 lines with a drawing of the spot."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(source)
    return f"{where}: invalid YAML: {problem}" + (f" ({context})" if context else "")


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
        raise ConfigError(yaml_error_line(path, exc)) from None
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


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a config mapping in place."""
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set wants key=value, got {override!r}")
        target = data
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ConfigError(f"--set {key}: {parent} is not a section")
        try:
            target[leaf] = parse_yaml(raw)
        except yaml.YAMLError as exc:
            problem = yaml_error_line("value", exc).removeprefix("value")
            raise ConfigError(f"--set {override}: not a YAML value{problem}") from None
        except Exception as exc:  # a duplicate key
            raise ConfigError(f"--set {override}: not a YAML value ({exc})") from None
    return data


#: Keys that moved from the ``pairs`` section to ``train`` when the margin became a training
#: setting (so one pairs file serves every margin variant).
MOVED_MARGIN_KEYS = ("margin", "gamma", "fixed_margin")


def migrate_margin_keys(data: dict[str, Any], where: str) -> None:
    """Move ``pairs.margin`` / ``gamma`` / ``fixed_margin`` of an older config to ``train``
    (in place), with a warning; a key given in both sections is an error."""
    pairs = data.get("pairs")
    if not isinstance(pairs, dict):
        return
    moved = [key for key in MOVED_MARGIN_KEYS if key in pairs]
    if not moved:
        return
    train = data.setdefault("train", {})
    if not isinstance(train, dict):
        return
    for key in moved:
        if key in train:
            raise ConfigError(f"{where}: pairs.{key} and train.{key} both given; keep train.{key}")
        train[key] = pairs.pop(key)
    logger.warning(
        "%s: pairs.%s moved to train.%s (the margin is a training setting now)",
        where,
        "/".join(moved),
        "/".join(moved),
    )


def shorthand_overrides(cls: type, overrides: list[str]) -> list[str]:
    """``section=VALUE`` of a section with a shorthand field (``engine=vllm``) as
    ``section.field=VALUE``, so the rest of the section given in the file stays."""
    hints = typing.get_type_hints(cls)
    rewritten = []
    for override in overrides:
        key, sep, raw = override.partition("=")
        section = hints.get(key) if sep else None
        shorthand = (
            getattr(section, "shorthand", None) if dataclasses.is_dataclass(section) else None
        )
        if shorthand is not None and isinstance(_scalar(raw), str):
            override = f"{key}.{shorthand}={raw}"
        rewritten.append(override)
    return rewritten


def _scalar(raw: str) -> Any:
    try:
        return parse_yaml(raw)
    except Exception:  # reported by apply_overrides
        return None


def load_config(cls: type[_C], path: str | Path, overrides: list[str] | None = None) -> _C:
    """A ``cls`` (a run or study config) from YAML with ``key.sub=value`` overrides (values
    parsed as YAML); old ``pairs.margin`` keys are moved to ``train``.

    Raises:
        ConfigError: missing file, unknown key, wrong type or value, naming file and key.
    """
    from sppd_lib.config.engine import migrate_engine_keys

    data = load_yaml(path)
    migrate_engine_keys(data, str(path))
    data = apply_overrides(data, shorthand_overrides(cls, overrides or []))
    migrate_margin_keys(data, str(path))
    migrate_engine_keys(data, str(path))
    try:
        return config_from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{blame(exc, path, overrides or [])}: {exc}") from None


def blame(exc: Exception, path: str | Path, overrides: list[str]) -> str:
    """Where a config error comes from: the ``--set`` whose key the message names (the
    last one, as it wins), else the config file."""
    message = str(exc)
    for override in reversed(overrides):
        key = override.partition("=")[0].strip()
        if key and re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", message):
            return f"--set {override}"
    return str(path)
