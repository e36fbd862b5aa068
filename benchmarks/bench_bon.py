"""Best-of-N on both shared candidate pools with one scorer: accuracy tables, targets, and scoring time.

    python benchmarks/bench_bon.py [--scorer lite] [--repeats 5] [--fresh] [--shared ../shared/data]

Pools: MATH-500 (SkyThought, 9 candidates per problem) and GSM8K (4 per problem), see ../shared/README.md.
First each pool is re-graded with `thinkrm.verify` and its agreement with the source's `correct` printed.
Targets (issue 7): `argmax` beats `random` at every N > 1, and `weighted-vote` beats `majority-vote`
(printed per N as PASS when the 95% CI of the paired difference is above 0, n.s. or FAIL); a full
scoring pass over the 4,500 MATH-500 candidates with `lite` within 15 minutes on 2 cores. Scores are
cached in out/bench-bon/<pool>/ (a rerun only re-evaluates); `--fresh` drops the cache so the scoring
time is measured from scratch.
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

POOLS = {"math500": "skythought-math500/candidates.jsonl", "gsm8k": "gsm8k-candidates/dev.jsonl"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scorer", default="lite")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n", default="1,2,4,8,16")
    parser.add_argument("--temperature", default="auto", help="weighted-vote softmax temperature or 'auto'")
    parser.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--out", default=str(ROOT / "out" / "bench-bon"))
    parser.add_argument("--fresh", action="store_true", help="drop cached scores first")
    parser.add_argument("--pools", default="math500,gsm8k")
    parser.add_argument("--heldout", type=Path, default=None,
                        help="a TRM-lite split.json: evaluate only the problems held out of its training")
    parser.add_argument("--skip-verifier", action="store_true",
                        help="skip re-grading the pools with thinkrm.verify")
    args = parser.parse_args()

    from rich.console import Console

    from thinkrm.bon import best_of_n, load_candidates, plot_bon
    from thinkrm.cli.bon import table
    from thinkrm.io import write_json
    from thinkrm.verify import verify_batch_report

    console = Console()
    for name in args.pools.split(","):
        path = Path(args.shared) / POOLS[name]
        if not path.exists():
            console.print(f"[yellow]skip {name}: {path} not found[/]")
            continue
        out = Path(args.out) / name / args.scorer.replace(":", "_").replace("/", "_")
        out = out.with_name(out.name + "-heldout") if args.heldout else out
        if args.fresh and out.exists():
            shutil.rmtree(out)
        cands = load_candidates(path)
        if args.heldout:
            # TRM-lite trains on pairs from half of each pool's problems; only the other half is a fair test.
            split = json.loads(args.heldout.read_text())
            keep = set(split[f"{POOLS[name].split('/')[0].removesuffix('-candidates')}_test_problem_ids"])
            cands = [c for c in cands if c.problem_id in keep]
        if not args.skip_verifier:
            rep = verify_batch_report([c.response for c in cands], [c.gold for c in cands])
            agree = sum(ok == c.correct for ok, c in zip(rep.results, cands)) / len(cands)
            console.print(f"{name}: thinkrm.verify agrees with the source's grading on {agree:.1%} of "
                          f"{len(cands)} candidates (we say right: {sum(rep.results)}, source: "
                          f"{sum(bool(c.correct) for c in cands)}; {rep.timeouts} timeouts) "
                          f"in {rep.seconds:.1f}s",
                          highlight=False)
        start = time.perf_counter()
        result = best_of_n(cands, args.scorer, ns=[int(n) for n in args.n.split(",")],
                           repeats=args.repeats, cache_dir=out,
                           temperature="auto" if args.temperature == "auto" else float(args.temperature))
        wall = time.perf_counter() - start
        write_json(out / "bon.json", result)
        plot_bon(result, out / "bon.png")
        console.print(table(result))
        sc = result["timings"]["scoring"]
        console.print(f"{name}: {result['n_candidates']} candidates, {result['n_problems']} problems; "
                      f"scoring {sc['scored']} new in {sc['seconds']:.1f}s "
                      f"({sc['per_candidate_ms'] or 0:.1f} ms each, "
                      f"{sc['cached']} cached); grouping {result['timings']['grouping']['seconds']:.1f}s; "
                      f"total {wall:.1f}s", highlight=False)
        for key in ("argmax - random", "weighted-vote - majority-vote"):
            for n, st in result["differences"].get(key, {}).items():
                if int(n) > 1:
                    # PASS only when the whole 95% interval is above zero; "n.s." when it straddles zero.
                    verdict = "PASS" if st["ci_low"] > 0 else "FAIL" if st["ci_high"] < 0 else "n.s."
                    console.print(f"  {verdict} {key} at N={n}: {st['mean'] * 100:+.1f} points "
                                  f"(95% CI {st['ci_low'] * 100:+.1f} .. {st['ci_high'] * 100:+.1f})",
                                  highlight=False)
        if name == "math500" and sc["cached"] == 0:
            verdict = "PASS" if sc["seconds"] <= 15 * 60 else "FAIL"
            console.print(f"  {verdict} full MATH-500 scoring in {sc['seconds'] / 60:.1f} min (target 15)")


if __name__ == "__main__":
    main()
