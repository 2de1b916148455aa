"""The loop on vLLM with the real SmolLM2 model: one engine for the whole run, given the
trained policy's weights for its evaluation (`make test-vllm`, part of CI)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

import pandas as pd  # noqa: E402

from sppd_lib.config import load_run_config  # noqa: E402
from sppd_lib.engines.generate import GenerateEngine  # noqa: E402
from sppd_lib.evaluate import evaluate  # noqa: E402
from sppd_lib.loop import run  # noqa: E402
from sppd_lib.models import load_model  # noqa: E402

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def test_a_vllm_run_starts_one_engine_and_evaluates_each_policy(tmp_path, monkeypatch) -> None:
    from sppd_lib.engines import vllm_engine

    started, loaded = [], []

    class CountingEngine(vllm_engine.VLLMEngine):
        """The real engine, counting its starts and weight swaps."""

        def __init__(self, model: str, **options) -> None:
            started.append(model)
            super().__init__(model, **options)

        def load_weights(self, model: str) -> None:
            loaded.append(model)
            super().load_weights(model)

    monkeypatch.setattr(vllm_engine, "VLLMEngine", CountingEngine)
    # The smoke run (tiny random PRM values, so pairs exist) with the real policy on vLLM.
    config = load_run_config(
        SMOKE, ["model=smollm2-135m-instruct", "engine=vllm", "engine.max_model_len=1024"]
    )
    run_dir = tmp_path / "run"
    summary = run(config, run_dir)

    assert len(started) == 1, started  # sampling and both evaluations shared it
    trained = run_dir / "iter_1" / "train" / "sppd" / "model"
    assert str(trained) in loaded
    assert sorted(summary["iteration"].unique()) == [0, 1]
    # Each iteration's evaluation decoded with that iteration's weights: vLLM's greedy
    # responses are those of HF `generate` on the same weights (fp32; near-ties may differ).
    for iteration, model_dir in ((0, "smollm2-135m-instruct"), (1, str(trained))):
        got = pd.read_parquet(run_dir / f"iter_{iteration}" / "eval.parquet")
        model, tokenizer = load_model(model_dir)
        engine = GenerateEngine(model, tokenizer, progress=False)
        want = evaluate(None, tokenizer, config.eval, engine=engine, progress=False)
        same = (got["response"].to_numpy() == want["response"].to_numpy()).mean()
        assert same >= 0.75, (iteration, same)
