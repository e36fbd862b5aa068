"""The counters behind `/metrics`, in the Prometheus text format.

Written by hand (no client library needed) and kept apart from the app: the batcher, the work queues, the
ASGI guard and the HTTP protocol all count into the one `Metrics` object that `create_app` makes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _Histogram:
    def __init__(self, buckets: Sequence[float]):
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break

    def lines(self, name: str, labels: str = "") -> Iterator[str]:
        sep = "," if labels else ""
        cumulative = 0
        for bound, count in zip(self.buckets, self.counts):
            cumulative += count
            yield f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {cumulative}'
        yield f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}'
        suffix = f"{{{labels}}}" if labels else ""
        yield f"{name}_sum{suffix} {self.sum:.6g}"
        yield f"{name}_count{suffix} {self.total}"


class Metrics:
    """Counters for `/metrics`, in the Prometheus text format (written by hand: no client library needed).

    Only touched from the event loop thread, so no locks. Routes outside the app's own (typos, scanners)
    are counted under `route="other"` so a fuzzer cannot blow up the label set.
    """

    def __init__(self, max_batch_size: int):
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, _Histogram] = {}
        sizes = [1]
        while sizes[-1] < max_batch_size:
            sizes.append(min(sizes[-1] * 2, max_batch_size))
        self.batch_sizes = _Histogram(sizes)
        self.items_scored = 0
        self.scorer_errors = 0
        self.queue_depth = 0
        self.in_flight = 0
        self.open_connections = 0
        self.closed_connections: dict[str, int] = {}  # closed by the server for a limit, by reason
        self.queued: dict[str, int] = {}  # requests queued or running, by kind of work
        self.rejected: dict[str, int] = {}  # requests turned away (503) because that queue was full

    def count(self, counter: dict[str, int], key: str, n: int = 1) -> None:
        counter[key] = counter.get(key, 0) + n

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests[(route, status)] = self.requests.get((route, status), 0) + 1
        self.latency.setdefault(route, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def render(self) -> str:
        out = ["# HELP thinkrm_requests_total HTTP requests by route and status code.",
               "# TYPE thinkrm_requests_total counter"]
        out += [f'thinkrm_requests_total{{route="{r}",status="{s}"}} {n}'
                for (r, s), n in sorted(self.requests.items())]
        out += ["# HELP thinkrm_request_duration_seconds Time from request start to response end.",
                "# TYPE thinkrm_request_duration_seconds histogram"]
        for route, hist in sorted(self.latency.items()):
            out += hist.lines("thinkrm_request_duration_seconds", f'route="{route}"')
        out += ["# HELP thinkrm_batch_size Items per scorer call (micro-batch size).",
                "# TYPE thinkrm_batch_size histogram", *self.batch_sizes.lines("thinkrm_batch_size"),
                "# HELP thinkrm_items_scored_total Items scored.",
                "# TYPE thinkrm_items_scored_total counter",
                f"thinkrm_items_scored_total {self.items_scored}",
                "# HELP thinkrm_scorer_errors_total Scorer calls that raised.",
                "# TYPE thinkrm_scorer_errors_total counter",
                f"thinkrm_scorer_errors_total {self.scorer_errors}",
                "# HELP thinkrm_queue_depth Items waiting for the scorer.",
                "# TYPE thinkrm_queue_depth gauge",
                f"thinkrm_queue_depth {self.queue_depth}",
                "# HELP thinkrm_in_flight_requests Requests being served.",
                "# TYPE thinkrm_in_flight_requests gauge",
                f"thinkrm_in_flight_requests {self.in_flight}",
                "# HELP thinkrm_open_connections Open client connections.",
                "# TYPE thinkrm_open_connections gauge",
                f"thinkrm_open_connections {self.open_connections}",
                "# HELP thinkrm_connections_closed_total Connections closed by a limit, by reason.",
                "# TYPE thinkrm_connections_closed_total counter"]
        out += [f'thinkrm_connections_closed_total{{reason="{r}"}} {n}'
                for r, n in sorted(self.closed_connections.items())]
        out += ["# HELP thinkrm_work_queued Requests queued or running, by kind of work.",
                "# TYPE thinkrm_work_queued gauge"]
        out += [f'thinkrm_work_queued{{kind="{k}"}} {n}' for k, n in sorted(self.queued.items())]
        out += ["# HELP thinkrm_work_rejected_total Requests answered 503 because their queue was full.",
                "# TYPE thinkrm_work_rejected_total counter"]
        out += [f'thinkrm_work_rejected_total{{kind="{k}"}} {n}' for k, n in sorted(self.rejected.items())]
        return "\n".join(out) + "\n"
