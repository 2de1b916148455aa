from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sppd_lib.prompts import (
    SYSTEM_PROMPT,
    build_prompt,
    has_final_answer,
    prompt_token_ids,
    split_steps,
)


def test_chat_prompt_has_system_instruction_and_generation_header(tiny_llama) -> None:
    _, tokenizer = tiny_llama
    prompt = build_prompt(tokenizer, "What is 2+3?")
    assert prompt == (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = prompt_token_ids(tokenizer, "What is 2+3?")
    assert tokenizer.decode(ids) == prompt
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")  # no doubled BOS


def test_prompt_without_chat_template(tiny_llama) -> None:
    _, tokenizer = tiny_llama
    template = tokenizer.chat_template
    try:
        tokenizer.chat_template = None
        assert build_prompt(tokenizer, "Q?") == f"{SYSTEM_PROMPT}\n\nQ?\n\n"
        assert build_prompt(tokenizer, "Q?", system=None) == "Q?\n\n"
    finally:
        tokenizer.chat_template = template


def test_split_steps_keeps_delimiters() -> None:
    text = "First, add.\n\nThen multiply.\n\n\n\nSo \\boxed{6}."
    assert split_steps(text) == ["First, add.\n\n", "Then multiply.\n\n\n\n", "So \\boxed{6}."]
    assert split_steps("") == []
    assert split_steps("\n\nA") == ["\n\n", "A"]
    assert split_steps("a\nb\nc", delimiter="\n") == ["a\n", "b\n", "c"]
    with pytest.raises(ValueError, match="non-empty"):
        split_steps("x", delimiter="")


@given(st.text(alphabet="ab \n", max_size=60), st.sampled_from(["\n\n", "\n", "ки"]))
def test_split_steps_round_trips(text: str, delimiter: str) -> None:
    steps = split_steps(text, delimiter)
    assert "".join(steps) == text
    assert all(step for step in steps)
    # Only the first step may be all delimiter/whitespace; the rest carry text.
    assert all(step.strip() for step in steps[1:])


def test_has_final_answer() -> None:
    assert has_final_answer("so the answer is \\boxed{12}.")
    assert has_final_answer("\\boxed{\\frac{1}{2}}")
    assert not has_final_answer("the answer is 12")
    assert not has_final_answer("\\boxed{12")
