"""The training data of one phase as the trainer batches it: the dataset of pairs (or τ+
paths), the loss margin of every pair, the tree-by-tree order, the collator that packs a
batch into one token trie (``sppd_lib.packing``), and reference log-probs recomputed by a
model when the sampler's do not apply."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedModel

from sppd_lib.config import ConfigError, TrainConfig
from sppd_lib.data import DataError
from sppd_lib.loss import value_margin
from sppd_lib.packing import Batch, pack_sequences, pad_sequences, sequence_logps

__all__ = [
    "PairCollator",
    "PreferenceDataset",
    "attention_of",
    "batch_of",
    "check_finite_rows",
    "compute_reference_logps",
    "pair_margins",
    "training_order",
]


def check_finite_rows(
    data: pd.DataFrame,
    source: str,
    fix: str = "rebuild the file (sppd pairs) or drop those rows",
) -> None:
    """Every number of ``data`` (its numeric columns: Δv, values, reference log-probs, ...)
    is finite, so no NaN reaches a loss that would then train on NaN gradients.

    Raises:
        DataError: naming ``source`` (the file), the row (0-based), the column and ``fix``.
    """
    numeric = data.select_dtypes(include="number").select_dtypes(exclude="bool")
    if numeric.empty:
        return
    finite = np.isfinite(numeric.to_numpy(dtype=float))
    if finite.all():
        return
    row, column = (int(i[0]) for i in np.nonzero(~finite))
    name = numeric.columns[column]
    raise DataError(
        f"{source}: row {row} (0-based): {name} is {numeric.iloc[row, column]} (not a finite "
        f"number; {int((~finite).any(axis=1).sum())} such row(s)); {fix}"
    )


def _ids(value: Any) -> list[int]:
    return [] if value is None else [int(t) for t in value]


class PreferenceDataset(torch.utils.data.Dataset):
    """Pairs (``sppd``, ``dpo``) or τ+ paths (``sft``) as token ids, in training order.

    Each row needs ``prompt_ids`` and ``chosen_ids``; pairs also ``rejected_ids``,
    ``chosen_ref_logp``, ``rejected_ref_logp``; ``margin`` is the loss margin of ``sppd`` rows
    (:func:`train` adds it with :func:`pair_margins`; 0 when absent). The order is the
    training order (see ``training_order``), so the Trainer samples sequentially.
    """

    def __init__(self, frame: pd.DataFrame, phase: str) -> None:
        needed = ["prompt_ids", "chosen_ids"]
        if phase != "sft":
            needed += ["rejected_ids", "chosen_ref_logp", "rejected_ref_logp"]
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise ConfigError(f"{phase} training data lacks column(s) {missing}")
        self.phase = phase
        self.rows: list[dict[str, Any]] = []
        for index, row in enumerate(frame.to_dict("records")):
            prompt, chosen = _ids(row["prompt_ids"]), _ids(row["chosen_ids"])
            rejected = _ids(row.get("rejected_ids"))
            if not prompt or not chosen or (phase != "sft" and not rejected):
                raise ConfigError(f"training row {index} has an empty prompt or step")
            self.rows.append(
                {
                    "pair_index": int(row.get("pair_index", index)),
                    "prompt_ids": prompt,
                    "chosen_ids": chosen,
                    "rejected_ids": rejected,
                    "ref_chosen": float(row.get("chosen_ref_logp", 0.0)),
                    "ref_rejected": float(row.get("rejected_ref_logp", 0.0)),
                    "margin": float(row.get("margin", 0.0)) if phase == "sppd" else 0.0,
                    "delta_value": float(row.get("delta_value", 0.0) or 0.0),
                }
            )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


def pair_margins(data: pd.DataFrame, config: TrainConfig) -> tuple[list[float], dict[str, Any]]:
    """The loss margin of every row of ``data`` and the settings that made them.

    ``sppd`` rows get :func:`~sppd_lib.loss.value_margin` of their ``delta_value`` (or
    ``value_chosen − value_rejected``); ``dpo`` and ``sft`` rows get 0. A ``margin`` column
    stored by older versions of the pairs phase is ignored: the train config decides.

    Returns:
        ``(margins, settings)``; ``settings`` holds ``margin``, ``gamma``, ``fixed_margin``
        (resolved: the constant actually used by ``fixed``) and ``mean_margin``.
    """
    if config.phase != "sppd":
        return [0.0] * len(data), {"margin": "none", "gamma": 0.0, "fixed_margin": None}
    if "delta_value" in data.columns:
        delta = data["delta_value"].astype(float)
    elif {"value_chosen", "value_rejected"} <= set(data.columns):
        delta = data["value_chosen"].astype(float) - data["value_rejected"].astype(float)
    else:
        raise ConfigError(
            "sppd training data needs a delta_value column (or value_chosen and "
            "value_rejected) to compute the margin; build it with `sppd pairs`"
        )
    margins = value_margin(
        torch.tensor(delta.to_numpy(), dtype=torch.float64),
        config.margin,
        config.gamma,
        config.fixed_margin,
    ).tolist()
    fixed = config.fixed_margin
    if config.margin == "fixed" and fixed is None:
        fixed = margins[0] if margins else 0.0
    settings = {
        "margin": config.margin,
        "gamma": config.gamma,
        "fixed_margin": fixed,
        "mean_margin": sum(margins) / len(margins) if margins else 0.0,
    }
    return margins, settings


def training_order(
    frame: pd.DataFrame, epochs: int, seed: int, group_by_tree: bool
) -> pd.DataFrame:
    """``epochs`` shuffled copies of ``frame`` (with ``pair_index`` = original row, unless
    the frame carries it already: a subset keeps the rows of its pairs file).

    With ``group_by_tree`` the trees are shuffled and each tree's pairs stay together, so a
    batch holds siblings whose shared prefix is forwarded once.
    """
    frame = frame.reset_index(drop=True)
    if "pair_index" not in frame.columns:
        frame = frame.assign(pair_index=frame.index)
    rng = random.Random(seed)
    passes = []
    for _ in range(epochs):
        if group_by_tree and "tree_id" in frame.columns:
            trees = list(dict.fromkeys(frame["tree_id"]))
            rng.shuffle(trees)
            rank = {tree: i for i, tree in enumerate(trees)}
            order = sorted(frame.index, key=lambda i: (rank[frame.at[i, "tree_id"]], i))
        else:
            order = list(frame.index)
            rng.shuffle(order)
        passes.append(frame.loc[order])
    return pd.concat(passes, ignore_index=True)


class PairCollator:
    """Features of a micro-batch → one packed trie row (or padded rows) + loss targets.

    Sequence ``2i`` is pair i's ``prompt + chosen``, ``2i + 1`` its ``prompt + rejected``;
    ``sft`` has only the chosen sequences. A step that is not final carries no EOS: the step
    token ids come from the sampler as generated (EOS only where the model stopped).
    """

    def __init__(self, phase: str, packing: bool = True, pad_id: int = 0) -> None:
        self.phase, self.packing, self.pad_id = phase, packing, pad_id

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prefixes, steps = [], []
        for feature in features:
            prefixes.append(feature["prompt_ids"])
            steps.append(feature["chosen_ids"])
            if self.phase != "sft":
                prefixes.append(feature["prompt_ids"])
                steps.append(feature["rejected_ids"])
        if self.packing:
            batch = pack_sequences(prefixes, steps)
        else:
            batch = pad_sequences(prefixes, steps, self.pad_id)
        column = lambda key, dtype: torch.tensor([f[key] for f in features], dtype=dtype)  # noqa: E731
        return {
            **{f"batch_{name}": value for name, value in vars(batch).items()},
            "pair_index": column("pair_index", torch.long),
            "ref_chosen": column("ref_chosen", torch.float32),
            "ref_rejected": column("ref_rejected", torch.float32),
            "margin": column("margin", torch.float32),
            "delta_value": column("delta_value", torch.float32),
        }


def batch_of(inputs: dict[str, torch.Tensor]) -> Batch:
    return Batch(**{k[len("batch_") :]: v for k, v in inputs.items() if k.startswith("batch_")})


@torch.no_grad()
def compute_reference_logps(
    model: PreTrainedModel,
    dataset: PreferenceDataset,
    batch_size: int = 8,
    packing: bool = True,
) -> None:
    """Replace the dataset's reference log-probs with ``model``'s (adapter disabled if peft)."""
    collator = PairCollator(dataset.phase, packing)
    disable = getattr(model, "disable_adapter", None)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with disable() if disable is not None else contextlib.nullcontext():
        for start in range(0, len(dataset), batch_size):
            rows = dataset.rows[start : start + batch_size]
            batch = batch_of({k: v.to(device) for k, v in collator(rows).items()})
            logps, _ = sequence_logps(model, batch, 2 * len(rows), attention_of(model))
            for row, (chosen, rejected) in zip(rows, logps.view(-1, 2).tolist(), strict=True):
                row["ref_chosen"], row["ref_rejected"] = chosen, rejected
    model.train(was_training)


def attention_of(model: torch.nn.Module) -> str:
    return getattr(getattr(model, "config", None), "_attn_implementation", None) or "sdpa"
