"""The preference-dataset builder end to end against a scripted server: generate, verify, pair, judge, write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from scripted_llm import Reply, ScriptedServer, always, prefers
from typer.testing import CliRunner

from thinkrm.cli import app
from thinkrm.io import read_jsonl
from thinkrm.llm import LLMConfig
from thinkrm.llm import prompts as P
from thinkrm.llm.build_pairs import BuildConfig, build_pairs, sample_pairs
from thinkrm.llm.judge import JudgeConfig

PROBLEMS = [{"id": "apples", "prompt": "3 boxes of x apples and 5 more make 20. What is x?", "gold": "5"},
            {"id": "eggs", "prompt": "Two dozen eggs minus 12 eggs is how many eggs?", "answer": "12"}]
GOLD = {"apples": "5", "eggs": "12"}


def generator_script(body, n):
    """alpha writes short direct traces (GOOD); beta writes long winding ones; beta's sample 1 is wrong."""
    text = body["messages"][-1]["content"]
    pid = "apples" if "apples" in text else "eggs"
    answer = GOLD[pid]
    seed = body.get("seed", 0)
    if body["model"] == "alpha":
        reasoning = f"First, we set up the problem carefully, GOOD and direct, sample {seed}.\n\n" \
                    f"So the result is {answer}."
    else:
        if seed == 1:
            answer = "999"
        reasoning = (f"First, we set up the problem in a winding way, sample {seed}.\n\n"
                     f"Wait, maybe I misread it, let me reread the whole problem statement once more slowly.\n\n"
                     f"Alternatively, we could guess numbers until one works out for the totals given.\n\n"
                     f"So the result is {answer}.")
    return Reply(f"<think>\n{reasoning}\n</think>\nThe answer is \\boxed{{{answer}}}.")


def script_with(judge):
    def script(body, n):
        if P.GENERATE_INSTRUCTION in body["messages"][-1]["content"]:
            return generator_script(body, n)
        return judge(body, n)
    return script


def write_problems(path: Path, rows=PROBLEMS) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build(url, tmp_path, problems, **kw):
    cfg = BuildConfig(generators=["alpha", "beta"], n=2, k=3, judge=JudgeConfig(repeats=1, **kw))
    return build_pairs(problems, tmp_path / "pairs.jsonl", LLMConfig(base_url=url, model="judge", backoff=0.01), cfg)


@pytest.mark.slow  # the verifier's worker processes take a few seconds to import math-verify
def test_build_pairs_end_to_end_and_rerun_is_free(tmp_path):
    problems = write_problems(tmp_path / "problems.jsonl")
    with ScriptedServer(script_with(prefers("GOOD"))) as srv:
        summary = build(srv.url, tmp_path, problems)
        n_requests = len(srv.requests)
        again = build(srv.url, tmp_path, problems)
        assert len(srv.requests) == n_requests  # every stage resumed from its store
    assert summary["traces"] == 8 and summary["verified_correct"] == 6  # beta's sample 1 is wrong twice
    # Per problem: 3 correct traces (alpha 0, alpha 1, beta 0) -> 3 pairs, 2 of them cross-generator.
    assert summary["pairs_judged"] == 6 and summary["kept"] == 4
    # alpha vs alpha: both GOOD, the scripted judge picks whichever is shown first -> inconsistent.
    assert summary["reasons"] == {"consistent": 4, "tie": 0, "inconsistent": 2, "invalid": 0}
    assert summary["length_bias"] == {"kept_with_different_lengths": 4, "shorter_won": 4, "shorter_won_rate": 1.0}
    assert summary["tokens_this_run"]["generate"]["calls"] == 8
    assert summary["tokens_this_run"]["judge"]["calls"] == 6 * 2 * 5
    assert again["kept"] == 4 and again["tokens_this_run"] == {}
    rows = list(read_jsonl(tmp_path / "pairs.jsonl"))
    assert len(rows) == 4
    for r in rows:
        assert "GOOD" in r["chosen"] and "GOOD" not in r["rejected"]
        assert r["prompt"] == next(p["prompt"] for p in PROBLEMS if p["id"] == r["problem_id"])
        assert "</think>" not in r["chosen"] and "boxed" not in r["chosen"]  # reasoning only
        assert r["generators"] == {"chosen": "alpha", "rejected": "beta"}
        assert r["lengths"]["chosen"] == len(r["chosen"]) < r["lengths"]["rejected"] == len(r["rejected"])
        assert all(all(v) for v in r["dimensions"].values()) and all(v["chosen_won"] for v in r["votes"])
    # The rows load with the project's preference-pair loader (the one `thinkrm train` uses).
    from thinkrm.pairs import load_pairs

    loaded = list(load_pairs(tmp_path / "pairs.jsonl"))
    assert [p.chosen for p in loaded] == [r["chosen"] for r in rows]
    stores = tmp_path / "pairs.jsonl.work"
    for name in ("traces", "verified", "verdicts"):
        ids = [r["id"] for r in read_jsonl(stores / f"{name}.jsonl")]
        assert len(ids) == len(set(ids))


@pytest.mark.slow  # starts the verifier's worker processes
def test_position_biased_judge_yields_no_pairs_and_bad_gold_is_reported(tmp_path):
    bad_gold = {"id": "broken", "prompt": "How many apples?", "gold": "\\frac{"}
    problems = write_problems(tmp_path / "problems.jsonl", PROBLEMS + [bad_gold])
    with ScriptedServer(script_with(always("Trace 1"))) as srv:
        summary = build(srv.url, tmp_path, problems, early_stop=True)
    assert summary["traces"] == 12 and summary["verified_correct"] == 6
    assert summary["notes"] == ["problem 'broken': math-verify cannot read the gold answer '\\\\frac{'; its traces "
                                "count as wrong"]
    assert summary["kept"] == 0 and summary["reasons"]["inconsistent"] == 6
    assert summary["calls_saved_by_early_stop"] == 0  # repeats=1: both votes were needed
    assert (tmp_path / "pairs.jsonl").read_text() == ""


def test_verify_stage_with_the_llm_verifier(tmp_path):
    """A model-based verifier in place of math-verify: it is shown each problem, its gold and the answer."""
    from thinkrm.io import ResumableJsonl
    from thinkrm.llm.build_pairs import Builder

    def verifier(body, n):
        gold = body["prompt"].split("### Ground Truth Answer: ")[1].split("\n")[0]
        answer = body["prompt"].split("### Student Answer: ")[1].split("\n")[0]
        return Reply(f"Checked.\nFinal Decision: {'Yes' if answer == gold else 'No'}")

    problems = write_problems(tmp_path / "problems.jsonl")
    traces = [{"id": f"{pid}#g#{i}", "problem_id": pid, "response": f"<think>\nwork\n</think>\\boxed{{{ans}}}"}
              for i, (pid, ans) in enumerate([("apples", "5"), ("apples", "6"), ("eggs", "12")])]
    with ScriptedServer(verifier) as checker:
        cfg = BuildConfig(generators=["g"], verifier=f"llm:{checker.url}")
        builder = Builder(problems, tmp_path / "pairs.jsonl", LLMConfig(base_url=checker.url, model="j"), cfg)
        with ResumableJsonl(tmp_path / "verified.jsonl") as store:
            builder.verify(traces, store)
    assert [(r["id"], r["correct"]) for r in read_jsonl(tmp_path / "verified.jsonl")] == [
        ("apples#g#0", True), ("apples#g#1", False), ("eggs#g#2", True)]
    assert builder.notes == [] and len(checker.requests) == 3  # one per trace, no gold self-check
    assert {r["prompt"].split("\n")[0] for r in checker.requests} == {
        f"User: ### Question: {p['prompt']}" for p in PROBLEMS}
    with pytest.raises(ValueError, match="unknown verifier spec 'nope'"):
        BuildConfig(generators=["g"], verifier="nope").validate()


def test_sample_pairs_is_deterministic_and_mixes_generators():
    traces = [{"id": f"p#{g}#{i}", "generator": g, "reasoning": f"{g}{i}"} for g in ("x", "y") for i in range(3)]
    picked = sample_pairs("p", traces, 5, seed=0)
    assert picked == sample_pairs("p", list(reversed(traces)), 5, seed=0)
    assert all(a["generator"] != b["generator"] for a, b in picked)  # 9 cross pairs exist; they come first
    assert picked != sample_pairs("p", traces, 5, seed=1)
    assert sample_pairs("p", traces[:1], 5, seed=0) == []
    same = [{"id": "a", "generator": "x", "reasoning": "r"}, {"id": "b", "generator": "x", "reasoning": "r"}]
    assert sample_pairs("p", same, 5, seed=0) == []  # identical traces teach nothing


def test_cli_bad_input_and_unreachable_server(tmp_path):
    runner = CliRunner()
    bad = write_problems(tmp_path / "bad.jsonl", [PROBLEMS[0], {"id": "x", "prompt": "q"}])
    res = runner.invoke(app, ["build-pairs", str(bad), "-o", str(tmp_path / "o.jsonl"), "-g", "m",
                              "--base-url", "http://127.0.0.1:9/v1", "--model", "j"])
    assert res.exit_code == 2 and "bad.jsonl:2: missing gold answer" in " ".join(res.output.split())
    assert "Traceback" not in res.output
    good = write_problems(tmp_path / "good.jsonl")
    res = runner.invoke(app, ["build-pairs", str(good), "-o", str(tmp_path / "o.jsonl"), "-g", "m",
                              "--base-url", "http://127.0.0.1:9/v1", "--model", "j", "--max-retries", "0"])
    assert res.exit_code == 2 and "cannot connect" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o.jsonl").exists()
    res = runner.invoke(app, ["build-pairs", str(good), "-o", str(tmp_path / "o.jsonl"), "-g", "a=m@",
                              "--base-url", "http://127.0.0.1:9/v1", "--model", "j"])
    assert res.exit_code == 2 and "bad generator spec" in res.output
    res = runner.invoke(app, ["build-pairs", str(good), "-o", str(tmp_path / "o.jsonl"), "-g", "m",
                              "--base-url", "http://127.0.0.1:9/v1", "--model", "j", "--verifier", "nope"])
    assert res.exit_code == 2 and "unknown verifier spec 'nope'" in res.output


def test_cli_judge_writes_verdicts(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"id": "p", "prompt": "q?", "a": "So the answer is 5, GOOD.", "b": "So it is 5."})
                     + "\n")
    with ScriptedServer(prefers("GOOD")) as srv:
        res = CliRunner().invoke(app, ["judge", str(pairs), "-o", str(tmp_path / "v.jsonl"), "--repeats", "1",
                                       "--view", "raw", "--base-url", srv.url, "--model", "j"])
    assert res.exit_code == 0, res.output
    (rec,) = read_jsonl(tmp_path / "v.jsonl")
    assert rec["winner"] == "a" and rec["reason"] == "consistent"
    assert '"consistent": 1' in res.output


def _run_cli(url: str, problems: Path, out: Path) -> subprocess.Popen:
    code = "import sys; from thinkrm.cli import main; sys.argv[0] = 'thinkrm'; main()"
    args = [sys.executable, "-c", code, "build-pairs", str(problems), "-o", str(out), "-g", "alpha", "-g", "beta",
            "-n", "2", "-k", "3", "--repeats", "2", "--base-url", url, "--model", "judge", "--concurrency", "2"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "200"})


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_loses_and_duplicates_nothing(tmp_path):
    problems = write_problems(tmp_path / "problems.jsonl")
    slow = script_with(prefers("GOOD"))

    def script(body, n):
        time.sleep(0.03)
        return slow(body, n)

    with ScriptedServer(script) as srv:
        clean = _run_cli(srv.url, problems, tmp_path / "clean" / "pairs.jsonl")
        assert clean.wait(timeout=120) == 0, clean.stderr.read().decode()[-2000:]
        clean.stdout.close(), clean.stderr.close()
        clean_requests = len(srv.requests)
        out = tmp_path / "killed" / "pairs.jsonl"
        verdicts = Path(f"{out}.work") / "verdicts.jsonl"
        proc = _run_cli(srv.url, problems, out)
        deadline = time.time() + 60
        while time.time() < deadline and (not verdicts.exists() or verdicts.read_text().count("\n") < 2):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close(), proc.stderr.close()
        assert not out.exists()  # killed before the last stage: no half-written output
        first = len(srv.requests) - clean_requests
        rerun = _run_cli(srv.url, problems, out)
        assert rerun.wait(timeout=120) == 0, rerun.stderr.read().decode()[-2000:]
        rerun.stdout.close(), rerun.stderr.close()
        killed_and_rerun = srv.requests[clean_requests:]
    assert 0 < first < clean_requests
    # Requests are distinct by body (messages, sampling parameters, seed); only those in flight at the kill
    # (at most --concurrency=2 per client) may have been sent twice.
    dup = sum(c - 1 for c in Counter(json.dumps(b, sort_keys=True) for b in killed_and_rerun).values())
    assert dup <= 2 and len(killed_and_rerun) <= clean_requests + 2
    assert (tmp_path / "clean" / "pairs.jsonl").read_text() == out.read_text()
    for name in ("traces", "verified", "verdicts"):
        ids = [r["id"] for r in read_jsonl(Path(f"{out}.work") / f"{name}.jsonl")]
        assert len(ids) == len(set(ids)), name


def test_generator_specs():
    from thinkrm.llm.build_pairs import Generator

    assert Generator.parse("small=Qwen/Qwen3-1.7B@http://h:8001/v1") == \
        Generator("small", "Qwen/Qwen3-1.7B", "http://h:8001/v1")
    assert Generator.parse("Qwen/Qwen3-8B") == Generator("Qwen3-8B", "Qwen/Qwen3-8B", None)
    assert Generator.parse("m@http://h/v1?k=v") == Generator("m", "m", "http://h/v1?k=v")
    for bad in ("", "a=", "m@", "a#b=m"):
        with pytest.raises(ValueError, match="bad generator"):
            Generator.parse(bad)
    with pytest.raises(ValueError, match="distinct"):
        BuildConfig(generators=["m@http://a/v1", "m@http://b/v1"]).validate()
    with pytest.raises(ValueError, match="unknown structurer 'nope'"):
        BuildConfig(generators=["m"], judge=JudgeConfig(structurer="nope")).validate()
