"""Structurers: cue classification, target choice (lexical and MiniLM), the registry."""

from __future__ import annotations

import pytest

from thinkrm.dag import build_dag
from thinkrm.delimiters import Lexicon
from thinkrm.structurers import (
    STRUCTURERS,
    BatchStructurer,
    EmbeddingStructurer,
    HeuristicStructurer,
    Proposal,
    StepRef,
    Structurer,
    View,
    cue_of,
    get_structurer,
)

LEX = Lexicon.of(["so", "wait", "alternatively", "now", "hmm", "let", "combining", "next"])


@pytest.mark.parametrize("opening, kind", [
    ("Wait, that can't be right: 7 is prime.", "correct"),
    ("**Wait**.", "correct"),
    ("But wait, the radius was 3, not 4.", "correct"),
    ("No, the sign is wrong there.", "correct"),
    ("Actually, the triangle is isosceles.", "correct"),
    ("Wait, let me double-check the sum.", "check"),
    ("Let me verify this with x = 2.", "check"),
    ("Let's check: 3 * 4 = 12.", "check"),
    ("- Let me re-examine the sum.", "check"),
    ("Hmm.", "check"),
    ("But wait, is 27 really the smallest cube?", "check"),
    ("Hmm, no, that is wrong.", "correct"),
    ("Alternatively, use the law of cosines.", "restart"),
    ("Let me try a different approach: complete the square.", "restart"),
    ("Another approach is to count the complement.", "restart"),
    ("Wait, alternatively we could factor it.", "restart"),
    ("Combining the two cases, we get 12.", "merge"),
    ("So in both cases the area is 6.", "merge"),
    ("Putting it all together, the sum is 55.", "merge"),
    ("Therefore, x = 3.", "conclude"),
    ("So the answer is 5.", "conclude"),
    ("Okay, let me compute the next term.", None),
    ("Now expand the square.", None),
    ("The slope is 2.", None),
    ("Nothing", None),
])
def test_cues(opening, kind):
    assert cue_of(opening) == kind


def view(step: tuple[int, str], window: list[tuple[int, str]], leaves: list[tuple[int, str]] = ()) -> View:
    return View(step=StepRef(*step), window=tuple(StepRef(*w) for w in window),
                open_leaves=tuple(StepRef(*leaf) for leaf in leaves), main_path=tuple(i for i, _ in window))


def heuristic_for(texts: list[str]) -> HeuristicStructurer:
    from thinkrm.steps import Step

    h = HeuristicStructurer()
    h.start([Step(i, 0, 0, t) for i, t in enumerate(texts)])
    return h


TEXTS = [
    "The rectangle has a perimeter of 20, so length plus width is 10.",  # 0
    "The diagonal is 8, so length squared plus width squared is 64.",  # 1
    "Squaring the sum gives 100 = 64 + 2 * area, so the area is 18.",  # 2
    "Now the rectangle must also exist: the sides solve t^2 - 10t + 18 = 0.",  # 3
    "Wait, the diagonal squared: 8 squared is 64, and the diagonal was 8.",  # 4 corrects step 1
    "Wait, I think the last equation has a typo somewhere.",  # 5 no overlap: corrects the tip
    "Alternatively, parametrize the sides with the perimeter 20 and length plus width 10.",  # 6
    "Combining both, the area is 18 and the discriminant 100 - 72 is positive.",  # 7
]


def test_correction_targets_the_step_it_refers_to():
    h = heuristic_for(TEXTS)
    window = [(i, TEXTS[i]) for i in range(4)]
    assert h.propose(view((4, TEXTS[4]), window)) == Proposal("backtrack", (1,), reason="correct")
    # no step matches: the tip is what is being corrected, so re-attach before it
    assert h.propose(view((5, TEXTS[5]), window)) == Proposal("backtrack", (2,), reason="correct")


def test_check_of_the_tip_continues_and_of_an_earlier_step_backtracks():
    texts = TEXTS[:4] + ["Let me check: t^2 - 10t + 18 = 0 has discriminant 28, fine.",
                         "Let me verify the perimeter: 20 means length plus width is 10."]
    h = heuristic_for(texts)
    window = [(i, texts[i]) for i in range(4)]
    assert h.propose(view((4, texts[4]), window)).action == "continue"
    assert h.propose(view((5, texts[5]), window)) == Proposal("backtrack", (0,), reason="check")


def test_restart_goes_to_the_most_similar_earlier_step_or_the_branch_point():
    h = heuristic_for(TEXTS)
    window = [(i, TEXTS[i]) for i in range(4)]
    assert h.propose(view((6, TEXTS[6]), window)) == Proposal("backtrack", (0,), reason="restart")
    h2 = heuristic_for(["Start.", "Step one here.", "Step two here.", "Alternatively, something unrelated."])
    w = [(0, "Start."), (1, "Step one here."), (2, "Step two here.")]
    assert h2.propose(view((3, "Alternatively, something unrelated."), w)).targets == (0,)


def test_merge_joins_the_tip_with_related_leaves_only():
    h = heuristic_for(TEXTS)
    window = [(0, TEXTS[0]), (3, TEXTS[3])]
    leaves = [(2, TEXTS[2]), (5, TEXTS[5])]
    assert h.propose(view((7, TEXTS[7]), window, leaves)) == Proposal("merge", (2, 3), reason="merge")
    assert h.propose(view((7, TEXTS[7]), window)).action == "continue"  # nothing to merge


def test_a_single_main_path_step_cannot_backtrack():
    h = heuristic_for(TEXTS)
    assert h.propose(view((4, TEXTS[4]), [(0, TEXTS[0])])).action == "continue"


def test_registry_errors_are_clear(monkeypatch):
    with pytest.raises(ValueError, match="unknown structurer 'x'.*heuristic, embedding, llm, llm-batch"):
        get_structurer("x")
    monkeypatch.setitem(STRUCTURERS, "llm", "thinkrm.not_installed_module:LLMStructurer")
    with pytest.raises(ValueError, match="structurer 'llm' needs thinkrm.not_installed_module"):
        get_structurer("llm")
    monkeypatch.setitem(STRUCTURERS, "llm", "thinkrm.structurers:Missing")
    with pytest.raises(ValueError, match="has no Missing"):
        get_structurer("llm")
    h = HeuristicStructurer()
    assert get_structurer(h) is h
    assert isinstance(get_structurer("heuristic"), HeuristicStructurer)


def test_llm_names_resolve_lazily_to_llm_structuring():
    assert STRUCTURERS["llm"].startswith("thinkrm.llm.structuring:")
    assert STRUCTURERS["llm-batch"].startswith("thinkrm.llm.structuring:")


def test_every_registered_structurer_follows_a_documented_protocol():
    """`Structurer` / `BatchStructurer` are the interface `get_structurer` returns: each built-in follows one.
    (The LLM ones open no connection until their first proposal, so building them needs no server.)"""
    for name in STRUCTURERS:
        s = get_structurer(name)
        assert isinstance(s, BatchStructurer if name == "llm-batch" else Structurer), name
        assert s.name == name


class FakeEncoder:
    """Bag-of-words vectors: lets the embedding structurer's logic be tested without the model."""

    def __init__(self):
        self.calls = []

    def encode(self, texts):
        import numpy as np

        self.calls.append(list(texts))
        vocab = sorted({w for t in TEXTS for w in t.lower().split()})
        out = np.zeros((len(texts), len(vocab)), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                if w in vocab:
                    out[i, vocab.index(w)] = 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_embedding_structurer_encodes_once_and_clips_long_traces():
    enc = FakeEncoder()
    text = "\n\n".join(TEXTS)
    dag = build_dag(text, EmbeddingStructurer(encoder=enc), lexicon=LEX)
    assert len(enc.calls) == 1 and len(enc.calls[0]) == len(dag.steps)
    assert dag.structurer == "embedding"
    many = "\n\n".join(f"So step {i} adds the number {i} to the running total." for i in range(400))
    enc2 = FakeEncoder()
    build_dag(many, EmbeddingStructurer(encoder=enc2), lexicon=LEX)
    assert len(enc2.calls[0]) == 400
    assert max(map(len, enc2.calls[0])) == EmbeddingStructurer.min_chars  # the budget clips the openings


@pytest.mark.slow
def test_embedding_structurer_finds_a_paraphrased_target():
    """With real MiniLM, a correction attaches to the steps it paraphrases (no shared numbers or names)."""
    texts = [
        "We want the probability of rolling a total of seven with two fair dice.",
        "Count the outcomes: (1,6), (2,5), (3,4), (4,3), (5,2), (6,1), six of them.",
        "The circle has radius r, and its area grows with the square of r.",
        "So we move on to the geometric part: the inscribed square has side r times root two.",
        "Wait, I mis-counted the favourable dice outcomes for a sum of seven earlier.",
    ]
    text = "\n\n".join(texts)
    dag = build_dag(text, "embedding", lexicon=Lexicon.of(["count", "the", "so", "wait"]))
    assert len(dag.steps) == 5
    wait = dag.nodes[4]
    assert wait.action == "backtrack" and wait.parents[0] in (0, 1)  # back to the dice, off the geometry
    emb = EmbeddingStructurer()
    emb.start(dag.steps)
    dice, geometry = emb.similarities(4, [0, 1]), emb.similarities(4, [2, 3])
    assert min(dice) > max(geometry)
