"""Every prompt text thinkrm sends to an LLM, in one place, written for this project.

Keeping them together makes them reviewable and versionable: a change here changes the cache keys of
`thinkrm.llm.client` (the messages are part of the key), so old cached answers are never reused for a new
prompt.

Prompts and their purpose (docs/llm-pipeline.md shows them in context):

* `STEP_SYSTEM` / `step_user()`: the method's per-step structuring protocol. The model sees the last 8
  main-path steps, the current step and up to 5 other open leaves, explains briefly, then answers
  `<|action|>continue|backtrack|merge` and `<|previous|>ids`.
* `BATCH_SYSTEM` / `batch_user()` / `BATCH_SCHEMA`: our cheaper structuring mode: one call labels a window of
  steps with a JSON object.
* `SUMMARY_SYSTEM` / `summary_user()` / `SUMMARY_SCHEMA`: one-sentence summaries of all super-nodes of a
  trace in one call (the LLM macro view).
* `JUDGE_SYSTEM`, `DIMENSIONS` / `dimension_user()`: the four ME² dimension judges; macro ones read the macro
  views, micro ones the micro paths.
* `AGGREGATE_SYSTEM` / `aggregate_user()`: the overall verdict, from the full traces and the four verdicts.
* `GENERATE_INSTRUCTION`: appended to each problem when `thinkrm build-pairs` samples traces, so the final
  answer comes out boxed where the verifier looks first.

Every judge answer must end with `<|decision|>` followed by exactly `Trace 1`, `Trace 2` or `Tie`.

Texts too long for a prompt (a step, a super-node, a judged trace view) are all cut by `clip`, one rule:
keep the first 60% and the last 40% of the budget around a visible `[... N characters omitted ...]` marker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

ACTION_TAG = "<|action|>"
PREVIOUS_TAG = "<|previous|>"
DECISION_TAG = "<|decision|>"
DECISIONS = ("Trace 1", "Trace 2", "Tie")
CLIP_HEAD = 0.6  # share of a clipped text's budget kept from its start; the rest comes from its end


def clip(text: str, limit: int) -> str:
    """`text` if it has at most `limit` characters, else its head and tail around a visible marker.

    The head gets `CLIP_HEAD` (60%) of the budget, the tail the rest: the start of a step or trace sets up
    what it is doing, its end holds what it concluded, and the start usually needs more room to be
    understood. The marker says how much was cut, so a model (or a reader) knows the text is incomplete.
    `limit` counts the kept characters; the marker comes on top.
    """
    if len(text) <= limit:
        return text
    head = int(limit * CLIP_HEAD)
    tail = limit - head
    return f"{text[:head]}\n[... {len(text) - head - tail} characters omitted ...]\n{text[len(text) - tail:]}"

# --- DAG structuring, per step (the method's protocol) -------------------------------------------------

STEP_SYSTEM = """You organise a model's step-by-step reasoning into a graph. Steps arrive in order. For the \
current step, decide how it relates to what came before:
- continue: it follows on from the last step of the main path (the usual case);
- backtrack: it abandons the current line and restarts from an EARLIER step of the main path (for example \
"wait, let me go back to the equation in step 3"); name that one step;
- merge: it combines results of two or more separate branches (for example "both approaches give 12"); \
name every step it combines: at least two different steps, at least one of them an open leaf of another \
branch, at most one from the main path.
Explain your choice in one or two sentences, then end with exactly two lines:
<|action|>continue, backtrack or merge
<|previous|>comma-separated step ids (empty for continue)"""


def step_user(main_path: list[tuple[int, str]], current: tuple[int, str], leaves: list[tuple[int, str]]) -> str:
    """Main-path steps (oldest first), the current step and other open leaves, each as `(id, text)`."""
    parts = ["Main path (most recent last):"]
    parts += [f"[step {i}] {t}" for i, t in main_path] or ["(empty)"]
    parts.append("")
    parts.append("Open leaves of other branches:")
    parts += [f"[step {i}] {t}" for i, t in leaves] or ["(none)"]
    parts.append("")
    parts.append(f"Current step:\n[step {current[0]}] {current[1]}")
    return "\n".join(parts)


# --- DAG structuring, a window of steps per call (ours) -----------------------------------------------

BATCH_SYSTEM = """You organise a model's step-by-step reasoning into a graph. You get numbered steps. For \
EACH step listed under "Label these steps", decide how it relates to the earlier steps:
- "continue": it follows on from the step just before it on the current line of reasoning;
- "backtrack": it abandons the current line and restarts from an earlier step; "previous" holds that step id;
- "merge": it combines results of two or more separate lines of reasoning; "previous" holds their step ids.
Most steps continue. Answer with one JSON object and nothing else:
{"steps": [{"id": <step id>, "action": "continue" | "backtrack" | "merge", "previous": [<step ids>]}]}
with one entry per step to label, in order; "previous" is [] for continue."""

BATCH_SCHEMA = {
    "name": "step_actions",
    "schema": {
        "type": "object",
        "properties": {"steps": {"type": "array", "items": {
            "type": "object",
            "properties": {"id": {"type": "integer"},
                           "action": {"type": "string", "enum": ["continue", "backtrack", "merge"]},
                           "previous": {"type": "array", "items": {"type": "integer"}}},
            "required": ["id", "action", "previous"], "additionalProperties": False}}},
        "required": ["steps"], "additionalProperties": False,
    },
}


def batch_user(context: list[tuple[int, str]], window: list[tuple[int, str]]) -> str:
    """Earlier steps already labelled (`context`, for reference) and the steps to label now."""
    parts = ["Earlier steps (already labelled):"]
    parts += [f"[step {i}] {t}" for i, t in context] or ["(none)"]
    parts.append("")
    parts.append("Label these steps:")
    parts += [f"[step {i}] {t}" for i, t in window]
    return "\n".join(parts)


# --- Macro view: one-sentence summaries of super-nodes ------------------------------------------------

SUMMARY_SYSTEM = """You summarise parts of a model's reasoning. Each part is a chunk of consecutive steps. \
For every part, write ONE short sentence (at most 25 words) saying what that part does or concludes, with \
key numbers or claims, no preamble. Answer with one JSON object and nothing else:
{"summaries": [{"id": <part id>, "summary": "<one sentence>"}]}"""

SUMMARY_SCHEMA = {
    "name": "part_summaries",
    "schema": {
        "type": "object",
        "properties": {"summaries": {"type": "array", "items": {
            "type": "object",
            "properties": {"id": {"type": "integer"}, "summary": {"type": "string"}},
            "required": ["id", "summary"], "additionalProperties": False}}},
        "required": ["summaries"], "additionalProperties": False,
    },
}


def summary_user(prompt: str, parts: list[tuple[int, str]]) -> str:
    body = "\n\n".join(f"[part {i}]\n{t}" for i, t in parts)
    return f"Problem:\n{prompt}\n\nParts of the reasoning:\n\n{body}"


# --- The ME² pairwise judge ------------------------------------------------------------------------------

JUDGE_SYSTEM = """You compare two reasoning traces that both reach the correct final answer to the same \
problem. You judge HOW they reason, not whether they are right. Judge only the aspect you are asked about; \
ignore length unless the aspect says otherwise, and ignore which trace is shown first. Think briefly \
(a few sentences), then end your answer with a final line of exactly this form:
<|decision|>Trace 1
or <|decision|>Trace 2, or <|decision|>Tie if neither is clearly better on this aspect."""


@dataclass(frozen=True)
class Dimension:
    """One ME² dimension: its key, which view of the traces it reads, and the question asked."""

    key: str
    view: str  # "macro" (role-tagged super-node summaries) or "micro" (the answer path's raw steps)
    title: str
    question: str


DIMENSIONS = (
    Dimension("macro_efficiency", "macro", "Macro-Efficiency",
              "Which trace has the more disciplined overall structure: fewer needless branches, restarts "
              "and reopened branches, a direct route from the problem to the answer?"),
    Dimension("macro_effectiveness", "macro", "Macro-Effectiveness",
              "Which trace's structure is more coherent and on target: each branch has a clear goal that "
              "serves the problem, branches are resolved rather than abandoned, and no pseudo-proof or "
              "circular justification carries the conclusion?"),
    Dimension("micro_efficiency", "micro", "Micro-Efficiency",
              "Which trace's steps are more concise and purposeful: no filler, no paraphrase loops that "
              "restate the same thing, no redundant re-checks of settled facts?"),
    Dimension("micro_effectiveness", "micro", "Micro-Effectiveness",
              "Which trace's steps are more locally valid: no contradictions, no wrong arithmetic or "
              "algebra (even if later corrected), no unsupported claims?"),
)

VIEW_NOTE = {
    "macro": "Each trace is shown as its reasoning graph: one line per part, with a tag giving the part's "
             "role (root, branch, merge, leaf), id, depth, parent and child parts, then a summary.",
    "micro": "Each trace is shown as its main line of reasoning: the steps leading to the final answer.",
    "raw": "Each trace is shown in full, as written.",
}


def _two_traces(prompt: str, t1: str, t2: str) -> str:
    return f"Problem:\n{prompt}\n\n=== Trace 1 ===\n{t1}\n=== End of Trace 1 ===\n\n" \
           f"=== Trace 2 ===\n{t2}\n=== End of Trace 2 ==="


def dimension_user(dim: Dimension, prompt: str, t1: str, t2: str, view: str) -> str:
    """The question for one dimension; `view` is the dimension's own view, or "raw" for the baseline."""
    return f"Aspect: {dim.title}. {dim.question}\n\n{VIEW_NOTE[view]}\n\n{_two_traces(prompt, t1, t2)}"


AGGREGATE_SYSTEM = """You give the overall verdict on which of two reasoning traces reasons better. Both reach \
the correct final answer. Four assessments, one per aspect (Macro-Efficiency, Macro-Effectiveness, \
Micro-Efficiency, Micro-Effectiveness), are given with the full traces. Weigh them: an assessment you find \
unconvincing after reading the traces may be overruled; say Tie only if neither trace is clearly better \
overall. Think briefly, then end your answer with a final line of exactly this form:
<|decision|>Trace 1
or <|decision|>Trace 2, or <|decision|>Tie."""


def aggregate_user(prompt: str, t1: str, t2: str, assessments: list[tuple[str, str, str]]) -> str:
    """`assessments` are `(dimension title, rationale, decision)` in `DIMENSIONS` order."""
    lines = [f"--- {title}: {decision} ---\n{rationale}" for title, rationale, decision in assessments]
    return f"{_two_traces(prompt, t1, t2)}\n\nAssessments:\n" + "\n\n".join(lines)


# --- Trace generation (build-pairs) ------------------------------------------------------------------------

GENERATE_INSTRUCTION = "Reason step by step, then give the final answer as \\boxed{answer}."


def generate_user(problem: str) -> str:
    return f"{problem}\n\n{GENERATE_INSTRUCTION}"


def system(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def describe() -> str:
    """All prompts as one readable text (the docs embed this; `python -m thinkrm.llm.prompts` prints it)."""
    out = [f"## STEP_SYSTEM\n{STEP_SYSTEM}", f"## BATCH_SYSTEM\n{BATCH_SYSTEM}",
           f"## BATCH_SCHEMA\n{json.dumps(BATCH_SCHEMA, indent=1)}", f"## SUMMARY_SYSTEM\n{SUMMARY_SYSTEM}",
           f"## JUDGE_SYSTEM\n{JUDGE_SYSTEM}"]
    out += [f"## Dimension {d.title} (view: {d.view})\n{d.question}" for d in DIMENSIONS]
    out.append(f"## AGGREGATE_SYSTEM\n{AGGREGATE_SYSTEM}")
    out.append(f"## GENERATE_INSTRUCTION\n{GENERATE_INSTRUCTION}")
    return "\n\n".join(out)


if __name__ == "__main__":
    print(describe())
