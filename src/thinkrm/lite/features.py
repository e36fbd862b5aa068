"""What TRM-lite reads of a trace: its segments, which of them it embeds, and every feature around them."""

from __future__ import annotations

import math
import re
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
SIZE_FEATURES = ("log_chars", "log_segments")
DAG_SIZES = ("steps", "supernodes", "depth")


def glob_width(config: LiteConfig) -> int:
    return len(SIZE_FEATURES) + (len(DAG_SIZES) + len(config.signals) if config.use_structure else 0)


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

    segs = segments(item.reasoning)
    chosen = set(select(len(segs), config.max_segments))
    # Grounding: the share of a segment's terms (content words and numbers) already said in the prompt or an
    # earlier segment, over every segment, not only the embedded ones. A restated step says nothing new; a
    # step built on nothing said before is a jump (an invented value, an off-topic detour).
    seen, texts, rows = content_terms(item.prompt), [], []
    for i, seg in enumerate(segs):
        terms = content_terms(seg)
        if i in chosen:
            texts.append(seg)
            rows.append((i / max(len(segs) - 1, 1), math.log1p(len(seg)), float(i == len(segs) - 1),
                         len(terms & seen) / len(terms) if terms else 1.0, math.log1p(len(terms))))
        seen |= terms
    pos = np.array(rows, dtype=np.float32).reshape(len(rows), 5)
    glob = [math.log1p(len(item.reasoning)), math.log1p(len(segs))]
    if config.use_structure:
        glob += structure_features(item.prompt, item.reasoning, config.signals)
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
    seg_x = np.zeros((b, k, len(SEGMENT_FEATURES)), dtype=np.float32)
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
