"""Grader throughput: responses/second on GSM8K-style and MATH-style answers.

Baseline, in the same process: plain Math-Verify (``verify(parse(gold), parse(response))``,
its timeouts off) on the same responses. Prints one JSON line as its last line.
"""

from __future__ import annotations

import json
import logging
import random
import time

from sppd_lib.data import load_problems
from sppd_lib.grading import grading_stats, is_correct, reset_grading_stats


def gsm8k_responses(n: int = 1000) -> list[tuple[str, str]]:
    """Reference solutions rewritten to end in \\boxed{}; every third one has a wrong answer."""
    problems = load_problems("gsm8k", "train", limit=n)
    cases = []
    for i, p in enumerate(problems):
        work = p.meta["solution"].rsplit("####", 1)[0].strip()
        answer = p.answer if i % 3 else str(int(float(p.answer)) + 1)
        cases.append((f"{work}\n\nThe answer is \\boxed{{{answer}}}.", p.answer))
    return cases


def math_responses(n: int = 500) -> list[tuple[str, str]]:
    """MATH500 solutions, half with the boxed answer rewritten (\\frac -> \\dfrac, spaces)."""
    rng = random.Random(0)
    cases = []
    for p in load_problems("math500", limit=n):
        solution = p.meta["solution"]
        if rng.random() < 0.5:
            solution = solution.replace("\\frac", "\\dfrac").replace(",", ", ")
        cases.append((solution, p.answer))
    return cases


def rate(grade_one, cases) -> tuple[float, int]:
    started = time.perf_counter()
    correct = sum(bool(grade_one(response, gold)) for response, gold in cases)
    return len(cases) / (time.perf_counter() - started), correct


def plain_math_verify(response: str, gold: str) -> bool:
    from math_verify import parse, verify

    return verify(
        parse(f"${gold}$", parsing_timeout=None),
        parse(response, parsing_timeout=None),
        timeout_seconds=None,
    )


def main() -> None:
    logging.disable(logging.WARNING)  # Math-Verify warns on every call when timeouts are off
    is_correct("\\boxed{\\sqrt{8}}", "2\\sqrt{2}")  # start the symbolic worker outside timing
    figures = {}
    for name, cases in (("gsm8k", gsm8k_responses()), ("math", math_responses())):
        reset_grading_stats()
        ours, ours_correct = rate(is_correct, cases)
        stats = grading_stats()
        baseline, baseline_correct = rate(plain_math_verify, cases)
        figures[name] = {
            "responses": len(cases),
            "responses_per_s": round(ours, 1),
            "math_verify_responses_per_s": round(baseline, 1),
            "speedup": round(ours / baseline, 2),
            "correct": ours_correct,
            "math_verify_correct": baseline_correct,
            "decided_by_fast_path": stats.get("fast_path", 0),
            "decided_by_math_verify": stats.get("math_verify", 0),
        }
        print(f"{name}: {figures[name]}")
    print(json.dumps({"benchmark": "grader", **figures}))


if __name__ == "__main__":
    main()
