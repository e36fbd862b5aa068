"""Best-of-N over long thinking traces (issue 15): does the scorer pick the right trace where it matters most?

    python benchmarks/bench_longcot.py [--scorer lite] [--scorer length ...] [--heldout split.json | --all]
                                       [--repeats 20] [--speed] [--shared ../shared/data]

Pools: ../shared/data/longcot-dev/ (AMC23 40 x 16 runs, Minerva 272 x 5; cross-model, many 20k-60k character
R1-style traces, see ../shared/README.md). By default only the held-out half of each pool's problems is scored:
the problems `thinkrm.lite.recipe.held_out_problems` holds out of TRM-lite training (seed 0), or those listed in a
checkpoint's `--heldout split.json`; `--all` scores every problem (for scorers that never trained on these).

Targets, printed per pool as PASS / FAIL with the paired 95% CI over problems:
* `argmax` at the largest N at least 10 points above `random`;
* `weighted-vote` at least level with `majority-vote` at every N > 1 (PASS when the mean difference >= 0).
`--speed` also measures the cost targets: one 30,000-character trace scored on one core (<= 0.3 s), and the
long traces of the pools scored from scratch on every core, extrapolated to 1,000 traces (<= 5 minutes).
Scores are cached in out/bench-longcot/<pool>/<scorer>/ (`--fresh` drops them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

POOLS = {"amc23": "longcot-dev/amc23.jsonl", "minerva": "longcot-dev/minerva.jsonl"}
LONG = 6000  # characters of reasoning from which a trace counts as long (../shared/README.md)


def verdicts(result: dict, console) -> list[bool]:
    out = []
    diffs = result["differences"]
    top = str(result["ns"][-1])
    st = diffs["argmax - random"][top]
    ok = st["mean"] >= 0.10
    out.append(ok)
    console.print(f"  {'PASS' if ok else 'FAIL'} argmax - random at N={top}: {st['mean'] * 100:+.1f} points "
                  f"(95% CI {st['ci_low'] * 100:+.1f} .. {st['ci_high'] * 100:+.1f}; target >= +10)", highlight=False)
    for n, st in diffs["weighted-vote - majority-vote"].items():
        if int(n) > 1:
            ok = st["mean"] >= 0
            out.append(ok)
            console.print(f"  {'PASS' if ok else 'FAIL'} weighted-vote - majority-vote at N={n}: "
                          f"{st['mean'] * 100:+.1f} points (95% CI {st['ci_low'] * 100:+.1f} .. "
                          f"{st['ci_high'] * 100:+.1f}; target >= 0)", highlight=False)
    return out


def speed(scorer_spec: str, traces: list, console) -> None:
    """One 30k-character trace on one core; all long traces of the pools on every core, from scratch."""
    import os
    import subprocess

    long30 = next((c for c in traces if len(c.reasoning) >= 30000), None)
    if long30 is not None:
        code = ("import json,sys,time,torch; torch.set_num_threads(1); from thinkrm.scoring import load_scorer; "
                f"s=load_scorer({scorer_spec!r}); it=json.loads(sys.stdin.read()); p,r=it; "
                "s.score([(p, r[:30000])]); ts=[]\n"
                "for _ in range(5):\n"
                " t=time.perf_counter(); s.score([(p, r[:30000])]); ts.append(time.perf_counter()-t)\n"
                "print(sorted(ts)[2])")
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], input=json.dumps(
            [long30.prompt, long30.reasoning]), capture_output=True, text=True, env=env, check=True)
        sec = float(out.stdout.strip().splitlines()[-1])
        console.print(f"  {'PASS' if sec <= 0.3 else 'FAIL'} one 30,000-character trace on one core: {sec:.3f} s "
                      "(median of 5; target <= 0.3)", highlight=False)
    from thinkrm.scoring import load_scorer

    long = [(c.prompt, c.reasoning) for c in traces if len(c.reasoning) >= LONG]
    scorer = load_scorer(scorer_spec)
    start = time.perf_counter()
    scorer.score(long)
    sec = time.perf_counter() - start
    per_1000 = sec / len(long) * 1000
    console.print(f"  {'PASS' if per_1000 <= 300 else 'FAIL'} {len(long)} long traces (median "
                  f"{sorted(len(r) for _, r in long)[len(long) // 2]:,} chars) in {sec:.1f} s on {os.cpu_count()} "
                  f"cores: {per_1000 / 60:.2f} min per 1,000 (target <= 5)", highlight=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scorer", action="append", help="scorer spec (repeatable); default lite")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--out", default=str(ROOT / "out" / "bench-longcot"))
    parser.add_argument("--heldout", type=Path, default=None, help="a TRM-lite split.json naming held-out problems")
    parser.add_argument("--all", action="store_true", help="score every problem, not only the held-out half")
    parser.add_argument("--fresh", action="store_true", help="drop cached scores first")
    parser.add_argument("--speed", action="store_true", help="also measure the cost targets")
    parser.add_argument("--json", type=Path, default=None, help="write every result here")
    args = parser.parse_args()

    from rich.console import Console

    from thinkrm.bon import best_of_n, load_candidates, ns_to_pool_size
    from thinkrm.cli.bon import table
    from thinkrm.lite.recipe import held_out_problems

    console = Console(width=140)
    split = json.loads(args.heldout.read_text()) if args.heldout else None
    results, passed, everything = {}, [], []
    for spec in args.scorer or ["lite"]:
        for name, rel in POOLS.items():
            path = Path(args.shared) / rel
            if not path.exists():
                console.print(f"[yellow]skip {name}: {path} not found[/]")
                continue
            cands = load_candidates(path)
            everything += cands
            if not args.all:
                keep = held_out_problems(name, cands, split)
                cands = [c for c in cands if c.problem_id in keep]
            out = Path(args.out) / name / spec.replace(":", "_").replace("/", "_")
            if args.fresh and out.exists():
                shutil.rmtree(out)
            res = best_of_n(cands, spec, ns=ns_to_pool_size(cands), repeats=args.repeats, cache_dir=out)
            results[f"{spec}/{name}"] = res
            console.print(table(res))
            n_long = sum(len(c.reasoning) >= LONG for c in cands)
            console.print(f"{name}: {res['n_problems']} {'' if args.all else 'held-out '}problems, "
                          f"{res['n_candidates']} candidates ({n_long} long)", highlight=False)
            passed += verdicts(res, console)
        if args.speed:
            speed(spec, everything, console)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    console.print(f"{sum(passed)}/{len(passed)} quality targets met")


if __name__ == "__main__":
    main()
