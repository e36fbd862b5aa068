"""Step partitioning: split a reasoning trace into steps.

CONTRACT (implementation owned by the core-pipeline work stream):
A trace is cut on blank lines; a segment starts a new step only if its first word is in the delimiter
lexicon, else it joins the step before. Traces without blank lines fall back to lines, then sentences;
tiny fragments merge into neighbours.

Invariant: steps are contiguous and cover the whole text: steps[0].start == 0, steps[i].end ==
steps[i+1].start, steps[-1].end == len(text); an empty/whitespace-only text gives [].
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    index: int
    start: int  # char offset into the reasoning text (inclusive)
    end: int  # char offset (exclusive); the span includes trailing separators
    text: str  # the span's content, stripped of surrounding whitespace

    def to_dict(self) -> dict:
        return {"index": self.index, "start": self.start, "end": self.end}


def split_steps(text: str, lexicon: "Lexicon | None" = None) -> list[Step]:
    raise NotImplementedError
