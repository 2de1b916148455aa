"""The step-pair export trains in TRL's DPOTrainer as steps: no EOS after an inner step, and
the stored reference log-probs are the ones TRL would compute (tiny model, one real step)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from sppd_lib.config import PairConfig
from sppd_lib.pairs import build_pairs, stepwise_records, to_trl_preference, write_pairs
from sppd_lib.prompts import build_prompt

trl = pytest.importorskip("trl", reason="the TRL export test needs trl (the dev extra)")

from sppd_lib.trl_export import load_step_pairs, step_dpo_trainer, trl_completion_ids  # noqa: E402

QUESTION = "What is 12 + 30?"
#: Two inner steps and two final ones (the last ends the solution; EOS belongs after it).
PAIRS = [
    ("Step 1: 12 + 30 = 42.\n\n", "Step 1: 12 + 30 = 52.\n\n", False),
    ("Add the tens: 10 + 30 = 40.\n\n", "Add the tens: 10 + 30 = 30.\n\n", False),
    ("The answer is \\boxed{42}", "The answer is \\boxed{52}", True),
    ("So the total is \\boxed{42}", "So the total is \\boxed{41}", True),
]


def _sequence_logp(model, prompt_ids: list[int], completion: list[int]) -> float:
    """log p(completion | prompt) under ``model``: what a sampler records, token by token."""
    ids = torch.tensor([prompt_ids + completion])
    with torch.no_grad():
        logps = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    targets = ids[0, 1:]
    picked = logps.gather(1, targets[:, None])[:, 0]
    return float(picked[len(prompt_ids) - 1 :].sum())


def _pairs_as_sampled(model, tokenizer) -> pd.DataFrame:
    """Pairs as the pairs phase writes them, the tokens and log-probs recorded by sampling."""
    prompt = build_prompt(tokenizer, QUESTION)
    prompt_ids = tokenizer(text=prompt)["input_ids"]
    eos = tokenizer.eos_token
    rows = []
    for chosen, rejected, final in PAIRS:
        texts = [t + eos if final else t for t in (chosen, rejected)]
        ids = trl_completion_ids(tokenizer, prompt, texts)
        row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        for side, side_ids in zip(("chosen", "rejected"), ids, strict=True):
            row[f"{side}_ids"] = side_ids
            row[f"{side}_ref_logp"] = _sequence_logp(model, prompt_ids, side_ids)
            row[f"{side}_final"] = final
        rows.append({**row, "delta_value": 0.5, "value_chosen": 0.9, "value_rejected": 0.4})
    return pd.DataFrame(rows)


def _config(tmp_path):
    return trl.DPOConfig(
        output_dir=str(tmp_path / "dpo"),
        per_device_train_batch_size=4,
        max_steps=1,
        learning_rate=1e-3,
        beta=0.1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        dataset_num_proc=None,
    )


def test_step_pairs_train_in_dpo_trainer_as_steps(tmp_path, tiny_llama) -> None:
    model, tokenizer = tiny_llama
    model = type(model)(model.config)  # a fresh copy: the session fixture stays untrained
    model.load_state_dict(tiny_llama[0].state_dict())
    path = tmp_path / "pairs.trl.parquet"
    to_trl_preference(_pairs_as_sampled(model, tokenizer)).to_parquet(path)

    trainer = step_dpo_trainer(model, tokenizer, path, _config(tmp_path))
    assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(trainer.train_dataset.column_names)
    examples = [trainer.train_dataset[i] for i in range(len(PAIRS))]
    batch = trainer.data_collator(examples)
    eos = tokenizer.eos_token_id
    for row, (_, _, final) in enumerate(PAIRS):
        for half in (row, row + len(PAIRS)):  # chosen rows, then rejected rows
            trained = batch["input_ids"][half][batch["completion_mask"][half].bool()].tolist()
            assert (trained[-1] == eos) == final, (row, trained)
    # TRL's own reference pass on the same batch gives the stored numbers: it may skip it.
    chosen, rejected = trainer.compute_ref_log_probs(trainer.model, batch)
    torch.testing.assert_close(chosen, batch["ref_chosen_logps"].float(), atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(rejected, batch["ref_rejected_logps"].float(), atol=1e-3, rtol=1e-4)
    before = [p.detach().clone() for p in model.parameters()]
    output = trainer.train()
    assert output.global_step == 1 and math.isfinite(output.training_loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_sampled_export_loads_and_trains_in_trl(tmp_path, tiny_llama) -> None:
    """The export the pairs phase writes from real (tiny-model) trees takes one TRL step."""
    import random

    from sppd_lib.data import load_problems
    from tests.run_fixture import _grade_leaves, _sample

    model, tokenizer = tiny_llama
    model = type(model)(model.config)
    model.load_state_dict(tiny_llama[0].state_dict())
    trees = _sample(load_problems("arith", "train", limit=4), seed=0)
    _grade_leaves(trees, random.Random(0))
    pairs, _ = build_pairs(trees, PairConfig(value="mc", threshold=0.0))
    assert len(pairs) > 0
    write_pairs(pairs, tmp_path / "pairs.parquet")
    path = tmp_path / "pairs.trl.parquet"
    export = pd.read_parquet(path)
    assert export["ref_chosen_logps"].tolist() == pytest.approx(
        [sum(lp) for lp in pairs["chosen_ref_logps"]]
    )
    assert export["chosen_final"].tolist() == pairs["chosen_final"].tolist()
    assert not export["chosen_final"].all()  # inner steps are marked as such
    dataset = load_step_pairs(path, tokenizer)
    assert len(dataset) == len(pairs)
    config = _config(tmp_path)
    config.per_device_train_batch_size = 2
    output = step_dpo_trainer(model, tokenizer, path, config).train()
    assert output.global_step == 1 and math.isfinite(output.training_loss)


def test_stepwise_export_offers_hard_labels(tmp_path) -> None:
    import random

    from sppd_lib.data import load_problems
    from sppd_lib.pairs import value_trees
    from tests.run_fixture import _grade_leaves, _sample

    trees = _sample(load_problems("arith", "train", limit=4), seed=0)
    _grade_leaves(trees, random.Random(0))
    trees = list(value_trees(trees, PairConfig(value="mc")))
    soft = stepwise_records(trees)
    hard = stepwise_records(trees, threshold=0.5)
    assert len(soft) == len(hard) > 0
    for soft_labels, hard_labels in zip(soft["labels"], hard["labels"], strict=True):
        assert [v >= 0.5 for v in soft_labels] == list(hard_labels)
