"""The demo's phase times, per run directory, from the timings every phase records
(``iter_<k>/phase_times.jsonl``): seconds per phase summed over iterations, the engine's
start-up and weight swaps, the total, and each run's total as a ratio of the first run's.

    .venv/bin/sppd run --config configs/demo.yaml                              # runs/demo
    .venv/bin/sppd run --config configs/demo.yaml --set engine=vllm --set run_id=demo_vllm
    .venv/bin/python benchmarks/bench_demo.py runs/demo runs/demo_vllm

Prints one JSON line as its last line. The runs must have been made on the same machine
under the same load for the ratios to mean anything (the script cannot check that).
"""

from __future__ import annotations

import argparse
import json

from sppd_lib.rundir import RunDir


def phase_totals(run_dir: str) -> dict:
    times = RunDir(run_dir).phase_times()
    if times.empty:
        raise SystemExit(f"{run_dir}: no phase_times.jsonl (made before phases were timed?)")
    engine_start = times.get("engine_start_seconds")
    return {
        "engine": sorted(set(times["engine"].dropna())) if "engine" in times else [],
        "seconds_by_phase": times.groupby("phase")["seconds"].sum().round(1).to_dict(),
        "engine_start_seconds": round(float(engine_start.sum()), 1)
        if engine_start is not None
        else 0.0,
        "total_seconds": round(float(times["seconds"].sum()), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="finished run directories")
    args = parser.parse_args()
    runs = {run_dir: phase_totals(run_dir) for run_dir in args.run_dirs}
    baseline = runs[args.run_dirs[0]]["total_seconds"]
    for totals in runs.values():
        totals["total_vs_first"] = round(totals["total_seconds"] / baseline, 3)
    print(json.dumps({"benchmark": "demo_phase_times", "runs": runs}))


if __name__ == "__main__":
    main()
