from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from sppd_lib.cli import main
from sppd_lib.config import ConfigError, load_run_config
from sppd_lib.loop import run, training_problems
from sppd_lib.metrics import gain_headline, mcnemar_exact
from sppd_lib.rundir import RunDir


def change_since_start(run_dir):
    return RunDir(run_dir).change_since_start()


def summary_table(run_dir):
    return RunDir(run_dir).summary_table()


ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
# Two sampling batches, so a run can be killed between them.
SMOKE_SETTINGS = ["sampler.problems_per_batch=2"]


def test_configs_load_and_validate() -> None:
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        if path.name in ("demo.yaml", "smoke.yaml") or path.name.startswith("paper_"):
            config = load_run_config(path)
            assert config.iterations >= 1 and config.phases
    demo = load_run_config(ROOT / "configs" / "demo.yaml")
    assert demo.eval.arith == demo.data.arith  # held-out set of the training distribution
    assert demo.iterations >= 2 and demo.model == "smollm2-135m-instruct"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sampler.kk=3", "sampler.kk"),
        ("train.beta=high", "train.beta"),
        ("eval.benchmarks=[gaokao]", "gaokao"),
        ("phases=[ppo]", "ppo"),
        ("iterations=-1", "iterations"),
        ("sampler", "key=value"),
    ],
)
def test_bad_configs_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_run_config(SMOKE, [override])


def test_bad_run_fails_at_start_naming_the_problem(tmp_path, capsys) -> None:
    code = main(["run", "--config", str(tmp_path / "none.yaml")])
    assert code == 2 and "none.yaml" in capsys.readouterr().err
    code = main(["run", "--config", str(SMOKE), "--run-dir", str(tmp_path / "a"),
                 "--set", "model=/no/such/model"])  # fmt: skip
    assert code == 2 and "/no/such/model" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()  # nothing written for a run that cannot start
    code = main(["run", "--config", str(SMOKE), "--run-dir", str(tmp_path / "b"),
                 "--set", "data.prompts_per_iteration=5000", "--set", "data.name=math500",
                 "--set", "data.split=test"])  # fmt: skip
    assert code == 2 and "math500 test has 500 problems" in capsys.readouterr().err


def test_training_prompts_are_fresh_each_iteration() -> None:
    config = load_run_config(SMOKE)
    first, second = training_problems(config, 1), training_problems(config, 2)
    assert len(first) == len(second) == config.data.prompts_per_iteration
    assert not {p.id for p in first} & {p.id for p in second}
    mixed = load_run_config(
        SMOKE, ["data.mix={gsm8k: 0.5, math: 0.5}", "data.prompts_per_iteration=4"]
    )
    sources = [p.source for p in training_problems(mixed, 1)]
    assert sources.count("gsm8k") == sources.count("math") == 2


def test_smoke_run_writes_every_artifact(tmp_path, capsys) -> None:
    run_dir = tmp_path / "smoke"
    summary = run(load_run_config(SMOKE), run_dir)
    for name in ("trees.jsonl.gz", "pairs.parquet", "train/log.jsonl", "train/pair_log.parquet",
                 "eval.parquet", "eval_samples.parquet"):  # fmt: skip
        assert (run_dir / "iter_1" / name).exists(), name
    assert (run_dir / "iter_0" / "eval.parquet").exists()
    stored = pd.read_parquet(run_dir / "summary.parquet")
    pd.testing.assert_frame_equal(stored, summary, check_dtype=False)
    assert set(summary["iteration"]) == {0, 1}
    assert {"pass@1", "maj@2", "vote@2", "best@2"} <= set(summary["metric"])
    assert len(pd.read_parquet(run_dir / "iter_1" / "pairs.parquet")) > 0
    times = RunDir(run_dir).phase_times()
    assert list(zip(times["iteration"], times["phase"], strict=True)) == [
        (0, "eval"), (1, "sample"), (1, "pairs"), (1, "train_sppd"), (1, "eval")
    ]  # fmt: skip
    assert (times["seconds"] > 0).all() and set(times["engine"].dropna()) == {"transformers"}
    # A finished run reruns as a no-op and the config is kept with it.
    # (`report` only decides whether pages are rendered afterwards: not a change of run.)
    again = run(load_run_config(SMOKE, ["report=true"]), run_dir)
    pd.testing.assert_frame_equal(again, summary)
    assert len(RunDir(run_dir).phase_times()) == len(times)  # nothing ran again
    # The change since iteration 0, problem by problem, agrees with the summary's counts.
    change = change_since_start(run_dir).set_index("benchmark")
    greedy = summary[summary["metric"] == "pass@1"].set_index(["iteration", "benchmark"])
    for benchmark, row in change.iterrows():
        assert row["iteration"] == 1 and row["problems"] == greedy.loc[(1, benchmark), "n"]
        moved = greedy.loc[(1, benchmark), "correct"] - greedy.loc[(0, benchmark), "correct"]
        assert row["gained"] - row["lost"] == moved
    capsys.readouterr()
    assert main(["run", "--config", str(SMOKE), "--run-dir", str(run_dir)]) == 0
    printed = capsys.readouterr().out
    assert "pass@1 by iteration" in printed and "change from iteration 0 to 1" in printed
    # The run ends on the held-out gain and its paired p-value, one line per benchmark.
    tail = printed.strip().splitlines()[-1 - len(change) :]
    assert tail[0].startswith("held-out gain, iteration 1 against iteration 0")
    assert [line.split(":")[0].strip() for line in tail[1:]] == list(change.index)
    assert all("McNemar p = " in line for line in tail[1:])
    with pytest.raises(ConfigError, match=r"sampler\.k"):
        run(load_run_config(SMOKE, ["sampler.k=3"]), run_dir)


# ---------------------------------------------------------------------------------------
# Resume after a kill (real processes, SIGKILL at a chosen moment)
# ---------------------------------------------------------------------------------------


def _command(run_dir: Path) -> list[str]:
    sets = [arg for setting in SMOKE_SETTINGS for arg in ("--set", setting)]
    return [sys.executable, "-m", "sppd_lib.cli", "run", "--config", str(SMOKE),
            "--run-dir", str(run_dir), *sets]  # fmt: skip


def _run_and_kill_when(run_dir: Path, ready) -> None:
    process = subprocess.Popen(_command(run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not ready() and time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"run ended before the kill: {process.stderr.read()[-2000:]}")
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def _finished(run_dir: Path) -> None:
    done = subprocess.run(_command(run_dir), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def _lines(path: Path) -> list[str]:
    return gzip.open(path, "rt").read().splitlines()


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_artifacts(tmp_path) -> None:
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    _finished(reference)

    partial = resumed / "iter_1" / "trees.jsonl.gz.partial.jsonl"
    _run_and_kill_when(resumed, lambda: partial.exists() and partial.read_text().count("\n") >= 2)
    assert not (resumed / "iter_1" / "trees.jsonl.gz").exists()  # killed while sampling
    train_log = resumed / "iter_1" / "train" / "sppd.partial" / "log.jsonl"
    _run_and_kill_when(resumed, train_log.exists)
    assert not (resumed / "iter_1" / "train" / "done.json").exists()  # killed while training
    _finished(resumed)

    trees = "iter_1/trees.jsonl.gz"
    assert _lines(resumed / trees) == _lines(reference / trees)
    for name in ("iter_1/pairs.parquet", "iter_1/eval.parquet", "summary.parquet"):
        got, want = pd.read_parquet(resumed / name), pd.read_parquet(reference / name)
        pd.testing.assert_frame_equal(got.drop(columns="seconds", errors="ignore"),
                                      want.drop(columns="seconds", errors="ignore"))  # fmt: skip
    weights = "iter_1/train/sppd/model/model.safetensors"
    got, want = load_file(resumed / weights), load_file(reference / weights)
    assert got.keys() == want.keys()
    assert all((got[k] == want[k]).all() for k in got)
    pd.testing.assert_frame_equal(summary_table(resumed), summary_table(reference))


def test_gain_headline_states_gain_counts_and_p_value() -> None:
    change = pd.DataFrame(
        [{"benchmark": "arith", "problems": 200, "before": 0.115, "after": 0.16, "gained": 31,
          "lost": 22, "p_value": mcnemar_exact(31, 22), "iteration": 2}]
    )  # fmt: skip
    line = gain_headline(change).splitlines()[1].strip()
    assert line == (
        "arith: 11.5% -> 16.0% (+4.5 points on 200 problems; 31 gained, 22 lost; "
        f"exact McNemar p = {mcnemar_exact(31, 22):.3g})"
    )
