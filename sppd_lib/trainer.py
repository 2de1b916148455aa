"""Step-level preference training on ``transformers.Trainer`` (arXiv 2502.13516).

One trainer, three phases over the same batch layout (``sppd_lib.packing``; the data, its
margins, order and collator are ``sppd_lib.train_data``):
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

import dataclasses
import json
import logging
import os
import random
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from accelerate import PartialState
from transformers import (
    PreTrainedModel,
    ProgressCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from sppd_lib.config import ConfigError, TrainConfig, config_to_dict
from sppd_lib.files import reporting_disk_full, staging_dir, write_parquet_atomic
from sppd_lib.loss import dpo_loss, sft_loss, sppd_loss
from sppd_lib.model_card import CardInfo, write_model_card
from sppd_lib.packing import sequence_logps
from sppd_lib.rundir import TrainDir
from sppd_lib.tracking import check_trackers, trackers_of
from sppd_lib.train_data import (
    PairCollator,
    PreferenceDataset,
    attention_of,
    batch_of,
    check_finite_rows,
    compute_reference_logps,
    pair_margins,
    training_order,
)

__all__ = ["SPPDTrainer", "TrainResult", "TrainingDivergedError", "check_train_out", "train"]


class TrainingDivergedError(ConfigError):
    """A loss, gradient or weight of the phase is not finite: the phase stops, saves nothing
    and is not marked done (a user's setting or data, hence a ``ConfigError``: exit 2)."""


def _diverged(what: str, phase: str, step: int) -> TrainingDivergedError:
    return TrainingDivergedError(
        f"{phase} training diverged: {what} is not finite at step {step}; nothing was saved "
        "and the phase is not done. Lower train.learning_rate (or beta, gamma, "
        "max_grad_norm > 0) or check the pairs, then rerun"
    )


logger = logging.getLogger(__name__)

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
        self.attention = attention_of(self.model)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        config = self.train_config
        batch = batch_of(inputs)
        self.tokens_forwarded += batch.tokens_forwarded
        sequences = len(inputs["pair_index"]) * (1 if config.phase == "sft" else 2)
        logps, token_logps = sequence_logps(model, batch, sequences, self.attention)
        if config.phase == "sft":
            loss = sft_loss(token_logps[None], torch.ones_like(token_logps)[None])
            self._metrics["nll"].append(loss.item())
            if not torch.isfinite(loss.detach()).item():
                raise _diverged("the loss", config.phase, self.state.global_step)
            return (loss, None) if return_outputs else loss
        chosen_logps, rejected_logps = logps.view(-1, 2).unbind(1)
        pair = (chosen_logps, rejected_logps, inputs["ref_chosen"], inputs["ref_rejected"])
        if config.phase == "dpo":  # sentence pairs (τ+, τ−): margin 0
            losses, chosen_rewards, rejected_rewards = dpo_loss(*pair, config.beta)
        else:
            losses, chosen_rewards, rejected_rewards = sppd_loss(
                *pair, inputs["margin"], config.beta
            )
        self._record(inputs, losses, chosen_rewards, rejected_rewards)
        loss = losses.mean()
        if not torch.isfinite(loss.detach()).item():
            raise _diverged("the loss", config.phase, self.state.global_step)
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
        # One trainer epoch holds `epochs` shuffled passes over the data: every log line (and
        # tracker) counts the passes. The loop sets state.epoch afresh each step.
        epoch = self.state.epoch
        if epoch is not None:
            self.state.epoch = epoch * self.train_config.epochs
        try:
            super().log(logs, start_time)
        finally:
            self.state.epoch = epoch


class _BarOnly(ProgressCallback):
    """The training progress bar without a printed dict per logged step: those lines are in
    ``log.jsonl`` and the trackers (``-v`` keeps transformers' printing)."""

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        return None


def _all_finite(tensors: Any) -> bool:
    """Whether every tensor of ``tensors`` is finite: one reduction, one device sync."""
    flags = [torch.isfinite(t.detach()).all() for t in tensors]
    return bool(torch.stack(flags).all().item()) if flags else True


class _FiniteGradients(TrainerCallback):
    """Stops the phase before an optimizer step on a non-finite gradient (which would make
    every weight NaN while the logged loss still looks fine)."""

    def __init__(self, phase: str) -> None:
        self.phase = phase

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = kwargs["model"]
        grads = (p.grad for p in model.parameters() if p.grad is not None)
        if not _all_finite(grads):
            raise _diverged("the gradient norm", self.phase, state.global_step + 1)


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
        # TensorBoard through our own callback (its directory is the phase's, not a global
        # environment variable); wandb and mlflow through transformers' callbacks.
        report_to=[t for t in trackers_of(config.report_to) if t != "tensorboard"] or "none",
        remove_unused_columns=False,
        train_sampling_strategy="sequential",  # training_order already shuffled
        seed=config.seed,
        disable_tqdm=not progress,
        use_cpu=not cuda,
        dataloader_drop_last=False,
        ddp_find_unused_parameters=False,
    )


def _tracker_callbacks(config: TrainConfig, work_dir: Path) -> list[TrainerCallback]:
    """TensorBoard event files in the phase's ``tensorboard/`` (moved with the work dir)."""
    if "tensorboard" not in config.report_to:
        return []
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return [TensorBoardCallback(SummaryWriter(log_dir=str(TrainDir(work_dir).tensorboard)))]


def _prepare_model(model: PreTrainedModel, config: TrainConfig) -> PreTrainedModel:
    implementation = attention_of(model)
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
    source: str = "the training data",
) -> TrainResult:
    """Train ``model`` on ``data`` for one phase; write everything into ``out_dir``.

    Every number of ``data`` (named ``source`` in errors) must be finite; a non-finite loss,
    gradient or trained weight stops the phase with :class:`TrainingDivergedError`, before
    anything is saved to ``out_dir`` (so the phase is never taken as done).

    ``out_dir`` gets ``log.jsonl`` (one line per logged step), ``pair_log.parquet`` (per pair
    per step: β·h, margin, loss), ``config.json``, ``metrics.json``, ``adapter/`` (LoRA),
    ``model/`` (full weights with the tokenizer) and, with ``heldout_trees``,
    ``heldout.parquet`` (:func:`score_heldout`). It is built in ``<out_dir>.partial`` and
    renamed when complete, so a crash never leaves a half-written result.

    Nothing this function did not create is deleted: ``out_dir`` must not exist or be empty
    (:class:`ConfigError` otherwise), and a leftover ``<out_dir>.partial`` is removed only
    when it carries the work-dir mark written when it was made.
    """
    out_dir = Path(out_dir)
    check_trackers(config.report_to)  # a missing wandb / mlflow fails before any work
    base_model = model.name_or_path  # for the model card, before LoRA wraps the model
    if len(data) == 0:
        raise ConfigError(f"no {config.phase} training data: nothing to train on")
    check_finite_rows(data, source)
    if config.max_examples is not None:
        data = data.iloc[: config.max_examples]
    margins, margin_settings = pair_margins(data, config)
    data = data.assign(margin=margins)
    data, heldout = heldout_split(data, config)
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
        staging = staging_dir(work_dir.parent, work_dir.name)
        (staging / layout.work_mark.name).write_text(
            "made by sppd_lib.trainer.train; safe to delete\n"
        )
        os.replace(staging, work_dir)
    state.wait_for_everyone()
    ordered = training_order(data, config.epochs, config.seed, config.group_by_tree)
    dataset = PreferenceDataset(ordered, config.phase)
    heldout_set = PreferenceDataset(heldout, config.phase) if heldout is not None else None
    policy = _prepare_model(model, config)
    if config.reference == "recompute" and config.phase != "sft":
        reference = policy
        if config.reference_model is not None:
            from sppd_lib.models import load_model

            reference, _ = load_model(config.reference_model, device=str(policy.device))
        for pairs in (dataset, heldout_set):
            if pairs is not None:
                compute_reference_logps(reference, pairs, config.batch_size, config.packing)
        del reference
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    trainer = SPPDTrainer(
        model=policy,
        args=_training_arguments(config, work_dir, cuda, progress),
        train_dataset=dataset,
        data_collator=PairCollator(config.phase, config.packing, pad_id),
        callbacks=[
            _JsonlLogger(TrainDir(work_dir).log, config.phase),
            _FiniteGradients(config.phase),
            *_tracker_callbacks(config, work_dir),
        ],
        train_config=config,
    )
    if not logger.isEnabledFor(logging.DEBUG) and trainer.pop_callback(ProgressCallback):
        trainer.add_callback(_BarOnly())
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    logger.info(
        "%s: %d steps over %d epoch(s), mean loss %.4f, %.0f s (log: %s)",
        config.phase,
        output.global_step,
        config.epochs,
        output.training_loss,
        seconds,
        TrainDir(out_dir).log,
    )
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
    if not _all_finite(p for p in policy.parameters()):
        raise _diverged("a trained weight", config.phase, output.global_step)
    scored = score_heldout(policy, heldout, heldout_set, config) if heldout_set else None
    if not trainer.is_world_process_zero():
        return result
    if scored is not None:
        write_parquet_atomic(scored, TrainDir(work_dir).heldout)
    _save(trainer, policy, tokenizer, config, work_dir, result, base_model)
    layout.work_mark.unlink()
    if out_dir.exists():
        out_dir.rmdir()  # empty (check_train_out): nothing of anyone's is lost
    os.replace(work_dir, out_dir)
    result.model_dir = layout.model if config.save_merged else None
    result.adapter_dir = layout.adapter if config.lora_r else None
    return result


def heldout_split(
    data: pd.DataFrame, config: TrainConfig
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(training pairs, held-out pairs or ``None``): the pairs of a seeded ``heldout_trees``
    share of the trees (at least one tree, and one left to train on) are held out. Both keep
    ``pair_index``, their row in the pairs file, so the logs still join the pairs."""
    if config.phase != "sppd" or config.heldout_trees <= 0 or "tree_id" not in data.columns:
        return data, None
    data = data.reset_index(drop=True)
    data = data.assign(pair_index=data.index) if "pair_index" not in data.columns else data
    trees = sorted(set(data["tree_id"]))
    count = min(len(trees) - 1, max(1, round(config.heldout_trees * len(trees))))
    if count < 1:
        logger.warning("heldout_trees: one tree only, nothing held out")
        return data, None
    held = set(random.Random(config.seed).sample(trees, count))
    mask = data["tree_id"].isin(held)
    logger.info("held out %d of %d trees (%d pairs)", count, len(trees), int(mask.sum()))
    return data[~mask], data[mask]


@torch.no_grad()
def score_heldout(
    policy: PreTrainedModel,
    heldout: pd.DataFrame,
    dataset: PreferenceDataset,
    config: TrainConfig,
) -> pd.DataFrame:
    """The held-out pairs under the trained ``policy``: per pair the summed step log-probs of
    chosen and rejected before training (the reference's) and after, β·h after, the margin,
    and whether β·h > margin (learned) and β·h > 0 (ranked). Before training β·h is 0."""
    collator = PairCollator(dataset.phase, config.packing)
    was_training = policy.training
    policy.eval()
    device = next(policy.parameters()).device
    after: list[list[float]] = []
    for start in range(0, len(dataset), config.batch_size):
        rows = dataset.rows[start : start + config.batch_size]
        batch = batch_of({k: v.to(device) for k, v in collator(rows).items()})
        logps, _ = sequence_logps(policy, batch, 2 * len(rows), attention_of(policy))
        after.extend(logps.view(-1, 2).tolist())
    policy.train(was_training)
    frame = pd.DataFrame(
        {
            "pair_index": [row["pair_index"] for row in dataset.rows],
            "tree_id": heldout["tree_id"].to_numpy(),
            "delta_value": [row["delta_value"] for row in dataset.rows],
            "margin": [row["margin"] for row in dataset.rows],
            "chosen_before": [row["ref_chosen"] for row in dataset.rows],
            "rejected_before": [row["ref_rejected"] for row in dataset.rows],
            "chosen_after": [c for c, _ in after],
            "rejected_after": [r for _, r in after],
        }
    )
    h = (frame["chosen_after"] - frame["chosen_before"]) - (
        frame["rejected_after"] - frame["rejected_before"]
    )
    frame["reward_margin"] = config.beta * h
    frame["learned"] = frame["reward_margin"] > frame["margin"]
    frame["ranked"] = frame["reward_margin"] > 0
    return frame


def _save(
    trainer: SPPDTrainer,
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: TrainConfig,
    work_dir: Path,
    result: TrainResult,
    base_model: str,
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
        with reporting_disk_full(out.adapter):
            policy.save_pretrained(out.adapter)
    if config.save_merged:
        merged = policy.merge_and_unload() if config.lora_r else policy
        if not _all_finite(merged.parameters()):  # finite factors can multiply to inf
            raise _diverged("a merged weight", config.phase, result.steps)
        with reporting_disk_full(out.model):
            merged.save_pretrained(out.model)
            tokenizer.save_pretrained(out.model)
    # After PEFT's save: its empty template in adapter/ is replaced by our card.
    card = CardInfo(base_model, config.phase, saved, result.examples)
    for directory, library in ((out.adapter, "peft"), (out.model, "transformers")):
        if directory.is_dir():
            write_model_card(directory, dataclasses.replace(card, library_name=library))
