"""EndpointPool and multi-URL scorer specs against real replicas on 127.0.0.1, killed and restarted."""

import json
import pickle
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from thinkrm.endpoints import EndpointPool, ServerResponseError, parse_urls
from thinkrm.formatting import format_input
from thinkrm.scoring import load_scorer


def items(n, start=0):
    return [(f"prompt {i}", f"steps #{i}") for i in range(start, start + n)]


def model(text):
    """Every replica's 'reward model': distinct per item, so a score in the wrong place is caught."""
    return int(text.rsplit("#", 1)[1]) / 4 - 3


def expected(batch):
    return [model(format_input(p, r)) for p, r in batch]


class Replica:
    """vLLM's /classify in a thread. `kill` stops it as a crash would (listener closed, open connections
    cut); `start` brings it back on the same port. `answered` holds the texts whose scores were delivered."""

    def __init__(self):
        self.port = 0
        self.received = 0
        self.answered = []
        self.script = []  # canned (status, headers) answers to give first
        self.delay = 0.0
        self.hold_from = None  # from this request on (1-based) every request hangs until `release` is set
        self.holding, self.release = threading.Event(), threading.Event()
        self.lock = threading.Lock()
        self.start()

    def start(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                with outer.lock:
                    outer.connections.append(self.connection)
                    outer.received += 1
                    n = outer.received
                    status, headers = outer.script.pop(0) if outer.script else (200, {})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if outer.hold_from is not None and n >= outer.hold_from:
                    outer.holding.set()
                    outer.release.wait(10)
                time.sleep(outer.delay)
                rows = [{"index": i, "probs": [model(t)]} for i, t in enumerate(body["input"])]
                payload = json.dumps({"data": rows}).encode() if status == 200 else b"busy"
                try:
                    self.send_response(status)
                    for k, v in {**headers, "Content-Length": str(len(payload))}.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # killed while holding this request: the client never gets its answer
                    return
                if status == 200:
                    with outer.lock:
                        outer.answered.extend(body["input"])

        self.connections = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *args: None  # writes to cut connections fail by design
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True).start()

    def kill(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        for conn in self.connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.release.set()


@pytest.fixture
def replicas():
    made = []

    def make(n):
        made.extend(Replica() for _ in range(n))
        return made[-n:]

    yield make
    for r in made:
        r.kill()


def status(pool):
    return {s.url: s for s in pool.status()}


def test_urls_comma_separated_scheme_optional():
    assert parse_urls("h1:8000, http://h2:8000/,https://h3") == \
        ["http://h1:8000", "http://h2:8000", "https://h3"]
    assert parse_urls(["h1:1"]) == ["http://h1:1"]
    with pytest.raises(ValueError, match="empty URL in 'h1:1,,h2:2'"):
        parse_urls("h1:1,,h2:2")
    with pytest.raises(ValueError, match="http://h1:1 is listed twice"):
        parse_urls("h1:1,http://h1:1/")
    scorer = load_scorer("vllm:h1:1,h2:2")
    assert scorer.base_urls == ["http://h1:1", "http://h2:2"]
    assert (scorer.base_url, scorer.url) == ("http://h1:1", "http://h1:1/classify")


def test_chunks_are_spread_over_healthy_replicas(replicas):
    reps = replicas(3)
    batch = items(90)
    with load_scorer("vllm:" + ",".join(r.url for r in reps), batch_size=3, concurrency=3) as scorer:
        assert scorer.score(batch) == expected(batch)
    assert [r.received >= 5 for r in reps] == [True] * 3 and sum(r.received for r in reps) == 30


def test_replica_killed_mid_run_is_taken_out_then_used_again_once_back(replicas):
    a, b, c = replicas(3)
    b.hold_from = 4  # b answers 3 chunks, then hangs on every chunk it gets until it is killed
    batch = items(300)
    scorer = load_scorer(f"vllm:{a.url},{b.url},{c.url}", batch_size=5, concurrency=6, backoff=0.3)
    with ThreadPoolExecutor(1) as run:
        scores = run.submit(scorer.score, batch)
        assert b.holding.wait(10)
        b.kill()  # the chunks b was holding are cut off and must be scored elsewhere
        assert scores.result(timeout=30) == expected(batch)

    texts = [format_input(p, r) for p, r in batch]
    # Every item's score was delivered by exactly one replica: none lost, none taken from two answers.
    assert Counter(a.answered + b.answered + c.answered) == Counter(texts)
    assert len(b.answered) == 15 and b.received > 3
    st = status(scorer.pool)
    assert st[b.url].failures >= 1 and st[a.url].errors == st[c.url].errors == 0
    assert st[b.url].errors == st[b.url].sent - 3  # every chunk b got after its third failed...
    # ...but it was taken out: besides the chunks it held, only a few attempts (queued when it died, or a
    # probe after its cooldown) went there. Kept in turn, a third of the ~45 chunks left would have.
    assert st[b.url].sent - b.received <= 3

    b.hold_from = None
    b.start()  # the same port again
    deadline = time.monotonic() + 10
    while not status(scorer.pool)[b.url].up:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    more = items(60, start=300)
    assert scorer.score(more) == expected(more)
    assert len(b.answered) > 15 and status(scorer.pool)[b.url].failures == 0
    texts += [format_input(p, r) for p, r in more]
    assert Counter(a.answered + b.answered + c.answered) == Counter(texts)


def test_replica_answering_503_with_retry_after_is_skipped(replicas):
    a, b = replicas(2)
    a.script = [(503, {"Retry-After": "5"})] * 50
    batch = items(40)
    t0 = time.monotonic()
    with load_scorer(f"vllm:{a.url},{b.url}", batch_size=2, concurrency=2) as scorer:
        assert scorer.score(batch) == expected(batch)
    assert time.monotonic() - t0 < 2  # nobody waited out the 5 s: b took the chunks at once
    assert 1 <= a.received <= 2 and a.answered == [] and len(b.answered) == 40
    st = status(scorer.pool)[a.url]
    assert st.failures == 1 and 4 < st.retry_in <= 5 and not st.up


def test_every_replica_down_is_a_connection_error_naming_all(replicas):
    reps = replicas(3)
    for r in reps:
        r.kill()
    scorer = load_scorer("openrlhf:" + ",".join(r.url for r in reps), retries=1, backoff=0.01)
    with pytest.raises(ConnectionError) as e:
        scorer.score(items(1))
    names = ", ".join(f"{r.url}/get_reward" for r in reps)
    assert str(e.value).startswith(f"cannot reach any of {names} after 6 attempts; last error from ")
    assert scorer.requests_sent == 6  # each replica once, one wait, each once more


def test_a_request_after_a_failed_one_waits_out_the_cooldown_and_gets_its_own_try(replicas):
    (a,) = replicas(1)
    a.kill()
    pool = EndpointPool(a.url, retries=0, backoff=0.2)
    with pytest.raises(ConnectionError, match=f"cannot reach {a.url}/classify after 1 attempts: "):
        pool.post_json("/classify", {"input": ["x #1"]})
    a.start()
    t0 = time.monotonic()
    assert pool.post_json("/classify", {"input": ["x #1"]})[1]["data"][0]["probs"] == [-2.75]
    assert time.monotonic() - t0 >= 0.15 and a.received == 1 and pool.requests_sent == 2


def test_only_one_probe_at_a_time_goes_to_a_replica_back_from_its_cooldown(replicas):
    a, b = replicas(2)
    a.script = [(503, {})]
    b.delay = 0.1
    pool = EndpointPool([a.url, b.url], backoff=0.05)
    assert pool.post_json("/classify", {"input": ["x #1"]})[0] == b.url + "/classify"
    time.sleep(0.06)
    a.delay = 0.2  # the probe is slow, so the other requests arrive while it is in flight
    with ThreadPoolExecutor(6) as run:
        answers = list(run.map(lambda i: pool.post_json("/classify", {"input": [f"x #{i}"]}), range(6)))
    assert [body["data"][0]["probs"][0] for _, body in answers] == [i / 4 - 3 for i in range(6)]
    assert a.received == 2 and b.received == 6  # least-in-flight alone would have sent a three
    assert status(pool)[a.url].failures == 0


def test_client_errors_and_read_timeouts_are_not_failed_over(replicas):
    a, b = replicas(2)
    a.script, b.script = [(404, {})], [(404, {})]
    pool = EndpointPool([a.url, b.url], timeout=0.2)
    url, resp = pool.request("POST", "/classify", json={"input": ["x #1"]})  # the caller judges a 4xx
    assert (url, resp.status_code) == (a.url + "/classify", 404)
    with pytest.raises(ServerResponseError, match=f"{b.url}/classify answered HTTP 404"):
        pool.post_json("/classify", {"input": ["x #1"]})
    a.delay = 1.0
    with pytest.raises(TimeoutError, match=f"{a.url}/classify did not answer within 0.2s"):
        pool.post_json("/classify", {"input": ["x #1"]})
    # Both servers are alive (the slow one probably still busy): neither is taken out nor sent it again.
    assert (a.received, b.received) == (2, 1) and [s.failures for s in pool.status()] == [0, 0]


def test_pickled_scorer_and_pool_still_score(replicas):
    a, b = replicas(2)
    scorer = load_scorer(f"vllm:{a.url},{b.url}", batch_size=2, concurrency=2, api_key="k")
    assert scorer.score(items(6)) == expected(items(6))
    copy = pickle.loads(pickle.dumps(scorer))
    assert copy.base_urls == scorer.base_urls and copy.requests_sent == 0
    assert copy.score(items(6, 6)) == expected(items(6, 6))
    assert scorer.score(items(2)) == expected(items(2))  # the original is untouched
    pool = pickle.loads(pickle.dumps(copy.pool))
    assert pool.post_json("/classify", {"input": ["x #8"]})[1]["data"][0]["probs"] == [-1.0]
    assert pool.headers == {"Authorization": "Bearer k"}
