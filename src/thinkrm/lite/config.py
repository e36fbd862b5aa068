"""TRM-lite's settings and checkpoint layout: what a saved model needs to describe itself."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path(__file__).parent.parent / "data" / "lite"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


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
    # 1: the first TRM-lite (segments spread by position). 2: long-trace reading (`thinkrm.lite.features`):
    # repeated lines dropped and charged, segments chosen where the structure happens, trace signals.
    # A checkpoint saved without this field is version 1, so older checkpoints load and score unchanged.
    features: int = 2

    def __post_init__(self):
        if (self.ensemble < 1 or self.max_segments < 2 or self.hidden < 1 or self.glob_hidden < 0
                or self.features not in (1, 2)):
            raise ValueError(f"invalid TRM-lite config: {self}")
