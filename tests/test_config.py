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
