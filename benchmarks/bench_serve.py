"""Load test of `thinkrm serve`: dynamic micro-batching on vs off, same scorer, same machine, same run.

1,000 requests (one trace each, as verl and async RL rollouts send them) from 100 concurrent clients over
loopback to a real `thinkrm serve` subprocess, through the SGLang protocol (`/v1/embeddings`). The scorer
is a real transformers reward model (by default the tiny Llama the tests build; `--scorer` takes any spec,
e.g. `lite` or `hf:DIR` of a trained TRM), so each scorer call pays a real forward pass. Targets: zero
errors in every run, throughput with batching >= 3x without it.

What batching can win depends on the scorer's cost shape. A GPU-served TRM costs about the same per call
whatever the batch size (until the GPU saturates): the regime batching exists for. On CPU the tiny model
is in that regime for short inputs (`--steps 1-4`, the default: Python and kernel-dispatch overhead per
call dominate), while on long inputs (`--steps 3-24`) its attention cost grows per item and batching can
only save the per-call part. Both are worth measuring; docs/serving.md reports both.

The machine is shared, so on and off runs alternate for `--rounds` rounds and the best of each is kept
(the run least disturbed by other processes), all rounds printed.

    .venv/bin/python benchmarks/bench_serve.py                  # ~2-3 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_serve.py --steps 3-24     # long traces
    .venv/bin/python benchmarks/bench_serve.py --scorer hf:out/trm --requests 2000 --clients 200
    .venv/bin/python benchmarks/bench_serve.py --scorer lite --vs-score --requests 500 --rounds 2
                                                                # server vs `thinkrm score` (target >= 0.8x)
"""

from __future__ import annotations

import argparse
import asyncio
import json
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


def traces(n: int, seed: int = 0, steps: tuple[int, int] = (1, 4)) -> list[str]:
    """Formatted `prompt + "\\n" + reasoning` texts with a random number of steps in `steps`, reproducible."""
    rng = random.Random(seed)
    return [f"Problem {i}: what is the answer?\n"
            + "\n\n".join(rng.choice(STEPS) for _ in range(rng.randint(*steps))) for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_env(**extra: str) -> dict[str, str]:
    """This environment, offline, with this tree's src first on PYTHONPATH, plus `extra`: a subprocess runs this
    tree's thinkrm whether it is installed or not (a GPU machine runs a bare copy of the tree)."""
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=path, **extra)


def serve_command(*args: str) -> list[str]:
    """`thinkrm serve ARGS` run by this interpreter (no console script needed)."""
    return [sys.executable, "-c", "from thinkrm.cli import main; main()", "serve", *args]


def measure_server(cmd: list[str], port: int, texts: list[str], clients: int, env: dict[str, str],
                   timeout: float = 180.0) -> tuple[float, list[str], float]:
    """Start the server `cmd` (listening on `port`), wait for /health, warm up with `clients` requests, then send
    `texts` one per request from `clients` connections: (items/s, errors, seconds to /health). The server is
    stopped after, whatever happened."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_healthy(proc, f"http://127.0.0.1:{port}", timeout=timeout, poll=0.05)
        startup = time.perf_counter() - started
        asyncio.run(load(port, texts[:clients], clients))  # warm-up: connections, first batches
        wall, _, errors = asyncio.run(load(port, texts, clients))
        return len(texts) / wall, errors, startup
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def start_server(scorer: str, port: int, extra: list[str], threads: int) -> subprocess.Popen:
    env = tree_env(OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    cmd = serve_command("--scorer", scorer, "--port", str(port), *extra)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_until_healthy(proc, f"http://127.0.0.1:{port}")
    return proc


def wait_until_healthy(proc: subprocess.Popen, url: str, timeout: float = 120.0, poll: float = 0.2) -> None:
    """Return once the `thinkrm serve` subprocess `proc` answers `url`/health with 200; raise (killing it on
    the timeout) if it exits first or does not come up in `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            detail = f": {proc.stderr.read()[-2000:]}" if proc.stderr is not None else ""
            raise RuntimeError(f"server exited with {proc.returncode}{detail}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"server did not come up within {timeout:.0f} s")
        time.sleep(poll)


async def post_json(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str,
                    payload: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 keep-alive POST on an open connection.

    The load generator shares two CPU cores with the server, so it speaks HTTP directly over asyncio
    streams (like wrk does in C) instead of through httpx, whose per-request cost would be measured as
    server slowness.
    """
    writer.write(f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
                 f"content-length: {len(payload)}\r\n\r\n".encode() + payload)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return status, await reader.readexactly(length)


async def load(port: int, texts: list[str], clients: int) -> tuple[float, list[float], list[str]]:
    """Send every text once, `clients` connections at a time; returns wall seconds, latencies, errors."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for t in texts:
        queue.put_nowait(t)
    latencies: list[float] = []
    errors: list[str] = []
    host = f"127.0.0.1:{port}"

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not queue.empty():
                payload = json.dumps({"model": "trm", "input": queue.get_nowait()}).encode()
                start = time.perf_counter()
                try:
                    status, body = await post_json(reader, writer, host, "/v1/embeddings", payload)
                    if status != 200 or len(json.loads(body)["data"]) != 1:
                        errors.append(f"HTTP {status}: {body[:100]!r}")
                except (OSError, asyncio.IncompleteReadError, ValueError, KeyError) as e:
                    errors.append(f"{type(e).__name__}: {e}")
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                latencies.append(time.perf_counter() - start)
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return time.perf_counter() - start, latencies, errors


def server_cpu(pid: int) -> float:
    """CPU seconds the server process has used (all threads). Unlike wall time, other processes on a
    shared machine barely move it, so CPU per request is the steadier measure of what batching saves."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def batch_stats(metrics: str) -> tuple[float, float]:
    """(items scored, scorer calls) so far, from the server's /metrics."""
    total = float(re.search(r"^thinkrm_batch_size_sum (\S+)$", metrics, re.M).group(1))
    count = float(re.search(r"^thinkrm_batch_size_count (\S+)$", metrics, re.M).group(1))
    return total, count


_IN_PROCESS = """
import json, sys, time
from thinkrm.scoring import load_scorer
texts = json.load(sys.stdin)
items = [tuple(t.split("\\n", 1)) for t in texts]  # the server splits a formatted text at its first newline
s = load_scorer(sys.argv[1])
s.score(items[:50])
t = time.perf_counter()
s.score(items)
print(len(items) / (time.perf_counter() - t))
"""


def in_process(scorer: str, texts: list[str], threads: int) -> float:
    """Items/s of `thinkrm score`'s path (`load_scorer(spec).score`, its own batching) on the same texts, in a
    fresh process with the server's thread settings: what the server's throughput is measured against."""
    env = tree_env(OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    out = subprocess.run([sys.executable, "-c", _IN_PROCESS, scorer], input=json.dumps(texts), env=env,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run(scorer: str, mode_flags: list[str], texts: list[str], clients: int, threads: int) -> dict:
    port = free_port()
    proc = start_server(scorer, port, mode_flags, threads)
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(load(port, traces(50, seed=1), clients=10))  # warm-up: first forward passes
        before = httpx.get(f"{url}/metrics").text
        cpu0 = server_cpu(proc.pid)
        wall, lat, errors = asyncio.run(load(port, texts, clients))
        cpu = server_cpu(proc.pid) - cpu0
        after = httpx.get(f"{url}/metrics").text
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    lat.sort()
    (items0, calls0), (items1, calls1) = batch_stats(before), batch_stats(after)
    calls = int(calls1 - calls0)
    return {"throughput": len(texts) / wall, "wall": wall, "p50": statistics.median(lat),
            "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))], "errors": errors,
            "scorer_calls": calls, "mean_batch": (items1 - items0) / calls if calls else 0.0,
            "cpu_ms": cpu / len(texts) * 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scorer", help="scorer spec (default: a tiny Llama reward model built here)")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    ap.add_argument("--steps", default="1-4", help="reasoning steps per trace, MIN-MAX")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vs-score", action="store_true",
                    help="also score the same texts in-process each round (the `thinkrm score` path) and "
                         "report server / in-process throughput (target >= 0.8)")
    args = ap.parse_args()
    low, _, high = args.steps.partition("-")
    steps = (int(low), int(high or low))

    with tempfile.TemporaryDirectory() as tmp:
        scorer = args.scorer
        if scorer is None:
            sys.path.insert(0, str(ROOT / "tests"))
            from tiny_models import make_reward_model

            scorer = f"hf:{make_reward_model(Path(tmp) / 'tiny-rm')}"
        texts = traces(args.requests, steps=steps)
        print(f"scorer {scorer}; {args.requests} requests, {args.clients} concurrent clients, "
              f"{args.steps} steps per trace (mean {statistics.mean(map(len, texts)):.0f} chars)")
        modes = {"batching on": ["--max-batch-size", str(args.max_batch_size),
                                 "--max-wait-ms", str(args.max_wait_ms)],
                 "batching off": ["--max-batch-size", "1"]}
        best: dict[str, dict] = {}
        ratios: list[float] = []
        cpu_ratios: list[float] = []
        vs_score: list[float] = []
        errors = 0
        for round_ in range(1, args.rounds + 1):
            this_round = {}
            for name, flags in modes.items():
                r = this_round[name] = run(scorer, flags, texts, args.clients, args.threads)
                errors += len(r["errors"])
                print(f"round {round_} {name:13s}: {r['throughput']:7.1f} req/s  "
                      f"p50 {r['p50'] * 1000:7.1f} ms  p99 {r['p99'] * 1000:7.1f} ms  "
                      f"errors {len(r['errors'])}  "
                      f"scorer calls {r['scorer_calls']} (mean batch {r['mean_batch']:.1f})  "
                      f"server CPU {r['cpu_ms']:.2f} ms/req  wall {r['wall']:.1f} s", flush=True)
                for e in r["errors"][:5]:
                    print("   ", e)
                if name not in best or r["throughput"] > best[name]["throughput"]:
                    best[name] = r
            ratios.append(this_round["batching on"]["throughput"] / this_round["batching off"]["throughput"])
            if args.vs_score:
                direct = in_process(scorer, texts, args.threads)
                vs_score.append(this_round["batching on"]["throughput"] / direct)
                print(f"round {round_} in-process   : {direct:7.1f} items/s (load_scorer(...).score, same "
                      f"texts); server with batching / in-process {vs_score[-1]:.2f}x", flush=True)
            cpu_ratios.append(this_round["batching off"]["cpu_ms"] / this_round["batching on"]["cpu_ms"])
        on, off = best["batching on"], best["batching off"]
        print(f"best of {args.rounds}: on {on['throughput']:.1f} req/s (p50 {on['p50'] * 1000:.0f} ms, "
              f"p99 {on['p99'] * 1000:.0f} ms), off {off['throughput']:.1f} req/s "
              f"(p50 {off['p50'] * 1000:.0f} ms, p99 {off['p99'] * 1000:.0f} ms)")
        # Each round's on and off runs are minutes apart at most, so their ratio is the least noisy measure.
        ratio = statistics.median(ratios)
        print(f"throughput ratio on/off per round: {', '.join(f'{x:.2f}x' for x in ratios)}; "
              f"median {ratio:.2f}x (target >= 3x); errors in all runs: {errors} (target 0)")
        print(f"server CPU per request off/on per round: {', '.join(f'{x:.2f}x' for x in cpu_ratios)}; "
              f"median {statistics.median(cpu_ratios):.2f}x")
        if vs_score:
            print(f"server / in-process throughput per round: {', '.join(f'{x:.2f}x' for x in vs_score)}; "
                  f"median {statistics.median(vs_score):.2f}x (target >= 0.8)")
        if errors or ratio < 3:
            sys.exit(1)


if __name__ == "__main__":
    main()
