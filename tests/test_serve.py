"""`thinkrm serve` against real uvicorn servers on 127.0.0.1: protocols, auth, limits, faults, batching."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from thinkrm.formatting import Item, format_input
from thinkrm.rewards import gated, sigmoid
from thinkrm.scoring import LengthScorer
from thinkrm.serve import ServeConfig, running, split_formatted

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ROOT = Path(__file__).resolve().parents[1]


class RecordingScorer(LengthScorer):
    """Length scores plus what the server did with them: the size of every scorer call.

    `delay` is a per-call cost (what a model pays per forward pass), so concurrent requests have time to
    queue up; an item containing POISON makes the whole call raise, like a model choking on one input.
    """

    def __init__(self, delay: float = 0.0):
        super().__init__()
        self.delay = delay
        self.calls: list[int] = []
        self.threads: set[str] = set()

    def score(self, items):
        items = [Item(*it) for it in items]
        self.calls.append(len(items))
        self.threads.add(threading.current_thread().name)
        if any("POISON" in it.reasoning for it in items):
            raise RuntimeError("model choked on a poisoned input")
        time.sleep(self.delay)
        return super().score(items)


def expected(text: str) -> float:
    """What LengthScorer gives a formatted text after the server's first-newline split."""
    return -float(len(split_formatted(text).reasoning))


@pytest.fixture(scope="module")
def server():
    scorer = RecordingScorer()
    config = ServeConfig(port=0, api_key=KEY, max_items=8, max_chars=1000, max_body_bytes=20_000,
                         model_name="trm-test")
    with running(scorer, config) as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        yield client, scorer


def test_embeddings_protocol_returns_raw_scores_per_input(server):
    client, _ = server
    texts = ["What is 2+3?\n2+3=5, so 5.", "Q\nline one\nline two", "no newline at all"]
    r = client.post("/v1/embeddings", json={"model": "whatever", "input": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "trm-test"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert [d["embedding"] for d in body["data"]] == [[expected(t)] for t in texts]
    assert body["usage"]["prompt_tokens"] == sum(map(len, texts))
    single = client.post("/v1/embeddings", json={"input": texts[1]}).json()
    assert single["data"][0]["embedding"] == [expected(texts[1])]


def test_classify_applies_sigmoid_only_when_asked(server):
    client, _ = server
    text = "P\nab"
    raw = client.post("/classify", json={"model": "m", "input": [text]}).json()["data"][0]
    assert raw["probs"] == [-2.0] and raw["index"] == 0 and raw["num_classes"] == 1
    off = client.post("/classify", json={"input": text, "use_activation": False}).json()["data"][0]
    on = client.post("/classify", json={"input": text, "use_activation": True}).json()["data"][0]
    assert off["probs"] == [-2.0]
    assert on["probs"][0] == pytest.approx(sigmoid(-2.0))


def test_get_reward_recovers_response_from_query_using_prompts(server):
    client, _ = server
    prompts = ["<s>User: 2+3?\nAssistant:", "User: 7*8?\nAssistant:"]
    responses = [" Add them: 2+3=5.</think> The answer is \\boxed{5}.", " 7*8=56</think>\\boxed{56}"]
    # A tokenizer round trip can put a BOS before the prompt; the prompt is still found.
    queries = [prompts[0] + responses[0], "<bos>" + prompts[1] + responses[1]]
    r = client.post("/get_reward", json={"query": queries, "prompts": prompts})
    assert r.status_code == 200, r.text
    body = r.json()
    # Only the reasoning (before </think>) is scored, not the prompt and not the final answer.
    want = [-float(len(" Add them: 2+3=5.")), -float(len(" 7*8=56"))]
    assert body["rewards"] == want and body["scores"] == want and body["extra_logs"]["r_t"] == want


@pytest.mark.slow  # the verifier's worker processes start on first use
def test_get_reward_with_labels_is_the_gated_reward(server):
    """The fixture's length scorer has no calibration, so "auto" standardises the correct answers of each
    prompt within the request; a configured calibration is used as given."""
    client, _ = server
    prompt = "User: 2+3?\nAssistant:"
    right, right_long = " 2+3=5</think> \\boxed{5}", " 2+3 is 5, yes 5</think> \\boxed{5}"
    wrong = " 2+3=6, hmm, long reasoning</think> \\boxed{6}"
    body = client.post("/get_reward", json={"query": [prompt + right, prompt + wrong, prompt + right_long],
                                            "prompts": [prompt] * 3, "labels": ["5", "5", "5"]}).json()
    r_t = [-float(len(" 2+3=5")), -float(len(" 2+3=6, hmm, long reasoning")), -float(len(" 2+3 is 5, yes 5"))]
    assert body["extra_logs"] == {"r_v": [1.0, 0.0, 1.0], "r_t": r_t, "r_t_normalized": [1.0, 0.0, -1.0]}
    assert body["scores"] == [1.0, 0.0, 1.0]
    assert body["rewards"] == pytest.approx([gated(1.0, 1.0), 0.0, gated(1.0, -1.0)])
    config = ServeConfig(port=0, normalize="calibrated", calibration="-40,10")
    with running(LengthScorer(), config) as url, httpx.Client(base_url=url) as c:
        body = c.post("/get_reward", json={"query": [prompt + right], "prompts": [prompt], "labels": ["5"]}).json()
    assert body["rewards"] == pytest.approx([gated(1.0, (r_t[0] + 40) / 10)])
    with pytest.raises(ValueError, match="has no calibration"):
        running(LengthScorer(), ServeConfig(port=0, normalize="calibrated")).__enter__()
    with pytest.raises(ValueError, match="invalid --normalize"):
        ServeConfig(normalize="zscore")


def test_get_reward_rejects_inconsistent_requests(server):
    client, _ = server
    r = client.post("/get_reward", json={"query": ["a\nb", "c\nd"], "prompts": ["a"]})
    assert r.status_code == 422 and "prompts has 1 entries but query has 2" in r.json()["detail"]
    r = client.post("/get_reward", json={"query": ["User: hi\nanswer"], "prompts": ["User: bye"]})
    assert r.status_code == 422 and "query[0] does not contain prompts[0]" in r.json()["detail"]
    no_prompts = client.post("/get_reward", json={"query": ["Q?\nreasoning</think>answer"]}).json()
    assert no_prompts["rewards"] == [-float(len("reasoning"))]


def test_get_reward_checks_answers_with_the_configured_verifier():
    from typer.testing import CliRunner

    from thinkrm.cli import app

    # The option text "15" maps to letter B only through the options in the prompt the server passes on.
    prompt = "User: 3*5?\nA. 12\nB. 15\nAssistant:"
    queries = [prompt + " 3*5=15</think> The answer is 15.", prompt + " 3*4</think> The answer is (A)."]
    with running(LengthScorer(), ServeConfig(port=0, verifier="choice")) as url, httpx.Client(base_url=url) as c:
        body = c.post("/get_reward", json={"query": queries, "prompts": [prompt] * 2, "labels": ["B", "B"]}).json()
    assert body["scores"] == [1.0, 0.0] and body["extra_logs"]["r_v"] == [1.0, 0.0]
    with pytest.raises(ValueError, match="unknown verifier spec 'nope'"):
        ServeConfig(verifier="nope")
    bad = CliRunner().invoke(app, ["serve", "--scorer", "length", "--verifier", "nope"])
    assert bad.exit_code == 2 and "unknown verifier spec" in bad.output


def test_score_protocol_scores_reasoning_and_returns_analysis_on_request(server):
    client, _ = server
    items = [{"prompt": "What is 2+3?", "response": "2 + 3 = 5.\n\nWait, let me check: 2 + 3 = 6.</think>5"},
             {"prompt": "", "response": "Just reasoning, no marker."}]
    plain = client.post("/score", json={"items": items})
    assert plain.status_code == 200, plain.text
    assert plain.json() == {"scores": [-float(len("2 + 3 = 5.\n\nWait, let me check: 2 + 3 = 6.")),
                                       -float(len(items[1]["response"]))]}
    analysed = client.post("/score", json={"items": items, "analysis": True})
    assert analysed.status_code == 200, analysed.text
    body = analysed.json()
    assert body["scores"] == plain.json()["scores"] and len(body["analyses"]) == 2
    first = body["analyses"][0]
    assert set(first) >= {"size", "macro_efficiency", "micro_effectiveness", "findings"}
    # The wrong claim 2 + 3 = 6 is a real arithmetic error the analysis must see.
    assert first["micro_effectiveness"]["arithmetic_wrong"] == 1
    assert [f["kind"] for f in first["findings"]] == ["arithmetic_wrong"]


def test_health_is_open_and_everything_else_needs_the_key(server):
    client, _ = server
    with httpx.Client(base_url=client.base_url) as anonymous:
        assert anonymous.get("/health").json()["status"] == "ok"
        for method, path in [("POST", "/score"), ("POST", "/v1/embeddings"), ("POST", "/classify"),
                             ("POST", "/get_reward"), ("GET", "/metrics"), ("GET", "/openapi.json")]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
                r = anonymous.request(method, path, headers=headers, json={"items": []})
                assert r.status_code == 401, (path, headers, r.text)
                assert "API key" in r.json()["detail"] and r.headers["www-authenticate"] == "Bearer"
    assert client.get("/openapi.json").status_code == 200


def test_limits_answer_413_or_422_naming_the_limit(server):
    client, _ = server
    too_many = client.post("/score", json={"items": [{"prompt": "p", "response": "r"}] * 9})
    assert too_many.status_code == 413 and "--max-items" in too_many.json()["detail"]
    too_long = client.post("/v1/embeddings", json={"input": ["p\n" + "x" * 1001]})
    assert too_long.status_code == 422 and "input[0]" in too_long.json()["detail"]
    assert "--max-chars" in too_long.json()["detail"]
    huge = client.post("/score", content=b"x" * 30_000, headers={"content-type": "application/json"})
    assert huge.status_code == 413 and "--max-body-bytes" in huge.json()["detail"]

    def chunks():  # no Content-Length: the limit must hold on the streamed byte count too
        for _ in range(30):
            yield b" " * 1000

    streamed = client.post("/score", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and "--max-body-bytes" in streamed.json()["detail"]


@pytest.mark.parametrize("content, fragment", [
    (b'{"items": [', "malformed JSON"),
    (b'{"items": [{"prompt": "p", "response": "\xff\xfe"}]}', "not valid UTF-8"),
    (b'{"items": "not a list"}', "items: Input should be a valid list"),
    (b'{"items": [{"prompt": 3, "response": "r"}]}', "items[0].prompt: Input should be a valid string"),
    (b'{"items": [{"prompt": "p"}]}', "items[0].response: Field required"),
    (b'{"items": [{"prompt": "p", "response": "   "}]}', "items[0].response is empty"),
    (b'{"items": []}', "items is empty"),
    (b'[1, 2]', "Input should be a valid dictionary"),
    (b'', "Field required"),
])
def test_bad_inputs_get_a_4xx_message_and_the_server_keeps_serving(server, content, fragment):
    client, _ = server
    r = client.post("/score", content=content, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert fragment in r.json()["detail"]
    ok = client.post("/score", json={"items": [{"prompt": "p", "response": "abc"}]})
    assert ok.status_code == 200 and ok.json()["scores"] == [-3.0]


def test_wrong_types_on_every_protocol(server):
    client, _ = server
    cases = [("/v1/embeddings", {"input": ["ok\nfine", 5]}, "input[1]"),
             ("/v1/embeddings", {"input": []}, "input is empty"),
             ("/v1/embeddings", {"input": [""]}, "input[0] is empty"),
             ("/classify", {"input": "x\ny", "use_activation": "perhaps"}, "use_activation"),
             ("/get_reward", {"query": "not a list"}, "query"),
             ("/get_reward", {"query": ["a\nb"], "labels": [{"x": 1}]}, "labels[0]")]
    for path, payload, fragment in cases:
        r = client.post(path, json=payload)
        assert r.status_code == 422, (path, r.text)
        assert fragment in r.json()["detail"], (path, r.json())


def test_concurrent_requests_share_scorer_calls_and_get_their_own_scores():
    scorer = RecordingScorer(delay=0.05)
    config = ServeConfig(port=0, max_batch_size=64, max_wait_ms=20)
    texts = [f"prompt {i}\n" + "r" * i for i in range(1, 25)]
    with running(scorer, config) as url, httpx.Client(base_url=url, timeout=30) as client:
        with ThreadPoolExecutor(len(texts)) as pool:
            results = list(pool.map(lambda t: client.post("/v1/embeddings", json={"input": t}), texts))
        metrics = client.get("/metrics").text
    assert all(r.status_code == 200 for r in results)
    assert [r.json()["data"][0]["embedding"][0] for r in results] == [expected(t) for t in texts]
    assert sum(scorer.calls) == len(texts)
    assert len(scorer.calls) <= len(texts) // 3, scorer.calls  # batched: far fewer calls than requests
    assert max(scorer.calls) > 1
    assert scorer.threads == {"thinkrm-scorer_0"}  # inference stays off the event loop, in one worker
    assert f"thinkrm_batch_size_count {len(scorer.calls)}" in metrics
    assert f"thinkrm_items_scored_total {len(texts)}" in metrics


def test_batching_off_scores_each_request_alone():
    scorer = RecordingScorer(delay=0.01)
    with running(scorer, ServeConfig(port=0, max_batch_size=1)) as url, httpx.Client(base_url=url) as client:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: client.post("/v1/embeddings", json={"input": f"p\n{i}"}), range(8)))
    assert scorer.calls == [1] * 8


def test_a_failing_input_fails_only_its_own_request():
    scorer = RecordingScorer(delay=0.05)
    with running(scorer, ServeConfig(port=0, max_wait_ms=30)) as url, httpx.Client(base_url=url) as client:
        texts = ["p\nfine one", "p\nPOISON", "p\nfine two", "p\nfine three"]
        with ThreadPoolExecutor(len(texts)) as pool:
            results = list(pool.map(lambda t: client.post("/v1/embeddings", json={"input": t}), texts))
        statuses = [r.status_code for r in results]
        assert statuses == [200, 500, 200, 200]
        assert "model choked on a poisoned input" in results[1].json()["detail"]
        assert client.get("/health").status_code == 200
        metrics = client.get("/metrics").text
    assert 'thinkrm_requests_total{route="/v1/embeddings",status="500"} 1' in metrics


def test_metrics_are_prometheus_text(server):
    client, _ = server
    client.post("/score", json={"items": [{"prompt": "p", "response": "r"}]})
    client.post("/nowhere", json={})
    r = client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    lines = r.text.splitlines()
    samples = {}
    for line in lines:
        if line.startswith("#"):
            assert line.split()[1] in {"HELP", "TYPE"}
            continue
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    assert samples['thinkrm_requests_total{route="/score",status="200"}'] >= 1
    assert samples['thinkrm_requests_total{route="other",status="404"}'] >= 1
    assert samples["thinkrm_queue_depth"] == 0
    assert samples["thinkrm_in_flight_requests"] == 1  # this very request
    count = samples['thinkrm_request_duration_seconds_count{route="/score"}']
    assert samples['thinkrm_request_duration_seconds_bucket{route="/score",le="+Inf"}'] == count
    prefix = 'thinkrm_request_duration_seconds_bucket{route="/score"'
    buckets = [v for k, v in samples.items() if k.startswith(prefix)]
    assert buckets == sorted(buckets)  # cumulative


def test_hf_model_served_over_sglang_protocol_matches_in_process_scores(tiny_reward_model):
    from thinkrm.scoring import load_scorer

    items = [Item("What is 2+3?", "2 + 3 = 5."), Item("Seconds in 7.8 minutes?", "60 * 7.8 = 468\n\nSo 468.")]
    local = load_scorer(f"hf:{tiny_reward_model}")
    want = local.score(items)
    with running(f"hf:{tiny_reward_model}", ServeConfig(port=0)) as url:
        texts = [format_input(*it) for it in items]
        got = httpx.post(f"{url}/v1/embeddings", json={"input": texts}).json()["data"]
    assert [d["embedding"][0] for d in got] == pytest.approx(want, abs=1e-5)
    assert all(math.isfinite(d["embedding"][0]) for d in got)


@given(st.text(max_size=40), st.text(max_size=40))
def test_split_formatted_rebuilds_the_exact_model_input(prompt, reasoning):
    text = format_input(prompt, reasoning)
    assert format_input(*split_formatted(text)) == text
    if "\n" not in prompt:
        assert split_formatted(text) == Item(prompt, reasoning)


def test_config_rejects_nonsense_naming_the_flag():
    with pytest.raises(ValueError, match="--max-batch-size"):
        ServeConfig(max_batch_size=0)
    with pytest.raises(ValueError, match="--alpha"):
        ServeConfig(alpha=1.5)


def test_api_key_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("THINKRM_API_KEY", "from-env")
    assert ServeConfig().api_key == "from-env"
    assert ServeConfig(api_key="flag").api_key == "flag"


def test_cli_exposes_every_config_field_as_a_flag():
    import dataclasses

    from typer.testing import CliRunner

    from thinkrm.cli import app

    result = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200, env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for f in dataclasses.fields(ServeConfig):
        assert f"--{f.name.replace('_', '-')}" in result.output, f.name
    bad = CliRunner().invoke(app, ["serve", "--scorer", "length", "--max-items", "0"])
    assert bad.exit_code == 2 and "--max-items" in bad.output
    unknown = CliRunner().invoke(app, ["serve", "--scorer", "nope"])
    assert unknown.exit_code == 2 and "unknown scorer spec" in unknown.output


def _free_port_taken() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_cli_reports_a_busy_port_as_one_line():
    from typer.testing import CliRunner

    from thinkrm.cli import app

    with _free_port_taken() as taken:
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", "--scorer", "length", "--port", str(port)])
    assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in result.output
    assert "Traceback" not in result.output


SLOW_SERVER = """
import time
from thinkrm.scoring import LengthScorer
from thinkrm.serve import ServeConfig, serve

class Slow(LengthScorer):
    def score(self, items):
        time.sleep(1.5)
        return super().score(items)

serve(ServeConfig(port=0, graceful_timeout_s=20), Slow(), on_ready=lambda url: print(url, flush=True))
"""


@pytest.mark.slow
def test_sigterm_lets_in_flight_requests_finish_and_turns_new_ones_away():
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SERVER], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read()
        with httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(client.post, "/score",
                                    json={"items": [{"prompt": "p", "response": "abcd"}]})
            deadline = time.monotonic() + 10
            # in flight: the slow request and this /metrics one
            while "thinkrm_in_flight_requests 2" not in client.get("/metrics").text:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            refused = httpx.post(f"{url}/score", json={"items": [{"prompt": "p", "response": "x"}]},
                                 timeout=5)
            assert refused.status_code == 503 and "shutting down" in refused.json()["detail"]
            assert refused.headers["connection"] == "close"
            assert httpx.get(f"{url}/health", timeout=5).status_code == 503
            done = in_flight.result(timeout=20)
        assert done.status_code == 200 and done.json() == {"scores": [-4.0]}
        proc.wait(timeout=15)
        assert proc.returncode in (0, -signal.SIGTERM)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_thinkrm_serve_command_end_to_end():
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), COLUMNS="300", THINKRM_API_KEY=KEY)
    cmd = [sys.executable, "-c", "from thinkrm.cli import main; main()", "serve", "--scorer", "length",
           "--port", "0", "--max-items", "2"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        banner = proc.stderr.readline()
        assert "bearer token required" in banner, banner
        url = next(word for word in banner.split() if word.startswith("http://127.0.0.1:"))
        with httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
            ok = client.post("/score", json={"items": [{"prompt": "p", "response": "abc"}]})
            assert ok.json() == {"scores": [-3.0]}
            over = client.post("/score", json={"items": [{"prompt": "p", "response": "abc"}] * 3})
            assert over.status_code == 413 and "--max-items" in over.json()["detail"]
            assert httpx.get(f"{url}/metrics").status_code == 401  # the key came from the environment
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
        assert proc.returncode in (0, -signal.SIGINT, 130)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
