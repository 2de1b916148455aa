"""Experiment tracking and model cards on the smoke loop (tiny model, transformers engine):
TensorBoard event files read back, the trainer's epochs, the cards of the trained policy."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sppd_lib.config import ConfigError, load_run_config
from sppd_lib.loop import run
from sppd_lib.model_card import CARD_MARK, CardInfo, base_model_id, write_model_card
from sppd_lib.rundir import RunDir

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(log_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            found.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return found


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


#: The run-level progress lines of the smoke loop, filled by ``tracked_run``.
PROGRESS = _Lines()


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    run_dir = tmp_path_factory.mktemp("tracked") / "smoke"
    config = load_run_config(SMOKE, ["train.report_to=[tensorboard]"])
    loop_logger = logging.getLogger("sppd_lib.loop")
    level = loop_logger.level
    loop_logger.setLevel(logging.INFO)
    loop_logger.addHandler(PROGRESS)
    try:
        return run_dir, run(config, run_dir)
    finally:
        loop_logger.removeHandler(PROGRESS)
        loop_logger.setLevel(level)


def test_progress_lines_name_iteration_and_phase(tracked_run) -> None:
    shown = [line for line in PROGRESS.lines if line.startswith("iteration ") and "·" in line]
    phases = [line.split(" · ")[:2] for line in shown]
    assert phases == [
        ["iteration 0/1", "evaluating"],
        ["iteration 1/1", "sampling"],
        ["iteration 1/1", "values and pairs"],
        ["iteration 1/1", "training"],
        ["iteration 1/1", "evaluating"],
    ]
    assert all(line.split(" · ")[2].endswith(" elapsed") for line in shown)


def test_tensorboard_holds_the_loops_metrics(tracked_run) -> None:
    run_dir, summary = tracked_run
    scalars = _scalars(RunDir(run_dir).tensorboard)
    for row in summary.itertuples(index=False):
        tag = f"eval/{row.benchmark}/{row.metric}"
        assert (row.iteration, pytest.approx(row.value)) in scalars[tag]
        assert (row.iteration, pytest.approx(row.ci95_high)) in scalars[f"{tag}/ci_high"]
    pairs = pd.read_parquet(run_dir / "iter_1" / "pairs.parquet")
    assert scalars["pairs/pairs"] == [(1, len(pairs))]
    assert scalars["pairs/delta_value/mean"] == [(1, pytest.approx(pairs["delta_value"].mean()))]
    for phase in ("eval", "sample", "pairs", "train_sppd"):
        assert any(step == 1 and seconds > 0 for step, seconds in scalars[f"time/{phase}_seconds"])
    assert [step for step, _ in scalars["time/eval_seconds"]] == [0, 1]
    # The trainer's own curves, in the phase directory.
    trainer = _scalars(run_dir / "iter_1" / "train" / "sppd" / "tensorboard")
    log = pd.read_json(run_dir / "iter_1" / "train" / "log.jsonl", lines=True)
    losses = log["loss"].dropna().tolist()
    assert [value for _, value in trainer["train/loss"]] == pytest.approx(losses, rel=1e-5)


def test_training_log_counts_every_epoch(tracked_run) -> None:
    run_dir, _ = tracked_run
    log = pd.read_json(run_dir / "iter_1" / "train" / "log.jsonl", lines=True)
    epochs = load_run_config(SMOKE).train.epochs
    assert epochs == 2 and log["epoch"].iloc[-1] == pytest.approx(epochs)
    assert log["epoch"].is_monotonic_increasing


def test_trained_policy_has_a_model_card(tracked_run) -> None:
    run_dir, summary = tracked_run
    for name, library in (("model", "transformers"), ("adapter", "peft")):
        text = (run_dir / "iter_1" / "train" / "sppd" / name / "README.md").read_text()
        front = yaml.safe_load(text.split("---\n")[1])
        assert front["library_name"] == library and "sppd" in front["tags"]
        assert "base_model" not in front  # a tiny random model has no hub id
        assert CARD_MARK in text and "arXiv 2502.13516" in text and "iteration 1" in text
        assert "Provide a quick summary" not in text  # PEFT's empty template is gone
        for row in summary[summary["iteration"] == 1].itertuples(index=False):
            assert f"| {row.benchmark} | {row.metric} | {row.value:.3f} | " in text
            assert f"{int(row.correct)} / {int(row.n)}" in text
        assert "| `gamma` | 1.0 |" in text and "Training prompts: arith, train split" in text
        assert front["tags"].count("sppd") == 1


def test_card_names_the_hub_base_and_never_replaces_a_users_readme(tmp_path) -> None:
    snapshot = "/cache/hub/models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots/abc"
    assert base_model_id(snapshot) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_model_id("Qwen/Qwen2.5-Math-7B-Instruct") == "Qwen/Qwen2.5-Math-7B-Instruct"
    assert base_model_id(tmp_path) is None
    info = CardInfo(snapshot, "sppd", {"gamma": 2.0}, examples=12)
    assert write_model_card(tmp_path, info)
    assert base_model_id(tmp_path) == "HuggingFaceTB/SmolLM2-135M-Instruct"  # read back
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in (tmp_path / "README.md").read_text()
    mine = tmp_path / "user"
    mine.mkdir()
    (mine / "README.md").write_text("my notes\n")
    assert not write_model_card(mine, info)
    assert (mine / "README.md").read_text() == "my notes\n"


def test_unknown_tracker_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="report_to"):
        load_run_config(SMOKE, ["train.report_to=[neptune]"])


def test_missing_tracker_fails_at_start_with_the_install_command(monkeypatch, tmp_path) -> None:
    import importlib.util

    from sppd_lib.tracking import check_trackers

    real = importlib.util.find_spec
    monkeypatch.setattr(
        "sppd_lib.tracking.importlib.util.find_spec",
        lambda name, *a: None if name in ("wandb", "mlflow") else real(name, *a),
    )
    check_trackers(["none", "tensorboard"])
    with pytest.raises(ConfigError, match=r"wandb is not installed \(pip install wandb\)"):
        check_trackers(["tensorboard", "wandb"])
    with pytest.raises(ConfigError, match="mlflow is not installed"):
        run(load_run_config(SMOKE, ["train.report_to=[mlflow]"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # checked before anything is written
