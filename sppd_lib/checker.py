"""Exact process truth for generated arithmetic: every arithmetic claim of a step, checked.

A *claim* is an equation the step asserts between a computation and its result:
``a op b = c``, chains ``a - b = c - d = e``, and ``a op b is c`` (also ``equals``, ``gives``,
``makes``). Sides are integers, decimals or fractions with ``+ - * /``, unary minus and
parentheses (``×``, ``÷``, ``−``, ``\\times``, ``\\cdot``, ``\\frac{a}{b}``, ``plus``,
``minus``, ``times``, ``multiplied by``, ``divided by`` are read too) and are evaluated with
:class:`fractions.Fraction`, so ``1/3 + 1/3 = 2/3`` holds exactly; a decimal result holds when
it is the exact value rounded to its digits (``10/3 = 3.33``).

A step is ``true`` when it makes at least one claim and every claim holds (and no computation
is left without its result, "3 + 4 ="), ``false`` when a claim is wrong, ``no_claim``
otherwise. Equations between bare numbers ("3 = 3"), prose ("the sum of 5 and 3 is 8": the
left side has no operator), variables ("x - 3 = 5": the side before the ``=`` is not
arithmetic) and restated questions ("the answer is -2 + 0 - (-5)") make no claim.

The check is pure, runs in time linear in the text (numbers longer than
:data:`MAX_DIGITS` and sides longer than :data:`MAX_SIDE_TOKENS` are not evaluated) and never
raises: anything unexpected is ``no_claim``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

__all__ = ["Claim", "StepCheck", "Verdict", "check_step", "final_claim_value", "step_verdict"]

Verdict = Literal["true", "false", "no_claim"]

#: Longer number literals are not evaluated (products of huge numbers cost more than linear).
MAX_DIGITS = 30
#: Longer sides are not evaluated.
MAX_SIDE_TOKENS = 200
#: Only the first characters of a step are read (a step is a few dozen tokens).
MAX_CHARS = 20_000


@dataclass(frozen=True)
class Claim:
    """One checked equation: its sides as written, their exact values, and whether it holds."""

    sides: tuple[str, ...]
    values: tuple[Fraction, ...]
    holds: bool


@dataclass(frozen=True)
class StepCheck:
    """The claims of a step and its verdict; ``unfinished`` counts computations followed by
    ``=`` and no checkable result."""

    verdict: Verdict
    claims: tuple[Claim, ...] = ()
    unfinished: int = 0


# -- normalisation --------------------------------------------------------------------------

_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]{1,80})\s*\}\s*\{\s*([^{}]{1,80})\s*\}")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{([^{}]{0,200})\}")
_LATEX_TIMES = re.compile(r"\\(?:times|cdot|ast)(?![a-zA-Z])")
_LATEX_DIV = re.compile(r"\\div(?![a-zA-Z])")
_LATEX_PAREN = re.compile(r"\\(?:left|right|big|Big)(?![a-zA-Z])")
_LATEX_NOISE = re.compile(r"\\[,;:! ]|\\[()\[\]]|\$")
_UNICODE = str.maketrans({"−": "-", "–": "-", "×": "*", "·": "*", "÷": "/", "∗": "*"})


def _normalise(text: str) -> str:
    text = text[:MAX_CHARS].translate(_UNICODE)
    text = _BOXED.sub(r" \1 ", text)
    text = _FRAC.sub(r"((\1)/(\2))", text)
    text = _LATEX_TIMES.sub("*", text)
    text = _LATEX_DIV.sub("/", text)
    text = _LATEX_PAREN.sub("", text)
    text = _LATEX_NOISE.sub(" ", text)
    return text.replace("{", "(").replace("}", ")")


# -- tokens ---------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"(?P<num>\d+(?:,\d{3}(?!\d))*(?:\.\d+)?)(?P<glued>[A-Za-z_])?"
    r"|(?P<word>[A-Za-z_]+)"
    r"|(?P<op>[-+*/()=])"
    r"|(?P<space>\s+)"
    r"|(?P<other>.)",
    re.DOTALL,
)
_OPERATOR_WORDS = {"plus": "+", "minus": "-", "times": "*", "negative": "-"}
_BY_WORDS = {"multiplied": "*", "divided": "/"}
#: Words that assert their left computation equals what follows ("3 - 5 is -2").
_IS_WORDS = frozenset(["is", "equals", "gives", "makes", "yields"])

# Token kinds: "num" (value), "op" (+ - * / ( )), "eq" (=), "is" (an _IS_WORDS word),
# "break" (anything else: prose, punctuation). A "break" carries whether it was a word.


@dataclass
class _Tok:
    kind: str
    text: str
    start: int
    end: int
    value: Fraction | None = None
    spaced_after: bool = False  # whitespace follows directly
    word: bool = False  # a "break" that is a word (or a number glued to letters)


def _tokens(text: str) -> list[_Tok]:
    raw: list[_Tok] = []
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        piece = match.group()
        if kind == "space":
            if raw:
                raw[-1].spaced_after = True
            if "\n" in piece:  # a new line is a new statement
                raw.append(_Tok("break", "\n", match.start(), match.end()))
            continue
        if kind == "num":
            digits = match.group("num").replace(",", "")
            if match.group("glued") or len(digits) > MAX_DIGITS:
                raw.append(_Tok("break", piece, match.start(), match.end(), word=True))
            else:
                raw.append(_Tok("num", piece, match.start(), match.end(), Fraction(digits)))
        elif kind == "op":
            raw.append(_Tok("eq" if piece == "=" else "op", piece, match.start(), match.end()))
        elif kind == "word":
            raw.append(_Tok("word", piece, match.start(), match.end()))
        else:
            raw.append(_Tok("break", piece, match.start(), match.end()))
    return _read_words(raw)


def _operand_end(tok: _Tok | None) -> bool:
    return tok is not None and (tok.kind == "num" or (tok.kind == "op" and tok.text == ")"))


def _operand_start(tok: _Tok | None) -> bool:
    return tok is not None and (tok.kind == "num" or (tok.kind == "op" and tok.text in "(-"))


def _read_words(raw: list[_Tok]) -> list[_Tok]:
    """Words become operators, ``is`` links or breaks (one pass)."""
    out: list[_Tok] = []
    index = 0
    while index < len(raw):
        tok = raw[index]
        if tok.kind != "word":
            out.append(tok)
            index += 1
            continue
        lower = tok.text.lower()
        before = out[-1] if out else None
        after = raw[index + 1] if index + 1 < len(raw) else None
        if lower in ("x", "X") and _operand_end(before) and _operand_start(after):
            out.append(_Tok("op", "*", tok.start, tok.end, spaced_after=tok.spaced_after))
        elif lower in _OPERATOR_WORDS and _operand_start(after):
            out.append(_Tok("op", _OPERATOR_WORDS[lower], tok.start, tok.end, spaced_after=True))
        elif (
            lower in _BY_WORDS
            and after is not None
            and after.kind == "word"
            and after.text.lower() == "by"
            and _operand_end(before)
        ):
            out.append(_Tok("op", _BY_WORDS[lower], tok.start, after.end, spaced_after=True))
            index += 1
        elif lower in _IS_WORDS:
            out.append(_Tok("is", tok.text, tok.start, tok.end, spaced_after=True))
        elif lower == "equal" and after is not None and after.text.lower() == "to":
            out.append(_Tok("is", "equal to", tok.start, after.end, spaced_after=True))
            index += 1
        else:
            out.append(_Tok("break", tok.text, tok.start, tok.end, word=True))
        index += 1
    return out


# -- expressions ----------------------------------------------------------------------------

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "neg": 3}


class _Undefined(Exception):
    """Division by zero inside a side."""


def _apply(op: str, values: list[Fraction]) -> None:
    if op == "neg":
        values.append(-values.pop())
        return
    right, left = values.pop(), values.pop()
    if op == "+":
        values.append(left + right)
    elif op == "-":
        values.append(left - right)
    elif op == "*":
        values.append(left * right)
    else:
        if right == 0:
            raise _Undefined
        values.append(left / right)


def _evaluate(toks: list[_Tok]) -> Fraction | None:
    """The exact value of an expression (shunting-yard, no recursion), ``None`` when it is not
    one. Raises ``_Undefined`` on a division by zero."""
    if not toks or len(toks) > MAX_SIDE_TOKENS:
        return None
    values: list[Fraction] = []
    ops: list[str] = []
    expect_operand = True
    for tok in toks:
        if tok.kind == "num":
            if not expect_operand:
                return None  # "3 4": two numbers without an operator
            values.append(tok.value)  # type: ignore[arg-type]
            expect_operand = False
        elif tok.text == "(":
            if not expect_operand:
                return None  # "5 (3 + 4)": implicit products are not read
            ops.append("(")
        elif tok.text == ")":
            if expect_operand:
                return None
            while ops and ops[-1] != "(":
                _apply(ops.pop(), values)
            if not ops:
                return None
            ops.pop()
        elif expect_operand:
            if tok.text == "-":
                ops.append("neg")
            elif tok.text != "+":  # unary plus changes nothing
                return None
        else:
            while ops and ops[-1] != "(" and _PRECEDENCE[ops[-1]] >= _PRECEDENCE[tok.text]:
                _apply(ops.pop(), values)
            ops.append(tok.text)
            expect_operand = True
    if expect_operand:
        return None
    while ops:
        op = ops.pop()
        if op == "(":
            return None
        _apply(op, values)
    return values[0] if len(values) == 1 else None


def _trim_parentheses(toks: list[_Tok], first: bool) -> list[_Tok]:
    """Drop parentheses that belong to the prose around a side: a trailing ")" or "(", a
    leading "(" left open, and (first side only) a list label such as "1)"."""
    while toks and toks[-1].text == "(":
        toks = toks[:-1]
    depth = 0
    for index, tok in enumerate(toks):
        if tok.text == "(":
            depth += 1
        elif tok.text == ")":
            depth -= 1
            if depth < 0:
                if all(t.text == ")" for t in toks[index:]):
                    toks = toks[:index]
                    break
                if not first:
                    return toks  # left unbalanced: it will not evaluate
                return _trim_parentheses(toks[index + 1 :], first)
    opened = sum(t.text == "(" for t in toks) - sum(t.text == ")" for t in toks)
    while opened > 0 and toks and toks[0].text == "(":
        toks, opened = toks[1:], opened - 1
    return toks


def _has_operator(toks: list[_Tok]) -> bool:
    """A computation: a binary operator between operands (a leading minus alone is a sign)."""
    previous: _Tok | None = None
    for tok in toks:
        if tok.kind == "op" and tok.text in "+-*/" and _operand_end(previous):
            return True
        previous = tok
    return False


def _side_text(text: str, toks: list[_Tok]) -> str:
    return text[toks[0].start : toks[-1].end].strip() if toks else ""


def _segments(toks: list[_Tok]) -> list[tuple[list[_Tok], _Tok | None]]:
    """Maximal runs of arithmetic tokens, each with the break before it."""
    segments: list[tuple[list[_Tok], _Tok | None]] = []
    current: list[_Tok] = []
    before: _Tok | None = None
    for tok in toks:
        if tok.kind == "break":
            if current:
                segments.append((current, before))
            current, before = [], tok
        else:
            current.append(tok)
    if current:
        segments.append((current, before))
    return segments


def _chain_claims(text: str, segment: list[_Tok], before: _Tok | None) -> tuple[list[Claim], int]:
    """The claims of one run of arithmetic tokens, and its unfinished computations."""
    head_broken = False
    first = segment[0]
    if first.kind == "op" and first.text == "-" and first.spaced_after:
        # "- 3 + 4 = 7" after a word continues a formula we cannot read ("x - 3 = 5");
        # at a line start it is a bullet.
        if before is not None and before.word:
            head_broken = True
        else:
            segment = segment[1:]
    elif first.kind in ("eq", "is") or (first.kind == "op" and first.text in "+*/"):
        head_broken = True
    # Split at "=" and "is" links.
    sides: list[list[_Tok]] = [[]]
    links: list[str] = []
    for tok in segment:
        if tok.kind in ("eq", "is"):
            sides.append([])
            links.append(tok.kind)
        else:
            sides[-1].append(tok)
    if not links:
        return [], 0
    values: list[Fraction | str | None] = []  # "undefined" for a division by zero
    operators: list[bool] = []
    for index, side in enumerate(sides):
        side = _trim_parentheses(side, first=index == 0)
        sides[index] = side
        if index == 0 and head_broken:
            values.append(None)
            operators.append(False)
            continue
        try:
            values.append(_evaluate(side))
        except _Undefined:
            values.append("undefined")
        operators.append(_has_operator(side))
    claims: list[Claim] = []
    unfinished = 0
    run: list[int] = []

    def close_run() -> None:
        if len(run) >= 2 and any(operators[i] for i in run):
            evaluated = [values[i] for i in run]
            defined = all(isinstance(v, Fraction) for v in evaluated)
            holds = (
                defined
                and all(
                    _same(values[run[0]], values[i], sides[run[0]], sides[i])  # type: ignore[arg-type]
                    for i in run[1:]
                )
            )
            claims.append(
                Claim(
                    tuple(_side_text(text, sides[i]) for i in run),
                    tuple(v for v in evaluated if isinstance(v, Fraction)),
                    holds,
                )
            )
        run.clear()

    for index in range(len(sides)):
        linked = (
            index > 0
            and values[index] is not None
            and values[index - 1] is not None
            and (links[index - 1] == "eq" or operators[index - 1])
        )
        if not linked:
            # "3 + 4 =" with nothing checkable after it: a computation left without result.
            if (
                index > 0
                and values[index] is None
                and operators[index - 1]
                and values[index - 1] is not None
                and len(run) <= 1
            ):
                unfinished += 1
            close_run()
        if values[index] is not None:
            run.append(index)
    close_run()
    return claims, unfinished


def _same(a: Fraction, b: Fraction, side_a: list[_Tok], side_b: list[_Tok]) -> bool:
    if a == b:
        return True
    # A decimal result rounded to its digits: "10 / 3 = 3.33".
    for value, other, side in ((a, b, side_a), (b, a, side_b)):
        literal = [t for t in side if t.kind == "num"]
        if len(literal) == 1 and "." in literal[0].text and not _has_operator(side):
            digits = len(literal[0].text.split(".", 1)[1])
            if abs(value - other) * 2 * 10**digits <= 1:
                return True
    return False


# -- public ---------------------------------------------------------------------------------


def check_step(text: str) -> StepCheck:
    """Every arithmetic claim of ``text`` checked exactly, and the step's verdict. Never
    raises (an unexpected input is ``no_claim``)."""
    try:
        if not isinstance(text, str):
            return StepCheck("no_claim")
        normal = _normalise(text)
        claims: list[Claim] = []
        unfinished = 0
        for segment, before in _segments(_tokens(normal)):
            found, open_ends = _chain_claims(normal, segment, before)
            claims.extend(found)
            unfinished += open_ends
        if any(not claim.holds for claim in claims):
            verdict: Verdict = "false"
        elif claims and not unfinished:
            verdict = "true"
        else:
            verdict = "no_claim"
        return StepCheck(verdict, tuple(claims), unfinished)
    except Exception:  # the contract: a checker that never fails the caller
        return StepCheck("no_claim")


def step_verdict(text: str) -> Verdict:
    """``true``, ``false`` or ``no_claim`` (see :func:`check_step`)."""
    return check_step(text).verdict


def final_claim_value(text: str) -> Fraction | None:
    """The result of the last claim of ``text`` when it is a bare number ("... = 36."), the
    answer a solution states by ending on an equation; ``None`` otherwise (also when a
    computation is left without its result: the solution did not finish)."""
    check = check_step(text)
    if not check.claims or check.unfinished:
        return None
    last = check.claims[-1].sides[-1]
    body = last.replace(" ", "").replace(",", "")
    if re.fullmatch(r"\(?-?\d+(?:\.\d+)?(?:/\d+)?\)?", body):
        return check.claims[-1].values[-1] if check.claims[-1].values else None
    return None
