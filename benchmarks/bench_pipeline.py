"""Speed of step partitioning + the reasoning DAG on the shared MATH-500 candidates (issue 2 targets).

    python benchmarks/bench_pipeline.py [--shared ../shared/data] [--limit N] [--embedding-traces 8]
                                        [--analyze-traces 200] [--baseline /tmp/baseline]

1. Partition + heuristic DAG, streamed over all 4,500 candidates of
   skythought-math500/candidates.jsonl (some over 100k characters): median / p90 / p99 / max ms per trace,
   traces per second, and resident memory after the first 10% and at the end (flat = streaming works).
   Targets: median < 20 ms, max < 1 s.
2. The step-count distribution per model (docs/steps-and-dag.md quotes it; the aim is ~10-40 steps on a
   typical long trace).
3. Full ME² analysis (`thinkrm.analyze`: partition, heuristic DAG and all signals, no scorer) on the
   longest traces of longcot-dev/*.jsonl and the MATH-500 candidates, with their prompts: ms per 30,000
   characters (median / p90 / max over traces, each the best of `--repeats` runs), and a linearity check:
   time per character of the longest quarter of those traces over that of the shortest quarter.
   Target (issue 17): median <= 20 ms per 30k characters, and linear (ratio <= 1.5). With
   `--baseline DIR` the same traces also run through an older copy of the package kept in
   DIR/thinkrm_baseline, interleaved in this process, which gives the speed-up and checks that the signals,
   findings and DAG are identical. Make such a copy with
   `mkdir -p /tmp/baseline && git archive REV src/thinkrm | tar -x -C /tmp/baseline --strip-components=1
   && mv /tmp/baseline/thinkrm /tmp/baseline/thinkrm_baseline`.
4. The embedding structurer on 30k-character traces (model load excluded and reported apart): the real
   candidates longer than 25k characters cut to 30k, and 30k characters of the long "Wait, ..." reasoner
   (Sky-T1 27B traces joined), which has the densest steps. Target: < 1 s per trace on 2 cores.

Wall-clock numbers depend on what else runs; the script prints the load average next to them, and CPU
time for the embedding part.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from thinkrm.dag import build_dag  # noqa: E402
from thinkrm.steps import split_steps  # noqa: E402
from thinkrm.trace import split_response  # noqa: E402

LONG_REASONER = "Sky-T1-math-correct-5K-27B"


def rss_mib() -> float:
    """Current resident set size (Linux), to show memory staying flat while streaming."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def bench_heuristic(path: Path, limit: int | None) -> dict:
    base_ms: list[float] = []
    split_ms: list[float] = []
    total_ms: list[float] = []
    chars: list[int] = []
    steps_by_model: dict[str, list[int]] = defaultdict(list)
    rss_early = None
    build_dag("Warm up.\n\nSo the lexicon is loaded and the regexes compiled before timing.")
    n_total = limit or sum(1 for _ in open(path, "rb"))
    t_start = time.perf_counter()
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if limit is not None and i >= limit:
                break
            rec = json.loads(line)
            reasoning = split_response(rec["response"])[0]
            tb = time.perf_counter()
            reasoning.split("\n\n")  # baseline: the least any blank-line partitioner must do
            t0 = time.perf_counter()
            steps = split_steps(reasoning)
            t1 = time.perf_counter()
            build_dag(steps, "heuristic", text=reasoning)
            t2 = time.perf_counter()
            base_ms.append((t0 - tb) * 1e3)
            split_ms.append((t1 - t0) * 1e3)
            total_ms.append((t2 - t0) * 1e3)
            chars.append(len(reasoning))
            steps_by_model[rec["model"]].append(len(steps))
            if i + 1 == max(1, n_total // 10):
                rss_early = rss_mib()
    elapsed = time.perf_counter() - t_start
    worst = max(range(len(total_ms)), key=total_ms.__getitem__)
    return {
        "traces": len(total_ms), "elapsed_s": elapsed, "traces_per_s": len(total_ms) / elapsed,
        "median_ms": statistics.median(total_ms), "p90_ms": pct(total_ms, 0.9), "p99_ms": pct(total_ms, 0.99),
        "max_ms": total_ms[worst], "max_trace_chars": chars[worst], "max_chars": max(chars),
        "split_median_ms": statistics.median(split_ms), "split_max_ms": max(split_ms),
        "baseline_total_s": sum(base_ms) / 1e3, "split_total_s": sum(split_ms) / 1e3,
        "dag_total_s": (sum(total_ms) - sum(split_ms)) / 1e3,
        "rss_after_10pct_mib": rss_early, "rss_end_mib": rss_mib(), "peak_rss_mib": peak_rss_mib(),
        "steps_by_model": {m: {"n": len(v), "p10": pct(v, 0.1), "median": statistics.median(v),
                               "p90": pct(v, 0.9), "max": max(v)} for m, v in sorted(steps_by_model.items())},
    }


def longest_traces(shared: Path, n: int) -> list[tuple[str, str]]:
    """(prompt, reasoning) of the n longest reasoning texts in longcot-dev and the MATH-500 candidates."""
    paths = sorted((shared / "longcot-dev").glob("*.jsonl"))
    paths.append(shared / "skythought-math500" / "candidates.jsonl")
    items = []
    for path in paths:
        if path.exists():
            with open(path, encoding="utf-8") as f:
                for line in f:
                    rec = json.loads(line)
                    items.append((rec["prompt"], split_response(rec["response"])[0]))
    items.sort(key=lambda it: -len(it[1]))
    return items[:n]


def _analysis_record(a) -> tuple:
    return a.signals, a.size, [f.to_dict() for f in a.findings], a.dag.to_dict()


def bench_analyze(shared: Path, n: int, repeats: int, baseline: Path | None) -> dict:
    from thinkrm.me2 import analyze

    runs = {"new": lambda p, t: analyze(t, prompt=p)}
    if baseline is not None:
        sys.path.insert(0, str(baseline))
        import thinkrm_baseline.me2 as old_me2
        import thinkrm_baseline.structurers as old_structurers

        # The structurer object, not its name: the copy's registry still names the installed package.
        runs["baseline"] = lambda p, t: old_me2.analyze(t, old_structurers.HeuristicStructurer(), prompt=p)
    traces = longest_traces(shared, n)
    for run in runs.values():
        run("What is 2 + 3?", "Warm up.\n\nSo 2 + 3 = 5, compiled and loaded before timing.")
    per_30k: dict[str, list[float]] = {k: [] for k in runs}
    slowest: dict[str, tuple[float, int]] = {k: (0.0, 0) for k in runs}  # (ms, chars) of the slowest trace
    same = 0
    for prompt, text in traces:
        records = {}
        for name, run in runs.items():  # interleaved, so a busy machine slows both alike
            best = math.inf
            for _ in range(repeats):
                t0 = time.perf_counter()
                a = run(prompt, text)
                best = min(best, time.perf_counter() - t0)
            per_30k[name].append(best * 1e3 * 30_000 / len(text))
            slowest[name] = max(slowest[name], (best * 1e3, len(text)))
            records[name] = _analysis_record(a)
        same += len(records) == 1 or records["new"] == records["baseline"]
    chars = [len(t) for _, t in traces]
    order = sorted(range(len(traces)), key=chars.__getitem__)
    q = max(1, len(order) // 4)
    out = {"traces": len(traces), "median_chars": statistics.median(chars), "max_chars": max(chars),
           "min_chars": min(chars), "identical": same if baseline is not None else None}
    for name, v in per_30k.items():
        short = statistics.median(v[i] for i in order[:q])
        long = statistics.median(v[i] for i in order[-q:])
        out[name] = {"median": statistics.median(v), "p90": pct(v, 0.9), "max": max(v),
                     "max_chars": chars[max(range(len(v)), key=v.__getitem__)],
                     "short_quarter": short, "long_quarter": long, "linearity": long / short,
                     "slowest_ms": slowest[name][0], "slowest_chars": slowest[name][1]}
    return out


def long_traces(path: Path, n: int) -> list[tuple[str, str]]:
    """(label, 30k-character trace) pairs: real long candidates cut to 30k, then joined long-reasoner text."""
    real, dense = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            reasoning = split_response(rec["response"])[0]
            if len(reasoning) > 25_000 and len(real) < n:
                real.append(("real>25k", reasoning[:30_000]))
            if rec["model"] == LONG_REASONER:
                dense.append(reasoning)
    joined, buf = [], ""
    for text in dense:
        buf = f"{buf}\n\n{text}" if buf else text
        if len(buf) >= 30_000:
            joined.append(("dense", buf[:30_000]))
            buf = ""
        if len(joined) == n:
            break
    return real + joined


def bench_embedding(path: Path, n: int) -> dict:
    from thinkrm.embed import get_encoder

    t0 = time.perf_counter()
    get_encoder().encode(["warm up"])
    load_s = time.perf_counter() - t0
    out: dict[str, dict] = {}
    for label, text in long_traces(path, n):
        w0, c0 = time.perf_counter(), time.process_time()
        dag = build_dag(text, "embedding")
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        d = out.setdefault(label, {"wall_s": [], "cpu_s": [], "steps": []})
        d["wall_s"].append(wall)
        d["cpu_s"].append(cpu)
        d["steps"].append(len(dag.steps))
    summary = {label: {"traces": len(d["wall_s"]), "median_wall_s": statistics.median(d["wall_s"]),
                       "max_wall_s": max(d["wall_s"]), "median_cpu_s": statistics.median(d["cpu_s"]),
                       "median_steps": statistics.median(d["steps"])} for label, d in out.items()}
    return {"model_load_s": load_s, **summary}


def bench_agreement(path: Path, n: int) -> dict:
    """Heuristic vs embedding on n long-reasoner traces: how often they attach steps alike, and the
    distributions of the two similarities between a step and the 8 steps before it (their thresholds are
    set at about the same quantiles)."""
    import numpy as np

    from thinkrm.structurers import EmbeddingStructurer, HeuristicStructurer

    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec["model"] == LONG_REASONER:
                texts.append(split_response(rec["response"])[0])
    texts = texts[::17][:n]
    same = total = turned = turned_same = 0
    sims: dict[str, list[float]] = {"heuristic": [], "embedding": []}
    for text in texts:
        h, e = build_dag(text), build_dag(text, "embedding")
        for a, b in zip(h.nodes, e.nodes):
            total += 1
            same += a.parents == b.parents
            if a.action != "continue" or b.action != "continue":
                turned += 1
                turned_same += a.parents == b.parents and a.action == b.action
        structurers = {"heuristic": HeuristicStructurer(), "embedding": EmbeddingStructurer()}
        for name, s in structurers.items():
            s.start(h.steps)
            for i in range(1, len(h.steps)):
                sims[name] += s.similarities(i, list(range(max(0, i - 8), i)))
    return {"traces": len(texts), "steps": total, "same_parents": same / total, "turning_steps": turned,
            "turning_agree": turned_same / max(1, turned),
            "similarity_quartiles": {k: [round(float(q), 2) for q in np.percentile(v, [25, 50, 75, 90])]
                                     for k, v in sims.items()}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--limit", type=int, default=None, help="only the first N candidates")
    ap.add_argument("--embedding-traces", type=int, default=8, help="30k traces per kind (0: skip)")
    ap.add_argument("--agreement", type=int, default=0,
                    help="compare heuristic and embedding DAGs on this many long-reasoner traces")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch intra-op threads for the embedding part (default: torch's, = cores); "
                         "on a busy machine 1 avoids threads waiting on each other")
    ap.add_argument("--analyze-traces", type=int, default=200,
                    help="longest traces for the ME² part (0: skip)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs per trace in the ME² part (the best counts)")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="directory holding an older copy of the package as thinkrm_baseline, for comparison")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    path = args.shared / "skythought-math500" / "candidates.jsonl"
    if not path.exists():
        sys.exit(f"error: {path} not found (pass --shared)")
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    load_before = os.getloadavg()[0]
    res = {"heuristic": bench_heuristic(path, args.limit)}
    h = res["heuristic"]
    print(f"partition + heuristic DAG over {h['traces']} traces (longest {h['max_chars']:,} chars), "
          f"load average {load_before:.1f} on {os.cpu_count()} CPUs")
    print(f"  per trace: median {h['median_ms']:.2f} ms  p90 {h['p90_ms']:.2f}  p99 {h['p99_ms']:.1f}  "
          f"max {h['max_ms']:.0f} ms ({h['max_trace_chars']:,} chars)   [targets: median < 20, max < 1000]")
    print(f"  partition alone: median {h['split_median_ms']:.2f} ms, max {h['split_max_ms']:.1f} ms")
    ratio = h["split_total_s"] / h["baseline_total_s"]
    print(f"  totals over all traces: str.split('\\n\\n') baseline {h['baseline_total_s'] * 1e3:.0f} ms, "
          f"partition {h['split_total_s'] * 1e3:.0f} ms ({ratio:.0f}x the baseline), heuristic DAG "
          f"{h['dag_total_s'] * 1e3:.0f} ms")
    print(f"  throughput {h['traces_per_s']:.0f} traces/s ({h['elapsed_s']:.1f} s incl. JSON parsing)")
    print(f"  memory: RSS {h['rss_after_10pct_mib']:.0f} MiB after 10% of traces, "
          f"{h['rss_end_mib']:.0f} MiB at the end, peak {h['peak_rss_mib']:.0f} MiB")
    print("  steps per trace by model (p10 / median / p90 / max):")
    for model, s in h["steps_by_model"].items():
        print(f"    {model:55s} {s['p10']:>4} / {s['median']:>5} / {s['p90']:>4} / {s['max']:>4}")
    if args.analyze_traces:
        res["analyze"] = a = bench_analyze(args.shared, args.analyze_traces, args.repeats, args.baseline)
        print(f"ME² analysis (partition + heuristic DAG + signals) on the {a['traces']} longest traces "
              f"({a['min_chars']:,}-{a['max_chars']:,} chars, median {a['median_chars']:,.0f}), "
              f"ms per 30,000 chars, best of {args.repeats}, load average {os.getloadavg()[0]:.1f}")
        for name in ("baseline", "new"):
            if name in a:
                r = a[name]
                print(f"  {name:8s} median {r['median']:.1f}  p90 {r['p90']:.1f}  max {r['max']:.1f} "
                      f"({r['max_chars']:,} chars); shortest quarter {r['short_quarter']:.1f}, "
                      f"longest quarter "
                      f"{r['long_quarter']:.1f} (ratio {r['linearity']:.2f}); slowest trace "
                      f"{r['slowest_ms']:.0f} ms ({r['slowest_chars']:,} chars)")
        if "baseline" in a:
            b, n = a["baseline"], a["new"]
            print(f"  speed-up: median {b['median'] / n['median']:.2f}x, p90 {b['p90'] / n['p90']:.2f}x, "
                  f"max {b['max'] / n['max']:.2f}x; outputs identical on {a['identical']}/{a['traces']} "
                  "traces")
        n = a["new"]
        ok = n["median"] <= 20.0 and n["linearity"] <= 1.5
        print(f"  target median <= 20 ms per 30k chars and linear (longest/shortest quarter <= 1.5): "
              f"{'PASS' if ok else 'FAIL'}")
    if args.embedding_traces:
        res["embedding"] = e = bench_embedding(path, args.embedding_traces)
        import torch

        print(f"embedding structurer on 30k-char traces (model load {e['model_load_s']:.1f} s, excluded), "
              f"{torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f}   "
              "[target: < 1 s]")
        for label in ("real>25k", "dense"):
            if label in e:
                s = e[label]
                print(f"  {label:9s} {s['traces']} traces, ~{s['median_steps']:.0f} steps: median "
                      f"{s['median_wall_s']:.2f} s wall ({s['median_cpu_s']:.2f} s CPU), "
                      f"max {s['max_wall_s']:.2f} s")
    if args.agreement:
        res["agreement"] = a = bench_agreement(path, args.agreement)
        print(f"heuristic vs embedding on {a['traces']} {LONG_REASONER} traces ({a['steps']} steps): same "
              f"parents for {a['same_parents']:.0%} of steps; of the {a['turning_steps']} steps either one "
              f"backtracks or merges, same action and target for {a['turning_agree']:.0%}")
        for name, q in a["similarity_quartiles"].items():
            print(f"  {name:9s} similarity to the 8 previous steps, p25/p50/p75/p90: {q}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
