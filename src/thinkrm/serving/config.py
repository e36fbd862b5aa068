"""`thinkrm serve`'s settings, apart from the server itself.

Every `thinkrm` command builds its flags when the CLI starts, `serve`'s from this dataclass; keeping it apart
from the rest of `thinkrm.serving` means `thinkrm --help` (or any other command) does not import FastAPI,
pydantic and uvicorn.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..calibration import parse_calibration
from ..rewards import NORMALIZE

API_KEY_ENV = "THINKRM_API_KEY"


def _opt(default: Any, help: str) -> Any:
    """A field whose help text is also its `thinkrm serve` flag's help."""
    return field(default=default, metadata={"help": help})


@dataclass
class ServeConfig:
    """Server settings. Each field is also a `thinkrm serve` flag with this default and help
    (`max_batch_size` -> `--max-batch-size`)."""

    scorer: str = _opt("lite", "Scorer spec (thinkrm.load_scorer).")
    host: str = _opt("127.0.0.1", "Interface to bind; 0.0.0.0 exposes it.")
    port: int = _opt(8000, "TCP port (0 picks a free one).")
    # None: $THINKRM_API_KEY; "": no auth; else all routes but /health need it
    api_key: str | None = _opt(None, "Bearer token required on every route except /health.")
    model_name: str | None = _opt(None, "The \"model\" in responses (default: the scorer spec).")
    max_batch_size: int = _opt(64, "Most items per scorer call; 1 turns micro-batching off.")
    max_wait_ms: float = _opt(5.0, "How long a request waits for others to share its batch.")
    max_body_bytes: int = _opt(8 * 1024 * 1024, "Larger request bodies get 413.")
    max_items: int = _opt(512, "More items (or queries / inputs) per request get 413.")
    max_chars: int = _opt(200_000, "Longer prompt, response or input strings get 422.")
    alpha: float = _opt(0.2, "Gated-reward weight of the TRM score on /get_reward with labels.")
    verifier: str = _opt("math", "Answer checker of /get_reward with labels: math, choice, llm:URL[,URL...] "
                                 "(env THINKRM_VERIFIER_API_KEY).")
    # How /get_reward normalises the TRM score before the sigmoid (thinkrm.rewards): "auto" is the scorer's
    # calibration when it has one, else the queries of one request that share a prompt.
    normalize: str = _opt("auto", "/get_reward: how the TRM score is normalised before the sigmoid: auto (the "
                                  "scorer's calibration, else per prompt within a request), calibrated, group, "
                                  "none.")
    calibration: str | None = _opt(None, "/get_reward: CENTER,SCALE or a checkpoint path, for a scorer without "
                                         "its own calibration (overrides the scorer's own).")
    graceful_timeout_s: float = _opt(30.0, "On SIGTERM, how long in-flight requests may finish.")
    # Hostile or broken clients (docs/serving.md, "Slow, oversized and hostile clients"). Connections and
    # their timeouts are enforced below the app, in the HTTP protocol; the queues in front of each kind of
    # work answer 503 with Retry-After when full, so one kind cannot starve another.
    max_header_bytes: int = _opt(64 * 1024, "Larger request line + headers get 431 (and the connection "
                                            "closed).")
    header_timeout_s: float = _opt(10.0, "Seconds from connect (or a request's first byte) to its last header "
                                         "byte (408).")
    body_timeout_s: float = _opt(60.0, "Seconds a client has to send a request's body (408).")
    keep_alive_timeout_s: float = _opt(5.0, "Idle keep-alive connections close after this.")
    max_connections: int = _opt(1024, "Open connections; at the cap the longest-idle one is closed to make "
                                      "room, else 503.")
    score_queue_items: int = _opt(16_384, "Items waiting for the scorer; beyond: 503.")
    verify_queue: int = _opt(256, "/get_reward requests with labels verified or waiting; beyond, 503 + "
                                  "Retry-After.")
    analysis_queue: int = _opt(8, "/score requests with analysis running or waiting; beyond, 503 + "
                                  "Retry-After.")
    analysis_workers: int = _opt(1, "Processes for the ME² analysis of /score.")
    log_level: str = _opt("warning", "uvicorn log level.")

    def __post_init__(self) -> None:
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        checks = {"max_batch_size": self.max_batch_size >= 1, "max_wait_ms": self.max_wait_ms >= 0,
                  "max_body_bytes": self.max_body_bytes >= 1, "max_items": self.max_items >= 1,
                  "max_chars": self.max_chars >= 1, "graceful_timeout_s": self.graceful_timeout_s >= 0,
                  "alpha": 0.0 <= self.alpha <= 1.0, "port": 0 <= self.port <= 65535}
        checks["normalize"] = self.normalize in NORMALIZE
        checks["max_header_bytes"] = self.max_header_bytes >= 1024  # below that, ordinary clients fail
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_timeout_s"):
            checks[name] = getattr(self, name) > 0
        for name in ("max_connections", "score_queue_items", "verify_queue", "analysis_queue",
                     "analysis_workers"):
            checks[name] = getattr(self, name) >= 1
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid --{name.replace('_', '-')}: {getattr(self, name)!r}")
        parse_calibration(self.calibration)
        from ..verifiers import load_verifier

        load_verifier(self.verifier)  # a bad spec fails here, before any model loads (it connects lazily)
