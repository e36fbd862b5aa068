"""Step partitioning: split a reasoning trace into steps.

A trace is cut on blank lines; a segment starts a new step only if its first word is in the delimiter
lexicon, else it joins the step before. Traces without blank lines fall back to lines, then sentences;
tiny fragments merge into neighbours.

Invariant: steps are contiguous and cover the whole text: steps[0].start == 0, steps[i].end ==
steps[i+1].start, steps[-1].end == len(text); an empty/whitespace-only text gives [].

Why this shape: a step should be one *activity* of the model (compute this, check that, try another
approach), which in long traces spans several paragraphs; only paragraphs that open with a discourse word
("Wait", "So", "Alternatively") mark a change of activity. Short chain-of-thought has no paragraphs, and
there each line (or sentence) is already one activity. Everything is a single regex pass plus a linear
merge, so a 1,000,000-character trace costs milliseconds, and the step count is capped so that later
stages stay linear too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .delimiters import Lexicon

MIN_STEP_CHARS = 40  # a shorter fragment ("Hmm.", "A: 26", a lone formula) is not a step on its own
MIN_LINE_CHARS = 8  # ...but in formula-per-line text a short line ("x = 15 / 3 = 5") is a step
MAX_STEPS = 1000  # beyond this, neighbouring steps are merged evenly (pathological inputs)

_BLANK = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_NEWLINE = re.compile(r"\n\s*")
# A sentence ends at . ! or ? followed by space and an upper-case letter, a digit or an opening
# bracket/quote; "e.g. this" and "3.14" stay whole.
_SENTENCE = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z0-9(\[\"'$\\])")
_PROSE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")
_WORDS = re.compile(r"[A-Za-z]{2,}")
_CONTENT = re.compile(r"[\d=\\$^]")  # numbers and mathematics: the piece states something


@dataclass(frozen=True)
class Step:
    index: int
    start: int  # char offset into the reasoning text (inclusive)
    end: int  # char offset (exclusive); the span includes trailing separators
    text: str  # the span's content, stripped of surrounding whitespace

    def to_dict(self) -> dict:
        return {"index": self.index, "start": self.start, "end": self.end}


def _units(text: str, sep: re.Pattern) -> list[int]:
    """Start offsets of the pieces `sep` cuts `text` into; each piece keeps its trailing separator."""
    starts = [0]
    starts.extend(m.end() for m in sep.finditer(text) if 0 < m.end() < len(text))
    return starts


def _is_fragment(piece: str, lines: bool) -> bool:
    """Too small to be a step: short, or (between paragraphs) a formula with no prose words."""
    piece = piece.strip()
    if lines:
        return len(piece) < MIN_LINE_CHARS
    if len(piece) < MIN_STEP_CHARS:
        return True
    return len(piece) < 400 and len(_PROSE.findall(piece)) < 2


def _is_lead_in(piece: str) -> bool:
    """A fragment that announces what follows ("Hmm.", "Wait, no.", "Let me check:") rather than stating
    a result ("So v = 90 km/h.", "A: 26", a formula)."""
    piece = piece.strip()
    return piece.endswith(":") or (not _CONTENT.search(piece) and len(_WORDS.findall(piece)) <= 6)


def split_steps(text: str, lexicon: Lexicon | None = None) -> list[Step]:
    """Split `text` into contiguous steps (see the module docstring for the rules).

    `lexicon` defaults to the mined lexicon shipped with the package (`thinkrm.delimiters`).
    """
    if not text.strip():
        return []
    if lexicon is None:
        from .delimiters import default_lexicon

        lexicon = default_lexicon()
    body = text.strip()
    lead = len(text) - len(text.lstrip())  # leading whitespace belongs to the first step
    starts = _units(body, _BLANK)
    if len(starts) > 1:
        # Paragraph mode: only a delimiter word opens a step.
        bounds = [0] + [s for s in starts[1:] if lexicon.opens_step(body[s:s + 40])]
        lines = False
    else:
        bounds = _units(body, _NEWLINE)
        lines = len(bounds) > 1 and _mostly_formulas(body, bounds)
        if len(bounds) == 1:
            bounds = _units(body, _SENTENCE)
    bounds = _merge_fragments(body, bounds, lines)
    if len(bounds) > MAX_STEPS:
        stride = len(bounds) / MAX_STEPS
        bounds = [bounds[int(i * stride)] for i in range(MAX_STEPS)]
    offsets = [0] + [lead + b for b in bounds[1:]] + [len(text)]
    return [Step(i, a, b, text[a:b].strip()) for i, (a, b) in enumerate(zip(offsets, offsets[1:]))]


def _mostly_formulas(body: str, bounds: list[int]) -> bool:
    """Whether most lines lack prose: a derivation written one formula per line, where each line is a step
    (in prose, a lone formula line belongs to the sentence around it). The first 200 lines decide."""
    ends = bounds[1:] + [len(body)]
    sample = list(zip(bounds, ends))[:200]
    formulas = sum(len(_PROSE.findall(body, a, min(b, a + 400))) < 2 for a, b in sample)
    return 2 * formulas > len(sample)


def _merge_fragments(body: str, bounds: list[int], lines: bool) -> list[int]:
    """Drop the boundaries around tiny fragments: a lead-in joins the next step, any other fragment
    finishes the step before it (the first piece, having no step before it, always joins the next).

    A step made only of fragments closes once it reaches the minimum size, so a trace written entirely in
    short paragraphs ("Wait, 12 * 12 = 144." / "So x = 144.") still splits into small steps instead of
    collapsing into one.
    """
    min_chars = MIN_LINE_CHARS if lines else MIN_STEP_CHARS
    ends = bounds[1:] + [len(body)]
    kept: list[int] = []
    pending_forward = False  # the previous piece was a lead-in waiting to join this one
    size = 0  # characters in the current step
    only_fragments = True  # the current step holds fragments only
    for start, end in zip(bounds, ends):
        piece = body[start:end]
        fragment = _is_fragment(piece, lines)
        if pending_forward or not kept:
            if not kept:
                kept.append(start)
            pending_forward = fragment and end < len(body) and size + len(piece.strip()) < min_chars
        elif not fragment or (only_fragments and size >= min_chars):
            kept.append(start)
            size, only_fragments = 0, True
        elif end < len(body) and _is_lead_in(piece):
            kept.append(start)
            size, only_fragments = 0, True
            pending_forward = True
        size += len(piece.strip())
        only_fragments = only_fragments and fragment
    return kept
