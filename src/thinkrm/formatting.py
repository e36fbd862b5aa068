"""The one input format every reward model in thinkrm reads.

CONTRACT (truncation and the chat-template mode are owned by the reward-model work stream):
`format_input(prompt, reasoning)` is `prompt + "\n" + reasoning`, the reasoning being the text before the
end-of-thinking marker (never the final answer), exactly as the published TRM-8B is served. Training,
scoring, serving and RL all call it, so a model never sees one format in training and another in use.
"""

from __future__ import annotations

from typing import NamedTuple


class Item(NamedTuple):
    """What a scorer scores: the problem and the reasoning written for it."""

    prompt: str
    reasoning: str


def format_input(prompt: str, reasoning: str) -> str:
    return prompt + "\n" + reasoning
