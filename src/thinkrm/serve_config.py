"""`thinkrm serve`'s settings, apart from the server itself.

Every `thinkrm` command builds its flags when the CLI starts, `serve`'s from this dataclass; keeping it out of
`thinkrm.serve` means `thinkrm --help` (or any other command) does not import FastAPI, pydantic and uvicorn.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .calibration import parse_calibration
from .rewards import NORMALIZE

API_KEY_ENV = "THINKRM_API_KEY"


@dataclass
class ServeConfig:
    """Server settings; each field is also a `thinkrm serve` flag (`max_batch_size` -> `--max-batch-size`)."""

    scorer: str = "lite"
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # None: $THINKRM_API_KEY; "": no auth; else all routes but /health need it
    model_name: str | None = None  # the "model" echoed in responses; defaults to the scorer spec
    max_batch_size: int = 64  # items per scorer call; 1 turns batching off
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    max_body_bytes: int = 8 * 1024 * 1024
    max_items: int = 512  # items (or queries / inputs) per request
    max_chars: int = 200_000  # characters per prompt, response or input string
    alpha: float = 0.2  # gated-reward weight of the TRM score on /get_reward with labels
    verifier: str = "math"  # answer checker of /get_reward with labels (a thinkrm.verifiers spec)
    # How /get_reward normalises the TRM score before the sigmoid (thinkrm.rewards): "auto" is the scorer's
    # calibration when it has one, else the queries of one request that share a prompt.
    normalize: str = "auto"
    calibration: str | None = None  # CENTER,SCALE or a checkpoint path; overrides the scorer's own
    graceful_timeout_s: float = 30.0  # how long shutdown waits for in-flight requests
    # Hostile or broken clients (docs/serving.md, "Slow, oversized and hostile clients"). Connections and
    # their timeouts are enforced below the app, in the HTTP protocol; the queues in front of each kind of
    # work answer 503 with Retry-After when full, so one kind cannot starve another.
    max_header_bytes: int = 64 * 1024  # request line + headers; more gets 431 and the connection closed
    header_timeout_s: float = 10.0  # from connect (or a request's first byte) to its last header byte; 408
    body_timeout_s: float = 60.0  # to receive a whole request body; 408
    keep_alive_timeout_s: float = 5.0  # an idle keep-alive connection is closed after this
    max_connections: int = 1024  # open connections; at the cap the longest-idle one makes room, else 503
    score_queue_items: int = 16_384  # items waiting for the scorer
    verify_queue: int = 256  # /get_reward requests with labels being verified or waiting to be
    analysis_queue: int = 8  # /score requests with analysis being analysed or waiting to be
    analysis_workers: int = 1  # processes for the ME² analysis of /score
    log_level: str = "warning"

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
        from .verifiers import load_verifier

        load_verifier(self.verifier)  # a bad spec fails here, before any model loads (it connects lazily)
