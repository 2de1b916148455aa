"""The GPU check's CPU-side logic: arguments, refusing without CUDA, the per-part time limit."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_refuses_without_cuda(gpu_check, monkeypatch, capsys) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert gpu_check.main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device here" in err and "--device cpu" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--limit", "demo"], "--limit takes PART=SECONDS"),
        (["--limit", "nope=3"], "--limit takes PART=SECONDS"),
        (["--only", "eval,bogus"], "unknown part(s) bogus"),
        (["--prompts", "0"], "must be positive"),
        (["--device", "tpu"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(gpu_check, capsys, argv, message) -> None:
    with pytest.raises(SystemExit) as stopped:
        gpu_check.parse_args(argv)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_limits_and_parts(gpu_check) -> None:
    args = gpu_check.parse_args(["--limit", "demo=30", "--only", "eval,trees"])
    assert args.limits["demo"] == 30 and args.limits["eval"] == gpu_check.LIMITS["eval"]
    assert args.parts == ["eval", "trees"]
    assert sum(gpu_check.LIMITS.values()) <= 8 * 60


def test_a_part_is_stopped_at_its_limit_and_keeps_its_output(gpu_check) -> None:
    slow = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(30)"]
    record = gpu_check.run_part(slow, 2.0)
    assert record["timed_out"] and record["rc"] is None and record["seconds"] < 20
    assert record["tail"] == ["started"]
    quick = [sys.executable, "-c", "print('x'); print('{\"tokens_per_s\": 5.0}')"]
    record = gpu_check.run_part(quick, 20.0)
    assert record["rc"] == 0 and not record["timed_out"]
    assert record["result"] == {"tokens_per_s": 5.0}


def test_goals_read_the_parts_results(gpu_check) -> None:
    parts = {
        "eval": {"result": {"transformers": {"tokens_per_s": 6000.0}}},
        "trees": {"result": {"seconds": 12.5}},
    }
    goals = gpu_check.goals(parts)
    assert goals["greedy_tokens_per_s"]["met"] and goals["greedy_tokens_per_s"]["measured"] == 6000
    assert not goals["trees_seconds"]["met"] and goals["trees_seconds"]["measured"] == 12.5
    assert gpu_check.goals({})["trees_seconds"] == {
        "goal_at_most": 10.0,
        "measured": None,
        "met": False,
    }
