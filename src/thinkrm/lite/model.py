"""The TRM-lite network (an ensemble of small heads over shared features), its checkpoint and its scorer."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..calibration import Calibration
from ..formatting import Item
from ..io import InputError
from ..scoring import Scorer
from .cache import Embedder
from .config import CONFIG_FILE, DEFAULT_DIR, WEIGHTS_FILE, LiteConfig
from .features import Features, featurize, glob_width, segment_features


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


# The least a repeated line costs, in raw score per log1p(repeats): the learned weight is added to it, so no
# training run can make a repeat free, let alone rewarding.
REPEAT_COST_FLOOR = 0.1


def _build_head(config: LiteConfig, glob_dim: int):
    import torch
    from torch import nn

    repeats = config.features >= 2  # the last trace-level column counts repeated lines (features.REPEATS)
    glob_dim -= repeats

    class LiteNet(nn.Module):
        """Segment MLP over [embedding, embedding * prompt embedding, relational features]; its scores
        are pooled (mean, max, min) and added to a linear term on the trace-level features."""

        def __init__(self):
            super().__init__()
            n_seg = len(segment_features(config))
            seg_in = (2 * 384 if config.use_embeddings else 0) + n_seg
            self.seg = nn.Sequential(nn.Linear(seg_in, config.hidden), nn.GELU(), nn.Linear(config.hidden, 1))
            self.pool = nn.Linear(3, 1, bias=False)
            self.glob = nn.Linear(glob_dim, 1)
            # Trace-level cues interact: fractional results are a red flag in a word problem about people
            # and normal in algebra, so a small MLP sits next to the linear term.
            self.glob_mlp = (nn.Sequential(nn.Linear(glob_dim, config.glob_hidden), nn.GELU(),
                                           nn.Linear(config.glob_hidden, 1)) if config.glob_hidden else None)
            for name in ("seg_mean", "seg_std"):
                self.register_buffer(name, torch.zeros(n_seg) if name == "seg_mean" else torch.ones(n_seg))
            self.register_buffer("glob_mean", torch.zeros(glob_dim))
            self.register_buffer("glob_std", torch.ones(glob_dim))
            if repeats:
                self.repeat_cost = nn.Parameter(torch.zeros(()))

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
            if repeats:
                glob, n_repeats = glob[:, :-1], glob[:, -1]
            g = (glob - self.glob_mean) / self.glob_std
            out = self.pool(pooled).squeeze(-1) + self.glob(g).squeeze(-1)
            if self.glob_mlp is not None:
                out = out + self.glob_mlp(g).squeeze(-1)
            if repeats:
                # Everything above read the trace without its repeated lines; they cost here, and only here.
                out = out - (nn.functional.softplus(self.repeat_cost) + REPEAT_COST_FLOOR) * n_repeats
            return out

    return LiteNet()


def tensors(f: Features):
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
        self.version = ""  # set by `load`; an in-memory model has no fixed weights to name

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
                raise InputError("TRM-lite checkpoint file missing (train one with `thinkrm train-lite`)",
                                 file=f)
        try:
            raw = json.loads(cfg_file.read_text(encoding="utf-8"))
            config = LiteConfig(**{"features": 1, **raw["config"]})
            calibration = Calibration.from_dict(raw["calibration"]) if raw.get("calibration") else None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise InputError(f"not a TRM-lite config ({e})", file=cfg_file) from None
        net = _build_net(config, glob_width(config))
        try:
            net.load_state_dict(load_file(str(weights)))
        except RuntimeError as e:
            raise InputError(f"weights do not match the config: {str(e).splitlines()[0]}", file=weights) from None
        model = cls(config, net, raw.get("meta", {}), calibration)
        # What caches of scores are keyed by: the weights and config this model runs.
        model.version = hashlib.sha1(weights.read_bytes() + cfg_file.read_bytes()).hexdigest()[:12]
        return model

    def save(self, path: str | os.PathLike) -> None:
        from safetensors.torch import save

        from ..io import atomic_write, write_json

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
            return self.net(*tensors(f)).numpy().astype(np.float64)


class LiteScorer(Scorer):
    """`lite` (the shipped model) or `lite:PATH` (a checkpoint directory from `thinkrm train-lite`)."""

    def __init__(self, arg: str = "", *, batch_size: int = 32, cache_dir: str | None = None,
                 max_segments: int | None = None, **_: Any):
        from ..embed import get_encoder

        self.spec = f"lite:{arg}" if arg else "lite"
        self.model = LiteModel.load(arg or DEFAULT_DIR)
        self.version = self.model.version
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
        self.calibration, self.version = model.calibration, model.version
        return self

    def score(self, items: Sequence[Item | tuple[str, str]]) -> list[float]:
        out: list[float] = []
        for b in range(0, len(items), self.batch_size):
            feats = featurize(items[b:b + self.batch_size], self.model.config, self.embedder)
            out.extend(float(x) for x in self.model.score_features(feats))
        return out
