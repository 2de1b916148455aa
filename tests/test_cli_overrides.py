"""One override rule for every command: defaults < --config < --set < explicit flags; flags
that cannot work are not offered; --version."""

from __future__ import annotations

from pathlib import Path

import pytest

from sppd_lib.cli import build_parser, main
from sppd_lib.cli.common import config_from_args
from sppd_lib.config import (
    ConfigError,
    PairConfig,
    RunConfig,
    TrainConfig,
    flag_overrides,
    load_run_config,
)

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def _args(*argv: str):
    return build_parser().parse_args(list(argv))


def test_phase_command_precedence(tmp_path) -> None:
    config = tmp_path / "pairs.yaml"
    config.write_text("threshold: 0.1\npairing: best_worst\n")
    base = ["pairs", "--trees", "t.gz", "--out", "p.parquet", "--config", str(config)]
    assert config_from_args(PairConfig, _args(*base), "pairs").threshold == 0.1
    with_set = [*base, "--set", "pairs.threshold=0.2"]
    assert config_from_args(PairConfig, _args(*with_set), "pairs").threshold == 0.2
    assert (
        config_from_args(PairConfig, _args(*base, "--set", "threshold=0.2"), "pairs").threshold
        == 0.2
    )
    flagged = config_from_args(PairConfig, _args(*with_set, "--threshold", "0.3"), "pairs")
    assert flagged.threshold == 0.3 and flagged.pairing == "best_worst"


def test_train_takes_sections_of_a_run_config() -> None:
    argv = ["train", "--trees", "t.gz", "--out", "o", "--config", str(SMOKE)]
    argv += ["--set", "train.beta=0.3", "--set", "threshold=0.25", "--epochs", "3"]
    args = _args(*argv)
    train = config_from_args(TrainConfig, args, "train")
    pairs = config_from_args(PairConfig, args, "pairs")
    assert (train.beta, train.epochs, train.lora_r) == (0.3, 3, 8)  # lora_r from the file
    assert pairs.threshold == 0.25 and pairs.value == "prm"


def test_unknown_set_key_is_one_line_error(capsys) -> None:
    with pytest.raises(ConfigError, match=r"sampler\.k: not a key of this command"):
        config_from_args(
            PairConfig,
            _args("pairs", "--trees", "t", "--out", "o", "--set", "sampler.k=3"),
            "pairs",
        )
    assert main(["pairs", "--trees", "t", "--out", "o", "--set", "nonsense=1"]) == 2
    assert "not a key of this command" in capsys.readouterr().err


def test_run_precedence_with_section_flags() -> None:
    args = _args("run", "--config", str(SMOKE), "--set", "sampler.k=3", "--set", "iterations=4")
    config = load_run_config(args.config, [*args.set, *flag_overrides(args, RunConfig)])
    assert (config.sampler.k, config.iterations, config.sampler.c) == (3, 4, 2)
    args = _args(
        *("run", "--config", str(SMOKE), "--set", "sampler.k=3", "--sampler.k", "5"),
        *("--train.report-to", "tensorboard", "--no-report", "--data.mix", "{gsm8k: 1}"),
    )
    config = load_run_config(args.config, [*args.set, *flag_overrides(args, RunConfig)])
    assert config.sampler.k == 5 and config.train.report_to == ["tensorboard"]
    assert config.report is False and config.data.mix == {"gsm8k": 1}


@pytest.mark.parametrize("command", ["pairs", "train"])
def test_flags_that_cannot_work_are_not_offered(command: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "--rollouts" not in text and "--set" in text and "--config" in text


@pytest.mark.parametrize("command", ["sample", "eval", "pairs", "train", "run", "study"])
def test_every_command_takes_config_and_set(command: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "--config" in text and "--set KEY=VALUE" in text


def test_help_texts_say_what_the_commands_do(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["pairs", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "and their margins" not in text and "mc, bellman or a PRM" in text
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "maj@N" in " ".join(capsys.readouterr().out.split())


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("sppd ")
