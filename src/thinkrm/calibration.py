"""Score calibration: put a reward model's raw scores on a scale where `sigmoid` means something.

A Bradley-Terry reward model is trained on score *differences*, so its level is arbitrary: TRM-lite's raw
scores on correct traces sit around +5..+30, where `sigmoid(r_t)` is ~1 for every one of them and the gated
reward `r_v * (1 - a + a * sigmoid(r_t))` never moves. A calibration is the centre and scale of a scorer's
raw scores on a reference set of correct traces; `(score - center) / scale` is then ~0 for a typical correct
trace and about +-1 for the quartiles (the scale is the robust standard deviation, IQR / 1.349), so the
sigmoid spreads over (0, 1) where the model's own distinctions are.

Where calibrations live: TRM-lite's `config.json` (`"calibration"`), the `thinkrm.json` sidecar of checkpoints
`thinkrm train` writes, or given by hand to any scorer (`load_scorer(spec, calibration="CENTER,SCALE")`,
or a checkpoint directory to read it from) for models served elsewhere.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Interquartile range of a standard normal: IQR / IQR_PER_SD is a standard deviation that outliers (a
# degenerate trace scored -200) cannot inflate.
IQR_PER_SD = 1.349


@dataclass(frozen=True)
class Calibration:
    """`apply(score) = (score - center) / scale`; `n` and `reference` say what it was measured on."""

    center: float
    scale: float
    n: int = 0
    reference: str = ""

    def __post_init__(self) -> None:
        if not (isinstance(self.center, (int, float)) and math.isfinite(self.center)):
            raise ValueError(f"calibration center must be a finite number, got {self.center!r}")
        if not (isinstance(self.scale, (int, float)) and math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"calibration scale must be a finite number > 0, got {self.scale!r}")

    def apply(self, score: float) -> float:
        return (score - self.center) / self.scale

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        if not isinstance(d, dict) or "center" not in d or "scale" not in d:
            raise ValueError(f"a calibration is an object with 'center' and 'scale', got {d!r}")
        return cls(center=float(d["center"]), scale=float(d["scale"]), n=int(d.get("n", 0)),
                   reference=str(d.get("reference", "")))


def fit_calibration(scores: Iterable[float], reference: str = "") -> Calibration:
    """Median and robust standard deviation of raw scores on reference correct traces."""
    xs = sorted(float(s) for s in scores)
    if len(xs) < 4:
        raise ValueError(f"a calibration needs at least 4 reference scores, got {len(xs)}")
    if not all(math.isfinite(x) for x in xs):
        raise ValueError("calibration scores must be finite")
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    scale = (q3 - q1) / IQR_PER_SD
    if scale <= 0:  # half or more of the scores are equal: fall back to the plain standard deviation
        scale = statistics.pstdev(xs)
    if scale <= 0:
        raise ValueError("every reference score is the same: nothing to calibrate against")
    return Calibration(center=statistics.median(xs), scale=scale, n=len(xs), reference=reference)


def read_calibration(path: str | os.PathLike) -> Calibration | None:
    """The calibration recorded in a checkpoint: a directory's `thinkrm.json` sidecar or TRM-lite
    `config.json`, or such a JSON file itself; None when it records none."""
    from .io import InputError

    path = Path(path)
    files = [path / "thinkrm.json", path / "config.json"] if path.is_dir() else [path]
    for f in files:
        if not f.is_file():
            continue
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"invalid JSON ({e})", file=f) from None
        if isinstance(data, dict) and data.get("calibration") is not None:
            try:
                return Calibration.from_dict(data["calibration"])
            except (ValueError, TypeError) as e:
                raise InputError(str(e), file=f, field="calibration") from None
    if not path.exists():
        raise ValueError(f"calibration: no such file or directory: {path}")
    return None


def parse_calibration(value: Calibration | dict | str | tuple | list | None) -> Calibration | None:
    """A calibration from what a user can write: an object, a dict, `(center, scale)`, "CENTER,SCALE", or
    the path of a checkpoint (directory or JSON file) that records one."""
    if value is None or isinstance(value, Calibration):
        return value
    if isinstance(value, dict):
        return Calibration.from_dict(value)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return Calibration(float(value[0]), float(value[1]), reference="given")
    if isinstance(value, str):
        parts = value.split(",")
        try:
            numbers = [float(p) for p in parts] if len(parts) == 2 else None
        except ValueError:
            numbers = None
        if numbers is not None:  # two numbers are meant as a calibration: a bad one is an error, not a path
            return Calibration(numbers[0], numbers[1], reference="given")
        found = read_calibration(value)
        if found is None:
            raise ValueError(f"calibration: {value} records no calibration")
        return found
    raise ValueError(f"calibration: expected CENTER,SCALE or a checkpoint path, got {value!r}")


def calibrate_traces(path: str | os.PathLike, scorer: Any, *, limit: int | None = None,
                     on_progress: Any = None) -> Calibration:
    """Calibrate `scorer` (a `Scorer` or spec) on the traces of a file: the correct ones when rows carry a
    `correct` field (candidate files), else every row (a file of known-good traces). `on_progress(n)` is
    called after each scored chunk with the number of traces scored so far."""
    from .io import InputError
    from .scoring import load_scorer, score_chunks
    from .trace import load_traces

    items = [(t.prompt, t.reasoning) for t in load_traces(path)
             if t.extra.get("correct", True) is True and t.reasoning.strip()]
    if limit is not None:
        items = items[:limit]
    if len(items) < 4:
        raise InputError(f"{len(items)} usable correct traces; a calibration needs at least 4", file=path)
    scorer = load_scorer(scorer)
    scores: list[float] = []
    for _, got in score_chunks(scorer, (items[i:i + 64] for i in range(0, len(items), 64)), list):
        scores += got
        if on_progress is not None:
            on_progress(len(scores))
    return fit_calibration(scores, reference=f"correct traces of {Path(path).name}")

