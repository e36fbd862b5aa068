"""Delimiter lexicons: which opening words start a new reasoning step.

Long reasoning traces are full of blank lines, most of which only separate a formula from its sentence.
The blank lines that matter are those followed by a discourse word ("Wait", "Alternatively", "So",
"Therefore"): the model is changing what it does. A lexicon is the set of such words. It is *mined*
rather than hand-written so that it follows how models actually write: a word qualifies when it often
opens a blank-line segment, in many different traces, and when it rarely appears anywhere else (the
"start ratio"), which separates discourse markers from content words like "the" or "x" that also
happen to open many segments.

The default lexicon (`data/delimiters.json`) was mined from the long traces of the SkyThought MATH-500
candidates and the PRMBench chosen processes; `thinkrm delimiters mine` rebuilds it (see
docs/steps-and-dag.md).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .io import InputError, atomic_write

FORMAT_VERSION = 1

# Leading decoration a model puts before the first word of a paragraph: markdown emphasis, headings,
# bullets, quotes, brackets, and an optional list number ("1.", "2)").
_OPENING = re.compile(r"[\s*#>_\-+•\"'“‘(\[]*(?:\d{1,3}[.)]\s+[\s*#_\"'“‘(\[]*)?([A-Za-z]+(?:['’][a-z]+)?)")
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]+(?:['’][a-z]+)?")
_BLANK_LINES = re.compile(r"\n[ \t\r]*\n\s*")


def first_word(segment: str) -> str | None:
    """The lowercased first word of a paragraph, skipping markdown and list numbers.

    Returns None when the paragraph opens with something other than a word (a formula, a number, a
    LaTeX command), since such a paragraph never announces a change of activity.
    """
    m = _OPENING.match(segment)
    if m is None:
        return None
    return m.group(1).lower().replace("’", "'")


@dataclass(frozen=True)
class Lexicon:
    """A set of delimiter words, with the statistics they were mined from (for inspection)."""

    words: frozenset[str]
    source: str = ""
    stats: dict[str, dict[str, float]] = field(default_factory=dict, compare=False, hash=False)

    def __contains__(self, word: object) -> bool:
        return word in self.words

    def __len__(self) -> int:
        return len(self.words)

    def opens_step(self, segment: str) -> bool:
        """Whether a paragraph starting this way begins a new step."""
        return first_word(segment) in self.words

    def to_dict(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, "source": self.source, "words": sorted(self.words),
                "stats": self.stats}

    def save(self, path: str | os.PathLike) -> None:
        with atomic_write(path) as f:
            json.dump(self.to_dict(), f, ensure_ascii=False, indent=1)
            f.write("\n")

    @classmethod
    def from_dict(cls, d: Any, *, file: str | None = None) -> Lexicon:
        if not isinstance(d, dict):
            raise InputError(f"a lexicon is a JSON object, got {type(d).__name__}", file=file)
        words = d.get("words")
        if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
            raise InputError("expected a list of non-empty strings", file=file, field="words")
        stats = d.get("stats", {})
        if not isinstance(stats, dict):
            raise InputError(f"expected an object, got {type(stats).__name__}", file=file, field="stats")
        return cls(frozenset(w.strip().lower() for w in words), source=str(d.get("source", "")), stats=stats)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Lexicon:
        """A lexicon from a JSON file written by `save` (or any `{"words": [...]}` object)."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise InputError("file not found", file=path) from None
        try:
            d = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise InputError(f"not valid UTF-8 ({e.reason} at byte {e.start})", file=path) from None
        except json.JSONDecodeError as e:
            raise InputError(f"invalid JSON: {e.msg}", file=path, line=e.lineno) from None
        return cls.from_dict(d, file=str(path))

    @classmethod
    def of(cls, words: Iterable[str]) -> Lexicon:
        """A hand-made lexicon, e.g. for tests or a domain with its own discourse words."""
        return cls(frozenset(w.lower() for w in words), source="custom")


@functools.lru_cache(maxsize=1)
def default_lexicon() -> Lexicon:
    """The lexicon shipped with the package (loaded once per process)."""
    ref = resources.files("thinkrm") / "data" / "delimiters.json"
    return Lexicon.from_dict(json.loads(ref.read_text(encoding="utf-8")), file=str(ref))


@dataclass
class MineResult:
    """First-word statistics over a corpus and the lexicon chosen from them."""

    lexicon: Lexicon
    starts: Counter  # word -> number of blank-line segments it opens
    traces: Counter  # word -> number of traces in which it opens at least one segment
    occurrences: Counter  # word -> occurrences anywhere in the text
    n_traces: int  # traces long enough to count
    n_segments: int

    def ratio(self, word: str) -> float:
        return self.starts[word] / max(1, self.occurrences[word])


def mine_lexicon(texts: Iterable[str], *, top: int = 40, min_segments: int = 8, min_trace_share: float = 0.02,
                 min_ratio: float = 0.3, source: str = "") -> MineResult:
    """Mine a delimiter lexicon from reasoning texts.

    Only texts with at least `min_segments` blank-line segments count: short answers have no discourse
    structure to learn from. A word is a candidate when it opens segments in at least `min_trace_share`
    of those texts and at least `min_ratio` of its occurrences open a segment; candidates are ranked by
    `starts * ratio` (frequent *and* specific) and the best `top` kept. One pass, constant memory per
    text, so a corpus can be streamed.
    """
    starts: Counter = Counter()
    traces: Counter = Counter()
    occurrences: Counter = Counter()
    n_traces = n_segments = 0
    for text in texts:
        segments = [s for s in _BLANK_LINES.split(text) if s.strip()]
        if len(segments) < min_segments:
            continue
        n_traces += 1
        n_segments += len(segments)
        opened = [w for w in map(first_word, segments) if w is not None]
        starts.update(opened)
        traces.update(set(opened))
        occurrences.update(w.lower().replace("’", "'") for w in _WORD.findall(text))
    need_traces = max(2, min_trace_share * n_traces)

    def score(w: str) -> float:
        return starts[w] * starts[w] / max(1, occurrences[w])

    candidates = [w for w in starts if len(w) >= 2 and traces[w] >= need_traces
                  and starts[w] / max(1, occurrences[w]) >= min_ratio]
    chosen = sorted(candidates, key=lambda w: (-score(w), w))[:top]
    stats = {w: {"starts": starts[w], "traces": traces[w],
                 "ratio": round(starts[w] / max(1, occurrences[w]), 4)} for w in chosen}
    lexicon = Lexicon(frozenset(chosen), source=source, stats=stats)
    return MineResult(lexicon, starts, traces, occurrences, n_traces, n_segments)
