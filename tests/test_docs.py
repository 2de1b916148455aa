"""The docs stay true: every `sppd ...` command written in a code block of README.md or docs/
parses with the real command-line parser (run and study commands also load their config with
their --set overrides), every key of a YAML block is a real config key, and the worked example
config (configs/your_gpu.yaml) validates and runs end to end on the tiny model.

`make docs` (in `make test`) builds the site with `mkdocs build --strict`, which checks links,
anchors and the generated reference pages."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import shlex
import typing
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from sppd_lib.cli import build_parser, main
from sppd_lib.config import (
    ArmConfig,
    PairConfig,
    RunConfig,
    StudyConfig,
    TrainConfig,
    load_run_config,
    load_study_config,
)
from sppd_lib.data import load_problems, parse_data_spec

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
WORKED_EXAMPLE = ROOT / "configs" / "your_gpu.yaml"
_FENCE = re.compile(r"^( *)```(\w*)[^\n]*\n(.*?)^\1```", re.S | re.M)
#: Keys that make a YAML block a study config rather than a run config.
_STUDY_KEYS = {f.name for f in dataclasses.fields(StudyConfig)} - {
    f.name for f in dataclasses.fields(RunConfig)
}


def code_blocks(path: Path) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced code block of a markdown file (indented fences in
    lists included)."""
    blocks = []
    for match in _FENCE.finditer(path.read_text(encoding="utf-8")):
        indent = len(match.group(1))
        body = "\n".join(line[indent:] for line in match.group(3).splitlines())
        blocks.append((match.group(2), body))
    return blocks


def sppd_commands(body: str) -> list[list[str]]:
    """The arguments of every `sppd` invocation in a shell block: `sppd ...`,
    `.venv/bin/sppd ...` or `... -m sppd_lib.cli ...` (e.g. under `accelerate launch`)."""
    found = []
    for line in body.replace("\\\n", " ").splitlines():
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            continue
        for i, token in enumerate(tokens):
            if token == "sppd" or token.endswith("/sppd"):
                args = tokens[i + 1 :]
                if args and args[0].endswith(":"):
                    break  # printed output ("sppd run: error: ..."), not a command
            elif token == "-m" and tokens[i + 1 : i + 2] == ["sppd_lib.cli"]:
                args = tokens[i + 2 :]
            else:
                continue
            for end, arg in enumerate(args):  # a command ends at a shell operator
                if arg in ("&&", "||", "|", ";"):
                    args = args[:end]
                    break
            found.append(args)
            break
    return found


def documented_commands() -> list[tuple[str, list[str]]]:
    return [
        (f"{path.relative_to(ROOT)}: sppd {shlex.join(args)}", args)
        for path in DOC_FILES
        for language, body in code_blocks(path)
        if language in ("", "bash", "sh", "shell", "console", "text")
        for args in sppd_commands(body)
    ]


def yaml_blocks() -> list[tuple[str, Any]]:
    return [
        (f"{path.relative_to(ROOT)} block {n}", yaml.safe_load(body))
        for path in DOC_FILES
        for n, (language, body) in enumerate(code_blocks(path))
        if language in ("yaml", "yml")
    ]


def test_the_docs_show_commands_and_configs() -> None:
    # Guards the extraction itself: the README and the how-to pages are full of commands.
    commands = documented_commands()
    assert len(commands) >= 30, [where for where, _ in commands]
    assert {args[0] for _, args in commands} >= {"run", "study", "eval", "sample", "pairs"}
    assert any("README.md" in where for where, _ in commands)
    assert len(yaml_blocks()) >= 3


@pytest.mark.parametrize(("where", "args"), documented_commands(), ids=lambda v: str(v)[:80])
def test_documented_command_parses(where: str, args: list[str], monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # the docs' paths are relative to the repository root
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            parsed = build_parser().parse_args(args)
        except SystemExit as exc:  # argparse's way to reject (2) or to print --help (0)
            assert exc.code == 0, f"{where}\n{stderr.getvalue()}"
            return
    config = getattr(parsed, "config", None)
    if parsed.command in ("run", "study") and (ROOT / config).is_file():
        load = load_run_config if parsed.command == "run" else load_study_config
        load(config, parsed.set)  # raises ConfigError naming a wrong key or value


def test_documented_make_targets_exist() -> None:
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    shown = set()
    for path in DOC_FILES:
        for language, body in code_blocks(path):
            if language in ("", "bash", "sh", "shell", "console"):
                for line in body.replace("\\\n", " ").splitlines():  # continuations joined
                    if line.startswith("make "):
                        tokens = shlex.split(line, comments=True)
                        shown |= {t for t in tokens[1:] if "=" not in t}
    assert {"demo", "test", "setup", "docs"} <= shown
    assert shown <= targets, shown - targets


def _unknown_keys(data: Any, cls: type, where: str) -> list[str]:
    """Dotted keys of ``data`` that ``cls`` (a config dataclass) does not have."""
    if not isinstance(data, dict):
        return []
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = [f"{where}{key}" for key in data if key not in names]
    for key, value in data.items():
        if key not in names:
            continue
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            unknown += _unknown_keys(value, annotation, f"{where}{key}.")
        elif key == "phase_train":
            for phase, settings in (value or {}).items():
                unknown += _unknown_keys(settings, TrainConfig, f"{where}phase_train.{phase}.")
        elif key == "values" and cls is StudyConfig:
            for name, settings in (value or {}).items():
                unknown += _unknown_keys(settings, PairConfig, f"{where}values.{name}.")
        elif key == "arms":
            for n, arm in enumerate(value or []):
                unknown += _unknown_keys(arm, ArmConfig, f"{where}arms[{n}].")
                train = arm.get("train") if isinstance(arm, dict) else None
                unknown += _unknown_keys(train, TrainConfig, f"{where}arms[{n}].train.")
    return unknown


@pytest.mark.parametrize(("where", "data"), yaml_blocks(), ids=lambda v: str(v)[:60])
def test_documented_yaml_keys_exist(where: str, data: Any) -> None:
    assert isinstance(data, dict), f"{where}: not a mapping"
    cls = StudyConfig if set(data) & _STUDY_KEYS else RunConfig
    assert _unknown_keys(data, cls, "") == [], where


def test_worked_example_config_validates_and_its_data_loads(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    config = load_run_config(WORKED_EXAMPLE)
    name, path = parse_data_spec(config.data.name)
    train = load_problems(name, config.data.split, path=path)
    # Fresh prompts every iteration: the shipped file covers every iteration.
    assert len(train) >= config.iterations * config.data.prompts_per_iteration
    own = [parse_data_spec(spec) for spec in config.eval.benchmarks if "=" in spec]
    assert own, "the worked example evaluates on a file of the user's"
    for bench, file in own:
        held_out = load_problems(bench, config.eval.split, path=file)
        assert held_out and not {p.question for p in held_out} & {p.question for p in train}


def test_worked_example_runs_on_the_tiny_model(tmp_path, monkeypatch, capsys) -> None:
    """The worked example's files through the whole loop, on CPU: the tiny random model in
    place of the user's, the transformers engine in place of vLLM, and (a random model never
    answers right) the tiny PRM's values so that pairs exist, as in configs/smoke.yaml."""
    monkeypatch.chdir(ROOT)
    settings = [
        "model=tiny-llama", "device=cpu", "engine=transformers", "iterations=1",
        "report=false", "data.prompts_per_iteration=4", "sampler.k=4",
        "sampler.max_step_tokens=12", "sampler.max_depth=3", "sampler.max_total_tokens=36",
        "sampler.answer_format=any", "pairs.value=prm", "pairs.prm_model=tiny-prm",
        "pairs.threshold=0.0", "train.batch_size=4", "train.epochs=1", "train.lora_r=8",
        "eval.benchmarks=[mine=examples/data/test.jsonl]", "eval.limit=4",
        "eval.max_new_tokens=16", "eval.batch_size=4",
    ]  # fmt: skip
    run_dir = tmp_path / "your_gpu"
    args = ["run", "--config", str(WORKED_EXAMPLE), "--run-dir", str(run_dir)]
    assert main([*args, *(a for s in settings for a in ("--set", s))]) == 0
    assert "pass@1 by iteration" in capsys.readouterr().out
    for name in ("trees.jsonl.gz", "pairs.parquet", "eval.parquet"):
        assert (run_dir / "iter_1" / name).is_file(), name
    evaluated = pd.read_parquet(run_dir / "iter_1" / "eval.parquet")
    assert set(evaluated["benchmark"]) == {"mine"} and len(evaluated) == 4


def test_the_checks_catch_mistakes() -> None:
    body = (
        "make demo\n.venv/bin/sppd run --config configs/demo.yaml \\\n    --set sampler.k=16  # x\n"
        "accelerate launch -m sppd_lib.cli train --pairs p.parquet --out o && ls\n"
    )
    assert sppd_commands(body) == [
        ["run", "--config", "configs/demo.yaml", "--set", "sampler.k=16"],
        ["train", "--pairs", "p.parquet", "--out", "o"],
    ]
    assert _unknown_keys({"sampler": {"kk": 1}, "iterations": 2}, RunConfig, "") == ["sampler.kk"]
    study = {"arms": [{"name": "a", "train": {"gama": 1}}], "values": {"m": {"vlue": "mc"}}}
    assert _unknown_keys(study, StudyConfig, "") == ["arms[0].train.gama", "values.m.vlue"]
