"""The chat prompt, the step delimiter, step splitting and final-answer detection.

A *step* is one action of the step MDP (arXiv 2502.13516): the text up to and including the
next step delimiter, or to the end of the response. Joining the steps gives back the text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sppd_lib.grading import last_boxed

if TYPE_CHECKING:  # only for hints: importing prompts must not load transformers
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_CONTEXT_LENGTH",
    "DEFAULT_STEP_DELIMITER",
    "SYSTEM_PROMPT",
    "build_prompt",
    "context_length",
    "has_final_answer",
    "overlong_prompts",
    "prompt_token_ids",
    "prompt_token_limit",
    "split_steps",
]

#: The evaluation instruction of arXiv 2502.13516, given as the system message.
SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
DEFAULT_STEP_DELIMITER = "\n\n"
#: Context length assumed when neither model nor tokenizer states one (the vLLM engine's
#: default ``max_model_len``).
DEFAULT_CONTEXT_LENGTH = 4096


def build_prompt(
    tokenizer: PreTrainedTokenizerBase, question: str, system: str | None = SYSTEM_PROMPT
) -> str:
    """The prompt text for ``question``, through the tokenizer's chat template when it has one.

    Ends where the assistant's answer starts. Without a chat template (base models) the
    system line, the question and a blank line are concatenated.
    """
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": question}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{system}\n\n{question}\n\n" if system else f"{question}\n\n"


def prompt_token_ids(
    tokenizer: PreTrainedTokenizerBase, question: str, system: str | None = SYSTEM_PROMPT
) -> list[int]:
    """Token ids of :func:`build_prompt`; the template already holds any special tokens."""
    return tokenizer(build_prompt(tokenizer, question, system), add_special_tokens=False)[
        "input_ids"
    ]


def split_steps(text: str, delimiter: str = DEFAULT_STEP_DELIMITER) -> list[str]:
    """Split a response into steps; each step keeps its trailing delimiter.

    Runs of delimiters stay with the step before them (no empty steps), and
    ``"".join(split_steps(text)) == text`` always holds.
    """
    if not delimiter:
        raise ValueError("the step delimiter must be a non-empty string")
    steps: list[str] = []
    position = 0
    while position < len(text):
        end = text.find(delimiter, position)
        if end < 0:
            end = len(text)
        else:
            end += len(delimiter)
            while text.startswith(delimiter, end):  # repeated delimiters stay with this step
                end += len(delimiter)
        piece = text[position:end]
        if steps and not piece.strip():  # whitespace only: glue it to the step before
            steps[-1] += piece
        else:
            steps.append(piece)
        position = end
    return steps


def has_final_answer(text: str) -> bool:
    """True when ``text`` holds a complete ``\\boxed{...}`` (a terminal step in SPPD §3)."""
    return last_boxed(text) is not None


# ---------------------------------------------------------------------------------------
# Prompt length
# ---------------------------------------------------------------------------------------


def context_length(tokenizer: PreTrainedTokenizerBase, model: Any = None) -> int:
    """The longest sequence (prompt and generation) the model holds, in tokens.

    The model's ``max_position_embeddings`` when given a model, else the tokenizer's
    ``model_max_length`` when it states a real one (tokenizers without one say 1e30), else
    :data:`DEFAULT_CONTEXT_LENGTH`.
    """
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        return positions
    stated = getattr(tokenizer, "model_max_length", None)
    if isinstance(stated, int) and 0 < stated < 10_000_000:
        return stated
    return DEFAULT_CONTEXT_LENGTH


def prompt_token_limit(configured: int | None, context: int, generation: int) -> int:
    """The longest prompt allowed: ``configured``, else what the context leaves after the
    generation budget (at least 1 token)."""
    return configured if configured is not None else max(context - generation, 1)


def overlong_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], limit: int
) -> list[tuple[int, int]]:
    """``(index, token count)`` of each prompt longer than ``limit`` tokens.

    A prompt of at most ``limit - 2`` UTF-8 bytes is not tokenized: byte-level and
    byte-fallback tokenizers never make more tokens than bytes (plus a start marker). So the
    usual short prompt costs one ``len``, and a 1 MB question is tokenized once.
    """
    found = []
    for index, prompt in enumerate(prompts):
        if len(prompt.encode("utf-8")) + 2 <= limit:
            continue
        count = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if count > limit:
            found.append((index, count))
    return found
