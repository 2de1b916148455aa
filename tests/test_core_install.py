"""A core install (``pip install -e .``, no extras) runs the loop: the notebook stack (plotly,
papermill, Jupyter) is needed only for reports and notebooks. Each test runs ``sppd`` in a
child process whose imports of those packages fail (``tests/without_notebooks.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
HIDE = ROOT / "tests" / "without_notebooks.py"

#: Every module a core install runs (all but the reports and notebook helpers).
CORE_MODULES = sorted(
    "sppd_lib." + ".".join(path.relative_to(ROOT / "sppd_lib").with_suffix("").parts)
    for path in (ROOT / "sppd_lib").rglob("*.py")
    if path.parts[len(ROOT.parts) + 1] not in ("viz", "report.py", "viz_study.py")
    and path.name not in ("__main__.py", "__init__.py")
)


def without_notebooks(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(HIDE), *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_core_modules_import_without_the_notebook_stack() -> None:
    assert "sppd_lib.study" in CORE_MODULES and "sppd_lib.cli.run_commands" in CORE_MODULES
    hidden = without_notebooks("--import", "plotly")
    assert hidden.returncode != 0 and "No module named 'plotly'" in hidden.stderr
    done = without_notebooks("--import", *CORE_MODULES)
    assert done.returncode == 0, done.stderr[-2000:]


def test_reports_name_the_missing_extra(tmp_path) -> None:
    done = without_notebooks("report", "--run-dir", str(tmp_path))
    assert done.returncode == 2
    assert "notebooks extra" in done.stderr and "plotly" in done.stderr
    config = ROOT / "configs" / "smoke.yaml"
    run_dir = tmp_path / "run"
    done = without_notebooks("run", "--config", str(config), "--run-dir", str(run_dir),
                             "--set", "report=true")  # fmt: skip
    assert done.returncode == 2 and "report: false" in done.stderr
    assert not run_dir.exists()  # refused before any work


def test_smoke_loop_runs_without_the_notebook_stack(tmp_path) -> None:
    run_dir = tmp_path / "smoke"
    config = ROOT / "configs" / "smoke.yaml"  # report: false
    done = without_notebooks("run", "--config", str(config), "--run-dir", str(run_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = pd.read_parquet(run_dir / "summary.parquet")
    assert sorted(summary["iteration"].unique()) == [0, 1]
    assert (run_dir / "iter_1" / "pairs.parquet").is_file()
