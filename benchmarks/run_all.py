"""Run every benchmark in turn and print its numbers (`make bench`).

Each script is self-contained and prints its own table; this runner only sequences them, passes the shared
data folder, and reports which ones failed, so one broken benchmark does not hide the others' numbers.
Benchmarks that need ../shared/data are skipped when it is absent.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (script, needs shared data, extra arguments)
BENCHMARKS = [
    ("bench_pipeline.py", True, ["--embedding-traces", "4"]),
    ("bench_adversarial.py", False, ["--repeats", "1"]),
    ("bench_hf_scorer.py", False, []),
    ("bench_truncation.py", True, []),
    ("bench_train.py", False, []),
    ("bench_serve.py", False, []),
    ("bench_device_sim.py", False, ["--rounds", "1"]),
    ("bench_reliability.py", False, []),
    ("bench_llm_structure.py", True, []),
    ("bench_lite.py", True, []),
    ("bench_bon.py", True, ["--scorer", "lite"]),
    ("bench_rl.py", True, []),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--only", nargs="*", help="script names to run (default: all)")
    args = ap.parse_args()
    failed = []
    for script, needs_shared, extra in BENCHMARKS:
        if args.only and script not in args.only and script.removesuffix(".py") not in args.only:
            continue
        cmd = [sys.executable, str(HERE / script), *extra]
        if needs_shared:
            if not args.shared.is_dir():
                print(f"== {script}: skipped (no shared data at {args.shared})")
                continue
            cmd += ["--shared", str(args.shared)]
        print(f"== {script}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"== {script}: exit {rc} in {time.perf_counter() - start:.0f} s", flush=True)
        if rc:
            failed.append(script)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
