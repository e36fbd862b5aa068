"""`thinkrm serve` against real uvicorn servers on 127.0.0.1: protocols, auth, limits, faults, batching."""

from __future__ import annotations

import json
import math
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from thinkrm.formatting import Item, format_input
from thinkrm.rewards import gated, sigmoid
from thinkrm.scoring import LengthScorer
from thinkrm.serving import ServeConfig, running, split_formatted
from thinkrm.verifiers import Verifier, VerifierReport

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {"content-type": "application/json"}
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


class RefusesSurrogates(RecordingScorer):
    """Fails the whole call on text that is not valid Unicode, as a Rust tokenizer (TRM-lite's) does."""

    def score(self, items):
        for it in items:
            (it[0] + it[1]).encode("utf-8")  # UnicodeEncodeError on a lone surrogate
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


class StuckVerifier(Verifier):
    """A verifier that hangs until released: what a pathological answer did to math-verify."""

    spec = "stuck"

    def __init__(self):
        self.release = threading.Event()

    def _verify(self, responses, golds, prompts):
        self.release.wait(60)
        return VerifierReport(results=[True] * len(responses))


def _wait_for_metric(client: httpx.Client, line: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while line not in client.get("/metrics").text:
        assert time.monotonic() < deadline, f"never saw {line!r}"
        time.sleep(0.02)


def test_stuck_verification_fills_only_its_own_queue_then_gets_503_retry_after():
    verifier = StuckVerifier()
    prompt = "User: 2+3?\nAssistant:"
    labelled = {"query": [prompt + " 5</think> \\boxed{5}"], "prompts": [prompt], "labels": ["5"]}
    config = ServeConfig(port=0, verifier=verifier, verify_queue=2)
    with running(RecordingScorer(), config) as url, httpx.Client(base_url=url, timeout=60) as client, \
            ThreadPoolExecutor(2) as pool:
        try:
            stuck = [pool.submit(client.post, "/get_reward", json=labelled) for _ in range(2)]
            _wait_for_metric(client, 'thinkrm_work_queued{kind="verify"} 2')
            full = client.post("/get_reward", json=labelled)
            assert full.status_code == 503 and full.headers["retry-after"] == "1"
            assert "--verify-queue" in full.json()["detail"]
            # The scoring path, and /get_reward without labels, do not wait for the verifier.
            start = time.perf_counter()
            unlabelled = {k: labelled[k] for k in ("query", "prompts")}
            for path, payload in [("/get_reward", unlabelled), ("/v1/embeddings", {"input": "p\nq"}),
                                  ("/score", {"items": [{"prompt": "p", "response": "r"}]})]:
                assert client.post(path, json=payload).status_code == 200, path
            assert time.perf_counter() - start < 5
        finally:
            verifier.release.set()
        assert [f.result().json()["scores"] for f in stuck] == [[1.0], [1.0]]
        metrics = client.get("/metrics").text
    assert 'thinkrm_work_rejected_total{kind="verify"} 1' in metrics
    assert 'thinkrm_work_queued{kind="verify"} 0' in metrics


@pytest.mark.slow  # the analysis worker process starts on first use (~1-2 s)
def test_analysis_runs_in_its_own_bounded_queue():
    # ~0.5 MB of steps for the ME² analysis: seconds of pure-Python work, held in the one analysis process.
    trace = "\n\n".join(f"Wait, let me check: {i} + {i} = {2 * i}." for i in range(12_000))
    heavy = {"items": [{"prompt": "p", "response": trace}], "analysis": True}
    config = ServeConfig(port=0, analysis_queue=1, max_chars=1_000_000, max_body_bytes=2_000_000)
    with running(RecordingScorer(), config) as url, httpx.Client(base_url=url, timeout=120) as client, \
            ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/score", json=heavy)
        _wait_for_metric(client, 'thinkrm_work_queued{kind="analysis"} 1')
        full = client.post("/score", json={"items": [{"prompt": "p", "response": "r"}], "analysis": True})
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
        assert "--analysis-queue" in full.json()["detail"]
        plain = client.post("/score", json={"items": [{"prompt": "p", "response": "abc"}]})
        assert plain.status_code == 200 and plain.json() == {"scores": [-3.0]}
        assert 'thinkrm_work_queued{kind="analysis"} 1' in client.get("/metrics").text  # still analysing
        done = first.result()
    assert done.status_code == 200, done.text
    assert done.json()["analyses"][0]["micro_effectiveness"]["arithmetic_checked"] > 0


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
    (b'{"items": [{"prompt": "p", "response": "\xff\xfe"}]}', "items[0].response is not valid UTF-8"),
    (b'{"items": [{"prompt": "p", "response": "a\\ud800b"}]}', "items[0].response contains a lone surrogate"),
    (b'{"items": [{"prompt": "a\\u0000", "response": "r"}]}', "items[0].prompt contains a NUL character"),
    (b'{"items": [{"prompt": "p", "response": "r"}], "analysis": "yes"}', "analysis: Input should be"),
    (b'{"items": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nests JSON deeper than the parser allows"),
    (b'{"items": ' + b"[" * 500 + b"]" * 500 + b"}", "items[0]: Input should be a valid dictionary"),
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
    assert r.status_code == 422, r.text  # every bad body is a 422, as docs/serving.md documents
    assert fragment in r.json()["detail"]
    ok = client.post("/score", json={"items": [{"prompt": "p", "response": "abc"}]})
    assert ok.status_code == 200 and ok.json()["scores"] == [-3.0]


def test_bad_text_is_refused_on_every_route_naming_the_field_before_any_scoring(server):
    client, scorer = server
    calls = len(scorer.calls)
    cases = [("/v1/embeddings", {"input": ["ok\nfine", "p\nbad \ud800"]}, "input[1] contains a lone"),
             ("/classify", {"input": "p\n\udfff"}, "input[0] contains a lone surrogate"),
             ("/get_reward", {"query": ["a\nb\x00"]}, "query[0] contains a NUL character"),
             ("/get_reward", {"query": ["Q: \ud83dx"], "prompts": ["Q: \ud83dx"]}, "query[0] contains"),
             ("/get_reward", {"query": ["Q\nr"], "prompts": ["Q"], "labels": ["\ud800"]}, "labels[0]"),
             ("/classify", {"input": "p\nq", "use_activation": "yes"}, "use_activation: Input should be")]
    for path, payload, fragment in cases:
        # json.dumps escapes the surrogate as \ud800, as a client's encoder does; the JSON is valid.
        r = client.post(path, content=json.dumps(payload), headers=JSON)
        assert r.status_code == 422 and fragment in r.json()["detail"], (path, r.text)
    plain = client.post("/score", content=b'{"items": [{"prompt": "p", "response": "r"}]}',
                        headers={"content-type": "text/plain"})
    assert plain.status_code == 422 and "application/json" in plain.json()["detail"]
    # An emoji arrives as a surrogate *pair* escape and is one valid character: scored, not refused.
    ok = client.post("/v1/embeddings", content=json.dumps({"input": "p\n\U0001F600"}), headers=JSON)
    assert ok.status_code == 200 and ok.json()["data"][0]["embedding"] == [-1.0]
    assert len(scorer.calls) == calls + 1  # none of the refused texts reached the scorer


def test_a_lone_surrogate_never_makes_the_batcher_rescore_a_merged_batch():
    """What TRM-lite did: its tokenizer raised on the surrogate, the merged call failed, and every request
    in it was scored again alone (63 good requests, 63 extra calls). Now it is refused before queueing."""
    scorer = RefusesSurrogates(delay=0.05)
    texts = [f"p\ngood {i}" for i in range(15)] + ["p\nbad \ud800"]
    with running(scorer, ServeConfig(port=0, max_wait_ms=50)) as url, httpx.Client(base_url=url) as client:
        with ThreadPoolExecutor(len(texts)) as pool:
            # json.dumps escapes the surrogate (httpx's own encoder would refuse to send it)
            results = list(pool.map(lambda t: client.post("/v1/embeddings", content=json.dumps({"input": t}),
                                                          headers=JSON), texts))
        errors = client.get("/metrics").text
    assert [r.status_code for r in results] == [200] * 15 + [422]
    assert sum(scorer.calls) == 15 and len(scorer.calls) <= 5, scorer.calls  # merged, never retried alone
    assert "thinkrm_scorer_errors_total 0" in errors


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


def test_a_failing_merged_batch_is_retried_in_halves_not_request_by_request():
    scorer = RecordingScorer()
    texts = [f"p\nfine {i}" for i in range(16)]
    texts[11] = "p\nPOISON"
    with running(scorer, ServeConfig(port=0, max_wait_ms=300)) as url, httpx.Client(base_url=url) as client:
        with ThreadPoolExecutor(len(texts)) as pool:
            results = list(pool.map(lambda t: client.post("/v1/embeddings", json={"input": t}), texts))
    assert [r.status_code for r in results] == [200] * 11 + [500] + [200] * 4
    assert sum(scorer.calls[1:]) >= 16  # the merged call failed and everything was scored again
    # One merged call, then halves: 8+8, 4+4, 2+2, 1+1 around the poison = 9 calls; one at a time was 17.
    assert len(scorer.calls) <= 10, scorer.calls


class Gated(RecordingScorer):
    """Holds its first call until the test opens `gate`, so the test controls what queues meanwhile."""

    def __init__(self):
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()

    def score(self, items):
        if not self.calls:
            self.entered.set()
            self.gate.wait(30)
        return super().score(items)


def queue_depth(client: httpx.Client) -> int:
    line = next(ln for ln in client.get("/metrics").text.splitlines() if ln.startswith("thinkrm_queue_depth "))
    return int(line.split()[1])


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_request_queued_while_the_model_was_busy_is_scored_next_without_waiting():
    """`--max-wait-ms` is for a request that finds the model idle: it waits for company. One that queued
    behind a busy model has had its chance to gather company, and the model takes it at once (the batcher
    used to wait the full window again after every call: model idle between calls under load)."""
    scorer = Gated()
    config = ServeConfig(port=0, max_batch_size=2, max_wait_ms=60_000)
    with running(scorer, config) as url, httpx.Client(base_url=url, timeout=10) as client:
        post = lambda t: client.post("/v1/embeddings", json={"input": t})  # noqa: E731
        with ThreadPoolExecutor(3) as pool:
            first = [pool.submit(post, t) for t in ("p\na", "p\nbb")]  # a full batch: goes at once
            assert scorer.entered.wait(10)
            late = pool.submit(post, "p\nccc")
            wait_for(lambda: queue_depth(client) == 1)
            scorer.gate.set()
            started = time.monotonic()
            assert late.result().json()["data"][0]["embedding"] == [-3.0]  # not 60 s later (timeout 10 s)
            assert time.monotonic() - started < 5
            assert [f.result().status_code for f in first] == [200, 200]
    assert scorer.calls == [2, 1]


class TwoStage(RecordingScorer):
    """A scorer with work to do before its model (`prepare`, like tokenizing), recording where it ran."""

    def __init__(self):
        super().__init__()
        self.prepared_threads: set[str] = set()
        self.second_prepared = threading.Event()
        self.scoring = threading.Event()
        self.overlapped: bool | None = None

    def prepare(self, items):
        items = [Item(*it) for it in items]
        self.prepared_threads.add(threading.current_thread().name)
        if any("UNTOKENIZABLE" in it.reasoning for it in items):
            raise ValueError("cannot tokenize")
        if any(it.reasoning == "second" for it in items):
            self.second_prepared.set()
        return [("prepared", it) for it in items]

    def score_prepared(self, prepared):
        assert all(tag == "prepared" for tag, _ in prepared)
        if self.overlapped is None:
            self.scoring.set()
            self.overlapped = self.second_prepared.wait(10)
        return self.score([it for _, it in prepared])


def test_requests_are_prepared_while_the_model_scores_earlier_ones():
    scorer = TwoStage()
    assert scorer.prepares and not RecordingScorer().prepares
    with running(scorer, ServeConfig(port=0, max_wait_ms=0)) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        post = lambda t: client.post("/v1/embeddings", json={"input": t})  # noqa: E731
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(post, "p\nfirst")
            assert scorer.scoring.wait(10)
            second = pool.submit(post, "p\nsecond")
            assert first.result().json()["data"][0]["embedding"] == [-5.0]
            assert second.result().json()["data"][0]["embedding"] == [-6.0]
    assert scorer.overlapped  # the second request was tokenized while the first one was on the model
    assert scorer.prepared_threads == {"thinkrm-prepare_0"} and scorer.threads == {"thinkrm-scorer_0"}


def test_a_request_that_fails_to_prepare_fails_alone():
    """The failing input is prepared together with two good ones (held back until all have queued): the merged
    call fails, is retried in halves, and only the failing request gets the error."""
    scorer = TwoStage()
    scorer.overlapped = False  # the model stage is not held
    entered, gate, sizes = threading.Event(), threading.Event(), []
    prepare = scorer.prepare

    def held_prepare(items):
        sizes.append(len(items))
        if len(sizes) == 1:
            entered.set()
            gate.wait(10)
        return prepare(items)

    scorer.prepare = held_prepare
    texts = ["p\nfine one", "p\nUNTOKENIZABLE", "p\nfine two", "p\nfine three"]
    with running(scorer, ServeConfig(port=0, max_wait_ms=0)) as url, httpx.Client(base_url=url) as client:
        post = lambda t: client.post("/v1/embeddings", json={"input": t})  # noqa: E731
        with ThreadPoolExecutor(len(texts)) as pool:
            first = pool.submit(post, texts[0])
            assert entered.wait(10)
            rest = [pool.submit(post, t) for t in texts[1:]]
            wait_for(lambda: queue_depth(client) == 4)
            gate.set()
            results = [first.result(), *(f.result() for f in rest)]
        assert queue_depth(client) == 0
    assert [r.status_code for r in results] == [200, 500, 200, 200]
    assert "ValueError: cannot tokenize" in results[1].json()["detail"]
    assert sizes[:2] == [1, 3]  # the three waiting requests were prepared in one call, which failed
    assert sum(scorer.calls) == 3


def test_the_prepare_stage_runs_at_most_two_batches_ahead_of_the_model():
    """A backlog stays text until the model is near: token ids of a whole queue would cost memory."""
    import asyncio

    from thinkrm.serving.batcher import MicroBatcher
    from thinkrm.serving.metrics import Metrics

    gate, prepared = threading.Event(), []

    def prepare(items):
        prepared.extend(items)
        return items

    def score(items):
        gate.wait(10)
        return [0.0] * len(items)

    async def main():
        batcher = MicroBatcher(score, Metrics(2), max_batch_size=2, max_wait_ms=0, prepare=prepare)
        batcher.start()
        requests = [asyncio.create_task(batcher.score([Item("p", str(i))])) for i in range(12)]
        await asyncio.sleep(0.3)  # ample time to prepare all twelve, were it allowed
        ahead = len(prepared)
        gate.set()
        answers = await asyncio.wait_for(asyncio.gather(*requests), 10)
        await batcher.stop()
        return ahead, answers

    ahead, answers = asyncio.run(main())
    # The model holds one batch (2 items); at most 2 batches wait prepared, plus one group that overshoots.
    assert ahead <= 2 + 2 * 2 + 1, ahead
    assert answers == [[0.0]] * 12 and len(prepared) == 12


def test_stopping_the_batcher_answers_the_requests_it_was_working_on():
    """A request a stage had already taken (here: stuck in the tokenizer) when the server stopped gets an
    error, instead of its caller waiting forever."""
    import asyncio

    from thinkrm.serving.batcher import MicroBatcher
    from thinkrm.serving.errors import ScoringError
    from thinkrm.serving.metrics import Metrics

    entered, release = threading.Event(), threading.Event()

    def stuck_prepare(items):
        entered.set()
        release.wait(10)
        return items

    async def main():
        batcher = MicroBatcher(lambda xs: [0.0] * len(xs), Metrics(8), max_batch_size=8, max_wait_ms=0,
                               prepare=stuck_prepare)
        batcher.start()
        request = asyncio.create_task(batcher.score([Item("p", "r")]))
        assert await asyncio.to_thread(entered.wait, 5)
        threading.Timer(0.3, release.set).start()  # stop() waits for the worker thread to finish its call
        await batcher.stop()
        with pytest.raises(ScoringError, match="server stopped"):
            await asyncio.wait_for(request, 5)

    asyncio.run(main())


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
    texts = [format_input(*it) for it in items]
    with running(f"hf:{tiny_reward_model}", ServeConfig(port=0)) as url:
        got = httpx.post(f"{url}/v1/embeddings", json={"input": texts}).json()["data"]
    assert [d["embedding"][0] for d in got] == pytest.approx(want, abs=1e-5)
    assert all(math.isfinite(d["embedding"][0]) for d in got)
    # As on a GPU: requests tokenized ahead of the model (`prepare`), then scored (`score_prepared`).
    ahead = load_scorer(f"hf:{tiny_reward_model}", prefetch=True)
    assert ahead.prepares and not local.prepares
    with running(ahead, ServeConfig(port=0)) as url, httpx.Client(base_url=url) as client:
        with ThreadPoolExecutor(len(texts)) as pool:
            got = list(pool.map(lambda t: client.post("/v1/embeddings", json={"input": t}).json(), texts))
    assert [d["data"][0]["embedding"][0] for d in got] == pytest.approx(want, abs=1e-5)


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
    for field, value in [("max_header_bytes", 100), ("header_timeout_s", 0), ("body_timeout_s", -1),
                         ("keep_alive_timeout_s", 0), ("max_connections", 0), ("verify_queue", 0),
                         ("analysis_queue", 0), ("analysis_workers", 0), ("score_queue_items", 0)]:
        with pytest.raises(ValueError, match=f"--{field.replace('_', '-')}"):
            ServeConfig(**{field: value})


def test_a_full_scorer_queue_answers_503_with_retry_after():
    scorer = RecordingScorer(delay=0.2)
    config = ServeConfig(port=0, max_batch_size=2, max_wait_ms=0, score_queue_items=4)
    with running(scorer, config) as url, httpx.Client(base_url=url, timeout=30) as client:
        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(lambda i: client.post("/v1/embeddings", json={"input": f"p\n{i}"}),
                                    range(12)))
        metrics = client.get("/metrics").text
    full = [r for r in results if r.status_code == 503]
    # At most 4 items wait while the scorer works: the rest are turned away at once, not queued.
    assert 0 < len(full) < 12
    assert all(r.headers["retry-after"] == "1" and "--score-queue-items" in r.json()["detail"] for r in full)
    assert all(r.status_code in (200, 503) for r in results)
    assert sum(scorer.calls) == 12 - len(full)
    assert f'thinkrm_work_rejected_total{{kind="score"}} {len(full)}' in metrics


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
from thinkrm.serving import ServeConfig, serve

class Slow(LengthScorer):
    def score(self, items):
        time.sleep(1.5)
        return super().score(items)

serve(ServeConfig(port=0, graceful_timeout_s=20), Slow(), on_ready=lambda url: print(url, flush=True))
"""


@contextmanager
def server_process(code: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """Run `code` (which serves and prints its URL) in a subprocess; yields the process and the URL."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read()
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_sigterm_lets_in_flight_requests_finish_and_turns_new_ones_away():
    with server_process(SLOW_SERVER) as (proc, url):
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


def _http(sock: socket.socket, request: bytes) -> bytes:
    """Send one request on a raw connection and read its whole response."""
    sock.sendall(request)
    return _read_response(sock)


def _read_response(sock: socket.socket) -> bytes:
    """One whole response (head and body; they may arrive in separate segments), or what came before EOF."""
    data = b""
    while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _content_length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _content_length(data: bytes) -> int:
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    return next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                 if line.startswith(b"content-length:")), 0)


@pytest.mark.slow
def test_a_keep_alive_connection_reused_after_sigterm_gets_503_not_a_reset():
    """Nothing in flight, so the server used to exit at once and a client reusing its idle keep-alive
    connection was reset; the server now waits for open connections (up to --keep-alive-timeout-s)."""
    code = ("from thinkrm.scoring import LengthScorer\nfrom thinkrm.serving import ServeConfig, serve\n"
            "serve(ServeConfig(port=0, keep_alive_timeout_s=3), LengthScorer(), "
            "on_ready=lambda url: print(url, flush=True))")
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with server_process(code) as (proc, url), socket.create_connection(_address(url), timeout=10) as sock:
        assert _http(sock, request).startswith(b"HTTP/1.1 200")
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        again = _http(sock, request)
        assert again.startswith(b"HTTP/1.1 503"), again
        assert b"connection: close" in again.lower() and b"retry-after: 1" in again.lower()
        assert sock.recv(100) == b""  # and then the server closes it, as it said
        proc.wait(timeout=15)  # no connection left: it exits without waiting for the graceful timeout


@pytest.mark.slow
def test_a_connection_answered_before_its_body_came_still_closes_when_idle():
    """uvicorn cancels its keep-alive timer on any data, so a body arriving after its 401 left the connection
    open forever (and a draining server waiting for it)."""
    config = ServeConfig(port=0, api_key=KEY, keep_alive_timeout_s=0.5)
    with running(LengthScorer(), config) as url, socket.create_connection(_address(url), timeout=10) as sock:
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n")
        assert _read_response(sock).startswith(b"HTTP/1.1 401")
        sock.sendall(b"{}")
        start = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server once idle for --keep-alive-timeout-s
        assert time.monotonic() - start < 5


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


HOSTILE_SERVER = """
import resource
# 192 descriptors in all, as a small container might allow: 64 connections after the server's reserve.
resource.setrlimit(resource.RLIMIT_NOFILE, (192, 192))
from thinkrm.scoring import LengthScorer
from thinkrm.serving import ServeConfig, serve
config = ServeConfig(port=0, header_timeout_s=2, body_timeout_s=2, max_header_bytes=16384)
serve(config, LengthScorer(), on_ready=lambda url: print(url, flush=True))
"""


def _stream_until_answered(sock: socket.socket, first: bytes, piece: bytes, most: int) -> bytes:
    """Send `first`, then `piece` up to `most` times, until the server answers; returns its answer.

    Waiting for readability between pieces keeps the client from writing into a connection the server has
    closed (which would reset it and lose the answer)."""
    sock.sendall(first)
    for _ in range(most):
        if select.select([sock], [], [], 0.05)[0]:
            break
        sock.sendall(piece)
    sock.settimeout(10)
    return _read_response(sock)


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed `sock` (after an answer or not); its data is already here if so."""
    sock.settimeout(0.05)
    try:
        while sock.recv(65536):
            pass
        return True
    except TimeoutError:
        return False
    except OSError:  # reset: closed too
        return True


@pytest.mark.slow
def test_slow_and_oversized_clients_do_not_make_ordinary_requests_fail():
    """300 half-sent requests (more than the server has descriptors for), oversized headers and a stalled
    body: ordinary requests, each on a new connection, keep succeeding. Before the limits, the held
    connections used up the descriptors and every ordinary request failed. Their latency meanwhile (quiet vs
    hostile) is measured by benchmarks/bench_reliability.py ("slow headers")."""
    body = {"items": [{"prompt": "p", "response": "abc"}]}

    def ordinary_requests_succeed(url: str, n: int = 15) -> None:
        for _ in range(n):
            r = httpx.post(f"{url}/score", json=body, timeout=10)
            assert r.status_code == 200 and r.json() == {"scores": [-3.0]}

    with server_process(HOSTILE_SERVER) as (_, url):
        address = _address(url)
        ordinary_requests_succeed(url)
        slow = []
        for _ in range(300):
            s = socket.create_connection(address, timeout=10)
            s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")  # no end
            slow.append(s)
        stalled = socket.create_connection(address, timeout=10)
        stalled.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"items\"")
        ordinary_requests_succeed(url)  # with all of them held
        with socket.create_connection(address) as whole, socket.create_connection(address) as streamed:
            # A whole head over the limit, and one still growing: the second is cut off while it streams.
            whole.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
            assert _read_response(whole).startswith(b"HTTP/1.1 431")
            answer = _stream_until_answered(streamed, b"GET /health HTTP/1.1\r\nX-Big: ", b"a" * 4096, 256)
            assert answer.startswith(b"HTTP/1.1 431") and b"--max-header-bytes" in answer
        stalled.settimeout(10)
        late = _read_response(stalled)
        assert late.startswith(b"HTTP/1.1 408") and b"--body-timeout-s" in late
        time.sleep(2.5)  # past --header-timeout-s: every slow client has been answered or closed
        held = sum(not _closed_by_server(s) for s in slow)
        for s in slow + [stalled]:
            s.close()
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert held == 0
    for reason in ("idle_evicted", "header_timeout", "header_too_large"):
        assert f'thinkrm_connections_closed_total{{reason="{reason}"}}' in metrics, reason


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


LITE_SERVER = """
from thinkrm.serving import ServeConfig, serve
serve(ServeConfig(scorer="lite", port=0), on_ready=lambda url: print(url, flush=True))
"""
STEPS = ["Let me compute 12 + 30 = 42.", "Wait, that is wrong. Actually 7 * 8 = 56, not 54.",
         "Alternatively, factor x^2 - 5x + 6 = (x - 2)(x - 3).", "Hmm, let me verify: 3 + 3 = 6.",
         "So the sum of the digits 1 2 3 4 5 6 7 8 9 0 is 45.", "Seconds in 7.8 minutes: 60 * 7.8 = 468."]


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads RSS from /proc")
def test_a_long_running_lite_server_reaches_a_memory_plateau():
    """Rounds of varied traffic (traces of 1-40 steps, prompts of varied length, so every scorer call has a
    new shape): RSS after round 10 within 10% of round 3. The model's heap used to keep what each shape
    freed; the server now hands free heap pages back (thinkrm.serving.batcher._HeapTrimmer)."""
    import random

    rng = random.Random(0)

    def request(i: int) -> dict:
        steps = "\n\n".join(rng.choice(STEPS) for _ in range(rng.randint(1, rng.choice([4, 12, 40]))))
        return {"input": f"{'Given the setup above, ' * rng.randint(0, 12)}Problem {i}: find it.\n{steps}"}

    rss = []
    with server_process(LITE_SERVER) as (proc, url), httpx.Client(base_url=url, timeout=120) as client, \
            ThreadPoolExecutor(16) as pool:
        for r in range(10):
            bodies = [request(r * 1000 + i) for i in range(300)]
            statuses = list(pool.map(lambda b: client.post("/v1/embeddings", json=b).status_code, bodies))
            assert statuses == [200] * len(bodies)
            rss.append(_rss_mib(proc.pid))
    assert rss[9] <= 1.10 * rss[2], [round(x) for x in rss]
