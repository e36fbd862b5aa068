"""Speed on synthetic pathological inputs: the cases the tests run for correctness only, timed here.

    python benchmarks/bench_adversarial.py [--repeats 3]

The tests (tests/test_steps.py, test_dag.py, test_me2.py, test_verify.py, test_verifiers.py) check that these
inputs give the right output; whether they stay fast is measured here, where a busy machine cannot fail a
test. Each line is the best of `--repeats` runs, in seconds, against its target:

* partition: a million characters of short paragraphs (capped at MAX_STEPS), and one 1 MB paragraph.
  Target < 3 s (~0.3 s on 2 cores; a quadratic pass takes minutes).
* heuristic DAG: a million characters of "Wait / Alternatively / So combining" turns. Target < 5 s (~0.5 s).
* ME² analysis of a 100k-character trace dense in arithmetic. Target < 1 s of CPU.
* answer extraction (thinkrm.verify.extract_answer) on 1 MB adversarial outputs (unclosed / nested boxes,
  brace soup, long runs of spaces or newlines). Target < 2 s each (a few tenths; the quadratic scan took a
  minute at 56 KB).
* choice and verdict parsing (thinkrm.verifiers) on 1 MB adversarial responses. Target < 2 s each (the old
  patterns took hours on some of them).

Real traces (issue 2's median < 20 ms per trace) are benchmarks/bench_pipeline.py's part.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from thinkrm.dag import build_dag
from thinkrm.me2 import analyze
from thinkrm.steps import split_steps
from thinkrm.verifiers import choice_correct, parse_decision, parse_options, student_answer
from thinkrm.verify import extract_answer

MB = 1_000_000
LISTED = "What is 3 * 5?\nA. 12\nB. 15\nC. 18\nD. 20"


def said(answer: str) -> str:
    return f"<think>\nThree fives... maybe (A)? No: 15.\n</think>\n{answer}"


def cases() -> list[tuple[str, float, bool, object]]:
    """(label, target seconds, CPU time?, thunk)."""
    para = ("So we continue with the computation of the next term in the series, which is {i}.\n\n"
            "The partial sum so far equals {i} squared.\n\n")
    paragraphs = "".join(para.format(i=i) for i in range(8000))[:MB]
    turns = ("Wait, maybe x = 3.\n\nAlternatively, x = 4 works better here for us.\n\n"
             "So combining both, x = 7 is the total we need in the end.\n\n") * 15000
    arith = ("Wait, let me check the sum again: 17 + 25 = 42 and 42 * 3 = 126, so x = 126.\n\n"
             "Alternatively, compute 126 / 3 = 42 first, then hmm, subtract 25 to get 17.\n\n"
             "So the total is 126 after all, which matches the earlier value of the expression.\n\n")
    arith = (arith * (100_000 // len(arith) + 1))[:100_000]
    out = [
        ("partition: 1 MB of paragraphs", 3.0, False, lambda: split_steps(paragraphs)),
        ("partition: one 1 MB paragraph", 3.0, False, lambda: split_steps("x" * MB)),
        ("heuristic DAG: 1 MB of turns", 5.0, False, lambda: build_dag(turns[:MB])),
        ("ME² analysis: 100k chars of arithmetic (CPU)", 1.0, True,
         lambda: analyze(arith, prompt="Compute 17 + 25, then triple it.")),
    ]
    extraction = {
        "unclosed boxes": "<think>hmm</think> " + "\\boxed{" * (MB // 7),
        "nested boxes": "\\boxed{" * (MB // 14) + "}" * (MB // 14),
        "brace soup in a box": "\\boxed{" + "{}" * (MB // 2),
        "open braces": "{" * MB,
        "newlines after 'answer is'": "The answer is" + "\n" * MB,
        "spaces after ####": "####" + " " * MB + "18",
        "1 MB answer": "\\boxed{" + "1+" * (MB // 2) + "1}",
    }
    for name, text in extraction.items():
        out.append((f"extract_answer: {name}", 2.0, False, lambda t=text: extract_answer(t)))
    choices = {
        "newlines after 'answer is'": "The answer is" + "\n" * MB,
        "spaces after 'Answer:'": "Answer:" + " " * MB + "B",
        "stars after 'answer'": "answer" + "*" * MB,
        "a 1 MB bold letter": "**" + "B" * MB,
        "text{ runs": "\\text{" * (MB // 6) + "B",
        "many letters": "(A) or " * (MB // 7) + "(B)",
        "unclosed boxes": "\\boxed{" * (MB // 7),
        "B. and spaces": "B." + " " * MB,
    }
    for name, text in choices.items():
        out.append((f"choice_correct + student_answer: {name}", 2.0, False,
                    lambda t=text: (choice_correct(said(t), "B", LISTED), student_answer(said(t)))))
    out.append(("parse_decision / parse_options: 1 MB of spaces", 2.0, False, lambda: (
        parse_decision("Final Decision" + " " * MB + ": **Yes**"), parse_options("A. 12" + " " * MB + "\nB. 15"),
        parse_options("(A) 1" + " " * MB + "2 (B) 3"))))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="runs per case (the best counts)")
    args = ap.parse_args(argv)
    extract_answer("\\boxed{1}")  # first-call imports (numpy, sympy) are not parsing
    choice_correct(said("B"), "B", LISTED)
    analyze("Warm up.\n\nSo 2 + 3 = 5.", prompt="What is 2 + 3?")
    print(f"synthetic pathological inputs, best of {args.repeats}, load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    failed = 0
    for label, target, cpu, thunk in cases():
        clock = time.process_time if cpu else time.perf_counter
        best = math.inf
        for _ in range(args.repeats):
            t0 = clock()
            thunk()
            best = min(best, clock() - t0)
        ok = best < target
        failed += not ok
        print(f"  {label:62s} {best:7.3f} s   [target < {target:.0f} s] {'PASS' if ok else 'FAIL'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
