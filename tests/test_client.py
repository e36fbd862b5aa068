"""`thinkrm.Client` and the remote scorer specs against a real `thinkrm serve` on 127.0.0.1."""

from __future__ import annotations

import socket

import pytest

import thinkrm
from thinkrm.formatting import Item
from thinkrm.remote import ServerResponseError
from thinkrm.scoring import LengthScorer, Scorer, load_scorer
from thinkrm.serving import ServeConfig, running

KEY = "client-key"
ITEMS = [Item("What is 2+3?", "2 + 3 = 5.\n\nSo the answer is 5."),
         Item("A train goes 60 km/h.\nHow far in 2 h?", "60 * 2 = 120\n\nWait, 60 * 2 = 120 km indeed."),
         Item("", "Only reasoning, no prompt."),
         Item("Seconds in 7.8 minutes?", "60 * 7.8 = 468"),
         Item("Factor x^2 - 5x + 6.", "(x - 2)(x - 3)\n\nCheck: x^2 - 5x + 6. Yes.")]


@pytest.fixture(scope="module")
def url():
    with running(LengthScorer(), ServeConfig(port=0, api_key=KEY)) as base:
        yield base


def test_client_scores_like_the_scorer_behind_the_server(url):
    client = thinkrm.Client(url, api_key=KEY)
    assert isinstance(client, Scorer)
    assert client.score(ITEMS) == LengthScorer().score(ITEMS)
    assert client.score([]) == []
    client.close()


def test_client_chunks_large_batches(url):
    with thinkrm.Client(url, api_key=KEY, batch_size=2, concurrency=2) as client:
        assert client.score(ITEMS) == LengthScorer().score(ITEMS)
        assert client.requests_sent == 3


def test_client_analyze_returns_score_and_me2_per_item(url):
    with thinkrm.Client(url, api_key=KEY, batch_size=2) as client:
        rows = client.analyze(ITEMS[:3])
    assert [r["score"] for r in rows] == LengthScorer().score(ITEMS[:3])
    for row, item in zip(rows, ITEMS):
        assert set(row["me2"]) >= {"size", "macro_efficiency", "macro_effectiveness", "micro_efficiency",
                                   "micro_effectiveness", "findings"}
        assert row["me2"]["size"]["chars"] == len(item.reasoning)


def test_client_health_needs_no_key(url):
    with thinkrm.Client(url) as client:
        health = client.health()
    assert health["status"] == "ok" and health["scorer"] == "length"
    assert health["version"] == thinkrm.__version__


def test_wrong_key_is_a_clear_error_not_a_retry_loop(url):
    with thinkrm.Client(url, api_key="nope") as client:
        with pytest.raises(ServerResponseError, match="401.*API key"):
            client.score(ITEMS[:1])
        assert client.requests_sent == 1


def test_key_from_environment_and_spec_string(url, monkeypatch):
    monkeypatch.setenv("THINKRM_API_KEY", KEY)
    with thinkrm.Client(url) as client:
        assert client.score(ITEMS[:2]) == LengthScorer().score(ITEMS[:2])
    with load_scorer(f"thinkrm:{url}") as scorer:
        assert scorer.score(ITEMS[:2]) == LengthScorer().score(ITEMS[:2])


def test_unreachable_server_is_a_connection_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        with thinkrm.Client(f"http://127.0.0.1:{port}", retries=1, backoff=0.01) as client:
            with pytest.raises(ConnectionError, match="cannot reach"):
                client.health()
            with pytest.raises(ConnectionError, match="after 2 attempts"):
                client.score(ITEMS[:1])


@pytest.fixture(scope="module")
def model_server(tiny_reward_model):
    """One tiny Llama reward model behind `thinkrm serve`, and its scores computed in process."""
    spec = f"hf:{tiny_reward_model}"
    with load_scorer(spec) as local:
        want = local.score(ITEMS)
    with running(spec, ServeConfig(port=0)) as base:
        yield base, want


@pytest.mark.parametrize("protocol", ["thinkrm", "sglang", "vllm", "openrlhf"])
def test_every_remote_protocol_through_the_server_matches_the_model_in_process(model_server, protocol):
    """Each client protocol must get the model's own scores, i.e. every protocol delivers exactly
    `format_input(prompt, reasoning)` to the model, multi-line prompts included."""
    base, want = model_server
    with load_scorer(f"{protocol}:{base}") as remote:
        assert remote.score(ITEMS) == pytest.approx(want, abs=1e-5)
