"""The LLM client against a scripted OpenAI-compatible server on 127.0.0.1 (and `transformers serve`)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from scripted_llm import Reply, ScriptedServer

from thinkrm.llm import ContextOverflowError, LLMAuthError, LLMClient, LLMConfig, LLMConnectionError, LLMError, Usage

MSG = [{"role": "user", "content": "What is 2 + 3?"}]


def cfg(url: str, tmp_path: Path | None = None, **kw) -> LLMConfig:
    return LLMConfig(base_url=url, model="m", backoff=0.01, timeout=kw.pop("timeout", 5.0),
                     cache=str(tmp_path / "cache.sqlite") if tmp_path else None, **kw)


def chat(config: LLMConfig, *calls: dict) -> tuple[list, dict[str, Usage]]:
    async def main():
        async with LLMClient(config) as llm:
            out = [await llm.chat(MSG, **c) for c in calls]
            return out, llm.usage
    return asyncio.run(main())


def test_retries_429_and_500_then_succeeds():
    script = lambda body, n: Reply(status=429 if n == 0 else 500) if n < 3 else Reply("five")
    with ScriptedServer(script) as srv:
        (c,), usage = chat(cfg(srv.url), {"stage": "s"})
    assert c.text == "five" and len(srv.requests) == 4
    assert usage["s"].calls == 1 and usage["s"].completion_tokens == 1 and usage["s"].prompt_tokens == 5


def test_gives_up_after_max_retries_with_clear_error():
    with ScriptedServer(lambda body, n: Reply(status=503, error="overloaded")) as srv:
        with pytest.raises(LLMConnectionError, match="failed after 3 attempts.*503: overloaded"):
            chat(cfg(srv.url, max_retries=2), {})
        assert len(srv.requests) == 3


def test_slow_reply_times_out_then_retry_succeeds():
    script = lambda body, n: Reply("late", delay=1.0) if n == 0 else Reply("quick")
    with ScriptedServer(script) as srv:
        (c,), _ = chat(cfg(srv.url, timeout=0.3), {})
    assert c.text == "quick" and len(srv.requests) == 2


def test_unreachable_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(LLMConnectionError, match=f"127.0.0.1:{port}/v1/chat/completions failed.*cannot connect"):
        chat(cfg(f"http://127.0.0.1:{port}/v1", max_retries=1), {})


def test_wrong_api_key_fails_fast():
    with ScriptedServer(lambda body, n: Reply("ok"), api_key="right") as srv:
        with pytest.raises(LLMAuthError, match="refused the API key.*THINKRM_LLM_API_KEY"):
            chat(cfg(srv.url, api_key="wrong"), {})
        (c,), _ = chat(cfg(srv.url, api_key="right"), {})
        assert c.text == "ok"


def test_context_overflow_is_not_retried():
    msg = "This model's maximum context length is 4096 tokens. However, you requested 9000 tokens."
    with ScriptedServer(lambda body, n: Reply(status=400, error=msg)) as srv:
        with pytest.raises(ContextOverflowError, match="context window"):
            chat(cfg(srv.url), {})
        assert len(srv.requests) == 1


def test_other_client_errors_fail_fast_and_name_the_url():
    with ScriptedServer(lambda body, n: Reply(status=404, error="model 'm' not found")) as srv:
        with pytest.raises(LLMError, match="404.*base URL"):
            chat(cfg(srv.url), {})
        assert len(srv.requests) == 1


def test_cache_makes_reruns_free_and_keeps_samples_distinct(tmp_path):
    with ScriptedServer(lambda body, n: Reply(f"answer {n}")) as srv:
        first, u1 = chat(cfg(srv.url, tmp_path), {"sample": 0, "temperature": 0.7}, {"sample": 1, "temperature": 0.7})
        again, u2 = chat(cfg(srv.url, tmp_path), {"sample": 0, "temperature": 0.7}, {"sample": 1, "temperature": 0.7})
        other, _ = chat(cfg(srv.url, tmp_path), {"sample": 0, "temperature": 0.3})
    assert [c.text for c in first] == ["answer 0", "answer 1"]
    assert [c.text for c in again] == ["answer 0", "answer 1"] and all(c.cached for c in again)
    assert other[0].text == "answer 2"  # a different sampling parameter is a different request
    assert len(srv.requests) == 3
    assert [r["seed"] for r in srv.requests[:2]] == [0, 1]
    assert u2["default"].cache_hits == 2 and u2["default"].paid_prompt_tokens == 0
    assert u2["default"].prompt_tokens == u1["default"].prompt_tokens > 0  # accounting still sees the work


def test_response_format_sent_then_dropped_when_rejected():
    schema = {"name": "x", "schema": {"type": "object"}}
    with ScriptedServer(lambda body, n: Reply("{}"), reject_response_format=True) as srv:
        async def main():
            async with LLMClient(cfg(srv.url, max_retries=0)) as llm:  # the fallback is not a retry
                await llm.chat(MSG, json_schema=schema)
                await llm.chat(MSG + MSG, json_schema=schema)
                return llm.json_schema_supported
        assert asyncio.run(main()) is False
    # The scripted server only records requests it answered: both went out without the rejected field.
    assert len(srv.requests) == 2 and all("response_format" not in r for r in srv.requests)
    with ScriptedServer(lambda body, n: Reply("{}")) as srv:
        chat(cfg(srv.url), {"json_schema": schema})
    assert srv.requests[0]["response_format"]["json_schema"]["schema"] == {"type": "object"}


def test_concurrency_is_bounded():
    lock, live, peak = threading.Lock(), [0], [0]

    def script(body, n):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.1)
        with lock:
            live[0] -= 1
        return Reply("x")

    with ScriptedServer(script) as srv:
        async def main():
            async with LLMClient(cfg(srv.url, concurrency=3)) as llm:
                await asyncio.gather(*(llm.chat(MSG, sample=i) for i in range(9)))
        asyncio.run(main())
    assert len(srv.requests) == 9 and peak[0] == 3


def test_config_from_environment(monkeypatch):
    monkeypatch.setenv("THINKRM_LLM_BASE_URL", "http://h:1/v1/")
    monkeypatch.setenv("THINKRM_LLM_MODEL", "env-model")
    monkeypatch.setenv("THINKRM_LLM_API_KEY", "k")
    r = LLMConfig().resolved()
    assert (r.base_url, r.model, r.api_key) == ("http://h:1/v1", "env-model", "k")
    assert LLMConfig(model="flag").resolved().model == "flag"
    monkeypatch.delenv("THINKRM_LLM_BASE_URL")
    with pytest.raises(LLMError, match="--base-url or set THINKRM_LLM_BASE_URL"):
        LLMConfig().resolved()


# ---- a real server implementation ------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def transformers_server(tiny_causal_lm):
    """`transformers serve` hosting the tiny test model (needs the `serve-test` extra: openai)."""
    pytest.importorskip("openai", reason="transformers serve needs the serve-test extra (openai)")
    exe = Path(sys.executable).with_name("transformers")
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([str(exe), "serve", str(tiny_causal_lm), "--host", "127.0.0.1", "--port", str(port),
                             "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    import httpx

    try:
        for _ in range(240):
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("transformers serve did not come up in 120 s")
        yield f"http://127.0.0.1:{port}/v1", str(tiny_causal_lm)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stderr.close()


@pytest.mark.slow
def test_transformers_serve_protocol(transformers_server, tmp_path):
    url, model = transformers_server
    config = LLMConfig(base_url=url, model=model, cache=str(tmp_path / "c.sqlite"), backoff=0.01, max_retries=1)
    schema = {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}

    async def main():
        async with LLMClient(config) as llm:
            plain = await llm.chat(MSG, max_tokens=8, stage="plain")
            structured = await llm.chat(MSG, max_tokens=8, json_schema=schema, stage="json")
            sampled = await llm.chat(MSG, max_tokens=8, temperature=1.0, sample=3, stage="plain")
            return plain, structured, sampled, llm.usage
    plain, structured, sampled, usage = asyncio.run(main())
    assert plain.finish_reason == "length" and plain.completion_tokens == 8 and plain.prompt_tokens > 0
    assert usage["plain"].calls == 2 and usage["json"].calls == 1
    # The tiny model's output is nonsense, not JSON: callers must parse strictly (see test_llm_structure).
    with pytest.raises(json.JSONDecodeError):
        json.loads(structured.text)
    again = asyncio.run(_one(config, plain_max=8))
    assert again.cached and again.text == plain.text
    # A server pinned to one model rejects another model name with a clear, non-retried error.
    with pytest.raises(LLMError, match="rejected the request.*HTTP 400"):
        asyncio.run(_one(LLMConfig(base_url=url, model="other-model", backoff=0.01)))


async def _one(config: LLMConfig, plain_max: int = 8, messages=None):
    async with LLMClient(config) as llm:
        return await llm.chat(messages or MSG, max_tokens=plain_max, stage="plain")


@pytest.mark.slow
def test_pipeline_fails_closed_against_transformers_serve(transformers_server, tmp_path):
    """The tiny model answers nonsense: no label, no structure, no summary, no pair is ever guessed."""
    from thinkrm.dag import build_dag
    from thinkrm.llm.build_pairs import BuildConfig, build_pairs
    from thinkrm.llm.judge import JudgeConfig, PairInput, judge_pair
    from thinkrm.llm.structuring import BatchLLMStructurer, summarize_dag

    url, model = transformers_server
    config = LLMConfig(base_url=url, model=model, backoff=0.01, max_retries=1, cache=str(tmp_path / "c.sqlite"))
    text = ("First, we add the two numbers together, two plus three, which gives five in total.\n\n"
            "Wait, let me double check the addition by counting up from two: three, four, five.\n\n"
            "So both ways agree and the answer is 5.")
    pair = PairInput("p", "What is 2 + 3?", a=text, b="First, 2 + 3 = 5.\n\nSo the answer is 5.")

    async def judge_and_summarize():
        async with LLMClient(config) as llm:
            verdict = await judge_pair(llm, pair, JudgeConfig(repeats=1, max_tokens=12, invalid_retries=1))
            dag = build_dag(text)
            summarized = await summarize_dag(llm, dag, pair.prompt, max_tokens=16)
            return verdict, summarized, dag
    verdict, summarized, dag = asyncio.run(judge_and_summarize())
    assert verdict["winner"] is None and verdict["reason"] == "invalid" and verdict["calls"] == 4 * 2
    assert not summarized and dag.meta["summaries"].startswith("extractive")
    with BatchLLMStructurer(config=config, max_tokens=16, invalid_retries=0) as s:
        structured = build_dag(text, s)
    assert s.invalid_answers == s.calls >= 1 and all(n.action == "continue" for n in structured.nodes)
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps({"id": "q", "prompt": "What is 2 + 3?", "gold": "5"}) + "\n")
    summary = build_pairs(problems, tmp_path / "pairs.jsonl", config,
                          BuildConfig(generators=[model], n=2, max_tokens=12, judge=JudgeConfig(repeats=1)))
    assert summary["traces"] == 2 and summary["verified_correct"] == 0 and summary["kept"] == 0
    assert (tmp_path / "pairs.jsonl").read_text() == ""


def test_separate_reasoning_content_is_kept_as_think_block():
    with ScriptedServer(lambda body, n: Reply("The answer is 5.", reasoning="2 + 3 = 5")) as srv:
        (c,), _ = chat(cfg(srv.url), {})
    assert c.text == "<think>\n2 + 3 = 5\n</think>\nThe answer is 5."



def test_rejected_seed_is_dropped():
    def script(body, n):
        if "seed" in body:
            return Reply(status=400, error="Unrecognized request argument supplied: seed")
        return Reply("ok")
    with ScriptedServer(script) as srv:
        (a, b), _ = chat(cfg(srv.url, max_retries=0), {"temperature": 0.7}, {"temperature": 0.7, "sample": 1})
    assert a.text == b.text == "ok" and [("seed" in r) for r in srv.requests] == [True, False, False]


def test_cache_key_separates_servers_serving_the_same_model_name():
    from thinkrm.llm import request_key

    args = ("m", [{"role": "user", "content": "hi"}], {"temperature": 0.7}, 0)
    assert request_key("http://a/v1", *args) != request_key("http://b/v1", *args)
    assert request_key("http://a/v1", *args) == request_key("http://a/v1", *args)


def test_ask_until_valid_reasks_hotter_with_fresh_samples_then_gives_up():
    """The one re-ask loop of the pipeline: first ask at the caller's temperature, re-asks at
    max(temperature, 0.7), each attempt its own sample index (cache entry and seed)."""
    from thinkrm.llm import ask_until_valid, retry_temperature

    assert [retry_temperature(0.0, k) for k in range(3)] == [0.0, 0.7, 0.7]
    assert [retry_temperature(1.0, k) for k in range(2)] == [1.0, 1.0]
    parse = lambda text: int(text) if text.isdigit() else None  # noqa: E731

    async def ask(url, **kw):
        async with LLMClient(cfg(url)) as llm:
            return await ask_until_valid(llm, MSG, parse, **kw)
    with ScriptedServer(lambda body, n: Reply("5" if n == 2 else "five")) as srv:
        got = asyncio.run(ask(srv.url, retries=3, sample=100, stage="t"))
    assert got.value == 5 and got.attempts == 3 and got.last.text == "5"
    assert [r["temperature"] for r in srv.requests] == [0.0, 0.7, 0.7]
    assert [r.get("seed") for r in srv.requests] == [None, 101, 102]
    with ScriptedServer(lambda body, n: Reply("five")) as srv:
        got = asyncio.run(ask(srv.url, retries=1, temperature=0.9))
    assert got.value is None and got.attempts == 2 and [r["temperature"] for r in srv.requests] == [0.9, 0.9]
