"""The arithmetic step checker: real SmolLM2 steps, adversarial text, exact properties."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sppd_lib.checker import check_step, final_claim_value, step_verdict

# Steps as SmolLM2-135M-Instruct writes them on generated arithmetic (the first five are the
# audit's examples in issue 24), with the verdict exact arithmetic gives.
REAL_STEPS = [
    ("−1 − 6 = 6 − 1 = 5", "false"),
    ("So, 3 − 5 is 8.", "false"),
    ("So, (7 + 4) = 21.\n\n", "false"),
    ("So, the final answer is −2 + 0 − (−5).", "no_claim"),
    ("(9 * 4) = 36. This is the product of 9 by 4.", "true"),
    ("To calculate 5 - 3, we subtract 3 from 5:\n\n", "no_claim"),
    ("5 - 3 = 2\n\n", "true"),
    ("Step 1: Calculate the expression inside the parentheses: (2 * 7) = 14\n\n", "true"),
    ("Step 2: Add -7 to the result: 14 + (-7) = 7\n\n", "true"),
    ("Step 2: Add -7 to the result: 14 + (-7) = 21\n\n", "false"),
    ("-9 - 8 = -17\n\n", "true"),
    ("3 - -7 = 3 + 7 = 10.", "true"),
    ("3 - -7 = 3 - 7 = -4.", "false"),
    ("( 5 + -8 + -6 ) = -3 + -6 = -9", "true"),
    ("-5 * 9 = -45\n\nThe answer is -45.", "true"),
    ("Therefore, the answer is -17.", "no_claim"),
    ("The final answer is $\\boxed{-17}$.", "no_claim"),
    ("-9 - 7 - 1 = -16 - 1 = -17", "true"),
    ("-9 - 7 - 1 = -2 - 1 = -3", "false"),
    ("$-8 \\times 1 = -8$", "true"),
    ("First, multiply 2 by 7: 2 × 7 = 14.", "true"),
    ("- 2 * 7 = 14\n- 14 + -7 = 7", "true"),
    ("1. 2 * 7 = 14\n2. 14 - 7 = 8", "false"),
    ("So, 3 minus 5 is -2.", "true"),
    ("The sum of 5 and 3 is 8.", "no_claim"),
    ("Let x - 3 = 5.", "no_claim"),
    ("2x + 3 = 7", "no_claim"),
    ("3 + 4 =", "no_claim"),
    ("3 + 4 = 7, then 7 * 2 =", "no_claim"),
    ("\\frac{1}{3} + \\frac{1}{3} = \\frac{2}{3}", "true"),
    ("1/2 + 1/4 = 3/4", "true"),
    ("10 / 3 = 3.33", "true"),
    ("10 / 3 = 3.3333", "true"),
    ("10 / 3 = 3.4", "false"),
    ("5 / 0 = 0", "false"),
    ("3 = 3", "no_claim"),
    ("", "no_claim"),
]


@pytest.mark.parametrize(("text", "verdict"), REAL_STEPS)
def test_real_steps(text: str, verdict: str) -> None:
    assert step_verdict(text) == verdict, check_step(text)


def test_claims_carry_sides_and_exact_values() -> None:
    check = check_step("−1 − 6 = 6 − 1 = 5")
    (claim,) = check.claims
    assert claim.sides == ("-1 - 6", "6 - 1", "5")
    assert claim.values == (Fraction(-7), Fraction(5), Fraction(5))
    assert not claim.holds
    mixed = check_step("3 * 4 = 12 apples, and 12 - 2 = 11")
    assert [c.holds for c in mixed.claims] == [True, False] and mixed.verdict == "false"


def test_unfinished_computation_is_counted() -> None:
    assert check_step("7 * 2 =").unfinished == 1
    assert check_step("7 * 2 = 14").unfinished == 0


def test_final_claim_value() -> None:
    assert final_claim_value("(9 * 4) = 36. This is the product of 9 by 4.") == 36
    assert final_claim_value("2 * 7 = 14, so 14 + -7 = 7.") == 7
    assert final_claim_value("So the answer is 7.") is None
    assert final_claim_value("3 + 4 = 2 + 5") is None  # ends on a computation, no number


@pytest.mark.parametrize(
    "text",
    [
        "(" * 5000 + "1" + ")" * 5000 + " = 1 + 0",
        "9" * 10_000 + " * 9 = 1",
        "1 + " * 5000 + "1 = 5001",
        "= = = = ((( ))) -- ++ ** // 1/0 = 1/0",
        "\\frac{\\frac{1}{2}}{3} = 1/6",
        "\x00\ud800 3 + 4 = 7",
        "3" + "=" * 1000,
    ],
)
def test_adversarial_text_never_raises(text: str) -> None:
    assert step_verdict(text) in ("true", "false", "no_claim")


def test_huge_input_is_bounded() -> None:
    assert step_verdict("3 + 4 = 7. " * 100_000) == "true"  # the first MAX_CHARS are read
    assert step_verdict(123) == "no_claim"  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_text_never_raises(text: str) -> None:
    check = check_step(text)
    assert check.verdict in ("true", "false", "no_claim")
    assert (check.verdict == "false") == any(not claim.holds for claim in check.claims)


def _expressions(depth: int = 3) -> st.SearchStrategy[tuple[str, Fraction]]:
    leaf = st.integers(-9, 9).map(lambda n: (str(n), Fraction(n)))

    def combine(
        children: st.SearchStrategy[tuple[str, Fraction]],
    ) -> st.SearchStrategy[tuple[str, Fraction]]:
        def build(a: tuple[str, Fraction], op: str, b: tuple[str, Fraction]) -> tuple:
            value = {"+": a[1] + b[1], "-": a[1] - b[1], "*": a[1] * b[1]}[op]
            return f"({a[0]} {op} {b[0]})", value

        return st.builds(build, children, st.sampled_from("+-*"), children)

    return st.recursive(leaf, combine, max_leaves=6)


@settings(max_examples=200, deadline=None)
@given(_expressions(), st.sampled_from(["", "So, ", "Step 2: ", "We get "]), st.booleans())
def test_generated_claims_are_checked_exactly(
    expression: tuple[str, Fraction], lead: str, unicode_minus: bool
) -> None:
    text, value = expression
    if unicode_minus:
        text = text.replace(" - ", " − ")
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1]  # the outer parentheses, as people write it
    right = f"{lead}{text} = {value}."
    wrong = f"{lead}{text} = {value + 1}."
    if any(f" {op} " in text for op in "+-*−"):  # a computation, not a bare (negative) number
        assert step_verdict(right) == "true", check_step(right)
        assert step_verdict(wrong) == "false", check_step(wrong)
    else:  # a bare number: no computation, no claim
        assert step_verdict(right) == "no_claim"
