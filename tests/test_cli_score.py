import json
import os
import stat

import pytest
from typer.testing import CliRunner

from thinkrm.cli import app
from thinkrm.cli.score import run_score
from thinkrm.io import InputError
from thinkrm.scoring import Scorer

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Rich wraps at 80 columns under the test runner, which would split long tmp paths in messages."""
    from thinkrm.cli.common import console

    monkeypatch.setattr(console, "_width", 400)
    monkeypatch.setenv("COLUMNS", "400")

TRACES = [
    {"id": "a", "prompt": "What is 2+3?", "reasoning": "2 + 3 = 5", "model": "m1"},
    {"question": "What is 7*8?", "response": "<think>7 * 8 = 56, let me check again</think> 56"},
    {"id": 3, "prompt": "Q3", "reasoning": "so"},
    {"id": "d", "prompt": "Q4", "reasoning": "wait, actually no"},
    {"id": "e", "prompt": "Q5", "reasoning": "x" * 40},
]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


class Counting(Scorer):
    spec = "counting"

    def __init__(self):
        self.seen = []

    def score(self, items):
        self.seen += [r for _, r in items]
        return [float(len(r)) for _, r in items]


class Prepares:
    """Mixin: scoring in two stages, as `hf:` on a GPU, so `run_score` pipelines its chunks (score_chunks)."""

    prepared = 0

    def prepare(self, items):
        self.prepared += len(items)
        return list(items)


class TwoStageCounting(Prepares, Counting):
    pass


@pytest.fixture(params=["one stage", "two stages"])
def stages(request, monkeypatch):
    """Runs a test with one-stage and with two-stage scorers, in chunks of two rows (so several chunks)."""
    import thinkrm.cli.score as score_cli

    monkeypatch.setattr(score_cli, "SCORE_CHUNK", 2)
    return request.param == "two stages"


def test_score_adds_score_and_keeps_every_field(tmp_path):
    src = write_jsonl(tmp_path / "traces.jsonl", TRACES)
    out = tmp_path / "scored.jsonl"
    r = runner.invoke(app, ["score", str(src), "--scorer", "length", "-o", str(out)])
    assert r.exit_code == 0, r.output
    rows = read_jsonl(out)
    assert [row["id"] for row in rows] == ["a", "2", 3, "d", "e"]
    assert rows[0] == {**TRACES[0], "score": -9.0}
    assert rows[1] == {**TRACES[1], "id": "2", "score": -float(len("7 * 8 = 56, let me check again"))}
    assert "scored 5 rows" in r.output


def test_resume_after_kill_with_torn_last_line(tmp_path, stages):
    src = write_jsonl(tmp_path / "traces.jsonl", TRACES)
    out = tmp_path / "scored.jsonl"
    # What a killed run leaves: two finished rows (marked so a re-score would show) and half of a third.
    done = [{**TRACES[0], "score": 999.0}, {**TRACES[1], "id": "2", "score": 998.0}]
    out.write_text("".join(json.dumps(r) + "\n" for r in done) + '{"id": 3, "prompt": "Q3", "reas')
    scorer = TwoStageCounting() if stages else Counting()
    res = run_score(src, out, scorer, resume=True, show_progress=False)
    assert (res.scored, res.resumed) == (3, 2)
    assert scorer.seen == ["so", "wait, actually no", "x" * 40]
    assert scorer.prepares == stages and getattr(scorer, "prepared", 0) == (3 if stages else 0)
    rows = read_jsonl(out)
    assert [row["id"] for row in rows] == ["a", "2", 3, "d", "e"]
    assert [row["score"] for row in rows] == [999.0, 998.0, 2.0, 17.0, 40.0]
    # A second resume has nothing left to do.
    again = run_score(src, out, Counting(), resume=True, show_progress=False)
    assert (again.scored, again.resumed) == (0, 5) and len(read_jsonl(out)) == 5


def test_without_resume_output_starts_over(tmp_path):
    src = write_jsonl(tmp_path / "traces.jsonl", TRACES[:2])
    out = write_jsonl(tmp_path / "scored.jsonl", [{"id": "a", "score": 999.0}])
    res = run_score(src, out, Counting(), show_progress=False)
    assert res.scored == 2 and [row["score"] for row in read_jsonl(out)] == [9.0, 30.0]


def test_a_bad_row_stops_the_run_after_the_rows_before_it_and_resume_goes_on(tmp_path, stages):
    src = write_jsonl(tmp_path / "traces.jsonl", [*TRACES[:3], {"id": "x", "prompt": "Q"}, *TRACES[3:]])
    out = tmp_path / "scored.jsonl"
    with pytest.raises(InputError, match=r"traces.jsonl:4"):
        run_score(src, out, TwoStageCounting() if stages else Counting(), show_progress=False)
    assert [row["id"] for row in read_jsonl(out)] == ["a", "2", 3]  # the chunk cut short by the bad row too
    scorer = TwoStageCounting() if stages else Counting()
    res = run_score(src, out, scorer, resume=True, skip_bad=True, show_progress=False)
    assert (res.scored, res.resumed, len(res.skipped)) == (2, 3, 1)
    assert [row["id"] for row in read_jsonl(out)] == ["a", "2", 3, "d", "e"]
    assert getattr(scorer, "prepared", 0) == (2 if stages else 0)


def test_bad_rows_stop_with_file_line_or_are_skipped(tmp_path):
    src = write_jsonl(tmp_path / "traces.jsonl", [TRACES[0], {"id": "x", "prompt": "Q"}, "{oops", TRACES[3],
                                                  {"id": "a", "prompt": "Q", "reasoning": "dup"}])
    out = tmp_path / "scored.jsonl"
    r = runner.invoke(app, ["score", str(src), "--scorer", "length", "-o", str(out)])
    assert r.exit_code == 2 and f"{src}:2" in r.output and "missing trace" in r.output
    assert "Traceback" not in r.output
    r = runner.invoke(app, ["score", str(src), "--scorer", "length", "-o", str(out), "--skip-bad"])
    assert r.exit_code == 0, r.output
    assert "skipped 3 bad rows" in r.output and "duplicate id 'a' (first on line 1)" in r.output
    assert [row["id"] for row in read_jsonl(out)] == ["a", "d"]


@pytest.mark.parametrize("args, words", [
    (["--scorer", "nope"], "unknown scorer spec 'nope'"),
    (["--scorer", "hf:/no/such/model"], "cannot load hf:/no/such/model: no such directory"),
    (["--scorer", "hf:out/no/model"], "cannot load hf:out/no/model: no such directory"),  # not a Hub id either
    (["--scorer", "hf:no-such-org/model"], "no-such-org/model, and as a Hub model id:"),  # offline in tests
    (["--scorer", "vllm:http://127.0.0.1:9", "--retries", "0"], "cannot reach http://127.0.0.1:9/classify"),
])
def test_scorer_problems_are_one_line_errors(tmp_path, args, words):
    src = write_jsonl(tmp_path / "traces.jsonl", TRACES[:1])
    r = runner.invoke(app, ["score", str(src), "-o", str(tmp_path / "o.jsonl"), *args])
    assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output


@pytest.mark.slow
def test_score_with_hf_checkpoint_matches_python_api(tmp_path, tiny_reward_model):
    from thinkrm.scoring import load_scorer

    src = write_jsonl(tmp_path / "traces.jsonl", TRACES)
    out = tmp_path / "scored.jsonl"
    r = runner.invoke(app, ["score", str(src), "--scorer", f"hf:{tiny_reward_model}", "-o", str(out),
                            "--batch-size", "2", "--device", "cpu", "--dtype", "float32"])
    assert r.exit_code == 0, r.output
    direct = load_scorer(f"hf:{tiny_reward_model}").score(
        [("What is 2+3?", "2 + 3 = 5"), ("What is 7*8?", "7 * 8 = 56, let me check again"), ("Q3", "so"),
         ("Q4", "wait, actually no"), ("Q5", "x" * 40)])
    assert [row["score"] for row in read_jsonl(out)] == pytest.approx(direct, abs=1e-5)


@pytest.mark.slow
def test_score_tokenizing_ahead_gives_the_same_scores(tmp_path, tiny_reward_model, monkeypatch):
    # As on a GPU (prefetch): each chunk is tokenized while the one before it is on the model.
    import thinkrm.cli.score as score_cli

    monkeypatch.setattr(score_cli, "SCORE_CHUNK", 2)
    src = write_jsonl(tmp_path / "traces.jsonl", TRACES)
    runs = {}
    for ahead in (False, True):
        out = tmp_path / f"scored-{ahead}.jsonl"
        score_cli.run_score(src, out, f"hf:{tiny_reward_model}", show_progress=False, device="cpu",
                            dtype="float32", prefetch=ahead)
        runs[ahead] = [(row["id"], row["score"]) for row in read_jsonl(out)]
    assert len(runs[True]) == len(TRACES) and [i for i, _ in runs[True]] == [i for i, _ in runs[False]]
    assert [s for _, s in runs[True]] == pytest.approx([s for _, s in runs[False]], abs=1e-6)


PAIRS = [
    {"id": "p1", "prompt": "Q", "chosen": "short", "rejected": "much longer text", "kind": "padding"},
    {"id": "p2", "prompt": "Q", "chosen": "a longer chosen text", "rejected": "brief", "kind": "padding"},
    {"id": "p3", "prompt": "Q", "chosen": "abcdefghij", "rejected": "abcdefghik", "kind": "swap"},
    {"id": "bad", "prompt": "Q", "chosen": "", "rejected": "x"},
]


def test_eval_pairs_writes_results_and_outputs_and_prints_tables(tmp_path):
    src = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    out = tmp_path / "eval"
    r = runner.invoke(app, ["eval-pairs", str(src), "--scorer", "random:1", "-o", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert res["scorer"] == "random:1" and res["num_pairs"] == 3 and res["input"] == str(src)
    assert res["baselines"]["length"]["accuracy"] == pytest.approx(1 / 3)
    assert res["baselines"]["length"]["per_kind"]["swap"]["ties"] == 1
    assert res["bad_rows"]["count"] == 1 and f"{src}:4" in res["bad_rows"]["examples"][0]
    rows = [json.loads(x) for x in (out / "outputs.jsonl").read_text().splitlines()]
    assert [x["id"] for x in rows] == ["p1", "p2", "p3"]
    assert sum(x["results"] for x in rows) == res["correct"]
    assert all(x["results"] == int(x["scores_chosen"] > x["scores_rejected"]) for x in rows)
    for words in ("random:1", "length (baseline)", "per kind", "padding", "swap", "33.3%",
                  "1 bad rows skipped"):
        assert words in r.output


def test_eval_pairs_missing_file_is_clear_and_writes_nothing(tmp_path):
    out = tmp_path / "eval"
    r = runner.invoke(app, ["eval-pairs", str(tmp_path / "none.jsonl"), "--scorer", "length", "-o", str(out)])
    assert r.exit_code == 2 and "none.jsonl: file not found" in r.output
    assert not (out / "results.json").exists()


def test_eval_pairs_failed_scorer_leaves_no_half_written_outputs(tmp_path):
    src = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    out = tmp_path / "eval"
    r = runner.invoke(app, ["eval-pairs", str(src), "--scorer", "sglang:127.0.0.1:9", "-o", str(out),
                            "--retries", "1"])
    assert r.exit_code == 2 and "cannot reach http://127.0.0.1:9/v1/embeddings after 2 attempts" in r.output
    assert not out.exists() or list(out.iterdir()) == []



def test_thinkrm_server_key_in_the_environment_is_not_sent_to_other_servers(tmp_path, monkeypatch):
    from test_remote import FakeServer

    server = FakeServer()
    try:
        monkeypatch.setenv("THINKRM_API_KEY", "our-server-key")
        src = tmp_path / "t.jsonl"
        write_jsonl(src, [{"id": "a", "prompt": "What is 2+3?", "reasoning": "2 + 3 = 5"}])
        for spec, expected in ((f"vllm:{server.url}", None), (f"thinkrm:{server.url}", "Bearer our-server-key")):
            r = CliRunner().invoke(app, ["score", str(src), "--scorer", spec, "-o", str(tmp_path / "o.jsonl")])
            assert r.exit_code == 0, r.output
            headers = {k.lower(): v for k, v in server.requests[-1][2].items()}
            assert headers.get("authorization") == expected
    finally:
        server.close()


def test_output_that_is_not_a_regular_file_is_refused_and_kept(tmp_path):
    src = write_jsonl(tmp_path / "traces.jsonl", TRACES)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for extra in ([], ["--resume"]):
        r = runner.invoke(app, ["score", str(src), "--scorer", "length", "-o", str(fifo), *extra])
        assert r.exit_code == 2 and f"error: {fifo}: is a FIFO, not a regular file" in r.output
        assert "Traceback" not in r.output and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    d = tmp_path / "dir"
    d.mkdir()
    (d / "keep").write_text("x")
    r = runner.invoke(app, ["score", str(src), "--scorer", "length", "-o", str(d)])
    assert r.exit_code == 2 and f"{d}: is a directory; expected a file" in r.output
    assert (d / "keep").read_text() == "x"


@pytest.mark.parametrize("link", ["same", "symlink", "hardlink"])
def test_output_may_not_be_the_input_under_any_name(tmp_path, link):
    src = write_jsonl(tmp_path / "traces.jsonl", TRACES)
    before = src.read_bytes()
    out = {"same": src, "symlink": tmp_path / "s.jsonl", "hardlink": tmp_path / "h.jsonl"}[link]
    if link == "symlink":
        out.symlink_to(src)
    elif link == "hardlink":
        out.hardlink_to(src)
    for extra in ([], ["--resume"]):
        r = runner.invoke(app, ["score", str(src), "--scorer", "length", "-o", str(out), *extra])
        assert r.exit_code == 2 and "is the input file" in r.output
        assert src.read_bytes() == before and out.exists()


SURROGATE = '{"id": "s", "prompt": "Q", "reasoning": "bad \\ud800 text"}'
DEEP_VALUE = "[" * 100_000 + "]" * 100_000
DEEP = '{"id": "deep", "prompt": "Q", "reasoning": "r", "m": ' + DEEP_VALUE + "}"
NUL = '{"id": "nul", "prompt": "Q\\u0000", "reasoning": "r"}'
EMPTY = '{"id": "empty", "prompt": "Q", "reasoning": "  \\n"}'
EMPTY_RESPONSE = '{"id": "empty2", "prompt": "Q", "response": "</think> 42"}'


@pytest.mark.parametrize("bad, words", [
    (SURROGATE, ":3: field 'reasoning': contains a lone surrogate (\\ud800) at character 4"),
    (DEEP, ":3: nested deeper than 100 levels"),
    (NUL, ":3: field 'prompt': contains a NUL character"),
    (EMPTY, ":3: field 'reasoning': empty reasoning"),
    (EMPTY_RESPONSE, ":3: field 'response': empty reasoning"),
])
def test_bad_text_is_a_row_error_and_costs_no_good_row(tmp_path, bad, words):
    src = write_jsonl(tmp_path / "traces.jsonl", [*TRACES[:2], bad, *TRACES[2:]])
    out = tmp_path / "scored.jsonl"
    r = runner.invoke(app, ["score", str(src), "--scorer", "length", "-o", str(out)])
    assert r.exit_code == 2 and f"error: {src}{words}" in r.output and "Traceback" not in r.output
    # The rows before the bad one are kept, so fixing the row and resuming finishes the job.
    assert [row["id"] for row in read_jsonl(out)] == ["a", "2"]
    r = runner.invoke(app, ["score", str(src), "--scorer", "length", "-o", str(out), "--skip-bad"])
    assert r.exit_code == 0, r.output
    assert f"skipped {src}{words}" in r.output and "scored 5 rows, skipped 1 bad rows" in r.output
    assert [row["id"] for row in read_jsonl(out)] == ["a", "2", 3, "d", "e"]


@pytest.mark.slow
def test_lone_surrogate_with_the_embedded_model_keeps_the_good_rows(tmp_path):
    """The probe of issue 16: TRM-lite's tokenizer crashed on the row and the whole chunk was lost."""
    src = write_jsonl(tmp_path / "traces.jsonl", [*TRACES[:2], SURROGATE, *TRACES[2:]])
    out = tmp_path / "scored.jsonl"
    r = runner.invoke(app, ["score", str(src), "--scorer", "lite", "-o", str(out), "--skip-bad"])
    assert r.exit_code == 0, r.output
    assert "skipped 1 bad rows" in r.output and f"{src}:3: field 'reasoning'" in r.output
    assert [row["id"] for row in read_jsonl(out)] == ["a", "2", 3, "d", "e"]


@pytest.mark.parametrize("content", ["", "\n\n", "[]"])
def test_empty_input_is_an_error_and_leaves_an_earlier_output_alone(tmp_path, content):
    src = tmp_path / "traces.jsonl"
    src.write_text(content)
    out = write_jsonl(tmp_path / "scored.jsonl", [{"id": "old", "score": 1.0}])
    r = runner.invoke(app, ["score", str(src), "--scorer", "length", "-o", str(out)])
    assert r.exit_code == 2 and f"error: {src}: no rows: the file is empty" in r.output
    assert read_jsonl(out) == [{"id": "old", "score": 1.0}]


class Picky(Scorer):
    """Fails a whole call that contains a poisoned item, as a server answering 422 for one item does."""

    spec = "picky"

    def __init__(self, error=ValueError):
        self.calls = 0
        self.error = error

    def score(self, items):
        self.calls += 1
        if any("POISON" in r for _, r in items):
            raise self.error("cannot take this text")
        return [float(len(r)) for _, r in items]


class TwoStagePicky(Prepares, Picky):
    pass


def test_a_row_the_scorer_fails_on_costs_only_that_row(tmp_path, stages):
    rows = [*TRACES[:2], {"id": "p", "prompt": "Q", "reasoning": "POISON"}, *TRACES[2:]]
    src = write_jsonl(tmp_path / "traces.jsonl", rows)
    out = tmp_path / "scored.jsonl"
    Picky_ = TwoStagePicky if stages else Picky
    res = run_score(src, out, Picky_(), skip_bad=True, show_progress=False)
    assert res.scored == 5 and len(res.skipped) == 1
    assert f"{src}:3: the scorer failed on this row: ValueError: cannot take this text" == res.skipped[0]
    assert [row["id"] for row in read_jsonl(out)] == ["a", "2", 3, "d", "e"]
    # Without --skip-bad the run stops at that row, but the good rows of its chunk (of two) are written.
    with pytest.raises(InputError, match=r"traces.jsonl:3: the scorer failed on this row"):
        run_score(src, out, Picky_(), show_progress=False)
    assert [row["id"] for row in read_jsonl(out)] == ["a", "2", 3]


def test_skipped_rows_are_reported_in_line_order_though_reading_runs_ahead(tmp_path, stages):
    missing = {"id": "x", "prompt": "Q"}  # no reasoning: bad as read
    rows = [{**missing, "id": "x1"}, TRACES[0], {"id": "p", "prompt": "Q", "reasoning": "POISON"}, TRACES[1],
            {**missing, "id": "x5"}, *TRACES[2:], {**missing, "id": "x9"}]
    src = write_jsonl(tmp_path / "traces.jsonl", rows)
    res = run_score(src, tmp_path / "scored.jsonl", TwoStagePicky() if stages else Picky(), skip_bad=True,
                    show_progress=False)
    # Chunks of two: the bad row on line 5 is read while the chunk failing on line 3 is still being scored.
    assert [e.split(": ", 1)[0] for e in res.skipped] == [f"{src}:{n}" for n in (1, 3, 5, 9)]
    assert res.scored == 5


def test_scorer_failures_that_are_not_about_rows_are_not_retried_row_by_row(tmp_path):
    src = write_jsonl(tmp_path / "traces.jsonl", [{**t, "reasoning": "POISON"} for t in TRACES])
    scorer = Picky()
    with pytest.raises(ValueError, match="cannot take this text"):  # every row fails: the scorer is broken
        run_score(src, tmp_path / "o.jsonl", scorer, skip_bad=True, show_progress=False)
    assert scorer.calls == 1 + len(TRACES)
    down = Picky(ConnectionError)
    with pytest.raises(ConnectionError):  # an unreachable server is no reason to try each row
        run_score(src, tmp_path / "o.jsonl", down, skip_bad=True, show_progress=False)
    assert down.calls == 1


def test_path_errors_of_the_system_are_one_line(tmp_path):
    src = write_jsonl(tmp_path / "traces.jsonl", TRACES)
    out = tmp_path / ("x" * 300) / "o.jsonl"
    r = runner.invoke(app, ["score", str(src), "--scorer", "length", "-o", str(out)])
    assert r.exit_code == 2 and "File name too long" in r.output and "Traceback" not in r.output


@pytest.mark.slow
def test_kill_9_during_resumed_scoring_loses_and_duplicates_nothing(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    n = 4000
    src = write_jsonl(tmp_path / "traces.jsonl",
                      [{"id": f"t{i}", "prompt": "Q", "reasoning": "w " * (i % 50 + 1)} for i in range(n)])
    out = tmp_path / "scored.jsonl"
    code = (
        "import sys, time\n"
        "from thinkrm.cli.score import run_score\n"
        "from thinkrm.scoring import Scorer\n"
        "class Slow(Scorer):\n"
        "    spec = 'slow'\n"
        "    def score(self, items):\n"
        "        time.sleep(0.02)\n"
        "        return [float(len(r)) for _, r in items]\n"
        "run_score(sys.argv[1], sys.argv[2], Slow(), resume=True, show_progress=False)\n")
    for _ in range(3):  # killed three times at different points, then left to finish
        proc = subprocess.Popen([sys.executable, "-c", code, str(src), str(out)])
        deadline = time.monotonic() + 60
        start = out.stat().st_size if out.exists() else 0
        while time.monotonic() < deadline and (not out.exists() or out.stat().st_size < start + 20_000):
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    subprocess.run([sys.executable, "-c", code, str(src), str(out)], check=True, timeout=300)
    rows = read_jsonl(out)
    assert sorted(int(r["id"][1:]) for r in rows) == list(range(n))  # each id exactly once
    assert all(r["score"] == float(len(r["reasoning"])) for r in rows)


def test_eval_pairs_bad_text_is_a_bad_row_with_its_line(tmp_path):
    src = write_jsonl(tmp_path / "pairs.jsonl", [
        *PAIRS[:3],
        '{"id": "s", "prompt": "Q", "chosen": "x \\ud800", "rejected": "y"}',
        '{"id": "d", "prompt": "Q", "chosen": "x", "rejected": "y", "m": ' + DEEP_VALUE + "}",
    ])
    out = tmp_path / "eval"
    r = runner.invoke(app, ["eval-pairs", str(src), "--scorer", "length", "-o", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert res["num_pairs"] == 3 and res["bad_rows"]["count"] == 2
    assert [e.split(": ", 1)[0] for e in res["bad_rows"]["examples"]] == [f"{src}:{i}" for i in (4, 5)]
    assert "field 'chosen': contains a lone surrogate" in res["bad_rows"]["examples"][0]
    assert "nested deeper than 100 levels" in res["bad_rows"]["examples"][1]


def test_eval_pairs_without_a_valid_pair_is_an_error_and_writes_nothing(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    r = runner.invoke(app, ["eval-pairs", str(empty), "--scorer", "length", "-o", str(tmp_path / "e1")])
    assert r.exit_code == 2 and f"error: {empty}: no rows: the file is empty" in r.output
    bad = write_jsonl(tmp_path / "bad.jsonl", [PAIRS[3], "{oops"])
    r = runner.invoke(app, ["eval-pairs", str(bad), "--scorer", "length", "-o", str(tmp_path / "e2")])
    assert r.exit_code == 2 and "no valid pairs: all 2 rows are bad" in r.output and f"{bad}:1" in r.output
    assert not any(p.is_file() for p in tmp_path.glob("e*/*"))


def test_eval_pairs_output_directory_is_checked_before_anything_is_written(tmp_path):
    src = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    before = src.read_bytes()
    r = runner.invoke(app, ["eval-pairs", str(src), "--scorer", "length", "-o", str(src)])
    assert r.exit_code == 2 and "exists and is not a directory" in r.output and "Traceback" not in r.output
    out = tmp_path / "eval"
    out.mkdir()
    (out / "outputs.jsonl").symlink_to(src)
    r = runner.invoke(app, ["eval-pairs", str(src), "--scorer", "length", "-o", str(out)])
    assert r.exit_code == 2 and "outputs.jsonl: is the input file" in r.output
    assert src.read_bytes() == before


def test_calibrate_refuses_to_write_its_input_before_scoring(tmp_path):
    src = write_jsonl(tmp_path / "traces.jsonl", TRACES)
    before = src.read_bytes()
    link = tmp_path / "link.json"
    link.symlink_to(src)
    r = runner.invoke(app, ["calibrate", str(src), "--scorer", "length", "-o", str(link)])
    assert r.exit_code == 2 and "is the input file" in r.output and src.read_bytes() == before
