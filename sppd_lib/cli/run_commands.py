"""The subcommands over whole runs: ``sppd run`` (the loop), ``study`` (the margin study),
``report`` and ``sweep`` (notebooks to HTML)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

from sppd_lib.cli.common import set_flag
from sppd_lib.config import (
    ConfigError,
    RunConfig,
    StudyConfig,
    add_config_flags,
    flag_overrides,
    load_run_config,
    load_study_config,
)

__all__ = ["add_report", "add_run", "add_study", "add_sweep"]

KEEP_NOTEBOOKS_HELP = "also keep the executed .ipynb beside each page (about 5 MB each)"

#: What reports need beyond the core install (the ``notebooks`` extra); the loop needs none.
REPORT_PACKAGES = ("plotly", "papermill", "nbconvert", "nbformat", "jupyter_client", "ipykernel")


def check_report_packages(what: str) -> None:
    """Raise :class:`ConfigError` naming the missing packages when the ``notebooks`` extra is
    not installed, so ``what`` (a report) fails at its start, not after a whole run."""
    missing = []
    for name in REPORT_PACKAGES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ImportError:  # a parent package that is itself missing
            found = False
        if not found:
            missing.append(name)
    if missing:
        raise ConfigError(
            f"{what} needs the notebooks extra (missing: {', '.join(missing)}): "
            "pip install -e '.[notebooks]'"
        )


def add_report(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="HTML report of a run (or a comparison of runs)",
        description=(
            "Execute the notebooks of notebooks/ (papermill) against a run directory and "
            "export them as offline HTML with an index.html: the run's report_dir, else "
            "<run_dir>/../reports/<run_dir name>/ by default. "
            "--compare draws several runs side by side (reports/compare/ by default); "
            "--study-dir renders a margin study (<study_dir>/../reports/<study name>/)."
        ),
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--run-dir", type=Path, help="run directory (runs/<run_id>)")
    target.add_argument("--study-dir", type=Path, help="study directory (studies/<study_id>)")
    target.add_argument("--compare", type=Path, nargs="+", help="run directories to compare")
    parser.add_argument("--out", type=Path, default=None, help="output directory")
    parser.add_argument("--metric", default="pass@1", help="metric of the --compare figure")
    parser.add_argument("--keep-notebooks", action="store_true", help=KEEP_NOTEBOOKS_HELP)
    parser.set_defaults(run=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    check_report_packages("sppd report")
    from sppd_lib.report import (
        ReportError,
        render_compare_report,
        render_run_report,
        render_study_report,
    )

    if args.out is not None:
        from sppd_lib.files import check_writable

        check_writable(args.out, directory=True)
    try:
        keep = args.keep_notebooks
        if args.compare:
            report = render_compare_report(args.compare, args.out, args.metric, keep)
        elif args.study_dir:
            report = render_study_report(args.study_dir, args.out, keep)
        else:
            report = render_run_report(args.run_dir, args.out, keep_notebooks=keep)
    except ReportError as exc:
        print(f"sppd report: error: {exc}", file=sys.stderr)
        return 1
    print(f"report written to {report.index} ({report.seconds:.0f} s)")
    return 0


def add_sweep(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="execute a notebook over a grid of parameters",
        description=(
            "Execute one notebook (a path, or a name in notebooks/) once per combination of "
            "--param values, each as .ipynb and offline .html, with an index.html."
        ),
    )
    parser.add_argument("--notebook", required=True, help="notebook path or name (margins)")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a parameter and its values (repeatable; values read as YAML)",
    )
    parser.add_argument("--out", type=Path, default=Path("reports/sweep"), help="output dir")
    parser.add_argument("--keep-notebooks", action="store_true", help=KEEP_NOTEBOOKS_HELP)
    parser.set_defaults(run=_run_sweep)


def _run_sweep(args: argparse.Namespace) -> int:
    check_report_packages("sppd sweep")
    from sppd_lib.report import ReportError, parse_grid, sweep

    try:
        grid = parse_grid(args.param)
        report = sweep(args.notebook, grid, args.out, keep_notebooks=args.keep_notebooks)
    except ReportError as exc:
        print(f"sppd sweep: error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(report.html)} notebooks written, index: {report.index}")
    return 0


def add_run(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="the whole SPPD self-training loop (sample, values, pairs, train, eval; repeat)",
        description=(
            "Run the self-training loop of a run config (configs/demo.yaml, configs/smoke.yaml, "
            "configs/paper_qwen2.5_7b.yaml). Every phase writes its artifact into "
            "runs/<run_id>/iter_<k>/; rerunning the same command resumes after the last "
            "finished phase. Every field of sppd_lib.config.RunConfig (and of its sections) "
            "can be overridden with --section.field (e.g. --sampler.k 16) or --set "
            "section.key=value; order: defaults < --config < --set < explicit flags."
        ),
    )
    parser.add_argument("--config", type=Path, required=True, help="run config (YAML)")
    parser.add_argument("--run-dir", type=Path, default=None, help="default: runs/<run_id>")
    set_flag(parser, "--set sampler.k=16 --set iterations=3")
    add_config_flags(parser, RunConfig, sections=True)
    parser.set_defaults(run=_run_run)


def _run_run(args: argparse.Namespace) -> int:
    from sppd_lib.loop import run
    from sppd_lib.metrics import accuracy_by_iteration, gain_headline
    from sppd_lib.rundir import RunDir, run_report_dir

    config = load_run_config(args.config, [*args.set, *flag_overrides(args, RunConfig)])
    run_dir = args.run_dir or Path("runs") / config.run_id
    report_dir = run_report_dir(run_dir, config.report_dir)
    if config.report:  # a report that cannot be written should fail now, not after the run
        check_report_packages("report: true (or set report: false)")
        from sppd_lib.report import RUN_NOTEBOOKS, check_report_dir

        try:
            check_report_dir(report_dir, list(RUN_NOTEBOOKS))
        except OSError as exc:
            raise ConfigError(f"report_dir: {exc} (or set report_dir, or report: false)") from None
    started = time.perf_counter()
    summary = run(config, run_dir)
    print(f"\nrun {run_dir} finished in {(time.perf_counter() - started) / 60:.1f} min")
    for metric in dict.fromkeys(summary["metric"]):
        table = accuracy_by_iteration(summary, metric)
        print(f"\n{metric} by iteration:\n" + table.to_string(float_format=lambda x: f"{x:.3f}"))
    change = RunDir(run_dir).change_since_start()
    if len(change):
        print(
            f"\npass@1 change from iteration 0 to {change['iteration'].iloc[0]}, problem by problem"
            " (gained: wrong -> right, lost: right -> wrong; p: exact McNemar test):\n"
            + change.drop(columns="iteration").to_string(
                index=False, float_format=lambda x: f"{x:.3f}"
            )
        )
    _print_outputs(RunDir(run_dir))
    if config.report:
        from sppd_lib.report import ReportError, render_run_report

        try:
            written = render_run_report(run_dir, report_dir)
        except ReportError as exc:  # the run itself is complete; only a page failed
            print(f"sppd run: report failed: {exc}", file=sys.stderr)
            return 1
        print(f"report: {written.index}")
    if len(change):  # last, where a user looks first: did the run help, and how surely?
        print("\n" + gain_headline(change))
    return 0


def _print_outputs(directory: Any) -> None:
    """What the run made, for the end of ``sppd run``: the final policy, the TRL exports,
    the tracker files and the time each phase took."""
    final = directory.final_model.read_text().strip() if directory.final_model.is_file() else ""
    if final:
        path = Path(final) if Path(final).is_absolute() else directory.path / final
        print(f"\nfinal model: {path}")
    exports = [
        directory.iteration(k).pairs_trl
        for k in directory.iterations()
        if directory.iteration(k).pairs_trl.is_file()
    ]
    if exports:
        print("TRL exports (step pairs for DPOTrainer): " + ", ".join(map(str, exports)))
    if directory.tensorboard.is_dir():
        print(f"TensorBoard: tensorboard --logdir {directory.path}")
    times = directory.phase_times()
    if len(times):
        by_phase = times.groupby("phase", sort=False)["seconds"].sum()
        shown = ", ".join(f"{phase} {seconds:.0f} s" for phase, seconds in by_phase.items())
        print(f"phase times (all iterations): {shown}; total {times['seconds'].sum():.0f} s")


def add_study(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study",
        help="the margin study: arms (sft, dpo, step_dpo, fixed, dynamic × γ, yours) × seeds",
        description=(
            "Train every arm of a study config (configs/study_demo.yaml, configs/study_smoke."
            "yaml; fields: sppd_lib.config.StudyConfig) from one starting model on the same "
            "trees and pairs, with several training seeds, evaluate each on the same held-out "
            "problems, and print per-arm intervals and paired comparisons. Everything lands in "
            "studies/<study_id>/ (study.parquet, arms.parquet, comparisons.parquet); rerunning "
            "the same command resumes a killed study."
        ),
    )
    parser.add_argument("--config", type=Path, required=True, help="study config (YAML)")
    parser.add_argument("--study-dir", type=Path, default=None, help="default: studies/<id>")
    parser.add_argument(
        "--from-run",
        type=Path,
        default=None,
        help="take the trees of iteration 1 of this run (same starting model) instead of sampling",
    )
    set_flag(parser, "--set seeds=[0,1] --set train.epochs=2")
    add_config_flags(parser, StudyConfig, sections=True)
    parser.set_defaults(run=_run_study)


def _print_estimator_quality(study: Any) -> None:
    """The value estimators against exact process truth (generated arithmetic only)."""
    from sppd_lib.estimator_quality import format_quality_table
    from sppd_lib.study_results import estimator_quality_table

    summary, calibration = estimator_quality_table(study)
    if summary.empty:
        return
    print(
        "\nvalue estimators against the exact step checker (steps with arithmetic claims; "
        "auc: a true step valued above a false one; chosen_false: pairs whose chosen step "
        "is false; gap_below_1: pairs with delta v < 1):\n" + format_quality_table(summary)
    )
    table = calibration.pivot(index="bin", columns="estimator", values="true_share")
    print(
        "\ncalibration: share of true steps by value bin\n"
        + table.to_string(float_format=lambda x: f"{100 * x:.0f}%")
    )


def _run_study(args: argparse.Namespace) -> int:
    from sppd_lib.study import run_study
    from sppd_lib.study_results import format_arm_table

    config = load_study_config(args.config, [*args.set, *flag_overrides(args, StudyConfig)])
    if config.report:
        check_report_packages("report: true (or set report: false)")
    study_dir = args.study_dir or Path("studies") / config.study_id
    if config.report:  # a page that cannot be written should fail now, not after the study
        from sppd_lib.report import check_report_dir
        from sppd_lib.rundir import run_report_dir

        check_report_dir(run_report_dir(study_dir), ["study"])
    started = time.perf_counter()
    study = run_study(config, study_dir, from_run=args.from_run)
    print(f"\nstudy {study_dir} finished in {(time.perf_counter() - started) / 60:.1f} min")
    seeds = ", ".join(map(str, config.seeds))
    print(f"\ngreedy pass@1 per arm, mean over seeds {seeds} [95% t interval across seeds]:")
    print(format_arm_table(study.arms).to_string())
    if len(study.comparisons):
        shown = study.comparisons[study.comparisons["other"] != "start"]
        print(
            "\npaired comparisons (difference of mean accuracy with a 95% paired bootstrap "
            "interval; gained/lost: problems that flip on the majority over seeds; p: exact "
            "McNemar):\n" + shown.to_string(index=False, float_format=lambda x: f"{x:.3f}")
        )
    _print_estimator_quality(study)
    if config.report:
        from sppd_lib.report import ReportError, render_study_report

        try:
            written = render_study_report(study_dir)
        except ReportError as exc:
            print(f"sppd study: report failed: {exc}", file=sys.stderr)
            return 1
        print(f"\nreport: {written.index}")
    return 0
