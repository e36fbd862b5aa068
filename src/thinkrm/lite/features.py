"""What TRM-lite reads of a trace: its segments, which of them it embeds, and every feature around them.

Long thinking traces (20k-60k characters, hundreds of paragraphs) are where Best-of-N and RL matter most and
where a reader of 32 evenly spaced openings sees least. Version 2 of the features (`LiteConfig.features`)
reads them by their structure:

* **Repeats are charged, not read.** Lines and paragraphs that repeat an earlier one word for word are dropped
  before anything else is computed, and their count enters the score only through a penalty whose weight is
  positive by construction (`thinkrm.lite.model`). A trace with a step repeated is then read exactly as the
  trace without it, minus that penalty: a repeated step always costs score, whatever else the model learned.
* **Segments where the structure happens.** Half of the embedded segments are chosen among the events of the
  trace (a stated answer, a backtrack, a re-check, the conclusion), the rest spread by position.
* **Trace signals** (`TRACE_SIGNALS`): did the trace conclude or was it cut off mid-sentence; how many answers
  it stated, how often and how late the working answer changed, how much text came after the final answer
  was first reached; how compressible the text is (loops and paraphrase cycles compress well).
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..formatting import Item
from .cache import Embedder
from .config import LiteConfig

_PARAGRAPH = re.compile(r"\n[ \t\r\f\v]*\n\s*")


def segments(reasoning: str) -> list[str]:
    """The paragraphs of each step, in order (line- and sentence-split traces keep their steps whole)."""
    from ..steps import split_steps

    out: list[str] = []
    for step in split_steps(reasoning):
        out.extend(p for p in (x.strip() for x in _PARAGRAPH.split(step.text)) if p)
    return out


def select(n: int, k: int) -> list[int]:
    """`k` of `range(n)` spread over the trace (all of them when n <= k), in order.

    Positions follow the dyadic sequence 0, 1, 1/2, 1/4, 3/4, 1/8, ... of the trace, so the first and last
    segments are always in and the set for a smaller `k` is a subset of the set for a larger one: a
    checkpoint can be run with fewer segments (faster) while reading the same segments it was trained on.
    """
    if n <= k:
        return list(range(n))
    picked: list[int] = []
    for f in _dyadic():
        i = round(f * (n - 1))
        if i not in picked:
            picked.append(i)
            if len(picked) == k:
                return sorted(picked)
    raise AssertionError("unreachable: the dyadic sequence covers every index")


def _dyadic() -> Iterable[float]:
    yield 0.0
    yield 1.0
    d = 2
    while True:
        for j in range(1, d, 2):
            yield j / d
        d *= 2


SEGMENT_FEATURES = ("sim_prompt", "sim_previous", "sim_max_earlier", "position", "log_chars", "is_last",
                    "said_before", "log_terms")
EVENT_FEATURES = ("states_answer", "backtrack", "check")  # segment features of version 2
SIZE_FEATURES = ("log_chars", "log_segments")
DAG_SIZES = ("steps", "supernodes", "depth")
TRACE_SIGNALS = ("ends_cleanly", "concluded", "states_answer", "log_answers", "log_distinct_answers",
                 "log_answer_changes", "after_final_answer", "last_change_position", "compressibility")
# Not among them, on purpose: how often a trace pauses ("wait"), re-checks or switches approach per 1,000
# characters. In cross-model pools those rates mark the reflective thinking models, which are right more
# often, so the model learned to prefer a detour that corrects itself over a clean solution (three of the six
# hand-made example pairs flipped); without them the long-trace validation numbers were the same
# (docs/trm-lite.md, round 6). Backtracks and re-checks still count through the ME² signals.
# Version 2 appends the count of repeated lines (log1p) as the last trace-level column; the network keeps it
# out of its learned layers and charges it with a weight that is positive by construction.
REPEATS = "log_repeated_lines"


def segment_features(config: LiteConfig) -> tuple[str, ...]:
    return SEGMENT_FEATURES + (EVENT_FEATURES if config.features >= 2 else ())


def glob_names(config: LiteConfig) -> tuple[str, ...]:
    """Names of the trace-level columns, in order (the last one is `REPEATS` in version 2)."""
    names = SIZE_FEATURES + ((*DAG_SIZES, *config.signals) if config.use_structure else ())
    return names + ((*TRACE_SIGNALS, REPEATS) if config.features >= 2 else ())


def glob_width(config: LiteConfig) -> int:
    return len(glob_names(config))


# ----------------------------------------------------------------------------------------------------------
# long-trace reading (features version 2)

_REPEAT_MIN_CHARS = 12  # shorter lines ("$$", "Wait.", "\\]") recur legitimately
_SPACE = re.compile(r"\s+")


def drop_repeats(reasoning: str) -> tuple[str, int]:
    """`reasoning` without the paragraphs and lines that repeat an earlier one word for word (whitespace
    aside), and how many were dropped. The first occurrence stays, so a trace with a step copied after itself
    comes back as the trace without the copy."""
    parts = _PARAGRAPH.split(reasoning)
    seps = _PARAGRAPH.findall(reasoning)
    seen_paragraphs: set[str] = set()
    seen_lines: set[str] = set()
    kept: list[str] = []
    dropped = 0
    for i, para in enumerate(parts):
        key = _SPACE.sub(" ", para).strip()
        if len(key) >= _REPEAT_MIN_CHARS and key in seen_paragraphs:
            dropped += 1
            continue
        seen_paragraphs.add(key)
        lines = []
        for line in para.split("\n"):
            lk = _SPACE.sub(" ", line).strip()
            if len(lk) >= _REPEAT_MIN_CHARS:
                if lk in seen_lines:
                    dropped += 1
                    continue
                seen_lines.add(lk)
            lines.append(line)
        if lines:
            kept.append("\n".join(lines) + (seps[i] if i < len(seps) else ""))
    return "".join(kept).rstrip() if dropped else reasoning, dropped


_STATED = re.compile(r"\\boxed\s*\{|\banswer\s+(?:is|would be|should be)\s*:?\s*|\bfinal answer\s*(?:is)?\s*:?\s*",
                     re.IGNORECASE)
_CLAUSE_END = re.compile(r"[.;,](?!\d)|\s(?:because|since|so|which|but|and then)\b")
_ANSWER_JUNK = re.compile(r"[\s$*]|\\[(),!;]|\.$")
_MAX_STATED = 400  # answers read per trace: bounds the time on a trace that states one per line


def stated_answers(text: str) -> list[tuple[int, str]]:
    """(position, normalised answer) for each answer the text states: `\\boxed{...}` or "the answer is ...".
    Linear in the text: a boxed answer is read up to 200 characters, a stated one to the end of its line."""
    out: list[tuple[int, str]] = []
    end = -1
    for m in _STATED.finditer(text):
        if m.start() < end:
            continue  # "the answer is \\boxed{5}": one statement
        if m.group(0).startswith("\\"):
            depth, j, stop = 1, m.end(), min(len(text), m.end() + 200)
            while j < stop and depth:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            raw, end = text[m.end():j - 1] if depth == 0 else "", j
        else:
            nl = text.find("\n", m.end(), m.end() + 80)
            stop = nl if nl >= 0 else min(len(text), m.end() + 80)
            raw = _CLAUSE_END.split(text[m.end():stop], maxsplit=1)[0]
            end = m.end() + len(raw)
            boxed = raw.find("\\boxed")
            if boxed >= 0:  # "the answer is \\boxed{5}": read by the boxed match that follows
                end = m.end() + boxed
                continue
        ans = _ANSWER_JUNK.sub("", raw)[:60]
        if ans:
            out.append((m.start(), ans))
            if len(out) == _MAX_STATED:
                break
    return out


_CLOSING = ".!?)]}$*>`\"'"
_CONCLUSION = re.compile(r"\b(?:answer|therefore|thus|hence|so the|in conclusion|final)\b", re.IGNORECASE)
_COMPRESS_CHARS = 32_000  # compressibility is measured on the last 32k characters: bounded time


def trace_signals(reasoning: str) -> list[float]:
    """`TRACE_SIGNALS` of a (repeat-free) reasoning text."""
    n = len(reasoning)
    tail = reasoning[-600:]
    answers = stated_answers(reasoning)
    values = [a for _, a in answers]
    changes = [answers[i + 1][0] for i in range(len(values) - 1) if values[i + 1] != values[i]]
    if values:
        final = values[-1]
        first_final = next(p for p, a in answers if a == final)
        after, last_change = (n - first_final) / max(n, 1), (changes[-1] / n if changes else 0.0)
    else:
        after, last_change = 0.0, 0.0
    stripped = reasoning.rstrip()
    raw = reasoning[-_COMPRESS_CHARS:].encode("utf-8", "surrogatepass")
    return [float(bool(stripped) and stripped[-1] in _CLOSING),
            float(bool(_STATED.search(tail)) or bool(_CONCLUSION.search(tail[-300:]))),
            float(bool(values)),
            math.log1p(len(values)), math.log1p(len(set(values))), math.log1p(len(changes)), after, last_change,
            len(zlib.compress(raw, 1)) / len(raw) if raw else 1.0]


def select_events(n: int, k: int, events: Sequence[int]) -> list[int]:
    """`k` of `range(n)` in order: up to half of them spread over `events` (segment indices where the
    structure happens), the rest spread by position as `select` spreads them (first and last always in)."""
    if n <= k:
        return list(range(n))
    events = sorted(set(events))
    picked = {events[j] for j in select(len(events), min(len(events), k // 2))} if events else set()
    for f in _dyadic():
        if len(picked) == k:
            return sorted(picked)
        picked.add(round(f * (n - 1)))
    raise AssertionError("unreachable: the dyadic sequence covers every index")


@dataclass
class Features:
    """Model inputs for a batch of traces; segment embeddings are rows of one shared `table`."""

    table: np.ndarray  # (M, 384) unique embeddings (prompts and segments)
    prompt_idx: np.ndarray  # (B,) row of each trace's prompt
    seg_idx: np.ndarray  # (B, K) rows of the selected segments, -1 = padding
    seg_x: np.ndarray  # (B, K, len(SEGMENT_FEATURES))
    glob: np.ndarray  # (B, G) size features then ME² signals

    def __len__(self) -> int:
        return len(self.prompt_idx)

    def take(self, rows: Sequence[int] | np.ndarray) -> Features:
        rows = np.asarray(rows)
        return Features(self.table, self.prompt_idx[rows], self.seg_idx[rows], self.seg_x[rows], self.glob[rows])


def _signed_log(v: float) -> float:
    return math.copysign(math.log1p(abs(v)), v)


def structure_features(prompt: str, reasoning: str, signals: Sequence[str]) -> list[float]:
    """DAG sizes and the ME² signals of the whole trace (None, e.g. no path to measure, reads as 0),
    log-compressed so that one runaway trace does not dominate the normalisation."""
    from ..me2 import analyze

    result = analyze(reasoning, prompt=prompt)
    flat = result.flat()
    return ([_signed_log(float(result.size.get(name, 0))) for name in DAG_SIZES]
            + [_signed_log(float(flat.get(name) or 0.0)) for name in signals])


def parse(item: Item, config: LiteConfig) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The embedding-free part of a trace's features: selected segment texts, their own features (position,
    log_chars, is_last, said_before, log_terms) and the trace-level features. This is the slow pure-Python
    part (step splitting, DAG, ME² analysis), so training memoises it (`Embedder.parsed_items`)."""
    from ..me2 import content_terms
    from ..structurers import cue_of

    reasoning, repeats = drop_repeats(item.reasoning) if config.features >= 2 else (item.reasoning, 0)
    segs = segments(reasoning)
    if config.features >= 2:
        answer_at = [bool(_STATED.search(seg)) for seg in segs]
        cues = [cue_of(seg) for seg in segs]
        events = [i for i, (a, c) in enumerate(zip(answer_at, cues)) if a or c in ("restart", "correct", "check")]
        chosen = set(select_events(len(segs), config.max_segments, events))
    else:
        chosen = set(select(len(segs), config.max_segments))
    # Grounding: the share of a segment's terms (content words and numbers) already said in the prompt or an
    # earlier segment, over every segment, not only the embedded ones. A restated step says nothing new; a
    # step built on nothing said before is a jump (an invented value, an off-topic detour).
    seen, texts, rows = content_terms(item.prompt), [], []
    for i, seg in enumerate(segs):
        terms = content_terms(seg)
        if i in chosen:
            texts.append(seg)
            row = (i / max(len(segs) - 1, 1), math.log1p(len(seg)), float(i == len(segs) - 1),
                   len(terms & seen) / len(terms) if terms else 1.0, math.log1p(len(terms)))
            if config.features >= 2:
                row += (float(answer_at[i]), float(cues[i] in ("restart", "correct")), float(cues[i] == "check"))
            rows.append(row)
        seen |= terms
    pos = np.array(rows, dtype=np.float32).reshape(len(rows), len(segment_features(config)) - 3)
    glob = [math.log1p(len(reasoning)), math.log1p(len(segs))]
    if config.use_structure:
        glob += structure_features(item.prompt, reasoning, config.signals)
    if config.features >= 2:
        glob += [*trace_signals(reasoning), math.log1p(repeats)]
    return texts, pos, np.array(glob, dtype=np.float32)


def featurize(items: Sequence[Item | tuple[str, str]], config: LiteConfig, embedder: Embedder) -> Features:
    """Segment, select, embed (all traces' texts in one encoder pass) and compute every feature."""
    items = [Item(*it) for it in items]
    parsed = embedder.parsed_items(items, config, parse)
    prompts = list(dict.fromkeys(it.prompt for it in items))
    seg_texts = list(dict.fromkeys(t for texts, _, _ in parsed for t in texts))
    table = np.concatenate([embedder.encode(prompts, config.prompt_tokens),
                            embedder.encode(seg_texts, config.segment_tokens)]) if items else np.zeros((0, 384))
    p_row = {p: i for i, p in enumerate(prompts)}
    s_row = {t: len(prompts) + i for i, t in enumerate(seg_texts)}
    b, k = len(items), config.max_segments
    seg_idx = np.full((b, k), -1, dtype=np.int64)
    seg_x = np.zeros((b, k, len(segment_features(config))), dtype=np.float32)
    glob = np.zeros((b, glob_width(config)), dtype=np.float32)
    for r, (it, (texts, pos, g)) in enumerate(zip(items, parsed)):
        rows = [s_row[t] for t in texts]
        seg_idx[r, :len(rows)] = rows
        glob[r] = g
        if rows:
            e = table[rows]
            sims = e @ e.T
            n = len(rows)
            seg_x[r, :n, 0] = e @ table[p_row[it.prompt]]
            seg_x[r, 1:n, 1] = np.diagonal(sims, -1)
            seg_x[r, 1:n, 2] = [sims[j, :j].max() for j in range(1, n)]
            seg_x[r, :n, 3:] = pos
    return Features(table.astype(np.float32), np.array([p_row[it.prompt] for it in items], dtype=np.int64),
                    seg_idx, seg_x, glob)
