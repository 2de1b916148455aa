"""Model cards: the ``README.md`` of every trained policy directory (``model/`` and
``adapter/``), read by ``from_pretrained`` users and by model hubs.

YAML front matter (``base_model`` as a hub id when it is known, ``library_name``, ``tags``)
and a body with the method and its settings, the data, the iteration and, once evaluated, a
table of greedy pass@1 with counts and 95% intervals. A card replaces PEFT's empty template;
a README.md that neither we nor PEFT wrote is never replaced.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from sppd_lib.files import write_text_atomic

__all__ = ["CardInfo", "base_model_id", "model_card", "write_model_card"]

#: The first line of every card we write: how we know a README.md is ours to rewrite.
CARD_MARK = "<!-- model card written by sppd_lib.model_card; rewritten by sppd -->"
#: A line of PEFT's empty model-card template (peft/utils/other.py, model card template).
_PEFT_TEMPLATE = "<!-- Provide a quick summary of what the model is/does. -->"
_HUB_CACHE = re.compile(r"models--([^/]+)--([^/]+)/snapshots/")
PAPER = "arXiv 2502.13516"


@dataclass
class CardInfo:
    """What a card says about one trained policy."""

    base_model: str  # the directory or id the phase started from
    phase: str  # sft, dpo or sppd
    settings: dict[str, Any]  # the TrainConfig as a mapping
    examples: int  # pairs or τ+ paths trained on
    library_name: str = "transformers"  # "peft" for an adapter directory
    iteration: int | None = None  # the loop's iteration, when trained by `sppd run`
    run_id: str | None = None
    evaluation: pd.DataFrame | None = None  # summary rows: benchmark, metric, value, ...
    data: str | None = None  # where the training prompts came from, e.g. "gsm8k (train)"
    extra_tags: list[str] = field(default_factory=list)


def base_model_id(location: str | os.PathLike[str]) -> str | None:
    """The hub id of a model location when it can be known: a hub id itself, a snapshot in
    the Hugging Face cache, SmolLM2 converted from its GGUF, or a directory whose card (ours)
    names one. ``None`` for local models of unknown origin (e.g. the tiny test models)."""
    text = str(location)
    match = _HUB_CACHE.search(text.replace(os.sep, "/"))
    if match:
        return f"{match.group(1)}/{match.group(2)}"
    if "SmolLM2-135M-Instruct" in text:
        return "HuggingFaceTB/SmolLM2-135M-Instruct"
    path = Path(text)
    if path.is_dir():
        card = path / "README.md"
        if card.is_file() and CARD_MARK in card.read_text(encoding="utf-8", errors="replace"):
            front = _front_matter(card.read_text(encoding="utf-8"))
            return front.get("base_model")
        return None
    if re.fullmatch(r"[\w.-]+/[\w.-]+", text) and not text.startswith("."):
        return text  # a hub id
    return None


def _front_matter(text: str) -> dict[str, Any]:
    parts = text.split("---\n")
    if len(parts) < 3:
        return {}
    try:
        data = yaml.safe_load(parts[1])
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _settings_lines(info: CardInfo) -> list[str]:
    keys = ["beta", "learning_rate", "optimizer", "lr_scheduler", "epochs", "batch_size",
            "gradient_accumulation_steps", "lora_r", "lora_alpha", "seed", "reference"]  # fmt: skip
    if info.phase == "sppd":
        keys[:0] = ["margin", "gamma", "fixed_margin"]
    return [f"| `{k}` | {info.settings[k]} |" for k in keys if k in info.settings]


_METHODS = {
    "sppd": "SPPD step-level preference training: sibling steps of sampled step trees, a "
    "DPO-style loss per step with a margin from the value gap Δv (dynamic: γ·Δv)",
    "dpo": "DPO on whole solutions (sentence pairs from the step trees)",
    "sft": "supervised fine-tuning on correct solution paths (τ+) of the step trees",
}


def model_card(info: CardInfo) -> str:
    """The card's text (YAML front matter, then markdown)."""
    base_id = base_model_id(info.base_model)
    front: dict[str, Any] = {}
    if base_id is not None:
        front["base_model"] = base_id
    front["library_name"] = info.library_name
    tags = ["sppd", "process-preference", info.phase, "math-reasoning", *info.extra_tags]
    if info.library_name == "peft":
        tags.append("lora")
    front["tags"] = list(dict.fromkeys(tags))
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        CARD_MARK,
        "",
        f"# {info.run_id + ': ' if info.run_id else ''}{info.phase} policy"
        + (f", iteration {info.iteration}" if info.iteration is not None else ""),
        "",
        f"Trained with the SPPD workbench from `{base_id or info.base_model}` "
        f"(step-level self-training of math reasoners, {PAPER}).",
        "",
        "## Method",
        "",
        f"{_METHODS.get(info.phase, info.phase)}, on {info.examples} training examples"
        + (f" sampled by the policy of iteration {info.iteration - 1}." if info.iteration else "."),
        "",
        *([f"Training prompts: {info.data}.", ""] if info.data else []),
        "| setting | value |",
        "|---|---|",
        *_settings_lines(info),
        "",
        "## Evaluation",
        "",
    ]
    lines += _evaluation_lines(info.evaluation)
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'model = AutoModelForCausalLM.from_pretrained("PATH_OF_THIS_DIRECTORY")',
        'tokenizer = AutoTokenizer.from_pretrained("PATH_OF_THIS_DIRECTORY")',
        "```",
        "",
        "## Reference",
        "",
        "Step-level process preference learning with a dynamic value margin (SPPD), "
        f"{PAPER}: https://arxiv.org/abs/2502.13516",
        "",
    ]
    return "\n".join(lines)


def _evaluation_lines(evaluation: pd.DataFrame | None) -> list[str]:
    if evaluation is None or not len(evaluation):
        return ["Not evaluated yet (`sppd eval --model <this directory>` evaluates it)."]
    lines = [
        "Greedy decoding for pass@1 (maj/vote/best@N: sampled); 95% intervals.",
        "",
        "| benchmark | metric | accuracy | correct / n | 95% interval |",
        "|---|---|---|---|---|",
    ]
    for row in evaluation.itertuples(index=False):
        lines.append(
            f"| {row.benchmark} | {row.metric} | {row.value:.3f} | "
            f"{int(row.correct)} / {int(row.n)} | [{row.ci95_low:.3f}, {row.ci95_high:.3f}] |"
        )
    return lines


def write_model_card(directory: str | os.PathLike[str], info: CardInfo) -> bool:
    """Write ``directory/README.md``; returns whether it was written.

    A README.md that is PEFT's empty template or a card of ours is replaced (only when the
    text changes, so a finished run on read-only storage reopens without writing); any other
    README.md is the user's and is kept.
    """
    path = Path(directory) / "README.md"
    text = model_card(info)
    if path.is_file():
        current = path.read_text(encoding="utf-8", errors="replace")
        if current == text:
            return False
        if CARD_MARK not in current and _PEFT_TEMPLATE not in current:
            return False
    write_text_atomic(path, text)
    return True
