"""Does the gated RL reward move? Its spread over real correct traces, per normalisation mode.

    python benchmarks/bench_rl.py [--scorer lite] [--alpha 0.2] [--shared ../shared/data]

The gated reward `r_v * (1 - a + a * sigmoid(z))` only shapes correct answers, so what matters is how it
spreads over them. This scores the correct candidates of the MATH-500 pool (SkyThought, 9 candidates per
problem) on the problems TRM-lite never saw (`--heldout`, its split.json; its calibration was measured on
the other half) and prints, for each `normalize` mode, the interquartile range of the reward (target:
>= 0.05, a quarter of the 0.2 span, issue 14) and, with each problem's correct candidates taken as one GRPO
group, how often the thinking term orders a group (rewards differing by more than `REORDER_EPS`) and the
mean spread within a group. A scorer without a calibration (e.g. `length`) is calibrated here on the
training half's correct candidates, as `thinkrm.lite.calibration_items` picks them. Raw scores are cached in
out/bench-rl/ (a calibration change needs no rescoring); `--fresh` drops the cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

POOL = "skythought-math500/candidates.jsonl"
TARGET_IQR = 0.05


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scorer", default="lite")
    parser.add_argument("--alpha", type=float, default=0.2)
    parser.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--heldout", type=Path,
                        default=ROOT / "src" / "thinkrm" / "data" / "lite" / "split.json")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench-rl")
    parser.add_argument("--fresh", action="store_true", help="rescore instead of reading cached raw scores")
    args = parser.parse_args()

    from thinkrm.bon import load_candidates
    from thinkrm.calibration import fit_calibration
    from thinkrm.lite import calibration_items
    from thinkrm.rewards import gated_batch, reorder_stats
    from thinkrm.scoring import load_scorer

    split = json.loads(args.heldout.read_text(encoding="utf-8"))
    held = set(split["skythought-math500_test_problem_ids"])
    cands = [c for c in load_candidates(Path(args.shared) / POOL)
             if c.correct and c.problem_id in held and c.reasoning.strip()]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores; scorer {args.scorer}; "
          f"alpha {args.alpha}")
    print(f"{len(cands)} correct candidates of {len({c.problem_id for c in cands})} held-out MATH-500 "
          "problems")

    scorer = load_scorer(args.scorer)
    items = [(c.prompt, c.reasoning) for c in cands]
    # Keyed by the scorer's weights as well as its spec, so a retrained model is never read from the cache.
    weights = ROOT / "src" / "thinkrm" / "data" / "lite" / "model.safetensors"
    stamp = hashlib.sha256(json.dumps([args.scorer, items]).encode("utf-8", "surrogatepass"))
    if args.scorer.startswith("lite") and weights.is_file():
        stamp.update(weights.read_bytes())
    cache = args.out / f"scores-{stamp.hexdigest()[:16]}.json"
    if cache.is_file() and not args.fresh:
        raw = json.loads(cache.read_text(encoding="utf-8"))
        print(f"raw scores read from {cache}")
    else:
        from thinkrm.io import write_json

        start = time.perf_counter()
        raw = scorer.score(items)
        print(f"scored in {time.perf_counter() - start:.0f} s")
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(cache, raw)
    calibration = scorer.calibration
    if calibration is None:
        calibration = fit_calibration(scorer.score(calibration_items(args.shared, split)),
                                      reference="training-half correct candidates (measured here)")
    print(f"calibration: centre {calibration.center:.3f}, scale {calibration.scale:.3f} "
          f"({calibration.n} {calibration.reference})")
    q1, q2, q3 = quartiles(raw)
    print(f"raw scores: quartiles {q1:.2f} / {q2:.2f} / {q3:.2f}")

    groups = [c.problem_id for c in cands]
    r_v = [1.0] * len(cands)
    print()
    print("| normalize | reward p10 | q1 | median | q3 | p90 | IQR | target IQR >= 0.05 | groups reordered "
          "| mean spread in group |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for mode in ("none", "calibrated", "group"):
        rewards, _ = gated_batch(r_v, raw, args.alpha, normalize=mode, calibration=calibration, groups=groups)
        deciles = statistics.quantiles(rewards, n=10, method="inclusive")
        q1, q2, q3 = quartiles(rewards)
        stats = reorder_stats(rewards, r_v, groups)
        verdict = "PASS" if q3 - q1 >= TARGET_IQR else "FAIL"
        print(f"| {mode} | {deciles[0]:.4f} | {q1:.4f} | {q2:.4f} | {q3:.4f} | {deciles[-1]:.4f} | "
              f"**{q3 - q1:.4f}** | {verdict} | {stats['reordered']:.1%} of {stats['groups']} | "
              f"{stats['spread']:.4f} |")


if __name__ == "__main__":
    main()
