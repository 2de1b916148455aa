"""Issue 26 (round two), the input side: data rows, prompt lengths, messages, formats.

Each test reproduces one defect of the issue (numbered as there) through the command line
or the library, on the tiny models, as a new user would meet it.
"""

from __future__ import annotations

import json
from pathlib import Path

from sppd_lib.cli import main
from sppd_lib.tree import read_trees


def _err(capsys) -> str:
    """The error line of the last command (after any progress bars), checked to be a user
    error: no traceback, no "please report it"."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "please report" not in err
    return err.splitlines()[-1] if err else ""


# ---------------------------------------------------------------------------------------
# 4. Duplicate problem ids
# ---------------------------------------------------------------------------------------


def test_4_duplicate_ids_fail_before_any_sampling(tmp_path: Path, capsys) -> None:
    data = tmp_path / "dup.jsonl"
    rows = [f'{{"id": {i}, "question": "{n}+1?", "answer": "{n + 1}"}}' for n, i in
            enumerate(["1", '"x"', '"1"'])]  # fmt: skip
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "trees.jsonl.gz"
    argv = ["sample", "--model", "tiny-llama", "--k", "2", "--max-step-tokens", "4"]
    assert main([*argv, "--dataset", f"dup={data}", "--out", str(out)]) == 2
    assert f"{data}:3: duplicate id '1' (first at {data}:1)" in _err(capsys)
    assert list(tmp_path.iterdir()) == [data]  # nothing sampled, nothing half-written


# ---------------------------------------------------------------------------------------
# 7. Prompt length
# ---------------------------------------------------------------------------------------


def _long_data(tmp_path: Path) -> Path:
    """Two short problems around one whose question is 1 MB."""
    data = tmp_path / "long.jsonl"
    rows = [
        {"id": "a", "question": "1+1?", "answer": "2"},
        {"id": "huge", "question": "1+" * 500_000 + "1?", "answer": "500001"},
        {"id": "b", "question": "2+2?", "answer": "4"},
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return data


def test_7_eval_refuses_an_overlong_prompt_at_load(tmp_path: Path, capsys) -> None:
    data, out = _long_data(tmp_path), tmp_path / "eval.parquet"
    argv = ["eval", "--model", "tiny-llama", "--max-new-tokens", "2", "--out", str(out)]
    assert main([*argv, "--benchmarks", f"long={data}"]) == 2
    err = _err(capsys)
    assert "problem 'long/test/huge' (line 2): its prompt has" in err
    assert "more than max_prompt_tokens=4094 (context 4096 - max_new_tokens 2)" in err
    assert not out.exists()
    # The limit is a setting: a short one refuses even the short problems, naming the key.
    short = tmp_path / "short.jsonl"
    short.write_text('{"id": "a", "question": "1+1?", "answer": "2"}\n')
    assert main([*argv, "--benchmarks", f"short={short}", "--max-prompt-tokens", "5"]) == 2
    assert "'short/test/a' (line 1): its prompt has" in _err(capsys)
    assert main([*argv, "--benchmarks", f"short={short}", "--max-prompt-tokens", "0"]) == 2
    assert "max_prompt_tokens" in _err(capsys)
    assert main([*argv, "--benchmarks", f"short={short}"]) == 0


def test_7_sampling_skips_an_overlong_training_problem(tmp_path: Path, caplog) -> None:
    data, out = _long_data(tmp_path), tmp_path / "trees.jsonl.gz"
    argv = ["sample", "--model", "tiny-llama", "--k", "2", "--max-step-tokens", "4"]
    assert main([*argv, "--dataset", f"long={data}", "--out", str(out)]) == 0
    assert [t.problem.id for t in read_trees(out)] == ["long/train/a", "long/train/b"]
    assert "skipped 1 of 3 problems whose prompt is longer than" in caplog.text
    assert "long/train/huge" in caplog.text
