"""Load test of `thinkrm serve`: dynamic micro-batching on vs off, same scorer, same machine, same run.

1,000 requests (one trace each, as verl and async RL rollouts send them) from 100 concurrent clients over
loopback to a real `thinkrm serve` subprocess, through the SGLang protocol (`/v1/embeddings`). The scorer
is a real transformers reward model (by default the tiny Llama the tests build; `--scorer` takes any spec,
e.g. `lite` or `hf:DIR` of a trained TRM), so each scorer call pays a real forward pass. Targets: zero
errors in both runs, throughput with batching >= 3x without it.

    .venv/bin/python benchmarks/bench_serve.py                 # ~1-2 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_serve.py --requests 2000 --clients 200 --scorer hf:out/trm
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["Let me compute 12 + 30 = 42.", "Wait, that is wrong. Actually 7 * 8 = 56, not 54.",
         "Alternatively, we can factor the quadratic x^2 - 5x + 6 = (x - 2)(x - 3).",
         "Hmm, let me verify: 3 + 3 = 6.", "So the sum of the digits 1 2 3 4 5 6 7 8 9 0 is 45.",
         "The problem asks how many seconds are in 7.8 minutes; 60 * 7.8 = 468."]


def traces(n: int, seed: int = 0) -> list[str]:
    """Formatted `prompt + "\\n" + reasoning` texts of varied length (3 to 24 steps), reproducible."""
    rng = random.Random(seed)
    return [f"Problem {i}: what is the answer?\n" + "\n\n".join(rng.choice(STEPS) for _ in range(rng.randint(3, 24)))
            for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(scorer: str, port: int, extra: list[str], threads: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(ROOT / "src"))
    cmd = [sys.executable, "-c", "from thinkrm.cli import main; main()", "serve", "--scorer", scorer,
           "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not come up within 120 s")


async def load(url: str, texts: list[str], clients: int) -> tuple[float, list[float], list[str]]:
    """Send every text once, `clients` at a time; returns wall seconds, per-request latencies, errors."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for t in texts:
        queue.put_nowait(t)
    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:

        async def worker() -> None:
            while not queue.empty():
                text = queue.get_nowait()
                start = time.perf_counter()
                try:
                    r = await client.post("/v1/embeddings", json={"model": "trm", "input": text})
                    if r.status_code != 200 or len(r.json()["data"]) != 1:
                        errors.append(f"HTTP {r.status_code}: {r.text[:100]}")
                except (httpx.HTTPError, ValueError, KeyError) as e:
                    errors.append(f"{type(e).__name__}: {e}")
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - start, latencies, errors


def batch_stats(metrics: str) -> tuple[float, float]:
    """(items scored, scorer calls) so far, from the server's /metrics."""
    total = float(re.search(r"^thinkrm_batch_size_sum (\S+)$", metrics, re.M).group(1))
    count = float(re.search(r"^thinkrm_batch_size_count (\S+)$", metrics, re.M).group(1))
    return total, count


def run(scorer: str, mode_flags: list[str], texts: list[str], clients: int, threads: int) -> dict:
    port = free_port()
    proc = start_server(scorer, port, mode_flags, threads)
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(load(url, traces(50, seed=1), clients=10))  # warm-up: first forward passes, connections
        before = httpx.get(f"{url}/metrics").text
        wall, lat, errors = asyncio.run(load(url, texts, clients))
        after = httpx.get(f"{url}/metrics").text
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    lat.sort()
    (items0, calls0), (items1, calls1) = batch_stats(before), batch_stats(after)
    calls = int(calls1 - calls0)
    return {"throughput": len(texts) / wall, "wall": wall, "p50": statistics.median(lat),
            "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))], "errors": errors,
            "scorer_calls": calls, "mean_batch": (items1 - items0) / calls if calls else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scorer", help="scorer spec (default: a tiny Llama reward model built here)")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the server (2 shared CPU cores here)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        scorer = args.scorer
        if scorer is None:
            sys.path.insert(0, str(ROOT / "tests"))
            from tiny_models import make_reward_model

            scorer = f"hf:{make_reward_model(Path(tmp) / 'tiny-rm')}"
        texts = traces(args.requests)
        print(f"scorer {scorer}; {args.requests} requests, {args.clients} concurrent clients, "
              f"mean {statistics.mean(map(len, texts)):.0f} chars per trace")
        results = {}
        for name, flags in [("batching on", ["--max-batch-size", str(args.max_batch_size),
                                             "--max-wait-ms", str(args.max_wait_ms)]),
                            ("batching off", ["--max-batch-size", "1"])]:
            r = results[name] = run(scorer, flags, texts, args.clients, args.threads)
            print(f"{name:13s}: {r['throughput']:7.1f} req/s  p50 {r['p50'] * 1000:7.1f} ms  "
                  f"p99 {r['p99'] * 1000:7.1f} ms  errors {len(r['errors'])}  scorer calls {r['scorer_calls']} "
                  f"(mean batch {r['mean_batch']:.1f})  wall {r['wall']:.1f} s")
            for e in r["errors"][:5]:
                print("   ", e)
        ratio = results["batching on"]["throughput"] / results["batching off"]["throughput"]
        errors = sum(len(r["errors"]) for r in results.values())
        print(f"throughput ratio on/off: {ratio:.2f}x (target >= 3x); errors: {errors} (target 0)")
        if errors or ratio < 3:
            sys.exit(1)


if __name__ == "__main__":
    main()
