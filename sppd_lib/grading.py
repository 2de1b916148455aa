"""Answer extraction and equivalence: an exact numeric fast path, then Math-Verify.

Contract (DESIGN.md §4): :func:`extract_answer` and :func:`is_correct` never raise on any
input and are safe to call from threads and worker processes. Most answers are settled by
the exact fast paths in this module; the rest go to Math-Verify in a child process with a
hard time limit (``sppd_lib.symbolic``). Every outcome is counted (:func:`grading_stats`),
so a parse failure or a timeout is visible rather than a silent ``False``.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

from sppd_lib import symbolic

__all__ = [
    "Grade",
    "answers_equivalent",
    "extract_answer",
    "grade",
    "grading_stats",
    "group_equivalent",
    "is_correct",
    "last_boxed",
    "majority_vote",
    "reset_grading_stats",
]

GradeStatus = Literal["correct", "wrong", "no_answer", "invalid_gold", "unparsable", "timeout"]

#: Seconds one Math-Verify comparison may take before it counts as a timeout.
DEFAULT_TIME_LIMIT = 5.0
#: Only the tail of a response is searched: final answers come last, and it bounds the work.
MAX_SCAN_CHARS = 100_000
#: Extracted answers longer than this are not sent to the symbolic parser.
MAX_ANSWER_CHARS = 1_000


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


def _count(key: str) -> None:
    with _stats_lock:
        _stats[key] += 1


def grading_stats() -> dict[str, int]:
    """Counts since the last reset: graded, each status, and which path decided."""
    with _stats_lock:
        return dict(_stats)


def reset_grading_stats() -> None:
    with _stats_lock:
        _stats.clear()


# ---------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------

_BOXED_COMMANDS = ("\\boxed", "\\fbox")
_ANSWER_IS = re.compile(
    r"(?:final answer|the answer|answer)\s*(?:is|:|=)\s*:?\s*([^\n]{1,200})", re.IGNORECASE
)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_LATEX_COMMAND = re.compile(r"\\[a-zA-Z]+")
_WORD = re.compile(r"[a-zA-Z]{3,}")


def _as_text(value: Any) -> str:
    """Any input as a ``str``; bytes that are not UTF-8 are decoded with replacement."""
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    if not isinstance(value, str):
        return str(value)
    # Lone surrogates (from surrogateescape decoding) break regex-free consumers downstream.
    return value.encode("utf-8", errors="replace").decode("utf-8")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces allowed.

    Returns ``None`` when there is none or its braces never close. ``\\boxed 5`` (no
    braces) yields ``"5"``.
    """
    start = max(text.rfind(command) for command in _BOXED_COMMANDS)
    while start >= 0:
        command = next(c for c in _BOXED_COMMANDS if text.startswith(c, start))
        i = start + len(command)
        if i < len(text) and text[i] == " ":
            match = re.match(r" +([^\s$]+)", text[i:])
            if match:
                return match.group(1)
        elif i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[i + 1 : j].strip()
        # Unbalanced or bare command: look at the previous one.
        start = max(text.rfind(command, 0, start) for command in _BOXED_COMMANDS)
    return None


def _looks_like_bare_answer(text: str) -> bool:
    """True for a short formula such as ``0.5``, ``\\frac{1}{2}`` or ``(1, 2)``: no prose."""
    if not text or len(text) > 100 or "\n" in text:
        return False
    return _WORD.search(_LATEX_COMMAND.sub("", text)) is None


def extract_answer(text: Any, *, last_number_fallback: bool = True) -> str | None:
    """The final answer stated in ``text``, or ``None``.

    Tried in order: the last ``\\boxed{...}``; the text after the last ``####`` (GSM8K);
    "the answer is ..." / "Answer: ..."; the whole text when it is a bare formula; and,
    if ``last_number_fallback``, the last number. Never raises.
    """
    try:
        text = _as_text(text)[-MAX_SCAN_CHARS:]
        boxed = last_boxed(text)
        if boxed is not None:
            return boxed or None
        if "####" in text:
            tail = text.rsplit("####", 1)[1].strip().splitlines()
            if tail and tail[0].strip():
                return tail[0].strip()
        matches = list(_ANSWER_IS.finditer(text))
        if matches:
            answer = matches[-1].group(1).strip().rstrip(".").strip().strip("$").strip()
            if answer:
                return answer
        stripped = text.strip().strip("$").strip()
        if _looks_like_bare_answer(stripped):
            return stripped
        if last_number_fallback:
            numbers = _NUMBER.findall(text)
            if numbers:
                return numbers[-1].rstrip(".,")
        return None
    except Exception:  # never raise: a failure here is "no answer"
        _count("extract_error")
        return None


# ---------------------------------------------------------------------------------------
# Fast paths
# ---------------------------------------------------------------------------------------

_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_PLAIN_NUMBER = re.compile(r"^-?(?:\d+(?:\.\d*)?|\.\d+)$")
_SLASH_FRACTION = re.compile(r"^(-?\d+)\s*/\s*(-?\d+)$")
_LATEX_FRACTION = re.compile(r"^(-?)\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}$")
_TRAILING_UNITS = re.compile(r"^(-?[\d.,/]+)\s+[a-zA-Z][a-zA-Z ]*$")
_VARIABLE_PREFIX = re.compile(r"^[a-zA-Z]\s*=\s*")


def _normalize(answer: str) -> str:
    """Cosmetic normalization shared by both fast paths."""
    s = answer.strip()
    s = _TEXT_WRAPPER.sub(r"\1", s)
    for token in ("\\$", "$", "\\!", "\\,", "\\;", "\\ ", "~", "\\left", "\\right", "\\%", "%"):
        s = s.replace(token, "" if token not in ("\\ ", "~") else " ")
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("\\circ", "")
    s = _VARIABLE_PREFIX.sub("", s.strip())
    return s.strip().rstrip(".").strip()


def _to_fraction(answer: str) -> Fraction | None:
    """An exact value for integers, decimals and simple fractions; ``None`` for anything else."""
    s = _normalize(answer)
    units = _TRAILING_UNITS.match(s)
    if units:
        s = units.group(1)
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
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
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _compact(answer: str) -> str:
    return re.sub(r"\s+", "", _normalize(answer)).lower()


# ---------------------------------------------------------------------------------------
# Grading
# ---------------------------------------------------------------------------------------


def _compare(gold: str, pred: str, time_limit: float) -> GradeStatus:
    """Compare two extracted answers, gold first. Returns a status, never raises."""
    gold_value, pred_value = _to_fraction(gold), _to_fraction(pred)
    if gold_value is not None and pred_value is not None:
        if gold_value == pred_value:
            _count("fast_path")
            return "correct"
        if "." not in gold + pred:  # both exact integers/fractions: nothing left to check
            _count("fast_path")
            return "wrong"
    if _compact(gold) == _compact(pred):
        _count("fast_path")
        return "correct"
    if len(gold) > MAX_ANSWER_CHARS or len(pred) > MAX_ANSWER_CHARS:
        return "unparsable"
    try:
        status = symbolic.compare(gold, pred, time_limit)
        _count("math_verify")
        return status
    except symbolic.SymbolicTimeout:
        return "timeout"
    except Exception:
        _count("math_verify_error")
        return "unparsable"


def grade(
    response: Any,
    gold: Any,
    *,
    last_number_fallback: bool = True,
    time_limit: float = DEFAULT_TIME_LIMIT,
) -> Grade:
    """Extract the answer of ``response`` and compare it with ``gold``. Never raises.

    ``gold`` is a final answer (``"18"``, ``"\\frac{1}{2}"``); a ``\\boxed{}`` in it is
    unwrapped. The status says why an answer was not correct (no answer found, gold or
    prediction unparsable, timeout), and is counted in :func:`grading_stats`.
    """
    try:
        pred = extract_answer(response, last_number_fallback=last_number_fallback)
        gold_text = _as_text(gold).strip()
        gold_text = last_boxed(gold_text) or gold_text
        if not gold_text:
            status: GradeStatus = "invalid_gold"
        elif pred is None:
            status = "no_answer"
        else:
            status = _compare(gold_text, pred, time_limit)
    except Exception:
        pred, status = None, "unparsable"
    _count("graded")
    _count(status)
    return Grade(pred=pred, correct=status == "correct", status=status)


def is_correct(response: Any, gold: Any) -> bool:
    """True when the final answer in ``response`` equals ``gold``. Never raises."""
    return grade(response, gold).correct


def answers_equivalent(a: str, b: str, *, time_limit: float = DEFAULT_TIME_LIMIT) -> bool:
    """True when two extracted answers are mathematically the same."""
    try:
        return _compare(_as_text(a), _as_text(b), time_limit) == "correct"
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
