"""Issue 26 (round two), the input side: data rows, prompt lengths, messages, formats.

Each test reproduces one defect of the issue (numbered as there) through the command line
or the library, on the tiny models, as a new user would meet it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sppd_lib.cli import main
from sppd_lib.tree import read_trees

ROOT = Path(__file__).resolve().parents[1]


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


# ---------------------------------------------------------------------------------------
# 8. Messages
# ---------------------------------------------------------------------------------------


def test_8_a_full_disk_names_the_file_and_says_rerun(tmp_path: Path, capsys, monkeypatch) -> None:
    import pyarrow.parquet as pq

    def to_full_disk(table, where, **options) -> None:  # the kernel's own ENOSPC
        with open("/dev/full", "wb") as device:
            device.write(b"x" * 1_000_000)

    monkeypatch.setattr(pq, "write_table", to_full_disk)
    out = tmp_path / "eval.parquet"
    argv = ["eval", "--model", "tiny-llama", "--benchmarks", "arith", "--limit", "1"]
    assert main([*argv, "--max-new-tokens", "2", "--out", str(out)]) == 2
    err = _err(capsys)
    assert f"no space left on device while writing {out}: free some space and rerun" in err
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))


def test_8_a_full_disk_while_saving_a_model_is_a_user_error(tmp_path: Path, monkeypatch) -> None:
    import transformers.modeling_utils
    from safetensors import SafetensorError

    from sppd_lib.files import DiskFullError
    from sppd_lib.models import _save_atomically, build_tiny_model

    def full(*args, **kwargs) -> None:  # what safetensors raises on ENOSPC
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
            'space left on device" })'
        )

    model, tokenizer = build_tiny_model("llama", seed=0)
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full)
    target = tmp_path / "model"
    with pytest.raises(DiskFullError, match=rf"while writing {target}: free some space"):
        _save_atomically(model, tokenizer, target, source="test")
    assert list(tmp_path.iterdir()) == []  # the staging directory is gone


def test_8_damaged_artifacts_name_the_file_and_the_fix(tmp_path: Path, capsys) -> None:
    from sppd_lib.data import DataError
    from sppd_lib.models import ModelError, build_tiny_model, convert_gguf, load_model
    from sppd_lib.rundir import PhaseDir, read_json

    phase = PhaseDir(tmp_path / "iter_1")
    phase.path.mkdir()
    phase.eval.write_bytes(b"PAR1 truncated")
    with pytest.raises(DataError, match=rf"{phase.eval} is damaged .*delete it and rerun"):
        phase.read_eval()
    phase.arm_record.write_text('{"arm": "a", "see')
    with pytest.raises(DataError, match=rf"{phase.arm_record} is damaged \(not valid JSON"):
        read_json(phase.arm_record)
    model, tokenizer = build_tiny_model("llama", seed=0)
    saved = tmp_path / "model"
    model.save_pretrained(saved)
    tokenizer.save_pretrained(saved)
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelError, match=rf"\({weights}\) are damaged"):
        load_model(saved, device="cpu")
    assert main(["eval", "--model", str(saved), "--benchmarks", "arith", "--limit", "1"]) == 2
    assert f"({weights}) are damaged" in _err(capsys)
    gguf = tmp_path / "cut.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 40)
    with pytest.raises(ModelError, match=rf"{gguf} could not be read as a GGUF model.*truncated"):
        convert_gguf(gguf)


def test_8_a_study_arm_without_its_eval_says_rerun_the_study(tmp_path: Path) -> None:
    import shutil

    from sppd_lib.config import load_study_config, resolve_arms
    from sppd_lib.data import DataError
    from sppd_lib.rundir import StudyDir, write_json
    from sppd_lib.study_results import load_study

    study = StudyDir(tmp_path / "study")
    study.path.mkdir()
    shutil.copy(ROOT / "configs" / "study_smoke.yaml", study.config)
    config = load_study_config(study.config)
    arm = resolve_arms(config)[0].name
    arm_dir = study.arm(arm, config.seeds[0])
    arm_dir.path.mkdir(parents=True)
    write_json(arm_dir.arm_record, {"arm": arm})
    with pytest.raises(DataError, match=rf"arm '{arm}', seed {config.seeds[0]} .*rerun the study"):
        load_study(study.path)


def test_8_set_errors_name_the_set_value(tmp_path: Path) -> None:
    from sppd_lib.config import ConfigError, load_run_config

    smoke = ROOT / "configs" / "smoke.yaml"
    with pytest.raises(ConfigError, match=r"^--set sampler\.k=0: sampler\.k must be >= 1"):
        load_run_config(smoke, ["iterations=1", "sampler.k=0"])
    with pytest.raises(ConfigError, match=r"^--set sampler\.nope=1: .*nope"):
        load_run_config(smoke, ["sampler.nope=1"])
    broken = tmp_path / "broken.yaml"
    broken.write_text((smoke.read_text()) + "\nsampler:\n  k: 0\n")
    with pytest.raises(ConfigError, match=rf"^{broken}: "):
        load_run_config(broken, ["iterations=1"])


def test_8_yaml_errors_are_one_line(tmp_path: Path, capsys) -> None:
    from sppd_lib.config import ConfigError, load_yaml

    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\nb: [1, 2\nc: 3\n")
    with pytest.raises(ConfigError) as caught:
        load_yaml(bad)
    assert str(caught.value) == (
        f"{bad}:3:2: invalid YAML: expected ',' or ']', but got ':' (while parsing a flow sequence)"
    )
    assert main(["run", "--config", str(bad), "--run-dir", str(tmp_path / "run")]) == 2
    assert _err(capsys) == f"sppd run: error: {caught.value}"


def test_8_a_resume_mismatch_names_old_and_new_values(tmp_path: Path) -> None:
    from sppd_lib.config import ConfigError
    from sppd_lib.rundir import RunDir

    run = RunDir(tmp_path / "run")
    old = {"iterations": 1, "sampler": {"k": 16, "c": 2}, "model": "tiny-llama"}
    run.start(old, {})
    (run.path / "iter_1").mkdir()
    (run.path / "iter_1" / "trees.jsonl.gz").write_bytes(b"x")
    new = {"iterations": 1, "sampler": {"k": 8, "c": 2}, "model": "tiny-qwen2"}
    with pytest.raises(
        ConfigError, match=r'model: "tiny-llama" -> "tiny-qwen2", sampler\.k: 16 -> 8'
    ):
        run.start(new, {})


# ---------------------------------------------------------------------------------------
# 10. Data formats
# ---------------------------------------------------------------------------------------


def test_10_a_jsonl_with_a_bom_is_read_by_eval(tmp_path: Path, capsys) -> None:
    import pandas as pd

    data = tmp_path / "bom.jsonl"
    data.write_bytes(b'\xef\xbb\xbf{"id": "a", "question": "1+1?", "answer": "2"}\r\n')
    out = tmp_path / "eval.parquet"
    argv = ["eval", "--model", "tiny-llama", "--max-new-tokens", "2", "--out", str(out)]
    assert main([*argv, "--benchmarks", f"bom={data}"]) == 0
    assert list(pd.read_parquet(out)["problem_id"]) == ["bom/test/a"]


def test_10_the_yaml_merge_key_is_accepted(tmp_path: Path) -> None:
    from sppd_lib.config import ConfigError, load_run_config, load_yaml

    config = tmp_path / "merge.yaml"
    config.write_text("sampler:\n  <<: {k: 3, c: 2}\n  c: 4\n")
    assert load_yaml(config)["sampler"] == {"k": 3, "c": 4}  # its own keys win
    loaded = load_run_config(config)
    assert (loaded.sampler.k, loaded.sampler.c) == (3, 4)
    config.write_text("sampler:\n  <<: {k: 3, c: 2}\n  c: 4\n  c: 5\n")
    with pytest.raises(ConfigError, match="duplicate key 'c'"):
        load_yaml(config)  # an own key given twice is still refused


def test_10_a_running_study_is_marked_in_progress(tmp_path: Path) -> None:
    import os

    from sppd_lib.files import RunLock, lock_holder
    from sppd_lib.report import study_progress_note

    study = tmp_path / "study"
    assert lock_holder(study) is None and study_progress_note(study) == ""
    with RunLock(study, f"study directory {study}"):
        assert lock_holder(study)["pid"] == os.getpid()
        note = study_progress_note(study)
        assert "In progress" in note and f"pid {os.getpid()}" in note
    assert study_progress_note(study) == ""  # finished (or killed: the kernel drops the lock)
    (study / ".lock").write_text('{"pid": 1}')  # a stale file of a killed study
    assert lock_holder(study) is None
