"""The engine section: which engine samples and evaluates, and how it uses its device.

One section for ``sppd run``, ``sppd study`` and the phase commands (``sppd sample``, ``sppd
eval``, whose flags are generated from it). A string stands for the kind: ``engine: vllm`` in a
file and ``--set engine=transformers`` mean ``engine: {kind: ...}``. The old ``vllm:`` section
(``block_size``) is read into this one with a warning (:func:`migrate_engine_keys`).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from sppd_lib.config.loading import ConfigError, check_choices, check_ranges, option

__all__ = [
    "ENGINE_KINDS",
    "LAYOUT_KEYS",
    "EngineConfig",
    "EngineKind",
    "check_device_name",
    "migrate_engine_keys",
    "upgrade_engine_section",
]

logger = logging.getLogger(__name__)

_DEVICE = re.compile(r"cpu|cuda(:\d+)?|mps")


def check_device_name(device: str | None, key: str) -> None:
    """A device name torch knows (``cpu``, ``cuda``, ``cuda:N``, ``mps``) or ``None``."""
    if device is not None and not _DEVICE.fullmatch(device):
        raise ConfigError(f"{key} must be cpu, cuda, cuda:N, mps or null, not {device!r}")


#: The engines; adding one is a module in ``sppd_lib.engines``, a branch of
#: ``sppd_lib.engines.factory.build_engine`` and a value here.
EngineKind = Literal["transformers", "vllm"]
ENGINE_KINDS: tuple[str, ...] = typing.get_args(EngineKind)


@dataclass
class EngineConfig:
    """The policy's engine (sampling, rollouts, evaluation). Settings that an engine does not
    use are ignored by it (each help text names its engine)."""

    #: A section written as a plain string sets this field (``engine: vllm``).
    shorthand: ClassVar[str] = "kind"

    kind: EngineKind = option(
        "transformers",
        "Engine: 'transformers' (our step engine over the policy's weights) or 'vllm' "
        "(needs vLLM: `make setup`).",
    )
    device: str | None = option(None, "Device of the engine; null: the run's `device`.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = option(
        "auto",
        "Weights' dtype; auto: float32 on CPU, on a GPU bfloat16 (transformers) or the "
        "checkpoint's (vllm).",
    )
    tensor_parallel_size: int = option(
        1, "GPUs one vLLM engine spreads the model over (vllm; with Ray: per actor)."
    )
    max_model_len: int = option(4096, "Longest prompt + response in tokens (vllm).")
    gpu_memory_utilization: float | None = option(
        None,
        "Share of GPU memory vLLM reserves for weights and KV cache (vllm); on CPU the share "
        "of RAM for the KV cache. null: 0.9 on a GPU, 0.25 on CPU.",
    )
    block_size: int | None = option(
        32,
        "Tokens per KV-cache block (vllm). Prefix caching shares whole blocks only, so a tree "
        "whose steps are a few dozen tokens long shares little of its prefixes with big "
        "blocks: 32 was fastest per complete path for SmolLM2-135M trees on CPU "
        "(docs/results/benchmarks.md, sampler benchmark). null: vLLM's default (128 on CPU, "
        "16 on GPUs). Cached prefixes "
        "make trees less exactly reproducible (docs/concepts/determinism.md).",
    )
    enable_sleep_mode: bool = option(
        True,
        "Put vLLM to sleep during training and wake it after, instead of stopping and "
        "restarting it (vllm, GPUs only: vLLM's CPU backend has no sleep mode, and there the "
        "engine simply stays up).",
    )
    sleep_level: Literal[1, 2] = option(
        1,
        "vLLM sleep level: 1 moves the weights to CPU RAM and drops the KV cache; 2 drops "
        "both (less RAM; the next policy's weights are loaded on waking either way).",
    )
    max_batch_rows: int = option(64, "Rows decoded together (transformers).")
    vllm_args: dict[str, Any] = option(
        {}, "Further keyword arguments of vllm.LLM, e.g. {enforce_eager: true} (vllm)."
    )

    def __post_init__(self) -> None:
        check_choices(self, "engine.")
        check_ranges(
            self,
            "engine.",
            {
                "tensor_parallel_size": (self.tensor_parallel_size >= 1, ">= 1"),
                "max_model_len": (self.max_model_len >= 1, ">= 1"),
                "gpu_memory_utilization": (
                    self.gpu_memory_utilization is None or 0 < self.gpu_memory_utilization <= 1,
                    "in (0, 1] or null",
                ),
                "block_size": (self.block_size is None or self.block_size >= 1, ">= 1 or null"),
                "max_batch_rows": (self.max_batch_rows >= 1, ">= 1"),
            },
        )
        check_device_name(self.device, "engine.device")


#: Keys of the old ``vllm:`` section that now live in ``engine:``.
MOVED_VLLM_KEYS = ("block_size",)


def migrate_engine_keys(data: dict[str, Any], where: str) -> None:
    """Bring an older config mapping to the ``engine:`` section in place: ``engine: KIND``
    becomes ``engine: {kind: KIND}`` and the old ``vllm:`` section's keys move into it (with
    a warning). A key given in both places is an error; a ``vllm:`` key that was never there
    stays and is reported by the loader as unknown."""
    engine = data.get("engine")
    if isinstance(engine, str):
        data["engine"] = engine = {EngineConfig.shorthand: engine}
    old = data.get("vllm")
    if not isinstance(old, dict):
        return
    if engine is None:
        data["engine"] = engine = {}
    if not isinstance(engine, dict):
        return  # the loader names the wrong type
    for key in [k for k in old if k in MOVED_VLLM_KEYS]:
        if key in engine:
            raise ConfigError(f"{where}: vllm.{key} and engine.{key} both given; keep engine.{key}")
        engine[key] = old.pop(key)
        logger.warning("%s: vllm.%s moved to engine.%s", where, key, key)
    if not old:
        del data["vllm"]


#: Engine settings that change how fast, not what, a run samples (like the ``ray:`` layout):
#: a resumed run may change them.
LAYOUT_KEYS = (
    "device",
    "tensor_parallel_size",
    "gpu_memory_utilization",
    "enable_sleep_mode",
    "sleep_level",
)


def upgrade_engine_section(data: dict[str, Any], where: str) -> None:
    """An older run's or study's saved config (``config.yaml``) as it is written today, in
    place: the engine section migrated (:func:`migrate_engine_keys`) and completed with the
    defaults of fields it predates, so resuming it compares like with like."""
    migrate_engine_keys(data, where)
    engine = data.get("engine")
    if isinstance(engine, dict):
        data["engine"] = {**dataclasses.asdict(EngineConfig()), **engine}
