"""`thinkrm analyze` end to end: good input, every kind of bad input, and no half-written output."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from thinkrm.cli import app
from thinkrm.cli.analyze import resolve_scorer, run_analyze
from thinkrm.dag import DAG

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "traces.jsonl"
GOOD = {"id": "ok", "prompt": "What is 2 + 3?",
        "response": "<think>2 + 3 = 5.\n\nSo the answer is 5.</think> 5"}


def invoke(*args: str, auto_scorer: bool = False):
    """Run `thinkrm analyze`; scoring is off unless asked for, so these tests never load a model."""
    args = tuple(map(str, args))
    if not auto_scorer and "--scorer" not in args:
        args += ("--scorer", "none")
    result = CliRunner().invoke(app, ["analyze", *args])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    result.text = " ".join(result.output.split())  # rich wraps long lines at the console width
    return result


def write_lines(path: Path, lines: list[str | bytes | dict]) -> Path:
    with open(path, "wb") as f:
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line)
            f.write((line.encode() if isinstance(line, str) else line) + b"\n")
    return path


def outputs(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "analysis.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_examples_end_to_end(tmp_path):
    out = tmp_path / "demo"
    r = invoke(EXAMPLES, "-o", out, auto_scorer=True)
    assert r.exit_code == 0, r.output
    assert outputs(out) == ["analysis.jsonl", "index.html"]
    rows = read_rows(out)
    src = [json.loads(line) for line in EXAMPLES.read_text().splitlines()]
    assert [row["id"] for row in rows] == [s["id"] for s in src]
    for row, s in zip(rows, src):
        for k in ("gold", "quality", "style", "prompt", "response"):
            assert row[k] == s[k]  # input fields carried through
        assert row["reasoning"] and "</think>" not in row["reasoning"]
        dag = DAG.from_dict(row["dag"], row["reasoning"])
        assert len(dag.steps) == len(row["steps"]) == row["me2"]["size"]["steps"]
        assert "".join(row["reasoning"][st["start"]:st["end"]] for st in row["steps"]) == row["reasoning"]
        assert set(row["me2"]) >= {"macro_efficiency", "macro_effectiveness", "micro_efficiency",
                                   "micro_effectiveness"}
    assert "ME² summary (10 traces)" in r.text and "hexagon-detours" in r.text
    assert str(out / "index.html") in "".join(r.output.split())
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.count('<script type="application/json" id="t') == 10
    # The default scorer is the shipped TRM-lite (its preferences are tested in test_lite.py).
    assert all(isinstance(row["score"], float) for row in rows)
    assert resolve_scorer("none") is None and resolve_scorer("length") == "length"


def test_json_list_input_limit_and_scorer(tmp_path):
    src = tmp_path / "traces.json"
    src.write_text(json.dumps([GOOD, {**GOOD, "id": "long", "reasoning": "2 + 3 = 5. " * 50},
                               {**GOOD, "id": "third"}]))
    out = tmp_path / "o"
    r = invoke(src, "-o", out, "--limit", "2", "--scorer", "length")
    assert r.exit_code == 0, r.output
    rows = read_rows(out)
    assert [x["id"] for x in rows] == ["ok", "long"]
    assert rows[0]["score"] == -len(rows[0]["reasoning"]) and rows[0]["score"] > rows[1]["score"]
    assert "score" in r.text
    assert '"key":"score"' in (out / "index.html").read_text().replace(" ", "")


def test_rows_keep_their_own_field_names(tmp_path):
    row = {"question": "What is 2 + 3?", "completion": "<think>2 + 3 = 5.\n\nSo 5.</think> 5", "split": "dev"}
    src = write_lines(tmp_path / "t.jsonl", [row])
    r = invoke(src, "-o", tmp_path / "o")
    assert r.exit_code == 0, r.output
    out = read_rows(tmp_path / "o")[0]
    # Joined back on `question` by whoever wrote it: nothing renamed, the cut reasoning and the line id added.
    assert {k: out[k] for k in row} == row and "prompt" not in out and "response" not in out
    assert out["id"] == "1" and out["reasoning"] == "2 + 3 = 5.\n\nSo 5."


def test_empty_trace_gives_an_empty_dag_not_an_error(tmp_path):
    src = write_lines(tmp_path / "t.jsonl", [{"id": "empty", "prompt": "Q?", "reasoning": ""}, GOOD])
    r = invoke(src, "-o", tmp_path / "o")
    assert r.exit_code == 0, r.output
    empty = read_rows(tmp_path / "o")[0]
    assert empty["steps"] == [] and empty["dag"]["answer_node"] is None
    assert empty["me2"]["macro_efficiency"]["backtracks"] == 0


def test_giant_paragraph_is_split_sensibly(tmp_path):
    sentence = "We add the next term and the running total grows by 3 + 4 = 7 each time. "
    giant = sentence * 700  # ~50k characters, no blank line, no newline
    src = write_lines(tmp_path / "t.jsonl", [{"id": "giant", "prompt": "Sum it.", "reasoning": giant}])
    r = invoke(src, "-o", tmp_path / "o")
    assert r.exit_code == 0, r.output
    row = read_rows(tmp_path / "o")[0]
    assert len(row["steps"]) > 1  # fell back to sentences
    assert row["me2"]["micro_effectiveness"]["arithmetic_checked"] == 700


@pytest.mark.slow
def test_a_million_character_trace(tmp_path):
    para = ("Wait, let me recompute the square of twelve carefully: 12 * 12 = 144.\n\n"
            "So x = 144 and the square is fine, which matches the table of squares.\n\n")
    text = (para * (1_000_000 // len(para) + 1))[:1_000_000]
    src = write_lines(tmp_path / "t.jsonl", [{"id": "huge", "prompt": "Square 12.", "reasoning": text}])
    r = invoke(src, "-o", tmp_path / "o")
    assert r.exit_code == 0, r.output
    row = read_rows(tmp_path / "o")[0]
    assert len(row["reasoning"]) == 1_000_000 and row["steps"][-1]["end"] == 1_000_000
    assert 1 < len(row["steps"]) <= 1000


@pytest.mark.parametrize("bad, message", [
    (b'{"id": "x", "prompt": "Q", "reasoning": "caf\xe9"}', "not valid UTF-8"),
    ('{"id": "x", "prompt": "Q", "reasoning": "unterminated', "invalid JSON"),
    ('{"id": "x", "reasoning": "no prompt here"}', "missing prompt"),
    ('{"id": "x", "prompt": "Q"}', "missing trace"),
    ('{"id": "x", "prompt": 5, "reasoning": "r"}', "field 'prompt': expected a string, got int"),
    ('{"id": "x", "prompt": "Q", "response": {"t": "r"}}', "field 'response': expected a string, got dict"),
    ('{"id": [1], "prompt": "Q", "reasoning": "r"}', "field 'id'"),
    ('["not", "an", "object"]', "expected a JSON object, got list"),
    ('{"id": "x", "prompt": "Q", "reasoning": "a \\ud800 b"}',
     "field 'reasoning': contains a lone surrogate (\\ud800) at character 2"),
    ('{"id": "x", "prompt": "Q\\u0000", "reasoning": "r"}', "field 'prompt': contains a NUL character"),
    ('{"id": "x", "prompt": "Q", "reasoning": "r", "m": ' + "[" * 100_000 + "]" * 100_000 + "}",
     "nested deeper than 100 levels"),
    ('{"id": "ok", "prompt": "Q", "reasoning": "r"}', "field 'id': duplicate id 'ok' (first on line 1)"),
])
def test_bad_rows_fail_clearly_and_leave_no_output(tmp_path, bad, message):
    src = write_lines(tmp_path / "t.jsonl", [GOOD, bad, {**GOOD, "id": "after"}])
    out = tmp_path / "o"
    r = invoke(src, "-o", out)
    assert r.exit_code == 2
    flat = "".join(r.output.split())  # rich wraps long lines
    assert "".join(f"error: {src}:2: {message}".split()) in flat
    assert not out.exists()  # neither file, no temporary left behind, and not the empty folder either


BAD_ROWS = [b'{"prompt": "Q", "reasoning": "caf\xe9"}', '{"prompt": 5, "reasoning": "r"}', "{oops",
            '{"prompt": "Q", "reasoning": "\\udfff"}',
            '{"prompt": "Q", "reasoning": "r", "m": ' + "[" * 5000 + "]" * 5000 + "}",
            '{"id": "ok", "prompt": "Q", "reasoning": "the later of two rows with one id"}']


@pytest.mark.parametrize("bad", BAD_ROWS)
def test_skip_bad_reports_and_keeps_the_good_rows(tmp_path, bad):
    src = write_lines(tmp_path / "t.jsonl", [GOOD, bad, {**GOOD, "id": "after"}])
    r = invoke(src, "-o", tmp_path / "o", "--skip-bad")
    assert r.exit_code == 0, r.output
    assert [x["id"] for x in read_rows(tmp_path / "o")] == ["ok", "after"]
    assert "skipped" in r.text and f"{src}:2" in "".join(r.output.split())
    assert "1 bad row(s) skipped" in r.text


def test_failed_run_keeps_the_previous_output_intact(tmp_path):
    out = tmp_path / "o"
    assert invoke(write_lines(tmp_path / "good.jsonl", [GOOD]), "-o", out).exit_code == 0
    before = {p: (out / p).read_bytes() for p in outputs(out)}
    r = invoke(write_lines(tmp_path / "bad.jsonl", [GOOD, "{oops"]), "-o", out)
    assert r.exit_code == 2
    assert {p: (out / p).read_bytes() for p in outputs(out)} == before


def test_whole_file_problems(tmp_path):
    r = invoke(tmp_path / "missing.jsonl", "-o", tmp_path / "o")
    assert r.exit_code == 2 and "missing.jsonl: file not found" in r.text
    bad_list = tmp_path / "list.json"
    bad_list.write_bytes(b'[{"prompt": "Q", "reasoning": "caf\xe9"}]')
    r = invoke(bad_list, "-o", tmp_path / "o")
    assert r.exit_code == 2 and "not valid UTF-8" in r.text
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    r = invoke(empty, "-o", tmp_path / "o2")  # nothing to analyse is an error, not an empty report
    assert r.exit_code == 2 and f"{empty}: no rows: the file is empty" in r.text
    assert outputs(tmp_path / "o2") == []
    r = invoke(empty, "-o", tmp_path / "o3", "--limit", "0")  # unless nothing was asked for
    assert r.exit_code == 0 and "ME² summary (0 traces)" in r.text
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    r = invoke(EXAMPLES, "-o", not_a_dir)
    assert r.exit_code == 2 and "exists and is not a directory" in r.text and not_a_dir.read_text() == "x"


def test_outputs_never_replace_the_input_or_a_non_file(tmp_path):
    src = write_lines(tmp_path / "analysis.jsonl", [GOOD])
    before = src.read_bytes()
    r = invoke(src, "-o", tmp_path)  # analysis.jsonl in the output directory is the input itself
    assert r.exit_code == 2 and "is the input file" in r.text and src.read_bytes() == before
    out = tmp_path / "o"
    out.mkdir()
    os.mkfifo(out / "index.html")
    r = invoke(src, "-o", out)
    assert r.exit_code == 2 and "index.html: is a FIFO, not a regular file" in r.text
    assert stat.S_ISFIFO(os.lstat(out / "index.html").st_mode) and outputs(out) == ["index.html"]


def test_a_rerun_removes_what_a_killed_run_left(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    # What `kill -9` during the writes leaves: the hidden, unlocked temporaries of atomic_write.
    for name in (".analysis.jsonl.k1ll3d_0.tmp", ".index.html.abcdefgh.tmp"):
        (out / name).write_bytes(b"x" * 100_000)
    (out / ".notes.txt.abcdefgh.tmp").write_text("someone else's")
    r = invoke(write_lines(tmp_path / "t.jsonl", [GOOD]), "-o", out)
    assert r.exit_code == 0, r.output
    left = sorted(p.name for p in out.iterdir())
    assert left == [".notes.txt.abcdefgh.tmp", "analysis.jsonl", "index.html"]


@pytest.mark.parametrize("args, message", [
    (["--structurer", "psychic"], "unknown structurer 'psychic'"),
    (["--scorer", "nope"], "unknown scorer spec 'nope'"),
    (["--limit", "-1"], "--limit must be >= 0"),
])
def test_bad_options_fail_clearly(tmp_path, args, message):
    r = invoke(EXAMPLES, "-o", tmp_path / "o", *args)
    assert r.exit_code == 2 and message in r.text
    assert outputs(tmp_path / "o") == []


@pytest.mark.slow
def test_embedding_structurer_runs_on_the_examples(tmp_path):
    res = run_analyze(EXAMPLES, tmp_path / "o", structurer="embedding", limit=3, show_progress=False)
    assert len(res.rows) == 3
    assert all(row["dag"]["structurer"] == "embedding" for row in read_rows(tmp_path / "o"))
