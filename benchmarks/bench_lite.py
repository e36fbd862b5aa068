"""TRM-lite quality and speed, measured against the baselines in the same process.

Quality (needs ../shared/data): PRMBench pairwise accuracy on the held-out problems recorded in the
checkpoint's split.json, overall, per flaw kind and on length-matched pairs, next to "shorter wins"; Best-of-N
argmax accuracy on the held-out half of both candidate pools next to random / shortest / longest.
Speed: traces/s on 5,000-character traces, latency on one 30,000-character trace, and the cold load time
(a fresh process: import, load weights and backbone, score one item).

    python benchmarks/bench_lite.py [--shared ../shared/data] [--model DIR] [--write-card] [--skip-quality]

`--write-card` replaces the Speed section of the checkpoint's MODEL_CARD.md with the numbers measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from thinkrm.formatting import Item  # noqa: E402
from thinkrm.lite import (  # noqa: E402
    DEFAULT_DIR,
    POOLS,
    PRM_PAIRS,
    Dataset,
    Embedder,
    LiteModel,
    default_cache_dir,
    evaluate,
    results_markdown,
)
from thinkrm.lite.card import SPEED_BEGIN, SPEED_END  # noqa: E402

STEP = ("Then we multiply the two factors, 12 * 7 = 84, and we add the remainder 5 to get 89. "
        "Wait, let me double-check the product: 12 * 7 is 84, so the total is 89.\n\n")


def _long_traces(shared: Path | None, size: int, n: int) -> list[Item]:
    """Real traces cut to `size` characters when the candidate pool is there, else repeated steps."""
    from thinkrm.bon import load_candidates

    out: list[Item] = []
    if shared is not None and (shared / POOLS["skythought-math500"]).is_file():
        for c in load_candidates(shared / POOLS["skythought-math500"]):
            if len(c.reasoning) >= size:
                out.append(Item(c.prompt, c.reasoning[:size]))
                if len(out) == n:
                    return out
    while len(out) < n:
        out.append(Item(f"Problem {len(out)}: compute the total.", (STEP * (size // len(STEP) + 1))[:size]))
    return out


def speed(model_dir: Path, shared: Path | None) -> dict[str, float]:
    from thinkrm.scoring import load_scorer

    code = ("import time; t=time.perf_counter(); from thinkrm.scoring import load_scorer; "
            f"s=load_scorer('lite:{model_dir}'); s.score([('What is 2+2?', '2 + 2 = 4.')]); "
            "print(time.perf_counter()-t)")
    env = dict(os.environ, HF_HUB_OFFLINE="1")

    def cold_load() -> float:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                              cwd=ROOT)
        return float(done.stdout.strip().splitlines()[-1])

    # Median of three fresh processes: one cold start swings by a second with the page cache and the load.
    load_s = float(np.median([cold_load() for _ in range(3)]))
    scorer = load_scorer(f"lite:{model_dir}")
    scorer.score([("warm-up", "1 + 1 = 2.")])
    items = _long_traces(shared, 5000, 40)
    t, c = time.perf_counter(), time.process_time()
    scorer.score(items)
    per_s = len(items) / (time.perf_counter() - t)
    cpu_per_trace = (time.process_time() - c) / len(items)
    big = _long_traces(shared, 30000, 1)
    lat, cpu = [], []
    for _ in range(3):
        t, c = time.perf_counter(), time.process_time()
        scorer.score(big)
        lat.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    import torch

    # CPU seconds (all threads) do not depend on what else the machine runs; wall-clock seconds do.
    return {"traces_per_s_5k": per_s, "latency_30k_s": float(np.median(lat)), "load_s": load_s,
            "cpu_s_per_5k_trace": cpu_per_trace, "cpu_s_30k": float(np.median(cpu)),
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_avg": os.getloadavg()[0]}


def quality(model_dir: Path, shared: Path) -> dict[str, dict]:
    """The held-out evaluation of the model card, recomputed from the checkpoint's split.json."""
    from thinkrm.bon import load_candidates
    from thinkrm.pairs import load_pairs

    model = LiteModel.load(model_dir)
    split = json.loads((model_dir / "split.json").read_text())
    held = set(split["prmbench_test_ids"])
    test = [p for p in load_pairs(shared / PRM_PAIRS, skip_bad=True) if p.id in held]
    pools = {}
    for name, rel in POOLS.items():
        keep = set(split[f"{name}_test_problem_ids"])
        pools[name] = [c for c in load_candidates(shared / rel) if c.problem_id in keep]
    # The on-disk cache only skips recomputation; cached and fresh features are identical.
    return evaluate(model, Embedder(default_cache_dir()), Dataset([], test, pools, split, {}))


def speed_markdown(sp: dict[str, float]) -> str:
    return (f"Measured by `python benchmarks/bench_lite.py` on {sp['cpus']} CPU cores ({sp['threads']} torch "
            f"threads) while other jobs ran (load average {sp['load_avg']:.1f}): wall clock "
            f"**{sp['traces_per_s_5k']:.1f} traces/s** on 5,000-character traces (target >= 10), "
            f"**{sp['latency_30k_s']:.2f} s** for one 30,000-character trace (target < 1 s), cold load + first "
            f"score **{sp['load_s']:.2f} s** (median of 3 fresh processes; target < 5 s). "
            "CPU time, which does not depend on the other jobs: "
            f"{sp['cpu_s_per_5k_trace']:.3f} CPU-s per 5,000-character trace (at most "
            f"{sp['threads'] / sp['cpu_s_per_5k_trace']:.1f} traces/s on {sp['threads']} idle cores), "
            f"{sp['cpu_s_30k']:.2f} CPU-s for the 30,000-character trace.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--model", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--write-card", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    args = ap.parse_args()
    shared = args.shared if args.shared.is_dir() else None
    if shared is not None and not args.skip_quality:
        print("\n".join(results_markdown(quality(args.model, shared))))
    elif shared is None:
        print(f"shared data not found at {args.shared}: quality skipped")
    sp = speed(args.model, shared)
    print(speed_markdown(sp))
    if args.write_card:
        card = args.model / "MODEL_CARD.md"
        text = card.read_text(encoding="utf-8")
        head, _, rest = text.partition(SPEED_BEGIN)
        _, _, tail = rest.partition(SPEED_END)
        from thinkrm.io import atomic_write

        with atomic_write(card) as f:
            f.write(f"{head}{SPEED_BEGIN}\n{speed_markdown(sp)}\n{SPEED_END}{tail}")


if __name__ == "__main__":
    main()
