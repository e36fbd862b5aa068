"""`thinkrm bon`: outputs, cache reuse, and one-line errors for bad input (no traceback, no partial files)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from thinkrm.cli import app


def write_pool(path, problems: int = 6):
    rows = []
    for i in range(problems):
        for k, (ans, ok) in enumerate([("1", True), ("2", False), ("1.0", True), ("3", False)]):
            rows.append({"problem_id": f"p{i}", "prompt": f"problem {i}", "gold": "1" if k == 0 else None,
                         "correct": ok,
                         "response": f"<think>{'step ' * (k + i % 3)}</think> \\boxed{{{ans}}}"})
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in rows))
    return path


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def said(res) -> str:
    """The output with rich's line wrapping undone (it wraps at the terminal width)."""
    return " ".join(res.output.split())


def test_writes_json_png_and_prints_the_table(tmp_path):
    cands = write_pool(tmp_path / "c.jsonl")
    out = tmp_path / "out"
    res = run("bon", cands, "--scorer", "length", "-o", out, "--n", "1,2,4,8", "--repeats", "5",
              "--verify-workers", "1")
    assert res.exit_code == 0, res.output
    for word in ("argmax", "weighted-vote", "random", "shortest", "longest", "oracle", "majority-vote",
                 "N=4"):
        assert word in res.output
    assert "N=8" not in res.output and "scored 24 candidates" in said(res)  # N capped at the pool size
    result = json.loads((out / "bon.json").read_text())
    assert result["ns"] == [1, 2, 4] and result["scorer"] == "length" and result["n_candidates"] == 24
    assert result["baselines"]["oracle"]["4"]["mean"] == 1.0
    assert (out / "bon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name.split("-")[1] for p in out.glob("scores-*.jsonl")] == ["length"]

    again = run("bon", cands, "--scorer", "length", "-o", out, "--verify-workers", "1", "--n", "1,2,4",
                "--repeats", "5")
    assert again.exit_code == 0, again.output
    assert "scored 0 candidates" in said(again) and "(24 cached)" in said(again)
    assert json.loads((out / "bon.json").read_text())["strategies"] == result["strategies"]


@pytest.mark.parametrize("args, fragment", [
    (["--n", "1,x"], "--n: expected a comma-separated list"),
    (["--strategies", "argmax,best"], "unknown strategy 'best'"),
    (["--scorer", "nope"], "unknown scorer spec"),
    (["--verifier", "nope"], "unknown verifier spec 'nope'"),
    (["--repeats", "0"], "repeats must be >= 1"),
])
def test_bad_options_are_one_line_errors(tmp_path, args, fragment):
    cands = write_pool(tmp_path / "c.jsonl", problems=1)
    res = run("bon", cands, "-o", tmp_path / "out", "--verify-workers", "1", *args)
    assert res.exit_code == 2
    assert fragment in said(res) and "Traceback" not in res.output
    assert not (tmp_path / "out" / "bon.json").exists()


def test_bad_candidate_names_file_line_field_and_writes_nothing(tmp_path):
    cands = write_pool(tmp_path / "c.jsonl", problems=1)
    with open(cands, "a") as f:
        f.write('{"problem_id": "x", "prompt": "p", "response": ["not", "text"], "correct": true}\n')
    res = run("bon", cands, "--scorer", "length", "-o", tmp_path / "out")
    assert res.exit_code == 2
    assert f"{cands}:5" in said(res) and "field 'response'" in said(res) and "Traceback" not in res.output
    assert not (tmp_path / "out" / "bon.json").exists()


def test_missing_file(tmp_path):
    res = run("bon", tmp_path / "nope.jsonl", "-o", tmp_path / "out")
    assert res.exit_code == 2 and "nope.jsonl: file not found" in said(res)


@pytest.mark.parametrize("bad, where", [
    ('{"problem_id": "x", "prompt": "p", "response": "a \\ud800", "correct": true}',
     "field 'response': contains a lone surrogate"),
    ('{"problem_id": "x", "prompt": "p\\u0000", "response": "r", "correct": true}',
     "field 'prompt': contains a NUL character"),
    ('{"problem_id": "x", "prompt": "p", "response": "r", "correct": true, "m": ' + "[" * 100_000
     + "]" * 100_000 + "}", "nested deeper than 100 levels"),
])
def test_bad_text_names_file_and_line_and_writes_nothing(tmp_path, bad, where):
    cands = write_pool(tmp_path / "c.jsonl", problems=1)
    with open(cands, "a") as f:
        f.write(bad + "\n")
    res = run("bon", cands, "--scorer", "length", "-o", tmp_path / "out", "--verify-workers", "1")
    assert res.exit_code == 2 and f"{cands}:5: {where}" in said(res) and "Traceback" not in res.output
    assert not (tmp_path / "out" / "bon.json").exists()


def test_outputs_never_replace_the_input_or_a_non_file(tmp_path):
    import os
    import stat

    cands = write_pool(tmp_path / "c.jsonl", problems=1)
    before = cands.read_bytes()
    res = run("bon", cands, "--scorer", "length", "-o", cands, "--verify-workers", "1")
    assert res.exit_code == 2 and "exists and is not a directory" in said(res)
    out = tmp_path / "out"
    out.mkdir()
    (out / "bon.json").hardlink_to(cands)
    res = run("bon", cands, "--scorer", "length", "-o", out, "--verify-workers", "1")
    assert res.exit_code == 2 and "bon.json: is the input file" in said(res)
    assert cands.read_bytes() == before
    (out / "bon.json").unlink()
    os.mkfifo(out / "bon.png")
    res = run("bon", cands, "--scorer", "length", "-o", out, "--verify-workers", "1")
    assert res.exit_code == 2 and "bon.png: is a FIFO, not a regular file" in said(res)
    assert stat.S_ISFIFO(os.lstat(out / "bon.png").st_mode)


@pytest.mark.slow
def test_kill_9_while_scoring_then_rerun_scores_each_candidate_once(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    cands = tmp_path / "c.jsonl"
    rows = [{"problem_id": f"p{i // 8}", "prompt": f"problem {i // 8}", "correct": i % 3 == 0,
             "response": f"<think>{'step ' * (i % 40 + 1)} {i}</think> \\boxed{{{i % 3}}}"}
            for i in range(2000)]
    cands.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = (
        "import json, sys, time\n"
        "from thinkrm.bon import best_of_n, load_candidates\n"
        "from thinkrm.scoring import Scorer\n"
        "class Slow(Scorer):\n"
        "    spec = 'slow'\n"
        "    def score(self, items):\n"
        "        time.sleep(0.03)\n"
        "        return [float(len(r)) for _, r in items]\n"
        "res = best_of_n(load_candidates(sys.argv[1]), Slow(), cache_dir=sys.argv[2], ns=[1, 4], repeats=2,\n"
        "                workers=1)\n"
        "print(json.dumps({'scoring': res['timings']['scoring'], 'strategies': res['strategies']}))\n")
    out = tmp_path / "out"

    def caches():
        return list(out.glob("scores-*.jsonl")) if out.exists() else []

    def size():
        return sum(p.stat().st_size for p in caches())

    for _ in range(2):
        proc = subprocess.Popen([sys.executable, "-c", code, str(cands), str(out)], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        start = size()
        while time.monotonic() < deadline and size() < start + 10_000:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = subprocess.run([sys.executable, "-c", code, str(cands), str(out)], check=True, timeout=300,
                          capture_output=True, text=True)
    resumed = json.loads(done.stdout.splitlines()[-1])
    cached, scored = resumed["scoring"]["cached"], resumed["scoring"]["scored"]
    assert 0 < cached < 2000 and cached + scored == 2000
    (cache,) = caches()
    keys = [json.loads(line)["key"] for line in cache.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 2000  # nothing lost, nothing twice
    clean = subprocess.run([sys.executable, "-c", code, str(cands), str(tmp_path / "clean")], check=True,
                           timeout=300, capture_output=True, text=True)
    assert json.loads(clean.stdout.splitlines()[-1])["strategies"] == resumed["strategies"]
