"""Issue 26 (reliability, round two), defects 1, 2, 3, 5 and 9: no user file replaced, every
numeric setting finite and in range, no NaN phase called done, no study mixing its data, and
signals and paths handled. Each test reproduces one defect (numbered as in the issue) on the
tiny models and the smoke configs.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sppd_lib.cli import main
from sppd_lib.config import ConfigError, PairConfig, load_run_config, load_study_config
from sppd_lib.data import load_problems
from sppd_lib.files import check_writable, made_by_sppd, write_parquet_atomic
from sppd_lib.pairs import build_pairs, write_pairs
from sppd_lib.tree import read_trees, write_trees

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
STUDY_SMOKE = ROOT / "configs" / "study_smoke.yaml"
#: The smallest study: one seed, one arm (step_dpo), one value estimator.
SMALL_STUDY = ["seeds=[0]", "gammas=[]", "baselines=[step_dpo]", "arms=[]", "values={}"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # subprocesses import this checkout
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


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished smoke run (tiny model), copied by the tests that change it."""
    from sppd_lib.loop import run

    run_dir = tmp_path_factory.mktemp("runs") / "smoke"
    run(load_run_config(SMOKE), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory) -> Path:
    """A finished one-arm smoke study, copied by the tests that change it."""
    from sppd_lib.study import run_study

    root = tmp_path_factory.mktemp("studies") / "study_smoke"
    run_study(load_study_config(STUDY_SMOKE, SMALL_STUDY), root)
    return root


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


# ---------------------------------------------------------------------------------------
# 3. A phase whose numbers are not finite is never done
# ---------------------------------------------------------------------------------------

TRAIN = ["train", "--model", "tiny-llama", "--device", "cpu", "--batch-size", "4"]


def test_3_non_finite_pairs_are_refused_with_file_and_row(tmp_path, pairs_file, capsys) -> None:
    for column, row, bad in (
        ("delta_value", 2, float("nan")),
        ("chosen_ref_logp", 0, float("-inf")),
    ):
        pairs = pd.read_parquet(pairs_file)
        pairs.loc[row, column] = bad
        broken = write_parquet_atomic(pairs, tmp_path / f"{column}.parquet")
        out = tmp_path / f"out_{column}"
        assert main([*TRAIN, "--pairs", str(broken), "--out", str(out)]) == 2
        assert f"{broken}: row {row} (0-based): {column} is {bad}" in _err(capsys)
        assert not out.exists()


def test_3_pairs_with_a_nan_value_are_never_written(tmp_path, pairs_file) -> None:
    from sppd_lib.data import DataError

    pairs = pd.read_parquet(pairs_file)
    pairs.loc[0, "value_chosen"] = float("nan")  # e.g. a PRM that scored a step NaN
    out = tmp_path / "pairs.parquet"
    with pytest.raises(DataError, match=r"row 0 \(0-based\): value_chosen is nan"):
        write_pairs(pairs, out)
    assert list(tmp_path.iterdir()) == []  # neither the pairs nor their TRL export


def test_3_a_diverging_phase_stops_unsaved(tmp_path, pairs_file, capsys, monkeypatch) -> None:
    # AdamW at 1e30: the weights blow up after step 1, the loss of step 2 is not finite.
    out = tmp_path / "loss"
    argv = [*TRAIN, "--pairs", str(pairs_file), "--learning-rate", "1e30"]
    assert main([*argv, "--out", str(out)]) == 2
    err = _err(capsys)
    assert "sppd training diverged: the loss is not finite at step 1" in err, err
    assert "nothing was saved" in err and not out.exists()
    # An optimizer step that leaves a NaN weight behind, as the last step: the loss and the
    # gradients were finite, the weights are not, and they are not saved.
    import torch

    real_step = torch.optim.AdamW.step

    def poisoning_step(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoning_step)
    out = tmp_path / "weights"
    assert main([*TRAIN, "--pairs", str(pairs_file), "--max-examples", "4", "--out", str(out)]) == 2
    assert "a trained weight is not finite at step 1" in _err(capsys) and not out.exists()


def test_3_a_non_finite_gradient_stops_before_the_optimizer_step(tiny_llama) -> None:
    from types import SimpleNamespace

    import torch

    from sppd_lib.trainer import TrainingDivergedError, _FiniteGradients

    model, _ = tiny_llama
    parameters = [p for p in model.parameters() if p.requires_grad]
    guard, state = _FiniteGradients("sppd"), SimpleNamespace(global_step=4)
    try:
        for p in parameters:
            p.grad = torch.zeros_like(p)
        guard.on_pre_optimizer_step(None, state, None, model=model)  # finite: goes on
        parameters[-1].grad[0] = float("nan")
        with pytest.raises(
            TrainingDivergedError, match="the gradient norm is not finite at step 5"
        ):
            guard.on_pre_optimizer_step(None, state, None, model=model)
    finally:
        for p in parameters:
            p.grad = None


def test_3_a_run_on_nan_pairs_writes_no_done_marker(tmp_path, finished_run) -> None:
    from sppd_lib.data import DataError
    from sppd_lib.loop import run

    run_dir = Path(shutil.copytree(finished_run, tmp_path / "run"))
    iteration = run_dir / "iter_1"
    shutil.rmtree(iteration / "train")
    for name in ("eval.parquet", "eval_samples.parquet"):
        (iteration / name).unlink()
    pairs = pd.read_parquet(iteration / "pairs.parquet")
    pairs.loc[1, "delta_value"] = float("nan")
    write_parquet_atomic(pairs, iteration / "pairs.parquet")
    with pytest.raises(DataError, match=r"pairs\.parquet: row 1 \(0-based\): delta_value is nan"):
        run(load_run_config(SMOKE), run_dir)
    assert not (iteration / "train" / "done.json").exists()


# ---------------------------------------------------------------------------------------
# 5. A study's arms share the data they record
# ---------------------------------------------------------------------------------------


def _add_a_gamma(root: Path) -> None:
    from sppd_lib.study import run_study

    settings = [*SMALL_STUDY[:1], "gammas=[2.0]", *SMALL_STUDY[2:]]
    run_study(load_study_config(STUDY_SMOKE, settings), root)


def test_5_a_study_refuses_new_arms_on_changed_trees(tmp_path, finished_study, trees_file) -> None:
    root = Path(shutil.copytree(finished_study, tmp_path / "study"))
    record = json.loads((root / "step_dpo" / "seed_0" / "arm.json").read_text())
    shutil.copyfile(trees_file, root / "trees.jsonl.gz")  # other trees under a finished study
    with pytest.raises(ConfigError) as refused:
        _add_a_gamma(root)
    message = str(refused.value)
    assert f"{root / 'trees.jsonl.gz'} has sha256 " in message
    assert f"{root / 'step_dpo' / 'seed_0' / 'arm.json'} was trained on sha256 " in message
    assert record["trees_sha256"][:16] in message
    assert not list(root.glob("dynamic_g*"))


def test_5_a_study_refuses_new_arms_on_changed_pairs(tmp_path, finished_study) -> None:
    root = Path(shutil.copytree(finished_study, tmp_path / "study"))
    pairs_path = root / "values" / "main" / "pairs.parquet"
    pairs = pd.read_parquet(pairs_path)
    write_parquet_atomic(pairs.iloc[1:], pairs_path)  # the shared pairs, one fewer
    with pytest.raises(
        ConfigError,
        match=r"values/main/pairs\.parquet has sha256 \w+, but the "
        r"finished arm \S+step_dpo/seed_0/arm\.json was trained on sha256",
    ):
        _add_a_gamma(root)
    assert not list(root.glob("dynamic_g*"))


# ---------------------------------------------------------------------------------------
# 9. Signals, names and paths
# ---------------------------------------------------------------------------------------


def test_9_sigterm_says_how_to_resume(tmp_path) -> None:
    out = tmp_path / "trees.jsonl.gz"
    command = [sys.executable, "-m", "sppd_lib.cli", "sample", "--model", "tiny-llama",
               "--device", "cpu", "--dataset", "arith", "--limit", "64", "--k", "4",
               "--problems-per-batch", "1", "--max-step-tokens", "8",
               "--out", str(out)]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=ENV)
    partial = tmp_path / "trees.jsonl.gz.partial.jsonl"
    while not (partial.exists() and partial.read_text().count("\n") >= 1):
        assert process.poll() is None, process.stderr.read()[-2000:]
    process.send_signal(signal.SIGTERM)
    err = process.communicate(timeout=120)[1]
    assert process.returncode == 143, err[-2000:]
    assert (
        "terminated (SIGTERM); finished batches are kept in <out>.partial.jsonl: rerun the "
        "same command to resume" in err
    )
    assert "Traceback" not in err and partial.read_text().count("\n") >= 1


@pytest.mark.parametrize("name", ["../../escape", "a/b", ".hidden", "..", ""])
def test_9_run_and_study_names_are_plain(tmp_path, capsys, monkeypatch, name) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--config", str(SMOKE), "--set", f"run_id={name!r}"]) == 2
    assert "run_id must be a plain name" in _err(capsys)
    assert main(["study", "--config", str(STUDY_SMOKE), "--set", f"study_id={name!r}"]) == 2
    assert "study_id must be a plain name" in _err(capsys)
    assert list(tmp_path.iterdir()) == [] and not (tmp_path.parent / "escape").exists()


def test_9_trained_directories_have_the_modes_of_the_rest(finished_run) -> None:
    umask = os.umask(0)
    os.umask(umask)
    directories = [finished_run, *(p for p in finished_run.rglob("*") if p.is_dir())]
    assert any(p.name == "sppd" for p in directories)  # the trained phase directory
    modes = {p.relative_to(finished_run).as_posix(): p.stat().st_mode & 0o777 for p in directories}
    assert set(modes.values()) == {0o777 & ~umask}, modes


def test_9_staging_directories_get_the_usual_mode(tmp_path) -> None:
    from sppd_lib.files import staging_dir

    umask = os.umask(0)
    os.umask(umask)
    staged = staging_dir(tmp_path, "model")
    assert staged.name.startswith(".model-") and staged.stat().st_mode & 0o777 == 0o777 & ~umask


def test_9_extending_a_run_without_its_model_leaves_nothing(tmp_path, finished_run) -> None:
    from sppd_lib.data import DataError
    from sppd_lib.loop import run

    run_dir = Path(shutil.copytree(finished_run, tmp_path / "run"))
    model = run_dir / "iter_1" / "train" / "sppd" / "model"
    shutil.rmtree(model)
    with pytest.raises(
        DataError,
        match=r"the trained model \S+sppd/model is missing \(iteration "
        r"2 starts from it\); restore that directory",
    ):
        run(load_run_config(SMOKE, ["iterations=2"]), run_dir)
    assert not (run_dir / "iter_2").exists()


def test_9_a_lora_adapter_as_model_says_so(finished_run, capsys) -> None:
    adapter = finished_run / "iter_1" / "train" / "sppd" / "adapter"
    argv = ["eval", "--model", str(adapter), "--benchmarks", "arith", "--limit", "1"]
    assert main(argv) == 2
    err = _err(capsys)
    assert f"{adapter} is a LoRA adapter, not a model: pass its base model (" in err
    assert f"{adapter.parent / 'model'} holds it merged" in err
