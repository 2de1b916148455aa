"""Final-answer extraction from model responses and gold answers, in linear time.

One job: find the final answer a text states, as a string, and say whether it was written
in LaTeX (a ``\\boxed{}``/``$...$`` answer) or in plain text, because the two read ``1,22``
differently (a list in LaTeX, a decimal comma in plain text; see ``grading``).

Every step is a regular-expression scan or a single pass over the text, so the cost is
linear in the (already bounded) input: a looping model's ``\\boxed{\\boxed{\\boxed{...``
tail costs milliseconds, not minutes. Nothing here raises on any ``str``; the callers in
``grading`` still guard every call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_SCAN_CHARS", "Answer", "as_text", "boxed_answers", "extract", "extract_gold"]

#: Only the tail of a response is searched: final answers come last, and it bounds the work.
MAX_SCAN_CHARS = 100_000
#: Boxes further apart than this are separate answers, not one list (cf. Math-Verify's 70).
_MAX_BOX_GAP = 70


@dataclass(frozen=True)
class Answer:
    """An extracted answer and whether it was written in LaTeX."""

    text: str
    latex: bool


def as_text(value: Any) -> str:
    """Any input as a ``str``; bytes that are not UTF-8 are decoded with replacement."""
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    if not isinstance(value, str):
        return str(value)
    # Lone surrogates (from surrogateescape decoding) break UTF-8 encoding downstream.
    return value.encode("utf-8", errors="replace").decode("utf-8")


# ---------------------------------------------------------------------------------------
# Boxes
# ---------------------------------------------------------------------------------------

# A box command with the spaces and repeated commands after it: "\boxed {x}" and
# "\boxed\boxed{x}" both open one box at the brace.
_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])(?:\s|\\(?:boxed|fbox)(?![a-zA-Z]))*")
_BRACE = re.compile(r"[{}]")
_BARE_TOKEN = re.compile(r"[^\s$]+")
# Text between two boxes that makes them one answer: a list separator ("x = \boxed{1} or
# x = \boxed{-2}", "\boxed{1}, \boxed{2}") or nothing but spacing and math delimiters.
_LIST_SEPARATOR = re.compile(r"\b(?:and|or)\b|[,;]")
_LETTER = re.compile(r"[a-zA-Z]")
_LETTERS = re.compile(r"[a-zA-Z]+")
_GAP_NOISE = re.compile(
    r"\\text\{|\\(?:quad|qquad)\b|\\[,;:! ()\[\]]|[{}$]"
    r"|\b[a-zA-Z](?:_\{?\w+\}?)?(?:\([a-z]\))?\s*=(?!=)"
)
_REASONING_WORDS = frozenset(
    ["so", "then", "hence", "thus", "therefore", "since", "because", "we", "is", "are", "get"]
)
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")  # "\$5" is a dollar sign, not math mode
_FILLER = re.compile(r"(?:\s|\$|\\[()\[\]]|\\(?:quad|qquad)\b|\\[,;:! ]|[.~])*")


def _brace_pairs(text: str, start: int) -> dict[int, int]:
    """Opening brace index -> its closing brace index, for braces from ``start`` on.

    One pass with a stack; an unmatched ``}`` is ignored and an unmatched ``{`` never
    appears in the result. Escaped braces count like plain ones (as in Math-Verify): in
    answers they come in pairs (``\\{1, 2\\}``).
    """
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for match in _BRACE.finditer(text, start):
        if match.group() == "{":
            stack.append(match.start())
        elif stack:
            pairs[stack.pop()] = match.start()
    return pairs


def _box_spans(text: str) -> list[tuple[int, int, int, int]]:
    """Closed top-level boxes as ``(command_start, content_start, content_end, end)``.

    ``end`` is the index after the box. Boxes inside another box's content are part of
    that content; a box whose brace never closes is skipped (a truncated tail). ``\\boxed 5``
    without braces boxes the one token after the space.
    """
    first = _BOX_OPEN.search(text)
    if first is None:
        return []
    pairs = _brace_pairs(text, first.start())
    spans: list[tuple[int, int, int, int]] = []
    covered = -1
    for match in _BOX_OPEN.finditer(text, first.start()):
        if match.start() < covered:
            continue
        i = match.end()
        if i < len(text) and text[i] == "{":
            close = pairs.get(i)
            if close is None:
                continue
            spans.append((match.start(), i + 1, close, close + 1))
            covered = close + 1
        elif match.group()[-1] == " " and "\n" not in match.group():  # "\boxed 5", same line
            token = _BARE_TOKEN.match(text, i)
            if token:
                spans.append((match.start(), i, token.end(), token.end()))
                covered = token.end()
    # Unwrap a box that holds nothing but another box ("\boxed{\boxed{5}}"): O(1) a level.
    unwrapped = []
    for command, start, end, after in spans:
        while True:
            inner = _BOX_OPEN.match(text, _skip_space(text, start, end))
            if inner is None or inner.end() >= end or text[inner.end()] != "{":
                break
            close = pairs.get(inner.end())
            if close is None or _skip_space_back(text, start, end) != close + 1:
                break
            start, end = inner.end() + 1, close
        unwrapped.append((command, start, end, after))
    return unwrapped


def _skip_space(text: str, start: int, end: int) -> int:
    while start < end and text[start].isspace():
        start += 1
    return start


def _skip_space_back(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


def _joins(between: str) -> bool:
    """True when the text between two boxes makes them parts of one answer.

    Like Math-Verify: a short gap with a list separator ("$ or $x = ", "\\text{ and }",
    ", ") or with nothing but spacing. Stricter than Math-Verify: a gap that goes on
    computing ("$, so $\\log_2 16 = ") or reasons ("then", "hence") separates two
    statements, and the last one is the answer.
    """
    if len(between) >= _MAX_BOX_GAP:
        return False
    if _FILLER.fullmatch(between) or (len(between) < 10 and not _LETTER.search(between)):
        return True
    # Drop "\text{...}" wrappers and spacing so "\quad \text{and} \quad" reads as "and",
    # and the names of listed values: "x = \boxed{1} or x = \boxed{-2}".
    plain = _GAP_NOISE.sub(" ", between)
    if "\\" in plain or "=" in plain or not _LIST_SEPARATOR.search(plain):
        return False
    return not any(word.lower() in _REASONING_WORDS for word in _LETTERS.findall(plain))


def boxed_answers(text: str) -> list[str]:
    """Contents of the final boxes of ``text``: the last box and the boxes listed with it.

    Boxes joined by a list separator (``\\boxed{1} or \\boxed{-2}``, ``\\boxed{1},
    \\boxed{2}``) or by nothing but spacing are one answer with several parts; a box
    repeated right after itself counts once. ``[]`` when ``text`` has no closed box.
    """
    spans = _box_spans(text)
    return _final_boxes(text, spans) if spans else []


def _final_boxes(text: str, spans: list[tuple[int, int, int, int]]) -> list[str]:
    parts = [spans[-1]]
    for span in reversed(spans[:-1]):
        if not _joins(text[span[3] : parts[-1][0]]):
            break
        parts.append(span)
    contents: list[str] = []
    for _, start, end, _ in reversed(parts):
        content = text[start:end].strip()
        if "$" in content:  # "\boxed{12 $ and $13}": math delimiters inside a box
            content = " ".join(_UNESCAPED_DOLLAR.sub(" ", content).split())
        if content and (not contents or contents[-1] != content):
            contents.append(content)
    return contents


# ---------------------------------------------------------------------------------------
# Answer phrases, math spans, numbers
# ---------------------------------------------------------------------------------------

_ANSWER_IS = re.compile(
    r"(?:final answer|the answer|answer)\s*(?:is|:|=)\s*:?\s*([^\n]{1,200})", re.IGNORECASE
)
# Where a stated answer ends: a sentence end, or a clause that explains it ("42, since ...").
_ANSWER_END = re.compile(
    r"[.;!?](?:\s|$)|,?\s+(?=(?:since|because|as|so|which|where|when|if|but|then|"
    r"I|we|this|that)\b)",
    re.IGNORECASE,
)
# "The largest $n$ is 34": the answer follows the phrase's own verb.
_SUBJECT_IS = re.compile(r"^(?P<subject>[^=]{0,80}?)\s(?:is|are|equals)\s+(?P<rest>.+)$")
_MATH_CONTENT = re.compile(r"[\d\\{}^=+*/<>]|\$|^\(?[A-Za-z]\)?$")
_DIGIT_OR_COMMAND = re.compile(r"[\d\\]")
_DELIMITERS = re.compile(r"\$+|\\[()\[\]]")
# Spans are bounded in length, so an unclosed "\(" costs O(1000), not a scan to the end.
_MATH_SPAN = re.compile(
    r"\$\$(.{1,1000}?)\$\$|\$([^$\n]{1,1000}?)\$|\\\((.{1,1000}?)\\\)|\\\[(.{1,1000}?)\\\]",
    re.DOTALL,
)
# Not inside a word: "AZYUK2A" states no number. "1.000,5" (European) is one number, and
# "1e3" (scientific) is one when no letter follows its exponent.
_NUMBER = re.compile(
    r"(?<![a-zA-Z])(?:-?\d{1,3}(?:\.\d{3})+,\d+(?![\d.,])"
    r"|-?\d[\d,]*(?:\.\d+)?(?:[eE][+-]?\d+(?![a-zA-Z\d]))?(?:/\d+)?|-?\.\d+)"
)
_LATEX_COMMAND = re.compile(r"\\[a-zA-Z]+")
_ENVIRONMENT = re.compile(
    r"\\(?:begin|end)\{[a-zA-Z*]*\}(?:\{[lcr|]*\})?|\\text\{\s*(?:and|or)\s*\}"
)
_WORD = re.compile(r"[a-zA-Z]{3,}")


_CONNECTIVES = frozenset(["and", "or", "text"])


def _outside_math(text: str, index: int) -> bool:
    return text.count("$", 0, index) % 2 == 0


def _phrase_answer(captured: str) -> str | None:
    """The answer in the text after "the answer is", or ``None`` when it states none."""
    for end in _ANSWER_END.finditer(captured):
        if end.start() > 0 and _outside_math(captured, end.start()):
            captured = captured[: end.start()]
            break
    captured = captured.strip()
    subject = _SUBJECT_IS.match(captured)
    if subject and _WORD.search(_DELIMITERS.sub("", subject.group("subject"))):
        captured = subject.group("rest")
    answer = _DELIMITERS.sub(" ", captured).strip().rstrip(".").strip()
    # Quoted: \"$12$ and $13$\" (a backslash before a quote is an escape, not LaTeX).
    answer = answer.replace('\\"', '"').strip("\"'` ").rstrip(".").strip()
    answer = " ".join(answer.split()) if "$" in captured else answer
    # "Jane started growing Sphere 3 hours ago": prose around one number states that number.
    prose = [w for w in _WORD.findall(_LATEX_COMMAND.sub("", answer)) if w not in _CONNECTIVES]
    numbers = _NUMBER.findall(answer)
    if prose and len(numbers) == 1 and not _is_latex(answer):
        return numbers[0].rstrip(".,")
    # "the answer is correct" states no answer: an answer has some mathematics in it.
    if not answer or not _MATH_CONTENT.search(answer):
        return None
    return answer


def _looks_like_bare_answer(text: str) -> bool:
    """True for a short formula such as ``0.5``, ``\\frac{1}{2}`` or ``(1, 2)``: no prose."""
    if not text or len(text) > 300 or "\n" in text:
        return False
    return _WORD.search(_LATEX_COMMAND.sub("", _ENVIRONMENT.sub("", text))) is None


def _last_math_span(text: str) -> tuple[str, int] | None:
    """The last ``$...$``/``\\(...\\)``/``\\[...\\]`` span holding a bare formula, and its end."""
    found = None
    for match in _MATH_SPAN.finditer(text.replace("\\$", "  ")):  # "\$" is a dollar sign
        content = " ".join(next(g for g in match.groups() if g is not None).split())
        # A digit or a command: "$x$" in "Let $x$ be ..." names a variable, states no answer.
        if _looks_like_bare_answer(content) and _DIGIT_OR_COMMAND.search(content):
            found = (content, match.end())
    return found


def _is_latex(answer: str) -> bool:
    return "\\" in answer or "{" in answer or "^" in answer


def extract(text: str, *, last_number_fallback: bool = True) -> Answer | None:
    """The final answer of a response (see ``grading.extract_answer`` for the order)."""
    text = text[-MAX_SCAN_CHARS:]
    spans = _box_spans(text)
    if spans:
        # "\boxed{255} ... Final Answer: The final answer is $10,455$.": the last word wins.
        for match in reversed(list(_ANSWER_IS.finditer(text, spans[-1][3]))):
            if "final" in match.group().lower():
                answer = _phrase_answer(match.group(1))
                if answer is not None:
                    return Answer(answer, latex=_DELIMITERS.search(match.group(1)) is not None)
        return Answer(", ".join(_final_boxes(text, spans)), latex=True)
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip().splitlines()
        if tail and tail[0].strip():
            answer = tail[0].strip()
            return Answer(answer.strip("$").strip(), latex="$" in answer or _is_latex(answer))
    for match in reversed(list(_ANSWER_IS.finditer(text))):
        answer = _phrase_answer(match.group(1))
        if answer is not None:
            return Answer(answer, latex=_DELIMITERS.search(match.group(1)) is not None)
    stripped = text.strip()
    if _looks_like_bare_answer(stripped.strip("$").strip()):
        return Answer(stripped.strip("$").strip(), latex="$" in stripped or _is_latex(stripped))
    span = _last_math_span(text)
    numbers = list(_NUMBER.finditer(text)) if last_number_fallback else []
    # A formula in math mode wins unless a number follows it ("$x=2$, so 5 apples").
    if span is not None and not (numbers and numbers[-1].start() >= span[1]):
        return Answer(span[0], latex=True)
    if numbers:
        return Answer(numbers[-1].group().rstrip(".,"), latex=False)
    return None


def extract_gold(gold: str) -> Answer | None:
    """The answer a gold string states.

    A gold is normally the final answer itself (``18``, ``\\frac{1}{2}``, ``19, 46, and
    82``), so it is taken whole; its boxes are unwrapped (several boxes: a list), a GSM8K
    ``#### N`` tail is read, and a worked solution ("... The final answer is $28\\%$.") is
    read like a response, without the last-number guess.
    """
    text = gold[-MAX_SCAN_CHARS:].strip()
    if not text:
        return None
    boxes = boxed_answers(text)
    if boxes:
        return Answer(", ".join(boxes), latex=True)
    if "####" in text or "\n" in text or len(text) > 200:
        return extract(text, last_number_fallback=False)
    if text.startswith("$") and text.endswith("$") and "$" not in text.strip("$"):
        stripped = text.strip("$").strip()
        return Answer(stripped, latex=True) if stripped else None
    return Answer(text, latex="$" in text or _is_latex(text))
