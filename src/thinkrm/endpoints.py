"""`EndpointPool`: one logical server made of several HTTP endpoints (replicas behind no load balancer).

Each request goes to the endpoint with the fewest requests in flight (ties in turn), so replicas share the
load. An endpoint that cannot be reached (refused, reset, dropped connection, connect timeout) or answers
429/5xx is taken out for a cooldown (`backoff * 2**k` after its k-th outage in a row, capped at
`max_cooldown`; a numeric `Retry-After` instead when the server sends one) and the request is sent again at
once to another endpoint. When the cooldown ends the endpoint is on probation: it takes one request at a
time until one succeeds, so a server that is still dead costs one failed attempt, not one per request.

Only when every endpoint is out does a request wait, for the first to come back. It gives up, with one error
naming every URL, once every endpoint has failed more than `retries` times in a row (at least once since the
request was sent, so a request that comes after a failed one still gets its own try), or after
`(retries + 1) * len(urls)` attempts of its own (so one input that breaks every server is not retried
forever). With a single URL this is plain retrying with exponential backoff.

Every request is assumed idempotent (scoring, classification): one whose connection broke after it was sent
may have been computed by that server, and it is computed again elsewhere. The caller still gets exactly one
answer per request, so nothing it counts is counted twice. A *read timeout* is the exception and is never
retried: the server is alive and most likely still working on the request, and sending it again (here or to
a replica) would only add the same expensive work to an overloaded pool.

Thread-safe: one pool serves any number of threads. Picklable (TRL pickles reward functions that hold
scorers): the HTTP client and the lock are dropped and rebuilt, and endpoint health starts afresh in the copy.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import httpx

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_COOLDOWN = 30.0


class ServerResponseError(ValueError):
    """The server answered, but not with what the protocol promises."""

    def __init__(self, url: str, problem: str, *, status: int | None = None, body: str | bytes = b""):
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        snippet = " ".join(body.split())[:200]
        self.url, self.status, self.problem, self.snippet = url, status, problem, snippet
        head = f"{url}" + (f" answered HTTP {status}" if status is not None else "")
        super().__init__(f"{head}: {problem}" + (f"; body: {snippet!r}" if snippet else ""))


def parse_urls(urls: str | Sequence[str]) -> list[str]:
    """Base URLs from `"h1:8000,http://h2:8000"` or a list: `http://` added where no scheme is given,
    trailing slashes dropped. Empty entries and duplicates are errors (a duplicate would silently double one
    replica's share)."""
    parts = urls.split(",") if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for part in parts:
        part = part.strip()
        if not part:
            raise ValueError(f"empty URL in {urls!r}")
        url = (part if "://" in part else "http://" + part).rstrip("/")
        if url in out:
            raise ValueError(f"URL {url} is listed twice in {urls!r}")
        out.append(url)
    if not out:
        raise ValueError("no URL given")
    return out


@dataclass(frozen=True)
class EndpointStatus:
    """A snapshot of one endpoint, for logs and tests."""

    url: str
    up: bool  # would take a request now
    in_flight: int
    failures: int  # outages in a row; 0 = healthy, > 0 = out or on probation
    retry_in: float  # seconds until its cooldown ends; 0 when it is not cooling down
    sent: int  # attempts sent to it
    errors: int  # attempts that failed there (refused, cut off, 429/5xx)


class _Endpoint:
    __slots__ = ("url", "index", "in_flight", "failures", "failed_at", "down_until", "epoch", "sent",
                 "errors")

    def __init__(self, url: str, index: int):
        self.url, self.index = url, index
        self.in_flight = self.failures = self.sent = self.errors = 0
        self.failed_at = -math.inf  # time.monotonic() of the latest failure counted in `failures`
        self.down_until = 0.0  # time.monotonic() before which it takes no request
        # Bumped when the endpoint is taken out. A failure of a request sent before the bump belongs to the
        # outage already counted, so the requests in flight when a server dies double its cooldown once, not
        # once each.
        self.epoch = 0

    def ready(self, now: float) -> bool:
        return self.down_until <= now and (self.failures == 0 or self.in_flight == 0)


class _Failure(NamedTuple):
    url: str  # the full URL tried
    error: str
    response: Any  # the 429/5xx answer, or None when there was none


class EndpointPool:
    """Several base URLs serving the same API; see the module docstring.

        pool = EndpointPool("http://h1:8000,http://h2:8000", retries=4, backoff=0.5)
        url, body = pool.post_json("/classify", {"input": ["..."]})  # url: the endpoint that answered
    """

    def __init__(self, urls: str | Sequence[str], *, headers: dict[str, str] | None = None,
                 timeout: float = 120.0, connect_timeout: float = 10.0, retries: int = 4,
                 backoff: float = 0.5, max_cooldown: float = MAX_COOLDOWN,
                 max_connections: int | None = None):
        if retries < 0 or backoff < 0 or max_cooldown < 0:
            raise ValueError("retries, backoff and max_cooldown must be >= 0")
        self.urls = tuple(parse_urls(urls))
        self.headers = dict(headers or {})
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.retries, self.backoff, self.max_cooldown = retries, backoff, max_cooldown
        self.max_connections = max_connections
        self._reset()

    def _reset(self) -> None:
        self._endpoints = [_Endpoint(url, i) for i, url in enumerate(self.urls)]
        self._cond = threading.Condition()
        self._turn = 0  # round-robin start among endpoints equally loaded
        self._client: httpx.Client | None = None
        self._last_failure = _Failure("", "", None)  # the latest failed attempt of any request
        self.requests_sent = 0  # attempts, retries included

    def __getstate__(self) -> dict[str, Any]:
        # Only the configuration: health and counters describe this process's view of the servers.
        return {k: getattr(self, k) for k in ("urls", "headers", "timeout", "connect_timeout", "retries",
                                              "backoff", "max_cooldown", "max_connections")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def client(self) -> httpx.Client:
        """The shared `httpx.Client`, built on first use."""
        with self._cond:
            if self._client is None:
                import httpx

                limits = httpx.Limits(max_connections=self.max_connections)
                self._client = httpx.Client(timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout),
                                            headers=self.headers, limits=limits)
            return self._client

    def close(self) -> None:
        with self._cond:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def status(self) -> list[EndpointStatus]:
        with self._cond:
            now = time.monotonic()
            return [EndpointStatus(e.url, e.ready(now), e.in_flight, e.failures, max(e.down_until - now, 0.0),
                                   e.sent, e.errors) for e in self._endpoints]

    def request(self, method: str, path: str, **kwargs: Any) -> tuple[str, httpx.Response]:
        """Send `method URL+path` (kwargs as for `httpx.Client.request`) to one endpoint after another until
        one answers with a status other than 429/5xx; returns (the full URL that answered, the
        `httpx.Response`), whatever that status. Raises `ConnectionError` when no endpoint could be reached,
        `ServerResponseError` when the last one reached kept answering 429/5xx, `TimeoutError` on a read
        timeout (not retried)."""
        import httpx

        started = time.monotonic()
        attempts = 0
        failed: _Failure | None = None  # this request's latest failure
        failed_on: set[int] = set()  # endpoints that failed it: tried again only when no other is up
        while attempts < (self.retries + 1) * len(self._endpoints):
            taken = self._take(started, failed_on)
            if taken is None:
                break
            endpoint, epoch = taken
            url = endpoint.url + path
            attempts += 1
            try:
                resp = self.client.request(method, url, **kwargs)
            # RemoteProtocolError, ReadError: the server dropped the connection (it died, or restarted and
            # closed a kept-alive one); it is not working on the request any more.
            except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ConnectTimeout) as e:
                failed_on.add(endpoint.index)
                failed = _Failure(url, str(e) or type(e).__name__, None)
                self._take_out(endpoint, epoch, failed, None)
                continue
            except httpx.TimeoutException:  # read (or write) timeout: the server may still be computing
                self._release(endpoint, epoch, answered=False)
                raise TimeoutError(f"{url} did not answer within {self.timeout:g}s "
                                   "(raise the timeout option for slow servers)") from None
            except BaseException:
                self._release(endpoint, epoch, answered=False)
                raise
            if resp.status_code in RETRY_STATUSES:
                failed_on.add(endpoint.index)
                failed = _Failure(url, f"HTTP {resp.status_code}", resp)
                self._take_out(endpoint, epoch, failed, _retry_after(resp))
                continue
            self._release(endpoint, epoch, answered=True)
            return url, resp
        raise self._give_up(path, attempts, failed)

    def post_json(self, path: str, payload: Any) -> tuple[str, Any]:
        """POST `payload` as JSON; returns (the full URL that answered, its decoded JSON body). Any status but
        200, or a body that is not JSON, is a `ServerResponseError` naming that URL."""
        url, resp = self.request("POST", path, json=payload)
        if resp.status_code != 200:
            raise ServerResponseError(url, "unexpected status", status=resp.status_code, body=resp.content)
        try:
            return url, resp.json()
        except ValueError:
            raise ServerResponseError(url, "answer is not valid JSON", status=200,
                                      body=resp.content) from None

    def _take(self, started: float, failed_on: set[int]) -> tuple[_Endpoint, int] | None:
        """The endpoint for the next attempt and its epoch, waiting while every endpoint is out; None once
        every endpoint has failed more than `retries` times in a row, lately enough to count for a request
        sent at `started`. Endpoints in `failed_on` come last."""
        with self._cond:
            while True:
                if all(e.failures > self.retries and e.failed_at >= started for e in self._endpoints):
                    return None
                now = time.monotonic()
                ready = [e for e in self._endpoints if e.ready(now)]
                if ready:
                    n = len(self._endpoints)
                    endpoint = min(ready, key=lambda e: (e.index in failed_on, e.in_flight,
                                                         (e.index - self._turn) % n))
                    self._turn = endpoint.index + 1
                    endpoint.in_flight += 1
                    endpoint.sent += 1
                    self.requests_sent += 1
                    return endpoint, endpoint.epoch
                # Out: cooling down, or back with its one probe request in flight (woken by its verdict).
                cooling = [e.down_until for e in self._endpoints if e.down_until > now]
                self._cond.wait(min(cooling) - now if cooling else None)

    def _release(self, endpoint: _Endpoint, epoch: int, *, answered: bool) -> None:
        with self._cond:
            endpoint.in_flight -= 1
            # An answer to a request sent before the latest outage says nothing about the server now.
            if answered and endpoint.epoch == epoch:
                endpoint.failures = 0
            self._cond.notify_all()

    def _take_out(self, endpoint: _Endpoint, epoch: int, failure: _Failure,
                  retry_after: float | None) -> None:
        with self._cond:
            endpoint.in_flight -= 1
            endpoint.errors += 1
            self._last_failure = failure
            if endpoint.epoch == epoch:  # else this failure belongs to the outage already counted
                now = time.monotonic()
                endpoint.failures += 1
                endpoint.failed_at = now
                endpoint.epoch += 1
                cooldown = self.backoff * 2 ** (endpoint.failures - 1) if retry_after is None else retry_after
                endpoint.down_until = now + min(cooldown, self.max_cooldown)
            self._cond.notify_all()

    def _give_up(self, path: str, attempts: int, failed: _Failure | None) -> Exception:
        with self._cond:
            # Failed attempts in a row: this request's own, or those of the pool when others used them up.
            attempts = max(attempts, sum(e.failures for e in self._endpoints))
            url, error, resp = failed or self._last_failure
        names = ", ".join(u + path for u in self.urls)
        if resp is not None:
            every = f" (every server failing: {names})" if len(self.urls) > 1 else ""
            return ServerResponseError(url, f"unexpected status after {attempts} attempts{every}",
                                       status=resp.status_code, body=resp.content)
        if len(self.urls) == 1:
            return ConnectionError(f"cannot reach {url} after {attempts} attempts: {error}")
        return ConnectionError(f"cannot reach any of {names} after {attempts} attempts; "
                               f"last error from {url}: {error}")


def _retry_after(resp: Any) -> float | None:
    """A numeric Retry-After in seconds (>= 0), or None (absent, or an HTTP date: backoff applies)."""
    try:
        return max(float(resp.headers.get("retry-after", "")), 0.0)
    except ValueError:
        return None
