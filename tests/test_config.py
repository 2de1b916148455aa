from __future__ import annotations

import dataclasses

import pytest

from sppd_lib.config import ConfigError, EvalConfig, config_from_dict, config_to_dict, load_yaml


def test_every_field_has_help() -> None:
    for field in dataclasses.fields(EvalConfig):
        assert field.metadata.get("help"), field.name


def test_round_trip_and_overrides() -> None:
    config = config_from_dict(EvalConfig, {"benchmarks": ["arith", "gsm8k"], "limit": None})
    assert config.benchmarks == ["arith", "gsm8k"] and config.limit is None
    assert config_from_dict(EvalConfig, config_to_dict(config)) == config
    assert EvalConfig().benchmarks is not EvalConfig().benchmarks  # no shared mutable default


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"benchmark": ["gsm8k"]}, "unknown config key benchmark; valid keys: arith, arith_seed"),
        ({"limit": "ten"}, "limit must be .*'ten'"),
        ({"max_new_tokens": True}, "max_new_tokens must be int"),
        ({"benchmarks": "gsm8k"}, "benchmarks must be"),
        ({"benchmarks": [1]}, "benchmarks must be"),
    ],
)
def test_bad_values_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(EvalConfig, data)


def test_nested_keys_are_named() -> None:
    @dataclasses.dataclass
    class Outer:
        eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)

    assert config_from_dict(Outer, {"eval": {"limit": 3}}).eval.limit == 3
    with pytest.raises(ConfigError, match=r"unknown config key eval\.limt"):
        config_from_dict(Outer, {"eval": {"limt": 3}})
    with pytest.raises(ConfigError, match="eval must be a mapping"):
        config_from_dict(Outer, {"eval": 3})


def test_load_yaml_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:2:1: invalid YAML: expected ',' or ']'"):
        load_yaml(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_yaml(listing)
    good = tmp_path / "good.yaml"
    good.write_text("limit: 4\nbenchmarks: [arith]\n")
    assert config_from_dict(EvalConfig, load_yaml(good)).limit == 4


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("ray.engines=0", r"ray\.engines must be >= 1, got 0"),
        ("ray.gpus_per_engine=-1", r"ray\.gpus_per_engine must be >= 0"),
        ("ray.cpus_per_engine=0", r"ray\.cpus_per_engine must be > 0"),
        ("ray.address=''", r"ray\.address must be null"),
        ("ray.adress=auto", r"unknown config key ray\.adress"),
        ("ray.env_vars={A: 1}", r"ray\.env_vars\.A must be a string"),
    ],
)
def test_bad_ray_settings_name_the_key(override: str, message: str) -> None:
    from pathlib import Path

    from sppd_lib.config import load_run_config

    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
    with pytest.raises(ConfigError, match=message):
        load_run_config(smoke, [override])
    assert load_run_config(smoke).ray.address is None  # no Ray unless asked


@pytest.mark.parametrize(
    ("override", "package", "message"),
    [
        ("ray.address=auto", "ray", r"ray\.address is 'auto' but ray is not installed"),
        ("engine=vllm", "vllm", r"engine is 'vllm' but vllm is not installed: make setup"),
    ],
)
def test_a_run_without_its_optional_package_fails_at_start(
    tmp_path, monkeypatch, override: str, package: str, message: str
) -> None:
    import importlib.util
    from pathlib import Path

    from sppd_lib.config import load_run_config
    from sppd_lib.loop import check_run

    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
    config = load_run_config(smoke, [override])
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a)
    )
    with pytest.raises(ConfigError, match=message):
        check_run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_engine_section_shorthand_and_overrides() -> None:
    from pathlib import Path

    from sppd_lib.config import EngineConfig, load_run_config

    configs = Path(__file__).resolve().parents[1] / "configs"
    for field in dataclasses.fields(EngineConfig):
        assert field.metadata.get("help"), field.name
    demo = load_run_config(configs / "demo.yaml")  # `engine: vllm`, a string: the kind
    assert demo.engine == EngineConfig(kind="vllm")
    # `--set engine=KIND` changes the kind only; the rest of the file's section stays.
    paper = load_run_config(configs / "paper_qwen2.5_7b.yaml", ["engine=transformers"])
    assert paper.engine.kind == "transformers" and paper.engine.gpu_memory_utilization == 0.9
    # Tensor parallelism without Ray: a plain run's setting now.
    smoke = load_run_config(configs / "smoke.yaml", ["engine.tensor_parallel_size=2"])
    assert smoke.engine.tensor_parallel_size == 2 and smoke.ray.address is None
    both = load_run_config(configs / "smoke.yaml", ["engine=vllm", "engine.block_size=16"])
    assert (both.engine.kind, both.engine.block_size) == ("vllm", 16)
    assert config_from_dict(EngineConfig, config_to_dict(demo.engine)) == demo.engine


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("engine=tgi", r"engine\.kind must be one of \('transformers', 'vllm'\), not 'tgi'"),
        ("engine.tensor_parallel_size=0", r"engine\.tensor_parallel_size must be >= 1"),
        ("engine.gpu_memory_utilization=1.5", r"engine\.gpu_memory_utilization must be in"),
        ("engine.sleep_level=3", r"engine\.sleep_level must be one of"),
        ("engine.device=gpu", r"engine\.device must be cpu, cuda"),
        ("engine.blocksize=8", r"unknown config key engine\.blocksize"),
        ("engine=[vllm]", r"engine must be a mapping"),
    ],
)
def test_bad_engine_settings_name_the_key(override: str, message: str) -> None:
    from pathlib import Path

    from sppd_lib.config import load_run_config

    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
    with pytest.raises(ConfigError, match=message):
        load_run_config(smoke, [override])


def test_old_vllm_section_loads_into_the_engine_section(tmp_path, caplog) -> None:
    from sppd_lib.config import load_run_config

    old = tmp_path / "old.yaml"
    old.write_text("engine: vllm\nvllm:\n  block_size: 64\n")
    with caplog.at_level("WARNING"):
        config = load_run_config(old)
    assert (config.engine.kind, config.engine.block_size) == ("vllm", 64)
    assert "vllm.block_size moved to engine.block_size" in caplog.text
    clash = tmp_path / "clash.yaml"
    clash.write_text("engine: {kind: vllm, block_size: 16}\nvllm: {block_size: 64}\n")
    with pytest.raises(ConfigError, match=r"vllm\.block_size and engine\.block_size both given"):
        load_run_config(clash)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("vllm: {block_size: 64, swap_space: 4}\n")
    with pytest.raises(ConfigError, match="unknown config key vllm"):
        load_run_config(unknown)


def test_ray_actors_need_the_engines_gpus() -> None:
    from pathlib import Path

    from sppd_lib.config import load_run_config

    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
    settings = ["ray.address=auto", "engine.tensor_parallel_size=2"]
    with pytest.raises(ConfigError, match=r"ray\.gpus_per_engine \(1\) must equal engine"):
        load_run_config(smoke, [*settings, "ray.gpus_per_engine=1"])
    with pytest.raises(ConfigError, match=r"ray\.gpus_per_engine \(2\) must equal engine"):
        load_run_config(smoke, ["ray.address=auto", "ray.gpus_per_engine=2"])  # the old meaning
    assert (
        load_run_config(smoke, [*settings, "ray.gpus_per_engine=2"]).engine.tensor_parallel_size
        == 2
    )


def test_a_run_saved_with_the_old_engine_keys_resumes(tmp_path) -> None:
    """A run directory written before the engine section (``engine: vllm`` and a ``vllm:``
    section in its config.yaml) resumes under the same settings; the engine's device layout
    may change on resume, what it samples may not."""
    from pathlib import Path

    import yaml

    from sppd_lib.config import load_run_config
    from sppd_lib.loop import start_run_dir

    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
    config = load_run_config(smoke, ["engine=vllm"])
    saved = config_to_dict(config)
    saved["engine"], saved["vllm"] = "vllm", {"block_size": config.engine.block_size}
    run_dir = tmp_path / "run"
    (run_dir / "iter_0").mkdir(parents=True)
    (run_dir / "iter_0" / "eval.parquet").write_bytes(b"started")  # it holds an artifact
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    start_run_dir(config, run_dir)
    start_run_dir(load_run_config(smoke, ["engine=vllm", "engine.tensor_parallel_size=2"]), run_dir)
    with pytest.raises(ConfigError, match=r"changed: engine\.block_size"):
        start_run_dir(load_run_config(smoke, ["engine=vllm", "engine.block_size=16"]), run_dir)
