"""Step-level preference training on ``transformers.Trainer`` (SPPD_METHOD.md §2, §5).

One trainer, three phases over the same batch layout (``sppd_lib.packing``):
- ``sppd``: sibling step pairs, loss −log σ(β·h − margin), the margin computed here from each
  pair's value gap Δv and the config's ``margin`` / ``gamma`` / ``fixed_margin``
  (:func:`sppd_lib.loss.value_margin`), so one pairs file serves every margin variant;
- ``dpo``: sentence-level pairs (τ+, τ−), the same loss with margin 0;
- ``sft``: correct complete paths τ+, negative log-likelihood of the solution tokens.

The reference log-probs travel with the data (the sampler recorded them), so no reference
model is loaded unless ``reference`` asks to recompute them. Because the Trainer does the
optimisation loop, ``accelerate launch`` (DDP, FSDP, DeepSpeed) works unchanged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from accelerate import PartialState
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sppd_lib.config import ConfigError, TrainConfig, config_to_dict
from sppd_lib.files import write_parquet_atomic
from sppd_lib.loss import sft_loss, sppd_loss, value_margin
from sppd_lib.packing import Batch, pack_sequences, pad_sequences, sequence_logps
from sppd_lib.rundir import TrainDir

__all__ = [
    "PairCollator",
    "PreferenceDataset",
    "SPPDTrainer",
    "TrainResult",
    "compute_reference_logps",
    "pair_margins",
    "train",
]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


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
    """``epochs`` shuffled copies of ``frame`` (with ``pair_index`` = original row).

    With ``group_by_tree`` the trees are shuffled and each tree's pairs stay together, so a
    batch holds siblings whose shared prefix is forwarded once.
    """
    frame = frame.reset_index(drop=True).assign(pair_index=lambda f: f.index)
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


def _batch_of(inputs: dict[str, torch.Tensor]) -> Batch:
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
            batch = _batch_of({k: v.to(device) for k, v in collator(rows).items()})
            logps, _ = sequence_logps(model, batch, 2 * len(rows), _attention(model))
            for row, (chosen, rejected) in zip(rows, logps.view(-1, 2).tolist(), strict=True):
                row["ref_chosen"], row["ref_rejected"] = chosen, rejected
    model.train(was_training)


def _attention(model: torch.nn.Module) -> str:
    return getattr(getattr(model, "config", None), "_attn_implementation", None) or "sdpa"


# ---------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------


class SPPDTrainer(Trainer):
    """``transformers.Trainer`` with the SPPD/DPO/SFT loss on packed batches.

    Only ``compute_loss`` and ``log`` (both public hooks) are overridden; metrics are
    accumulated per micro-batch and averaged into each log line, as TRL does.
    """

    def __init__(self, *args: Any, train_config: TrainConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.train_config = train_config
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self.pair_log: list[dict[str, Any]] = []
        self.tokens_forwarded = 0
        self.attention = _attention(self.model)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        config = self.train_config
        batch = _batch_of(inputs)
        self.tokens_forwarded += batch.tokens_forwarded
        sequences = len(inputs["pair_index"]) * (1 if config.phase == "sft" else 2)
        logps, token_logps = sequence_logps(model, batch, sequences, self.attention)
        if config.phase == "sft":
            loss = sft_loss(token_logps[None], torch.ones_like(token_logps)[None])
            self._metrics["nll"].append(loss.item())
            return (loss, None) if return_outputs else loss
        chosen_logps, rejected_logps = logps.view(-1, 2).unbind(1)
        losses, chosen_rewards, rejected_rewards = sppd_loss(
            chosen_logps,
            rejected_logps,
            inputs["ref_chosen"],
            inputs["ref_rejected"],
            inputs["margin"],
            config.beta,
        )
        self._record(inputs, losses, chosen_rewards, rejected_rewards)
        loss = losses.mean()
        return (loss, None) if return_outputs else loss

    def _record(
        self,
        inputs: dict[str, torch.Tensor],
        losses: torch.Tensor,
        chosen_rewards: torch.Tensor,
        rejected_rewards: torch.Tensor,
    ) -> None:
        gather = self.accelerator.gather_for_metrics
        stats = {
            "loss": losses.detach(),
            "reward_margin": chosen_rewards - rejected_rewards,  # β·h
            "value_margin": inputs["margin"],
            "delta_value": inputs["delta_value"],
            "chosen_reward": chosen_rewards,
            "rejected_reward": rejected_rewards,
            "pair_index": inputs["pair_index"],
        }
        stats = {k: gather(v).cpu() for k, v in stats.items()}
        self._metrics["reward_accuracy"].extend((stats["reward_margin"] > 0).float().tolist())
        for key in ("reward_margin", "value_margin", "chosen_reward", "rejected_reward"):
            self._metrics[key].extend(stats[key].tolist())
        step = self.state.global_step
        for i in range(len(stats["pair_index"])):
            self.pair_log.append(
                {
                    "step": step,
                    "phase": self.train_config.phase,
                    "pair_index": int(stats["pair_index"][i]),
                    "reward_margin": float(stats["reward_margin"][i]),
                    "value_margin": float(stats["value_margin"][i]),
                    "delta_value": float(stats["delta_value"][i]),
                    "loss": float(stats["loss"][i]),
                }
            )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._metrics and "loss" in logs:  # a training log line, not the final summary
            for key, values in self._metrics.items():
                logs[key] = sum(values) / len(values)
            self._metrics.clear()
        super().log(logs, start_time)


class _JsonlLogger(TrainerCallback):
    """Appends every training log line (with phase and step) to ``log.jsonl``."""

    def __init__(self, path: Path, phase: str) -> None:
        self.path, self.phase = path, phase

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "phase": self.phase, **logs}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------------------
# The whole phase: load, train, save
# ---------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What ``train`` wrote and measured."""

    out_dir: Path
    model_dir: Path | None  # full weights (merged LoRA), the next sampler
    adapter_dir: Path | None
    examples: int
    steps: int
    seconds: float
    tokens_forwarded: int
    final_metrics: dict[str, float]
    margin_settings: dict[str, Any]  # margin mode, γ, the resolved fixed margin, mean margin


def _training_arguments(config: TrainConfig, work_dir: Path, cuda: bool, progress: bool) -> Any:
    bf16 = cuda if config.bf16 is None else config.bf16
    # Named only when on: transformers 5.2x renames the flag and warns on every use.
    checkpointing = {"gradient_checkpointing": True} if config.gradient_checkpointing else {}
    return TrainingArguments(
        **checkpointing,
        output_dir=str(TrainDir(work_dir).checkpoints),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_train_epochs=1,  # the data already holds `epochs` shuffled passes
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float < 1 is a ratio in transformers 5
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim="sgd" if config.optimizer == "sgd" else "adamw_torch",
        bf16=bf16,
        logging_steps=config.logging_steps,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        train_sampling_strategy="sequential",  # training_order already shuffled
        seed=config.seed,
        disable_tqdm=not progress,
        use_cpu=not cuda,
        dataloader_drop_last=False,
        ddp_find_unused_parameters=False,
    )


def _prepare_model(model: PreTrainedModel, config: TrainConfig) -> PreTrainedModel:
    implementation = _attention(model)
    if config.packing and implementation not in ("sdpa", "eager"):
        raise ConfigError(
            f"train.packing needs sdpa or eager attention (the model uses {implementation!r}); "
            "set train.packing: false"
        )
    if config.lora_r == 0:
        return model
    from sppd_lib.models import attach_lora

    torch.manual_seed(config.seed)
    return attach_lora(
        model,
        r=config.lora_r,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
    )


def check_train_out(out_dir: str | os.PathLike[str], *, work_dir: bool = True) -> Path:
    """The checks :func:`train` makes before any work: ``out_dir`` is absent or an empty
    directory, its ``.partial`` work dir is absent or ours, and the location is writable.

    Raises:
        ConfigError: naming the directory and what to do.
    """
    from sppd_lib.files import check_writable

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(
            f"{out_dir} already exists and is not empty: choose another --out (training never "
            "deletes a directory it did not make)"
        )
    # The mark says the work dir is one this module made (so it may delete it).
    layout = TrainDir(out_dir)
    if work_dir and layout.work.exists() and not layout.work_mark.is_file():
        raise ConfigError(
            f"{layout.work} exists and was not made by sppd (no {layout.work_mark.name} in "
            "it): move it away or choose another --out"
        )
    try:
        check_writable(out_dir, directory=True)
    except OSError as exc:
        raise ConfigError(str(exc)) from None
    return out_dir


def train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: pd.DataFrame,
    config: TrainConfig,
    out_dir: str | os.PathLike[str],
    *,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` on ``data`` for one phase; write everything into ``out_dir``.

    ``out_dir`` gets ``log.jsonl`` (one line per logged step), ``pair_log.parquet`` (per pair
    per step: β·h, margin, loss), ``config.json``, ``metrics.json``, ``adapter/`` (LoRA) and
    ``model/`` (full weights with the tokenizer). It is built in ``<out_dir>.partial`` and
    renamed when complete, so a crash never leaves a half-written result.

    Nothing this function did not create is deleted: ``out_dir`` must not exist or be empty
    (:class:`ConfigError` otherwise), and a leftover ``<out_dir>.partial`` is removed only
    when it carries the work-dir mark written when it was made.
    """
    out_dir = Path(out_dir)
    if len(data) == 0:
        raise ConfigError(f"no {config.phase} training data: nothing to train on")
    if config.max_examples is not None:
        data = data.iloc[: config.max_examples]
    margins, margin_settings = pair_margins(data, config)
    data = data.assign(margin=margins)
    if config.phase == "sppd":
        logger.info(
            "%s margin, γ %.3g: mean margin %.3f over %d pairs",
            config.margin,
            config.gamma,
            margin_settings["mean_margin"],
            len(data),
        )
    layout = TrainDir(out_dir)
    work_dir = layout.work
    cuda = next(model.parameters()).is_cuda
    # The process group of `accelerate launch` (one process otherwise). Without `cpu=True` a
    # CPU-only launch reads as not distributed and every rank would think it is the main one.
    state = PartialState(cpu=not cuda)
    # The work dir is the main process's: other ranks would race its creation.
    check_train_out(out_dir, work_dir=state.is_main_process)
    if state.is_main_process:
        if work_dir.exists():  # a crashed run's work dir: ours only if it has our mark
            shutil.rmtree(work_dir)
        # Made with its mark in place (staged, then renamed): a kill cannot leave it unmarked.
        work_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=work_dir.parent, prefix=f".{work_dir.name}-"))
        (staging / layout.work_mark.name).write_text(
            "made by sppd_lib.trainer.train; safe to delete\n"
        )
        os.replace(staging, work_dir)
    state.wait_for_everyone()
    ordered = training_order(data, config.epochs, config.seed, config.group_by_tree)
    dataset = PreferenceDataset(ordered, config.phase)
    policy = _prepare_model(model, config)
    if config.reference == "recompute" and config.phase != "sft":
        reference = policy
        if config.reference_model is not None:
            from sppd_lib.models import load_model

            reference, _ = load_model(config.reference_model, device=str(policy.device))
        compute_reference_logps(reference, dataset, config.batch_size, config.packing)
        del reference
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    trainer = SPPDTrainer(
        model=policy,
        args=_training_arguments(config, work_dir, cuda, progress),
        train_dataset=dataset,
        data_collator=PairCollator(config.phase, config.packing, pad_id),
        callbacks=[_JsonlLogger(TrainDir(work_dir).log, config.phase)],
        train_config=config,
    )
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    result = TrainResult(
        out_dir=out_dir,
        model_dir=None,
        adapter_dir=None,
        examples=len(data),
        steps=output.global_step,
        seconds=seconds,
        tokens_forwarded=trainer.tokens_forwarded,
        final_metrics={k: v for k, v in output.metrics.items() if isinstance(v, int | float)},
        margin_settings=margin_settings,
    )
    if not trainer.is_world_process_zero():
        return result
    _save(trainer, policy, tokenizer, config, work_dir, result)
    layout.work_mark.unlink()
    if out_dir.exists():
        out_dir.rmdir()  # empty (check_train_out): nothing of anyone's is lost
    os.replace(work_dir, out_dir)
    result.model_dir = layout.model if config.save_merged else None
    result.adapter_dir = layout.adapter if config.lora_r else None
    return result


def _save(
    trainer: SPPDTrainer,
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: TrainConfig,
    work_dir: Path,
    result: TrainResult,
) -> None:
    out = TrainDir(work_dir)
    shutil.rmtree(out.checkpoints, ignore_errors=True)
    write_parquet_atomic(pd.DataFrame(trainer.pair_log), out.pair_log)
    # The saved config names the margin actually used (a null fixed_margin resolved).
    saved = {**config_to_dict(config), "fixed_margin": result.margin_settings["fixed_margin"]}
    out.config.write_text(json.dumps(saved, indent=2))
    metrics = {
        "phase": config.phase,
        "margin_settings": result.margin_settings,
        "examples": result.examples,
        "steps": result.steps,
        "seconds": result.seconds,
        "tokens_forwarded": result.tokens_forwarded,
        **result.final_metrics,
    }
    out.metrics.write_text(json.dumps(metrics, indent=2, default=float))
    if config.lora_r:
        policy.save_pretrained(out.adapter)
    if config.save_merged:
        merged = policy.merge_and_unload() if config.lora_r else policy
        merged.save_pretrained(out.model)
        tokenizer.save_pretrained(out.model)
