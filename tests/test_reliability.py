"""Issue 16: nothing a user owns is deleted, no silent mixing, one writer per run, clear errors.

Each test reproduces one defect of the issue (numbered as there) on the tiny models; the
shared ``finished`` fixture is one real smoke run that later tests reopen, extend or lock.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sppd_lib.cli import main
from sppd_lib.config import ConfigError, PairConfig, SamplerConfig, load_run_config, load_yaml
from sppd_lib.data import DataError, load_problems
from sppd_lib.files import LockedError, NotWritableError, RunLock, check_writable
from sppd_lib.loop import run
from sppd_lib.pairs import build_pairs, write_pairs
from sppd_lib.sampler import sample_to_file
from sppd_lib.tree import read_trees, write_trees

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # subprocesses import this checkout


def _err(capsys) -> str:
    """stderr of the last command, checked to be one line without a traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def trees_file(tmp_path_factory) -> Path:
    """Real trees of the tiny model, leaves graded by a seeded coin (tests/run_fixture.py)."""
    import random

    from tests.run_fixture import _grade_leaves, _sample

    trees = _sample(load_problems("arith", "train", limit=3), seed=0)
    _grade_leaves(trees, random.Random(0))
    path = tmp_path_factory.mktemp("trees") / "trees.jsonl.gz"
    write_trees(path, trees)
    return path


@pytest.fixture(scope="module")
def pairs_file(trees_file) -> Path:
    pairs, _ = build_pairs(list(read_trees(trees_file)), PairConfig(threshold=0.0))
    assert len(pairs) > 0
    path = trees_file.with_name("pairs.parquet")
    write_pairs(pairs, path)
    return path


@pytest.fixture(scope="module")
def custom_data(tmp_path_factory) -> Path:
    """A user's JSONL benchmark with a non-ASCII gold answer."""
    path = tmp_path_factory.mktemp("data") / "mine.jsonl"
    rows = [{"question": "What is 3 squared, written as a power?", "answer": "3²"},
            {"question": "What is 2 + 2?", "answer": "4"}]  # fmt: skip
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory, custom_data) -> tuple[Path, list[str]]:
    """A finished smoke run (one benchmark from a user's file), and the order in which its
    files were put in place (every atomic write and the training dir ends in os.replace)."""
    run_dir = tmp_path_factory.mktemp("runs") / "smoke"
    order: list[str] = []
    real_replace = os.replace

    def recording_replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        order.append(Path(dst).relative_to(run_dir).as_posix() if run_dir in Path(dst).parents
                     else str(dst))  # fmt: skip

    os.replace = recording_replace
    try:
        run(load_run_config(SMOKE, [f"eval.benchmarks=[arith, mine={custom_data}]"]), run_dir)
    finally:
        os.replace = real_replace
    return run_dir, order


def _gunzip(path: Path) -> str:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return handle.read()


def _copy(run_dir: Path, to: Path) -> Path:
    return Path(shutil.copytree(run_dir, to))


# ---------------------------------------------------------------------------------------
# 1. `sppd train --out DIR` must never delete DIR
# ---------------------------------------------------------------------------------------


def test_1_train_never_deletes_an_existing_out(tmp_path, pairs_file, capsys) -> None:
    out = tmp_path / "d"
    out.mkdir()
    (out / "notes.txt").write_text("x")
    argv = ["train", "--model", "tiny-llama", "--pairs", str(pairs_file), "--batch-size", "4"]
    assert main([*argv, "--out", str(out)]) == 2
    assert (out / "notes.txt").read_text() == "x"
    assert f"{out} already exists and is not empty" in _err(capsys)
    # A work dir that sppd did not make is not deleted either.
    (tmp_path / "e.partial").mkdir()
    (tmp_path / "e.partial" / "mine.txt").write_text("y")
    assert main([*argv, "--out", str(tmp_path / "e")]) == 2
    assert (tmp_path / "e.partial" / "mine.txt").exists() and "not made by sppd" in _err(capsys)
    # An empty --out is fine: training fills it.
    (tmp_path / "f").mkdir()
    assert main([*argv, "--out", str(tmp_path / "f")]) == 0
    assert (tmp_path / "f" / "model" / "config.json").is_file()
    assert not (tmp_path / "f" / ".sppd-train-work").exists()


# ---------------------------------------------------------------------------------------
# 2. Resuming `sppd sample` must not mix settings
# ---------------------------------------------------------------------------------------


def test_2_sample_refuses_to_resume_under_other_settings(tmp_path, tiny_llama, capsys) -> None:
    from sppd_lib.engines.transformers_engine import TransformersEngine

    model, tokenizer = tiny_llama
    engine = TransformersEngine(model, tokenizer)
    problems = load_problems("arith", "train", limit=4)
    small = {"max_step_tokens": 4, "max_depth": 2, "problems_per_batch": 1}
    first = SamplerConfig(k=6, **small)
    done = tmp_path / "full.jsonl.gz"
    meta = {"model": "tiny-llama"}
    sample_to_file(engine, tokenizer, problems, first, done, progress=False, meta=meta)
    # A run killed after 2 batches: its partial file holds trees 0 and 1.
    out = tmp_path / "trees.jsonl.gz"
    lines = _gunzip(done).splitlines()[:2]
    partial = out.with_name(out.name + ".partial.jsonl")
    partial.write_text("\n".join(lines) + "\n")
    other = SamplerConfig(k=2, seed=5, temperature=0.3, **small)
    with pytest.raises(ConfigError, match=r"k: 6 -> 2.*temperature: 0\.7 -> 0\.3.*seed: 0 -> 5"):
        sample_to_file(engine, tokenizer, problems, other, out, progress=False, meta=meta)
    with pytest.raises(ConfigError, match=r"model: 'tiny-llama' -> 'tiny-qwen2'"):
        sample_to_file(engine, tokenizer, problems, first, out, meta={"model": "tiny-qwen2"})
    with pytest.raises(ConfigError, match="not in the problems asked for"):
        sample_to_file(engine, tokenizer, problems[2:], first, out, progress=False, meta=meta)
    assert partial.read_text().count("\n") == 2  # kept as it was
    # The same settings resume it, to the trees of an uninterrupted run.
    sample_to_file(engine, tokenizer, problems, first, out, progress=False, meta=meta)
    assert _gunzip(out) == _gunzip(done)
    # A finished file is not silently reused under other settings either.
    with pytest.raises(ConfigError, match=r"k: 6 -> 2"):
        sample_to_file(engine, tokenizer, problems, other, out, progress=False, meta=meta)
    # The command line says it in one line, exit 2.
    argv = ["sample", "--model", "tiny-llama", "--limit", "4", "--out", str(out)]
    assert main([*argv, "--k", "2", "--max-step-tokens", "4", "--max-depth", "2"]) == 2
    assert "was sampled with other settings" in _err(capsys)


# ---------------------------------------------------------------------------------------
# 3. A phase's done-marker is written last
# ---------------------------------------------------------------------------------------


def test_3_pairs_marker_is_written_after_the_trl_export(tmp_path, trees_file, monkeypatch) -> None:
    import sppd_lib.pairs as pairs_module

    pairs, _ = build_pairs(list(read_trees(trees_file)), PairConfig(threshold=0.0))
    real = pairs_module.write_parquet_atomic
    written: list[str] = []

    def killed_after_one(frame, path):
        if written:
            raise KeyboardInterrupt  # the kill between the two files
        written.append(Path(path).name)
        return real(frame, path)

    monkeypatch.setattr(pairs_module, "write_parquet_atomic", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        write_pairs(pairs, tmp_path / "pairs.parquet")
    # Without its marker the phase reruns, so the TRL export cannot be lost.
    assert written == ["pairs.trl.parquet"] and not (tmp_path / "pairs.parquet").exists()


def test_3_every_phase_writes_its_marker_last(finished) -> None:
    _, order = finished
    position = {name: order.index(name) for name in order}
    before = {
        "config.yaml": ["inputs.json"],
        "iter_1/pairs.parquet": ["iter_1/pairs.trl.parquet", "iter_1/pairs_summary.json",
                                 "iter_1/trees.jsonl.gz"],
        "iter_1/train/done.json": ["iter_1/train/sppd", "iter_1/train/log.jsonl",
                                   "iter_1/train/pair_log.parquet"],
        "iter_0/eval.parquet": ["iter_0/eval_samples.parquet"],
        "iter_1/eval.parquet": ["iter_1/eval_samples.parquet"],
        "final_model.txt": [name for name in position if name != "final_model.txt"],
    }  # fmt: skip
    for marker, files in before.items():
        for name in files:
            assert position[name] < position[marker], (name, marker)
    # The sampling marker (the trees file) comes before anything of later phases.
    first_trees = order.index("iter_1/trees.jsonl.gz")
    assert first_trees < position["iter_1/train/sppd"] and first_trees < order.index(
        "iter_1/pairs.trl.parquet"
    )


# ---------------------------------------------------------------------------------------
# 4. One writer per run directory
# ---------------------------------------------------------------------------------------


def test_4_a_second_writer_is_refused_and_a_killed_ones_lock_is_taken_over(
    tmp_path, finished, capsys
) -> None:
    run_dir = _copy(finished[0], tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from sppd_lib.files import RunLock; "
         "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(600)",
         str(run_dir)],
        stdout=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        argv = ["run", "--config", str(SMOKE), "--run-dir", str(run_dir)]
        assert main(argv) == 2
        err = _err(capsys)
        assert f"run directory {run_dir} is in use by another sppd process (pid {holder.pid}" in err
        with pytest.raises(LockedError):
            RunLock(run_dir).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: no cleanup runs
        holder.wait()
    assert (run_dir / ".lock").exists()  # left behind by the killed process, and stale
    benchmarks = load_yaml(run_dir / "config.yaml")["eval"]["benchmarks"]
    assert main([*argv, "--set", f"eval.benchmarks={benchmarks}"]) == 0
    assert not (run_dir / ".lock").exists()  # released at the end


def test_4_sample_holds_a_lock_on_its_output(tmp_path, capsys) -> None:
    out = tmp_path / "trees.jsonl.gz"
    with RunLock(tmp_path, "trees file", f".{out.name}.lock"):
        assert main(["sample", "--model", "tiny-llama", "--limit", "1", "--out", str(out)]) == 2
    assert f"trees file {out} is in use by another sppd process" in _err(capsys)


# ---------------------------------------------------------------------------------------
# 5, 6. A failed start writes nothing; every model is checked at start
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("model=not_a_model_at_all", "model: model 'not_a_model_at_all' not found locally"),
        ("eval.prm_model=/no/such/prm", "eval.prm_model: model not found: /no/such/prm"),
        ("pairs.prm_model=not_a_prm", "pairs.prm_model: model 'not_a_prm' not found locally"),
        ("device=tpu", "device must be cpu, cuda, cuda:N, mps or null, not 'tpu'"),
        ("train.reference_model=/no/ref", "train.reference_model: model not found"),
    ],
)
def test_5_6_a_failed_start_writes_nothing(tmp_path, capsys, setting, message) -> None:
    run_dir = tmp_path / "run"
    assert main(["run", "--config", str(SMOKE), "--run-dir", str(run_dir), "--set", setting]) == 2
    assert message in _err(capsys)
    assert not run_dir.exists()


def test_5_cuda_without_a_gpu_fails_at_start(tmp_path, capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    run_dir = tmp_path / "run"
    assert (
        main(["run", "--config", str(SMOKE), "--run-dir", str(run_dir), "--set", "device=cuda"])
        == 2
    )
    assert "no CUDA device is visible here" in _err(capsys) and not run_dir.exists()


def test_5_a_directory_poisoned_before_the_fix_is_taken_over(tmp_path) -> None:
    from sppd_lib.loop import start_run_dir as _start_run_dir

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "iter_0").mkdir()  # made, but nothing in it
    (run_dir / "config.yaml").write_text("model: not_a_model_at_all\n")
    config = load_run_config(SMOKE)
    _start_run_dir(config, run_dir)  # no artifact: the new config replaces the old one
    assert load_yaml(run_dir / "config.yaml")["model"] == "tiny-llama"


def test_6_pairs_checks_the_prm_before_reading_trees(tmp_path, trees_file, capsys) -> None:
    out = tmp_path / "pairs.parquet"
    argv = ["pairs", "--trees", str(trees_file), "--out", str(out), "--value", "prm"]
    assert main([*argv, "--prm-model", "no_such_prm"]) == 2
    assert "pairs.prm_model: model 'no_such_prm' not found locally" in _err(capsys)
    assert not out.exists()


# ---------------------------------------------------------------------------------------
# 7. Offline by default
# ---------------------------------------------------------------------------------------


def test_7_unknown_model_fails_offline_at_once(capsys, monkeypatch) -> None:
    monkeypatch.delenv("SPPD_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    argv = ["eval", "--model", "not_a_model_at_all", "--benchmarks", "arith", "--limit", "1"]
    assert main(argv) == 2
    err = _err(capsys)
    assert "model 'not_a_model_at_all' not found locally: it is not a local directory" in err
    assert "--allow-download" in err and len(err.splitlines()) == 1
    # The opt-in: the id is passed on to the hub (here a data error comes first).
    monkeypatch.setenv("SPPD_ALLOW_DOWNLOAD", "0")
    assert main(["eval", "--model", "x/y", "--benchmarks", "nope", "--allow-download"]) == 2
    assert os.environ["SPPD_ALLOW_DOWNLOAD"] == "1" and "unknown data set 'nope'" in _err(capsys)


# ---------------------------------------------------------------------------------------
# 8. `sppd eval --config run.yaml` evaluates the config's model
# ---------------------------------------------------------------------------------------


def test_8_eval_takes_the_model_of_its_config(tmp_path, capsys) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        "model: /no/such/model_dir\niterations: 1\neval:\n  benchmarks: [arith]\n  limit: 1\n"
    )
    assert main(["eval", "--config", str(config)]) == 2
    assert "/no/such/model_dir" in _err(capsys)
    config.write_text(config.read_text().replace("/no/such/model_dir", "tiny-llama"))
    assert main(["eval", "--config", str(config), "--max-new-tokens", "2"]) == 0
    assert "model: tiny-llama" in capsys.readouterr().out
    # A run config is checked whole, so a typo in it is not ignored.
    config.write_text(config.read_text() + "iteratons: 2\n")
    assert main(["eval", "--config", str(config)]) == 2
    assert "unknown config key iteratons" in _err(capsys)


# ---------------------------------------------------------------------------------------
# 9. Range checks, empty configs, duplicate keys
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sampler.temperature=-1", "sampler.temperature must be > 0"),
        ("sampler.temperature=0", "sampler.temperature must be > 0"),
        ("sampler.top_p=0", r"sampler.top_p must be in \(0, 1\]"),
        ("pairs.threshold=1.5", r"pairs.threshold must be in \[0, 1\]"),
        ("pairs.bellman_discount=2", r"pairs.bellman_discount must be in \[0, 1\]"),
        ("pairs.min_leaves=-1", "pairs.min_leaves must be >= 0"),
        ("sampler.problems_per_batch=0", "sampler.problems_per_batch must be >= 1"),
        ("data.mix={arith: 0}", "data.mix.arith must be a share > 0"),
        ("eval.benchmarks=[]", "eval.benchmarks must be a non-empty list"),
        ("device=tpu", "device must be cpu, cuda"),
        ("data.prompts_per_iteration=0", "data.prompts_per_iteration must be >= 1"),
        ("eval.limits={arith: -2}", "limits.arith must be an integer >= 0"),
        ("train.warmup_ratio=1.5", r"train.warmup_ratio must be in \[0, 1\)"),
        ("sft_per_problem=0", "sft_per_problem must be >= 1"),
        ("eval.benchmarks=[a=x.jsonl, a=y.jsonl]", "names 'a' twice"),
    ],
)
def test_9_out_of_range_values_are_named(override, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_run_config(SMOKE, [override])


def test_9_empty_config_and_duplicate_keys_are_refused(tmp_path, capsys) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    assert main(["run", "--config", str(empty), "--run-dir", str(tmp_path / "r")]) == 2
    assert f"{empty} is empty" in _err(capsys) and not (tmp_path / "r").exists()
    twice = tmp_path / "twice.yaml"
    twice.write_text("model: tiny-llama\nsampler:\n  k: 4\n  c: 2\n  k: 8\n")
    with pytest.raises(
        ConfigError, match=r"twice.yaml: line 5: duplicate key 'k' \(first on line 3\)"
    ):
        load_run_config(twice)


# ---------------------------------------------------------------------------------------
# 10. One-line errors instead of tracebacks
# ---------------------------------------------------------------------------------------


def test_10_broken_trees_files_are_one_line_errors(tmp_path, trees_file, capsys) -> None:
    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(trees_file.read_bytes()[:300])
    not_gzip = tmp_path / "plain.jsonl.gz"
    not_gzip.write_text('{"a": 1}\n')
    empty = tmp_path / "empty.jsonl.gz"
    write_trees(empty, [])
    out = str(tmp_path / "pairs.parquet")
    for path, message in ((truncated, "not a complete gzip trees file"),
                          (not_gzip, "not a complete gzip trees file"),
                          (empty, "holds no trees")):  # fmt: skip
        assert main(["pairs", "--trees", str(path), "--out", out]) == 2
        err = _err(capsys)
        assert str(path) in err and message in err and len(err.splitlines()) == 1
    assert main(["merge-trees", str(trees_file), str(truncated), "--out", out + ".gz"]) == 2
    assert "not a complete gzip trees file" in _err(capsys)
    not_parquet = tmp_path / "pairs.txt"
    not_parquet.write_text("prompt,chosen\n")
    argv = ["train", "--model", "tiny-llama", "--pairs", str(not_parquet)]
    assert main([*argv, "--out", str(tmp_path / "t")]) == 2
    assert f"{not_parquet} is not a pairs parquet file" in _err(capsys)


def test_10_unexpected_errors_are_one_line_and_traceback_with_v(capsys, monkeypatch) -> None:
    import sppd_lib.cli.phase_commands as cli

    def broken(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "_run_eval", broken)
    assert main(["eval"]) == 1
    assert "sppd eval: unexpected error: RuntimeError: boom (rerun with -v" in _err(capsys)
    assert main(["eval", "-v"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_10_a_run_dir_under_a_file_fails_at_start(tmp_path, capsys) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("")
    assert main(["run", "--config", str(SMOKE), "--run-dir", str(blocker / "run")]) == 2
    assert f"{blocker} is a file, not a directory" in _err(capsys)


@pytest.mark.slow
def test_10_ctrl_c_says_how_to_resume(tmp_path) -> None:
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "sppd_lib.cli", "run", "--config", str(SMOKE),
               "--run-dir", str(run_dir), "--set", "sampler.problems_per_batch=1"]  # fmt: skip
    # Its own process group, signalled whole: what Ctrl-C in a terminal does. SIGINT is reset
    # to its default: a shell without job control starts background jobs (`pytest &`) with
    # SIGINT ignored, the children inherit that, and Python then installs no handler.
    process = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    partial = run_dir / "iter_1" / "trees.jsonl.gz.partial.jsonl"
    while not (partial.exists() and partial.read_text().count("\n") >= 1):
        assert process.poll() is None, process.stderr.read()[-2000:]
    os.killpg(process.pid, signal.SIGINT)
    err = process.communicate()[1]
    assert process.returncode == 130, err[-2000:]
    assert "interrupted; finished phases are kept: rerun the same command to resume" in err
    assert "Traceback" not in err and not (run_dir / ".lock").exists()


# ---------------------------------------------------------------------------------------
# 11. Output paths are checked before the work
# ---------------------------------------------------------------------------------------


def test_11_unwritable_outputs_fail_before_any_work(tmp_path, capsys, monkeypatch) -> None:
    import sppd_lib.models

    blocker = tmp_path / "file.txt"
    blocker.write_text("")
    loaded = []
    monkeypatch.setattr(sppd_lib.models, "load_model", lambda *a, **k: loaded.append(a))
    argv = ["eval", "--model", "tiny-llama", "--benchmarks", "arith", "--limit", "1"]
    assert main([*argv, "--out", str(blocker / "eval.parquet")]) == 2
    assert f"--out: cannot write {blocker / 'eval.parquet'}" in _err(capsys)
    assert main([*argv, "--out", str(tmp_path)]) == 2  # a directory is not a file name
    assert "is a directory; give a file name" in _err(capsys)
    assert loaded == []  # failed before the model was loaded
    with pytest.raises(NotWritableError, match="is a file, not a directory"):
        check_writable(blocker / "a" / "b.parquet")
    assert check_writable(tmp_path / "new" / "deeper" / "x.parquet")
    assert not (tmp_path / "new").exists()  # the check creates nothing


# ---------------------------------------------------------------------------------------
# 12. Custom JSONL data on the command line
# ---------------------------------------------------------------------------------------


def test_12_eval_and_sample_take_a_jsonl_file(tmp_path, custom_data, capsys) -> None:
    out = tmp_path / "eval.parquet"
    argv = ["eval", "--model", "tiny-llama", "--max-new-tokens", "2", "--out", str(out)]
    assert main([*argv, "--benchmarks", "arith", f"mine={custom_data}", "--limit", "2"]) == 0
    results = pd.read_parquet(out)
    assert set(results["benchmark"]) == {"arith", "mine"}
    assert "3²" in set(results["gold"])  # kept exactly, not replaced by U+FFFD
    assert main([*argv, "--benchmarks", str(custom_data)]) == 0  # FILE.jsonl: named by its stem
    assert set(pd.read_parquet(out)["benchmark"]) == {"mine"}
    trees = tmp_path / "trees.jsonl.gz"
    sample = ["sample", "--model", "tiny-llama", "--k", "2", "--max-step-tokens", "4"]
    assert main([*sample, "--dataset", f"mine={custom_data}", "--out", str(trees)]) == 0
    assert [t.problem.answer for t in read_trees(trees)] == ["3²", "4"]


def test_12_bad_data_files_are_named_with_the_line(tmp_path, capsys) -> None:
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"question": "q", "answer": "1"}\n{"question": "q", "answer": "3\xb2"}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    argv = ["eval", "--model", "tiny-llama", "--benchmarks"]
    assert main([*argv, f"latin={latin}"]) == 2
    assert f"{latin}:2: not UTF-8 (byte 0xb2 at column 31)" in _err(capsys)
    assert main([*argv, str(empty)]) == 2
    assert f"{empty} holds no 'empty' problems" in _err(capsys)
    assert main([*argv, str(tmp_path / "missing.jsonl")]) == 2
    assert "data file not found" in _err(capsys)
    with pytest.raises(DataError, match="not UTF-8"):
        load_problems("latin", path=latin)
    # A run names the key and fails at start.
    run_dir = tmp_path / "run"
    setting = f"eval.benchmarks=[arith, mine={tmp_path / 'missing.jsonl'}]"
    assert main(["run", "--config", str(SMOKE), "--run-dir", str(run_dir), "--set", setting]) == 2
    assert "eval.benchmarks: data file not found" in _err(capsys) and not run_dir.exists()


def test_12_a_run_refuses_a_changed_data_file(tmp_path, finished, custom_data) -> None:
    run_dir = _copy(finished[0], tmp_path / "run")
    original = custom_data.read_bytes()
    config = load_yaml(run_dir / "config.yaml")
    inputs = json.loads((run_dir / "inputs.json").read_text())
    spec = f"mine={custom_data}"
    assert spec in config["eval"]["benchmarks"] and spec in inputs["data_files"]
    custom_data.write_bytes(original + b'{"question": "1+1?", "answer": "2"}\n')
    try:
        with pytest.raises(ConfigError, match="changed since"):
            run(load_run_config(SMOKE, [f"eval.benchmarks=[arith, {spec}]"]), run_dir)
    finally:
        custom_data.write_bytes(original)


# ---------------------------------------------------------------------------------------
# 13. Reports beside the run directory
# ---------------------------------------------------------------------------------------


def test_13_reports_go_beside_their_run_dir(tmp_path, finished, monkeypatch, capsys) -> None:
    import sppd_lib.report as report
    from sppd_lib.report import run_report_dir  # plotly: not in the vLLM virtualenv

    assert run_report_dir("runs/demo") == Path(os.path.abspath("runs/reports/demo"))
    assert run_report_dir("runs/demo", "elsewhere/r") == Path("elsewhere/r")
    rendered = []

    def fake_render(run_dir, out_dir=None):
        rendered.append(Path(out_dir))
        return report.Report(out_dir=Path(out_dir), index=Path(out_dir) / "index.html")

    monkeypatch.setattr(report, "render_run_report", fake_render)
    benchmarks = load_yaml(finished[0] / "config.yaml")["eval"]["benchmarks"]
    for name in ("a", "b"):  # the same config in two run dirs
        run_dir = _copy(finished[0], tmp_path / "runs" / name)
        argv = ["run", "--config", str(SMOKE), "--run-dir", str(run_dir), "--set", "report=true",
                "--set", f"eval.benchmarks={benchmarks}"]  # fmt: skip
        assert main(argv) == 0
    assert rendered == [tmp_path / "runs" / "reports" / "a", tmp_path / "runs" / "reports" / "b"]
    # report_dir overrides it; an unwritable one fails before the run, not after it.
    blocker = tmp_path / "file.txt"
    blocker.write_text("")
    argv += ["--set", f"report_dir={blocker / 'r'}"]
    assert main(argv) == 2
    assert "report_dir: cannot write" in _err(capsys)
    assert main([*argv[:-1], f"report_dir={tmp_path / 'mine'}"]) == 0
    assert rendered[-1] == tmp_path / "mine"


# ---------------------------------------------------------------------------------------
# 14. Extending a finished run; reopening one on read-only storage
# ---------------------------------------------------------------------------------------


def test_14_a_finished_run_can_be_extended(tmp_path, finished) -> None:
    run_dir = _copy(finished[0], tmp_path / "run")
    benchmarks = load_yaml(run_dir / "config.yaml")["eval"]["benchmarks"]
    settings = [f"eval.benchmarks={benchmarks}"]
    before = (run_dir / "iter_1" / "eval.parquet").stat().st_mtime_ns
    summary = run(load_run_config(SMOKE, [*settings, "iterations=2"]), run_dir)
    assert set(summary["iteration"]) == {0, 1, 2}
    assert (run_dir / "iter_1" / "eval.parquet").stat().st_mtime_ns == before  # kept
    assert load_yaml(run_dir / "config.yaml")["iterations"] == 2
    with pytest.raises(
        ConfigError, match=r"changed: iterations: 2 -> 1\) \(iterations may only grow"
    ):
        run(load_run_config(SMOKE, [*settings, "iterations=1"]), run_dir)
    with pytest.raises(ConfigError, match=r"changed: iterations: 2 -> 3, sampler\.k: \d+ -> 3"):
        run(load_run_config(SMOKE, [*settings, "iterations=3", "sampler.k=3"]), run_dir)


def _read_only_command(run_dir: Path, command: list[str]) -> list[str] | None:
    """``command`` run with ``run_dir`` read-only: a read-only bind mount for root (whom
    permissions do not stop), else plain permissions; ``None`` where neither works."""
    if os.geteuid() != 0:
        return command
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        return None
    mount = (f'mount --bind "{run_dir}" "{run_dir}" && '
             f'mount -o remount,bind,ro "{run_dir}" && exec "$@"')  # fmt: skip
    return ["unshare", "-m", "sh", "-c", mount, "sh", *command]


def test_14_a_finished_run_on_read_only_storage_reopens(tmp_path, finished) -> None:
    run_dir = _copy(finished[0], tmp_path / "run")
    benchmarks = load_yaml(run_dir / "config.yaml")["eval"]["benchmarks"]
    base = [sys.executable, "-m", "sppd_lib.cli", "run", "--config", str(SMOKE),
            "--run-dir", str(run_dir), "--set", f"eval.benchmarks={benchmarks}"]  # fmt: skip
    reopen = _read_only_command(run_dir, base)
    if reopen is None:
        pytest.skip("cannot make a read-only directory here (root without mount namespaces)")
    listing = sorted((str(p), p.stat().st_mtime_ns) for p in run_dir.rglob("*"))
    if os.geteuid() != 0:
        for path in [run_dir, *run_dir.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)
    try:
        done = subprocess.run(reopen, capture_output=True, text=True, env=ENV)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "pass@1 by iteration" in done.stdout
        # More work cannot be done there: a clear refusal, not a PermissionError.
        grow = _read_only_command(run_dir, [*base, "--set", "iterations=2"])
        refused = subprocess.run(grow, capture_output=True, text=True, env=ENV)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert "is not writable and its run is not finished" in refused.stderr
    finally:
        if os.geteuid() != 0:
            for path in [run_dir, *run_dir.rglob("*")]:
                path.chmod(path.stat().st_mode | 0o200)
    assert sorted((str(p), p.stat().st_mtime_ns) for p in run_dir.rglob("*")) == listing
