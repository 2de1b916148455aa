"""Math-Verify's own test cases, fed through our grader as a user would (issue 14).

The cases (``tests/data/math_verify_cases.json``, with their source and licence) are every
gold/prediction pair of huggingface/Math-Verify's ``tests/``; Math-Verify passes all of them
with each test's own settings. Our grader has fixed settings (Math-Verify's defaults: 6
decimal places, strict variable names, no set/relation comparison from the gold side), so
a case whose expected verdict needs another setting is compared with Math-Verify's verdict
under its defaults. Where we disagree on purpose, the case carries ``ours`` and ``why``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from sppd_lib.grading import grade

DATA = json.loads((Path(__file__).parent / "data" / "math_verify_cases.json").read_text())
CASES: list[dict[str, Any]] = DATA["cases"]
_ONE_MATH_SPAN = re.compile(r"^\s*(\$\$?)([^$]*)\1\s*$")


def as_response(pred: str) -> str:
    """A prediction that is one bare ``$...$`` expression is what a model would box; free
    text (prose, several spans, an existing box) is left as the model wrote it."""
    match = _ONE_MATH_SPAN.match(pred)
    if match and "\\boxed" not in pred:
        return "\\boxed{" + match.group(2).strip() + "}"
    return pred


def wanted(case: dict[str, Any]) -> bool:
    if "ours" in case:
        return case["ours"]
    return case["expected"] if case.get("default_settings", True) else case["with_defaults"]


@pytest.mark.parametrize(
    "case", CASES, ids=[f"{c['id']}-{c['source'].split('::')[1]}" for c in CASES]
)
def test_case(case: dict[str, Any]) -> None:
    result = grade(as_response(case["pred"]), case["gold"])
    assert result.correct is wanted(case), (result, case["gold"][:200])


def test_agreement_with_math_verify() -> None:
    """The figure the docs quote (docs/concepts/grading.md): agreement on the cases that use
    Math-Verify's defaults."""
    default = [c for c in CASES if c.get("default_settings", True)]
    agree = sum(grade(as_response(c["pred"]), c["gold"]).correct is c["expected"] for c in default)
    argued = [c for c in default if "ours" in c and c["ours"] != c["expected"]]
    assert (len(CASES), len(default)) == (276, 269)
    assert agree == len(default) - len(argued) == 266
    assert all(c["why"] for c in CASES if "ours" in c)


def test_argued_comma_cases_agree_with_decimal_comma_always() -> None:
    comma = [c for c in CASES if "decimal_comma" in c.get("why", "")]
    assert len(comma) == 2
    for case in comma:
        result = grade(as_response(case["pred"]), case["gold"], decimal_comma="always")
        assert result.correct is case["expected"]
