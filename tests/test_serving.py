"""The engine capabilities (Protocols), the factory and the run's engine owner
(``engines.serving.Policy``): what happens to an engine when the policy changes and trains.

The transformers engine is tested for real on the tiny random models. The reload / sleep
state machine is tested with a recording stand-in for a vLLM engine around our own
``Policy`` (the real vLLM engine's sleep, wake and reload: tests/test_vllm_engine.py)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from sppd_lib.config import ConfigError, EngineConfig
from sppd_lib.engines import (
    BatchScheduler,
    Continuation,
    Engine,
    ReloadingEngine,
    SamplingSettings,
    SleepingEngine,
    StreamingEngine,
    schedules_own_batch,
)
from sppd_lib.engines import serving as serving_module
from sppd_lib.engines.factory import build_engine, check_available
from sppd_lib.engines.serving import Policy
from sppd_lib.models import resolve_model

CPU = EngineConfig(device="cpu")


def test_the_transformers_engine_from_the_factory_and_its_capabilities(tiny_llama) -> None:
    path = resolve_model("tiny-llama")
    engine, tokenizer = build_engine(CPU, path)
    assert isinstance(engine, Engine)
    assert not isinstance(engine, StreamingEngine | ReloadingEngine | BatchScheduler)
    assert not schedules_own_batch(engine)
    settings = SamplingSettings(max_tokens=4, temperature=0.0, stop=None)
    ours = engine.sample([[1, 2, 3]], 1, settings)
    reference = build_engine(CPU, path, load_weights=lambda _: tiny_llama)[0]
    assert ours == reference.sample([[1, 2, 3]], 1, settings)  # the same weights, same tokens
    assert tokenizer.vocab_size == tiny_llama[1].vocab_size
    with pytest.raises(ConfigError, match="--lora is for the vLLM engine"):
        build_engine(CPU, path, lora="adapter")


def test_a_missing_engine_package_fails_before_anything_starts(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a)
    )
    with pytest.raises(ConfigError, match="engine is 'vllm' but vllm is not installed"):
        check_available(EngineConfig(kind="vllm"))
    check_available(CPU)


def test_policy_builds_the_transformers_engine_once_per_model() -> None:
    policy = Policy(CPU)
    first, path = resolve_model("tiny-llama"), resolve_model("tiny-qwen2")
    engine, _ = policy.engine(first)
    assert policy.engine(first)[0] is engine and policy.path == first
    model = policy.model
    policy.make_room_for_training()  # nothing to free: it samples from the policy's weights
    other, _ = policy.engine(path)
    assert other is not engine and policy.model is not model and policy.weights_path == path
    assert policy.engine_seconds > 0
    policy.close()


class RecordingVLLM:
    """Stands in for ``VLLMEngine`` (a sleeping, reloading, streaming-free engine): records
    the calls ``Policy`` makes, in order, into a log shared by every instance."""

    schedules_own_batch = True

    def __init__(self, path: str, log: list[str], can_sleep: bool, reloadable: set[str]) -> None:
        self.path, self.log, self.can_sleep, self.reloadable = path, log, can_sleep, reloadable
        self.asleep = False
        log.append(f"build {path}")

    def sample(
        self, prefixes: Sequence[Sequence[int]], n: int, settings: SamplingSettings
    ) -> list[list[Continuation]]:
        assert not self.asleep, "sampled while asleep"
        return [[Continuation([1], "x", [-0.1], "eos")] * n for _ in prefixes]

    def can_load_weights(self, model: str) -> bool:
        return model in self.reloadable

    def load_weights(self, model: str) -> None:
        assert not self.asleep, "weights loaded while asleep"
        if model != self.path:
            self.log.append(f"load {model}")
            self.path = model

    def close(self) -> None:
        self.log.append("close")

    def sleep(self) -> None:
        assert self.can_sleep
        self.log.append("sleep")
        self.asleep = True

    def wake_up(self) -> None:
        self.log.append("wake")
        self.asleep = False


@pytest.fixture
def recording(monkeypatch):
    """``(log, options)``: ``Policy`` builds :class:`RecordingVLLM` engines; ``options`` sets
    whether they can sleep and which models they can load in place."""
    log: list[str] = []
    options = {"can_sleep": True, "reloadable": {"a", "b", "c"}}

    def build(config, model, *, seed=0, lora=None, load_weights=None):
        engine = RecordingVLLM(model, log, options["can_sleep"], options["reloadable"])
        return engine, "tokenizer"

    monkeypatch.setattr(serving_module, "build_engine", build)
    return log, options


def test_the_stand_in_has_the_vllm_engines_capabilities() -> None:
    engine = RecordingVLLM("a", [], True, set())
    assert isinstance(engine, SleepingEngine) and isinstance(engine, ReloadingEngine)
    assert schedules_own_batch(engine) and not isinstance(engine, StreamingEngine)


def test_a_sleeping_engine_sleeps_through_training_and_wakes_for_the_next_policy(
    recording,
) -> None:
    log, options = recording
    with Policy(EngineConfig(kind="vllm", device="cuda")) as policy:
        engine, tokenizer = policy.engine("a")
        assert tokenizer == "tokenizer" and policy.engine("a")[0] is engine
        policy.make_room_for_training()
        policy.make_room_for_training()  # already asleep: once
        assert policy.asleep
        assert policy.engine("b")[0] is engine and not policy.asleep
        policy.make_room_for_training()
        # The same policy again (training found no data): wake, nothing to load.
        policy.engine("b")[0].sample([[1]], 1, SamplingSettings(max_tokens=1))
        policy.make_room_for_training()
        options["reloadable"] = set()  # a tied head with new embeddings: a new engine
        assert policy.engine("d")[0] is not engine
    assert log == [
        "build a", "sleep", "wake", "load b", "sleep", "wake", "sleep", "close", "build d",
        "close",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        # No sleep mode on a GPU: stopped before training (its KV reservation would starve
        # the trainer) and started again with the next policy.
        ("cuda", ["build a", "close", "build b", "close"]),
        # No sleep mode on a CPU (vLLM's CPU backend): it stays up and reloads in place.
        ("cpu", ["build a", "load b", "close"]),
    ],
)
def test_without_sleep_mode_the_engine_is_stopped_on_a_gpu_and_kept_on_a_cpu(
    recording, device: str, expected: list[str]
) -> None:
    log, options = recording
    options["can_sleep"] = False
    with Policy(EngineConfig(kind="vllm", device=device)) as policy:
        policy.engine("a")
        policy.make_room_for_training()
        assert not policy.asleep
        policy.engine("b")
    assert log == expected


def test_phase_commands_take_the_engine_section_of_a_run_config_and_their_flags(tmp_path):
    from sppd_lib.cli import build_parser
    from sppd_lib.cli.phase_commands import engine_config

    run = tmp_path / "run.yaml"
    run.write_text("engine: vllm\nvllm: {block_size: 64}\neval: {limit: 2}\n")
    args = build_parser().parse_args(
        ["eval", "--config", str(run), "--max-batch-rows", "8", "--tensor-parallel-size", "2"]
    )
    config = engine_config(args, "cpu")
    assert (config.kind, config.block_size, config.device) == ("vllm", 64, "cpu")
    assert (config.max_batch_rows, config.tensor_parallel_size) == (8, 2)
    args = build_parser().parse_args(["sample", "--config", str(run), "--engine",
                                      "transformers", "--out", "t.jsonl.gz"])  # fmt: skip
    assert engine_config(args, None).kind == "transformers"
    plain = build_parser().parse_args(["eval", "--dtype", "bfloat16"])
    assert engine_config(plain, None) == EngineConfig(dtype="bfloat16")
    bad = build_parser().parse_args(["eval", "--max-model-len", "0"])
    with pytest.raises(ConfigError, match=r"engine\.max_model_len must be >= 1"):
        engine_config(bad, None)
