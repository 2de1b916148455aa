"""The margin study's config (arXiv 2502.13516 Table 4 and Figure 2 as one command): arms ×
seeds trained from one start on shared trees and pairs."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any

from sppd_lib.config.loading import (
    ConfigError,
    check_choices,
    check_plain_name,
    config_from_dict,
    config_to_dict,
    load_config,
    option,
)
from sppd_lib.config.phases import PairConfig, Phase
from sppd_lib.config.run import RunConfig, RunSections

__all__ = [
    "BASELINES",
    "START",
    "ArmConfig",
    "StudyConfig",
    "load_study_config",
    "resolve_arms",
]


#: Names the study directory uses itself, so no arm may take them.
RESERVED = {"start", "values", "report"}
BASELINES = ("sft", "dpo", "step_dpo", "fixed")
START = "start"  # the untrained starting model, as an arm of the tables


@dataclass
class ArmConfig:
    """One arm of a study: how to train from the start on the shared data."""

    name: str = option("", "Arm name (letters, digits, '_', '.', '-'): its directory.")
    phases: list[Phase] = option(["sppd"], "Training phases in order, e.g. [sft, sppd].")
    values: str | None = option(
        None, "Value estimator whose pairs it trains on (a key of `values`); null: the first."
    )
    train: dict[str, Any] = option(
        {}, "Overrides of the study's train config, e.g. {margin: fixed, fixed_margin: 0.8}."
    )


@dataclass
class StudyConfig(RunSections):
    """A margin study: arms × seeds trained from one start on the same trees and pairs.

    The run sections (``model`` ... ``ray``, :class:`~sppd_lib.config.RunSections`) mean what
    they mean in a run config for its first iteration: ``model`` is the start, sampler and
    reference, ``data`` gives the training prompts of the one set of trees, ``pairs`` the
    first value estimator, ``train`` the settings every arm starts from (arms override some),
    ``eval`` the held-out problems every arm is scored on.
    """

    study_id: str = option("study", "Name of the study; its directory is studies/<study_id>.")
    values: dict[str, dict[str, Any]] = option(
        {},
        "Value estimators, name -> overrides of `pairs`, e.g. {mc: {}, prm_own: {value: prm, "
        "prm_model: own}}; empty: one estimator 'main' = `pairs`. prm_model 'own' trains a "
        "PRM (prm.train_prm, from `model`) on the trees' Monte-Carlo labels, for users "
        "without a published PRM (arXiv 2502.13516 used one).",
    )
    seeds: list[int] = option([0, 1, 2], "Training seeds of every arm (data order, LoRA init).")
    gammas: list[float] = option(
        [0.1, 0.5, 1.0, 2.0, 5.0],
        "γ grid of the dynamic arms (arXiv 2502.13516 Figure 2: 0.1, 0.5, 1, 2, 5).",
    )
    baselines: list[str] = option(
        list(BASELINES),
        "Standard arms: sft (τ+), dpo (τ+ vs τ−), step_dpo (margin none), fixed (one margin, "
        "by default the mean of γ·Δv at train.gamma: the same mean margin as dynamic).",
    )
    arms: list[dict[str, Any]] = option(
        [], "Arms of your own: a list of {name, phases, values, train} (ArmConfig)."
    )
    compare: list[str] = option(
        [],
        "Two arms whose flipped problems the report lists; default: dynamic at train.gamma "
        "vs step_dpo.",
    )
    keep_models: bool = option(
        False, "Keep every arm's merged weights (SmolLM2 fp32: 540 MB each); adapters are kept."
    )
    report: bool = option(True, "`sppd study` ends by writing the HTML report.")

    def __post_init__(self) -> None:
        check_choices(self, "")
        check_plain_name(self.study_id, "study_id")
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise ConfigError(f"baselines: unknown {unknown} (choose from {list(BASELINES)})")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct and at least one, got {self.seeds}")
        if any(g < 0 for g in self.gammas):
            raise ConfigError(f"gammas must be >= 0, got {self.gammas}")
        for name in self.values:
            _check_name(name, "values")
        self.run_config(["sppd"])  # the shared sections are valid as a run config
        arms = resolve_arms(self)
        names = [arm.name for arm in arms]
        if len(set(names)) != len(names):
            raise ConfigError(f"arm names must be unique, got {names}")
        for arm in arms:
            self.run_config(arm.phases, arm.train, arm.name)  # every arm's train config is valid
        if self.compare and (len(self.compare) != 2 or not set(self.compare) <= {*names, START}):
            raise ConfigError(f"compare names two arms of {[*names, START]}, got {self.compare}")

    @property
    def estimators(self) -> dict[str, PairConfig]:
        """Value estimator name -> its pair config, in order (the first is the default)."""
        specs = self.values or {"main": {}}
        return {
            name: config_from_dict(
                PairConfig, {**config_to_dict(self.pairs), **overrides}, f"values.{name}."
            )
            for name, overrides in specs.items()
        }

    @property
    def headline_arm(self) -> str:
        return _dynamic_name(self.train.gamma)

    def run_config(
        self, phases: list[str], train: dict[str, Any] | None = None, name: str = "study"
    ) -> RunConfig:
        """The run config of one arm (its first iteration): what the loop's phases read."""
        whole = config_to_dict(self)
        settings = {
            **{f.name: whole[f.name] for f in dataclasses.fields(RunSections)},
            "run_id": self.study_id,
            "iterations": 1,
            "phases": list(phases),
            "report": False,
            "train": {**whole["train"], **(train or {})},
        }
        where = "" if name == "study" else f"arm {name}: "
        try:
            return config_from_dict(RunConfig, settings)
        except ConfigError as exc:
            raise ConfigError(f"{where}{exc}") from None


def _check_name(name: str, what: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in RESERVED:
        raise ConfigError(
            f"{what}: {name!r} is not a usable name (letters, digits, '_', '.', '-'; "
            f"not {sorted(RESERVED)})"
        )


def _dynamic_name(gamma: float) -> str:
    return f"dynamic_g{gamma:g}"


def resolve_arms(config: StudyConfig) -> list[ArmConfig]:
    """The arms of a study, in table order: baselines, the γ grid, then the user's arms."""
    gamma = config.train.gamma
    standard = {
        "sft": ArmConfig("sft", ["sft"]),
        "dpo": ArmConfig("dpo", ["dpo"]),
        "step_dpo": ArmConfig("step_dpo", ["sppd"], train={"margin": "none"}),
        "fixed": ArmConfig("fixed", ["sppd"], train={"margin": "fixed", "gamma": gamma}),
    }
    arms = [standard[name] for name in BASELINES if name in config.baselines]
    gammas = sorted({*config.gammas, gamma}) if config.gammas else []
    arms += [
        ArmConfig(_dynamic_name(g), ["sppd"], train={"margin": "dynamic", "gamma": g})
        for g in gammas
    ]
    for index, spec in enumerate(config.arms):
        arm = config_from_dict(ArmConfig, spec, f"arms[{index}].")
        _check_name(arm.name, f"arms[{index}].name")
        arms.append(arm)
    estimators = list(config.values or {"main": {}})
    for arm in arms:
        arm.values = arm.values or estimators[0]
        if arm.values not in estimators:
            raise ConfigError(f"arm {arm.name}: unknown values {arm.values!r} (have {estimators})")
    return arms


def load_study_config(
    path: str | os.PathLike[str], overrides: list[str] | None = None
) -> StudyConfig:
    """A :class:`StudyConfig` from YAML with ``key.sub=value`` overrides (values as YAML)."""
    return load_config(StudyConfig, path, overrides)
