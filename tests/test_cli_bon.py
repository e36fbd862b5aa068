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
              "--workers", "1")
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

    again = run("bon", cands, "--scorer", "length", "-o", out, "--workers", "1", "--n", "1,2,4",
                "--repeats", "5")
    assert again.exit_code == 0, again.output
    assert "scored 0 candidates" in said(again) and "(24 cached)" in said(again)
    assert json.loads((out / "bon.json").read_text())["strategies"] == result["strategies"]


@pytest.mark.parametrize("args, fragment", [
    (["--n", "1,x"], "--n: expected a comma-separated list"),
    (["--strategies", "argmax,best"], "unknown strategy 'best'"),
    (["--scorer", "nope"], "unknown scorer spec"),
    (["--repeats", "0"], "repeats must be >= 1"),
])
def test_bad_options_are_one_line_errors(tmp_path, args, fragment):
    cands = write_pool(tmp_path / "c.jsonl", problems=1)
    res = run("bon", cands, "-o", tmp_path / "out", "--workers", "1", *args)
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
