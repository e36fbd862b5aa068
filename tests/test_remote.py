"""Remote scorers against real HTTP servers on 127.0.0.1 speaking each protocol."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from thinkrm.formatting import format_input
from thinkrm.remote import ServerResponseError
from thinkrm.scoring import load_scorer

ITEMS = [("What is 2+3?", "2 + 3 = 5"), ("Q2", "a longer line of reasoning"), ("Q3", "so"),
         ("Q4", "wait, no"), ("Q5", "x" * 50), ("Q6", "alternatively"), ("Q7", "done")]


def model(text):
    """The 'reward model' behind every fake server: deterministic, distinct per text."""
    return len(text) / 10 + text.count("a") / 100


def protocol_answer(path, req):
    if path == "/v1/embeddings":
        rows = [{"object": "embedding", "index": i, "embedding": [model(t), 0.0]}
                for i, t in enumerate(req["input"])]
        return {"object": "list", "data": rows[::-1]}  # out of order on purpose: `index` must be honoured
    if path == "/classify":
        assert req["use_activation"] is False
        return {"data": [{"index": i, "label": "LABEL_0", "probs": [model(t)], "num_classes": 1}
                         for i, t in enumerate(req["input"])]}
    if path == "/get_reward":
        assert len(req["prompts"]) == len(req["query"])
        return {"rewards": [model(q) for q in req["query"]]}
    if path == "/score":
        assert req["analysis"] is False
        return {"scores": [model(format_input(it["prompt"], it["response"])) for it in req["items"]]}
    raise AssertionError(path)


class FakeServer:
    """A threaded HTTP server; `script` holds canned answers (status, body, delay) to give first."""

    def __init__(self):
        self.script = []
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, body, dict(self.headers)))
                status, payload, delay = outer.script.pop(0) if outer.script else (200, None, 0)
                time.sleep(delay)
                if payload is None:
                    payload = json.dumps(protocol_answer(self.path, body)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


EXPECTED = [model(format_input(p, r)) for p, r in ITEMS]


@pytest.mark.parametrize("kind, path", [("sglang", "/v1/embeddings"), ("vllm", "/classify"),
                                        ("openrlhf", "/get_reward"), ("thinkrm", "/score")])
def test_each_protocol_scores_in_order_across_concurrent_chunks(server, kind, path, monkeypatch):
    monkeypatch.delenv("THINKRM_API_KEY", raising=False)
    with load_scorer(f"{kind}:{server.url}/", batch_size=2, concurrency=3) as scorer:
        assert scorer.score(ITEMS) == pytest.approx(EXPECTED)
        assert scorer.score([]) == []
    assert [p for p, _, _ in server.requests] == [path] * 4  # 7 items, 2 per request
    assert "authorization" not in {k.lower() for k in server.requests[0][2]}


@pytest.mark.parametrize("kind, path", [("sglang", "/v1/embeddings"), ("vllm", "/classify"),
                                        ("openrlhf", "/get_reward"), ("thinkrm", "/score")])
def test_each_protocol_spreads_chunks_over_comma_separated_replicas(server, kind, path, monkeypatch):
    monkeypatch.delenv("THINKRM_API_KEY", raising=False)
    other = FakeServer()
    try:
        with load_scorer(f"{kind}:{server.url},{other.url.removeprefix('http://')}", batch_size=1,
                         concurrency=2) as scorer:
            assert scorer.base_urls == [server.url, other.url] and scorer.url == server.url + path
            assert scorer.score(ITEMS) == pytest.approx(EXPECTED)
    finally:
        other.close()
    assert len(server.requests) + len(other.requests) == 7 and server.requests and other.requests


def test_bad_answer_names_the_replica_that_gave_it(server):
    other = FakeServer()
    other.script = [(200, b'{"scores": []}', 0)]
    try:
        scorer = load_scorer(f"thinkrm:{server.url},{other.url}")
        assert scorer.score(ITEMS[:1]) == pytest.approx(EXPECTED[:1])  # the first replica's turn
        with pytest.raises(ServerResponseError, match=f"^{other.url}/score answered HTTP 200: expected 1 "):
            scorer.score(ITEMS[:1])
    finally:
        other.close()


def test_protocol_payloads(server):
    load_scorer(f"sglang:{server.url}", model="trm").score(ITEMS[:1])
    load_scorer(f"openrlhf:{server.url}").score(ITEMS[:1])
    load_scorer(f"thinkrm:{server.url}").score(ITEMS[:1])
    (_, sg, _), (_, orl, _), (_, tk, _) = server.requests
    assert sg == {"model": "trm", "input": ["What is 2+3?\n2 + 3 = 5"]}
    assert orl == {"query": ["What is 2+3?\n2 + 3 = 5"], "prompts": ["What is 2+3?"]}
    assert tk == {"items": [{"prompt": "What is 2+3?", "response": "2 + 3 = 5"}], "analysis": False}


def test_bearer_token_from_option_and_env(server, monkeypatch):
    monkeypatch.setenv("THINKRM_API_KEY", "from-env")
    load_scorer(f"thinkrm:{server.url}").score(ITEMS[:1])
    load_scorer(f"thinkrm:{server.url}", api_key="explicit").score(ITEMS[:1])
    assert [h["Authorization"] for _, _, h in server.requests] == ["Bearer from-env", "Bearer explicit"]


def test_retries_503_then_succeeds(server):
    server.script = [(503, b"busy", 0), (429, b"slow down", 0)]
    scorer = load_scorer(f"vllm:{server.url}", backoff=0.01)
    assert scorer.score(ITEMS[:3]) == pytest.approx(EXPECTED[:3])
    assert scorer.requests_sent == 3 and len(server.requests) == 3


def test_persistent_500_names_url_status_and_body(server):
    server.script = [(500, b"CUDA out of memory", 0)] * 3
    scorer = load_scorer(f"sglang:{server.url}", backoff=0.01, retries=2)
    with pytest.raises(ServerResponseError) as e:
        scorer.score(ITEMS[:2])
    msg = str(e.value)
    assert f"{server.url}/v1/embeddings answered HTTP 500" in msg and "CUDA out of memory" in msg
    assert "after 3 attempts" in msg and len(server.requests) == 3


def test_client_error_is_not_retried(server):
    server.script = [(404, b'{"detail": "Not Found"}', 0)]
    with pytest.raises(ServerResponseError, match="HTTP 404.*Not Found"):
        load_scorer(f"openrlhf:{server.url}", backoff=0.01).score(ITEMS[:1])
    assert len(server.requests) == 1


@pytest.mark.parametrize("body, words", [
    (b"<html>oops</html>", "not valid JSON; body: '<html>oops</html>'"),
    (b'{"scores": [1.0, 2.0]}', "expected 3 scores, got 2"),
    (b'{"result": []}', "unexpected answer shape (KeyError"),
    (b'{"scores": [1.0, "high", 2.0]}', "score 1 is not a number"),
    (b'{"scores": [1.0, NaN, 2.0]}', "score 1 is not finite"),
    (b'[1, 2, 3]', "unexpected answer shape (TypeError"),
])
def test_unexpected_answers_give_clear_errors(server, body, words):
    server.script = [(200, body, 0)]
    with pytest.raises(ServerResponseError) as e:
        load_scorer(f"thinkrm:{server.url}").score(ITEMS[:3])
    assert words in str(e.value) and f"{server.url}/score" in str(e.value)


def test_wrong_index_set_is_an_error(server):
    rows = [{"index": 0, "embedding": [1]}, {"index": 0, "embedding": [2]}]
    server.script = [(200, json.dumps({"data": rows}).encode(), 0)]
    with pytest.raises(ServerResponseError, match="'index' values"):
        load_scorer(f"sglang:{server.url}").score(ITEMS[:2])


def test_timeout_is_clear_and_not_retried(server):
    server.script = [(200, None, 1.0)]
    scorer = load_scorer(f"vllm:{server.url}", timeout=0.2)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"/classify did not answer within 0.2s"):
        scorer.score(ITEMS[:1])
    assert time.monotonic() - t0 < 1.0 and len(server.requests) == 1


def test_unreachable_server_retries_then_names_url():
    s = FakeServer()
    url = s.url
    s.close()  # nothing listens on this port any more
    scorer = load_scorer(f"sglang:{url}", retries=2, backoff=0.01)
    with pytest.raises(ConnectionError, match=f"cannot reach {url}/v1/embeddings after 3 attempts"):
        scorer.score(ITEMS[:1])
    assert scorer.requests_sent == 3


def test_url_is_required():
    with pytest.raises(ValueError, match="vllm:http://HOST:PORT"):
        load_scorer("vllm:")
    with pytest.raises(ValueError, match="empty URL"):
        load_scorer("vllm:h1:1,")


def test_every_client_protocol_against_the_real_thinkrm_server(monkeypatch):
    """End to end: thinkrm's own server answers all four protocols; each client must get in-process scores."""
    serve = pytest.importorskip("thinkrm.serving.server")
    monkeypatch.delenv("THINKRM_API_KEY", raising=False)
    items = ITEMS + [("Q8", "line one\n\nline two\nline three")]
    want = load_scorer("length").score(items)
    config = serve.ServeConfig(port=0, api_key="secret")
    with serve.running("length", config) as url:
        for kind in ("sglang", "vllm", "openrlhf", "thinkrm"):
            with load_scorer(f"{kind}:{url}", api_key="secret", batch_size=3) as scorer:
                assert scorer.score(items) == pytest.approx(want), kind
        with pytest.raises(ServerResponseError, match="HTTP 401"):
            load_scorer(f"thinkrm:{url}", api_key="wrong").score(items[:1])
