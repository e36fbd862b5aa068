"""The verifier interface: multiple choice, the LLM verifier against real servers on 127.0.0.1, pickling."""

from __future__ import annotations

import pickle
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scripted_llm import Reply, ScriptedServer
from test_llm import transformers_server  # noqa: F401  (the `transformers serve` fixture, shared)

from thinkrm.verifiers import (
    GENERAL_VERIFIER_PROMPT,
    VERIFIERS,
    ChoiceVerifier,
    LLMVerifier,
    MathVerifier,
    Verifier,
    choice_correct,
    load_verifier,
    parse_decision,
    parse_options,
    student_answer,
)

LISTED = "What is 3 * 5?\nA. 12\nB. 15\nC. 18\nD. 20"
INLINE = "What is 3 * 5? Answer Choices: (A) 12 (B) 15 (C) 18 (D) 20\nThink step by step."


def said(answer: str) -> str:
    return f"<think>\nThree fives... maybe (A)? No: 15.\n</think>\n{answer}"


# ---- choice -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("answer", ["The answer is (B).", "Answer: B", "\\boxed{B}", "**B**", "b",
                                    "The final answer is: B) 15", "\\boxed{\\text{(B)}}", "Option B",
                                    "A: 12\nB: 15\n\nSo the answer is B."])
@pytest.mark.parametrize("gold", ["B", "(B)", "B)", "b"])
def test_choice_matches_letters_in_common_forms(answer, gold):
    assert choice_correct(said(answer), gold, LISTED)
    assert not choice_correct(said(answer), "C", LISTED)


def test_choice_maps_option_text_and_letters_through_the_prompt():
    assert parse_options(LISTED) == parse_options(INLINE) == {"A": "12", "B": "15", "C": "18", "D": "20"}
    assert choice_correct(said("The answer is 15."), "B", LISTED)  # text answer, letter gold
    assert choice_correct(said("The answer is (B)"), "15", INLINE)  # letter answer, text gold
    assert choice_correct(said("Answer: $15$"), " 15 ", None)  # text against text, no options needed
    assert choice_correct(said("Final answer: paris"), "Paris", None)
    assert not choice_correct(said("The answer is 18."), "B", LISTED)
    # Without options a letter cannot be compared with option text, nor text with a letter.
    assert not choice_correct(said("The answer is (B)"), "15", None)
    assert not choice_correct(said("The answer is 15."), "B", None)


@pytest.mark.parametrize("response", [
    said("The answer is A or B."),  # several letters
    said("The answer is (C) 15."),  # a letter with another option's text
    said("I am not sure."),  # no answer
    said(""),  # nothing after the reasoning
    "<think>\nThe answer is B\n</think>",  # said only while thinking
    "<think>\nThe answer is B, I think, but let me che",  # truncated
])
def test_choice_fails_closed_on_ambiguous_or_missing_answers(response):
    assert not choice_correct(response, "B", LISTED)


def test_choice_rejects_text_shared_by_two_options():
    prompt = "Pick one.\nA. 7\nB. 7\nC. 9"
    assert not choice_correct(said("The answer is 7."), "A", prompt)
    assert choice_correct(said("The answer is 9."), "C", prompt)


def test_choice_verifier_batch_and_gold_forms():
    v = load_verifier("choice")
    got = v.verify_batch([said("\\boxed{B}"), said("\\boxed{C}"), said("15")], ["B", "B", "15"],
                         [LISTED, LISTED, LISTED])
    assert got == [True, False, True] and v.last_report.failed == 0
    assert v.verify_batch([said("\\boxed{B}")], ["(B)"]) == [True]  # prompts are optional
    with pytest.raises(ValueError, match="2 responses but 1 gold answers"):
        v.verify_batch(["a", "b"], ["B"])


# ---- adversarial input: parsing is linear --------------------------------------------------------------

MB = 1_000_000
# response -> whether it picks B of LISTED
ADVERSARIAL = {
    "The answer is" + "\n" * MB: False,
    "Answer:" + " " * MB + "B": True,
    "answer" + "*" * MB: False,
    "**" + "B" * MB: False,
    "\\text{" * (MB // 6) + "B": False,
    "(A) or " * (MB // 7) + "(B)": False,  # several letters
    "\\boxed{" * (MB // 7): False,
    "B." + " " * MB: True,
}
PIECES = ["answer", " is", ":", "\n", " ", "\t", "*", "**", "(A)", "B.", "C)", "\\text{", "\\boxed{", "{",
          "}", ",", " or ", "Final Decision", "yes", "$", ".", "option"]


@pytest.mark.parametrize("response", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_choice_is_right_on_adversarial_responses(response):
    # A few tenths each (the old patterns took hours on some of these): benchmarks/bench_adversarial.py.
    assert choice_correct(said(response), "B", LISTED) is ADVERSARIAL[response]
    assert student_answer(said(response)) is not None


def test_verdicts_and_options_are_right_on_adversarial_text():
    assert parse_decision("Final Decision" + " " * MB + ": **Yes**") is True
    assert parse_decision("final decision" + " " * MB + "x") is None
    assert parse_options("A. 12" + " " * MB + "\nB. 15") == {"A": "12", "B": "15"}
    assert parse_options("(A) 1" + " " * MB + "2 (B) 3") == {"A": "1" + " " * MB + "2", "B": "3"}


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=12).map("".join))
def test_choice_parsing_returns_on_any_repeated_pattern(unit):
    text = unit * (100_000 // len(unit) + 1)  # a quadratic pattern would need minutes: pytest's timeout
    assert choice_correct(said(text), "B", text) in (True, False)
    assert parse_decision(text) in (True, False, None)
    answer = student_answer(text)
    assert answer is None or isinstance(answer, str)


# ---- load_verifier ------------------------------------------------------------------------------------

def test_load_verifier_specs_and_errors():
    assert VERIFIERS == ("math", "choice", "llm:URL")
    assert isinstance(load_verifier(), MathVerifier) and load_verifier().spec == "math"
    assert isinstance(load_verifier("choice"), ChoiceVerifier)
    v = load_verifier("llm:127.0.0.1:1,http://127.0.0.1:2/v1/", timeout=9, model="m")
    assert isinstance(v, LLMVerifier) and v.urls == ["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"]
    assert v.endpoints.timeout == 9 and v.model == "m"
    assert v.spec == "llm:http://127.0.0.1:1/v1,http://127.0.0.1:2/v1"
    assert load_verifier(v) is v
    with pytest.raises(ValueError, match="unknown verifier spec 'sympy'; expected one of: math, choice, llm:URL"):
        load_verifier("sympy")
    with pytest.raises(ValueError, match="needs a server URL"):
        load_verifier("llm:")
    with pytest.raises(ValueError, match="empty URL"):
        load_verifier("llm:http://a,,http://b")
    with pytest.raises(ValueError, match="invalid concurrency 0"):
        load_verifier("llm:http://h", concurrency=0)


# ---- llm ----------------------------------------------------------------------------------------------

def judge(body: dict, n: int) -> Reply:
    """A verifier that says Yes exactly when the student's answer is 15."""
    yes = "### Student Answer: 15\n" in body["prompt"]
    return Reply(f"The student's answer matches.\n\nFinal Decision: {'Yes' if yes else 'No'}")


def llm(url: str, **kw) -> LLMVerifier:
    return load_verifier(f"llm:{url}", backoff=kw.pop("backoff", 0.01), **kw)


def test_llm_sends_the_general_verifier_prompt_and_reads_yes_and_no():
    with ScriptedServer(judge, models=("TIGER-Lab/general-verifier",)) as srv, llm(srv.url) as v:
        got = v.verify_batch([said("So \\boxed{15}."), said("The answer is 18.")], ["15", "15"],
                             ["What is 3 * 5?"] * 2)
    assert got == [True, False] and v.last_report.failed == 0 and len(srv.requests) == 2
    assert {r["prompt"] for r in srv.requests} == {
        GENERAL_VERIFIER_PROMPT.format(question="What is 3 * 5?", gold="15", answer=a) for a in ("15", "18")}
    for r in srv.requests:
        assert r["model"] == "TIGER-Lab/general-verifier"  # from /v1/models
        assert r["temperature"] == 0 and r["max_tokens"] == 1024
        assert r["prompt"].startswith("User: ### Question: What is 3 * 5?\n\n### Ground Truth Answer: 15\n\n")
        assert r["prompt"].endswith('output "Final Decision: No". Assistant:')


def test_llm_fails_closed_on_garbage_and_counts_it():
    replies = {0: "Final Decision: Yes", 1: "yes yes yes", 2: "Final Decision: Yes\nFinal Decision: No"}
    with ScriptedServer(lambda body, n: Reply(replies[n]), models=("m",)) as srv, llm(srv.url, concurrency=1) as v:
        got = v.verify_batch([said("\\boxed{15}")] * 3, ["15"] * 3)
        report = v.last_report
    assert got == [True, False, False]
    assert (report.unparseable, report.errors, report.timeouts) == (2, 0, 0) and len(report.messages) == 2
    assert parse_decision("**Final Decision:** yes") is True and parse_decision("Final Decision: Yesterday") is None


def test_llm_nothing_to_check_is_wrong_without_a_request():
    with ScriptedServer(judge) as srv, llm(srv.url) as v:
        assert v.verify_batch([said(""), said("\\boxed{15}")], ["15", ""]) == [False, False]
    assert srv.requests == [] and v.last_report.failed == 0


def test_llm_retries_a_500_then_succeeds():
    script = lambda body, n: Reply(status=500, error="engine restarting") if n == 0 else judge(body, n)
    with ScriptedServer(script) as srv, llm(srv.url, model="m") as v:
        assert v.verify_batch([said("\\boxed{15}")], ["15"]) == [True]
    assert len(srv.requests) == 2 and v.last_report.failed == 0


def test_llm_gives_up_after_retries_and_does_not_retry_client_errors():
    with ScriptedServer(lambda body, n: Reply(status=503, error="overloaded")) as srv, \
            llm(srv.url, model="m", max_retries=2) as v:
        assert v.verify_batch([said("\\boxed{15}")], ["15"]) == [False]
    assert len(srv.requests) == 3 and v.last_report.errors == 1 and "503" in v.last_report.messages[0]
    with ScriptedServer(lambda body, n: Reply(status=400, error="bad model")) as srv, llm(srv.url, model="m") as v:
        assert v.verify_batch([said("\\boxed{15}")], ["15"]) == [False]
    assert len(srv.requests) == 1 and "bad model" in v.last_report.messages[0]


def test_llm_timeout_is_counted():
    with ScriptedServer(lambda body, n: Reply("Final Decision: Yes", delay=1.0)) as srv, \
            llm(srv.url, model="m", timeout=0.2, max_retries=0) as v:
        assert v.verify_batch([said("\\boxed{15}")], ["15"]) == [False]
    assert v.last_report.timeouts == 1


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def test_llm_spreads_over_servers_and_skips_a_dead_one():
    with ScriptedServer(judge) as a, ScriptedServer(judge) as b, llm(f"{a.url},{b.url}", model="m") as v:
        assert v.verify_batch([said("\\boxed{15}")] * 8, ["15"] * 8) == [True] * 8
    assert a.requests and b.requests and len(a.requests) + len(b.requests) == 8  # spread, each sent once
    dead = _dead_url()
    with ScriptedServer(judge) as live, llm(f"{dead},{live.url}", model="m", concurrency=2) as v:
        got = v.verify_batch([said("\\boxed{15}"), said("\\boxed{16}")] * 4, ["15"] * 8)
        assert got == [True, False] * 4 and v.last_report.failed == 0
        assert len(live.requests) == 8
        assert v.verify_batch([said("\\boxed{15}")], ["15"]) == [True]  # the dead one is skipped now


def test_llm_sends_the_api_key(monkeypatch):
    monkeypatch.setenv("THINKRM_VERIFIER_API_KEY", "secret")
    with ScriptedServer(judge, api_key="secret") as srv, llm(srv.url, model="m") as v:
        assert v.verify_batch([said("\\boxed{15}")], ["15"]) == [True]
    with ScriptedServer(judge, api_key="secret") as srv, llm(srv.url, model="m", api_key="wrong") as v:
        assert v.verify_batch([said("\\boxed{15}")], ["15"]) == [False]
    assert v.last_report.errors == 1 and "401" in v.last_report.messages[0]


# ---- pickling (TRL pickles reward functions) ----------------------------------------------------------

def test_verifiers_survive_pickling_after_use():
    choice = pickle.loads(pickle.dumps(load_verifier("choice")))
    assert choice.verify_batch([said("\\boxed{B}")], ["B"]) == [True]
    math = pickle.loads(pickle.dumps(load_verifier("math", timeout=3.0, workers=1)))
    assert (math.spec, math.timeout, math.workers) == ("math", 3.0, 1)
    with ScriptedServer(judge) as srv:
        v = llm(srv.url, model="m")
        assert v.verify_batch([said("\\boxed{15}")], ["15"]) == [True]  # client and threads started
        copy = pickle.loads(pickle.dumps(v))
        v.close()
        assert copy.verify_batch([said("\\boxed{15}"), said("\\boxed{14}")], ["15", "15"]) == [True, False]
        copy.close()
    assert isinstance(copy, Verifier) and copy.spec == v.spec and copy.last_report.failed == 0


@pytest.mark.slow  # starts a math-verify worker process
def test_math_verifier_is_verify_batch_and_survives_pickling():
    from thinkrm.verify import verify_batch

    responses, golds = [said("\\boxed{\\frac12}"), said("\\boxed{0.4}"), said("nothing")], ["0.5", "0.5", "1"]
    v = pickle.loads(pickle.dumps(load_verifier("math", workers=1)))
    assert v.verify_batch(responses, golds) == verify_batch(responses, golds, workers=1) == [True, False, False]


@pytest.mark.slow
def test_llm_verifier_against_transformers_serve(transformers_server):  # noqa: F811
    """The tiny model answers nonsense: the protocol works end to end and the verdict fails closed."""
    url, model = transformers_server
    with llm(url, model=model, max_tokens=8, max_retries=0, timeout=60) as v:
        got = v.verify_batch([said("\\boxed{15}")], ["15"], ["What is 3 * 5?"])
    assert got == [False]
    assert v.last_report.unparseable == 1 and v.last_report.errors == v.last_report.timeouts == 0
