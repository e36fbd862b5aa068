"""The reasoning DAG: how the steps of a trace hang together.

CONTRACT (the state machine and `build_dag` are owned by the core-pipeline work stream; the data model
below is shared by ME² analysis, the report, the judge and TRM-lite, so change it only with all of them).

Walking the steps in order, each step either *continues* the main path, *backtracks* to an earlier
main-path step (opening a new branch from it), or *merges* the results of >= 2 branches. Linear chains of
plain continuations then collapse into super-nodes, which carry roles (root, branch, merge, leaf), depths,
and an extractive one-line summary. The answer leaf is the super-node that states the final answer; it and
its ancestors are the "micro" path; role-tagged summaries of all super-nodes are the "macro" view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .steps import Step

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
        steps = [Step(s["index"], s["start"], s["end"], text[s["start"]:s["end"]].strip()) for s in d["steps"]]
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


def build_dag(text_or_steps: str | list[Step], structurer: str | Any = "heuristic", *,
              text: str | None = None) -> DAG:
    raise NotImplementedError
