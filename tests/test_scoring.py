"""The scorer interface's promise, one finite score per item, is checked once and holds for every consumer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from thinkrm.cli import app
from thinkrm.scoring import BACKENDS, LengthScorer, Scorer, checked_scores, score_chunks


class Broken(Scorer):
    """`broken:nan` scores a reasoning with "poison" in it NaN, `broken:inf` +inf; `broken:short` drops the
    last item's score."""

    def __init__(self, arg: str = "", **_):
        self.mode = arg

    def score(self, items):
        if self.mode == "short":
            return [float(len(r)) for _, r in items][:-1]
        bad = {"nan": math.nan, "inf": math.inf}[self.mode]
        return [bad if "poison" in r else float(len(r)) for _, r in items]


@pytest.fixture
def broken(monkeypatch):
    """A `broken:MODE` scorer spec, reachable from every command like any backend."""
    monkeypatch.setitem(BACKENDS, "broken", f"{__name__}:Broken")


ITEMS = [("Q", "a"), ("Q", "poison"), ("Q", "ccc")]


@pytest.mark.parametrize("mode, message", [
    ("nan", "scorer 'broken:nan' returned nan for item 1: expected a finite number"),
    ("inf", "scorer 'broken:inf' returned inf for item 1: expected a finite number"),
    ("short", "scorer 'broken:short' returned 2 scores for 3 items"),
])
def test_bad_scores_are_refused_naming_the_scorer_and_the_item(mode, message):
    scorer = Broken(mode)
    scorer.spec = f"broken:{mode}"
    with pytest.raises(ValueError) as e:
        checked_scores(scorer, ITEMS)
    assert str(e.value) == message


def test_good_scores_pass_as_plain_floats():
    class Numpy(Scorer):
        def score(self, items):
            return np.arange(len(items), dtype=np.float32)

    scores = checked_scores(Numpy(), ITEMS)
    assert scores == [0.0, 1.0, 2.0] and all(type(s) is float for s in scores)

    class Words(Scorer):
        def score(self, items):
            return ["1.0" for _ in items]

    with pytest.raises(ValueError, match=r"scorer 'Words' returned '1.0' for item 0"):
        checked_scores(Words(), ITEMS)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("mode", ["nan", "short"])
def test_score_eval_pairs_and_bon_refuse_a_broken_scorer(tmp_path, broken, mode):
    texts = ["fine", "poison", "also fine"]
    traces = _write(tmp_path / "traces.jsonl", [{"id": str(i), "prompt": "Q", "reasoning": t}
                                                 for i, t in enumerate(texts)])
    pairs = _write(tmp_path / "pairs.jsonl", [{"id": str(i), "prompt": "Q", "chosen": "good " + t,
                                               "rejected": t} for i, t in enumerate(texts)])
    cands = _write(tmp_path / "cands.jsonl", [{"problem_id": "p", "prompt": "Q", "correct": i == 0,
                                               "response": f"<think>{t}</think> \\boxed{{{i}}}"}
                                              for i, t in enumerate(texts)])
    runs = {
        "score": ["score", traces, "--scorer", f"broken:{mode}", "-o", tmp_path / "scored.jsonl"],
        "eval-pairs": ["eval-pairs", pairs, "--scorer", f"broken:{mode}", "-o", tmp_path / "eval"],
        "bon": ["bon", cands, "--scorer", f"broken:{mode}", "-o", tmp_path / "bon", "--workers", "1"],
    }
    for command, args in runs.items():
        res = CliRunner().invoke(app, [str(a) for a in args])
        said = " ".join(res.output.split())
        assert res.exit_code == 2, (command, res.output)
        assert f"scorer 'broken:{mode}' returned" in said and "Traceback" not in said, command
    assert not (tmp_path / "eval" / "results.json").exists() and not (tmp_path / "bon" / "bon.json").exists()


def test_the_rl_reward_refuses_a_broken_scorer(broken):
    from thinkrm.rewards import ThinkingReward

    right, poisoned = "<think>3 + 4 = 7</think> \\boxed{7}", "<think>poison: 3 + 4 = 7</think> \\boxed{7}"
    with pytest.raises(ValueError, match="scorer 'broken:nan' returned nan for item 1"):
        ThinkingReward("broken:nan", normalize="none").compute(["3 + 4?"] * 2, [right, poisoned], ["7", "7"])


class TwoStage(LengthScorer):
    """Length scores in two stages, recording the order of events; `score_prepared` of the first chunk waits
    (up to 10 s) for the second chunk's `prepare`, which only a pipeline runs meanwhile."""

    def __init__(self, poison: str = ""):
        self.events: list[str] = []
        self.poison = poison
        import threading

        self.second_prepared = threading.Event()

    def prepare(self, items):
        self.events.append(f"prepare {items[0][1]}")
        if items[0][1] == "b":
            self.second_prepared.set()
        return list(items)

    def score_prepared(self, prepared):
        if prepared[0][1] == "a":
            self.events.append(f"overlap {self.second_prepared.wait(10)}")
        if any(self.poison and r == self.poison for _, r in prepared):
            raise RuntimeError("model choked")
        self.events.append(f"score {prepared[0][1]}")
        return self.score(prepared)


def test_score_chunks_prepares_the_next_chunk_while_this_one_is_scored():
    scorer = TwoStage()
    chunks = [[("p", "a"), ("p", "aa")], [("p", "b")], [("p", "ccc")]]
    got = list(score_chunks(scorer, chunks, list))
    assert got == [(c, [-float(len(r)) for _, r in c]) for c in chunks]
    assert scorer.events[:3] == ["prepare a", "prepare b", "overlap True"]
    assert not LengthScorer().prepares  # one stage: scored as it comes
    assert list(score_chunks(LengthScorer(), chunks, list)) == got


@pytest.mark.parametrize("scorer", [TwoStage(poison="b"), Broken("nan")], ids=["pipelined", "one stage"])
def test_score_chunks_hands_over_a_failed_chunk_and_goes_on(scorer):
    chunks = [[("p", "a")], [("p", "b" if isinstance(scorer, TwoStage) else "poison")], [("p", "ccc")]]
    got = list(score_chunks(scorer, chunks, list, keep_going=True))
    assert [c for c, _ in got] == chunks
    assert isinstance(got[1][1], (RuntimeError, ValueError)) and not isinstance(got[2][1], Exception)
    seen = []
    with pytest.raises((RuntimeError, ValueError)):  # by default the failure is raised, after the chunk before
        for chunk, _ in score_chunks(scorer, chunks, list):
            seen.append(chunk)
    assert seen == chunks[:1]


@pytest.mark.parametrize("scorer", [TwoStage(), LengthScorer()], ids=["pipelined", "one stage"])
def test_score_chunks_hands_over_a_chunk_whose_items_cannot_be_built(scorer):
    def items(chunk):
        if chunk == "bad":
            raise KeyError("prompt")
        return chunk

    chunks = [[("p", "a")], "bad", [("p", "b")]]
    got = list(score_chunks(scorer, chunks, items, keep_going=True))
    assert [c for c, _ in got] == chunks and isinstance(got[1][1], KeyError)
    assert got[2][1] == [-1.0]


@pytest.mark.parametrize("scorer", [TwoStage(), LengthScorer()], ids=["pipelined", "one stage"])
def test_score_chunks_raises_a_stream_error_after_the_chunks_before_it(scorer):
    def stream():
        yield [("p", "a")]
        yield [("p", "b")]
        raise OSError("the input went away")

    seen = []
    with pytest.raises(OSError, match="went away"):
        for _, scores in score_chunks(scorer, stream(), list):
            seen.append(scores)
    assert len(seen) == 2 and all(not isinstance(s, Exception) for s in seen)
