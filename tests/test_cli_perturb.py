"""`thinkrm perturb` through the CLI: what it refuses to write over, and an empty input."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from thinkrm.cli import app

GOOD = {"id": "g", "prompt": "What is 2 + 3?",
        "response": "<think>2 + 3 = 5.\n\nSo the answer is 5.\n\nWait, check: 5 - 3 = 2.</think> 5"}


def run(*args):
    r = CliRunner().invoke(app, ["perturb", *map(str, args)])
    assert "Traceback" not in r.output
    return r


def test_writes_pairs(tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_text(json.dumps(GOOD) + "\n")
    r = run(src, "-o", tmp_path / "pairs.jsonl")
    assert r.exit_code == 0, r.output
    assert all(json.loads(x)["chosen"] for x in (tmp_path / "pairs.jsonl").read_text().splitlines())


def test_the_output_is_never_the_input(tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_text(json.dumps(GOOD) + "\n")
    before = src.read_bytes()
    link = tmp_path / "link.jsonl"
    link.symlink_to(src)
    for out in (src, link):
        r = run(src, "-o", out)
        assert r.exit_code == 2 and "is the input file" in r.output
    r = run(link, "-o", src)  # read through the link, write the real file: the same data
    assert r.exit_code == 2 and "is the input file" in r.output
    assert src.read_bytes() == before and link.is_symlink()


def test_empty_input_is_an_error_and_writes_nothing(tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_text("")
    r = run(src, "-o", tmp_path / "pairs.jsonl")
    assert r.exit_code == 2 and f"{src}: no rows: the file is empty" in " ".join(r.output.split())
    assert list(tmp_path.iterdir()) == [src]
