"""Hostile clients against a real `thinkrm serve`: does the server hold, and do ordinary requests keep their
latency? One line per probe; each probe starts its own server subprocess on 127.0.0.1 and kills it after.

The probes replay issue 16's findings, bounded in size and time so the whole run takes under 3 minutes:

* oversized header: one request whose header grows to 64 MiB (or until the server refuses it), with a
  `/health` sampler running; reports what the server answered, how much it took in, its RSS growth and
  the sampler's latency.
* slow headers: 300 half-sent requests against a server limited to 256 file descriptors, held 12 s;
  reports how many the server still holds at the end and how ordinary requests (a new connection each)
  fared meanwhile.
* verifier: a `/get_reward` whose labels make math-verify run until its per-item timeout, and meanwhile
  a 1-item `/get_reward` without labels (scoring path) and one with labels (verification path).
* analysis: six concurrent `/score` requests with `analysis: true` of 4.3 MB each, and a 1-item
  `/get_reward` sampler for 15 s.
* bad inputs: 63 good `/v1/embeddings` requests merged with one holding a lone surrogate (TRM-lite's
  tokenizer refuses those), then NUL, invalid UTF-8, deep nesting, text/plain, a non-boolean `analysis`;
  reports the statuses, the scorer calls the merged batch cost and good rows lost.
* keep-alive after SIGTERM: a connection reused 0.3 s after SIGTERM, and 50 clients under load through a
  SIGTERM: requests sent before it answered 200, after it 503, and none reset.
* memory: TRM-lite served 10 rounds of 300 varied requests from 16 clients; RSS after each round.

    .venv/bin/python benchmarks/bench_reliability.py                  # all probes, ~3 min
    .venv/bin/python benchmarks/bench_reliability.py --only header slow
    .venv/bin/python benchmarks/bench_reliability.py --src /tmp/old/src   # the same probes on another tree
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Self

import httpx
import psutil
from bench_serve import STEPS, free_port, post_json, traces, wait_until_healthy

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # every probe stays on loopback
P = "User: what is the answer?\nAssistant:"


class Server:
    """`thinkrm serve` in a subprocess; `nofile` caps its file descriptors (soft and hard)."""

    def __init__(self, src: Path, scorer: str = "length", flags: tuple[str, ...] = (),
                 nofile: int | None = None):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        # As a user starts it: torch and the tokenizer pick their own thread counts.
        env = dict(os.environ, PYTHONPATH=str(src), HF_HUB_OFFLINE="1")
        for name in ("THINKRM_API_KEY", "OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM"):
            env.pop(name, None)
        code = "from thinkrm.cli import main; main()"
        if nofile:  # set in the child itself: preexec_fn is unsafe once threads run
            code = f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile},) * 2); {code}"
        cmd = [sys.executable, "-c", code, "serve", "--scorer", scorer, "--host", HOST,
               "--port", str(self.port), *flags]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until_healthy(self.proc, self.url, poll=0.1)

    def rss_mib(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Sampler:
    """Sends one ordinary request every `every` seconds in a thread (a new connection each, as a fresh
    client would) and records latencies and failures."""

    def __init__(self, url: str, path: str = "/health", body: dict | None = None, every: float = 0.1,
                 timeout: float = 60):
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()

        def run() -> None:
            while not self._stop.is_set():
                start = time.perf_counter()
                try:
                    with httpx.Client(timeout=timeout) as c:
                        r = c.post(url + path, json=body) if body is not None else c.get(url + path)
                    if r.status_code == 200:
                        self.latencies.append(time.perf_counter() - start)
                    else:
                        self.failures.append(f"HTTP {r.status_code}")
                except httpx.HTTPError as e:
                    self.failures.append(type(e).__name__)
                self._stop.wait(max(0.0, every - (time.perf_counter() - start)))

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> str:
        self._stop.set()
        self._thread.join()
        lat = sorted(self.latencies)
        if not lat:
            return f"0 ok, {len(self.failures)} failed"
        return (f"{len(lat)} ok, {len(self.failures)} failed, p50 {statistics.median(lat) * 1000:.0f} ms, "
                f"max {lat[-1] * 1000:.0f} ms")


def reward_body(labels: bool = False) -> dict:
    body = {"query": [P + " 2 + 3 = 5.</think> \\boxed{5}"], "prompts": [P]}
    return {**body, "labels": ["5"]} if labels else body


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server closed this connection (possibly after writing a response we have not read)."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


# ------------------------------------------------------------------------------------------------ probes

def probe_header(src: Path) -> str:
    with Server(src) as server:
        rss0 = server.rss_mib()
        sampler = Sampler(server.url)
        sock = socket.create_connection((HOST, server.port))
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Big: ")
        chunk, sent, start = b"a" * (1 << 20), 0, time.monotonic()
        try:
            while sent < 64 << 20 and time.monotonic() - start < 20:
                sock.sendall(chunk)
                sent += len(chunk)
            sock.sendall(b"\r\nContent-Length: 2\r\n\r\n{}")
        except OSError:
            pass
        sock.settimeout(max(1.0, 30 - (time.monotonic() - start)))
        try:
            head = sock.recv(200)
            status = head.split(b" ", 2)[1].decode() if head else "connection closed"
        except OSError as e:
            status = type(e).__name__
        took = time.monotonic() - start
        sock.close()
        health = sampler.stop()
        rss = server.rss_mib() - rss0
    return (f"oversized header: sent {sent / 2**20:.0f} MiB in {took:.1f} s, answered {status}; server RSS "
            f"{rss:+.0f} MiB; /health meanwhile: {health}")


def probe_slow_headers(src: Path, n: int = 300, hold: float = 12.0) -> str:
    with Server(src, nofile=256) as server:
        socks = []
        for _ in range(n):
            try:
                s = socket.create_connection((HOST, server.port), timeout=5)
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finished
                socks.append(s)
            except OSError:
                break
        sampler = Sampler(server.url, every=0.2, timeout=5)
        time.sleep(hold)
        normal = sampler.stop()
        held = sum(not closed_by_peer(s) for s in socks)
        for s in socks:
            s.close()
    return (f"slow headers: {len(socks)} half-sent requests, server limited to 256 fds; after {hold:.0f} s "
            f"the server still held {held}; ordinary requests meanwhile: {normal}")


def probe_verifier(src: Path, items: int = 4) -> str:
    with Server(src) as server, httpx.Client(base_url=server.url, timeout=300) as client:
        client.post("/get_reward", json=reward_body(labels=True))  # starts the verifier's worker processes
        evil = {"query": [P + " x</think> \\boxed{3}"] * items, "prompts": [P] * items,
                "labels": ["\\boxed{100000000!}"] * items}
        took: dict[str, float] = {}

        def send_evil() -> None:
            start = time.perf_counter()
            client.post("/get_reward", json=evil)
            took["evil"] = time.perf_counter() - start

        thread = threading.Thread(target=send_evil)
        thread.start()
        time.sleep(0.5)
        for name, labels in (("without labels", False), ("with labels", True)):
            start = time.perf_counter()
            r = httpx.post(f"{server.url}/get_reward", json=reward_body(labels), timeout=300)
            took[name] = time.perf_counter() - start
            took[name + " status"] = r.status_code
        thread.join()
    return (f"verifier: {items} pathological labels took {took['evil']:.1f} s; meanwhile a 1-item "
            f"/get_reward without labels took {took['without labels']:.2f} s "
            f"({took['without labels status']}), with labels {took['with labels']:.2f} s "
            f"({took['with labels status']})")


def probe_analysis(src: Path, requests: int = 6, seconds: float = 15.0) -> str:
    rng = random.Random(0)
    trace = "\n\n".join(rng.choice(STEPS) + f" {i}" for i in range(4000))[:200_000]
    body = json.dumps({"items": [{"prompt": "What is it?", "response": trace}] * 21,
                       "analysis": True}).encode()
    with Server(src) as server:
        statuses: list[int | str] = []

        def send() -> None:
            try:
                r = httpx.post(f"{server.url}/score", content=body, timeout=seconds + 5,
                               headers={"content-type": "application/json"})
                statuses.append(r.status_code)
            except httpx.HTTPError as e:
                statuses.append(type(e).__name__)

        threads = [threading.Thread(target=send, daemon=True) for _ in range(requests)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        sampler = Sampler(server.url, "/get_reward", reward_body(), every=0.2)
        time.sleep(seconds)
        latency = sampler.stop()
        answered = {s: statuses.count(s) for s in set(statuses)}
    return (f"analysis: {requests} x {len(body) / 1e6:.1f} MB /score with analysis; 1-item /get_reward "
            f"meanwhile ({seconds:.0f} s): {latency}; analysis answers within the window: "
            f"{answered or 'none'}")


def probe_bad_inputs(server: Server) -> str:
    calls0 = server.metric("thinkrm_batch_size_count") + server.metric("thinkrm_scorer_errors_total")
    texts = [f"Problem {i}\n" + t.split("\n", 1)[1] for i, t in enumerate(traces(63, seed=3))]
    bodies = [json.dumps({"input": t}).encode() for t in texts]
    bodies.insert(31, json.dumps({"input": "Problem\nbad \ud800 text"}).encode())

    async def send_all() -> list[int]:
        async def one(payload: bytes) -> int:
            reader, writer = await asyncio.open_connection(HOST, server.port)
            try:
                return (await post_json(reader, writer, HOST, "/v1/embeddings", payload))[0]
            finally:
                writer.close()

        return await asyncio.gather(*(one(b) for b in bodies))

    statuses = asyncio.run(send_all())
    calls = server.metric("thinkrm_batch_size_count") + server.metric("thinkrm_scorer_errors_total") - calls0
    lost = sum(s != 200 for i, s in enumerate(statuses) if i != 31)
    others = {"NUL": b'{"items": [{"prompt": "p", "response": "a\\u0000b"}]}',
              "invalid UTF-8": b'{"items": [{"prompt": "p", "response": "\xff\xfe"}]}',
              "depth 1000": b'{"items": ' + b"[" * 1000 + b"]" * 1000 + b"}",
              "depth 100000": b'{"items": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
              "analysis \"yes\"": b'{"items": [{"prompt": "p", "response": "r"}], "analysis": "yes"}',
              "text/plain": None}
    answers = {}
    for name, content in others.items():
        headers = {"content-type": "text/plain" if content is None else "application/json"}
        r = httpx.post(f"{server.url}/score", headers=headers, timeout=60,
                       content=content or b'{"items": [{"prompt": "p", "response": "r"}]}')
        answers[name] = r.status_code
    not_4xx = [k for k, s in answers.items() if not 400 <= s < 500]
    return (f"bad inputs: lone surrogate merged with 63 good -> {statuses[31]}, {int(calls)} scorer calls, "
            f"good rows lost {lost}; {', '.join(f'{k} {s}' for k, s in answers.items())}; not 4xx: "
            f"{len(not_4xx) + (not 400 <= statuses[31] < 500)} of {len(others) + 1}")


def probe_keep_alive(src: Path) -> str:
    with Server(src) as server:
        conn = http.client.HTTPConnection(HOST, server.port, timeout=10)  # one keep-alive connection
        conn.request("GET", "/health")
        first = conn.getresponse()
        first.read()
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        try:
            conn.request("GET", "/health")
            again = conn.getresponse()
            again.read()
            second = f"{again.status}" + (" + Connection: close" if again.will_close else "")
        except (OSError, http.client.HTTPException) as e:
            second = type(e).__name__
        conn.close()
        server.proc.wait(timeout=60)
        first = first.status
    with Server(src) as server:
        sent_before, answers = _load_through_sigterm(server)

    def tally(rows: list) -> str:
        counts: dict[str, int] = {}
        for _, status in rows:
            counts[str(status)] = counts.get(str(status), 0) + 1
        return ", ".join(f"{n} x {k}" for k, n in sorted(counts.items())) or "none"

    # A request sent just before the signal may reach the server after it: a 503 then is right (and
    # retryable); a reset or no answer is a lost row.
    lost = sum(1 for _, status in answers if status not in (200, 503))
    return (f"keep-alive after SIGTERM: first {first}, reused 0.3 s after SIGTERM -> {second}; 50 clients "
            f"through a SIGTERM: sent before it {tally([a for a in answers if a[0] < sent_before])}; after "
            f"{tally([a for a in answers if a[0] >= sent_before])}; rows lost (no answer) {lost}")


def _load_through_sigterm(server: Server, clients: int = 50, signal_at: float = 1.0) -> tuple[float, list]:
    """Clients send back to back on keep-alive connections; SIGTERM lands after `signal_at` seconds.

    Returns the send time of the SIGTERM and (send time, status or error name) of every request."""
    answers: list[tuple[float, int | str]] = []
    payload = json.dumps({"input": "p\n2 + 3 = 5"}).encode()
    start = time.monotonic()

    async def client() -> None:
        try:
            reader, writer = await asyncio.open_connection(HOST, server.port)
        except OSError:
            return
        while time.monotonic() - start < signal_at + 1.5:
            sent = time.monotonic() - start
            try:
                status, _ = await post_json(reader, writer, HOST, "/v1/embeddings", payload)
            except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                answers.append((sent, type(e).__name__))
                return
            answers.append((sent, status))
            if status != 200:  # a 503 closes the connection; a real client would go elsewhere now
                return

    async def run() -> float:
        tasks = [asyncio.ensure_future(client()) for _ in range(clients)]
        await asyncio.sleep(signal_at)
        sent = time.monotonic() - start
        server.proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*tasks)
        return sent

    return asyncio.run(run()), answers


def probe_memory_and_bad_inputs(src: Path, rounds: int = 10, per_round: int = 300) -> list[str]:
    with Server(src, scorer="lite", flags=("--max-wait-ms", "50")) as server:
        lines = [probe_bad_inputs(server)]
        rss = []
        for r in range(rounds):
            asyncio.run(_load_texts(server.port, varied_requests(per_round, seed=100 + r), clients=16))
            rss.append(server.rss_mib())
        third = rss[min(2, len(rss) - 1)]
        lines.append(f"memory (lite, {rounds} x {per_round} requests): RSS per round "
                     f"{', '.join(f'{x:.0f}' for x in rss)} MiB; last vs round 3: "
                     f"{(rss[-1] / third - 1) * 100:+.1f}%")
    return lines


def varied_requests(n: int, seed: int) -> list[str]:
    """`n` traces of 1-40 steps with prompts of varied length, one per request: from a few concurrent
    clients every merged scorer call has a new shape, the traffic under which a model server's heap
    fragments (a fixed shape reuses the same blocks)."""
    rng = random.Random(seed)
    return [f"{'Given the setup above, ' * rng.randint(0, 12)}{t}"
            for i in range(n) for t in traces(1, seed=seed * 100_000 + i, steps=(1, rng.choice([4, 12, 40])))]


async def _load_texts(port: int, requests: list[str], clients: int) -> None:
    queue = list(reversed(requests))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while queue:
                payload = json.dumps({"input": queue.pop()}).encode()
                await post_json(reader, writer, HOST, "/v1/embeddings", payload)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(clients)))


PROBES = {"header": probe_header, "slow": probe_slow_headers, "verifier": probe_verifier,
          "analysis": probe_analysis, "keepalive": probe_keep_alive, "lite": probe_memory_and_bad_inputs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=list(PROBES), help="probes to run (default: all)")
    ap.add_argument("--src", type=Path, default=ROOT / "src", help="the thinkrm source tree to serve")
    args = ap.parse_args()
    print(f"thinkrm serve from {args.src}, 127.0.0.1 only", flush=True)
    start = time.monotonic()
    for name, probe in PROBES.items():
        if args.only and name not in args.only:
            continue
        t = time.monotonic()
        try:
            result = probe(args.src)
        except Exception as e:  # one broken probe must not hide the others' numbers
            result = f"{name}: probe failed: {type(e).__name__}: {e}"
        for line in [result] if isinstance(result, str) else result:
            print(f"{line}  [{time.monotonic() - t:.0f} s]", flush=True)
    print(f"total {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
