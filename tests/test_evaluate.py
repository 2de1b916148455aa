from __future__ import annotations

import math

import pandas as pd
import pytest

from sppd_lib.cli import main
from sppd_lib.config import ConfigError, EvalConfig, config_from_dict
from sppd_lib.data import load_problems
from sppd_lib.engines.transformers_engine import TransformersEngine
from sppd_lib.evaluate import (
    evaluate,
    evaluate_samples,
    generate_greedy,
    regrade,
    sample_responses,
)
from sppd_lib.grading import grade
from sppd_lib.metrics import (
    SUMMARY_COLUMNS,
    accuracy_table,
    best_of_n,
    maj_at_n,
    paired_change,
    sampled_scores,
    summary_rows,
    vote_at_n,
)
from sppd_lib.prm import PRMScorer
from sppd_lib.prompts import build_prompt, split_steps

from .test_prm import save_tiny_prm


def test_generate_greedy_is_deterministic_and_order_preserving(tiny_llama) -> None:
    model, tokenizer = tiny_llama
    prompts = [build_prompt(tokenizer, q) for q in ["1+1?", "A much longer question " * 5, "2?"]]
    batched = generate_greedy(model, tokenizer, prompts, max_new_tokens=6, batch_size=3)
    single = [generate_greedy(model, tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in single]  # left padding is harmless
    assert all(g.num_tokens <= 6 and g.finish_reason in ("stop", "length") for g in batched)


def test_evaluate_rows_regrade_to_the_same_scores(tiny_llama) -> None:
    model, tokenizer = tiny_llama
    config = EvalConfig(benchmarks=["arith", "gsm8k"], limit=3, max_new_tokens=4, batch_size=2)
    results = evaluate(model, tokenizer, config, progress=False)
    assert list(results["benchmark"]) == ["arith"] * 3 + ["gsm8k"] * 3
    regraded = [grade(r.response, r.gold).correct for r in results.itertuples()]
    assert regraded == list(results["correct"])
    table = accuracy_table(results)
    assert list(table["problems"]) == [3, 3]
    assert ((table["ci95_low"] <= table["pass@1"]) & (table["pass@1"] <= table["ci95_high"])).all()


def test_accuracy_table_counts() -> None:
    results = pd.DataFrame(
        {
            "benchmark": ["a", "a", "a", "a", "b"],
            "correct": [True, False, True, True, False],
            "status": ["correct", "no_answer", "correct", "correct", "wrong"],
            "finish_reason": ["stop", "length", "stop", "stop", "stop"],
            "num_tokens": [10, 20, 30, 40, 50],
        }
    )
    table = accuracy_table(results).set_index("benchmark")
    assert table.loc["a", "pass@1"] == 0.75 and table.loc["b", "pass@1"] == 0.0
    assert table.loc["a", "no_answer"] == 0.25 and table.loc["a", "truncated"] == 0.25
    assert table.loc["a", "mean_tokens"] == 25.0


def test_paired_change_counts_flips_and_exact_mcnemar() -> None:
    def rows(correct: list[bool], ids: list[str]) -> pd.DataFrame:
        return pd.DataFrame({"benchmark": "a", "problem_id": ids, "correct": correct})

    ids = [f"p{i}" for i in range(12)]
    # On the 11 shared problems 10 go wrong -> right and 1 right -> wrong; the last problem
    # of each side is not in the other, so it is left out.
    before = rows([False] * 10 + [True, True], [*ids[:11], "only-before"])
    after = rows([True] * 10 + [False, True], ids)
    change = paired_change(before, after).set_index("benchmark").loc["a"]
    assert change["problems"] == 11 and (change["gained"], change["lost"]) == (10, 1)
    assert change["before"] == pytest.approx(1 / 11) and change["after"] == pytest.approx(10 / 11)
    # Exact two-sided binomial test of 1 loss among 11 discordant problems, by hand.
    assert change["p_value"] == pytest.approx(2 * (1 + 11) / 2**11)
    unchanged = paired_change(before, before).iloc[0]
    assert (unchanged["gained"], unchanged["lost"], unchanged["p_value"]) == (0, 0, 1.0)


def test_cli_eval_on_a_tiny_model(tmp_path, capsys) -> None:
    out = tmp_path / "eval.parquet"
    argv = ["eval", "--model", "tiny-llama", "--benchmarks", "arith", "--limit", "2"]
    assert main([*argv, "--max-new-tokens", "4", "--out", str(out)]) == 0
    assert "pass@1" in capsys.readouterr().out
    assert len(pd.read_parquet(out)) == 2


def test_cli_reports_bad_input_clearly(tmp_path, capsys) -> None:
    assert main(["eval", "--model", "tiny-llama", "--benchmarks", "gsm9k", "--limit", "1"]) == 2
    assert "unknown data set 'gsm9k'" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path / "missing"), "--limit", "1"]) == 2
    assert "model not found" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_eval_real_model(tmp_path, capsys) -> None:
    out = tmp_path / "eval.parquet"
    argv = ["eval", "--benchmarks", "arith", "--limit", "8", "--max-new-tokens", "160"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "smollm2-135m-instruct" in printed and "arith" in printed
    results = pd.read_parquet(out)
    assert len(results) == 8 and results["response"].str.len().gt(0).all()
    # The instruct model follows the prompt: most responses state an answer.
    assert (results["status"] != "no_answer").mean() >= 0.5


def test_cli_eval_reads_a_config_and_flags_override(tmp_path, capsys) -> None:
    config = tmp_path / "eval.yaml"
    config.write_text("benchmarks: [arith]\nlimit: 3\nmax_new_tokens: 2\n")
    out = tmp_path / "eval.parquet"
    argv = ["eval", "--model", "tiny-llama", "--config", str(config), "--limit", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    assert len(pd.read_parquet(out)) == 2
    config.write_text("limt: 3\n")
    assert main(["eval", "--model", "tiny-llama", "--config", str(config)]) == 2
    assert "unknown config key limt" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# Greedy through an engine, sampled responses
# ---------------------------------------------------------------------------------------


def test_greedy_through_the_engine_matches_generate(tiny_llama) -> None:
    model, tokenizer = tiny_llama
    config = EvalConfig(benchmarks=["arith"], limit=3, max_new_tokens=6, batch_size=3)
    reference = evaluate(model, tokenizer, config, progress=False)
    engine = TransformersEngine(model, tokenizer)
    through_engine = evaluate(None, tokenizer, config, engine=engine, progress=False)
    columns = ["problem_id", "response", "pred", "num_tokens", "finish_reason"]
    pd.testing.assert_frame_equal(through_engine[columns], reference[columns])
    with pytest.raises(ValueError, match="needs a model or an engine"):
        evaluate(None, tokenizer, config, progress=False)


def test_an_engine_with_its_own_batching_gets_every_greedy_prompt_at_once(tiny_llama) -> None:
    """vLLM (``schedules_own_batch``) gets one call for every benchmark: no barrier every
    ``batch_size`` prompts. Greedy responses and rows do not depend on the calls (the real
    engine's evaluation: tests/test_vllm_loop.py)."""
    model, tokenizer = tiny_llama
    config = EvalConfig(benchmarks=["arith", "gsm8k"], limit=3, max_new_tokens=6, batch_size=2)

    class CountingEngine(TransformersEngine):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.calls: list[int] = []

        def sample(self, prefixes, n, settings):
            self.calls.append(len(prefixes))
            return super().sample(prefixes, n, settings)

    batched = CountingEngine(model, tokenizer)
    by_batch = evaluate(None, tokenizer, config, engine=batched, progress=False)
    assert batched.calls == [2, 1, 2, 1]
    own = CountingEngine(model, tokenizer)
    own.schedules_own_batch = True
    at_once = evaluate(None, tokenizer, config, engine=own, progress=False)
    assert own.calls == [6]
    columns = ["benchmark", "problem_id", "response", "pred", "correct", "num_tokens"]
    pd.testing.assert_frame_equal(at_once[columns], by_batch[columns])


def test_sample_responses_rows_weights_and_regrade(tiny_llama) -> None:
    model, tokenizer = tiny_llama
    config = EvalConfig(
        benchmarks=["arith"], limit=2, max_new_tokens=5, num_samples=3, batch_size=1, seed=1
    )
    problems = load_problems("arith", "test", limit=2)
    engine = TransformersEngine(model, tokenizer)
    samples = sample_responses(engine, tokenizer, problems, config, progress=False)
    assert len(samples) == 2 * 3
    assert samples.groupby("problem_id")["sample"].apply(list).tolist() == [[0, 1, 2]] * 2
    assert samples["mean_logprob"].map(math.isfinite).all() and samples["mean_logprob"].lt(0).all()
    # Without a PRM the weight is the policy's own confidence exp(mean log-prob).
    assert samples["weight"].tolist() == pytest.approx(samples["mean_logprob"].map(math.exp))
    assert samples["num_tokens"].le(5).all()
    # Every stored grade is reproduced from the stored response and gold.
    columns = ["pred", "correct", "status"]
    pd.testing.assert_frame_equal(regrade(samples)[columns], samples[columns])
    # Same seed, same responses; the benchmark loop gives the same rows.
    again = evaluate_samples(engine, tokenizer, config, progress=False)
    pd.testing.assert_frame_equal(again, samples)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        sample_responses(engine, tokenizer, problems, EvalConfig(), progress=False)


def test_prm_weights_are_last_step_scores(tmp_path, tiny_llama) -> None:
    model, tokenizer = tiny_llama
    prm_dir = save_tiny_prm(tmp_path / "prm", tokenizer, channels=1)
    config = EvalConfig(limit=1, max_new_tokens=4, num_samples=2, prm_model=prm_dir)
    problems = load_problems("arith", "test", limit=1)
    engine = TransformersEngine(model, tokenizer)
    samples = sample_responses(engine, tokenizer, problems, config, progress=False)
    assert samples["weight"].between(0, 1).all()
    # The weight is the PRM's score of each response's last step, prompt included.
    scorer = PRMScorer(prm_dir)
    prompt = build_prompt(tokenizer, problems[0].question, config.system_prompt)
    for row in samples.itertuples():
        if row.response:
            [scores] = scorer.score(prompt, [split_steps(row.response)])
            assert row.weight == pytest.approx(scores[-1], abs=1e-5)


# ---------------------------------------------------------------------------------------
# maj@N, vote@N, best@N, summary rows
# ---------------------------------------------------------------------------------------


def hand_made_samples() -> pd.DataFrame:
    """Three problems (gold in column ``gold``) with four samples each."""
    problems = {
        # 1/2 and 0.5 are one answer (2 votes, weight 0.2) against 3 (1 vote, weight 0.9);
        # the answerless sample has the top weight but never counts.
        "p1": ("1/2", [("0.5", 0.1), ("3", 0.9), ("\\frac{1}{2}", 0.1), (None, 0.99)]),
        # A 2-2 count tie goes to the answer seen first (7, wrong); weights favour 8.
        "p2": ("8", [("7", 0.1), ("8", 0.4), ("7", 0.1), ("8", 0.3)]),
        # No sample has an answer: every metric is wrong with no prediction.
        "p3": ("5", [(None, 0.5), (None, 0.5), (None, 0.5), (None, 0.5)]),
    }
    rows = []
    for problem_id, (gold, samples) in problems.items():
        for index, (pred, weight) in enumerate(samples):
            response = "I am not sure" if pred is None else f"So \\boxed{{{pred}}}"
            result = grade(response, gold)
            assert result.pred == pred
            rows.append(
                {
                    "benchmark": "toy",
                    "problem_id": problem_id,
                    "sample": index,
                    "gold": gold,
                    "response": response,
                    "pred": result.pred,
                    "correct": result.correct,
                    "status": result.status,
                    "weight": weight,
                }
            )
    return pd.DataFrame(rows)


def test_maj_vote_and_best_on_hand_made_samples() -> None:
    samples = hand_made_samples()
    maj = maj_at_n(samples).set_index("problem_id")
    vote = vote_at_n(samples).set_index("problem_id")
    best = best_of_n(samples).set_index("problem_id")
    assert list(maj.columns) == ["benchmark", "pred", "correct"]
    # p1: equivalent forms vote together; the first form seen stands for the group.
    assert (maj.loc["p1", "pred"], maj.loc["p1", "correct"]) == ("0.5", True)
    assert (vote.loc["p1", "pred"], vote.loc["p1", "correct"]) == ("3", False)
    assert (best.loc["p1", "pred"], best.loc["p1", "correct"]) == ("3", False)
    # p2: the count tie goes to the first group; the weights break it the other way.
    assert (maj.loc["p2", "pred"], maj.loc["p2", "correct"]) == ("7", False)
    assert (vote.loc["p2", "pred"], vote.loc["p2", "correct"]) == ("8", True)
    assert (best.loc["p2", "pred"], best.loc["p2", "correct"]) == ("8", True)
    for table in (maj, vote, best):
        assert pd.isna(table.loc["p3", "pred"]) and not table.loc["p3", "correct"]


def test_best_of_n_ties_go_to_the_first_sample() -> None:
    samples = hand_made_samples()
    samples.loc[samples["problem_id"] == "p2", "weight"] = 0.5
    best = best_of_n(samples).set_index("problem_id")
    assert best.loc["p2", "pred"] == "7"
    scores = sampled_scores(samples.sample(frac=1.0, random_state=0))  # row order is irrelevant
    assert scores.set_index("problem_id").loc["p2", "best_pred"] == "7"


def test_regrade_reproduces_hand_made_rows_and_fixes_stale_ones() -> None:
    samples = hand_made_samples()
    columns = ["pred", "correct", "status"]
    pd.testing.assert_frame_equal(regrade(samples)[columns], samples[columns])
    stale = samples.assign(correct=False, status="wrong")
    pd.testing.assert_frame_equal(regrade(stale)[columns], samples[columns])


def test_summary_rows_columns_and_values() -> None:
    greedy = pd.DataFrame(
        {"benchmark": ["toy", "toy", "toy", "other"], "correct": [True, False, True, False]}
    )
    summary = summary_rows(greedy, hand_made_samples(), iteration=2)
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert summary["iteration"].dtype == "int64" and summary["n"].dtype == "int64"
    keyed = summary.set_index(["benchmark", "metric"])
    assert list(keyed.index) == [
        ("toy", "pass@1"),
        ("toy", "maj@4"),
        ("toy", "vote@4"),
        ("toy", "best@4"),
        ("other", "pass@1"),
    ]
    assert keyed.loc[("toy", "pass@1"), "value"] == pytest.approx(2 / 3)
    assert keyed.loc[("toy", "maj@4"), ["n", "correct"]].tolist() == [3, 1]
    assert keyed.loc[("toy", "vote@4"), "correct"] == 1
    assert keyed.loc[("other", "pass@1"), "value"] == 0.0
    assert (summary["ci95_low"] <= summary["value"]).all()
    assert (summary["value"] <= summary["ci95_high"]).all()
    assert list(summary_rows(greedy, None, 0)["metric"]) == ["pass@1", "pass@1"]
    empty = summary_rows(None, None, 0)
    assert empty.empty and list(empty.columns) == SUMMARY_COLUMNS


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"num_samples": -1}, "num_samples must be >= 0, got -1"),
        ({"sample_temperature": 0.0}, "sample_temperature must be > 0"),
        ({"sample_top_p": 1.5}, r"sample_top_p must be in \(0, 1\]"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"num_samples": 2.5}, "num_samples must be int"),
        ({"prm_model": 3}, "prm_model must be"),
    ],
)
def test_bad_sampling_config_raises(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(EvalConfig, data)
