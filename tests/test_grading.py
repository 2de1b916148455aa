from __future__ import annotations

import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sppd_lib.data import load_problems
from sppd_lib.grading import (
    extract_answer,
    grade,
    grading_stats,
    is_correct,
    last_boxed,
    majority_vote,
    reset_grading_stats,
)


def test_every_gsm8k_test_gold_is_correct_when_boxed() -> None:
    problems = load_problems("gsm8k", "test")
    assert (
        sum(is_correct(f"So the total is \\boxed{{{p.answer}}}.", p.answer) for p in problems)
        == 1319
    )


def test_every_math500_solution_matches_its_answer() -> None:
    problems = load_problems("math500")
    assert sum(is_correct(p.meta["solution"], p.answer) for p in problems) == 500


def test_math500_answers_survive_reformatting() -> None:
    """Exercise the symbolic path: the same answers written differently still match."""
    problems = load_problems("math500", limit=200)
    rewritten = [p for p in problems if "\\frac" in p.answer and "\\text" not in p.answer]
    assert len(rewritten) > 10
    for p in rewritten:
        dfrac = p.answer.replace("\\frac", "\\dfrac")
        assert is_correct(f"\\boxed{{{dfrac}}}", p.answer), p.answer


@pytest.mark.parametrize(
    ("response", "gold"),
    [
        ("1/2", "0.5"),
        ("0.5", "\\frac{1}{2}"),
        ("\\boxed{\\frac{1}{2}}", "1/2"),
        ("\\boxed{\\dfrac{3}{4}}", "0.75"),
        ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
        ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}"),
        ("\\boxed{[1, 2)}", "[1,2)"),
        ("\\boxed{(3, \\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\boxed{\\{2, 1\\}}", "\\{1,2\\}"),
        ("\\boxed{x^2+2x+1}", "(x+1)^2"),
        ("The answer is $1,000.", "1000"),
        ("#### 18", "18"),
        ("\\boxed{18 \\text{ dollars}}", "18"),
        ("\\boxed{x = 5}", "5"),
        ("\\boxed{50\\%}", "50"),
        ("\\boxed{30^\\circ}", "30"),
        ("\\boxed{\\text{Evelyn}}", "\\text{Evelyn}"),
        ("\\boxed{-7}", "-7"),
    ],
)
def test_equivalent_answers_are_accepted(response: str, gold: str) -> None:
    assert is_correct(response, gold)


@pytest.mark.parametrize(
    ("response", "gold"),
    [
        ("\\boxed{19}", "18"),
        ("\\boxed{0.5}", "\\frac{1}{3}"),
        ("\\boxed{[1, 2]}", "[1,2)"),
        ("\\boxed{(2, 1)}", "(1,2)"),
        ("\\boxed{2\\sqrt{3}}", "\\sqrt{8}"),
        ("\\boxed{5x}", "5"),
        ("\\boxed{-18}", "18"),
        ("\\boxed{\\text{Evelyn}}", "\\text{Alice}"),
        ("I do not know.", "3"),
    ],
)
def test_wrong_answers_are_rejected(response: str, gold: str) -> None:
    assert not is_correct(response, gold)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{\\frac{1}{\\sqrt{2}}} and more", "\\frac{1}{\\sqrt{2}}"),
        ("\\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{1} then \\boxed{2", "1"),  # the last one never closes
        ("\\fbox{7}", "7"),
        ("\\boxed 5.", "5."),
        ("steps\n#### 42\n", "42"),
        ("Thus, the final answer is: 12.", "12"),
        ("Answer: $\\frac{2}{3}$", "\\frac{2}{3}"),
        ("I got 3 apples and then 4 more, 7 in all", "7"),
        ("(1, 2)", "(1, 2)"),
        ("", None),
        ("no numbers here", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_last_number_fallback_is_optional() -> None:
    assert extract_answer("we get 7 in all", last_number_fallback=False) is None
    assert extract_answer("we get 7 in all") == "7"


def test_last_boxed_nested_and_unbalanced() -> None:
    assert last_boxed("\\boxed{a{b{c}}d}") == "a{b{c}}d"
    assert last_boxed("\\boxed{{{") is None
    assert last_boxed("}}}\\boxed") is None


GARBAGE = [
    "",
    " ",
    "}{}{\\boxed{",
    "\\boxed{" * 1000,
    "}" * 1000 + "\\boxed{1",
    "x" * 5_000_000,
    "1" * 10_000 + " \\boxed{" + "9" * 3_000 + "}",
    b"\xff\xfe\\boxed{3}",
    "\ud800\\boxed{3}",
    "\x00\x01\\boxed{\x00}",
    None,
    12,
    ["\\boxed{1}"],
]


@pytest.mark.parametrize("garbage", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_never_raises(garbage: object) -> None:
    extract_answer(garbage)
    result = grade(garbage, "3")
    assert isinstance(result.correct, bool)
    assert isinstance(is_correct("\\boxed{3}", garbage), bool)


def test_non_utf8_bytes_are_decoded() -> None:
    assert is_correct(b"\xff\xfe so \\boxed{3}", "3")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.text(max_size=30))
def test_random_text_never_raises(response: str, gold: str) -> None:
    assert isinstance(is_correct(response, gold), bool)


def test_statuses_are_counted() -> None:
    reset_grading_stats()
    assert grade("no answer in words", "3").status == "no_answer"
    assert grade("\\boxed{3}", "").status == "invalid_gold"
    assert grade("\\boxed{3}", "3").status == "correct"
    assert grade("\\boxed{4}", "3").status == "wrong"
    assert grade("\\boxed{\\sqrt{8}}", "2\\sqrt{2}").status == "correct"
    stats = grading_stats()
    assert stats["graded"] == 5
    assert stats["no_answer"] == stats["invalid_gold"] == stats["wrong"] == 1
    assert stats["correct"] == 2
    assert stats["fast_path"] == 2 and stats["math_verify"] == 1


def test_pathological_input_times_out_instead_of_hanging() -> None:
    # sympy computes this power in one C call that no Python-level timer can interrupt.
    result = grade("\\boxed{9^{9^{9^{9}}}}", "\\sqrt{2}+\\pi", time_limit=1.0)
    assert (result.correct, result.status) == (False, "timeout")
    assert is_correct("\\boxed{\\sqrt{8}}", "2\\sqrt{2}")  # the grader recovers


CASES = [("\\boxed{\\sqrt{18}}", "3\\sqrt{2}", True), ("\\boxed{\\frac{1}{3}}", "0.5", False)] * 8


def test_threads() -> None:
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda c: is_correct(c[0], c[1]), CASES))
    assert results == [c[2] for c in CASES]


def test_non_main_thread_symbolic_timeout() -> None:
    outcome: list[str] = []
    worker = threading.Thread(
        target=lambda: outcome.append(grade("\\boxed{9^{9^{9^{9}}}}", "2", time_limit=1).status)
    )
    worker.start()
    worker.join(60)
    assert outcome == ["timeout"]


def _grade_pair(case: tuple[str, str, bool]) -> bool:
    return is_correct(case[0], case[1])


def test_worker_processes() -> None:
    with ProcessPoolExecutor(2) as pool:
        assert list(pool.map(_grade_pair, CASES[:4])) == [c[2] for c in CASES[:4]]


def test_majority_vote_groups_equivalent_answers() -> None:
    answers = ["0.5", "3", "\\frac{1}{2}", None, "3", "1/2"]
    assert majority_vote(answers) == ("0.5", 3.0)
    assert majority_vote(["1", "2", "2"], weights=[0.9, 0.3, 0.3]) == ("1", 0.9)
    assert majority_vote([None, None]) == (None, 0.0)
    assert majority_vote(["1", "2"]) == ("1", 1.0)  # ties go to the first seen
    with pytest.raises(ValueError, match="2 answers but 1 weights"):
        majority_vote(["1", "2"], weights=[1.0])
