"""The reasoning DAG: how the steps of a trace hang together.

The data model below is shared by ME² analysis, the report, the judge and TRM-lite (and its JSON form is
what `thinkrm analyze` writes), so change it with all of them in mind.

Walking the steps in order, each step either *continues* the main path, *backtracks* to an earlier
main-path step (opening a new branch from it), or *merges* the results of >= 2 branches. Linear chains of
plain continuations then collapse into super-nodes, which carry roles (root, branch, merge, leaf), depths,
and an extractive one-line summary. The answer leaf is the super-node that states the final answer; it and
its ancestors are the "micro" path; role-tagged summaries of all super-nodes are the "macro" view.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Literal

from .steps import Step, split_steps
from .structurers import Proposal, StepRef, View, get_structurer

Action = Literal["continue", "backtrack", "merge"]
ROLES = ("root", "branch", "merge", "leaf")


@dataclass
class StepNode:
    """One step placed in the DAG. `parents` are step ids; the first step has none."""

    id: int
    parents: list[int]
    action: Action

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "parents": self.parents, "action": self.action}


@dataclass
class SuperNode:
    """A maximal chain of continued steps. `parents`/`children` are super-node ids."""

    id: int
    members: list[int]  # step ids, in order
    parents: list[int]
    children: list[int]
    roles: list[str]  # subset of ROLES, in ROLES order; e.g. ["root", "branch"]
    depth: int  # longest distance from a root
    action: Action  # the action of its first step (how it attached to its parents)
    summary: str = ""  # extractive one-line summary (an LLM summary may replace it)

    def tag(self) -> str:
        """The role tag of the macro view, e.g. `<Root & Branch id=0 depth=0 parents=[] children=[1, 2]>`."""
        roles = " & ".join(r.capitalize() for r in self.roles) or "Node"
        return f"<{roles} id={self.id} depth={self.depth} parents={self.parents} children={self.children}>"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "members": self.members, "parents": self.parents, "children": self.children,
                "roles": self.roles, "depth": self.depth, "action": self.action, "summary": self.summary}


@dataclass
class DAG:
    """The reasoning DAG of one trace.

    `text` is the reasoning the offsets in `steps` point into. `answer_node` is a super-node id (None only
    for an empty trace); `answer_path` lists super-node ids from a root down to the answer leaf.
    """

    text: str
    steps: list[Step]
    nodes: list[StepNode]
    supernodes: list[SuperNode]
    answer_node: int | None
    answer_path: list[int]
    structurer: str = "heuristic"
    meta: dict[str, Any] = field(default_factory=dict)

    def macro_view(self) -> str:
        """One line per super-node: its role tag and summary."""
        return "\n".join(f"{s.tag()} {s.summary}" for s in self.supernodes)

    def micro_view(self) -> str:
        """The raw text of the answer leaf and its ancestors, in order."""
        ids = [m for sid in self.answer_path for m in self.supernodes[sid].members]
        return "\n\n".join(self.steps[i].text for i in ids)

    def supernode_text(self, sid: int) -> str:
        return "\n\n".join(self.steps[i].text for i in self.supernodes[sid].members)

    def to_dict(self) -> dict[str, Any]:
        return {
            "structurer": self.structurer,
            "steps": [s.to_dict() for s in self.steps],
            "nodes": [n.to_dict() for n in self.nodes],
            "supernodes": [s.to_dict() for s in self.supernodes],
            "answer_node": self.answer_node,
            "answer_path": self.answer_path,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], text: str) -> DAG:
        steps = [Step(s["index"], s["start"], s["end"], text[s["start"]:s["end"]].strip())
                 for s in d["steps"]]
        return cls(text=text, steps=steps, nodes=[StepNode(**n) for n in d["nodes"]],
                   supernodes=[SuperNode(**s) for s in d["supernodes"]], answer_node=d["answer_node"],
                   answer_path=list(d["answer_path"]), structurer=d.get("structurer", "heuristic"),
                   meta=d.get("meta", {}))

    def to_networkx(self, level: Literal["super", "step"] = "super"):
        """A `networkx.DiGraph` of super-nodes (default) or steps, with node and edge attributes."""
        import networkx as nx

        g = nx.DiGraph()
        if level == "step":
            for n in self.nodes:
                s = self.steps[n.id]
                g.add_node(n.id, action=n.action, start=s.start, end=s.end, text=s.text)
                for p in n.parents:
                    g.add_edge(p, n.id, action=n.action)
        else:
            for s in self.supernodes:
                g.add_node(s.id, roles=s.roles, depth=s.depth, members=s.members, summary=s.summary,
                           on_answer_path=s.id in self.answer_path)
                for p in s.parents:
                    g.add_edge(p, s.id, action=s.action)
        return g


POOL_MAIN = 8  # main-path steps a new step may attach to (besides backtracking further)
POOL_LEAVES = 5  # other open leaves offered for merges
DEFAULT_BATCH = 16  # upcoming steps offered per propose_batch call when the structurer sets no batch_size

# The lookahead (a first character the alternatives can start with, or a line start) is implied by the
# alternatives, so the matches are the same; it lets the engine reject most positions at once, which halves
# the cost of looking for the answer in every step of a long trace that never states one.
_ANSWER = re.compile(r"(?:(?=[\\fta])|^)"
                     r"(?:\\boxed\s*\{|\bfinal answer\b|\b(?:the )?answer is\b|^\W*answer\W*:|^\s*A:\s*\S)",
                     re.IGNORECASE | re.MULTILINE)
# The characters whose lower case changes length or character class, or that match an ASCII letter only
# under re.IGNORECASE (thinkrm.me2 keeps the same list and its tests re-derive it from Unicode).
_CASE_TRAPS = re.compile("[\u0130\u0131\u017f\u212a]")
# A sentence ends at spaces after . ! ? or :, or at newlines; that is `(?<=[.!?:])\s+|\n+`, written to open
# with the space it needs (the look-behinds then check what precedes it, or that it is a newline) so that the
# engine's fast character-set search skips the text between spaces.
_SENTENCE_END = re.compile(r"\s(?:(?<=[.!?:]\s)\s*|(?<=\n)\n*)")
_MARKUP = re.compile(r"[*#`]+|^\s*>\s*")
_SPACE = re.compile(r"\s+")
_SUMMARY_CHARS = 120
_SUMMARY_SCAN = 1500  # the summary sentence is looked for in the opening of a super-node only
_INFORMATIVE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")


def build_dag(text_or_steps: str | list[Step], structurer: str | Any = "heuristic", *,
              text: str | None = None, prompt: str = "", lexicon: Any = None) -> DAG:
    """Build the reasoning DAG of a trace.

    Pass the reasoning text (it is split with `split_steps(text, lexicon)`), or steps already split together
    with `text=` (the string their offsets point into). `structurer` is a name from
    `thinkrm.structurers.STRUCTURERS` or a structurer object; `prompt` is handed to it (an LLM structurer
    needs the problem). Whatever the structurer proposes, the result satisfies the DAG invariants.
    """
    if isinstance(text_or_steps, str):
        text = text_or_steps
        steps = split_steps(text, lexicon)
    else:
        if text is None:
            raise ValueError("build_dag(steps) needs text= (the string the step offsets point into)")
        steps = list(text_or_steps)
        if any(s.index != i for i, s in enumerate(steps)):
            raise ValueError("build_dag(steps): steps must be numbered 0, 1, 2, ... in order (as split_steps "
                             "returns them)")
    impl = get_structurer(structurer)
    name = structurer if isinstance(structurer, str) else getattr(impl, "name", type(impl).__name__)
    machine = _StateMachine(steps)
    if steps:
        impl.start(steps, prompt=prompt)
        _run(machine, impl, steps)
    supernodes = _collapse(machine.parents, machine.actions)
    for sn in supernodes:
        opening = " ".join(steps[i].text[:_SUMMARY_SCAN] for i in sn.members[:3])
        sn.summary = summarize(opening[:_SUMMARY_SCAN])
    answer = _answer_node(steps, supernodes, text if isinstance(text_or_steps, str) else None)
    nodes = [StepNode(i, p, a) for i, (p, a) in enumerate(zip(machine.parents, machine.actions))]
    return DAG(text=text, steps=steps, nodes=nodes, supernodes=supernodes, answer_node=answer,
               answer_path=_answer_path(supernodes, answer), structurer=name,
               meta={"invalid_proposals": machine.invalid, "actions": machine.counts()})


def _run(machine: _StateMachine, impl: Any, steps: list[Step]) -> None:
    machine.place_first()
    batch = getattr(impl, "propose_batch", None)
    size = max(1, int(getattr(impl, "batch_size", DEFAULT_BATCH)))
    i = 1
    while i < len(steps):
        view = machine.view(i)
        if batch is not None:
            upcoming = machine.refs[i:i + size]
            proposals = list(batch(view, upcoming))[:len(upcoming)] or [Proposal("continue")]
        else:
            proposals = [impl.propose(view)]
        for proposal in proposals:
            machine.place(i, proposal)
            i += 1


class _StateMachine:
    """Main path, open leaves and the attachment pool; validates and applies one proposal per step."""

    def __init__(self, steps: list[Step]):
        self.steps = steps
        self.refs = [StepRef(i, s.text) for i, s in enumerate(steps)]  # built once, shared by every view
        self.parents: list[list[int]] = []
        self.actions: list[str] = []
        self.main: list[int] = []
        self.pos: list[int] = []  # step id -> its index in `main` when it was put there (stale once cut off)
        self.leaves: dict[int, None] = {}  # open leaves other than the tip, oldest first (ordered set)
        self.primary: list[int] = []  # the parent a step's main path runs through (-1 for the root)
        self.invalid = 0

    def counts(self) -> dict[str, int]:
        return {a: self.actions.count(a) for a in ("continue", "backtrack", "merge")}

    def view(self, i: int) -> View:
        refs = self.refs
        leaves = list(islice(reversed(self.leaves), POOL_LEAVES))[::-1]
        return View(step=refs[i], window=tuple([refs[j] for j in self.main[-POOL_MAIN:]]),
                    open_leaves=tuple([refs[j] for j in leaves]), main_path=tuple(self.main))

    def place_first(self) -> None:
        self.parents.append([])
        self.actions.append("continue")
        self.primary.append(-1)
        self.pos.append(0)
        self.main = [0]

    def on_main(self, t: int) -> bool:
        k = self.pos[t] if 0 <= t < len(self.pos) else -1
        return 0 <= k < len(self.main) and self.main[k] == t

    def _pool_leaves(self) -> set[int]:
        return set(islice(reversed(self.leaves), POOL_LEAVES))

    def validate(self, i: int, p: Any) -> tuple[str, list[int]]:
        """The (action, parents) to apply: the proposal if valid, else a plain continuation."""
        tip = self.main[-1]
        action = getattr(p, "action", None)
        try:
            targets = [int(t) for t in getattr(p, "targets", ())]
        except (TypeError, ValueError):
            targets = []
        if action == "backtrack" and len(targets) == 1:
            t = targets[0]
            if self.on_main(t) and t != tip:
                return "backtrack", [t]
        elif action == "merge":
            ids = set(targets)
            pool = self._pool_leaves()
            mains = [t for t in ids if self.on_main(t)]
            others = [t for t in ids if t in pool]
            if len(ids) >= 2 and len(mains) <= 1 and others and len(mains) + len(others) == len(ids):
                return "merge", sorted(ids)
        if action != "continue":
            self.invalid += 1
        return "continue", [tip]

    def place(self, i: int, proposal: Any) -> None:
        action, parents = self.validate(i, proposal)
        tip = self.main[-1]
        self.parents.append(parents)
        self.actions.append(action)
        if action == "continue":
            self.primary.append(tip)
            self.pos.append(len(self.main))
            self.main.append(i)
            return
        mains = [t for t in parents if self.on_main(t)]
        for t in parents:
            self.leaves.pop(t, None)
        anchor = mains[0] if mains else max(parents)
        if anchor != tip:
            self.leaves[tip] = None  # the abandoned branch stays open for later merges
        self.primary.append(anchor)
        if self.on_main(anchor):
            del self.main[self.pos[anchor] + 1:]
        else:  # the main path now runs through a merged leaf: rebuild it from the primary parents
            path = []
            j = anchor
            while j >= 0:
                path.append(j)
                j = self.primary[j]
            self.main = path[::-1]
            for k, j in enumerate(self.main):
                self.pos[j] = k
        self.pos.append(len(self.main))
        self.main.append(i)


def _collapse(parents: list[list[int]], actions: list[str]) -> list[SuperNode]:
    """Chains of plain continuations (one parent, one child) become one super-node each."""
    n = len(parents)
    children: list[list[int]] = [[] for _ in range(n)]
    for i, ps in enumerate(parents):
        for p in ps:
            children[p].append(i)
    of = [0] * n  # step id -> super-node id
    members: list[list[int]] = []
    for i in range(n):
        ps = parents[i]
        if actions[i] == "continue" and len(ps) == 1 and len(children[ps[0]]) == 1:
            of[i] = of[ps[0]]
            members[of[i]].append(i)
        else:
            of[i] = len(members)
            members.append([i])
    supernodes: list[SuperNode] = []
    for sid, ms in enumerate(members):
        sp = sorted({of[p] for p in parents[ms[0]]})
        sc = sorted({of[c] for c in children[ms[-1]]})
        roles = [r for r, has in zip(ROLES, (not sp, len(sc) >= 2, len(sp) >= 2, not sc)) if has]
        depth = 1 + max(supernodes[p].depth for p in sp) if sp else 0
        supernodes.append(SuperNode(id=sid, members=ms, parents=sp, children=sc, roles=roles, depth=depth,
                                    action=actions[ms[0]]))  # type: ignore[arg-type]
    return supernodes


def states_answer(text: str) -> bool:
    """Whether a piece of reasoning states a final answer (boxed, "the answer is", an "A:" line, ...)."""
    return _ANSWER.search(text) is not None


def _answer_node(steps: list[Step], supernodes: list[SuperNode], text: str | None = None) -> int | None:
    """The super-node holding the last statement of an answer; the last super-node when none does.

    `text`, when given, is the string the steps were split from (each step's text lies within its span);
    then only the steps holding a keyword every answer statement contains are tested (see `_answer_step`).
    """
    if not supernodes:
        return None
    of = {m: s.id for s in supernodes for m in s.members}
    if text is not None and not _CASE_TRAPS.search(text):
        i = _answer_step(steps, text)
        return of[i] if i is not None else supernodes[-1].id
    for step in reversed(steps):
        if states_answer(step.text):
            return of[step.index]
    return supernodes[-1].id


def _answer_step(steps: list[Step], text: str) -> int | None:
    """The last step that `states_answer`, found from the keywords of `_ANSWER` instead of a scan per step.

    Every match of `_ANSWER` contains `\\boxed`, `answer` or `a:` in lower case, so a step whose span holds
    none of them cannot state an answer: going back from the end, each round finds the last keyword that
    lies wholly before the steps already ruled out and tests only the step where it starts. A text without
    the characters that lowering or re.IGNORECASE treat specially (`_CASE_TRAPS`) keeps its offsets when
    lowered, and its keywords match case-insensitively only where the lowered text holds them.
    """
    low = text.lower()
    starts = [s.start for s in steps]
    limit = len(low)
    while True:
        at = max(low.rfind("answer", 0, limit), low.rfind("\\boxed", 0, limit), low.rfind("a:", 0, limit))
        if at < 0:
            return None
        k = bisect.bisect_right(starts, at) - 1
        if states_answer(steps[k].text):
            return k
        limit = steps[k].start


def _answer_path(supernodes: list[SuperNode], answer: int | None) -> list[int]:
    """Root-to-answer path, following the deepest parent (the longest line of reasoning to the answer)."""
    if answer is None:
        return []
    path = [answer]
    while supernodes[path[-1]].parents:
        ps = supernodes[path[-1]].parents
        path.append(max(ps, key=lambda p: (supernodes[p].depth, p)))
    return path[::-1]


def _sentences(text: str):
    """`_SENTENCE_END.split(text)`, lazily: a summary usually needs only the first sentence or two."""
    pos = 0
    for m in _SENTENCE_END.finditer(text):  # the pattern never matches empty, so this is exactly split()
        yield text[pos:m.start()]
        pos = m.end()
    yield text[pos:]


def summarize(text: str) -> str:
    """An extractive one-line summary: the first sentence with some prose in it, clipped."""
    first = ""
    for sentence in _sentences(text):
        sentence = _SPACE.sub(" ", _MARKUP.sub("", sentence)).strip()
        if not sentence:
            continue
        first = first or sentence
        if len(_INFORMATIVE.findall(sentence)) >= 4:
            first = sentence
            break
    if len(first) <= _SUMMARY_CHARS:
        return first
    cut = first.rfind(" ", 0, _SUMMARY_CHARS - 1)
    return first[:cut if cut > _SUMMARY_CHARS // 2 else _SUMMARY_CHARS - 1].rstrip(" ,;:") + "…"
