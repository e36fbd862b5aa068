"""The ME² pairwise judge against scripted judges on a real local HTTP server."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from scripted_llm import Reply, ScriptedServer, always, prefers, traces_in

from thinkrm.io import InputError, read_jsonl
from thinkrm.llm import LLMClient, LLMConfig
from thinkrm.llm import prompts as P
from thinkrm.llm.judge import JudgeConfig, PairInput, judge_file, judge_pair, load_judge_pairs, parse_decision, truncate

GOOD = ("First, we set up the equation 3x + 5 = 20 for the apples in the basket, GOOD and direct.\n\n"
        "So subtracting five from both sides gives 3x = 15, and x = 5. The answer is 5.")
BAD = ("First, we set up the equation 3x + 5 = 20 for the apples in the basket.\n\n"
       "Wait, maybe it is 3x - 5 = 20, which gives x = 25/3, hmm, that is not whole.\n\n"
       "Alternatively, we can try small values: x = 4 gives 17 and x = 5 gives 20.\n\n"
       "So the answer is 5.")
PAIR = PairInput(id="p1", prompt="A basket holds 3 boxes of x apples and 5 loose ones, 20 in all. x?", a=BAD, b=GOOD)


def judge(script, pair=PAIR, cache=None, **kw):
    with ScriptedServer(script) as srv:
        async def main():
            async with LLMClient(LLMConfig(base_url=srv.url, model="judge", backoff=0.01, cache=cache)) as llm:
                return await judge_pair(llm, pair, JudgeConfig(**kw))
        return asyncio.run(main()), srv.requests


def test_parse_decision_is_strict():
    assert parse_decision("Reasons.\n<|decision|>Trace 2") == ("Trace 2", "Reasons.")
    assert parse_decision("x <|decision|> Tie \n") == ("Tie", "x")
    assert parse_decision("<|decision|>Trace 1 <|decision|>Trace 2")[0] == "Trace 2"
    for bad in ("Trace 1", "<|decision|>trace 1", "<|decision|>Trace 1.", "<|decision|>Trace 3",
                "<|decision|>Trace 1\nActually no.", "<|decision|>**Trace 1**", ""):
        assert parse_decision(bad)[0] is None, bad


def test_truncate_keeps_head_and_tail():
    text = "H" * 1000 + "M" * 5000 + "T" * 1000
    out, cut = truncate(text, 1000)
    assert cut and out.startswith("H" * 600) and out.endswith("T" * 400) and "[... 6000 characters omitted ...]" in out
    assert truncate("short", 1000) == ("short", False)


def test_consistent_judge_yields_its_label():
    rec, reqs = judge(prefers("GOOD"))
    assert rec["winner"] == "b" and rec["reason"] == "consistent"
    assert len(rec["votes"]) == 6 and rec["calls"] == 30 == len(reqs) and rec["calls_saved"] == 0
    assert [v["order"] for v in rec["votes"]] == ["ab", "ba"] * 3
    for v in rec["votes"]:
        assert v["decision"] == "b" and v["aggregate"]["decision"] == "b"
        assert set(v["dimensions"]) == {d.key for d in P.DIMENSIONS}
        assert all(d["decision"] == "b" and d["rationale"] for d in v["dimensions"].values())
    # Both orders really were shown: GOOD appears as Trace 2 in "ab" and as Trace 1 in "ba".
    shown = [next(k for k, t in traces_in(r).items() if "GOOD" in t) for r in reqs]
    assert set(shown) == {"1", "2"}
    assert rec["tokens"]["prompt"] > 0 and rec["tokens"]["completion"] > 0


def test_position_biased_judge_keeps_no_label_and_stops_early():
    rec, reqs = judge(always("Trace 1"))
    assert rec["winner"] is None and rec["reason"] == "inconsistent"
    assert len(rec["votes"]) == 2 and rec["calls"] == 10 == len(reqs) and rec["calls_saved"] == 20
    assert [v["decision"] for v in rec["votes"]] == ["a", "b"]
    full, _ = judge(always("Trace 1"), early_stop=False)
    assert full["reason"] == "inconsistent" and full["calls"] == 30 and full["calls_saved"] == 0


def test_tie_is_never_kept():
    rec, reqs = judge(always("Tie"))
    assert rec["winner"] is None and rec["reason"] == "tie" and rec["calls"] == 5 and rec["calls_saved"] == 25


def test_invalid_answers_are_retried_then_reported_never_guessed():
    rec, reqs = judge(lambda body, n: Reply("Trace 1 is better, clearly."), invalid_retries=2)
    assert rec["winner"] is None and rec["reason"] == "invalid"
    vote = rec["votes"][0]
    assert vote["decision"] is None and vote["aggregate"] is None  # no aggregation without four verdicts
    assert all(d["label"] is None and d["attempts"] == 3 for d in vote["dimensions"].values())
    assert rec["calls"] == 4 * 3 == len(reqs)
    assert {r["temperature"] for r in reqs} == {0.7}


def test_an_invalid_first_answer_is_recovered_by_a_retry():
    good = prefers("GOOD")
    rec, reqs = judge(lambda body, n: Reply("Trace 2.") if body["temperature"] == 0.0 else good(body, n),
                      temperature=0.0)
    assert rec["reason"] == "consistent" and rec["winner"] == "b"
    assert all(d["attempts"] == 2 for v in rec["votes"] for d in v["dimensions"].values())
    assert rec["calls"] == 60 and {r["temperature"] for r in reqs} == {0.0, 0.7}


def test_structured_view_shows_macro_and_micro_views_raw_view_shows_traces():
    _, reqs = judge(prefers("GOOD"), repeats=1)
    by_aspect = {re.search(r"Aspect: ([\w-]+)", r["messages"][-1]["content"]).group(1): r["messages"][-1]["content"]
                 for r in reqs if r["messages"][0]["content"] == P.JUDGE_SYSTEM}
    assert "<Root" in by_aspect["Macro-Efficiency"] and "<Root" not in by_aspect["Micro-Efficiency"]
    assert P.VIEW_NOTE["micro"] in by_aspect["Micro-Effectiveness"]
    agg = [r for r in reqs if r["messages"][0]["content"] == P.AGGREGATE_SYSTEM]
    assert len(agg) == 2 and "Wait, maybe it is 3x - 5" in agg[0]["messages"][-1]["content"]
    _, raw = judge(prefers("GOOD"), repeats=1, view="raw")
    dim_prompts = [r["messages"][-1]["content"] for r in raw if r["messages"][0]["content"] == P.JUDGE_SYSTEM]
    assert all(P.VIEW_NOTE["raw"] in p and "<Root" not in p and "Wait, maybe" in p for p in dim_prompts)


def test_context_overflow_halves_the_budget_and_says_so():
    def script(body, n):
        if len(body["messages"][-1]["content"]) > 1500:
            return Reply(status=400, error="This model's maximum context length is 512 tokens.")
        return prefers("GOOD")(body, n)
    long_good, long_bad = GOOD + "\n\nSo " + "x" * 3000, BAD + "\n\nSo " + "y" * 3000
    rec, reqs = judge(script, pair=PairInput("p", "q?", a=long_bad, b=long_good), repeats=1,
                      max_trace_chars=2400, view="raw")
    # 2400 -> 1200 -> 600 fits the dimension prompts, the aggregation prompt (two traces plus four
    # rationales) needs 300; halving is kept for the rest of the pair.
    assert rec["truncated"] and rec["truncated_to"] == 300 and "context window" in rec["error"]
    assert "characters omitted" in reqs[-1]["messages"][-1]["content"]
    assert rec["reason"] == "consistent" and rec["winner"] == "b"


def write_pairs(path, n=3):
    rows = [{"id": f"p{i}", "prompt": PAIR.prompt, "a": BAD, "b": GOOD + " " * i} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.slow
def test_judge_file_is_resumable_and_summarises(tmp_path):
    pairs, out = tmp_path / "pairs.jsonl", tmp_path / "verdicts.jsonl"
    write_pairs(pairs)
    cfg = JudgeConfig(repeats=1)
    with ScriptedServer(prefers("GOOD")) as srv:
        llm = LLMConfig(base_url=srv.url, model="judge", cache=str(tmp_path / "cache.sqlite"))
        summary = judge_file(pairs, out, llm, cfg)
        assert summary["pairs"] == 3 and summary["consistent"] == 3 and summary["rates"]["consistent"] == 1.0
        assert summary["usage"]["judge"]["calls"] == 30
        n = len(srv.requests)
        again = judge_file(pairs, out, llm, cfg)
        assert len(srv.requests) == n and again["pairs"] == 3  # nothing redone
    recs = list(read_jsonl(out))
    assert sorted(r["id"] for r in recs) == ["p0", "p1", "p2"] and all(r["winner"] == "b" for r in recs)


def test_bad_pairs_file_names_line_and_field(tmp_path):
    p = tmp_path / "pairs.jsonl"
    p.write_text(json.dumps({"prompt": "q", "a": "x"}) + "\n")
    with pytest.raises(InputError, match=r"pairs.jsonl:1: field 'b': missing"):
        load_judge_pairs(p)
    p.write_text(json.dumps({"prompt": "q", "a": "x", "b": 3}) + "\n")
    with pytest.raises(InputError, match="field 'b': expected a non-empty string"):
        load_judge_pairs(p)
    p.write_text(json.dumps({"id": 1, "prompt": "q", "a": "x", "b": "y"}) + "\n" +
                 json.dumps({"id": 1, "prompt": "q", "a": "x", "b": "y"}) + "\n")
    with pytest.raises(InputError, match=r":2: field 'id': duplicate id '1'"):
        load_judge_pairs(p)


def test_answer_after_think_is_not_judged(tmp_path):
    p = tmp_path / "pairs.jsonl"
    p.write_text(json.dumps({"prompt": "q", "a": "reason A</think>The answer is 5", "b": "reason B"}) + "\n")
    (pair,) = load_judge_pairs(p)
    assert pair.a == "reason A" and pair.id == "1"
    p.write_text(json.dumps({"prompt": "q", "a": "<think>\n</think>42", "b": "reason B"}) + "\n")
    with pytest.raises(InputError, match="field 'a': no reasoning before the end-of-thinking marker"):
        load_judge_pairs(p)


def test_llm_summaries_feed_the_macro_view():
    judge_script = prefers("GOOD")

    def script(body, n):
        if body["messages"][0]["content"] == P.SUMMARY_SYSTEM:
            ids = re.findall(r"\[part (\d+)\]", body["messages"][-1]["content"])
            return Reply(json.dumps({"summaries": [{"id": int(i), "summary": f"LLM summary {i}."} for i in ids]}))
        return judge_script(body, n)
    rec, reqs = judge(script, repeats=1, llm_summaries=True)
    assert rec["reason"] == "consistent" and rec["winner"] == "b"
    macro = [r["messages"][-1]["content"] for r in reqs if "Aspect: Macro-Efficiency" in r["messages"][-1]["content"]]
    assert macro and all("> LLM summary 0." in m for m in macro)
    assert sum(r["messages"][0]["content"] == P.SUMMARY_SYSTEM for r in reqs) == 2  # one call per trace
