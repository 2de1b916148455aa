"""Answer equivalence: exact numeric fast paths, then Math-Verify, with a stated policy.

Contract (DESIGN.md §4): :func:`extract_answer` and :func:`is_correct` never raise on any
input and are safe to call from threads and worker processes. Extraction (finding the final
answer of a text) lives in :mod:`sppd_lib.extraction`; this module decides equivalence.
Most answers are settled by the exact fast paths here; the rest go to Math-Verify in a
child process with a hard time limit (:mod:`sppd_lib.symbolic`). Every outcome is counted
(:func:`grading_stats`), so a parse failure, an error inside Math-Verify or a timeout is a
visible status rather than a silent ``False``.

Policy (keyword options of :func:`grade` and :func:`is_correct`, defaults first):

- ``match_variable_names=True``: ``\\boxed{x=2}`` against gold ``y=2`` is wrong (the
  question asked for ``y``), as in Math-Verify's strict mode; a name on one side only is
  ignored (``x=2`` against ``2`` is correct). ``False`` ignores names on both sides.
- ``decimal_comma="plain"``: a comma that cannot group thousands (``1,22``, ``1000,99``,
  ``0,111``) is a decimal comma in a response's plain text ("so it costs 2,74 $"), while in
  LaTeX (a box, ``$...$``) it separates list items (``\\boxed{1,22}`` is 1 and 22), as in
  Math-Verify. Gold answers are read as LaTeX even without ``$``: data sets write a list of
  roots as ``-2,1`` (MATH500), and reading that as -2.1 would mark ``-2.1`` correct.
  ``"always"`` reads such a comma as a decimal everywhere, golds and boxes included (data
  written with decimal commas); ``"never"`` never does. Where a decimal comma is read, so is
  the European form with point-grouped thousands, ``1.000,5`` (1000.5): it needs at least
  one ``.ddd`` group *and* a decimal comma, so ``1,000`` stays 1000, ``1.000`` stays 1 and
  ``\\boxed{1,2}`` stays a list.

Numbers (exact, before Math-Verify): ``1e3``, ``1.5E-2`` and ``2\\times 10^{3}`` are
scientific notation (exponents up to :data:`MAX_EXPONENT`); ``1 1/2`` and
``1\\frac{1}{2}`` are mixed numbers (3/2) when the fraction is proper, as in word problems.

Gold answers: a missing, empty or non-finite gold (``None``, ``NaN``, ``inf``, the text
``"nan"`` a table writes for a missing value) is ``invalid_gold``, never graded.

Size: before any symbolic work, the decimal digits of every power in both answers are
estimated from their exponents (:func:`estimated_power_digits`, microseconds); an answer
whose powers would have more than :data:`MAX_POWER_DIGITS` digits (``10^{10^{10}}``,
``2^{2^{64}}``) is ``unparsable`` at once, counted as ``size_limit``, instead of spending
the whole time limit in sympy. Other expensive expressions (``(10^{6})!``) still end at the
time limit, as ``timeout``.
"""

from __future__ import annotations

import math
import numbers
import re
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any, Literal

from sppd_lib import symbolic
from sppd_lib.extraction import Answer, as_text, boxed_answers, extract, extract_gold

__all__ = [
    "DecimalComma",
    "Grade",
    "answers_equivalent",
    "estimated_power_digits",
    "extract_answer",
    "grade",
    "grading_stats",
    "group_equivalent",
    "is_correct",
    "last_boxed",
    "majority_vote",
    "reset_grading_stats",
]

GradeStatus = Literal[
    "correct", "wrong", "no_answer", "invalid_gold", "unparsable", "timeout", "error"
]
DecimalComma = Literal["plain", "always", "never"]

#: Seconds one grading call may take before it counts as a timeout.
DEFAULT_TIME_LIMIT = 5.0
#: Extracted answers longer than this are not compared (status ``unparsable``).
MAX_ANSWER_CHARS = 1_000
#: Relative tolerance for numbers: 1e-7 and 2e-7 differ (Math-Verify rounds to 6 places).
REL_TOL = Fraction(1, 10**6)
#: Largest power of ten that scientific notation may write (``1e1000``): exact and cheap.
MAX_EXPONENT = 1_000
#: Answers whose powers would have more decimal digits than this are not compared.
MAX_POWER_DIGITS = 10_000


@dataclass(frozen=True)
class Grade:
    """The outcome of grading one response against one gold answer."""

    pred: str | None
    correct: bool
    status: GradeStatus


# ---------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------

_stats: Counter[str] = Counter()
_stats_lock = threading.Lock()


def _count(*keys: str) -> None:
    with _stats_lock:  # one lock round per call: this is on the 50,000-a-second path
        for key in keys:
            _stats[key] += 1


def grading_stats() -> dict[str, int]:
    """Counts since the last reset: graded, each status, and which path decided."""
    with _stats_lock:
        return dict(_stats)


def reset_grading_stats() -> None:
    """Set every count of :func:`grading_stats` back to zero."""
    with _stats_lock:
        _stats.clear()


# ---------------------------------------------------------------------------------------
# Extraction (the work is in sppd_lib.extraction)
# ---------------------------------------------------------------------------------------


def last_boxed(text: str) -> str | None:
    """Content of the final ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces allowed.

    Several boxes listed together (``\\boxed{1}, \\boxed{2}``) come back joined by
    ``", "``. ``None`` when there is none or its braces never close; ``\\boxed 5`` (no
    braces) yields ``"5"``.
    """
    try:
        boxes = boxed_answers(as_text(text))
    except Exception:
        _count("extract_error")
        return None
    return ", ".join(boxes) if boxes else None


def extract_answer(text: Any, *, last_number_fallback: bool = True) -> str | None:
    """The final answer stated in ``text``, or ``None``. Never raises; linear time.

    Tried in order: the final ``\\boxed{...}`` (several listed boxes are one answer,
    joined by ``", "``); the text after the last ``####`` (GSM8K); "the answer is ..." /
    "Answer: ..." up to the end of its sentence; the whole text when it is a bare formula;
    the last formula in math mode unless a number follows it; and, if
    ``last_number_fallback``, the last number.
    """
    answer = _extract(text, last_number_fallback)
    return None if answer is None else answer.text


def _extract(text: Any, last_number_fallback: bool) -> Answer | None:
    try:
        return extract(as_text(text), last_number_fallback=last_number_fallback)
    except Exception:  # never raise: a failure here is "no answer", and counted
        _count("extract_error")
        return None


# ---------------------------------------------------------------------------------------
# Fast paths
# ---------------------------------------------------------------------------------------

_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textnormal|mathrm|mbox)\{([^{}]*)\}")
_MATHRM_LETTER = re.compile(r"\\mathrm\{\s*([a-zA-Z])\s*\}")
_INTEGER = re.compile(r"-?\d{1,50}\Z")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_SPACE_THOUSANDS = re.compile(r"^-?\d{1,3}(?: \d{3})+(?:\.\d+)?$")
_DECIMAL_COMMA = re.compile(r"^(-?\d+),(\d+)$")
_EUROPEAN = re.compile(r"^(-?\d{1,3}(?:\.\d{3})+),(\d+)$")
_PLAIN_NUMBER = re.compile(r"^-?(?:\d+(?:\.\d*)?|\.\d+)$")
_SCIENTIFIC = re.compile(
    r"^(-?(?:\d+(?:\.\d*)?|\.\d+))\s*(?:[eE]|\\(?:times|cdot)\s*10\s*\^)\s*"
    r"(?:\{\s*([+-]?\d{1,6})\s*\}|([+-]?\d{1,6}))$"
)
_MIXED_NUMBER = re.compile(r"^(-?)(\d+)\s+(\d+)\s*/\s*(\d+)$")
_LATEX_MIXED_NUMBER = re.compile(r"^(-?)(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}$")
_SLASH_FRACTION = re.compile(r"^(-?\d+)\s*/\s*(-?\d+)$")
_LATEX_FRACTION = re.compile(r"^(-?)\\[dtc]?frac\{(-?\d+)\}\{(-?\d+)\}$")
_NUMBER_AND_WORDS = re.compile(r"^(-?(?:\d+ )?[\d.,/]+)\s*([a-zA-Z]+(?: [a-zA-Z]+)*)$")
_VARIABLE_PREFIX = re.compile(r"^([a-zA-Z])\s*=\s*(?=\S)")

#: Trailing words that are units (stripped: "5 cm" is 5). Any other word keeps the answer
#: away from the fast path: "5 i" is not 5, "2 million" is not 2.
# fmt: off
UNIT_WORDS = frozenset(
    [
        "mm", "cm", "dm", "m", "km", "in", "inch", "inches", "ft", "foot", "feet", "yd",
        "yard", "yards", "mi", "mile", "miles", "meter", "meters", "metre", "metres",
        "kilometer", "kilometers", "kilometre", "kilometres", "centimeter", "centimeters",
        "millimeter", "millimeters", "mg", "g", "kg", "gram", "grams", "kilogram", "kilograms",
        "lb", "lbs", "pound", "pounds", "oz", "ounce", "ounces", "ton", "tons", "tonnes", "ml",
        "l", "liter", "liters", "litre", "litres", "gallon", "gallons", "quart", "quarts",
        "pint", "pints", "cup", "cups", "s", "sec", "secs", "second", "seconds", "min", "mins",
        "minute", "minutes", "h", "hr", "hrs", "hour", "hours", "day", "days", "week", "weeks",
        "month", "months", "year", "years", "mph", "kmh", "dollar", "dollars", "cent", "cents",
        "euro", "euros", "usd", "eur", "yuan", "rupees", "percent", "pct", "percentage",
        "degree", "degrees", "deg", "sq", "square", "cubic", "units", "unit"
    ]
)
# fmt: on
#: Scale words multiply: "2 million" is 2000000.
SCALE_WORDS = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}


def _normalize(answer: str) -> str:
    """Cosmetic normalization shared by both fast paths (no variable names touched)."""
    s = _MATHRM_LETTER.sub(r"\1", answer.strip())  # \mathrm{e} is Euler's e, not a unit
    s = _TEXT_WRAPPER.sub(r"\1", s)
    for token in ("\\$", "$", "\\!", "\\,", "\\;", "\\ ", "~", "\\left", "\\right", "\\%", "%"):
        s = s.replace(token, "" if token not in ("\\ ", "~") else " ")
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("\\circ", "")
    s = s.replace("{,}", ",")  # "14{,}916"
    # \dfrac, \tfrac and \cfrac only size a fraction: comparing them needs no Math-Verify.
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\cfrac", "\\frac")
    return s.strip().rstrip(".").strip()


def _decimal_comma(answer: Answer, policy: DecimalComma, gold: bool = False) -> str:
    """``answer.text`` with a decimal comma written as a point, where the policy says so."""
    if policy == "never" or (policy == "plain" and (answer.latex or gold)):
        return answer.text
    s = answer.text.strip()
    european = _EUROPEAN.match(s)
    if european:  # "1.000,5": point-grouped thousands and a decimal comma
        return f"{european.group(1).replace('.', '')}.{european.group(2)}"
    match = _DECIMAL_COMMA.match(s)
    if match and (not _THOUSANDS.match(s) or match.group(1).lstrip("-") == "0"):
        return f"{match.group(1)}.{match.group(2)}"
    return answer.text


def _to_fraction(answer: str) -> Fraction | None:
    """An exact value for integers, decimals and simple fractions; ``None`` for anything else."""
    s = _normalize(answer)
    words = _NUMBER_AND_WORDS.match(s)
    if words:
        s, scale = words.group(1), 1
        rest = words.group(2).lower().split()
        if rest and rest[0] in SCALE_WORDS:
            scale = SCALE_WORDS[rest.pop(0)]
        if not all(word in UNIT_WORDS for word in rest):
            return None
        value = _to_fraction(s)
        return None if value is None else value * scale
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    elif _SPACE_THOUSANDS.match(s):
        s = s.replace(" ", "")
    try:
        if _PLAIN_NUMBER.match(s):
            return Fraction(s)
        match = _SLASH_FRACTION.match(s)
        if match:
            return Fraction(int(match.group(1)), int(match.group(2)))
        match = _LATEX_FRACTION.match(s)
        if match:
            value = Fraction(int(match.group(2)), int(match.group(3)))
            return -value if match.group(1) else value
        match = _SCIENTIFIC.match(s)
        if match:
            exponent = int(match.group(2) or match.group(3))
            if abs(exponent) > MAX_EXPONENT:
                return None
            return Fraction(match.group(1)) * Fraction(10) ** exponent
        match = _MIXED_NUMBER.match(s) or _LATEX_MIXED_NUMBER.match(s)
        if match:  # "1 1/2" is one and a half only when the fraction is proper
            whole, numerator, denominator = (int(match.group(i)) for i in (2, 3, 4))
            if not 0 < numerator < denominator:
                return None
            value = whole + Fraction(numerator, denominator)
            return -value if match.group(1) else value
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _invalid_gold(gold: Any) -> bool:
    """A gold that is no answer: a non-finite number, or the text a table writes for one."""
    if isinstance(gold, str):
        return gold.strip().lower() in ("nan", "+nan", "-nan")
    if isinstance(gold, Decimal):
        return not gold.is_finite()
    if isinstance(gold, numbers.Real) and not isinstance(gold, numbers.Integral):
        return not math.isfinite(float(gold))
    return False


# ---------------------------------------------------------------------------------------
# Size estimate: powers are bounded before any symbolic work
# ---------------------------------------------------------------------------------------

_NUMBER_TOKEN = re.compile(r"\d+(?:\.\d+)?")
_SYMBOL_TOKEN = re.compile(r"\\[a-zA-Z]+|[a-zA-Z]")
#: Nesting deeper than this is not estimated: the answer counts as too large.
_MAX_NESTING = 100


def _log_sum(a: float | None, b: float) -> float:
    """An upper bound of ``log10(10**a + 10**b)``; ``a`` is ``None`` before the first term."""
    return b if a is None else max(a, b) + math.log10(2)


class _PowerSize:
    """One left-to-right pass over a formula: an upper estimate of ``log10 |value|``.

    Atoms are numbers, symbols and bracketed groups. A symbol (``x``, ``\\pi``, ``\\frac``)
    counts as 1: sympy keeps ``x^{1000}`` symbolic and computes no digits of it. Atoms side
    by side are multiplied (their logs summed), terms joined by ``+``/``-`` are added (the
    larger log, plus log10(2)), and ``a^b`` (right-associative: ``2^2^2`` is ``2^(2^2)``) is
    ``log(a) x 10**log(b)``. ``largest`` keeps the largest value met anywhere, exponents
    included: ``1^{10^{10^{10}}}`` is 1, but sympy computes its exponent. Floats only, no big
    numbers: past 10**(10**300) a value is ``inf``.
    """

    def __init__(self, text: str) -> None:
        self.text, self.largest = text, 0.0

    def _note(self, log_value: float) -> float:
        self.largest = max(self.largest, log_value)
        return log_value

    def _skip_spaces(self, i: int) -> int:
        while i < len(self.text) and self.text[i].isspace():
            i += 1
        return i

    def sequence(self, i: int, depth: int) -> tuple[float, int]:
        """Atoms from ``i`` up to an unmatched closing bracket (or the end)."""
        if depth > _MAX_NESTING:
            raise OverflowError("nested too deeply to estimate")
        total: float | None = None
        term = 0.0
        while i < len(self.text) and self.text[i] not in "})]":
            if self.text[i] in "+-":  # a sum is at most twice its larger term
                total, term = _log_sum(total, term), 0.0
                i += 1
                continue
            if self.text[i] == "^":  # no base ("^5"): the exponent alone
                value, i = self.operand(i + 1, depth)
                term += value
                continue
            value, i = self.atom(i, depth)
            i = self._skip_spaces(i)
            if i < len(self.text) and self.text[i] == "^":
                exponent, i = self.operand(i + 1, depth)
                value = self._power(value, exponent)
            term += value
        return self._note(_log_sum(total, term)), i

    def atom(self, i: int, depth: int) -> tuple[float, int]:
        text = self.text
        if text[i] in "{([":
            value, i = self.sequence(i + 1, depth + 1)
            return value, i + 1  # past the closing bracket
        number = _NUMBER_TOKEN.match(text, i)
        if number:
            # An exact number costs the digits of its numerator or its denominator: 0.5 is
            # 5/10, and 0.5^{100000} has a denominator of 100,000 digits.
            whole, _, decimals = number.group().partition(".")
            whole = whole.lstrip("0")
            size = len(whole) if len(whole) > 300 else math.log10(max(float(whole or 1), 1.0))
            return self._note(max(size, float(len(decimals)))), number.end()
        symbol = _SYMBOL_TOKEN.match(text, i)
        return 0.0, symbol.end() if symbol else i + 1  # a symbol, an operator, a space

    def operand(self, i: int, depth: int) -> tuple[float, int]:
        """The exponent after a ``^``: one atom, raised again if another ``^`` follows."""
        i = self._skip_spaces(i)
        if i >= len(self.text) or self.text[i] in "})]":
            return 0.0, i
        value, i = self.atom(i, depth + 1)
        after = self._skip_spaces(i)
        if after < len(self.text) and self.text[after] == "^":
            exponent, i = self.operand(after + 1, depth + 1)
            value = self._power(value, exponent)
        return self._note(value), i

    def _power(self, base: float, exponent: float) -> float:
        if base <= 0.0:
            return 0.0
        return self._note(base * 10**exponent if exponent < 300 else math.inf)


def estimated_power_digits(answer: str) -> float:
    """An upper estimate of the decimal digits of the largest value ``answer`` writes.

    Cheap (no big numbers are made; microseconds for a short answer) and meant to be
    pessimistic: ``2^{10}`` is 4, ``10^{10^{10}}`` 1e10, ``2^{2^{64}}`` about 5.6e18. Answers
    past :data:`MAX_POWER_DIGITS` are not handed to Math-Verify.
    """
    size = _PowerSize(answer)
    try:
        position = 0
        while position < len(answer):  # an unmatched closing bracket ends one sequence
            _, position = size.sequence(position, 0)
            position += 1
    except (RecursionError, OverflowError, ValueError):
        return math.inf
    return size.largest + 1.0


def close_enough(a: Fraction, b: Fraction) -> bool:
    """Equal within :data:`REL_TOL` of the larger magnitude (exact arithmetic)."""
    return abs(a - b) <= REL_TOL * max(abs(a), abs(b))


def _compact(answer: str) -> str:
    return re.sub(r"\s+", "", _normalize(answer)).lower()


# ---------------------------------------------------------------------------------------
# Grading
# ---------------------------------------------------------------------------------------


def _for_math_verify(answer: str) -> str:
    """The string Math-Verify parses: math delimiters added unless it has its own."""
    answer = _MATHRM_LETTER.sub(r"\1", answer)  # else Math-Verify drops "\mathrm{e}" as a unit
    if "$" in answer or "\\(" in answer or "\\[" in answer:
        return answer
    return f"${answer}$"


def _compare(
    gold: Answer,
    pred: Answer,
    deadline: float,
    decimal_comma: DecimalComma = "plain",
    match_variable_names: bool = True,
) -> GradeStatus:
    """Compare two extracted answers, gold first. Returns a status, never raises."""
    gold_text = _decimal_comma(gold, decimal_comma, gold=True)
    pred_text = _decimal_comma(pred, decimal_comma)
    if len(gold_text) > MAX_ANSWER_CHARS or len(pred_text) > MAX_ANSWER_CHARS:
        return "unparsable"  # before any regular expression: bounded work
    if _INTEGER.match(gold_text) and _INTEGER.match(pred_text):  # most GSM8K answers
        _count("fast_path")
        return "correct" if int(gold_text) == int(pred_text) else "wrong"
    # "x = 5" names the unknown. Different names on the two sides are a different answer
    # under the default policy; otherwise the name is not part of the answer.
    gold_name, pred_name = _VARIABLE_PREFIX.match(gold_text), _VARIABLE_PREFIX.match(pred_text)
    if match_variable_names and gold_name and pred_name and gold_name[1] != pred_name[1]:
        _count("fast_path")
        return "wrong"
    # Math-Verify reads the names itself (strictly): "k=1" is 1, "y=-x/2" is a line.
    symbolic_gold, symbolic_pred = gold_text, pred_text
    if gold_name:
        gold_text = gold_text[gold_name.end() :]
    if pred_name:
        pred_text = pred_text[pred_name.end() :]
    if not match_variable_names:
        symbolic_gold, symbolic_pred = gold_text, pred_text
    gold_value, pred_value = _to_fraction(gold_text), _to_fraction(pred_text)
    if gold_value is not None and pred_value is not None:
        _count("fast_path")
        if gold_value == pred_value:
            return "correct"
        exact = "." not in gold_text + pred_text  # integers and fractions: no rounding
        return "correct" if not exact and close_enough(gold_value, pred_value) else "wrong"
    if _compact(gold_text) == _compact(pred_text):
        _count("fast_path")
        return "correct"
    if max(estimated_power_digits(gold_text), estimated_power_digits(pred_text)) > (
        MAX_POWER_DIGITS
    ):
        _count("size_limit")
        return "unparsable"  # sympy would compute every digit of it
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return "timeout"
    try:
        status = symbolic.compare(
            _for_math_verify(symbolic_gold), _for_math_verify(symbolic_pred), remaining
        )
        _count("math_verify")
        return status
    except symbolic.SymbolicTimeout:
        return "timeout"
    except Exception:
        _count("math_verify_failure")
        return "error"


def grade(
    response: Any,
    gold: Any,
    *,
    last_number_fallback: bool = True,
    time_limit: float = DEFAULT_TIME_LIMIT,
    decimal_comma: DecimalComma = "plain",
    match_variable_names: bool = True,
) -> Grade:
    """Extract the answer of ``response`` and compare it with ``gold``. Never raises.

    ``gold`` is a final answer (``"18"``, ``"\\frac{1}{2}"``, ``"12 and 13"``); its boxes
    are unwrapped (several: a list) and a worked solution is read for its stated answer.
    The whole call, extraction included, takes at most ``time_limit`` seconds (plus the
    symbolic child's one-time start-up in a fresh process). The status says why an answer
    was not correct (no answer found, gold or prediction unparsable, an error inside
    Math-Verify, timeout), and is counted in :func:`grading_stats`. ``decimal_comma`` and
    ``match_variable_names`` are the policy options described in the module docstring.
    """
    deadline = time.monotonic() + time_limit
    pred: Answer | None = None
    try:
        pred = _extract(response, last_number_fallback)
        gold_answer = None if _invalid_gold(gold) else extract_gold(as_text(gold))
        if gold_answer is None or not gold_answer.text:
            status: GradeStatus = "invalid_gold"
        elif pred is None:
            status = "no_answer"
        else:
            status = _compare(gold_answer, pred, deadline, decimal_comma, match_variable_names)
    except Exception:
        _count("grade_failure")
        status = "error"
    _count("graded", status)
    return Grade(
        pred=None if pred is None else pred.text, correct=status == "correct", status=status
    )


def is_correct(response: Any, gold: Any, **options: Any) -> bool:
    """True when the final answer in ``response`` equals ``gold``. Never raises.

    ``options`` are :func:`grade`'s keywords (``time_limit``, ``decimal_comma``,
    ``match_variable_names``, ``last_number_fallback``).
    """
    try:
        return grade(response, gold, **options).correct
    except Exception:  # an unknown keyword: still no exception, by contract
        _count("error")
        return False


def answers_equivalent(a: str, b: str, *, time_limit: float = DEFAULT_TIME_LIMIT) -> bool:
    """True when two extracted answers are mathematically the same."""
    try:
        deadline = time.monotonic() + time_limit
        first, second = Answer(as_text(a), latex=True), Answer(as_text(b), latex=True)
        return _compare(first, second, deadline) == "correct"
    except Exception:
        return False


def group_equivalent(answers: Sequence[str | None]) -> list[list[int]]:
    """Indices of ``answers`` grouped by equivalence, in order of first appearance.

    ``None`` answers are left out. Each answer is compared with the first member of each
    existing group, so the cost is O(len(answers) x groups).
    """
    groups: list[list[int]] = []
    for index, answer in enumerate(answers):
        if answer is None:
            continue
        for group in groups:
            if answers_equivalent(answers[group[0]], answer):  # type: ignore[arg-type]
                group.append(index)
                break
        else:
            groups.append([index])
    return groups


def majority_vote(
    answers: Sequence[str | None], weights: Sequence[float] | None = None
) -> tuple[str | None, float]:
    """The answer with the largest total weight among equivalent answers, and that weight.

    With ``weights=None`` every answer counts 1 (maj@N); with values as weights this is the
    value-weighted vote (ORM_VOTE@N). Ties go to the group seen first. ``(None, 0.0)`` when
    no answer is given.
    """
    if weights is not None and len(weights) != len(answers):
        raise ValueError(f"{len(answers)} answers but {len(weights)} weights")
    best: tuple[str | None, float] = (None, 0.0)
    for group in group_equivalent(answers):
        score = float(sum(1.0 if weights is None else weights[i] for i in group))
        if best[0] is None or score > best[1]:
            best = (answers[group[0]], score)
    return best
