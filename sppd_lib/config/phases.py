"""The config of each phase: tree sampling, values and pairs, training, evaluation.

Every field has help text (shown by ``--help``) that cites the paper (Yi et al., "SPPD",
arXiv 2502.13516) where it sets or leaves open the value; fields with a fixed set of values
are ``Literal``, checked when a config is built and offered as the flag's choices.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sppd_lib.config.loading import ConfigError, check_choices, check_ranges, option
from sppd_lib.data import GENERATED
from sppd_lib.prompts import DEFAULT_STEP_DELIMITER, SYSTEM_PROMPT

__all__ = [
    "MARGIN_MODES",
    "PHASES",
    "EvalConfig",
    "MarginMode",
    "PairConfig",
    "Phase",
    "SamplerConfig",
    "TrainConfig",
    "VLLMConfig",
]

PAPER = "arXiv 2502.13516"

Phase = Literal["sft", "dpo", "sppd"]
#: The training phases, in the order of the paper's stage-1 curriculum (SFT, DPO, SPPD).
PHASES: tuple[str, ...] = typing.get_args(Phase)
MarginMode = Literal["dynamic", "fixed", "none"]
#: The margin ablation of the paper (Table 4): the dynamic γ·Δv, a fixed one, no margin.
MARGIN_MODES: tuple[str, ...] = typing.get_args(MarginMode)


@dataclass
class SamplerConfig:
    """Tree self-sampling (arXiv 2502.13516). Where the paper is silent the default is ours
    (marked 'ours')."""

    k: int = option(16, f"Passes (selection + expansion) per problem; {PAPER} uses 64.")
    c: int = option(2, f"Children sampled per expansion; {PAPER} uses 2.")
    temperature: float = option(0.7, f"Sampling temperature (ours; {PAPER} does not state it).")
    top_p: float = option(1.0, "Nucleus sampling threshold (ours).")
    max_step_tokens: int = option(128, "Token budget of one step (ours).")
    max_depth: int = option(16, "Steps per path before a node is terminal (ours).")
    max_total_tokens: int = option(
        512, "Generated tokens per path before a node is terminal (ours)."
    )
    step_delimiter: str = option(DEFAULT_STEP_DELIMITER, "A step ends at this string (ours).")
    answer_format: Literal["boxed", "any"] = option(
        "boxed",
        f"What makes a path complete: 'boxed' (a step with \\boxed{{}}, {PAPER}) or 'any' "
        "(also a path that ends at EOS with an extractable answer: for small models that "
        "never box).",
    )
    selection: Literal["logprob", "uniform"] = option(
        "logprob",
        f"Child choice on descent: 'logprob' (∝ exp(mean step log-prob), {PAPER}) or 'uniform'.",
    )
    skip_closed: bool = option(
        True,
        "Descend only into subtrees that can still grow, so no pass is spent on a finished "
        "branch (ours; the paper's passes may end on a terminal leaf).",
    )
    passes_per_round: int = option(
        1,
        "Passes per tree whose selections share one engine call (1 = the paper's strictly "
        "sequential passes). With m > 1, m distinct leaves are picked per round (leaves "
        "already picked are not entered again, like virtual loss in parallel MCTS), so the "
        "engine sees m times bigger batches and k passes take k/m rounds (ours).",
    )
    branch_surprisal: float | None = option(
        None,
        "Entropy-guided branching (ours, after TreeRL's branching at uncertain tokens, at "
        "step level): an expansion samples one child first and its other c - 1 children only "
        "when that step's mean token surprisal (-mean log-prob, a one-sample estimate of the "
        "step's entropy per token, in nats) is at least this; a confident step grows a single "
        "child. null: every expansion samples c children (the paper).",
    )
    problems_per_batch: int = option(16, "Problems whose expansions share one engine call.")
    seed: int = option(0, "Seed of selection and sampling: the same seed gives the same trees.")
    system_prompt: str = option(SYSTEM_PROMPT, f"System message of the chat prompt ({PAPER}).")

    def __post_init__(self) -> None:
        check_choices(self, "sampler.")
        counts = ("k", "c", "max_step_tokens", "max_depth", "max_total_tokens",
                  "passes_per_round", "problems_per_batch")  # fmt: skip
        check_ranges(
            self, "sampler.", {name: (getattr(self, name) >= 1, ">= 1") for name in counts}
        )
        # Temperature 0 or top_p 0 decode greedily: all C children equal, so no pairs at all.
        if not self.temperature > 0:
            raise ConfigError(
                f"sampler.temperature must be > 0 (0 samples identical siblings), "
                f"got {self.temperature}"
            )
        check_ranges(self, "sampler.", {"top_p": (0 < self.top_p <= 1, "in (0, 1]")})
        if self.branch_surprisal is not None:
            check_ranges(
                self, "sampler.", {"branch_surprisal": (self.branch_surprisal >= 0, ">= 0")}
            )
        if not self.step_delimiter:
            raise ConfigError("sampler.step_delimiter must be a non-empty string")


@dataclass
class VLLMConfig:
    """Options of the vLLM engine (read when ``engine: vllm``)."""

    block_size: int | None = option(
        32,
        "Tokens per KV-cache block. Prefix caching shares whole blocks only, so a tree whose "
        "steps are a few dozen tokens long shares little of its prefixes with big blocks: 32 "
        "was fastest per complete path for SmolLM2-135M trees on CPU (docs/results/"
        "benchmarks.md). null: vLLM's default (128 on CPU, 16 on GPUs). Cached prefixes make "
        "trees less exactly reproducible (docs/concepts/determinism.md).",
    )

    def __post_init__(self) -> None:
        if self.block_size is not None and not self.block_size >= 1:
            raise ConfigError(f"vllm.block_size must be >= 1 or null, got {self.block_size}")


@dataclass
class PairConfig:
    """Value estimator and pair filter (arXiv 2502.13516; the loss margin belongs to
    ``TrainConfig``)."""

    value: Literal["mc", "bellman", "prm"] = option(
        "mc",
        f"Value estimator: 'mc' (Monte-Carlo), 'bellman' or 'prm' (needs prm_model; {PAPER} "
        "used a PRM).",
    )
    prm_model: str | None = option(
        None, "PRM for value='prm': a hub id or directory (one- or two-channel token head)."
    )
    bellman_aggregate: Literal["max", "mean"] = option(
        "max", "Bellman backup: 'max' (optimality) or 'mean'."
    )
    bellman_discount: float = option(1.0, "Bellman discount per level, in [0, 1].")
    threshold: float = option(0.5, f"Keep sibling pairs with v_w - v_l above this ({PAPER}: 0.5).")
    pairing: Literal["all", "best_worst"] = option(
        "all", "'all' qualifying sibling couples, or 'best_worst': one per sibling group."
    )
    min_leaves: int = option(
        1, "mc only: complete leaves a step's subtree needs for its value to count."
    )
    rollouts: int = option(
        0,
        "mc only: before the backup, roll out whole solutions with the sampling model from "
        "every unfinished step with fewer than this many complete leaves below it, until it "
        "has this many (values.add_mc_rollouts), so thinly sampled steps get graded values "
        "instead of 0/1; 0 = off.",
    )
    path_rule: Literal["final", "mean", "min"] = option(
        "final", "Rank of a complete path: value of its 'final' step, its 'mean' or 'min'."
    )

    def __post_init__(self) -> None:
        check_choices(self, "pairs.")
        if self.value == "prm" and not self.prm_model:
            raise ConfigError("pairs.value 'prm' needs pairs.prm_model")
        # Values lie in [0, 1]: a threshold above 1 can never be passed (and 1 only never).
        if not 0 <= self.threshold <= 1:
            raise ConfigError(
                f"pairs.threshold must be in [0, 1] (values lie in [0, 1]), got {self.threshold}"
            )
        check_ranges(
            self,
            "pairs.",
            {
                "bellman_discount": (0 <= self.bellman_discount <= 1, "in [0, 1]"),
                "min_leaves": (self.min_leaves >= 0, ">= 0"),
            },
        )
        if self.rollouts < 0 or (self.rollouts and self.value != "mc"):
            raise ConfigError(
                f"pairs.rollouts must be >= 0 and needs value 'mc', got {self.rollouts}"
            )


@dataclass
class TrainConfig:
    """Training of one phase (the loss and recipe of arXiv 2502.13516)."""

    phase: Phase = option("sppd", "'sppd' (step pairs), 'dpo' (sentence pairs) or 'sft' (τ+).")
    beta: float = option(0.1, f"β of the DPO/SPPD loss ({PAPER}: 0.1).")
    margin: MarginMode = option(
        "dynamic",
        "Margin of the sppd loss: 'dynamic' (γ·Δv, SPPD), 'fixed' (one constant for every "
        f"pair) or 'none' (0: Step-DPO). {PAPER}'s ablation (Table 4) compares the three.",
    )
    gamma: float = option(
        1.0,
        f"γ of the margin γ·Δv, >= 0 ({PAPER} sweeps 0.1, 0.5, 1, 2, 5 and finds an interior "
        "optimum; its headline γ is not stated).",
    )
    fixed_margin: float | None = option(
        None,
        "The constant of margin 'fixed', >= 0; null: the mean of γ·Δv over the phase's "
        "pairs (the paper does not state its fixed value), so fixed and dynamic have the same "
        "mean margin and differ only in its spread.",
    )
    optimizer: Literal["adamw", "sgd"] = option(
        "adamw", f"'adamw' or 'sgd' ({PAPER}'s DPO/SPPD optimiser)."
    )
    learning_rate: float = option(
        1e-4, f"Peak learning rate ({PAPER}, full fine-tuning: SGD 1e-5)."
    )
    lr_scheduler: str = option(
        "cosine", f"Learning-rate schedule (any transformers scheduler; {PAPER}: cosine)."
    )
    warmup_ratio: float = option(0.0, "Share of steps spent warming the learning rate up.")
    weight_decay: float = option(0.0, "Weight decay of the optimiser.")
    max_grad_norm: float = option(1.0, "Gradient clipping norm (0 disables clipping).")
    epochs: int = option(1, "Passes over the training data (reshuffled tree by tree each pass).")
    batch_size: int = option(8, "Pairs (or τ+ paths) per device per micro-batch.")
    gradient_accumulation_steps: int = option(1, "Micro-batches per optimiser step.")
    lora_r: int = option(16, "LoRA rank; 0 trains all weights (full fine-tuning, as the paper).")
    lora_alpha: int = option(32, "LoRA alpha (the update is scaled by alpha / r).")
    lora_dropout: float = option(0.0, "LoRA dropout.")
    lora_target_modules: str = option("all-linear", "Modules that get LoRA adapters.")
    packing: bool = option(
        True, "Forward each batch as one token trie (shared prefixes once); false pads rows."
    )
    group_by_tree: bool = option(
        True, "Order pairs tree by tree, so a batch holds siblings and shares more prefix."
    )
    reference: Literal["tree", "recompute"] = option(
        "tree",
        "Reference log-probs: 'tree' (recorded by the sampler) or 'recompute' (the policy "
        "before training: LoRA adapter disabled, or the starting weights), for pairs that did "
        "not come from this model.",
    )
    reference_model: str | None = option(
        None, "With reference 'recompute': a separate reference model (default: the policy)."
    )
    gradient_checkpointing: bool = option(False, "Recompute activations to save memory.")
    bf16: bool | None = option(None, "bf16 mixed precision; default: on for CUDA, off on CPU.")
    max_examples: int | None = option(None, "Train on the first N pairs/paths only.")
    logging_steps: int = option(1, "Optimiser steps between log lines.")
    seed: int = option(0, "Seed of the data order and the LoRA initialisation.")
    save_merged: bool = option(
        True, "Also save LoRA merged into full weights (next sampler, vLLM, export)."
    )

    def __post_init__(self) -> None:
        check_choices(self, "train.")
        for name in ("epochs", "batch_size", "gradient_accumulation_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lora_r < 0 or self.beta <= 0 or self.learning_rate <= 0:
            raise ConfigError("train.lora_r must be >= 0, train.beta and learning_rate > 0")
        check_ranges(
            self,
            "train.",
            {
                "gamma": (self.gamma >= 0, ">= 0"),
                "fixed_margin": (
                    self.fixed_margin is None or self.fixed_margin >= 0,
                    ">= 0 or null",
                ),
                "warmup_ratio": (0 <= self.warmup_ratio < 1, "in [0, 1)"),
                "weight_decay": (self.weight_decay >= 0, ">= 0"),
                "max_grad_norm": (self.max_grad_norm >= 0, ">= 0"),
                "lora_alpha": (self.lora_alpha > 0, "> 0"),
                "lora_dropout": (0 <= self.lora_dropout < 1, "in [0, 1)"),
                "max_examples": (self.max_examples is None or self.max_examples >= 1, ">= 1"),
            },
        )


@dataclass
class EvalConfig:
    """Evaluation of a model on benchmarks (as arXiv 2502.13516: greedy pass@1, maj@N,
    ORM_VOTE@N, ORM_MAX@N).

    Greedy pass@1 always; with ``num_samples`` N > 0 also N sampled responses per problem,
    scored as maj@N (plain majority), vote@N (weight-summed vote) and best@N (the answer of
    the highest-weighted response).
    """

    benchmarks: list[str] = option(
        ["gsm8k"], "Benchmarks to evaluate: gsm8k, math500, math, ocw, arith, svamp, ..."
    )
    split: str = option("test", "Split of each benchmark.")
    limit: int | None = option(32, "Problems per benchmark (the first N); null for all.")
    limits: dict[str, int] = option({}, "Per-benchmark limits overriding limit, e.g. {arith: 100}.")
    max_new_tokens: int = option(
        512, f"Generation budget per response ({PAPER} uses 2048 on GPUs)."
    )
    batch_size: int = option(
        16, "Prompts generated together (HF generate: one left-padded batch; engine: one call)."
    )
    system_prompt: str = option(SYSTEM_PROMPT, f"System message of the chat prompt ({PAPER}).")
    arith_seed: int = option(0, "Seed of the generated arithmetic problems.")
    arith: dict[str, Any] = option(
        {},
        "Options of the generated arithmetic problems (data.generate_arithmetic): max_terms, ...",
    )
    num_samples: int = option(
        0,
        f"Sampled responses per problem for maj@N, vote@N and best@N ({PAPER}: 64); 0 = "
        "greedy only.",
    )
    sample_temperature: float = option(0.7, "Temperature of the sampled responses (> 0).")
    sample_top_p: float = option(1.0, "Top-p of the sampled responses, in (0, 1].")
    seed: int = option(0, "Seed of the sampled responses.")
    prm_model: str | None = option(
        None,
        "PRM (hub id or directory) whose last-step score weights vote@N and best@N; null: "
        "the policy's own confidence exp(mean token log-prob) (a self-confidence weight, "
        "not a PRM).",
    )

    def __post_init__(self) -> None:
        # config_from_dict has checked the types; these are the value ranges.
        check_ranges(
            self,
            "",
            {
                "max_new_tokens": (self.max_new_tokens >= 1, ">= 1"),
                "batch_size": (self.batch_size >= 1, ">= 1"),
                "limit": (self.limit is None or self.limit >= 0, ">= 0 or null"),
                "num_samples": (self.num_samples >= 0, ">= 0"),
                "sample_temperature": (self.sample_temperature > 0, "> 0"),
                "sample_top_p": (0 < self.sample_top_p <= 1, "in (0, 1]"),
                "benchmarks": (bool(self.benchmarks), "a non-empty list"),
            },
        )
        names = [b.partition("=")[0] if "=" in b else Path(b).stem for b in self.benchmarks]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            raise ConfigError(
                f"benchmarks names {duplicate!r} twice: give each one a distinct name "
                "(name=FILE.jsonl)"
            )
        for name, limit in self.limits.items():
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
                raise ConfigError(f"limits.{name} must be an integer >= 0, got {limit!r}")

    def problem_options(self, name: str) -> dict[str, Any]:
        """Keyword options of ``load_problems`` for benchmark ``name`` (see
        :func:`generator_options`)."""
        return generator_options(name, self.arith_seed, self.arith)


def generator_options(name: str, seed: int, options: dict[str, Any]) -> dict[str, Any]:
    """The generator options (seed, max_terms, ...) of a generated data set such as
    ``arith``; ``{}`` for a data set read from files (they take no such options)."""
    return {"seed": seed, **options} if name in GENERATED else {}
