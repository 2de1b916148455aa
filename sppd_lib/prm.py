"""Process reward models: score steps, fill tree values, and train a small PRM of our own.

A PRM reads a state (prompt + steps) and scores each step at the token that closes it (the
step separator). Two common Hugging Face shapes are read the same way, told apart by the
number of output channels at a position:

* one channel: a value / reward head (Skywork-o1-Open-PRM style), score = sigmoid(logit);
* two channels: token classification (Qwen2.5-Math-PRM style), score = softmax(logits)[1].

Our own PRM is a ``*ForTokenClassification`` model with one channel, trained with binary
cross-entropy on soft labels (the ``mc`` values of sampled trees, in TRL's stepwise format),
so a user without a published PRM can still run ``prm`` values.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer

from sppd_lib.models import default_device, resolve_model
from sppd_lib.tree import ROOT, StepTree

__all__ = ["PRMScorer", "load_scorer", "prm_values", "train_prm"]

logger = logging.getLogger(__name__)

#: Appended after every step; the score of a step is read at this text's last token.
DEFAULT_SEPARATOR = "\n\n"


def _encode(
    tokenizer: Any, prompt: str, steps: Sequence[str], separator: str
) -> tuple[list[int], list[int]]:
    """Ids of prompt + steps (each followed by ``separator``) and each step's last position."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    positions = []
    for step in steps:
        ids = ids + tokenizer(step.rstrip() + separator, add_special_tokens=False)["input_ids"]
        positions.append(len(ids) - 1)
    return ids, positions


class PRMScorer:
    """Batched step scoring with a token-level PRM (one- or two-channel head)."""

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        separator: str = DEFAULT_SEPARATOR,
        batch_size: int = 8,
        device: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        location = resolve_model(model)
        self.device = device or default_device()
        self.tokenizer = AutoTokenizer.from_pretrained(location)
        self.model = (
            AutoModelForTokenClassification.from_pretrained(
                location, trust_remote_code=trust_remote_code, dtype=torch.float32
            )
            .to(self.device)
            .eval()
        )
        self.separator = separator
        self.batch_size = batch_size
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id or 0

    @torch.inference_mode()
    def score(self, prompt: str, paths: Sequence[Sequence[str]]) -> list[list[float]]:
        """A score in [0, 1] for every step of every path (all paths share ``prompt``)."""
        encoded = [_encode(self.tokenizer, prompt, steps, self.separator) for steps in paths]
        scores: list[list[float]] = []
        for start in range(0, len(encoded), self.batch_size):
            batch = encoded[start : start + self.batch_size]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (ids, _) in enumerate(batch):  # right padding: positions stay as encoded
                input_ids[row, : len(ids)] = torch.tensor(ids)
                mask[row, : len(ids)] = 1
            logits = self.model(
                input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)
            ).logits.float()  # (batch, seq_len, channels)
            for row, (_, positions) in enumerate(batch):
                at_steps = logits[row, positions]  # (steps, channels)
                if at_steps.shape[-1] == 1:
                    values = torch.sigmoid(at_steps[:, 0])
                else:
                    values = torch.softmax(at_steps, dim=-1)[:, 1]
                scores.append(values.tolist())
        return scores


def load_scorer(name: str | os.PathLike[str] | None) -> PRMScorer | None:
    """The one place a PRM is loaded: a :class:`PRMScorer` of ``name``, or ``None`` without
    one (no PRM configured)."""
    return PRMScorer(name) if name else None


def prm_values(tree: StepTree, scorer: PRMScorer) -> StepTree:
    """Score every step of the tree (each root-to-leaf path once); the root gets the mean
    of its children, as it has no step of its own."""
    leaves = tree.leaves()
    if leaves:
        paths = [tree.path(leaf.id) for leaf in leaves]
        prompt = tree.prompt_text or tree.problem.question
        for path, scores in zip(
            paths, scorer.score(prompt, [[s.text for s in p] for p in paths]), strict=True
        ):
            for step, score in zip(path, scores, strict=True):
                step.value, step.value_source = float(score), "prm"
    children = tree.children(ROOT)
    tree.root.value = sum(c.value for c in children) / len(children) if children else 0.0  # type: ignore[misc]
    tree.root.value_source = "prm"
    return tree


def train_prm(
    stepwise: pd.DataFrame,
    base_model: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    epochs: int = 2,
    learning_rate: float = 1e-4,
    batch_size: int = 8,
    separator: str = DEFAULT_SEPARATOR,
    seed: int = 0,
    device: str | None = None,
) -> list[float]:
    """Train a one-channel token-classification PRM on stepwise soft labels; save it.

    ``stepwise`` has TRL's stepwise columns ``prompt``, ``completions`` (steps) and ``labels``
    (a value in [0, 1] per step). The loss is binary cross-entropy at each step's last token.
    Returns the mean loss of every epoch.
    """
    if stepwise.empty:
        raise ValueError("no stepwise records to train a PRM on (no complete paths?)")
    device = device or default_device()
    location = resolve_model(base_model)
    tokenizer = AutoTokenizer.from_pretrained(location)
    torch.manual_seed(seed)
    model = AutoModelForTokenClassification.from_pretrained(
        location, num_labels=1, dtype=torch.float32
    ).to(device)
    model.config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    examples = [
        (*_encode(tokenizer, row.prompt, list(row.completions), separator), list(row.labels))
        for row in stepwise.itertuples()
    ]
    order = list(range(len(examples)))
    rng = random.Random(seed)
    losses = []
    model.train()
    for _ in range(epochs):
        rng.shuffle(order)
        total, batches = 0.0, 0
        for start in range(0, len(order), batch_size):
            batch = [examples[i] for i in order[start : start + batch_size]]
            width = max(len(ids) for ids, _, _ in batch)
            input_ids = torch.full((len(batch), width), model.config.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            rows, positions, targets = [], [], []
            for row, (ids, steps, labels) in enumerate(batch):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                mask[row, : len(ids)] = 1
                rows += [row] * len(steps)
                positions += steps
                targets += labels
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
            picked = logits[torch.tensor(rows), torch.tensor(positions), 0]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                picked, torch.tensor(targets, dtype=picked.dtype, device=device)
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        losses.append(total / max(batches, 1))
        logger.info("PRM epoch %d: loss %.4f", len(losses), losses[-1])
    model.eval()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return losses
