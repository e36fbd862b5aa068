import json

import pytest
from typer.testing import CliRunner

from thinkrm.cli import app
from thinkrm.cli.score import run_score
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


def test_resume_after_kill_with_torn_last_line(tmp_path):
    src = write_jsonl(tmp_path / "traces.jsonl", TRACES)
    out = tmp_path / "scored.jsonl"
    # What a killed run leaves: two finished rows (marked so a re-score would show) and half of a third.
    done = [{**TRACES[0], "score": 999.0}, {**TRACES[1], "id": "2", "score": 998.0}]
    out.write_text("".join(json.dumps(r) + "\n" for r in done) + '{"id": 3, "prompt": "Q3", "reas')
    scorer = Counting()
    res = run_score(src, out, scorer, resume=True, show_progress=False)
    assert (res.scored, res.resumed) == (3, 2)
    assert scorer.seen == ["so", "wait, actually no", "x" * 40]
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
    (["--scorer", "vllm:http://127.0.0.1:9", "--retries", "0"], "cannot reach http://127.0.0.1:9/classify"),
])
def test_scorer_problems_are_one_line_errors(tmp_path, args, words):
    src = write_jsonl(tmp_path / "traces.jsonl", TRACES[:1])
    r = runner.invoke(app, ["score", str(src), "-o", str(tmp_path / "o.jsonl"), *args])
    assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output


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
