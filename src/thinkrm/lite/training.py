"""Fitting TRM-lite: featurise once, train every ensemble head with the Bradley-Terry loss, evaluate on the
held-out problems, calibrate, and write the checkpoint with its model card."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..calibration import Calibration, fit_calibration
from ..formatting import Item
from ..scoring import Scorer, checked_scores
from .cache import Embedder, default_cache_dir
from .card import (
    CALIBRATION_BEGIN,
    CALIBRATION_END,
    calibration_markdown,
    count,
    model_card,
    write_card_section,
)
from .config import LiteConfig, Progress
from .features import Features, featurize
from .model import LiteModel, LiteScorer, tensors
from .recipe import (
    CALIBRATION_PER_PROBLEM,
    CALIBRATION_POOLS,
    Dataset,
    build_dataset,
    calibration_items,
    pair_rows,
    source_weights,
)


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
    g = feats.glob[rows][:, :model.net.members[0].glob_mean.shape[0]]  # the repeat count is not standardised
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
    table, p_idx, s_idx, s_x, glob = tensors(feats)
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
    write_card_section(path / "MODEL_CARD.md", CALIBRATION_BEGIN, CALIBRATION_END,
                        calibration_markdown(model.calibration))
    return model.calibration


BON_REPEATS = 10  # random subsets per problem and N in the held-out Best-of-N numbers


def train_lite(pairs_path: str | None, output_dir: str | os.PathLike, shared_dir: str | None, seed: int = 0, *,
               config: LiteConfig | None = None, cache_dir: str | os.PathLike | None = None, epochs: int = 40,
               progress: Progress | None = None) -> dict[str, Any]:
    """Train TRM-lite, evaluate it on the held-out problems with `thinkrm eval-pairs` and Best-of-N logic, and
    write weights, split.json and MODEL_CARD.md to `output_dir`. Deterministic given the data, `seed` and the
    config: features are computed once, then training runs in a fixed, seeded order. `progress` wraps the
    featurising and training loops (the CLI passes its progress bar)."""
    import torch

    from ..me2 import SIGNALS

    config = config or LiteConfig()
    if config.use_structure and not config.signals:
        config.signals = list(SIGNALS)
    data = build_dataset(pairs_path, shared_dir, seed, config)
    if not data.train:
        raise ValueError("no training pairs")
    embedder = Embedder(cache_dir or default_cache_dir())
    items, idx = pair_rows(data.train)
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
                  "train_pairs_by_source": count(p.extra["source"] for p in data.train),
                  "final_loss": losses[-1], "data_sha256": data.hashes, "results": results}
    out = Path(output_dir)
    model.save(out)
    from ..io import atomic_write, write_json

    write_json(out / "split.json", data.split)
    with atomic_write(out / "MODEL_CARD.md") as f:
        f.write(model_card(model, data))
    return results


def evaluate(model: LiteModel, embedder: Embedder, data: Dataset) -> dict[str, Any]:
    """Held-out results through the project's own evaluators (`thinkrm eval-pairs`, `thinkrm bon`)."""
    from ..bon import best_of_n, ns_to_pool_size
    from ..evaluate import evaluate_pairs

    scorer = LiteScorer.from_model(model, embedder)
    results: dict[str, Any] = {}
    if data.test:
        results["pairs"] = evaluate_pairs(data.test, scorer)
    for name, cands in data.pools.items():
        results[f"bon_{name}"] = best_of_n(cands, scorer, strategies=("argmax", "weighted-vote"),
                                           ns=ns_to_pool_size(cands),
                                           repeats=BON_REPEATS)
    return results
