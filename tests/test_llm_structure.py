"""LLM structurers and the LLM macro view against a scripted OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from scripted_llm import Reply, ScriptedServer

from thinkrm.dag import build_dag
from thinkrm.llm import LLMClient, LLMConfig
from thinkrm.llm import prompts as P
from thinkrm.llm.structuring import (
    BatchLLMStructurer,
    LLMStructurer,
    build_dag_async,
    decide,
    parse_batch_answer,
    parse_step_answer,
    summarize_dag,
    tie_break,
)
from thinkrm.structurers import Proposal, StepRef, View

STEPS = [
    "First, we set up the equation for the total number of apples in the basket, which is 3x + 5 = 20.",
    "So subtracting five from both sides gives 3x = 15 and therefore x equals 5 apples per box.",
    "Next, we multiply the number of boxes by the apples in each box to get the total for the shop.",
    "Alternatively, we can try small values of x directly: x = 4 gives 17 and x = 5 gives 20.",
    "So both methods agree and the answer is 5.",
]
TEXT = "\n\n".join(STEPS)


def current_step(body) -> int:
    return int(re.search(r"Current step:\n\[step (\d+)\]", body["messages"][-1]["content"]).group(1))


def step_reply(action: str, prev: str = "") -> Reply:
    return Reply(f"Brief reason.\n<|action|>{action}\n<|previous|>{prev}")


def config(url: str, tmp_path=None) -> LLMConfig:
    return LLMConfig(base_url=url, model="m", backoff=0.01, cache=str(tmp_path / "c.sqlite") if tmp_path else None)


def view(main=(0, 1, 2), leaves=(), step=5) -> View:
    return View(step=StepRef(step, "s"), window=tuple(StepRef(i, "t") for i in main),
                open_leaves=tuple(StepRef(i, "l") for i in leaves), main_path=tuple(main))


def test_parse_step_answer_enforces_the_validity_rules():
    v = view(main=(0, 1, 2), leaves=(3, 4))
    assert parse_step_answer("x\n<|action|>continue\n<|previous|>", v) == Proposal("continue")
    assert parse_step_answer("<|action|>backtrack\n<|previous|>1", v) == Proposal("backtrack", (1,))
    assert parse_step_answer("<|action|>backtrack\n<|previous|>2", v) is None  # the tip: not earlier
    assert parse_step_answer("<|action|>backtrack\n<|previous|>3", v) is None  # not on the main path
    assert parse_step_answer("<|action|>backtrack\n<|previous|>0, 1", v) is None
    assert parse_step_answer("<|action|>merge\n<|previous|>2, 3", v) == Proposal("merge", (2, 3))
    assert parse_step_answer("<|action|>merge\n<|previous|>3,4", v) == Proposal("merge", (3, 4))
    assert parse_step_answer("<|action|>merge\n<|previous|>1, 2", v) is None  # no other branch
    assert parse_step_answer("<|action|>merge\n<|previous|>1, 2, 3", v) is None  # two from the main path
    assert parse_step_answer("<|action|>merge\n<|previous|>3, 3", v) is None  # not two distinct
    assert parse_step_answer("<|action|>merge\n<|previous|>3, 9", v) is None  # unknown step
    assert parse_step_answer("I would continue here.", v) is None


def test_plurality_and_tie_break():
    c, b1, b0, m = Proposal("continue"), Proposal("backtrack", (1,)), Proposal("backtrack", (0,)), \
        Proposal("merge", (2, 3))
    assert decide([c]) == c
    assert decide([c, b1]) is None
    assert decide([c, b1, b1]) == b1
    assert decide([b0, b1, b1, c]) == b1  # the most common target of the winning action
    assert decide([]) is None
    assert tie_break([m, b1]) == b1 and tie_break([m, c, b1]) == c
    assert tie_break([]) == Proposal("continue", reason="no valid answer")


def test_llm_mode_builds_the_scripted_dag():
    plan = {1: step_reply("continue"), 2: step_reply("continue"), 3: step_reply("backtrack", "1"),
            4: step_reply("merge", "2, 3")}
    with ScriptedServer(lambda body, n: plan[current_step(body)]) as srv:
        with LLMStructurer(config=config(srv.url)) as s:
            dag = build_dag(TEXT, s)
    assert [n.action for n in dag.nodes] == ["continue", "continue", "continue", "backtrack", "merge"]
    assert dag.nodes[3].parents == [1] and dag.nodes[4].parents == [2, 3]
    assert dag.meta["invalid_proposals"] == 0 and dag.structurer == "llm"
    # Each step's first round of 3 samples agreed, so one round per step.
    assert s.calls == 4 * 3 == len(srv.requests) and s.usage["structure"].calls == 12
    shown = srv.requests[-1]["messages"][-1]["content"]
    main, leaves = shown.split("Open leaves")
    assert "[step 2] Next" in leaves and "[step 3] Alternatively" in main and "[step 2]" not in main
    assert "Current step:\n[step 4] So both" in shown
    assert len({r["seed"] for r in srv.requests[:3]}) == 3  # the samples of a round are distinct requests


def test_llm_mode_resamples_until_a_strict_plurality():
    # Step 3: round 1 splits continue/backtrack/garbage (a tie); round 2 tips it to backtrack, and the most
    # voted target wins.
    answers = {0: step_reply("continue"), 1: step_reply("backtrack", "1"), 2: Reply("no tags at all"),
               3: step_reply("backtrack", "1"), 4: step_reply("backtrack", "0"), 5: step_reply("continue")}

    def script(body, n):
        if current_step(body) == 3:
            return answers[body["seed"]]
        return step_reply("continue")
    with ScriptedServer(script) as srv:
        with LLMStructurer(config=config(srv.url)) as s:
            dag = build_dag("\n\n".join(STEPS[:4]), s)
    assert s.calls == 3 + 3 + 6 and s.invalid_answers == 1
    assert dag.nodes[3].action == "backtrack" and dag.nodes[3].parents == [1]


def test_llm_mode_fails_closed_to_continue_after_max_rounds():
    with ScriptedServer(lambda body, n: Reply("I am not sure.")) as srv:
        with LLMStructurer(config=config(srv.url), max_rounds=2) as s:
            dag = build_dag(TEXT, s)
    assert all(n.action == "continue" for n in dag.nodes)
    assert s.calls == 4 * 2 * 3 and s.invalid_answers == s.calls


def batch_reply(labels: dict[int, tuple[str, list[int]]]):
    def script(body, n):
        ids = [int(i) for i in re.findall(r"\[step (\d+)\]", body["messages"][-1]["content"].split("Label these")[1])]
        return Reply(json.dumps({"steps": [{"id": i, "action": labels.get(i, ("continue", []))[0],
                                            "previous": labels.get(i, ("continue", []))[1]} for i in ids]}))
    return script


def test_batch_mode_labels_a_window_per_call():
    labels = {3: ("backtrack", [1]), 4: ("merge", [2, 3])}
    with ScriptedServer(batch_reply(labels)) as srv:
        with BatchLLMStructurer(config=config(srv.url), batch_size=2) as s:
            dag = build_dag(TEXT, s)
    assert [n.action for n in dag.nodes] == ["continue", "continue", "continue", "backtrack", "merge"]
    assert s.calls == 2 and len(srv.requests) == 2
    assert srv.requests[0]["response_format"]["json_schema"]["name"] == "step_actions"


def test_parse_batch_answer_is_strict():
    up = [StepRef(3, "a"), StepRef(4, "b")]
    ok = '```json\n{"steps": [{"id": 3, "action": "continue", "previous": []}, ' \
         '{"id": 4, "action": "merge", "previous": [3, 2, 3]}]}\n```'
    assert parse_batch_answer(ok, up) == [Proposal("continue"), Proposal("merge", (2, 3))]
    assert parse_batch_answer('{"steps": [{"id": 3, "action": "continue", "previous": []}]}', up) is None
    assert parse_batch_answer('{"steps": [{"id": 4, "action": "continue", "previous": []}, '
                              '{"id": 3, "action": "continue", "previous": []}]}', up) is None
    assert parse_batch_answer('{"steps": [{"id": 3, "action": "jump", "previous": []}, '
                              '{"id": 4, "action": "continue", "previous": []}]}', up) is None
    assert parse_batch_answer('Sure! {"steps": []}', up) is None


def test_batch_mode_retries_invalid_json_then_continues():
    with ScriptedServer(lambda body, n: Reply("steps: all continue")) as srv:
        with BatchLLMStructurer(config=config(srv.url), invalid_retries=1) as s:
            dag = build_dag(TEXT, s)
    assert all(n.action == "continue" for n in dag.nodes)
    assert s.calls == 2 and s.invalid_answers == 2
    assert srv.requests[1]["temperature"] == 0.7  # a retry samples, so it can differ


def long_trace(n: int) -> str:
    return "\n\n".join(f"Next, we compute the partial sum number {i}, adding {i} squared which is {i * i}, "
                       f"so the running total keeps growing as expected." for i in range(n))


def test_batch_mode_cuts_calls_and_tokens_at_least_5x():
    """Same traces, both modes, a judge that always agrees: calls and server-counted tokens per trace."""
    def script(body, n):
        if body["messages"][0]["content"] == P.STEP_SYSTEM:
            return step_reply("continue")
        return batch_reply({})(body, n)

    traces = [long_trace(n) for n in (12, 20, 25)]
    costs = {}
    with ScriptedServer(script) as srv:
        for mode, cls in (("llm", LLMStructurer), ("llm-batch", BatchLLMStructurer)):
            with cls(config=config(srv.url)) as s:
                for t in traces:
                    build_dag(t, s)
                u = s.usage["structure"]
            costs[mode] = (u.calls / len(traces), u.tokens / len(traces))
    assert costs["llm"][0] / costs["llm-batch"][0] >= 5
    assert costs["llm"][1] / costs["llm-batch"][1] >= 5


def test_summaries_replace_extractive_ones_and_fail_closed():
    dag_text = TEXT

    def good(body, n):
        ids = [int(i) for i in re.findall(r"\[part (\d+)\]", body["messages"][-1]["content"])]
        return Reply(json.dumps({"summaries": [{"id": i, "summary": f"Part {i} does a thing."} for i in ids]}))

    async def run(url, dag):
        async with LLMClient(config(url)) as llm:
            return await summarize_dag(llm, dag, "How many apples?")

    dag = build_dag(dag_text)
    with ScriptedServer(good) as srv:
        assert asyncio.run(run(srv.url, dag))
    first = dag.supernodes[0]
    assert dag.macro_view().splitlines()[0] == f"{first.tag()} Part 0 does a thing."
    dag = build_dag(dag_text)
    before = dag.macro_view()
    with ScriptedServer(lambda body, n: Reply('{"summaries": [{"id": 0, "summary": "only one"}]}')) as srv:
        assert not asyncio.run(run(srv.url, dag))
    assert dag.macro_view() == before and dag.meta["summaries"].startswith("extractive")


def test_build_dag_async_shares_the_pipeline_client(tmp_path):
    plan = {1: step_reply("continue"), 2: step_reply("continue"), 3: step_reply("backtrack", "1"),
            4: step_reply("merge", "2, 3")}

    async def run(url):
        async with LLMClient(config(url, tmp_path)) as llm:
            dags = await asyncio.gather(build_dag_async(llm, TEXT, "llm"), build_dag_async(llm, TEXT, "llm-batch"))
            return dags, llm.usage

    def script(body, n):
        if body["messages"][0]["content"] == P.STEP_SYSTEM:
            return plan[current_step(body)]
        return batch_reply({3: ("backtrack", [1])})(body, n)
    with ScriptedServer(script) as srv:
        (d1, d2), usage = asyncio.run(run(srv.url))
        assert usage["structure"].calls == 12 + 1
        asyncio.run(run(srv.url))  # cached: no new request
        assert len(srv.requests) == 13
    assert [n.action for n in d1.nodes][-2:] == ["backtrack", "merge"]
    assert [n.action for n in d2.nodes][-2:] == ["backtrack", "continue"]


def test_missing_server_config_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("THINKRM_LLM_BASE_URL", raising=False)
    with pytest.raises(Exception, match="THINKRM_LLM_BASE_URL"):
        build_dag(TEXT, "llm")


def test_shared_client_on_its_own_loop_is_a_clear_error():
    async def run():
        async with LLMClient(LLMConfig(base_url="http://127.0.0.1:9/v1", model="m")) as llm:
            s = LLMStructurer(llm=llm, loop=asyncio.get_running_loop())
            build_dag(TEXT, s)
    with pytest.raises(RuntimeError, match="build_dag_async"):
        asyncio.run(run())
