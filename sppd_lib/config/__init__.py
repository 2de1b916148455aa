"""Every config of the workbench, in one package: the phase configs (``phases``: sampler,
pairs, train, eval), the engine section (``engine``), the run config (``run``), the margin
study's (``study``), their strict loading (``loading``) and the CLI flags generated from them
(``flags``).

Nothing here imports torch or transformers, so a config can be read and checked anywhere.
"""

from sppd_lib.config.engine import (
    ENGINE_KINDS,
    EngineConfig,
    EngineKind,
    migrate_engine_keys,
    upgrade_engine_section,
)
from sppd_lib.config.flags import add_config_flags, flag_overrides
from sppd_lib.config.loading import (
    ConfigError,
    apply_overrides,
    check_choices,
    check_ranges,
    config_from_dict,
    config_to_dict,
    load_config,
    load_yaml,
    migrate_margin_keys,
    option,
    parse_yaml,
)
from sppd_lib.config.phases import (
    MARGIN_MODES,
    PHASES,
    EvalConfig,
    PairConfig,
    SamplerConfig,
    TrainConfig,
    generator_options,
)
from sppd_lib.config.run import DataConfig, RayConfig, RunConfig, RunSections, load_run_config
from sppd_lib.config.study import (
    BASELINES,
    START,
    ArmConfig,
    StudyConfig,
    load_study_config,
    resolve_arms,
)

__all__ = [
    "BASELINES",
    "ENGINE_KINDS",
    "MARGIN_MODES",
    "PHASES",
    "START",
    "ArmConfig",
    "ConfigError",
    "DataConfig",
    "EngineConfig",
    "EngineKind",
    "EvalConfig",
    "PairConfig",
    "RayConfig",
    "RunConfig",
    "RunSections",
    "SamplerConfig",
    "StudyConfig",
    "TrainConfig",
    "add_config_flags",
    "apply_overrides",
    "check_choices",
    "check_ranges",
    "config_from_dict",
    "config_to_dict",
    "flag_overrides",
    "generator_options",
    "load_config",
    "load_run_config",
    "load_study_config",
    "load_yaml",
    "migrate_engine_keys",
    "migrate_margin_keys",
    "option",
    "parse_yaml",
    "resolve_arms",
    "upgrade_engine_section",
]
