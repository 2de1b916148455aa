from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from sppd_lib.cli import main
from sppd_lib.config import ConfigError, PairConfig, SamplerConfig, TrainConfig
from sppd_lib.data import load_problems
from sppd_lib.engines.transformers_engine import TransformersEngine
from sppd_lib.models import attach_lora, build_tiny_model, load_model
from sppd_lib.packing import pack_sequences, pad_sequences, sequence_logps
from sppd_lib.pairs import build_pairs
from sppd_lib.rundir import TrainDir
from sppd_lib.sampler import sample_trees
from sppd_lib.train_data import PreferenceDataset, compute_reference_logps, training_order
from sppd_lib.trainer import train


def read_log(out_dir):
    return TrainDir(out_dir).read_log()


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trees(tiny_llama):
    """Tiny-model trees: long shared prompts, short sibling steps (no correct answers)."""
    model, tokenizer = tiny_llama
    config = SamplerConfig(k=6, c=2, max_step_tokens=8, max_depth=3, problems_per_batch=3)
    problems = load_problems("arith", "train", limit=3)
    return list(sample_trees(TransformersEngine(model, tokenizer), tokenizer, problems, config))


def sibling_pairs(trees) -> pd.DataFrame:
    """Every sibling couple as a pair with the sampler's log-probs as reference (Δv 0.5, so
    the default dynamic margin γ·Δv is 0.5)."""
    rows = []
    for tree in trees:
        for parent in tree.nodes:
            for win, lose in itertools.combinations(tree.children(parent.id), 2):
                rows.append(
                    {
                        "tree_id": tree.problem.id,
                        "prompt_ids": tree.prefix_ids(parent.id),
                        "chosen_ids": win.token_ids,
                        "rejected_ids": lose.token_ids,
                        "chosen_ref_logp": sum(win.logprobs),
                        "rejected_ref_logp": sum(lose.logprobs),
                    }
                )
    return pd.DataFrame(rows).assign(delta_value=0.5)


@pytest.fixture(scope="module")
def pairs(trees) -> pd.DataFrame:
    return sibling_pairs(trees)


def fresh_model():
    return build_tiny_model("llama", seed=0)


def sequences(pairs: pd.DataFrame) -> tuple[list, list]:
    prefixes, steps = [], []
    for row in pairs.itertuples():
        prefixes += [row.prompt_ids, row.prompt_ids]
        steps += [row.chosen_ids, row.rejected_ids]
    return prefixes, steps


# ---------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_logps_equal_unpacked(pairs, attention) -> None:
    model, _ = fresh_model()
    model.set_attn_implementation(attention)
    prefixes, steps = sequences(pairs)
    packed = pack_sequences(prefixes, steps)
    padded = pad_sequences(prefixes, steps)
    with torch.no_grad():
        packed_logps, packed_tokens = sequence_logps(model, packed, len(steps), attention)
        padded_logps, padded_tokens = sequence_logps(model, padded, len(steps), attention)
    torch.testing.assert_close(packed_logps, padded_logps, atol=1e-4, rtol=0)
    torch.testing.assert_close(packed_tokens, padded_tokens, atol=1e-4, rtol=0)
    # Shared prompts and prefixes are forwarded once: far fewer tokens than padded rows.
    assert packed.tokens_forwarded < 0.5 * sum(
        len(p) + len(s) for p, s in zip(prefixes, steps, strict=True)
    )


def test_packing_shares_prefix_and_keeps_positions() -> None:
    batch = pack_sequences([[5, 6, 7], [5, 6, 7], [5, 6]], [[8, 9], [8, 4], [1]])
    # Trie: 5 6 7 8 9 | 4 (under 8) | 1 (under 6).
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9, 4, 1]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 4, 2]]
    mask = batch.attention_mask[0, 0]
    assert mask[5].tolist() == [True, True, True, True, False, True, False]  # 4 sees 5 6 7 8
    assert mask[6].tolist() == [True, True, False, False, False, False, True]  # 1 sees 5 6
    assert batch.target_tokens.tolist() == [8, 9, 8, 4, 1]
    assert batch.target_sequence.tolist() == [0, 0, 1, 1, 2]
    # Logits are taken at predicting positions only: 7 (for 8), 8 (for 9 and 4), 6 (for 1).
    assert batch.logit_positions.tolist() == [1, 2, 3]


def test_empty_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty prefix"):
        pack_sequences([[]], [[1, 2]])


# ---------------------------------------------------------------------------------------
# Reference log-probs and data
# ---------------------------------------------------------------------------------------


def test_tree_reference_logps_equal_recomputed(tiny_llama, pairs) -> None:
    """The sampler's raw log-probs are the reference: no reference forward is needed."""
    model, _ = tiny_llama
    dataset = PreferenceDataset(pairs, "sppd")
    from_tree = [(r["ref_chosen"], r["ref_rejected"]) for r in dataset.rows]
    compute_reference_logps(model, dataset, batch_size=4)
    recomputed = [(r["ref_chosen"], r["ref_rejected"]) for r in dataset.rows]
    torch.testing.assert_close(torch.tensor(recomputed), torch.tensor(from_tree), atol=1e-4, rtol=0)


def test_recompute_disables_the_lora_adapter(pairs) -> None:
    model, _ = fresh_model()
    dataset = PreferenceDataset(pairs, "sppd")
    compute_reference_logps(model, dataset)
    base = [r["ref_chosen"] for r in dataset.rows]
    policy = attach_lora(model, r=4)
    for name, parameter in policy.named_parameters():
        if "lora_B" in name:  # a trained-looking adapter, so the policy differs from the base
            torch.nn.init.normal_(parameter, std=0.5)
    compute_reference_logps(policy, dataset)
    torch.testing.assert_close(torch.tensor([r["ref_chosen"] for r in dataset.rows]),
                               torch.tensor(base), atol=1e-5, rtol=0)  # fmt: skip


@pytest.mark.parametrize(
    ("reference", "starts_at_zero"), [("tiny-llama", True), ("tiny-qwen2", False)]
)
def test_separate_reference_model(pairs, tmp_path, reference, starts_at_zero) -> None:
    """A reference model of its own: the same weights as the policy give β·h = 0 at step 1."""
    model, tokenizer = fresh_model()  # the weights of the `tiny-llama` alias
    config = TrainConfig(batch_size=len(pairs), reference="recompute", reference_model=reference)
    result = train(model, tokenizer, pairs, config, tmp_path / reference, progress=False)
    first = read_log(result.out_dir)["reward_margin"].dropna().iloc[0]
    assert (abs(first) < 1e-4) == starts_at_zero


def test_training_order_groups_trees_and_covers_every_pair(pairs) -> None:
    ordered = training_order(pairs, epochs=2, seed=3, group_by_tree=True)
    assert len(ordered) == 2 * len(pairs)
    for epoch in (ordered.iloc[: len(pairs)], ordered.iloc[len(pairs) :]):
        assert sorted(epoch["pair_index"]) == list(range(len(pairs)))
        runs = [key for key, _ in itertools.groupby(epoch["tree_id"])]
        assert len(runs) == epoch["tree_id"].nunique()  # each tree's pairs are contiguous


def test_bad_training_data_fails_clearly(pairs, tmp_path) -> None:
    model, tokenizer = fresh_model()
    with pytest.raises(ConfigError, match="lacks column"):
        train(model, tokenizer, pairs.drop(columns=["rejected_ids"]), TrainConfig(), tmp_path / "a")
    with pytest.raises(ConfigError, match="delta_value"):
        train(model, tokenizer, pairs.drop(columns=["delta_value"]), TrainConfig(), tmp_path / "c")
    with pytest.raises(ConfigError, match="no sppd training data"):
        train(model, tokenizer, pairs.iloc[:0], TrainConfig(), tmp_path / "b")
    with pytest.raises(ConfigError, match=r"train\.phase"):
        TrainConfig(phase="ppo")
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        TrainConfig(batch_size=0)


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------


def test_lora_training_changes_adapter_not_base(pairs, tmp_path) -> None:
    model, tokenizer = fresh_model()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(batch_size=4, epochs=2, lora_r=8, learning_rate=1e-2, save_merged=False)
    result = train(model, tokenizer, pairs, config, tmp_path / "train", progress=False)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero
    for name, value in model.state_dict().items():
        if "lora_" not in name:
            assert torch.equal(value, base[name.replace(".base_layer", "")]), name
    assert (result.adapter_dir / "adapter_config.json").exists() and result.model_dir is None
    assert not (tmp_path / "train.partial").exists()


def test_merged_weights_equal_base_plus_adapter(pairs, tmp_path) -> None:
    from peft import PeftModel

    model, tokenizer = fresh_model()
    config = TrainConfig(batch_size=4, epochs=2, lora_r=8, learning_rate=1e-2)
    result = train(model, tokenizer, pairs, config, tmp_path / "train", progress=False)
    merged, _ = load_model(result.model_dir, device="cpu")
    with_adapter = PeftModel.from_pretrained(fresh_model()[0], result.adapter_dir).eval()
    ids = torch.tensor([pairs.iloc[0].prompt_ids])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, with_adapter(ids).logits, atol=1e-4, rtol=0)
        assert not torch.allclose(merged(ids).logits, fresh_model()[0](ids).logits, atol=1e-3)


def test_full_fine_tuning_changes_parameters_and_logs(pairs, tmp_path) -> None:
    model, tokenizer = fresh_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(batch_size=4, epochs=3, lora_r=0, learning_rate=1e-3)
    result = train(model, tokenizer, pairs, config, tmp_path / "train", progress=False)
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    log = read_log(result.out_dir)
    steps = log.dropna(subset=["loss"])
    assert len(steps) == result.steps == -(-3 * len(pairs) // 4)
    for column in ("loss", "reward_accuracy", "reward_margin", "value_margin", "grad_norm"):
        assert steps[column].notna().all(), column
    assert steps["value_margin"].eq(0.5).all()
    assert steps["reward_margin"].iloc[0] == pytest.approx(0.0, abs=1e-3)  # policy = reference
    pair_log = pd.read_parquet(result.out_dir / "pair_log.parquet")
    assert len(pair_log) == 3 * len(pairs)
    assert sorted(pair_log["pair_index"].unique()) == list(range(len(pairs)))
    # Training moves the implicit reward margin of the training pairs up.
    first, last = pair_log["step"].min(), pair_log["step"].max()
    assert (
        pair_log[pair_log.step == last].reward_margin.mean()
        > pair_log[pair_log.step == first].reward_margin.mean()
    )


@pytest.mark.parametrize("phase", ["sft", "dpo"])
def test_sft_and_dpo_phases_lower_their_loss(pairs, phase, tmp_path) -> None:
    model, tokenizer = fresh_model()
    config = TrainConfig(phase=phase, batch_size=len(pairs), epochs=6, learning_rate=5e-3)
    result = train(model, tokenizer, pairs, config, tmp_path / phase, progress=False)
    losses = read_log(result.out_dir)["loss"].dropna().tolist()
    assert losses[-1] < losses[0]
    if phase == "dpo":  # sentence-level DPO has no margin, whatever the data says
        assert pd.read_parquet(result.out_dir / "pair_log.parquet")["value_margin"].eq(0).all()


def test_packed_and_padded_training_agree(pairs, tmp_path) -> None:
    losses = []
    for packing in (True, False):
        model, tokenizer = fresh_model()
        config = TrainConfig(batch_size=4, epochs=1, packing=packing, learning_rate=1e-3)
        result = train(model, tokenizer, pairs, config, tmp_path / str(packing), progress=False)
        losses.append(read_log(result.out_dir)["loss"].dropna().tolist())
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)


def test_cli_train_from_trees_and_errors(trees, tmp_path, capsys) -> None:
    from sppd_lib.tree import write_trees

    path = tmp_path / "trees.jsonl.gz"
    write_trees(path, trees)
    # Tiny-model trees hold no correct path: the sft phase has nothing to learn from.
    code = main(["train", "--model", "tiny-llama", "--trees", str(path), "--phase", "sft",
                 "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 2 and "no sft training data" in capsys.readouterr().err
    code = main(["train", "--model", "tiny-llama", "--pairs", str(tmp_path / "missing.parquet"),
                 "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 2 and "missing.parquet" in capsys.readouterr().err
    code = main(["train", "--model", "tiny-llama", "--pairs", str(path), "--optimizer", "adam",
                 "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 2 and "train.optimizer" in capsys.readouterr().err


def test_margin_modes_in_training(pairs, tmp_path) -> None:
    varied = pairs.assign(delta_value=[0.5 + 0.5 * i / (len(pairs) - 1) for i in range(len(pairs))])
    varied["margin"] = 9.0  # a margin column of an older pairs file is ignored
    used = {}
    for mode, gamma in (("dynamic", 2.0), ("fixed", 2.0), ("none", 2.0)):
        config = TrainConfig(margin=mode, gamma=gamma, batch_size=4, lora_r=4, save_merged=False)
        out = tmp_path / mode
        train(fresh_model()[0], fresh_model()[1], varied, config, out, progress=False)
        log = pd.read_parquet(out / "pair_log.parquet").sort_values("pair_index")
        used[mode] = log["value_margin"].to_numpy()
        saved = json.loads((out / "config.json").read_text())
        assert saved["margin"] == mode and saved["gamma"] == gamma
    expected = 2.0 * varied["delta_value"].to_numpy()
    assert used["dynamic"] == pytest.approx(expected, rel=1e-6)
    # fixed by default: the mean of γ·Δv over the phase's pairs, recorded in config.json
    assert used["fixed"] == pytest.approx([expected.mean()] * len(pairs), rel=1e-6)
    saved = json.loads((tmp_path / "fixed" / "config.json").read_text())
    assert saved["fixed_margin"] == pytest.approx(expected.mean())
    assert (used["none"] == 0).all()
    for bad in ({"gamma": -1.0}, {"fixed_margin": -3.0}, {"margin": "dynamc"}):
        with pytest.raises(ConfigError, match=r"train\."):
            TrainConfig(**bad)


def test_cli_train_honours_gamma(pairs, tmp_path, capsys) -> None:
    path = tmp_path / "pairs.parquet"
    pairs.to_parquet(path)
    losses = {}
    for gamma in ("1", "2"):
        out = tmp_path / f"gamma{gamma}"
        argv = ["train", "--model", "tiny-llama", "--pairs", str(path), "--out", str(out),
                "--gamma", gamma, "--lora-r", "4", "--batch-size", "4"]  # fmt: skip
        argv.append("--no-save-merged")
        assert main(argv) == 0
        log = pd.read_parquet(out / "pair_log.parquet")
        assert log["value_margin"].to_numpy() == pytest.approx(float(gamma) * 0.5)
        losses[gamma] = log["loss"].mean()
    assert losses["2"] > losses["1"]  # a larger margin, a larger loss on the same pairs


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(pairs, tmp_path) -> None:
    """`accelerate launch` with 2 CPU processes (gloo) = 1 process with the same global batch."""
    pairs_file = tmp_path / "pairs.parquet"
    pairs.to_parquet(pairs_file)
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    common = ["-m", "sppd_lib.cli", "train", "--model", "tiny-llama", "--pairs", str(pairs_file),
              "--epochs", "2", "--learning-rate", "1e-3"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {
        "one": [sys.executable, *common, "--batch-size", "4"],
        "two": [
            accelerate,
            "launch",
            "--config_file",
            str(ROOT / "configs/accelerate/cpu_2proc.yaml"),
            "--main_process_port",  # a free port: two test runs at once must not meet
            str(_free_port()),
            *common,
            "--batch-size",
            "2",
        ],
    }
    logs = {}
    for name, command in runs.items():
        out = tmp_path / name
        done = subprocess.run(
            [*command, "--out", str(out)], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
        logs[name] = read_log(out).dropna(subset=["loss"])
    assert len(logs["one"]) == len(logs["two"]) > 1
    for column in ("loss", "grad_norm", "reward_margin"):
        assert logs["two"][column].tolist() == pytest.approx(logs["one"][column].tolist(), abs=1e-4)


# ---------------------------------------------------------------------------------------
# Real model
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_model_learns_its_step_pairs(smollm2, smollm2_trees, tmp_path) -> None:
    trees, _ = smollm2_trees
    pairs, _ = build_pairs(trees, PairConfig(value="bellman"))
    assert len(pairs) >= 4
    model, tokenizer = load_model("smollm2-135m-instruct", device="cpu")
    dataset = PreferenceDataset(pairs, "sppd")
    from_tree = torch.tensor([[r["ref_chosen"], r["ref_rejected"]] for r in dataset.rows])
    compute_reference_logps(model, dataset)
    recomputed = torch.tensor([[r["ref_chosen"], r["ref_rejected"]] for r in dataset.rows])
    torch.testing.assert_close(recomputed, from_tree, atol=2e-3, rtol=0)

    config = TrainConfig(batch_size=4, epochs=3, learning_rate=2e-4, beta=0.1)
    result = train(model, tokenizer, pairs, config, tmp_path / "train", progress=False)
    trained = PreferenceDataset(pairs, "sppd")
    compute_reference_logps(model.eval(), trained)  # the trained policy's log-probs
    policy = torch.tensor([[r["ref_chosen"], r["ref_rejected"]] for r in trained.rows])
    h = (policy[:, 0] - from_tree[:, 0]) - (policy[:, 1] - from_tree[:, 1])
    accuracy = (h > 0).float().mean().item()
    assert accuracy > 0.5, h
    assert result.steps == -(-3 * len(pairs) // 4)


def test_heldout_trees_are_scored_after_training_not_trained_on(pairs, tmp_path) -> None:
    """``heldout_trees``: one of the three trees is kept out; its pairs are scored after
    training with log-probs before (the sampler's) and after, and β·h of the trained model."""
    from sppd_lib.loss import value_margin

    model, tokenizer = fresh_model()
    config = TrainConfig(
        batch_size=4, epochs=2, lora_r=8, learning_rate=1e-2, heldout_trees=0.3, save_merged=False
    )
    result = train(model, tokenizer, pairs, config, tmp_path / "train", progress=False)
    heldout = pd.read_parquet(TrainDir(result.out_dir).heldout)
    assert heldout["tree_id"].nunique() == 1
    held = pairs.reset_index(drop=True)
    held = held[held["tree_id"] == heldout["tree_id"].iloc[0]]
    assert list(heldout["pair_index"]) == list(held.index)  # rows of the pairs file
    trained = set(pd.read_parquet(TrainDir(result.out_dir).pair_log)["pair_index"])
    assert not trained & set(heldout["pair_index"])
    assert trained == set(range(len(pairs))) - set(heldout["pair_index"])
    assert result.examples == len(pairs) - len(heldout)  # what was trained on
    assert list(heldout["chosen_before"]) == pytest.approx(list(held["chosen_ref_logp"]))
    # the after log-probs are the trained policy's own
    with torch.no_grad():
        ids = held.iloc[0]
        sequence = torch.tensor([[*ids["prompt_ids"], *ids["chosen_ids"]]])
        logits = model(sequence).logits[0, len(ids["prompt_ids"]) - 1 : -1]
        own = logits.log_softmax(-1).gather(1, torch.tensor(ids["chosen_ids"])[:, None]).sum()
    assert heldout["chosen_after"].iloc[0] == pytest.approx(float(own), abs=1e-3)
    h = (heldout["chosen_after"] - heldout["chosen_before"]) - (
        heldout["rejected_after"] - heldout["rejected_before"]
    )
    assert (heldout["reward_margin"] - 0.1 * h).abs().max() < 1e-9
    margin = value_margin(torch.tensor([0.5]), "dynamic", 1.0, None).item()
    assert heldout["margin"].tolist() == pytest.approx([margin] * len(heldout))
    assert heldout["learned"].tolist() == (heldout["reward_margin"] > margin).tolist()
    with pytest.raises(ConfigError, match="heldout_trees"):
        TrainConfig(heldout_trees=1.0)
