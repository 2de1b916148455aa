"""Pair quality on sampled generated-arithmetic trees: the pipeline before issue 24 against
strict leaves, merged siblings, evidence and the exact step checker (no model needed).

    .venv/bin/sppd sample --config configs/demo.yaml --dataset arith --split train \\
        --limit 40 --engine vllm --device cpu --out /tmp/demo_trees.jsonl.gz
    .venv/bin/python benchmarks/bench_pair_quality.py /tmp/demo_trees.jsonl.gz

For each pipeline: pairs, pairs per prompt, the share of chosen steps the checker finds
false, the share of pairs with Δv < 1; also how many complete leaves change grade under
``leaf_answer: stated`` and every estimator against the checker (AUC, chosen false).
Prints one JSON line as its last line.
"""

from __future__ import annotations

import argparse
import copy
import json

import pandas as pd

from sppd_lib.config import PairConfig
from sppd_lib.estimator_quality import estimator_quality, format_quality_table
from sppd_lib.pairs import build_pairs
from sppd_lib.tree import StepTree, read_trees
from sppd_lib.values import grade_leaves

#: name -> pair settings (value mc, threshold 0.5 as the demo).
PIPELINES = {
    "before (last number, unmerged)": {"leaf_answer": "last_number", "merge_siblings": False},
    "strict leaves + merged": {},
    "+ min_leaves 2": {"min_leaves": 2},
    "+ process_check": {"process_check": True},
    "+ min_leaves 2 + process_check": {"min_leaves": 2, "process_check": True},
}


def changed_grades(trees: list[StepTree]) -> dict[str, int]:
    """Complete leaves whose grade differs between the last-number and the stated rule."""
    old, new = copy.deepcopy(trees), copy.deepcopy(trees)
    counts = {"complete_leaves": 0, "right_to_wrong": 0, "wrong_to_right": 0}
    for before, after in zip(old, new, strict=True):
        grade_leaves(before, "last_number")
        grade_leaves(after, "stated")
        for a, b in zip(before.complete_leaves(), after.complete_leaves(), strict=True):
            counts["complete_leaves"] += 1
            counts["right_to_wrong"] += bool(a.correct) and not b.correct
            counts["wrong_to_right"] += bool(b.correct) and not a.correct
    return counts


def pipeline_row(name: str, trees: list[StepTree], settings: dict) -> dict:
    config = PairConfig(value="mc", threshold=0.5, **settings)
    pairs, _ = build_pairs(copy.deepcopy(trees), config)
    checked = pairs[pairs["chosen_check"].notna()] if len(pairs) else pairs
    return {
        "pipeline": name,
        "pairs": len(pairs),
        "pairs_per_prompt": round(len(pairs) / len(trees), 3),
        "trees_with_pairs": int(pairs["tree_id"].nunique()) if len(pairs) else 0,
        "chosen_false": round(float((checked["chosen_check"] == "false").mean()), 3)
        if len(checked)
        else None,
        "chosen_true": round(float((checked["chosen_check"] == "true").mean()), 3)
        if len(checked)
        else None,
        "gap_below_1": round(float((pairs["delta_value"] < 1).mean()), 3) if len(pairs) else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", help="a trees file of generated arithmetic (.jsonl.gz)")
    args = parser.parse_args()
    trees = list(read_trees(args.trees))
    grades = changed_grades(trees)
    rows = [pipeline_row(name, trees, settings) for name, settings in PIPELINES.items()]
    print(pd.DataFrame(rows).to_string(index=False))
    print(f"\ncomplete leaves changing grade under leaf_answer 'stated': {grades}")
    summary, calibration = estimator_quality(trees)
    print("\nestimators against the checker (strict leaves, merged siblings):")
    print(format_quality_table(summary))
    if len(calibration):
        print(calibration.pivot(index="bin", columns="estimator", values="true_share").to_string())
    record = {
        "trees": len(trees),
        "leaf_grades": grades,
        "pipelines": rows,
        "estimators": json.loads(summary.to_json(orient="records")),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
