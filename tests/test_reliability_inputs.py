"""Issue 26 (round two), the input side: data rows, prompt lengths, messages, formats.

Each test reproduces one defect of the issue (numbered as there) through the command line
or the library, on the tiny models, as a new user would meet it.
"""

from __future__ import annotations

from pathlib import Path

from sppd_lib.cli import main


def _err(capsys) -> str:
    """stderr of the last command, checked to be one line without a traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "please report" not in err
    assert len(err.splitlines()) == 1, err
    return err


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
