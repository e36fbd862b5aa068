"""Delimiter lexicons: first words, mining, load/save errors, the shipped default, the `mine` command."""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from thinkrm.cli import app
from thinkrm.delimiters import Lexicon, default_lexicon, first_word, mine_lexicon
from thinkrm.io import InputError


@pytest.mark.parametrize("segment, word", [
    ("Wait, that is wrong.", "wait"),
    ("**Alternatively**, use sines.", "alternatively"),
    ("### Step 2: expand", "step"),
    ("1. **Calculate r:**", "calculate"),
    ("- So the sum is 4", "so"),
    ("> Let's check", "let's"),
    ("Let’s check", "let's"),
    ("\\[ x = 2 \\]", None),
    ("$x$ is even", None),
    ("42 is the answer", None),
    ("", None),
])
def test_first_word(segment, word):
    assert first_word(segment) == word


def synthetic_corpus(n: int = 60, seed: int = 0) -> list[str]:
    """Traces whose paragraphs open with discourse words (only ever at the start) or content words
    (which also occur everywhere inside paragraphs)."""
    rng = random.Random(seed)
    openers = ["Wait", "Alternatively", "So", "Hmm"]
    traces = []
    for _ in range(n):
        paras = []
        for _ in range(12):
            if rng.random() < 0.4:
                head = rng.choice(openers) + ","
            else:
                head = rng.choice(["The", "We", "This"])
            paras.append(f"{head} the value of the sum we need is {rng.randint(1, 99)} and the value is the "
                         "sum we use for this step, so we keep the number.")
        traces.append("\n\n".join(paras))
    traces.append("A short answer with no paragraphs: 4.")
    return traces


def test_mining_keeps_discourse_words_and_drops_content_words():
    result = mine_lexicon(synthetic_corpus())
    assert result.n_traces == 60  # the short answer has too few paragraphs to count
    assert {"wait", "alternatively", "hmm"} <= result.lexicon.words
    # "the", "we" and "this" open many paragraphs but are everywhere else too (low start ratio);
    # "so" opens paragraphs but also appears inside every one of them
    assert not {"the", "we", "this", "so"} & result.lexicon.words
    assert result.lexicon.stats["wait"]["ratio"] == 1.0
    assert result.starts["the"] > result.starts["wait"]
    assert mine_lexicon(synthetic_corpus(), top=2).lexicon.words <= {"wait", "alternatively", "hmm"}
    assert len(mine_lexicon(synthetic_corpus(), top=2).lexicon) == 2


def test_mining_needs_words_in_several_traces():
    corpus = synthetic_corpus(20)
    corpus[0] = corpus[0].replace("\n\nThe ", "\n\nZebra ", 1)
    assert "zebra" not in mine_lexicon(corpus).lexicon


def test_save_and_load_round_trip(tmp_path):
    lex = mine_lexicon(synthetic_corpus(), source="synthetic").lexicon
    path = tmp_path / "lex.json"
    lex.save(path)
    back = Lexicon.load(path)
    assert back == lex and back.source == "synthetic" and back.stats == lex.stats
    assert back.opens_step("Wait, no.") and not back.opens_step("The sum.")
    assert Lexicon.load(_write(tmp_path, '{"words": ["Wait", " so "]}')).words == {"wait", "so"}


def _write(tmp_path, content: str | bytes):
    path = tmp_path / "bad.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize("content, message", [
    ("{oops", r"bad.json:1: invalid JSON"),
    (b"\xff\xfe", r"bad.json: not valid UTF-8"),
    ('["wait"]', r"a lexicon is a JSON object, got list"),
    ('{"words": "wait"}', r"field 'words': expected a list of non-empty strings"),
    ('{"words": ["wait", 3]}', r"field 'words': expected a list"),
    ('{"words": ["wait"], "stats": []}', r"field 'stats': expected an object"),
])
def test_bad_lexicon_files_name_the_problem(tmp_path, content, message):
    with pytest.raises(InputError, match=message):
        Lexicon.load(_write(tmp_path, content))


def test_missing_lexicon_file(tmp_path):
    with pytest.raises(InputError, match="nope.json: file not found"):
        Lexicon.load(tmp_path / "nope.json")


def test_default_lexicon_is_mined_and_shipped():
    lex = default_lexicon()
    assert {"wait", "alternatively", "so", "therefore", "hmm"} <= lex.words
    assert not {"the", "a", "x", "i"} & lex.words
    assert lex.source.startswith("mined:") and all(lex.stats[w]["starts"] > 0 for w in lex.words)


runner = CliRunner()


def test_cli_mines_and_prints_the_table(tmp_path):
    src = tmp_path / "traces.jsonl"
    src.write_text("".join(json.dumps({"prompt": "p", "reasoning": t}) + "\n" for t in synthetic_corpus()))
    out = tmp_path / "out" / "lex.json"
    r = runner.invoke(app, ["delimiters", "mine", str(src), "-o", str(out), "--top", "5", "--rows", "6"])
    assert r.exit_code == 0, r.output
    assert "paragraphs" in r.stdout and "start ratio" in r.stdout
    table_words = [line.split("│")[1].strip() for line in r.stdout.splitlines() if line.count("│") >= 5]
    assert len(table_words) == 6 and "the" in table_words
    lex = Lexicon.load(out)
    assert {"wait", "alternatively", "hmm"} <= lex.words and len(lex) <= 5
    assert "traces.jsonl" in lex.source


def test_cli_reads_a_named_field(tmp_path):
    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps({"prompt": "p", "chosen": t, "rejected": "r"}) + "\n"
                           for t in synthetic_corpus()))
    out = tmp_path / "lex.json"
    r = runner.invoke(app, ["delimiters", "mine", str(src), "-o", str(out), "--field", "chosen",
                            "--rows", "0"])
    assert r.exit_code == 0, r.output
    assert "wait" in Lexicon.load(out)


def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path):
    src = tmp_path / "traces.jsonl"
    good = json.dumps({"prompt": "p", "reasoning": synthetic_corpus(1)[0]})
    src.write_text(good + "\n" + '{"prompt": "p", "reasoning": 5}\n')
    out = tmp_path / "lex.json"
    r = runner.invoke(app, ["delimiters", "mine", str(src), "-o", str(out)])
    assert r.exit_code == 2
    assert "traces.jsonl:2: field 'reasoning': expected a string, got int" in " ".join(r.output.split())
    assert "Traceback" not in r.output and not out.exists()
    r = runner.invoke(app, ["delimiters", "mine", str(src), "-o", str(out), "--skip-bad",
                            "--min-segments", "4"])
    assert r.exit_code == 0, r.output
    assert "skipped" in r.output and out.exists()
    r = runner.invoke(app, ["delimiters", "mine", str(tmp_path / "missing.jsonl"), "-o", str(out)])
    assert r.exit_code == 2 and "file not found" in r.output


def test_cli_nothing_to_mine(tmp_path):
    src = tmp_path / "short.jsonl"
    src.write_text(json.dumps({"prompt": "p", "reasoning": "one line"}) + "\n")
    r = runner.invoke(app, ["delimiters", "mine", str(src), "-o", str(tmp_path / "lex.json")])
    assert r.exit_code == 2 and "nothing to mine" in r.output


@pytest.mark.slow
@pytest.mark.shared_data
def test_shipped_lexicon_is_reproducible(shared_data, tmp_path):
    """`thinkrm delimiters mine` on the shared data rebuilds exactly the lexicon the package ships."""
    out = tmp_path / "lex.json"
    r = runner.invoke(app, ["delimiters", "mine",
                            str(shared_data / "skythought-math500" / "candidates.jsonl"),
                            str(shared_data / "prmbench-train" / "pairs.jsonl"), "--field", "chosen",
                            "-o", str(out), "--rows", "0"])
    assert r.exit_code == 0, r.output
    assert Lexicon.load(out).words == default_lexicon().words
