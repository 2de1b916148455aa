"""The run config: model, curriculum, engine and the config of every phase (a section each);
the sections a margin study shares with it (``RunSections``)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from sppd_lib.config.engine import EngineConfig, check_device_name
from sppd_lib.config.loading import (
    ConfigError,
    check_choices,
    check_finite,
    check_plain_name,
    check_ranges,
    config_from_dict,
    config_to_dict,
    load_config,
    option,
)
from sppd_lib.config.phases import (
    PAPER,
    PHASES,
    EvalConfig,
    PairConfig,
    Phase,
    SamplerConfig,
    TrainConfig,
    generator_options,
)
from sppd_lib.data import DataError, check_data_name

__all__ = ["DataConfig", "RayConfig", "RunConfig", "RunSections", "load_run_config"]


@dataclass
class DataConfig:
    """Training prompts of the loop."""

    name: str = option("arith", "Data set of the training prompts: arith, gsm8k, math, ...")
    split: str = option("train", "Split of the training prompts.")
    prompts_per_iteration: int = option(
        32, f"Problems sampled into trees per iteration ({PAPER}: 10k prompts)."
    )
    fresh_prompts: bool = option(
        True, "Each iteration takes the next prompts (true) or reuses the same ones (false)."
    )
    mix: dict[str, float] = option(
        {}, f"Mix of data sets by share, e.g. {{gsm8k: 0.4, math: 0.6}} ({PAPER}); overrides name."
    )
    arith: dict[str, Any] = option(
        {}, "Options of generated arithmetic (data.generate_arithmetic): max_terms, digits, ..."
    )
    arith_seed: int = option(0, "Seed of the generated arithmetic training problems.")

    def __post_init__(self) -> None:
        check_finite(self, "data.")
        check_ranges(
            self, "data.", {"prompts_per_iteration": (self.prompts_per_iteration >= 1, ">= 1")}
        )
        for name, share in self.mix.items():
            if not (isinstance(share, int | float) and 0 < share < math.inf):
                raise ConfigError(f"data.mix.{name} must be a share > 0, got {share!r}")

    def problem_options(self, name: str) -> dict[str, Any]:
        """Keyword options of ``load_problems`` for data set ``name``."""
        return generator_options(name, self.arith_seed, self.arith)


@dataclass
class RayConfig:
    """Tree sampling and evaluation on a Ray cluster: ``engines`` actors, each owning one
    engine (``engine:``), kept alive across iterations; null ``address`` runs without Ray.
    The layout does not change the results (see ``sppd_lib.ray_sampling``)."""

    address: str | None = option(
        None,
        "Ray cluster: null (no Ray), 'local' (start one on this machine), 'auto' (the cluster "
        "this machine belongs to, after `ray start`) or an address ('HOST:6379', "
        "'ray://HOST:10001'). Needs the ray extra (pip install -e .[ray]).",
    )
    engines: int = option(1, "Engine actors (one engine each, e.g. one per GPU).")
    gpus_per_engine: int = option(
        1, "GPUs Ray reserves per actor: engine.tensor_parallel_size, or 0 for CPU actors."
    )
    cpus_per_engine: float = option(1.0, "CPUs Ray reserves per actor.")
    tasks_per_engine: int = option(
        2, "Tasks queued on an actor at once (one runs, the next waits: no idle gap)."
    )
    max_restarts: int = option(
        3, "Actors that may die per phase: each is replaced and its unfinished work redone."
    )
    env_vars: dict[str, str] = option(
        {}, "Environment of the actors (the driver's PYTHONPATH is passed on too)."
    )

    def __post_init__(self) -> None:
        check_finite(self, "ray.")
        check_ranges(
            self,
            "ray.",
            {
                "engines": (self.engines >= 1, ">= 1"),
                "gpus_per_engine": (self.gpus_per_engine >= 0, ">= 0"),
                "cpus_per_engine": (self.cpus_per_engine > 0, "> 0"),
                "tasks_per_engine": (self.tasks_per_engine >= 1, ">= 1"),
                "max_restarts": (self.max_restarts >= 0, ">= 0"),
            },
        )
        if self.address is not None and not self.address.strip():
            raise ConfigError("ray.address must be null, 'local', 'auto' or HOST:PORT, not ''")
        for key, value in self.env_vars.items():
            if not isinstance(value, str):
                raise ConfigError(f"ray.env_vars.{key} must be a string, got {value!r}")


@dataclass
class RunSections:
    """What a run and a margin study share: the policy, its engine and the config of every
    phase (a study's arms are runs of one iteration built from these sections)."""

    model: str = option(
        "smollm2-135m-instruct", "Starting policy (alias, directory, .gguf, hub id)."
    )
    device: str | None = option(None, "cpu or cuda (default: cuda if present).")
    engine: EngineConfig = field(
        default_factory=EngineConfig,
        metadata={"help": "The policy's engine; a string is its kind (engine: vllm)."},
    )
    phase_train: dict[str, dict[str, Any]] = option(
        {}, "Train settings per phase over `train`, e.g. {sft: {optimizer: adamw, ...}}."
    )
    sft_per_problem: int = option(4, "τ+ paths per problem for the sft phase.")
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Training prompts."})
    sampler: SamplerConfig = field(default_factory=SamplerConfig, metadata={"help": "Sampler."})
    pairs: PairConfig = field(default_factory=PairConfig, metadata={"help": "Values, pairs."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "Training."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Evaluation."})
    ray: RayConfig = field(
        default_factory=RayConfig, metadata={"help": "Sampling and evaluation on Ray actors."}
    )

    def check_sections(self) -> None:
        """Checks across the shared sections (their own ``__post_init__`` checked each)."""
        if self.sft_per_problem < 1:
            raise ConfigError(f"sft_per_problem must be >= 1, got {self.sft_per_problem}")
        check_device_name(self.device, "device")
        for phase, settings in self.phase_train.items():
            if phase not in PHASES:
                raise ConfigError(f"phase_train: unknown phase {phase!r} (choose from {PHASES})")
            settings = {**config_to_dict(self.train), **settings, "phase": phase}
            config_from_dict(TrainConfig, settings, f"phase_train.{phase}.")
        for key, names in (
            ("eval.benchmarks", self.eval.benchmarks),
            ("data.name", [] if self.data.mix else [self.data.name]),
            ("data.mix", list(self.data.mix)),
        ):
            for name in names:
                try:
                    check_data_name(name)
                except DataError as exc:
                    raise ConfigError(f"{key}: {exc}") from None
        gpus, parallel = self.ray.gpus_per_engine, self.engine.tensor_parallel_size
        if self.ray.address is not None and gpus > 0 and gpus != parallel:
            # gpus_per_engine once set vLLM's tensor-parallel size: say so, not waste GPUs.
            raise ConfigError(
                f"ray.gpus_per_engine ({gpus}) must equal engine.tensor_parallel_size "
                f"({parallel}): each actor's engine spreads over its GPUs (set "
                "engine.tensor_parallel_size, or gpus_per_engine: 0 for CPU actors)"
            )


@dataclass
class RunConfig(RunSections):
    """A whole SPPD run: model, curriculum and the config of every phase."""

    run_id: str = option("sppd", "Name of the run; its directory is runs/<run_id>.")
    iterations: int = option(
        2, f"Self-training iterations after iteration 0 (evaluation only); {PAPER}: 2 stages."
    )
    phases: list[Phase] = option(["sppd"], "Training phases of every iteration, in order.")
    first_phases: list[Phase] | None = option(
        None,
        f"Phases of iteration 1 if different, e.g. [sft, dpo, sppd] for a base model ({PAPER} "
        "stage 1).",
    )
    report: bool = option(True, "`sppd run` ends by writing HTML reports (see report_dir).")
    report_dir: str | None = option(
        None, "Where `sppd run` writes its reports; null: <run_dir>/../reports/<run_dir name>."
    )

    def __post_init__(self) -> None:
        check_choices(self, "")
        check_plain_name(self.run_id, "run_id")
        if self.iterations < 0:
            raise ConfigError(f"iterations must be >= 0, got {self.iterations}")
        self.check_sections()
        for key in ("phases", "first_phases"):
            for phase in getattr(self, key) or []:
                if phase not in PHASES:
                    raise ConfigError(f"{key}: unknown phase {phase!r} (choose from {PHASES})")
        if not self.phases:
            raise ConfigError("phases must name at least one phase")

    def phases_of(self, iteration: int) -> list[str]:
        return list(self.first_phases or self.phases) if iteration == 1 else list(self.phases)


def load_run_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> RunConfig:
    """A ``RunConfig`` from YAML, with ``key.sub=value`` overrides (values parsed as YAML).

    Raises:
        ConfigError: missing file, unknown key or wrong type, naming the key.
    """
    return load_config(RunConfig, path, overrides)
