"""The two exceptions a request can end in, and the HTTP answer each becomes.

`RequestProblem` is the client's fault (a 4xx, or a 503 from a full queue) and is raised wherever the request
is read or admitted; `ScoringError` is the scorer's or a worker's (a 500). They live apart from the modules
that raise them so the batcher, the work queues, the input rules and the ASGI guard share them without
importing one another (and without FastAPI: `app` maps them to responses).
"""

from __future__ import annotations


class RequestProblem(Exception):
    """A client error found while reading a request: becomes `status` with `{"detail": message}`."""

    def __init__(self, status: int, message: str, *, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after  # a 503 from a full queue says when to come back

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


class ScoringError(RuntimeError):
    """The scorer raised or returned something unusable; the request gets a 500 naming it."""
