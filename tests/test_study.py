"""The margin study: arms resolved from the config, shared data, resume, paired statistics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sppd_lib.config import ConfigError, StudyConfig, TrainConfig, load_study_config, resolve_arms
from sppd_lib.metrics import mcnemar_exact, paired_bootstrap, seed_interval
from sppd_lib.study import run_study
from sppd_lib.study_results import Study, arm_summary, compare_arms, study_table

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "study_smoke.yaml"

# ---------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------


def test_arms_of_a_config() -> None:
    config = StudyConfig(
        model="tiny-llama",
        gammas=[0.5, 2.0],
        train=TrainConfig(gamma=1.0),
        arms=[{"name": "curriculum", "phases": ["sft", "sppd"]}],
    )
    arms = {arm.name: arm for arm in resolve_arms(config)}
    assert list(arms) == [
        "sft", "dpo", "step_dpo", "fixed", "dynamic_g0.5", "dynamic_g1", "dynamic_g2", "curriculum"
    ]  # fmt: skip
    assert arms["step_dpo"].train == {"margin": "none"}
    assert arms["fixed"].train == {"margin": "fixed", "gamma": 1.0}  # mean of 1.0·Δv
    assert arms["dynamic_g2"].train == {"margin": "dynamic", "gamma": 2.0}
    assert arms["curriculum"].phases == ["sft", "sppd"] and arms["curriculum"].values == "main"
    assert config.headline_arm == "dynamic_g1"
    assert config.run_config(["sppd"], {"seed": 3}).train.seed == 3


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"baselines": ["ppo"]}, "baselines"),
        ({"seeds": [1, 1]}, "seeds"),
        ({"gammas": [-1.0]}, "gammas"),
        ({"arms": [{"name": "start"}]}, "not a usable name"),
        ({"arms": [{"name": "sft"}]}, "unique"),
        ({"arms": [{"name": "x", "values": "nope"}]}, "unknown values"),
        ({"arms": [{"name": "x", "train": {"margin": "big"}}]}, r"arm x: train\.margin"),
        ({"arms": [{"name": "x", "bogus": 1}]}, r"arms\[0\]\.bogus"),
        ({"compare": ["sft"]}, "compare"),
    ],
)
def test_bad_study_configs_name_the_key(settings, message) -> None:
    with pytest.raises(ConfigError, match=message):
        StudyConfig(model="tiny-llama", **settings)


def test_study_yaml_with_old_margin_keys_and_overrides(tmp_path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text("model: tiny-llama\npairs: {gamma: 2.0, threshold: 0.4}\n")
    config = load_study_config(path, ["seeds=[4]"])
    assert config.train.gamma == 2.0 and config.pairs.threshold == 0.4 and config.seeds == [4]
    with pytest.raises(ConfigError, match="unknown config key"):
        load_study_config(path, ["sedes=[1]"])


def test_a_study_takes_the_run_sections_ray_and_engine_included(tmp_path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(
        "model: tiny-llama\nengine: vllm\nvllm: {block_size: 64}\n"
        "ray: {address: local, engines: 2, gpus_per_engine: 2}\n"
    )
    config = load_study_config(path, ["engine.tensor_parallel_size=2"])
    arm = config.run_config(["sppd"], {"margin": "none"}, "step_dpo")
    assert (arm.ray.address, arm.ray.engines) == ("local", 2)
    assert (arm.engine.kind, arm.engine.block_size, arm.engine.tensor_parallel_size) == (
        "vllm",
        64,
        2,
    )
    assert arm.train.margin == "none" and arm.model == "tiny-llama"


# ---------------------------------------------------------------------------------------
# Statistics, checked by hand on a made-up study
# ---------------------------------------------------------------------------------------


def made_up_study() -> Study:
    """Two arms × 3 seeds on 4 problems, and the start (one seed)."""
    correct = {
        ("start", 0): [0, 0, 1, 0],
        ("a", 0): [1, 1, 1, 0],
        ("a", 1): [1, 0, 1, 0],
        ("a", 2): [1, 1, 0, 0],
        ("b", 0): [0, 1, 1, 0],
        ("b", 1): [0, 0, 1, 1],
        ("b", 2): [0, 0, 1, 0],
    }
    rows = [
        {"arm": arm, "seed": seed, "benchmark": "arith", "problem_id": f"p{i}", "correct": bool(c)}
        | {"question": f"q{i}", "gold": "1", "pred": "1" if c else "2", "response": "…"}
        | {"status": "ok", "num_tokens": 3, "finish_reason": "eos", "seconds": 0.1}
        for (arm, seed), values in correct.items()
        for i, c in enumerate(values)
    ]
    config = StudyConfig(model="tiny-llama", baselines=[], gammas=[], seeds=[0, 1, 2])
    study = Study(Path("."), config, ["a", "b"], pd.DataFrame(rows), {})
    study.table = study_table(study)
    study.arms = arm_summary(study.table)
    return study


def test_seed_interval_and_pooled_interval_by_hand() -> None:
    study = made_up_study()
    a = study.arms.set_index("arm").loc["a"]
    # per-seed accuracies 0.75, 0.5, 0.5: mean 0.5833, sd 0.1443, t(2) = 4.303
    half = 4.303 * np.std([0.75, 0.5, 0.5], ddof=1) / np.sqrt(3)
    assert a["mean"] == pytest.approx(7 / 12)
    assert (a["seed_ci_low"], a["seed_ci_high"]) == pytest.approx((7 / 12 - half, 7 / 12 + half))
    assert a["seeds"] == 3 and a["problems"] == 4
    assert a["pooled_ci_low"] < 7 / 12 < a["pooled_ci_high"]  # Wilson over 12 answers
    assert seed_interval([0.4])[1] != seed_interval([0.4])[1]  # one seed: NaN interval


def test_paired_comparison_by_hand() -> None:
    study = made_up_study()
    table = compare_arms(study, [("a", "b")]).iloc[0]
    # a: per problem 3/3, 2/3, 2/3, 0/3; b: 0/3, 1/3, 3/3, 1/3
    assert table["accuracy"] == pytest.approx(7 / 12)
    assert table["other_accuracy"] == pytest.approx(5 / 12)
    assert table["difference"] == pytest.approx(2 / 12)
    assert table["ci95_low"] <= 2 / 12 <= table["ci95_high"]
    # majority over seeds: a = [1, 1, 1, 0], b = [0, 0, 1, 0] -> a gains p0 and p1, loses none
    assert (table["gained"], table["lost"]) == (2, 0)
    assert table["p_value"] == pytest.approx(mcnemar_exact(2, 0)) == pytest.approx(0.5)


def test_paired_bootstrap_properties() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, size=(50, 3))
    assert paired_bootstrap(a, a) == (0.0, 0.0, 0.0)  # paired: identical arms never differ
    difference, low, high = paired_bootstrap(a, np.zeros((50, 1)))
    assert difference == pytest.approx(a.mean()) and low < difference < high
    with pytest.raises(ValueError, match="different problems"):
        paired_bootstrap(a, a[:10])


# ---------------------------------------------------------------------------------------
# The smoke study end to end (tiny model)
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study") / "study_smoke"
    study = run_study(load_study_config(SMOKE), root)
    return root, study


def test_every_arm_reads_the_same_trees_and_pairs(smoke_study) -> None:
    root, study = smoke_study
    records = study.records
    assert len(records) == len(study.arm_names) * len(study.config.seeds)
    assert len({r["trees_sha256"] for r in records.values()}) == 1
    trained = [r for r in records.values() if "sppd" in r["phases"] and r["values"] == "prm"]
    assert len(trained) > 2
    assert len({r["data_sha256"]["sppd"] for r in trained}) == 1
    fixed = json.loads((root / "fixed" / "seed_0" / "train" / "sppd" / "config.json").read_text())
    pairs = pd.read_parquet(root / "values" / "prm" / "pairs.parquet")
    assert fixed["margin"] == "fixed" and fixed["fixed_margin"] == pytest.approx(
        pairs["delta_value"].mean()
    )
    assert not list(root.glob("*/seed_*/train/*/model"))  # merged weights are not kept
    assert (root / "values" / "mc" / "pairs_summary.json").is_file()


def test_study_tables(smoke_study) -> None:
    root, study = smoke_study
    table = pd.read_parquet(root / "study.parquet")
    arms, seeds = len(study.arm_names), len(study.config.seeds)
    assert len(table) == arms * seeds + 1  # one benchmark, pass@1 only, plus the start
    assert set(table.columns) >= {"arm", "seed", "benchmark", "metric", "value", "n"}
    summary = pd.read_parquet(root / "arms.parquet")
    assert set(summary["arm"]) == {*study.arm_names, "start"}
    comparisons = pd.read_parquet(root / "comparisons.parquet")
    assert {("dynamic_g1", "fixed"), ("dynamic_g1", "step_dpo"), ("fixed", "step_dpo")} <= set(
        zip(comparisons["arm"], comparisons["other"], strict=True)
    )


def test_rerun_changes_only_what_may_change(smoke_study, tmp_path) -> None:
    root, _ = smoke_study
    config = load_study_config(SMOKE, ["sampler.k=3"])
    with pytest.raises(ConfigError, match=r"changed: sampler\.k"):
        run_study(config, root)


@pytest.mark.slow
def test_killed_study_resumes_to_the_same_tables(smoke_study, tmp_path) -> None:
    root, _ = smoke_study
    killed = tmp_path / "study_smoke"
    command = [sys.executable, "-m", "sppd_lib.cli", "study", "--config", str(SMOKE),
               "--study-dir", str(killed)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    # Kill during the training of fixed, seed 0: its train dir exists, its arm.json does not.
    while time.monotonic() < deadline and process.poll() is None:
        if list(killed.glob("fixed/seed_0/train/*")):
            break
        time.sleep(0.05)
    assert process.poll() is None, "the study ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "study.parquet").exists()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pd.testing.assert_frame_equal(
        pd.read_parquet(killed / "study.parquet"), pd.read_parquet(root / "study.parquet")
    )
