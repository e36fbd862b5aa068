"""The reasoning-DAG state machine: actions on hand-written traces, validation, invariants, serialisation."""

from __future__ import annotations

import json

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thinkrm.dag import DAG, POOL_LEAVES, POOL_MAIN, build_dag, states_answer, summarize
from thinkrm.delimiters import Lexicon
from thinkrm.steps import split_steps
from thinkrm.structurers import Proposal, StepRef, View

LEX = Lexicon.of(["first", "next", "then", "so", "wait", "alternatively", "that"])

LINEAR = """First we write the equation of the line through the points (1, 2) and (3, 6).

The slope is (6 - 2) / (3 - 1) = 2, which we compute from the two given points.

Next, the intercept follows from y = 2x + b at the point (1, 2), which gives b = 0.

Then the line is y = 2x, and at x = 5 it reaches the value y = 10 as required.

So the answer is \\boxed{10}."""

DETOURS = """We need the number of ways to choose 2 of the 5 books on the shelf for the trip.

Order does not matter, so this is the binomial coefficient C(5, 2) which we evaluate now.

Then C(5, 2) = 5 * 4 / 2 = 12, which is the count we are looking for here.

Wait, 5 * 4 / 2 is 10, not 12; the division by 2 was done wrong in the last line.

Alternatively, we can list the pairs of books directly: AB, AC, AD, AE, BC, BD, BE, CD, CE, DE.

That is 10 pairs, the same count as the binomial coefficient gave us above.

So both methods give 10, and the answer is \\boxed{10}."""


def check_invariants(dag: DAG) -> None:
    text, steps, nodes, sns = dag.text, dag.steps, dag.nodes, dag.supernodes
    # whitespace-only text has no steps (the steps.py contract); any other text is covered exactly
    assert "".join(text[s.start:s.end] for s in steps) == (text if text.strip() else "")
    assert [n.id for n in nodes] == list(range(len(steps)))
    for n in nodes:
        assert all(p < n.id for p in n.parents), "parents precede children"
        assert len(set(n.parents)) == len(n.parents)
        assert (n.parents == []) == (n.id == 0)
        assert n.action in ("continue", "backtrack", "merge")
        assert n.action != "merge" or len(n.parents) >= 2
    members = sorted(m for s in sns for m in s.members)
    assert members == list(range(len(steps))), "every step in exactly one super-node"
    g = dag.to_networkx()
    assert nx.is_directed_acyclic_graph(g) and nx.is_directed_acyclic_graph(dag.to_networkx("step"))
    for s in sns:
        assert all(p < s.id for p in s.parents)
        assert s.members == sorted(s.members)
        for p in s.parents:
            assert s.id in sns[p].children
        expected = [r for r, has in zip(("root", "branch", "merge", "leaf"), (
            not s.parents, len(s.children) >= 2, len(s.parents) >= 2, not s.children)) if has]
        assert s.roles == expected
        assert s.depth == (1 + max(sns[p].depth for p in s.parents) if s.parents else 0)
        for a, b in zip(s.members, s.members[1:]):  # inside a super-node: plain continuations only
            assert nodes[b].parents == [a] and nodes[b].action == "continue"
    if not steps:
        assert dag.answer_node is None and dag.answer_path == []
        return
    path = dag.answer_path
    assert path[-1] == dag.answer_node and not sns[path[0]].parents
    for a, b in zip(path, path[1:]):
        assert a in sns[b].parents


def test_linear_trace_is_one_chain():
    dag = build_dag(LINEAR, lexicon=LEX)
    check_invariants(dag)
    assert len(dag.steps) == 3
    assert all(n.action == "continue" for n in dag.nodes)
    assert len(dag.supernodes) == 1
    assert dag.supernodes[0].roles == ["root", "leaf"]
    assert dag.answer_path == [0] and dag.micro_view().endswith("\\boxed{10}.")


def test_wait_and_alternatively_backtrack_and_so_both_merges():
    dag = build_dag(DETOURS, lexicon=LEX)
    check_invariants(dag)
    by_opening = {s.text.split()[0].strip(",."): dag.nodes[s.index] for s in dag.steps}
    wait, alt, so = by_opening["Wait"], by_opening["Alternatively"], by_opening["So"]
    assert wait.action == "backtrack"
    # the wrong computation (12) is abandoned: "Wait" re-attaches before it
    assert "= 12" not in dag.steps[wait.parents[0]].text
    assert alt.action == "backtrack"
    assert so.action == "merge" and len(so.parents) >= 2
    roles = {r for s in dag.supernodes for r in s.roles}
    assert {"root", "branch", "merge", "leaf"} <= roles
    assert dag.answer_node == dag.supernodes[-1].id
    assert "\\boxed{10}" in dag.supernode_text(dag.answer_node)


class Scripted:
    """A structurer that replays given proposals (and records the views it saw)."""

    name = "scripted"

    def __init__(self, proposals):
        self.proposals = list(proposals)
        self.views: list[View] = []

    def start(self, steps, *, prompt=""):
        self.prompt = prompt

    def propose(self, view):
        self.views.append(view)
        return self.proposals[len(self.views) - 1] if len(self.views) <= len(self.proposals) else Proposal()


def numbered(n: int) -> str:
    return "\n\n".join(f"So step number {i} computes the quantity q{i} = {i * 7} from the ones before it."
                       for i in range(n))


def test_state_machine_applies_valid_and_rejects_invalid_proposals():
    text = numbered(8)
    script = Scripted([
        Proposal("continue"),  # 1 -> 0
        Proposal("continue"),  # 2 -> 1
        Proposal("backtrack", (1,)),  # 3 -> 1, step 2 becomes an open leaf
        Proposal("merge", (2, 3)),  # 4 merges the leaf 2 with the tip 3
        Proposal("backtrack", (4,)),  # invalid: the tip itself
        Proposal("merge", (0, 1)),  # invalid: two main-path steps, no other branch
        Proposal("backtrack", (99,)),  # invalid: not a step
    ])
    dag = build_dag(text, script, prompt="the problem")
    check_invariants(dag)
    assert script.prompt == "the problem"
    assert [n.parents for n in dag.nodes] == [[], [0], [1], [1], [2, 3], [4], [5], [6]]
    assert [n.action for n in dag.nodes][3:5] == ["backtrack", "merge"]
    assert dag.meta["invalid_proposals"] == 3
    assert dag.meta["actions"] == {"continue": 6, "backtrack": 1, "merge": 1}
    view = script.views[3]  # what the structurer saw when placing step 4
    assert [s.id for s in view.window] == [0, 1, 3] and [s.id for s in view.open_leaves] == [2]
    assert view.step == StepRef(4, dag.steps[4].text)
    assert dag.structurer == "scripted"


def test_attachment_pool_is_bounded():
    n = 30
    # every other step backtracks one step, leaving a trail of open leaves
    script = Scripted([Proposal("backtrack", (i - 2,)) if i % 2 == 0 else Proposal() for i in range(1, n)])
    dag = build_dag(numbered(n), script)
    check_invariants(dag)
    assert max(len(v.window) for v in script.views) == POOL_MAIN
    assert max(len(v.open_leaves) for v in script.views) == POOL_LEAVES
    last = script.views[-1]
    assert last.window[-1].id == last.main_path[-1] and len(last.main_path) > POOL_MAIN
    # a merge may only use the leaves offered; an older leaf is rejected
    oldest_leaf = 2
    assert oldest_leaf not in [s.id for s in last.open_leaves]
    bad_merge = list(script.proposals[:-1]) + [Proposal("merge", (oldest_leaf, n - 2))]
    dag2 = build_dag(numbered(n), Scripted(bad_merge))
    assert dag2.nodes[-1].action == "continue" and dag2.meta["invalid_proposals"] == 1


def test_merge_without_main_path_target_moves_the_main_path():
    script = Scripted([Proposal(), Proposal("backtrack", (0,)), Proposal("backtrack", (0,)),
                       Proposal("merge", (1, 2)), Proposal("backtrack", (2,)), Proposal("backtrack", (1,))])
    dag = build_dag(numbered(7), script)
    check_invariants(dag)
    # step 3 is the tip, so merging the leaves 1 and 2 (not 3) abandons step 3; the main path now runs
    # through the latest merged leaf
    assert dag.nodes[4].parents == [1, 2]
    assert script.views[4].main_path == (0, 2, 4)
    assert [s.id for s in script.views[4].open_leaves] == [3]
    assert dag.nodes[5].action == "backtrack" and dag.nodes[5].parents == [2]
    assert dag.nodes[6].action == "continue"  # 1 is not on the main path any more


class Batch:
    name = "batch"
    batch_size = 3

    def __init__(self):
        self.calls = []

    def start(self, steps, *, prompt=""):
        pass

    def propose_batch(self, view, upcoming):
        self.calls.append([s.id for s in upcoming])
        # label every upcoming step; backtrack targets refer to ids within the batch, validated in order
        return [Proposal("backtrack", (s.id - 2,)) if s.id % 3 == 0 else Proposal() for s in upcoming]


def test_batch_structurer_labels_windows():
    b = Batch()
    dag = build_dag(numbered(10), b)
    check_invariants(dag)
    assert b.calls == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert [n.id for n in dag.nodes if n.action == "backtrack"] == [3, 6, 9]
    assert dag.nodes[3].parents == [1]


def test_short_batches_are_asked_again():
    class Lazy(Batch):
        def propose_batch(self, view, upcoming):
            self.calls.append(view.step.id)
            return []  # nothing: each step falls back to a continuation

    lazy = Lazy()
    dag = build_dag(numbered(4), lazy)
    assert lazy.calls == [1, 2, 3] and all(n.action == "continue" for n in dag.nodes)


def test_answer_detection_and_fallback():
    assert states_answer("Thus the final answer is 7.")
    assert states_answer("so x = \\boxed{3}")
    assert states_answer("She makes $18.\nA: 18")
    assert states_answer("**Answer:** 42")
    assert not states_answer("We are asked to find the area of the triangle.")
    text = numbered(3)
    dag = build_dag(text)
    assert dag.answer_node == dag.supernodes[-1].id  # nothing states an answer: the last node
    text = ("So the answer is 4, as computed from the first equation in the system.\n\n"
            "Alternatively, substituting into the second equation of the system gives 5 instead.")
    dag = build_dag(text)
    check_invariants(dag)
    assert dag.answer_node == 0 and dag.answer_path == [0]


def test_summaries_are_one_informative_line():
    assert summarize("Hmm. **Wait**, let me recompute the area of the triangle again. Then more.") == \
        "Wait, let me recompute the area of the triangle again."
    long = "Now " + "we keep adding the next terms of the series " * 10
    s = summarize(long)
    assert len(s) <= 120 and s.endswith("…") and "\n" not in s
    assert summarize("") == ""


def test_empty_trace():
    dag = build_dag("   \n\n ")
    check_invariants(dag)
    assert dag.supernodes == [] and dag.macro_view() == "" and dag.micro_view() == ""


def test_steps_input_and_serialisation_round_trip():
    steps = split_steps(DETOURS, LEX)
    with pytest.raises(ValueError, match="text="):
        build_dag(steps)
    with pytest.raises(ValueError, match="numbered"):
        build_dag(steps[1:], text=DETOURS)
    dag = build_dag(steps, text=DETOURS)
    d = json.loads(json.dumps(dag.to_dict()))
    back = DAG.from_dict(d, DETOURS)
    assert back.to_dict() == dag.to_dict()
    assert back.macro_view() == dag.macro_view() and back.micro_view() == dag.micro_view()
    assert set(d["supernodes"][0]) == {"id", "members", "parents", "children", "roles", "depth", "action",
                                       "summary"}


def test_unknown_structurer_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown structurer 'nope'"):
        build_dag(LINEAR, "nope")
    with pytest.raises(ValueError, match="not a structurer"):
        build_dag(LINEAR, object())


def test_pathological_inputs_give_a_valid_dag():
    """A million characters of turn after turn. Speed (~0.5 s here) is measured by
    benchmarks/bench_adversarial.py; a quadratic pass would run into pytest's timeout."""
    text = ("Wait, maybe x = 3.\n\nAlternatively, x = 4 works better here for us.\n\n"
            "So combining both, x = 7 is the total we need in the end.\n\n") * 15000
    dag = build_dag(text[:1_000_000])
    check_invariants(dag)


_actions = st.sampled_from(["continue", "backtrack", "merge", "jump", None])


@settings(max_examples=150, deadline=None)
@given(text=st.lists(st.sampled_from(["So x = 1. ", "Wait, no. ", "Alternatively, y. ", "word ", "\n\n", "\n",
                                      "Combining both results. ", "The answer is 3. ", "$$", "long " * 12]),
                     max_size=80).map("".join),
       script=st.lists(st.tuples(_actions, st.lists(st.integers(-3, 40), max_size=4)), max_size=40))
def test_invariants_hold_for_adversarial_proposals(text, script):
    proposals = [Proposal(a, tuple(t)) if a is not None else object() for a, t in script]
    dag = build_dag(text, Scripted(proposals))
    check_invariants(dag)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=600))
def test_invariants_hold_for_arbitrary_text_with_the_heuristic(text):
    check_invariants(build_dag(text))


@pytest.mark.slow
@pytest.mark.shared_data
def test_heuristic_dags_on_real_traces(shared_data):
    """Real candidates give valid DAGs, and the long "Wait, ..." reasoner's traces really branch."""
    from thinkrm.trace import split_response

    branched = long = 0
    with open(shared_data / "skythought-math500" / "candidates.jsonl", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i % 6:  # a fixed sample of every model
                continue
            rec = json.loads(line)
            dag = build_dag(split_response(rec["response"])[0])
            check_invariants(dag)
            if rec["model"] == "Sky-T1-math-correct-5K-27B":
                long += 1
                branched += any(n.action != "continue" for n in dag.nodes)
    assert long > 50 and branched / long > 0.8


def test_answer_node_keyword_search_matches_the_scan_of_every_step():
    """`_answer_node` with the text tests only steps holding an answer keyword; same node as testing all."""
    from thinkrm.dag import _answer_node

    texts = [
        "Let me set up.\n\nSo the answer is 5.\n\nWait, let me check the ANSWER again.\n\nHmm, fine, it holds.",
        "First compute.\n\nThe final Answer: maybe.\n\nSo x = \\BOXED{4}.\n\nAnother answer? No.\n\nDone here.",
        "Compute it.\n\nSo the sum is 4.\nA: 4\n\nWait, that is all.\n\nAlternatively, a: here is text.",
        "No keywords at all in this trace.\n\nJust some steps of reasoning about numbers.",
        "The answer is \u017f.\n\nThe answer is 3.\n\nnothing more",  # a case trap: the per-step scan
    ]
    for text in texts:
        dag = build_dag(text)
        assert _answer_node(dag.steps, dag.supernodes, text) == _answer_node(dag.steps, dag.supernodes)


def test_sentence_end_matches_its_plain_form():
    import re

    from thinkrm.dag import _SENTENCE_END

    plain = re.compile(r"(?<=[.!?:])\s+|\n+")
    text = ("First. Second!  Third?\n\nFourth: \n fifth\nsixth \n\n seventh.\n\nx: y.\t z? \n", " a.\nb", "\n\nq. ")
    for t in text:
        assert [m.span() for m in _SENTENCE_END.finditer(t)] == [m.span() for m in plain.finditer(t)]


def test_case_traps_agree_with_me2():
    from thinkrm import dag, me2

    assert dag._CASE_TRAPS.pattern == me2._CASE_TRAPS.pattern  # me2's tests derive the list from Unicode
