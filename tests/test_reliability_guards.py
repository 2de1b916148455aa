"""Issue 26 (reliability, round two), defects 1, 2, 3, 5 and 9: no user file replaced, every
numeric setting finite and in range, no NaN phase called done, no study mixing its data, and
signals and paths handled. Each test reproduces one defect (numbered as in the issue) on the
tiny models and the smoke configs.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from sppd_lib.cli import main
from sppd_lib.config import PairConfig
from sppd_lib.data import load_problems
from sppd_lib.files import check_writable, made_by_sppd, write_parquet_atomic
from sppd_lib.pairs import build_pairs, write_pairs
from sppd_lib.tree import read_trees, write_trees

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
PRECIOUS = "precious\n"


def _err(capsys) -> str:
    """stderr of the last command, checked to be one line without a traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "please report" not in err, err
    return err


@pytest.fixture(scope="module")
def trees_file(tmp_path_factory) -> Path:
    """Real trees of the tiny model, leaves graded by a seeded coin (tests/run_fixture.py)."""
    import random

    from tests.run_fixture import _grade_leaves, _sample

    trees = _sample(load_problems("arith", "train", limit=3), seed=0)
    _grade_leaves(trees, random.Random(0))
    path = tmp_path_factory.mktemp("trees") / "trees.jsonl.gz"
    write_trees(path, trees)
    return path


@pytest.fixture(scope="module")
def pairs_file(trees_file) -> Path:
    pairs, _ = build_pairs(list(read_trees(trees_file)), PairConfig(threshold=0.0))
    assert len(pairs) > 0
    path = trees_file.with_name("pairs.parquet")
    write_pairs(pairs, path)
    return path


# ---------------------------------------------------------------------------------------
# 1. `--out` never replaces a file that sppd did not write
# ---------------------------------------------------------------------------------------


def _precious(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PRECIOUS)
    return path


def test_1_eval_never_replaces_a_users_file(tmp_path, capsys) -> None:
    mine = _precious(tmp_path / "mine.parquet")
    argv = ["eval", "--model", "tiny-llama", "--device", "cpu", "--benchmarks", "arith",
            "--limit", "2", "--max-new-tokens", "8"]  # fmt: skip
    assert main([*argv, "--out", str(mine)]) == 2
    assert mine.read_text() == PRECIOUS
    err = _err(capsys)
    assert f"{mine} exists and was not written by sppd" in err and "choose another path" in err
    # A file that sppd wrote is its own to replace: a rerun overwrites it.
    ours = tmp_path / "ours.parquet"
    assert main([*argv, "--out", str(ours)]) == 0
    assert made_by_sppd(ours)
    assert main([*argv, "--out", str(ours)]) == 0
    assert len(pd.read_parquet(ours)) == 2


def test_1_pairs_never_replaces_a_users_file_or_sidecar(tmp_path, trees_file, capsys) -> None:
    base = ["pairs", "--trees", str(trees_file), "--threshold", "0"]
    for name in ("a.parquet", "b.trl.parquet"):  # the pairs file, then only its TRL sidecar
        mine = _precious(tmp_path / name)
        out = tmp_path / name.replace(".trl", "")
        assert main([*base, "--out", str(out)]) == 2
        assert mine.read_text() == PRECIOUS and f"{mine} exists and was not written" in _err(capsys)
    stepwise = _precious(tmp_path / "steps.parquet")
    out = tmp_path / "c.parquet"
    assert main([*base, "--out", str(out), "--stepwise", str(stepwise)]) == 2
    assert stepwise.read_text() == PRECIOUS and not out.exists()
    assert "--stepwise" in _err(capsys)
    # Its own outputs it replaces on a rerun.
    for _ in range(2):
        assert main([*base, "--out", str(out), "--stepwise", str(tmp_path / "s.parquet")]) == 0
    capsys.readouterr()


def test_1_merge_trees_never_replaces_a_users_file(tmp_path, trees_file, capsys) -> None:
    mine = tmp_path / "mine.jsonl.gz"
    with gzip.open(mine, "wt") as handle:
        handle.write('{"my": "notes"}\n')
    assert main(["merge-trees", str(trees_file), "--out", str(mine)]) == 2
    with gzip.open(mine, "rt") as handle:
        assert json.loads(handle.read()) == {"my": "notes"}
    assert f"{mine} exists and was not written by sppd" in _err(capsys)
    ours = tmp_path / "merged.jsonl.gz"
    for _ in range(2):
        assert main(["merge-trees", str(trees_file), "--out", str(ours)]) == 0
    assert len(list(read_trees(ours))) == len(list(read_trees(trees_file)))


def test_1_report_never_replaces_a_users_index(tmp_path, capsys) -> None:
    from sppd_lib.report import check_report_dir

    out = tmp_path / "site"
    index = _precious(out / "index.html")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("run_id: run\n")
    assert main(["report", "--run-dir", str(run_dir), "--out", str(out)]) == 2
    assert index.read_text() == PRECIOUS and f"{index} exists and was not written" in _err(capsys)
    # The pages sppd writes carry its mark, so a report can be rendered again over them.
    index.write_text('<!DOCTYPE html><html><head><meta name="generator" content="sppd">')
    check_report_dir(out, ["training"])
    _precious(out / "training.html")
    with pytest.raises(OSError, match=r"training\.html exists and was not written by sppd"):
        check_report_dir(out, ["training"])


def test_1_the_mark_is_what_decides(tmp_path) -> None:
    ours = write_parquet_atomic(pd.DataFrame({"x": [1.0]}), tmp_path / "ours.parquet")
    assert check_writable(ours) == ours
    theirs = tmp_path / "theirs.parquet"
    pd.DataFrame({"x": [1.0]}).to_parquet(theirs)  # a real parquet file, not written by sppd
    with pytest.raises(OSError, match="not written by sppd"):
        check_writable(theirs)
    assert check_writable(tmp_path / "new.parquet")  # a new path is always fine


# ---------------------------------------------------------------------------------------
# 2. Every numeric setting is finite and in range, checked before anything is written
# ---------------------------------------------------------------------------------------


def _float_fields(cls: type, where: str = "") -> list[str]:
    """Dotted keys of every float field of ``cls`` and of its nested config sections."""
    import dataclasses
    import typing

    keys = []
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        annotation = hints[item.name]
        if dataclasses.is_dataclass(annotation):
            keys += _float_fields(annotation, f"{where}{item.name}.")
        elif annotation is float or annotation == float | None:
            keys.append(f"{where}{item.name}")
    return keys


def test_2_no_float_setting_of_any_section_takes_nan_or_inf() -> None:
    from sppd_lib.config import ConfigError, RunConfig, StudyConfig, config_from_dict

    keys = _float_fields(RunConfig)
    assert {"train.beta", "train.learning_rate", "eval.sample_temperature"} <= set(keys)
    for cls, key in [(RunConfig, k) for k in keys] + [(StudyConfig, "train.fixed_margin")]:
        for bad in (float("nan"), float("inf"), float("-inf")):
            data: dict = {}
            *sections, name = key.split(".")
            node = data
            for section in sections:
                node = node.setdefault(section, {})
            node[name] = bad
            with pytest.raises(ConfigError, match=rf"{key} must be a finite number, got"):
                config_from_dict(cls, data)
    # Numbers inside lists and mappings too.
    with pytest.raises(ConfigError, match=r"gammas\[1\] must be a finite number"):
        config_from_dict(StudyConfig, {"gammas": [0.5, float("nan")]})


@pytest.mark.parametrize(
    "setting",
    [
        "train.beta=.nan",
        "train.fixed_margin=.inf",
        "eval.sample_temperature=.inf",
        "train.learning_rate=.nan",
        "phase_train={sft: {learning_rate: .inf}}",
        "sampler.temperature=.inf",
    ],
)
def test_2_a_run_refuses_non_finite_settings_at_start(tmp_path, capsys, setting) -> None:
    run_dir = tmp_path / "run"
    assert main(["run", "--config", str(SMOKE), "--run-dir", str(run_dir), "--set", setting]) == 2
    assert "must be a finite number" in _err(capsys) and not run_dir.exists()


def test_2_train_refuses_an_infinite_learning_rate(tmp_path, pairs_file, capsys) -> None:
    out = tmp_path / "t"
    argv = ["train", "--model", "tiny-llama", "--pairs", str(pairs_file), "--out", str(out)]
    for flag in (["--learning-rate", "inf"], ["--beta", "nan"], ["--gamma=-inf"]):
        assert main([*argv, *flag]) == 2
        assert "must be a finite number" in _err(capsys) and not out.exists()
    config = tmp_path / "c.yaml"
    config.write_text("model: tiny-llama\ntrain:\n  learning_rate: .nan\n")
    assert main(["eval", "--config", str(config), "--benchmarks", "arith", "--limit", "1"]) == 2
    assert "train.learning_rate must be a finite number" in _err(capsys)
